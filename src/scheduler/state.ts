/**
 * The scheduler's view of the cluster, kept up to date incrementally (like kube-scheduler's cache):
 * nodes, per-node usage (requests of the VMs placed there), a per-tenant label index of placed VMs
 * and the required anti-affinity terms of placed VMs grouped by term. A placement decision reads it
 * in O(nodes + VMs matching the VM's affinity terms); it never rescans every placed VM.
 *
 * The operator keeps one instance: `setNode`/`removeNode` from node updates, `assume(vm, node)` after
 * each binding (before the write is confirmed, so the next decision already sees it), `forget(id)`
 * when a VM stops, is deleted or the binding write failed.
 */
import { holdsNode, memoryMiB, type MicroVM } from '../core/microvm.js';
import type { NodeInfo } from '../core/ports/agent.js';
import { HOSTNAME_TOPOLOGY_KEY, matchesSelector, type LabelSelector, type VmAffinityTerm } from '../core/placement.js';

/** Labels the scheduler derives from what the node reports (drivers, accel), whatever the node's own labels say. */
export const CAPABILITY_LABELS = { driver: 'microvm.service/driver', accel: 'microvm.service/accel', kvm: 'microvm.service/kvm' } as const;

/** What the scheduler keeps of a placed VM. */
export interface PlacedVm {
  id: string;
  name: string;
  tenant: string;
  node: string;
  labels: Record<string, string>;
  /** Requests: vCPUs and guest memory (MiB, without VMM overhead). */
  vcpu: number;
  memoryMiB: number;
  /** The VM itself, for planners that re-run the filters on it (defrag). */
  vm: MicroVM;
}

export interface NodeUsage {
  vcpu: number;
  /** Guest memory, MiB (VMM overhead is added per VM by the scheduler: `count * overhead`). */
  memoryMiB: number;
  count: number;
  vms: Set<string>;
}

export interface NodeEntry {
  info: NodeInfo;
  /** info.labels plus capability labels and kubernetes.io/hostname. */
  labels: Record<string, string>;
  /** The node's usage (the same object as usage(name)). */
  usage: NodeUsage;
}

interface AntiGroup {
  selector: LabelSelector;
  topologyKey: string;
  /** node → number of placed VMs carrying this term there. */
  perNode: Map<string, number>;
}

/** Does this VM hold node resources? (Placed, in a phase that holds its node.) */
export function holdsPlacement(vm: MicroVM): boolean {
  return !!vm.status.node && holdsNode(vm.status.phase);
}

export class ClusterState {
  private readonly nodeMap = new Map<string, NodeEntry>();
  private nodeArr: NodeEntry[] | undefined;
  private readonly usageMap = new Map<string, NodeUsage>();
  private readonly vms = new Map<string, PlacedVm>();
  /**
   * tenant → label key → value → VM ids, and tenant → VM ids. Built on the first selector query
   * (a state that never answers one — a one-off place() of a VM without affinity — never pays for
   * it), then kept up to date by assume/forget.
   */
  private labelIdx: Map<string, Map<string, Map<string, Set<string>>>> | undefined;
  private tenantVms: Map<string, Set<string>> | undefined;
  /** tenant → term signature → group (symmetric required anti-affinity). */
  private readonly antiGroups = new Map<string, Map<string, AntiGroup>>();

  static from(nodes: readonly NodeInfo[], placed: readonly MicroVM[]): ClusterState {
    const s = new ClusterState();
    for (const n of nodes) s.setNode(n);
    for (const vm of placed) if (vm.status.node) s.assume(vm, vm.status.node);
    return s;
  }

  // ---- nodes ----

  setNode(info: NodeInfo): void {
    const labels: Record<string, string> = { [HOSTNAME_TOPOLOGY_KEY]: info.name, ...info.labels };
    if (info.drivers[0]) labels[CAPABILITY_LABELS.driver] = info.drivers[0];
    labels[CAPABILITY_LABELS.accel] = info.accel;
    labels[CAPABILITY_LABELS.kvm] = String(info.accel === 'kvm');
    this.nodeMap.set(info.name, { info, labels, usage: this.usageFor(info.name) });
    this.nodeArr = undefined;
  }

