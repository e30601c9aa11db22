/**
 * Scheduler benchmark: 10,000 placement decisions over 1,000 simulated nodes, in-process (no VMs),
 * with baselines side by side in the same run:
 *
 * - `v1 rescan`: the scheduler before ADR 0016 (capacity + readiness only), which rescans every
 *   placed VM per decision;
 * - `place() from lists`: today's filters and scores, but the cluster view rebuilt from the list of
 *   placed VMs at each decision (what a caller without a ClusterState does); timed on every 10th
 *   decision (it is O(placed)) and checked to choose the same node as the indexed path;
 * - `schedule() indexed`: the ClusterState kept up to date with assume() — the operator's path;
 *
 * each for a workload without placement constraints and one with them (nodeSelector, tolerations,
 * required/preferred anti-affinity per node or zone, preferred affinity). Then the defrag planner
 * on the final state. Seeded, so every run places the same VMs.
 *
 * Usage: node dist/bench/scheduler.js [vms, default 10000] [nodes, default 1000]
 */
import { memoryMiB, type MicroVM } from '../src/core/microvm.js';
import type { NodeInfo } from '../src/core/ports/agent.js';
import type { MicroVMSpecT } from '../src/core/schema.js';
import { planDefrag } from '../src/scheduler/defrag.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { ClusterState } from '../src/scheduler/state.js';
import { percentile, printTable } from './stats.js';

const VMS = Number(process.argv[2] ?? 10_000);
const NODES = Number(process.argv[3] ?? 1_000);
const SAMPLE_EVERY = 10;

function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function makeNodes(r: () => number): NodeInfo[] {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  return Array.from({ length: NODES }, (_, i) => ({
    name: `node-${String(i).padStart(4, '0')}`,
    cpus: pick([16, 32, 64]),
    memoryMiB: pick([32768, 65536, 131072]),
    drivers: r() < 0.3 ? ['qemu', 'firecracker'] : ['qemu'],
    accel: r() < 0.5 ? 'kvm' : 'tcg',
    labels: { zone: `zone-${i % 10}`, rack: `rack-${i % 50}`, ...(r() < 0.2 ? { disk: 'ssd' } : {}) },
    ready: r() > 0.01,
    unschedulable: r() < 0.02,
    ...(r() < 0.05 ? { taints: [{ key: 'dedicated', value: 'batch', effect: 'NoSchedule' as const }] } : {}),
    ...(r() < 0.05 ? { taints: [{ key: 'spot', effect: 'PreferNoSchedule' as const }] } : {}),
  }));
}

function makeVms(r: () => number, constrained: boolean): MicroVM[] {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const now = new Date(0).toISOString();
  return Array.from({ length: VMS }, (_, i) => {
    const app = `app-${Math.floor(r() * 300)}`;
    const spec: MicroVMSpecT = { vcpu: pick([1, 1, 2, 2, 4, 8]), memory: pick(['512Mi', '1Gi', '1Gi', '2Gi', '4Gi', '8Gi']), labels: { app, tier: pick(['web', 'db', 'cache']) } };
    if (constrained) {
      const x = r();
      if (x < 0.3) spec.affinity = { vmAntiAffinity: { required: [{ labelSelector: { matchLabels: { app } }, ...(r() < 0.3 ? { topologyKey: 'zone' } : {}) }] } };
      else if (x < 0.5) spec.affinity = { vmAntiAffinity: { preferred: [{ weight: 50, vmAffinityTerm: { labelSelector: { matchLabels: { app } } } }] } };
      else if (x < 0.6) spec.affinity = { vmAffinity: { preferred: [{ weight: 20, vmAffinityTerm: { labelSelector: { matchExpressions: [{ key: 'tier', operator: 'In', values: ['db'] }] }, topologyKey: 'rack' } }] } };
      if (r() < 0.1) spec.nodeSelector = { disk: 'ssd' };
      if (r() < 0.05) spec.nodeSelector = { ...spec.nodeSelector, 'microvm.service/kvm': 'true' };
      if (r() < 0.1) spec.tolerations = [{ key: 'dedicated', operator: 'Exists' }];
    }
    return {
      id: `vm-${i}`,
      name: `vm-${i}`,
      tenant: `tenant-${Math.floor(r() * 20)}`,
      spec,
      desiredState: 'Running' as const,
      status: { phase: 'Pending' as const, conditions: [] },
      generation: 1,
      resourceVersion: '1',
      createdAt: now,
      updatedAt: now,
    };
  });
}

