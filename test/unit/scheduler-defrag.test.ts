/** The defragmentation planner (src/scheduler/defrag.ts): fewest moves, every move valid, filters respected. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { MicroVM } from '../../src/core/microvm.js';
import type { NodeInfo } from '../../src/core/ports/agent.js';
import { planDefrag, type DefragPlan } from '../../src/scheduler/defrag.js';
import { Scheduler } from '../../src/scheduler/scheduler.js';
import { ClusterState } from '../../src/scheduler/state.js';
import { node, vm } from '../support/scheduler-fixtures.js';

const sched = new Scheduler({ vmmOverheadMiB: 64 });
const slot = { vcpu: 2, memoryMiB: 4096 }; // 4160 MiB with overhead

/** Apply the plan move by move: each destination must accept the VM then; at the end the slot fits on plan.node. */
function check(state: ClusterState, plan: DefragPlan, probe: MicroVM = vm('big', { vcpu: slot.vcpu, memory: `${slot.memoryMiB}Mi` })): void {
  const st = state.clone();
  for (const m of plan.moves) {
    const p = st.get(m.vm)!;
    assert.equal(p.node, m.from, `${m.name} is on ${m.from}`);
    st.forget(m.vm);
    const ok = sched.schedule(p.vm, st, { only: m.to });
    assert.equal(ok.node, m.to, `move of ${m.name} to ${m.to} is valid: ${ok.message} ${JSON.stringify(ok.reasons)}`);
    assert.notEqual(m.to, plan.node, 'never onto the node being freed');
    st.assume(p.vm, m.to);
  }
  assert.equal(sched.schedule(probe, st, { only: plan.node! }).node, plan.node, 'the slot fits after the moves');
}

function cluster(nodes: NodeInfo[], placed: MicroVM[]): ClusterState {
  return ClusterState.from(nodes, placed);
}

test('a slot already free: no moves', () => {
  const st = cluster([node('n1', { memoryMiB: 6000 }), node('n2', { memoryMiB: 6000 })], [vm('a', { node: 'n1', memory: '2Gi' })]);
  const plan = planDefrag(st, { targetSlot: slot, scheduler: sched });
  assert.equal(plan.node, 'n2');
  assert.deepEqual(plan.moves, []);
});

test('one move frees a slot that fits nowhere; the state given is not changed', () => {
  // Each node has 6000 MiB; 2Gi VMs take 2112. Free: n1 1776, n2 3888, n3 3888 — the 4160 slot fits nowhere.
  const nodes = [node('n1', { memoryMiB: 6000 }), node('n2', { memoryMiB: 6000 }), node('n3', { memoryMiB: 6000 })];
  const placed = [vm('a', { node: 'n1', memory: '2Gi' }), vm('b', { node: 'n1', memory: '2Gi' }), vm('c', { node: 'n2', memory: '2Gi' }), vm('d', { node: 'n3', memory: '2Gi' })];
  const st = cluster(nodes, placed);
  assert.equal(sched.schedule(vm('big', { vcpu: 2, memory: '4Gi' }), st).node, undefined);
  const plan = planDefrag(st, { targetSlot: slot, scheduler: sched });
  assert.equal(plan.moves.length, 1, plan.message);
  assert.ok(plan.node === 'n2' || plan.node === 'n3', plan.node);
  assert.equal(plan.moves[0]!.from, plan.node);
  assert.match(plan.message, /^1 move\(s\) free a 2 vCPU \/ 4096 MiB slot on n[23]$/);
  check(st, plan);
  assert.equal(st.get(plan.moves[0]!.vm)!.node, plan.node, 'planning only');
  assert.equal(st.usage('n1').count, 2);
});

