/**
 * Property-style tests of the scheduler over seeded random clusters: placements never exceed
 * capacity nor break a hard constraint, the indexed decision equals the one rebuilt from plain lists,
 * and every defrag plan is executable.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { matchesSelector, toleratesAll } from '../../src/core/placement.js';
import type { MicroVM } from '../../src/core/microvm.js';
import type { NodeInfo } from '../../src/core/ports/agent.js';
import { planDefrag } from '../../src/scheduler/defrag.js';
import { Scheduler } from '../../src/scheduler/scheduler.js';
import { ClusterState } from '../../src/scheduler/state.js';
import { node, vm } from '../support/scheduler-fixtures.js';

function rng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomCluster(r: () => number, nodes: number): NodeInfo[] {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  return Array.from({ length: nodes }, (_, i) =>
    node(`n${i}`, {
      cpus: pick([2, 4, 8]),
      memoryMiB: pick([4096, 8192, 16384]),
      ...(r() < 0.3 ? { allocatable: { cpus: 2, memoryMiB: 3500 } } : {}),
      ready: r() > 0.05,
      unschedulable: r() < 0.05,
      labels: { zone: pick(['a', 'b', 'c']) },
      ...(r() < 0.15 ? { taints: [{ key: 'dedicated', value: pick(['db', 'gpu']), effect: pick(['NoSchedule', 'PreferNoSchedule'] as const) }] } : {}),
    }),
  );
}

function randomVm(r: () => number, i: number): MicroVM {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)]!;
  const app = pick(['web', 'db', 'cache', 'batch']);
  return vm(`v${i}`, {
    id: `vm-${i}`,
    tenant: pick(['t1', 't2']),
    vcpu: pick([1, 1, 2, 4]),
    memory: pick(['128Mi', '512Mi', '1Gi', '2Gi']),
    labels: { app },
    ...(r() < 0.2 ? { nodeSelector: { zone: pick(['a', 'b']) } } : {}),
    ...(r() < 0.2 ? { tolerations: [{ key: 'dedicated', operator: 'Exists' as const }] } : {}),
    ...(r() < 0.15 ? { affinity: { vmAntiAffinity: { required: [{ labelSelector: { matchLabels: { app } }, ...(r() < 0.3 ? { topologyKey: 'zone' } : {}) }] } } } : {}),
    ...(r() < 0.15 ? { affinity: { vmAffinity: { preferred: [{ weight: 10, vmAffinityTerm: { labelSelector: { matchLabels: { app: 'db' } } } }] } } } : {}),
  });
}

test('random clusters: no placement exceeds capacity or breaks a hard constraint; indexed == rebuilt decision', () => {
  for (const seed of [1, 2, 3]) {
    const r = rng(seed);
    const nodes = randomCluster(r, 40);
    const byName = new Map(nodes.map((n) => [n.name, n]));
    for (const strategy of ['spread', 'binpack'] as const) {
      const s = new Scheduler({ strategy, cpuOvercommit: 2, memoryOvercommit: 1, vmmOverheadMiB: 64 });
      const st = new ClusterState();
      for (const n of nodes) st.setNode(n);
      const placed = new Map<string, MicroVM>();
      let placedCount = 0;
      let refused = 0;
      for (let i = 0; i < 1500; i++) {
        if (placed.size > 0 && r() < 0.25) {
          const ids = [...placed.keys()];
          const id = ids[Math.floor(r() * ids.length)]!;
          st.forget(id);
          placed.delete(id);
          continue;
        }
        const v = randomVm(r, i);
        const p = s.schedule(v, st);
        if (i % 25 === 0) {
          const rebuilt = s.place(v, nodes, [...placed.values()]);
          assert.equal(p.node, rebuilt.node, `seed ${seed} ${strategy} #${i}: indexed and rebuilt decisions differ`);
          assert.deepEqual(p.reasons, rebuilt.reasons);
        }
        if (!p.node) {
          refused++;
          assert.ok(p.message.startsWith(`0/${nodes.length} nodes available: `), p.message);
          assert.equal(Object.keys(p.reasons).length, nodes.length, 'every node has a reason');
          continue;
        }
        const n = byName.get(p.node)!;
        // Hard constraints of the node.
        assert.ok(n.ready && !n.unschedulable, `${p.node} ready and not cordoned`);
        for (const t of n.taints ?? []) if (t.effect !== 'PreferNoSchedule') assert.ok(toleratesAll(v.spec.tolerations, t), 'taint tolerated');
        for (const [k, val] of Object.entries(v.spec.nodeSelector ?? {})) assert.equal(n.labels[k], val);
        // Required anti-affinity, both ways, per topology domain.
        const domain = (nn: string, key: string): string | undefined => (key === 'kubernetes.io/hostname' ? nn : byName.get(nn)!.labels[key]);
        for (const o of placed.values()) {
          if (o.tenant !== v.tenant) continue;
          for (const [a, b] of [[v, o], [o, v]] as const) {
            for (const t of a.spec.affinity?.vmAntiAffinity?.required ?? []) {
              const key = t.topologyKey ?? 'kubernetes.io/hostname';
              if (matchesSelector(t.labelSelector, b.spec.labels ?? {})) assert.notEqual(domain(p.node, key), domain(o.status.node!, key), `${a.name} anti-affinity vs ${b.name}`);
            }
          }
        }
        const placedVm = { ...v, status: { ...v.status, node: p.node, phase: 'Running' as const } };
        st.assume(placedVm, p.node);
        placed.set(v.id, placedVm);
        placedCount++;
        // Capacity of every node, recomputed from scratch.
        const cap = s.capacity(n);
        let cpu = 0;
        let mem = 0;
        for (const o of placed.values()) if (o.status.node === p.node) [cpu, mem] = [cpu + o.spec.vcpu, mem + parseInt(o.spec.memory) * (o.spec.memory.endsWith('Gi') ? 1024 : 1) + 64];
        assert.ok(cpu <= cap.vcpu && mem <= cap.memoryMiB, `${p.node}: ${cpu}/${cap.vcpu} vCPU, ${mem}/${cap.memoryMiB} MiB`);
        assert.deepEqual([st.usage(p.node).vcpu, st.usage(p.node).memoryMiB + st.usage(p.node).count * 64], [cpu, mem], 'incremental usage == recomputed');
      }
      assert.ok(placedCount > 300 && refused > 10, `exercised both outcomes (${placedCount} placed, ${refused} refused)`);
    }
  }
});

test('random clusters: every defrag plan is executable and frees the slot', () => {
  let plans = 0;
  let withMoves = 0;
  for (let seed = 10; seed < 50; seed++) {
    const r = rng(seed);
    const s = new Scheduler({ cpuOvercommit: 4, vmmOverheadMiB: 64, weights: { fragmentation: 0 } });
    const nodes = randomCluster(r, 8).map((n) => ({ ...n, ready: true, unschedulable: false, taints: [] }));
    const st = new ClusterState();
    for (const n of nodes) st.setNode(n);
    for (let i = 0; i < 200; i++) {
      const v = randomVm(r, i);
      const p = s.schedule(v, st);
      if (p.node) st.assume(v, p.node);
    }
    // Free space in pieces: forget a third of the VMs at random.
    for (let i = 0; i < 200; i++) if (r() < 0.33) st.forget(`vm-${i}`);
    const targetSlot = { vcpu: 2, memoryMiB: 4096 };
    const plan = planDefrag(st, { targetSlot, scheduler: s });
    if (!plan.node) continue;
    plans++;
    if (plan.moves.length > 0) withMoves++;
    const work = st.clone();
    for (const m of plan.moves) {
      const p = work.get(m.vm)!;
      assert.equal(p.node, m.from);
      assert.equal(s.schedule(p.vm, work, { only: m.to }).node, m.to, `seed ${seed}: move ${m.name} → ${m.to}`);
      work.assume(p.vm, m.to);
    }
    const free = s.free(work, plan.node);
    assert.ok(free.vcpu >= targetSlot.vcpu && free.memoryMiB >= targetSlot.memoryMiB + 64, `seed ${seed}: slot freed on ${plan.node}`);
  }
  assert.ok(plans >= 10 && withMoves >= 5, `enough plans checked (${plans}, ${withMoves} with moves)`);
});
