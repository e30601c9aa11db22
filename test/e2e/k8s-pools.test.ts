/**
 * MicroVMPools on a real kube-apiserver (ADR 0033): the operator (its pool controller) and two node
 * agents as local processes, real guests under QEMU. `kubectl scale` through the CRD's scale
 * subresource 0 → 3 (spread over both nodes) → 1 (deleted); with scaleDown: suspend, 3 → 1 pauses
 * two members and 1 → 3 resumes the same ones (same VM ids, same VMM pids, no new boot); a template
 * change rolls the members with never more than maxUnavailable = 1 below the replicas Ready; the
 * operator's autoscaling rule follows a metric annotation on the pool; deleting the pool deletes
 * its members (the controller's finalizer: no garbage collector runs here).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { sleep } from '../../src/vmm/proc.js';
import { startCluster, until, type TestCluster } from '../support/k8s-operator-cluster.js';

const NS = 'demo';
let c: TestCluster;

before(async () => {
  c = await startCluster();
  await c.startOperator('op-0');
  await Promise.all([c.startAgent('node-a'), c.startAgent('node-b')]);
  c.cp.kubectlOk(['create', 'namespace', NS]);
});
after(async () => {
  if (process.env.MVM_TEST_DUMP) process.stderr.write(c?.dump() ?? '');
  await c?.stop();
});

const pool = (): any => c.kubectlJson(['get', 'mvmpool', 'web', '-n', NS]);
const members = (): any[] => c.kubectlJson(['get', 'mvm', '-n', NS, '-l', 'microvm.service/pool=web']).items;
const live = (ms: any[]): any[] => ms.filter((m) => !m.metadata.deletionTimestamp);
const suspended = (m: any): boolean => m.metadata.labels['microvm.service/pool-suspended'] === 'true';
const ready = (m: any): boolean =>
  !m.metadata.deletionTimestamp && !suspended(m) && m.status?.phase === 'Running' && m.status.conditions?.some((x: any) => x.type === 'GuestReady' && x.status === 'True');
const idOf = (m: any): string => m.metadata.labels['microvm.service/id'];
/** The pool's events, oldest first (by the operator's millisecond time: a list is in name order). */
const events = (): string[] =>
  c
    .kubectlJson(['get', 'events', '-n', NS, '--field-selector', 'involvedObject.kind=MicroVMPool,involvedObject.name=web'])
    .items.map((e: any) => ({ at: e.metadata.annotations?.['microvm.service/time'] ?? '', text: `${e.reason}: ${e.message}` }))
    .sort((a: { at: string }, b: { at: string }) => (a.at < b.at ? -1 : a.at > b.at ? 1 : 0))
    .map((e: { text: string }) => e.text);
/** The pool once its status says `n` ready of `n` wanted on the current template. */
const settled = (n: number, suspendedN = 0) =>
  until(c, `pool web: ${n} ready, ${suspendedN} suspended`, () => {
    const p = pool();
    const s = p.status ?? {};
    const ms = live(members());
    return p.spec.replicas === n && s.readyReplicas === n && s.replicas === n && s.updatedReplicas === n && s.suspendedReplicas === suspendedN && ms.filter(ready).length === n && ms.length === n + suspendedN ? p : undefined;
  }, 150_000);

