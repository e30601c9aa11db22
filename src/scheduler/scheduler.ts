/**
 * Placement: filter the nodes that can take the VM, then score the rest (seed §2.2.2, ADR 0016).
 * Pure and synchronous. `schedule(vm, state)` reads an incrementally maintained ClusterState
 * (src/scheduler/state.ts); `place(vm, nodes, placed)` builds one first (the standalone controller's
 * call, one node).
 *
 * Filters, in order (the first that fails is the node's reason): readiness, cordon, taints
 * (NoSchedule/NoExecute) vs tolerations, capability (a VMM driver; the driver/KVM the nodeSelector
 * asks for, checked against what the node reports), nodeSelector, cpu and memory capacity
 * (allocatable × overcommit minus placed requests + VMM overhead), required VM affinity, required VM
 * anti-affinity, and placed VMs' required anti-affinity against this VM (symmetric, as Kubernetes).
 *
 * Scores (weighted sum): spread or binpack; fragmentation (100 unless the placement costs the node a
 * free "large slot"); preferred VM affinity/anti-affinity (weights × matching VMs in the domain,
 * normalised to 0–100 over the feasible nodes); PreferNoSchedule taints not tolerated (normalised).
 */
import { memoryMiB, MAX_MEMORY_MIB, type MicroVM } from '../core/microvm.js';
import type { NodeInfo } from '../core/ports/agent.js';
import { HOSTNAME_TOPOLOGY_KEY, matchesSelector, taintText, toleratesAll, UNSCHEDULABLE_TAINT_KEY, type VmAffinityTerm } from '../core/placement.js';
import { CAPABILITY_LABELS, ClusterState, type NodeEntry } from './state.js';

export interface SlotSize {
  vcpu: number;
  memoryMiB: number;
}

export interface ScoreWeights {
  /** spread / binpack */
  strategy: number;
  fragmentation: number;
  /** preferred VM affinity and anti-affinity */
  affinity: number;
  /** PreferNoSchedule taints */
  taints: number;
}

export interface SchedulerOptions {
  /** vCPUs that may be placed per host CPU (microVMs are mostly idle). */
  cpuOvercommit?: number;
  /** Guest memory that may be placed per MiB of host memory. */
  memoryOvercommit?: number;
  /** Memory per VM on top of guest RAM (VMM overhead), MiB. */
  vmmOverheadMiB?: number;
  strategy?: 'spread' | 'binpack';
  weights?: Partial<ScoreWeights>;
  /** The "large VM" whose free slots the fragmentation score protects (default the largest VM: 8 vCPU, 8Gi). */
  largeSlot?: SlotSize;
}

export interface Placement {
  node?: string;
  /** Why each rejected node was rejected (human-readable, per node). */
  reasons: Record<string, string>;
  /** One-line summary, e.g. "0/3 nodes available: 2 insufficient memory, 1 node(s) had untolerated taint". */
  message: string;
  /** Total score of the chosen node. */
  score?: number;
}

export interface ScheduleOptions {
  /** Nodes not to consider (the defrag planner keeps VMs off the node it frees). */
  exclude?: ReadonlySet<string>;
  /** Consider only this node (the defrag planner's check that the freed slot is usable). */
  only?: string;
}

const NONE: readonly never[] = [];

/** Summary categories of rejections (the text of the unschedulable message). */
export const REJECT = {
  notReady: 'node(s) were not ready',
  cordoned: 'node(s) were cordoned',
  taint: 'node(s) had untolerated taint',
  capability: 'node(s) lacked a required capability',
  selector: "node(s) didn't match node selector",
  cpu: 'insufficient cpu',
  memory: 'insufficient memory',
  affinity: "node(s) didn't match VM affinity rules",
  antiAffinity: "node(s) didn't match VM anti-affinity rules",
  existingAnti: "node(s) didn't satisfy existing VMs' anti-affinity rules",
  excluded: 'node(s) excluded',
} as const;
type RejectKind = keyof typeof REJECT;

interface TermCounts {
  key: string;
  /** topology domain → matching VMs in it */
  domains: Map<string, number>;
  weight: number;
}

export class Scheduler {
  readonly cpuOvercommit: number;
  readonly memOvercommit: number;
  readonly overhead: number;
  readonly strategy: 'spread' | 'binpack';
  readonly weights: ScoreWeights;
  readonly largeSlot: SlotSize;

  constructor(o: SchedulerOptions = {}) {
    this.cpuOvercommit = o.cpuOvercommit ?? 16;
    this.memOvercommit = o.memoryOvercommit ?? 1;
    this.overhead = o.vmmOverheadMiB ?? 64;
    this.strategy = o.strategy ?? 'spread';
    this.weights = { strategy: 1, fragmentation: 1, affinity: 2, taints: 3, ...(o.weights ?? {}) };
    this.largeSlot = o.largeSlot ?? { vcpu: 8, memoryMiB: MAX_MEMORY_MIB };
  }

