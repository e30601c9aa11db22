/** The operator's rate-limited work queue (src/operator/workqueue.ts): client-go's semantics. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RateLimitingQueue, runWorkers } from '../../src/operator/workqueue.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('dedupe: a key added several times while queued is handed out once', async () => {
  const q = new RateLimitingQueue();
  q.add('ns/a');
  q.add('ns/b');
  q.add('ns/a');
  assert.equal(q.length, 2);
  assert.equal(await q.get(), 'ns/a');
  assert.equal(await q.get(), 'ns/b');
  assert.equal(q.length, 0);
  q.shutDown();
});

test('a key added while processing is queued again only after done(), never processed twice at once', async () => {
  const q = new RateLimitingQueue();
  q.add('k');
  const k = await q.get();
  assert.equal(k, 'k');
  q.add('k');
  q.add('k');
  assert.equal(q.length, 0, 'not handed to a second worker while processing');
  q.done('k');
  assert.equal(q.length, 1);
  assert.equal(await q.get(), 'k');
  q.done('k');
  assert.equal(q.length, 0);
  q.shutDown();
});

test('per-key exponential backoff, capped; forget resets it', () => {
  const q = new RateLimitingQueue({ baseDelayMs: 10, maxDelayMs: 100 });
  assert.deepEqual([q.when('a'), q.when('a'), q.when('a'), q.when('a'), q.when('a')], [10, 20, 40, 80, 100]);
  assert.equal(q.when('b'), 10, 'other keys are independent');
  assert.equal(q.numRequeues('a'), 5);
  q.forget('a');
  assert.equal(q.when('a'), 10);
  q.shutDown();
});

test('addAfter: delayed, and the earliest pending delay wins', async () => {
  const q = new RateLimitingQueue();
  q.addAfter('k', 200);
  q.addAfter('k', 30);
  q.addAfter('k', 500);
  assert.equal(q.length, 0);
  const t0 = Date.now();
  assert.equal(await q.get(), 'k');
  const dt = Date.now() - t0;
  assert.ok(dt >= 25 && dt < 190, `delivered after ${dt} ms`);
  q.done('k');
  assert.ok(q.idle(), 'the later timers were dropped');
  q.shutDown();
});

test('runWorkers: failures are retried with backoff until success; a key is never run concurrently', async () => {
  const q = new RateLimitingQueue({ baseDelayMs: 5, maxDelayMs: 50 });
  let attempts = 0;
  let concurrent = 0;
  let maxConcurrent = 0;
  const errors: number[] = [];
  const done = runWorkers(
    q,
    4,
    async (key) => {
      concurrent++;
      maxConcurrent = Math.max(maxConcurrent, concurrent);
      await sleep(5);
      concurrent--;
      if (key === 'flaky' && ++attempts < 4) throw new Error('not yet');
    },
    (_k, _e, retry) => errors.push(retry),
  );
  q.add('flaky');
  for (let i = 0; i < 10; i++) {
    await sleep(1);
    q.add('flaky');
  }
  for (let i = 0; i < 200 && !(attempts >= 4 && q.idle()); i++) await sleep(10);
  assert.ok(attempts >= 4);
  assert.deepEqual(errors.slice(0, 3), [5, 10, 20]);
  assert.equal(maxConcurrent, 1);
  assert.equal(q.numRequeues('flaky'), 0, 'forgotten after success');
  q.shutDown();
  await done;
});

test('shutDown releases waiting workers', async () => {
  const q = new RateLimitingQueue();
  const p = q.get();
  q.shutDown();
  assert.equal(await p, undefined);
  q.add('x');
  assert.equal(await q.get(), undefined);
});

test('nodeInfoOf: capacity from the heartbeat Lease, cordon/taints/labels from the Node, ready = fresh heartbeat and no NotReady kubelet', async () => {
  const { nodeInfoOf, ANN_NODE_INFO } = await import('../../src/k8s/cluster.js');
  const now = Date.parse('2026-01-01T00:01:00Z');
  const node = { metadata: { name: 'n1', labels: { zone: 'a' } }, spec: { unschedulable: true, taints: [{ key: 'gpu', value: 'no', effect: 'NoSchedule' }] } };
  const report = { name: 'n1', cpus: 8, memoryMiB: 16384, drivers: ['qemu'], accel: 'tcg', labels: { 'microvm.service/driver': 'qemu' }, ready: true };
  const lease = (renew: string, dur = 40) => ({ metadata: { annotations: { [ANN_NODE_INFO]: JSON.stringify(report) } }, spec: { renewTime: new Date(renew), leaseDurationSeconds: dur } });
  const fresh = nodeInfoOf(node as never, lease('2026-01-01T00:00:50Z') as never, now);
  assert.equal(fresh.ready, true);
  assert.equal(fresh.cpus, 8);
  assert.equal(fresh.memoryMiB, 16384);
  assert.deepEqual(fresh.drivers, ['qemu']);
  assert.equal(fresh.unschedulable, true);
  assert.deepEqual(fresh.taints, [{ key: 'gpu', value: 'no', effect: 'NoSchedule' }]);
  assert.deepEqual(fresh.labels, { 'microvm.service/driver': 'qemu', zone: 'a' });
  assert.equal(nodeInfoOf(node as never, lease('2026-01-01T00:00:10Z') as never, now).ready, false, 'heartbeat older than its duration');
  assert.equal(nodeInfoOf(node as never, undefined, now).ready, false, 'no agent on the node');
  const notReady = { ...node, status: { conditions: [{ type: 'Ready', status: 'False' }] } };
  assert.equal(nodeInfoOf(notReady as never, lease('2026-01-01T00:00:50Z') as never, now).ready, false, 'kubelet NotReady');
});

test('nodeInfoOf: the not-ready taint of a Node with no kubelet does not strand a heartbeating agent (issue 17)', async () => {
  const { nodeInfoOf, ANN_NODE_INFO } = await import('../../src/k8s/cluster.js');
  const { Scheduler } = await import('../../src/scheduler/scheduler.js');
  const { ClusterState } = await import('../../src/scheduler/state.js');
  const now = Date.parse('2026-01-01T00:01:00Z');
  const report = { name: 'n1', cpus: 8, memoryMiB: 16384, drivers: ['qemu'], accel: 'tcg', ready: true };
  const lease = { metadata: { annotations: { [ANN_NODE_INFO]: JSON.stringify(report) } }, spec: { renewTime: new Date('2026-01-01T00:00:50Z'), leaseDurationSeconds: 40 } };
  // What TaintNodesByCondition gives every new Node; on a bare control plane nobody removes it.
  const node = {
    metadata: { name: 'n1' },
    spec: { taints: [{ key: 'node.kubernetes.io/not-ready', effect: 'NoSchedule' }, { key: 'node.kubernetes.io/unreachable', effect: 'NoSchedule' }, { key: 'dedicated', value: 'x', effect: 'NoSchedule' }] },
  };
  const info = nodeInfoOf(node as never, lease as never, now);
  assert.equal(info.ready, true);
  assert.deepEqual(info.taints, [{ key: 'dedicated', value: 'x', effect: 'NoSchedule' }], 'the readiness taints are readiness, decided by the heartbeat');
  // A NoExecute not-ready taint is still a taint (the lifecycle controller's eviction signal).
  const noExec = { metadata: { name: 'n1' }, spec: { taints: [{ key: 'node.kubernetes.io/not-ready', effect: 'NoExecute' }] } };
  assert.deepEqual(nodeInfoOf(noExec as never, lease as never, now).taints, [{ key: 'node.kubernetes.io/not-ready', effect: 'NoExecute' }]);
  // And the scheduler places a VM there (it would be refused for the untolerated taint before).
  const state = new ClusterState();
  state.setNode(nodeInfoOf({ metadata: { name: 'n1' }, spec: { taints: [{ key: 'node.kubernetes.io/not-ready', effect: 'NoSchedule' }] } } as never, lease as never, now));
  const vm = { id: 'vm-1', tenant: 't', name: 'a', spec: { vcpu: 1, memory: '128Mi' }, desiredState: 'Running', status: { phase: 'Pending', conditions: [] } };
  const placed = new Scheduler({ cpuOvercommit: 16 }).schedule(vm as never, state);
  assert.equal((placed as { node?: string }).node, 'n1', JSON.stringify(placed));
});

test('nodeInfoOf: the Node annotation microvm.service/allocatable caps what the agent reports', async () => {
  const { nodeInfoOf, ANN_NODE_INFO, ANN_ALLOCATABLE } = await import('../../src/k8s/cluster.js');
  const now = Date.parse('2026-01-01T00:01:00Z');
  const lease = (report: object) => ({ metadata: { annotations: { [ANN_NODE_INFO]: JSON.stringify(report) } }, spec: { renewTime: new Date('2026-01-01T00:00:50Z'), leaseDurationSeconds: 40 } });
  const node = (ann?: string) => ({ metadata: { name: 'n1', ...(ann !== undefined ? { annotations: { [ANN_ALLOCATABLE]: ann } } : {}) } });
  const report = { name: 'n1', cpus: 8, memoryMiB: 16384, drivers: ['qemu'], accel: 'tcg', ready: true };
  assert.equal(nodeInfoOf(node() as never, lease(report) as never, now).allocatable, undefined);
  assert.deepEqual(nodeInfoOf(node('{"memoryMiB":400}') as never, lease(report) as never, now).allocatable, { cpus: 8, memoryMiB: 400 });
  // Never above the agent's own allocatable; nonsense is ignored.
  assert.deepEqual(nodeInfoOf(node('{"cpus":64,"memoryMiB":1024}') as never, lease({ ...report, allocatable: { cpus: 6, memoryMiB: 12000 } }) as never, now).allocatable, { cpus: 6, memoryMiB: 1024 });
  assert.equal(nodeInfoOf(node('not json') as never, lease(report) as never, now).allocatable, undefined);
  assert.equal(nodeInfoOf(node('{"memoryMiB":-1}') as never, lease(report) as never, now).allocatable, undefined);
});

test('microTime: Lease times serialize with 6 fractional digits (the API server refuses milliseconds)', async () => {
  const { microTime } = await import('../../src/k8s/cluster.js');
  const t = microTime(new Date('2026-01-01T00:00:00.123Z'));
  assert.equal(t.toISOString(), '2026-01-01T00:00:00.123000Z');
  assert.equal(JSON.stringify({ t }), '{"t":"2026-01-01T00:00:00.123000Z"}');
  assert.equal(t.getTime(), Date.parse('2026-01-01T00:00:00.123Z'));
});

test('evictionReason: a cordon drains unless the node opts out (drain=false) or the operator default is off; NoExecute taints evict what does not tolerate them', async () => {
  const { evictionReason, ANN_DRAIN } = await import('../../src/k8s/cluster.js');
  const none = (): boolean => false;
  const node = (unschedulable: boolean, ann?: string, taints: Array<{ key: string; value?: string; effect: string }> = []) =>
    ({ metadata: { name: 'n1', annotations: ann === undefined ? {} : { [ANN_DRAIN]: ann } }, spec: { unschedulable, taints } }) as never;
  assert.equal(evictionReason(undefined, none, true), undefined);
  assert.equal(evictionReason(node(false), none, true), undefined, 'schedulable: stays');
  assert.deepEqual(evictionReason(node(true), none, true), { reason: 'NodeDrain', message: 'node n1 is being drained' });
  assert.equal(evictionReason(node(true, 'false'), none, true), undefined, 'opted out: a cordon keeps the VMs');
  assert.equal(evictionReason(node(true), none, false), undefined, 'default off: a cordon keeps the VMs');
  assert.equal(evictionReason(node(true, 'true'), none, false)?.reason, 'NodeDrain', 'drain=true drains with the default off');
  assert.equal(evictionReason(node(false, 'true'), none, true), undefined, 'the annotation alone (not cordoned) does nothing');
  const tainted = node(false, undefined, [{ key: 'maint', value: 'now', effect: 'NoExecute' }, { key: 'x', effect: 'NoSchedule' }]);
  assert.deepEqual(evictionReason(tainted, none, true), { reason: 'NoExecuteTaint', message: 'node n1 has the taint maint=now:NoExecute' });
  assert.equal(evictionReason(tainted, (t) => t.key === 'maint', true), undefined, 'tolerated');
});