test('kubectl scale 0 → 3 (spread over both nodes) → 1 (deleted); status, printer columns, events', { timeout: 240_000 }, async () => {
  c.cp.kubectlOk(['apply', '-f', '-'], JSON.stringify({
    apiVersion: 'microvm.service/v1alpha1',
    kind: 'MicroVMPool',
    metadata: { name: 'web', namespace: NS },
    spec: { replicas: 0, template: { labels: { app: 'web' }, spec: { vcpu: 1, memory: '128Mi' } } },
  }));
  const p0 = await until(c, 'pool status', () => (pool().status?.selector ? pool() : undefined), 30_000);
  assert.equal(p0.status.selector, 'microvm.service/pool=web');
  assert.deepEqual(p0.metadata.finalizers, ['microvm.service/pool-finalizer']);
  assert.equal(members().length, 0);

  c.cp.kubectlOk(['scale', 'mvmpool/web', '-n', NS, '--replicas=3']);
  const p3 = await settled(3);
  const ms = live(members());
  assert.deepEqual(new Set(ms.map((m) => m.status.node)), new Set(['node-a', 'node-b']), 'spread over both nodes');
  for (const m of ms) {
    assert.match(m.metadata.name, /^web-[a-z0-9]{5}$/);
    assert.equal(m.metadata.ownerReferences[0].kind, 'MicroVMPool');
    assert.equal(m.metadata.ownerReferences[0].uid, p3.metadata.uid);
    assert.equal(m.spec.labels.app, 'web');
    assert.equal(m.metadata.labels['microvm.service/pool-template-hash'], p3.status.templateHash);
    assert.equal(c.guests(idOf(m)).length, 1);
  }
  assert.ok(p3.status.conditions.some((x: any) => x.type === 'Ready' && x.status === 'True'));
  // The scale subresource as kubectl and an HPA read it.
  const scale = JSON.parse(c.cp.kubectlOk(['get', '--raw', `/apis/microvm.service/v1alpha1/namespaces/${NS}/microvmpools/web/scale`]));
  assert.deepEqual([scale.kind, scale.spec.replicas, scale.status.replicas, scale.status.selector], ['Scale', 3, 3, 'microvm.service/pool=web']);
  const [head, row] = c.cp.kubectlOk(['get', 'mvmpool', '-n', NS]).trim().split('\n');
  assert.match(head!, /^NAME\s+DESIRED\s+CURRENT\s+READY\s+UPDATED\s+SUSPENDED\s+AGE/);
  assert.match(row!, /^web\s+3\s+3\s+3\s+3\s+0\s+/);

  c.cp.kubectlOk(['scale', 'mvmpool/web', '-n', NS, '--replicas=1']);
  await settled(1);
  await until(c, 'the two surplus members gone', () => members().length === 1, 60_000);
  const left = members()[0];
  for (const m of ms.filter((x) => x.metadata.name !== left.metadata.name)) assert.deepEqual(c.guests(idOf(m)), [], `${m.metadata.name} has no guest left`);
  const ev = events();
  assert.ok(ev.some((e) => e.startsWith('Created: created 3 member(s)')), ev.join('\n'));
  assert.equal(ev.filter((e) => e.startsWith('Deleted: deleted member') && e.includes('scale down to 1')).length, 2, ev.join('\n'));
});

test('scaleDown: suspend — 3 → 1 pauses two members (memory kept), 1 → 3 resumes the same VMs (same ids, same VMM pids)', { timeout: 240_000 }, async () => {
  c.cp.kubectlOk(['patch', 'mvmpool', 'web', '-n', NS, '--type=merge', '-p', '{"spec":{"scaleDown":"suspend"}}']);
  c.cp.kubectlOk(['scale', 'mvmpool/web', '-n', NS, '--replicas=3']);
  await settled(3);
  const before3 = live(members());
  const pids = new Map(before3.map((m) => [idOf(m), c.guests(idOf(m))[0]?.pid]));

  c.cp.kubectlOk(['scale', 'mvmpool/web', '-n', NS, '--replicas=1']);
  const p = await settled(1, 2);
  assert.equal(p.status.suspendedReplicas, 2);
  const sus = await until(c, 'two members Paused', () => {
    const s = members().filter(suspended);
    return s.length === 2 && s.every((m) => m.status.phase === 'Paused' && m.spec.desiredState === 'Paused') ? s : undefined;
  }, 60_000);
  for (const m of sus) assert.equal(c.guests(idOf(m))[0]?.pid, pids.get(idOf(m)), `${m.metadata.name}: the VMM still runs, paused`);
  assert.match(c.cp.kubectlOk(['get', 'mvmpool', '-n', NS]).trim().split('\n')[1]!, /^web\s+1\s+1\s+1\s+1\s+2\s+/);

  const t0 = Date.now();
  c.cp.kubectlOk(['scale', 'mvmpool/web', '-n', NS, '--replicas=3']);
  await settled(3);
  const resumeMs = Date.now() - t0;
  const after3 = live(members());
  assert.deepEqual(new Set(after3.map(idOf)), new Set(before3.map(idOf)), 'the same VMs: resumed, none created');
  for (const m of after3) assert.equal(c.guests(idOf(m))[0]?.pid, pids.get(idOf(m)), `${m.metadata.name}: same VMM process`);
  const ev = events();
  assert.equal(ev.filter((e) => e.startsWith('Suspended:')).length, 2, ev.join('\n'));
  assert.equal(ev.filter((e) => e.startsWith('Resumed:')).length, 2, ev.join('\n'));
  process.stderr.write(`# scale-up 1 → 3 by resuming suspended members: ${resumeMs} ms\n`);
});