  /** One decision from plain lists (builds a ClusterState: O(placed)). `placed` are VMs holding resources. */
  place(vm: MicroVM, nodes: NodeInfo[], placed: MicroVM[]): Placement {
    return this.schedule(vm, ClusterState.from(nodes, placed.filter((p) => p.id !== vm.id)));
  }

  /** Node capacity after overcommit: vCPUs and MiB. */
  capacity(info: NodeInfo): { vcpu: number; memoryMiB: number } {
    return { vcpu: (info.allocatable?.cpus ?? info.cpus) * this.cpuOvercommit, memoryMiB: (info.allocatable?.memoryMiB ?? info.memoryMiB) * this.memOvercommit };
  }

  /** What is free on a node: capacity minus the requests (plus VMM overhead) of the VMs there. */
  free(state: ClusterState, node: string): { vcpu: number; memoryMiB: number } {
    const n = state.node(node);
    if (!n) return { vcpu: 0, memoryMiB: 0 };
    const cap = this.capacity(n.info);
    const u = state.usage(node);
    return { vcpu: cap.vcpu - u.vcpu, memoryMiB: cap.memoryMiB - u.memoryMiB - u.count * this.overhead };
  }

  /** Large slots (of `slot`, VMM overhead included) that fit in the given free space. */
  slots(free: { vcpu: number; memoryMiB: number }, slot: SlotSize = this.largeSlot): number {
    return Math.max(0, Math.floor(Math.min(free.vcpu / slot.vcpu, free.memoryMiB / (slot.memoryMiB + this.overhead))));
  }

  /** The VM's own placement with the state read through indexes: O(nodes + VMs its terms match). */
  schedule(vm: MicroVM, state: ClusterState, opts: ScheduleOptions = {}): Placement {
    // A VM already in the state (re-placement) does not count against itself: set it aside meanwhile.
    const self = state.get(vm.id);
    if (!self) return this.decide(vm, state, opts);
    state.forget(vm.id);
    try {
      return this.decide(vm, state, opts);
    } finally {
      state.assume(self.vm, self.node);
    }
  }

