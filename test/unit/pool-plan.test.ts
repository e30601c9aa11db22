/** The MicroVMPool policy (src/operator/pool-plan.ts): who is created, resumed, suspended, deleted. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { MicroVMObject } from '../../src/k8s/microvm-object.js';
import {
  LABEL_POOL,
  LABEL_POOL_HASH,
  LABEL_POOL_SUSPENDED,
  memberSpec,
  metricTotal,
  planPool,
  recommendReplicas,
  resolveMaxUnavailable,
  templateHash,
  type MicroVMPoolObject,
} from '../../src/operator/pool-plan.js';

const pool = (spec: Partial<MicroVMPoolObject['spec']> = {}, annotations: Record<string, string> = {}): MicroVMPoolObject => ({
  apiVersion: 'microvm.service/v1alpha1',
  kind: 'MicroVMPool',
  metadata: { name: 'web', namespace: 'demo', uid: 'u1', annotations },
  spec: { replicas: 3, template: { spec: { vcpu: 1, memory: '128Mi' } }, ...spec },
});
const HASH = templateHash(memberSpec('web', pool().spec));

let seq = 0;
function member(o: { name?: string; hash?: string; ready?: boolean; phase?: string; node?: string; suspended?: boolean; deleting?: boolean; metric?: string } = {}): MicroVMObject {
  const n = seq++;
  return {
    apiVersion: 'microvm.service/v1alpha1',
    kind: 'MicroVM',
    metadata: {
      name: o.name ?? `web-${n}`,
      namespace: 'demo',
      creationTimestamp: new Date(1_000_000 + n * 1000).toISOString(),
      labels: { [LABEL_POOL]: 'web', [LABEL_POOL_HASH]: o.hash ?? HASH, ...(o.suspended ? { [LABEL_POOL_SUSPENDED]: 'true' } : {}) },
      ...(o.metric !== undefined ? { annotations: { 'metrics.microvm.service/load': o.metric } } : {}),
      ...(o.deleting ? { deletionTimestamp: new Date().toISOString() } : {}),
    },
    spec: { vcpu: 1, memory: '128Mi', desiredState: o.suspended ? 'Paused' : 'Running' },
    status: {
      phase: (o.phase ?? (o.suspended ? 'Paused' : o.ready === false ? 'Starting' : 'Running')) as never,
      ...(o.node ? { node: o.node } : {}),
      conditions: o.ready === false ? [] : [{ type: 'GuestReady', status: 'True', lastTransitionTime: new Date().toISOString() }],
    },
  };
}

test('scale up from nothing creates, scale down deletes the least useful (not ready, crowded node, newest)', () => {
  assert.deepEqual(planPool(pool(), [], HASH).actions, [{ kind: 'create', count: 3 }]);
  const a = member({ node: 'n1' });
  const b = member({ node: 'n1' });
  const c = member({ node: 'n2' });
  const d = member({ node: 'n2', ready: false });
  const plan = planPool(pool({ replicas: 2 }), [a, b, c, d], HASH);
  assert.deepEqual(plan.actions.map((x) => [x.kind, 'name' in x ? x.name : '']), [
    ['delete', d.metadata.name],
    ['delete', b.metadata.name],
  ]);
  assert.deepEqual(plan.status, { replicas: 4, readyReplicas: 3, updatedReplicas: 4, suspendedReplicas: 0 });
  // A member being deleted counts for nothing.
  assert.deepEqual(planPool(pool({ replicas: 1 }), [member({ deleting: true })], HASH).actions, [{ kind: 'create', count: 1 }]);
});

test('scaleDown suspend: Running members of the current template are suspended; a scale up resumes them before creating', () => {
  const ms = [member({ node: 'n1' }), member({ node: 'n2' }), member({ node: 'n1' })];
  const down = planPool(pool({ replicas: 1, scaleDown: 'suspend' }), ms, HASH);
  assert.deepEqual(down.actions.map((x) => x.kind), ['suspend', 'suspend']);
  const suspended = [member({ suspended: true, node: 'n1' }), member({ suspended: true, node: 'n2' })];
  const up = planPool(pool({ replicas: 4, scaleDown: 'suspend' }), [member({ node: 'n1' }), ...suspended], HASH);
  assert.deepEqual(up.actions.map((x) => x.kind), ['resume', 'resume', 'create']);
  assert.equal(up.status.suspendedReplicas, 2);
  // Suspended members of an old template, or of a pool that deletes on scale-down, are deleted.
  const stale = member({ suspended: true, hash: 'old' });
  assert.deepEqual(planPool(pool({ replicas: 0, scaleDown: 'suspend' }), [stale], HASH).actions.map((x) => x.kind), ['delete']);
  assert.deepEqual(planPool(pool({ replicas: 0 }), [member({ suspended: true })], HASH).actions.map((x) => x.kind), ['delete']);
});

test('rolling update: at most maxUnavailable Ready members go at a time; replacements are created at once', () => {
  const old = [member({ hash: 'old' }), member({ hash: 'old' }), member({ hash: 'old' })];
  const p1 = planPool(pool(), old, HASH);
  assert.ok(p1.rolling);
  assert.deepEqual(p1.actions.map((x) => x.kind), ['delete', 'create']);
  assert.deepEqual(p1.actions[1], { kind: 'create', count: 1 });
  // One replacement still booting: nothing more may go.
  const p2 = planPool(pool(), [old[0]!, old[1]!, member({ ready: false })], HASH);
  assert.deepEqual(p2.actions, []);
  // maxUnavailable 2 (or 67%): two at a time.
  assert.deepEqual(planPool(pool({ strategy: { rollingUpdate: { maxUnavailable: 2 } } }), old, HASH).actions.map((x) => x.kind), ['delete', 'delete', 'create']);
  assert.equal(resolveMaxUnavailable('67%', 3), 2);
  assert.equal(resolveMaxUnavailable('10%', 3), 1);
  // Outdated members that are not ready go at once (they cost no availability).
  const p3 = planPool(pool(), [member({ hash: 'old', ready: false }), member({ hash: 'old', ready: false }), member({ hash: 'old' })], HASH);
  // ...while the ready one waits for its replacements to be ready (2 of 3 must be).
  assert.deepEqual(p3.actions.map((x) => x.kind), ['delete', 'delete', 'create']);
  assert.deepEqual(p3.actions[2], { kind: 'create', count: 2 });
});

test('the member spec carries the pool label and its anti-affinity; the hash follows template and spread', () => {
  const s = memberSpec('web', pool({ spread: { topologyKey: 'zone', mode: 'required' }, template: { labels: { app: 'x' }, spec: { vcpu: 1, memory: '128Mi' } } }).spec);
  assert.deepEqual(s.labels, { app: 'x', [LABEL_POOL]: 'web' });
  assert.deepEqual(s.affinity?.vmAntiAffinity?.required, [{ labelSelector: { matchLabels: { [LABEL_POOL]: 'web' } }, topologyKey: 'zone' }]);
  const soft = memberSpec('web', pool().spec);
  assert.deepEqual(soft.affinity?.vmAntiAffinity?.preferred, [{ weight: 100, vmAffinityTerm: { labelSelector: { matchLabels: { [LABEL_POOL]: 'web' } } } }]);
  assert.notEqual(templateHash(s), HASH);
  assert.equal(templateHash(memberSpec('web', pool({ replicas: 9 }).spec)), HASH, 'replicas do not roll members');
});

test('autoscaling: ceil(total / target), a tolerance band, clamped; the metric from the pool or summed over members', () => {
  const a = { minReplicas: 1, maxReplicas: 5, metric: { name: 'load', target: 10 } };
  assert.equal(recommendReplicas(a, 1, 35), 4);
  assert.equal(recommendReplicas(a, 4, 41), 4, 'within 10 %');
  assert.equal(recommendReplicas(a, 1, 1000), 5);
  assert.equal(recommendReplicas(a, 3, 0), 1);
  assert.equal(recommendReplicas(a, 0, undefined), 1, 'no metric: clamped only');
  assert.equal(metricTotal(pool({}, { 'metrics.microvm.service/load': '42' }), [member({ metric: '5' })], 'load'), 42);
  assert.equal(metricTotal(pool(), [member({ metric: '5' }), member({ metric: '7.5' }), member({ metric: '9', suspended: true })], 'load'), 12.5);
  assert.equal(metricTotal(pool(), [member()], 'load'), undefined);
});