/** The scheduler as it was before ADR 0016: readiness, a driver, cpu/memory; rescans placed VMs. */
function v1Place(vm: MicroVM, nodes: NodeInfo[], placed: MicroVM[]): string | undefined {
  const overhead = 64;
  const need = { cpu: vm.spec.vcpu, mem: memoryMiB(vm.spec) + overhead };
  const used = new Map<string, { cpu: number; mem: number }>();
  for (const p of placed) {
    const n = p.status.node;
    if (!n || p.id === vm.id) continue;
    const u = used.get(n) ?? { cpu: 0, mem: 0 };
    u.cpu += p.spec.vcpu;
    u.mem += memoryMiB(p.spec) + overhead;
    used.set(n, u);
  }
  let best: { node: string; score: number } | undefined;
  for (const n of nodes) {
    if (!n.ready || n.drivers.length === 0) continue;
    const u = used.get(n.name) ?? { cpu: 0, mem: 0 };
    const cpuCap = n.cpus * 16;
    const memCap = n.memoryMiB;
    if (u.cpu + need.cpu > cpuCap || u.mem + need.mem > memCap) continue;
    const free = 1 - (u.mem + need.mem) / memCap + (1 - (u.cpu + need.cpu) / cpuCap);
    if (!best || free > best.score) best = { node: n.name, score: free };
  }
  return best?.node;
}

interface Row {
  name: string;
  decisions: number;
  placed: number;
  times: number[];
  totalMs: number;
}

const nowUs = (): number => Number(process.hrtime.bigint()) / 1000;

function row(name: string, times: number[], placed: number): Row {
  return { name, decisions: times.length, placed, times, totalMs: times.reduce((a, b) => a + b, 0) / 1000 };
}

function runV1(nodes: NodeInfo[], vms: MicroVM[]): Row {
  const placed: MicroVM[] = [];
  const times: number[] = [];
  for (const v of vms) {
    const t0 = nowUs();
    const node = v1Place(v, nodes, placed);
    times.push(nowUs() - t0);
    if (node) placed.push({ ...v, status: { ...v.status, node, phase: 'Running' } });
  }
  return row('v1 rescan (before; no constraints checked)', times, placed.length);
}

function runIndexed(label: string, s: Scheduler, nodes: NodeInfo[], vms: MicroVM[]): { indexed: Row; lists: Row; state: ClusterState; mismatches: number } {
  const state = new ClusterState();
  for (const n of nodes) state.setNode(n);
  const placed: MicroVM[] = [];
  const times: number[] = [];
  const listTimes: number[] = [];
  let mismatches = 0;
  for (const [i, v] of vms.entries()) {
    if (i % SAMPLE_EVERY === 0) {
      const t0 = nowUs();
      const viaLists = s.place(v, nodes, placed);
      listTimes.push(nowUs() - t0);
      const t1 = nowUs();
      const p = s.schedule(v, state);
      times.push(nowUs() - t1);
      if (p.node !== viaLists.node) mismatches++;
      if (p.node) commit(v, p.node);
      continue;
    }
    const t0 = nowUs();
    const p = s.schedule(v, state);
    times.push(nowUs() - t0);
    if (p.node) commit(v, p.node);
  }
  function commit(v: MicroVM, node: string): void {
    const b = { ...v, status: { ...v.status, node, phase: 'Running' as const } };
    state.assume(b, node);
    placed.push(b);
  }
  return {
    indexed: row(`schedule() indexed, ${label}`, times, placed.length),
    lists: row(`place() from lists, ${label} (every ${SAMPLE_EVERY}th)`, listTimes, placed.length),
    state,
    mismatches,
  };
}

const nodes = makeNodes(rng(42));
const plain = makeVms(rng(7), false);
const constrained = makeVms(rng(7), true);
const sched = new Scheduler({ strategy: 'spread' });