  private decide(vm: MicroVM, state: ClusterState, opts: ScheduleOptions): Placement {
    const spec = vm.spec;
    const needCpu = spec.vcpu;
    const needMem = memoryMiB(spec) + this.overhead;
    const tols = spec.tolerations;
    const tolCordon = toleratesAll(tols, { key: UNSCHEDULABLE_TAINT_KEY, effect: 'NoSchedule' });
    const selector = Object.entries(spec.nodeSelector ?? {});
    const capSel = selector.filter(([k]) => k === CAPABILITY_LABELS.driver || k === CAPABILITY_LABELS.kvm || k === CAPABILITY_LABELS.accel);
    const labelSel = selector.filter(([k]) => !capSel.some(([c]) => c === k));

    const aff = spec.affinity;
    const ownLabels = spec.labels ?? {};
    const reqAff = (aff?.vmAffinity?.required ?? []).map((t) => ({ ...this.countTerm(state, vm, t, 1), selfMatch: matchesSelector(t.labelSelector, ownLabels) }));
    const reqAnti = (aff?.vmAntiAffinity?.required ?? []).map((t) => this.countTerm(state, vm, t, 1));
    const preferred = [
      ...(aff?.vmAffinity?.preferred ?? []).map((p) => this.countTerm(state, vm, p.vmAffinityTerm, p.weight)),
      ...(aff?.vmAntiAffinity?.preferred ?? []).map((p) => this.countTerm(state, vm, p.vmAffinityTerm, -p.weight)),
    ];
    // Placed VMs' required anti-affinity that this VM's labels match: the domains they occupy are closed.
    const closed: Array<{ key: string; domains: Set<string> }> = [];
    for (const g of state.antiAffinityGroups(vm.tenant)) {
      if (!matchesSelector(g.selector, ownLabels)) continue;
      const domains = new Set<string>();
      for (const [node, n] of g.perNode) {
        if (n <= 0) continue;
        const d = state.domainOf(node, g.topologyKey);
        if (d !== undefined) domains.add(d);
      }
      if (domains.size) closed.push({ key: g.topologyKey, domains });
    }

    const onlyNode = opts.only !== undefined ? state.node(opts.only) : undefined;
    const nodes = opts.only !== undefined ? (onlyNode ? [onlyNode] : []) : state.nodes();
    const reasons: Record<string, string> = {};
    const kinds = new Map<RejectKind, number>();
    const reject = (name: string, kind: RejectKind, detail: string): void => {
      reasons[name] = detail;
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
    };
    const feasible: NodeEntry[] = [];
    const base: number[] = [];
    const affRaw: number[] = [];
    const taintRaw: number[] = [];
    const slotMem = this.largeSlot.memoryMiB + this.overhead;

    nodeLoop: for (const n of nodes) {
      const info = n.info;
      const name = info.name;
      if (opts.exclude?.has(name)) {
        reject(name, 'excluded', 'excluded by the caller');
        continue;
      }
      if (!info.ready) {
        reject(name, 'notReady', 'node not ready');
        continue;
      }
      if (info.unschedulable && !tolCordon) {
        reject(name, 'cordoned', 'node is cordoned (unschedulable)');
        continue;
      }
      let prefer = 0;
      const taints = info.taints ?? NONE;
      for (let ti = 0; ti < taints.length; ti++) {
        const t = taints[ti]!;
        if (toleratesAll(tols, t)) continue;
        if (t.effect === 'PreferNoSchedule') prefer++;
        else {
          reject(name, 'taint', `untolerated taint ${taintText(t)}`);
          continue nodeLoop;
        }
      }
      if (info.drivers.length === 0) {
        reject(name, 'capability', 'no usable VMM driver on node');
        continue;
      }
      for (let ci = 0; ci < capSel.length; ci++) {
        const [k, v] = capSel[ci]!;
        const ok = k === CAPABILITY_LABELS.driver ? info.drivers.includes(v) : k === CAPABILITY_LABELS.kvm ? String(info.accel === 'kvm') === v : info.accel === v;
        if (!ok) {
          const what = k === CAPABILITY_LABELS.driver ? `VMM driver ${v} not available (node has ${info.drivers.join(', ')})` : k === CAPABILITY_LABELS.kvm ? (v === 'true' ? 'node has no working KVM' : 'node has KVM') : `accel ${v} not available (node has ${info.accel})`;
          reject(name, 'capability', what);
          continue nodeLoop;
        }
      }
      for (let li = 0; li < labelSel.length; li++) {
        const [k, v] = labelSel[li]!;
        if (n.labels[k] !== v) {
          reject(name, 'selector', n.labels[k] === undefined ? `node has no label ${k} (nodeSelector ${k}=${v})` : `node label ${k}=${n.labels[k]} does not match nodeSelector ${k}=${v}`);
          continue nodeLoop;
        }
      }
      const capCpu = (info.allocatable?.cpus ?? info.cpus) * this.cpuOvercommit;
      const capMem = (info.allocatable?.memoryMiB ?? info.memoryMiB) * this.memOvercommit;
      const u = n.usage;
      const usedCpu = u.vcpu;
      const usedMem = u.memoryMiB + u.count * this.overhead;
      if (usedCpu + needCpu > capCpu) {
        reject(name, 'cpu', `insufficient cpu (${usedCpu}+${needCpu} > ${capCpu} vCPU)`);
        continue;
      }
      if (usedMem + needMem > capMem) {
        reject(name, 'memory', `insufficient memory (${usedMem}+${needMem} MiB > ${capMem} MiB)`);
        continue;
      }
      for (let i = 0; i < reqAff.length; i++) {
        const t = reqAff[i]!;
        const d = n.labels[t.key];
        const ok = d !== undefined && ((t.domains.get(d) ?? 0) > 0 || (t.total === 0 && t.selfMatch));
        if (!ok) {
          reject(name, 'affinity', d === undefined ? `node has no topology label ${t.key} (vmAffinity.required[${i}])` : `no matching VM in ${t.key}=${d} (vmAffinity.required[${i}])`);
          continue nodeLoop;
        }
      }
      for (let i = 0; i < reqAnti.length; i++) {
        const t = reqAnti[i]!;
        const d = n.labels[t.key];
        if (d !== undefined && (t.domains.get(d) ?? 0) > 0) {
          reject(name, 'antiAffinity', `${t.domains.get(d)} matching VM(s) in ${t.key}=${d} (vmAntiAffinity.required[${i}])`);
          continue nodeLoop;
        }
      }
      for (let ci = 0; ci < closed.length; ci++) {
        const c = closed[ci]!;
        const d = n.labels[c.key];
        if (d !== undefined && c.domains.has(d)) {
          reject(name, 'existingAnti', `a VM in ${c.key}=${d} has required anti-affinity against this VM's labels`);
          continue nodeLoop;
        }
      }
      // Scores.
      const freeCpu = capCpu - usedCpu;
      const freeMem = capMem - usedMem;
      const after = ((freeCpu - needCpu) / capCpu + (freeMem - needMem) / capMem) / 2;
      const strat = this.strategy === 'spread' ? 100 * after : 100 * (1 - after);
      const before = Math.floor(Math.min(freeCpu / this.largeSlot.vcpu, freeMem / slotMem));
      const left = Math.floor(Math.min((freeCpu - needCpu) / this.largeSlot.vcpu, (freeMem - needMem) / slotMem));
      const frag = left >= before ? 100 : 0;
      let a = 0;
      for (let pi = 0; pi < preferred.length; pi++) {
        const t = preferred[pi]!;
        const d = n.labels[t.key];
        if (d !== undefined) a += t.weight * (t.domains.get(d) ?? 0);
      }
      feasible.push(n);
      base.push(this.weights.strategy * strat + this.weights.fragmentation * frag);
      affRaw.push(a);
      taintRaw.push(prefer);
    }

    if (feasible.length === 0) return { reasons, message: summary(nodes.length, 0, kinds) };
    let aMin = Infinity;
    let aMax = -Infinity;
    let tMax = 0;
    for (let i = 0; i < feasible.length; i++) {
      aMin = Math.min(aMin, affRaw[i]!);
      aMax = Math.max(aMax, affRaw[i]!);
      tMax = Math.max(tMax, taintRaw[i]!);
    }
    let best = -1;
    let bestScore = -Infinity;
    for (let i = 0; i < feasible.length; i++) {
      let s = base[i]!;
      if (aMax > aMin) s += (this.weights.affinity * 100 * (affRaw[i]! - aMin)) / (aMax - aMin);
      if (tMax > 0) s += this.weights.taints * 100 * (1 - taintRaw[i]! / tMax);
      // A tie goes to the node first by name: the same cluster places the same way whatever order its nodes registered in.
      if (s > bestScore || (s === bestScore && feasible[i]!.info.name < feasible[best]!.info.name)) [best, bestScore] = [i, s];
    }
    return { node: feasible[best]!.info.name, reasons, message: summary(nodes.length, feasible.length, kinds), score: bestScore };
  }