  removeNode(name: string): void {
    this.nodeMap.delete(name);
    if (this.usageMap.get(name)?.count === 0) this.usageMap.delete(name);
    this.nodeArr = undefined;
  }

  node(name: string): NodeEntry | undefined {
    return this.nodeMap.get(name);
  }

  /** Nodes in a stable order (insertion). */
  nodes(): readonly NodeEntry[] {
    return (this.nodeArr ??= [...this.nodeMap.values()]);
  }

  usage(node: string): NodeUsage {
    return this.usageMap.get(node) ?? EMPTY_USAGE;
  }

  /** The topology domain of a node for a key: its label value (the node name for kubernetes.io/hostname). */
  domainOf(node: string, key: string): string | undefined {
    return this.nodeMap.get(node)?.labels[key];
  }

  // ---- VMs ----

  get size(): number {
    return this.vms.size;
  }

  get(id: string): PlacedVm | undefined {
    return this.vms.get(id);
  }

  /** Every VM held (any node). */
  placed(): IterableIterator<PlacedVm> {
    return this.vms.values();
  }

  vmsOn(node: string): PlacedVm[] {
    const u = this.usageMap.get(node);
    return u ? [...u.vms].map((id) => this.vms.get(id)!) : [];
  }

  private usageFor(node: string): NodeUsage {
    let u = this.usageMap.get(node);
    if (!u) this.usageMap.set(node, (u = { vcpu: 0, memoryMiB: 0, count: 0, vms: new Set() }));
    return u;
  }

  /** Record that `vm` holds resources on `node` (idempotent; moves it if it was elsewhere). */
  assume(vm: MicroVM, node: string): void {
    if (this.vms.has(vm.id)) this.forget(vm.id);
    const p: PlacedVm = { id: vm.id, name: vm.name, tenant: vm.tenant, node, labels: vm.spec.labels ?? {}, vcpu: vm.spec.vcpu, memoryMiB: memoryMiB(vm.spec), vm };
    this.vms.set(vm.id, p);
    const u = this.usageFor(node);
    u.vcpu += p.vcpu;
    u.memoryMiB += p.memoryMiB;
    u.count += 1;
    u.vms.add(p.id);
    if (this.labelIdx) this.index(p);
    for (const term of vm.spec.affinity?.vmAntiAffinity?.required ?? []) {
      const sig = termSignature(term);
      let groups = this.antiGroups.get(p.tenant);
      if (!groups) this.antiGroups.set(p.tenant, (groups = new Map()));
      let g = groups.get(sig);
      if (!g) groups.set(sig, (g = { selector: term.labelSelector, topologyKey: term.topologyKey ?? HOSTNAME_TOPOLOGY_KEY, perNode: new Map() }));
      g.perNode.set(node, (g.perNode.get(node) ?? 0) + 1);
    }
  }

  private index(p: PlacedVm): void {
    const idx = (this.labelIdx ??= new Map());
    const tv = (this.tenantVms ??= new Map());
    let byKey = idx.get(p.tenant);
    if (!byKey) idx.set(p.tenant, (byKey = new Map()));
    for (const [k, v] of Object.entries(p.labels)) {
      let byVal = byKey.get(k);
      if (!byVal) byKey.set(k, (byVal = new Map()));
      let ids = byVal.get(v);
      if (!ids) byVal.set(v, (ids = new Set()));
      ids.add(p.id);
    }
    let all = tv.get(p.tenant);
    if (!all) tv.set(p.tenant, (all = new Set()));
    all.add(p.id);
  }