test('a template change rolls the members: maxUnavailable 1, never more than one below the replicas Ready', { timeout: 240_000 }, async () => {
  const old = new Set(live(members()).map((m) => m.metadata.name));
  const oldHash = pool().status.templateHash;
  c.cp.kubectlOk(['patch', 'mvmpool', 'web', '-n', NS, '--type=merge', '-p', JSON.stringify({ spec: { strategy: { rollingUpdate: { maxUnavailable: 1 } }, template: { labels: { app: 'web', version: 'v2' } } } })]);
  let minReady = Infinity;
  let samples = 0;
  const deadline = Date.now() + 180_000;
  for (;;) {
    const ms = live(members());
    const r = ms.filter(ready).length;
    minReady = Math.min(minReady, r);
    samples++;
    const p = pool();
    if (p.status.templateHash !== oldHash && p.status.updatedReplicas === 3 && p.status.readyReplicas === 3 && ms.length === 3 && ms.every((m) => !old.has(m.metadata.name)) && r === 3) break;
    if (Date.now() > deadline) assert.fail(`rolling update did not finish: ${JSON.stringify(p.status)}\n${c.dump()}`);
    await sleep(150);
  }
  assert.ok(samples > 10, `observed ${samples} times`);
  assert.equal(minReady, 2, 'one member below the replicas at most (and the update did take one down)');
  for (const m of live(members())) assert.equal(m.spec.labels.version, 'v2');
  const ev = events();
  assert.equal(ev.filter((e) => e.startsWith('Deleted:') && e.includes('rolling update')).length, 3, ev.join('\n'));
});

test('autoscaling rule on a metric: the operator sets replicas through the scale subresource', { timeout: 240_000 }, async () => {
  c.cp.kubectlOk(['patch', 'mvmpool', 'web', '-n', NS, '--type=merge', '-p', JSON.stringify({ spec: { autoscaling: { minReplicas: 1, maxReplicas: 3, metric: { name: 'queue', target: 10 }, scaleDownStabilizationSeconds: 0 } } })]);
  const noMetric = await until(c, 'ScalingActive=False NoMetric', () => pool().status.conditions.find((x: any) => x.type === 'ScalingActive' && x.reason === 'NoMetric'), 30_000);
  assert.equal(noMetric.status, 'False');
  // A queue of 5 items wants one member at 10 per member: 3 → 1 (the two suspended).
  c.cp.kubectlOk(['annotate', 'mvmpool', 'web', '-n', NS, '--overwrite', 'metrics.microvm.service/queue=5']);
  const p1 = await settled(1, 2);
  assert.equal(p1.status.autoscaling.currentValue, 5);
  assert.equal(p1.status.autoscaling.desiredReplicas, 1);
  assert.ok(p1.status.autoscaling.lastScaleTime);
  // 25 items: 3 members (resumed).
  c.cp.kubectlOk(['annotate', 'mvmpool', 'web', '-n', NS, '--overwrite', 'metrics.microvm.service/queue=25']);
  await settled(3);
  // 1000 items: still 3 (maxReplicas).
  c.cp.kubectlOk(['annotate', 'mvmpool', 'web', '-n', NS, '--overwrite', 'metrics.microvm.service/queue=1000']);
  await until(c, 'currentValue 1000', () => pool().status.autoscaling?.currentValue === 1000, 30_000);
  assert.equal(pool().spec.replicas, 3);
  const ev = events().filter((e) => e.startsWith('Autoscaled:'));
  assert.deepEqual(ev.map((e) => e.replace(/:.*?replicas (\d+) → (\d+).*/, ' $1→$2')), ['Autoscaled 3→1', 'Autoscaled 1→3'], ev.join('\n'));
});

test('deleting the pool deletes its members (the controller’s finalizer), suspended ones too', { timeout: 180_000 }, async () => {
  c.cp.kubectlOk(['patch', 'mvmpool', 'web', '-n', NS, '--type=merge', '-p', '{"metadata":{"annotations":{"metrics.microvm.service/queue":"12"}}}']);
  await settled(2, 1);
  const ids = members().map(idOf);
  assert.equal(ids.length, 3);
  c.cp.kubectlOk(['delete', 'mvmpool', 'web', '-n', NS, '--wait=false']);
  await until(c, 'pool and members gone', () => c.cp.kubectl(['get', 'mvmpool', 'web', '-n', NS]).status !== 0 && members().length === 0, 120_000);
  for (const id of ids) assert.deepEqual(c.guests(id), [], `${id}: no guest left`);
});