  /**
   * Placed VMs that must leave their node: it carries a NoExecute taint they do not tolerate (a
   * taint added after placement, e.g. a node going into maintenance). The operator moves them
   * (re-placement with `schedule`, or a defrag-style stop/start); cordon alone evicts nothing.
   */
  evictions(state: ClusterState): Array<{ vm: string; node: string; reason: string }> {
    const out: Array<{ vm: string; node: string; reason: string }> = [];
    for (const n of state.nodes()) {
      const taints = (n.info.taints ?? NONE).filter((t) => t.effect === 'NoExecute');
      if (taints.length === 0) continue;
      for (const p of state.vmsOn(n.info.name)) {
        const t = taints.find((x) => !toleratesAll(p.vm.spec.tolerations, x));
        if (t) out.push({ vm: p.id, node: n.info.name, reason: `untolerated taint ${taintText(t)}` });
      }
    }
    return out;
  }

  /** Matching VMs of the VM's tenant per topology domain (the VM itself excluded). */
  private countTerm(state: ClusterState, vm: MicroVM, term: VmAffinityTerm, weight: number): TermCounts & { total: number } {
    const key = term.topologyKey ?? HOSTNAME_TOPOLOGY_KEY;
    const byNode = new Map<string, number>();
    let total = 0;
    for (const p of state.matching(vm.tenant, term.labelSelector)) {
      byNode.set(p.node, (byNode.get(p.node) ?? 0) + 1);
      total++;
    }
    const domains = new Map<string, number>();
    for (const [node, n] of byNode) {
      const d = state.domainOf(node, key);
      if (d !== undefined) domains.set(d, (domains.get(d) ?? 0) + n);
    }
    return { key, domains, weight, total };
  }
}

function summary(total: number, available: number, kinds: Map<RejectKind, number>): string {
  if (total === 0) return '0/0 nodes available: no nodes registered';
  const parts = [...kinds].sort((a, b) => b[1] - a[1] || REJECT[a[0]].localeCompare(REJECT[b[0]])).map(([k, n]) => `${n} ${REJECT[k]}`);
  return `${available}/${total} nodes available${parts.length ? `: ${parts.join(', ')}` : ''}`;
}

/** The Unschedulable condition's message: the summary, then the first few nodes' own reasons. */
export function unschedulableMessage(p: Placement, maxNodes = 3): string {
  const per = Object.entries(p.reasons);
  if (per.length === 0) return p.message;
  const shown = per.slice(0, maxNodes).map(([n, r]) => `${n}: ${r}`);
  return `${p.message} (${shown.join('; ')}${per.length > maxNodes ? `; +${per.length - maxNodes} more` : ''})`;
}