test('fewest moves: one large VM rather than three small ones', () => {
  const nodes = [node('small', { memoryMiB: 5000 }), node('large', { memoryMiB: 5000 }), node('spare', { memoryMiB: 9000 })];
  // small: 3 × 1Gi (3264, free 1736); large: 1 × 3Gi (3136, free 1864); spare: 5Gi taken (free 3768 < 4160).
  const placed = [
    vm('s1', { node: 'small', memory: '1Gi' }),
    vm('s2', { node: 'small', memory: '1Gi' }),
    vm('s3', { node: 'small', memory: '1Gi' }),
    vm('l1', { node: 'large', memory: '3Gi' }),
    vm('x', { node: 'spare', memory: '5Gi' }),
  ];
  const st = cluster(nodes, placed);
  const plan = planDefrag(st, { targetSlot: slot, scheduler: sched });
  assert.equal(plan.node, 'large');
  assert.deepEqual(plan.moves.map((m) => [m.name, m.from, m.to]), [['l1', 'large', 'spare']]);
  check(st, plan);
  // With l1 pinned to its node, the small node is freed with more moves.
  const pinned = cluster(nodes, [...placed.slice(0, 3), vm('l1', { node: 'large', memory: '3Gi', nodeSelector: { 'kubernetes.io/hostname': 'large' } }), placed[4]!]);
  const p2 = planDefrag(pinned, { targetSlot: slot, scheduler: sched });
  assert.equal(p2.node, 'small');
  assert.equal(p2.moves.length, 3, p2.message);
  check(pinned, p2);
});

test('moves respect the moved VMs\' filters (anti-affinity, taints) and the slot\'s own VM constraints', () => {
  const web = { app: 'web' };
  const anti = { vmAntiAffinity: { required: [{ labelSelector: { matchLabels: web } }] } };
  const nodes = [node('n1', { memoryMiB: 6000 }), node('n2', { memoryMiB: 6000 }), node('n3', { memoryMiB: 6000, taints: [{ key: 'dedicated', effect: 'NoSchedule' }] })];
  // w1 on n1 and w2 on n2 may not share a node; n3 is tainted; so neither can move and nothing is freed.
  const placed = [vm('w1', { node: 'n1', memory: '2Gi', labels: web, affinity: anti }), vm('w2', { node: 'n2', memory: '2Gi', labels: web, affinity: anti }), vm('f', { node: 'n3', memory: '2Gi', tolerations: [{ key: 'dedicated', operator: 'Exists' }] })];
  const st = cluster(nodes, placed);
  const none = planDefrag(st, { targetSlot: slot, scheduler: sched });
  // f tolerates the taint and may move to n1 or n2, freeing n3 — but only a VM tolerating n3's taint can use that slot.
  assert.equal(none.node, undefined, none.message);
  assert.match(none.message, /^no plan frees a 2 vCPU \/ 4096 MiB slot with at most 8 moves \(0\/3 nodes available: /);
  const forTolerant = vm('big', { vcpu: 2, memory: '4Gi', tolerations: [{ key: 'dedicated', operator: 'Exists' }] });
  const plan = planDefrag(st, { targetSlot: slot, scheduler: sched, vm: forTolerant });
  assert.equal(plan.node, 'n3');
  assert.deepEqual(plan.moves.map((m) => m.name), ['f']);
  check(st, plan, forTolerant);
  // movable() excludes VMs the operator may not move.
  assert.equal(planDefrag(st, { targetSlot: slot, scheduler: sched, vm: forTolerant, movable: (p) => p.name !== 'f' }).node, undefined);
});

test('maxMoves bounds the plan', () => {
  const nodes = [node('n1', { memoryMiB: 4500 }), node('n2', { memoryMiB: 20000 })];
  const placed = [...['a', 'b', 'c'].map((n) => vm(n, { node: 'n1', memory: '1Gi' })), vm('big', { node: 'n2', memory: '8Gi' }), vm('big2', { node: 'n2', memory: '8Gi' })];
  const st = cluster(nodes, placed);
  // n1: 3264 used → 1236 free; needs 2924 more → 3 moves (1088 each). n2: 16512 used → 3488 free; needs one 8Gi move (nowhere to go).
  assert.equal(planDefrag(st, { targetSlot: slot, scheduler: sched, maxMoves: 2 }).node, undefined);
  const plan = planDefrag(st, { targetSlot: slot, scheduler: sched, maxMoves: 3 });
  assert.equal(plan.node, 'n1');
  assert.equal(plan.moves.length, 3);
  check(st, plan);
});