console.log(`scheduler benchmark: ${VMS} VMs over ${NODES} nodes, node ${process.version}`);
const rows: Row[] = [];
rows.push(runV1(nodes, plain));
const a = runIndexed('no constraints', sched, nodes, plain);
rows.push(a.lists, a.indexed);
const b = runIndexed('with constraints', sched, nodes, constrained);
rows.push(b.lists, b.indexed);
const bp = runIndexed('with constraints, binpack', new Scheduler({ strategy: 'binpack' }), nodes, constrained);
rows.push(bp.indexed);
const nf = runIndexed('with constraints, no fragmentation score', new Scheduler({ strategy: 'spread', weights: { fragmentation: 0 } }), nodes, constrained);
rows.push(nf.indexed);

printTable(
  ['path', 'decisions', 'placed', 'decisions/s', 'p50 µs', 'p99 µs'],
  rows.map((r) => [r.name, r.decisions, r.placed, Math.round(r.decisions / (r.totalMs / 1000)), Math.round(percentile(r.times, 50)), Math.round(percentile(r.times, 99))]),
);
const sum = (xs: number[]): number => xs.reduce((x, y) => x + y, 0);
console.log(`indexed vs rebuilt-from-lists decisions that differ: ${a.mismatches + b.mismatches} (must be 0)`);
console.log(
  `speed-up of the indexed path over place() from lists on the same sampled decisions: ` +
    `${(sum(a.lists.times) / sum(a.indexed.times.filter((_, i) => i % SAMPLE_EVERY === 0))).toFixed(1)}× (no constraints), ` +
    `${(sum(b.lists.times) / sum(b.indexed.times.filter((_, i) => i % SAMPLE_EVERY === 0))).toFixed(1)}× (with constraints)`,
);

// Fragmentation: free 8 vCPU / 8Gi slots left after the same constrained workload.
const largeSlots = (st: ClusterState): number => st.nodes().reduce((a, n) => a + (n.info.ready && !n.info.unschedulable ? sched.slots(sched.free(st, n.info.name)) : 0), 0);
console.log(`free 8 vCPU/8Gi slots after the constrained workload: spread ${largeSlots(b.state)}, spread without the fragmentation score ${largeSlots(nf.state)}, binpack ${largeSlots(bp.state)}`);

// Defrag: a fragmented cluster (every node ~7.5 GiB free, no 8Gi slot anywhere) of the same size.
{
  const frag = new ClusterState();
  const fnodes = Array.from({ length: NODES }, (_, i) => ({ name: `f-${i}`, cpus: 32, memoryMiB: 32768, drivers: ['qemu'], accel: 'kvm', labels: {}, ready: true }));
  for (const n of fnodes) frag.setNode(n);
  const now = new Date(0).toISOString();
  let k = 0;
  for (const n of fnodes) {
    for (let j = 0; j < 8; j++) {
      const v: MicroVM = { id: `d-${k}`, name: `d-${k++}`, tenant: 't', spec: { vcpu: 2, memory: '3Gi', labels: {} }, desiredState: 'Running', status: { phase: 'Running', node: n.name, conditions: [] }, generation: 1, resourceVersion: '1', createdAt: now, updatedAt: now };
      frag.assume(v, n.name);
    }
  }
  const need = sched.schedule({ id: 'big', name: 'big', tenant: 't', spec: { vcpu: 8, memory: '8Gi', labels: {} }, desiredState: 'Running', status: { phase: 'Pending', conditions: [] }, generation: 1, resourceVersion: '1', createdAt: now, updatedAt: now }, frag);
  const t0 = nowUs();
  const plan = planDefrag(frag, { targetSlot: { vcpu: 8, memoryMiB: 8192 }, scheduler: sched });
  console.log(`defrag on a fragmented cluster (${frag.size} VMs, ${NODES} nodes; an 8Gi VM alone: "${need.message}"): ${plan.message} — planned in ${((nowUs() - t0) / 1000).toFixed(1)} ms`);
}
for (const st of [b.state, bp.state]) {
  const t0 = nowUs();
  const plan = planDefrag(st, { targetSlot: { vcpu: 8, memoryMiB: 8192 }, scheduler: sched });
  console.log(`defrag (${st === b.state ? 'spread' : 'binpack'} cluster, ${st.size} VMs): ${plan.message} — planned in ${((nowUs() - t0) / 1000).toFixed(1)} ms`);
}
if (a.mismatches + b.mismatches > 0) process.exit(1);