  /** The VM no longer holds resources (stopped, deleted, binding failed). Idempotent. */
  forget(id: string): void {
    const p = this.vms.get(id);
    if (!p) return;
    this.vms.delete(id);
    const u = this.usageMap.get(p.node)!;
    u.vcpu -= p.vcpu;
    u.memoryMiB -= p.memoryMiB;
    u.count -= 1;
    u.vms.delete(id);
    if (u.count === 0 && !this.nodeMap.has(p.node)) this.usageMap.delete(p.node);
    if (this.labelIdx) {
      const byKey = this.labelIdx.get(p.tenant)!;
      for (const [k, v] of Object.entries(p.labels)) {
        const byVal = byKey.get(k)!;
        const ids = byVal.get(v)!;
        ids.delete(id);
        if (ids.size === 0) byVal.delete(v);
        if (byVal.size === 0) byKey.delete(k);
      }
      this.tenantVms!.get(p.tenant)!.delete(id);
    }
    for (const term of p.vm.spec.affinity?.vmAntiAffinity?.required ?? []) {
      const groups = this.antiGroups.get(p.tenant)!;
      const sig = termSignature(term);
      const g = groups.get(sig)!;
      const n = (g.perNode.get(p.node) ?? 1) - 1;
      if (n > 0) g.perNode.set(p.node, n);
      else g.perNode.delete(p.node);
      if (g.perNode.size === 0) groups.delete(sig);
    }
  }

  /**
   * Placed VMs of `tenant` whose labels match `sel`. Starts from the smallest posting list of a
   * positive requirement (matchLabels, In, Exists), then checks the whole selector on each candidate.
   */
  *matching(tenant: string, sel: LabelSelector): Generator<PlacedVm> {
    if (!this.labelIdx) {
      this.labelIdx = new Map();
      this.tenantVms = new Map();
      for (const p of this.vms.values()) this.index(p);
    }
    const byKey = this.labelIdx.get(tenant);
    if (!byKey) return;
    let best: Array<Set<string>> | undefined;
    let bestSize = Infinity;
    const consider = (sets: Array<Set<string>>): void => {
      const size = sets.reduce((a, s) => a + s.size, 0);
      if (size < bestSize) [best, bestSize] = [sets, size];
    };
    for (const [k, v] of Object.entries(sel.matchLabels ?? {})) {
      const s = byKey.get(k)?.get(v);
      if (!s) return; // a required pair nobody has
      consider([s]);
    }
    for (const e of sel.matchExpressions ?? []) {
      const byVal = byKey.get(e.key);
      if (e.operator === 'In') consider((e.values ?? []).flatMap((v) => (byVal?.get(v) ? [byVal.get(v)!] : [])));
      else if (e.operator === 'Exists') consider(byVal ? [...byVal.values()] : []);
    }
    const sources = best ?? [this.tenantVms!.get(tenant) ?? new Set<string>()];
    for (const ids of sources) {
      for (const id of ids) {
        const p = this.vms.get(id)!;
        if (matchesSelector(sel, p.labels)) yield p;
      }
    }
  }

  /** Required anti-affinity terms of placed VMs of `tenant`, one entry per distinct term, with where they are. */
  antiAffinityGroups(tenant: string): Iterable<Readonly<AntiGroup>> {
    return this.antiGroups.get(tenant)?.values() ?? [];
  }

  /** A deep copy (for planners that try moves). */
  clone(): ClusterState {
    const c = new ClusterState();
    for (const n of this.nodeMap.values()) c.setNode(n.info);
    for (const p of this.vms.values()) c.assume(p.vm, p.node);
    return c;
  }
}

const EMPTY_USAGE: NodeUsage = Object.freeze({ vcpu: 0, memoryMiB: 0, count: 0, vms: new Set<string>() }) as NodeUsage;

export function termSignature(term: VmAffinityTerm): string {
  const ml = Object.entries(term.labelSelector.matchLabels ?? {}).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return JSON.stringify([term.topologyKey ?? HOSTNAME_TOPOLOGY_KEY, ml, term.labelSelector.matchExpressions ?? []]);
}
