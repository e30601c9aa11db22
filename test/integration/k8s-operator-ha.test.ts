/**
 * Cluster mode on a real kube-apiserver, the harder paths: two operator replicas (only the Lease
 * holder acts; kill -9 of the leader mid-reconcile → the other takes over and converges with no
 * duplicate guest), required anti-affinity across two node agents, `kubectl drain` moving a
 * running VM to the other node (with its memory by default: ADR 0034; nothing left behind), and the
 * tenant quota holding for MicroVMs created with kubectl (the operator's admission).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { microVMs, startCluster, until, type Proc, type TestCluster } from '../support/k8s-operator-cluster.js';

let c: TestCluster;
before(async () => {
  c = await startCluster();
  await Promise.all([c.startAgent('node-a'), c.startAgent('node-b')]);
  c.cp.kubectlOk(['create', 'namespace', 'demo']);
});
after(async () => {
  if (process.env.MVM_TEST_DUMP) process.stderr.write(c?.dump() ?? '');
  await c?.stop();
});

const apply = (name: string, spec: Record<string, unknown> = {}): void => microVMs(c).apply(name, spec);
const get = (name: string): any => microVMs(c).get(name);
const idOf = (name: string): string => microVMs(c).idOf(name);
const running = (name: string): any => microVMs(c).running(name);
const holder = (): string | undefined => {
  const r = c.cp.kubectl(['get', 'lease', '-n', 'microvm-system', 'microvm-operator', '-o', 'jsonpath={.spec.holderIdentity}']);
  return r.status === 0 && r.stdout ? r.stdout : undefined;
};
const events = (name: string): string[] => microVMs(c).events(name);
const removeAll = async (...names: string[]): Promise<void> => {
  for (const n of names) c.cp.kubectl(['delete', 'mvm', n, '-n', 'demo', '--wait=false', '--ignore-not-found']);
  await until(c, `${names.join(', ')} deleted`, () => names.every((n) => !get(n)), 120_000);
};
/** Log lines of a process about a MicroVM key. */
const acted = (p: Proc, key: string): number => p.logs().split('\n').filter((l) => l.includes(`"key":"${key}"`)).length;

test('two operator replicas: only the Lease holder acts; kill -9 of the leader mid-reconcile → the other takes over, no duplicate guest', { timeout: 300_000 }, async () => {
  const ops = [await c.startOperator('op-a'), await c.startOperator('op-b')];
  const leaderName = await until(c, 'a leader', () => holder(), 30_000);
  const leader = ops.find((p) => p.name === leaderName)!;
  const follower = ops.find((p) => p.name !== leaderName)!;
  await until(c, 'leader started', () => leader.logs().includes('operator started'), 30_000);
  // Mid-reconcile: kill the leader as soon as it has accepted the VM (finalizer written), before or
  // while it binds it.
  apply('ha-1');
  await until(c, 'ha-1 accepted', () => get('ha-1')?.metadata?.finalizers?.length, 30_000);
  await leader.kill9();
  assert.equal(acted(follower, 'demo/ha-1'), 0, 'the follower did nothing while it was not leading');
  const t0 = Date.now();
  await until(c, 'the follower takes the Lease over', () => holder() === follower.name && follower.logs().includes('operator started'), 30_000);
  assert.ok(Date.now() - t0 < 15_000, `takeover took ${Date.now() - t0} ms (lease duration 4 s)`);
  const o = await until(c, 'ha-1 running after failover', () => running('ha-1'), 180_000);
  // The new leader's resync reconciled it too (it was either bound already, or bound by the new leader).
  await until(c, 'new leader reconciled ha-1', () => acted(follower, 'demo/ha-1') > 0 || follower.logs().includes('became leader'), 30_000);
  const id = idOf('ha-1');
  // Exactly one guest, on the bound node, and exactly one binding.
  await until(c, 'one guest', () => c.guests(id).length === 1, 30_000);
  assert.deepEqual(c.guests(id).map((g) => g.node), [o.status.node]);
  // One binding, one boot (the killed leader may have bound it without getting to its Event).
  const ev = await until(c, 'Started event', () => (events('ha-1').includes('Started') ? events('ha-1') : undefined), 30_000);
  assert.ok(ev.filter((r) => r === 'Scheduled').length <= 1, ev.join(','));
  assert.equal(ev.filter((r) => r === 'Started').length, 1, ev.join(','));
  // The killed replica comes back as a follower: it does not act.
  const back = await c.startOperator('op-c');
  await until(c, 'op-c following', () => back.logs().includes('following'), 30_000);
  assert.ok(!back.logs().includes('became leader'));
  await removeAll('ha-1');
  assert.deepEqual(c.guests(id), []);
  assert.equal(acted(back, 'demo/ha-1'), 0);
});

test('required anti-affinity puts two VMs on different nodes', { timeout: 300_000 }, async () => {
  const spec = {
    labels: { app: 'web' },
    affinity: { vmAntiAffinity: { required: [{ labelSelector: { matchLabels: { app: 'web' } } }] } },
  };
  apply('web-1', spec);
  apply('web-2', spec);
  const [a, b] = await until(c, 'web-1 and web-2 running', () => {
    const x = running('web-1');
    const y = running('web-2');
    return x && y ? [x, y] : undefined;
  }, 240_000);
  assert.notEqual(a.status.node, b.status.node);
  assert.deepEqual(c.guests(idOf('web-1')).map((g) => g.node), [a.status.node]);
  assert.deepEqual(c.guests(idOf('web-2')).map((g) => g.node), [b.status.node]);
  // A third one fits nowhere: Unschedulable, with the reason per node.
  apply('web-3', spec);
  const u = await until(c, 'web-3 unschedulable', () => get('web-3')?.status?.conditions?.find((x: any) => x.type === 'Scheduled' && x.status === 'False'), 30_000);
  assert.equal(u.reason, 'Unschedulable');
  assert.match(u.message, /node-a/);
  assert.equal(get('web-3').status.phase, 'Pending');
  await removeAll('web-1', 'web-2', 'web-3');
});

test('kubectl drain moves a running VM to another node; a node annotated drain=false keeps its VMs when cordoned', { timeout: 300_000 }, async () => {
  apply('mover');
  const o = await until(c, 'mover running', () => running('mover'), 180_000);
  const from = o.status.node as string;
  const id = idOf('mover');
  const fromAgent = c.agents.find((a) => a.node === from)!;
  await until(c, 'guest on the first node', () => c.guests(id).length === 1, 30_000);
  // Opted out: cordoned, yet the VM stays (no new VMs only).
  c.cp.kubectlOk(['annotate', 'node', from, 'microvm.service/drain=false']);
  c.cp.kubectlOk(['cordon', from]);
  await new Promise((r) => setTimeout(r, 3000));
  assert.equal(running('mover')?.status.node, from, 'a cordoned node annotated drain=false keeps its VMs');
  assert.ok(!get('mover').status.conditions.some((x: any) => x.type === 'Evicting' && x.status === 'True'));
  c.cp.kubectlOk(['uncordon', from]);
  c.cp.kubectlOk(['annotate', 'node', from, 'microvm.service/drain-']);
  // The real `kubectl drain` (it cordons the node; MicroVMs are not pods, the operator moves them).
  const out = c.cp.kubectlOk(['drain', from, '--ignore-daemonsets', '--timeout=60s']);
  assert.match(out, new RegExp(`node/${from} (cordoned|drained)`));
  assert.equal(c.kubectlJson(['get', 'node', from]).spec.unschedulable, true);
  const moved = await until(c, 'mover running elsewhere', () => {
    const x = running('mover');
    return x && x.status.node !== from ? x : undefined;
  }, 240_000);
  assert.notEqual(moved.status.node, from);
  await until(c, 'old node cleaned up', () => !existsSync(join(fromAgent.dataDir, 'vms', id)), 60_000);
  assert.deepEqual(c.guests(id).map((g) => g.node), [moved.status.node]);
  assert.equal(moved.metadata.labels['microvm.service/id'], id, 'the same VM moved');
  // A drain moves a Running VM with its memory by default (ADR 0034; the cold move — Evicting,
  // Stopped, Evicted — is the fallback, covered by the NoExecute test below and bench/migrate.ts).
  const ev = events('mover');
  for (const r of ['Migrating', 'Migrated', 'MigratedLive']) assert.ok(ev.includes(r), `missing ${r} in ${ev.join(',')}`);
  assert.ok(!ev.includes('ColdMoved') && !ev.includes('Stopped'), ev.join(','));
  assert.equal(ev.filter((r) => r === 'Scheduled').length, 1, 'placed once: it moved, it was not placed anew');
  // Uncordoned, the node takes VMs again.
  c.cp.kubectlOk(['uncordon', from]);
  await removeAll('mover');
  assert.deepEqual(c.guests(id), []);
});

test('a NoExecute taint moves the VMs that do not tolerate it, and leaves those that do', { timeout: 300_000 }, async () => {
  apply('keeper', { tolerations: [{ key: 'maintenance', operator: 'Exists', effect: 'NoExecute' }], nodeSelector: { 'kubernetes.io/hostname': 'node-a' } });
  apply('leaver', { nodeSelector: { 'kubernetes.io/hostname': 'node-a' } });
  await until(c, 'both running on node-a', () => running('keeper')?.status.node === 'node-a' && running('leaver')?.status.node === 'node-a', 180_000);
  // leaver may only run on node-a: with the taint it must leave and then has nowhere to go.
  c.cp.kubectlOk(['taint', 'nodes', 'node-a', 'maintenance=now:NoExecute']);
  const l = await until(c, 'leaver evicted', () => {
    const o = get('leaver');
    return o?.status?.phase === 'Pending' && !o.status.node ? o : undefined;
  }, 120_000);
  assert.ok(l.status.conditions.some((x: any) => x.type === 'Scheduled' && x.status === 'False'));
  await until(c, 'leaver guest gone', () => c.guests(idOf('leaver')).length === 0, 60_000);
  assert.equal(running('keeper')?.status.node, 'node-a', 'the tolerating VM stays');
  assert.equal(c.guests(idOf('keeper')).length, 1);
  c.cp.kubectlOk(['taint', 'nodes', 'node-a', 'maintenance=now:NoExecute-']);
  await until(c, 'leaver back on node-a', () => running('leaver')?.status.node === 'node-a', 180_000);
  await removeAll('keeper', 'leaver');
});

test('a VM whose Node object is deleted is placed on another node; the old node removes it', { timeout: 300_000 }, async () => {
  apply('orphan');
  const o = await until(c, 'orphan running', () => running('orphan'), 180_000);
  const from = o.status.node as string;
  const id = idOf('orphan');
  const fromAgent = c.agents.find((a) => a.node === from)!;
  await until(c, 'guest on the first node', () => c.guests(id).length === 1, 30_000);
  c.cp.kubectlOk(['delete', 'node', from]);
  const moved = await until(c, 'orphan running elsewhere', () => {
    const x = running('orphan');
    return x && x.status.node !== from ? x : undefined;
  }, 240_000);
  let state = '';
  await until(c, 'old node cleaned up', () => {
    state = JSON.stringify({ guests: c.guests(id), dir: existsSync(join(fromAgent.dataDir, 'vms', id)), vm: get('orphan')?.status });
    return c.guests(id).length === 1 && !existsSync(join(fromAgent.dataDir, 'vms', id));
  }, 60_000).catch((e: Error) => {
    throw new Error(`${state}\n${e.message}`);
  });
  assert.deepEqual(c.guests(id).map((g) => g.node), [moved.status.node]);
  assert.ok(events('orphan').includes('Evicted'));
  await removeAll('orphan');
  assert.deepEqual(c.guests(id), []);
});

test('quota holds for kubectl-created MicroVMs: the operator admits the oldest that fit, the rest wait (Admitted=False, QuotaExceeded) until there is room', { timeout: 120_000 }, async () => {
  // A tenant namespace as the API's tenant store writes it: label + the tenant document with quotas.
  c.cp.kubectlOk(['apply', '-f', '-'], JSON.stringify({
    apiVersion: 'v1',
    kind: 'Namespace',
    metadata: { name: 'quota-t', labels: { 'microvm.service/tenant-record': 'true' }, annotations: { 'microvm.service/tenant': JSON.stringify({ quotas: { vms: 2, vcpu: 3 } }) } },
  }));
  const vms = microVMs(c, 'quota-t');
  const mk = (name: string, vcpu: number): string => vms.manifest(name, { vcpu, desiredState: 'Stopped' });
  const q = vms.get;
  const admitted = (name: string): any => q(name)?.status?.conditions?.find((x: any) => x.type === 'Admitted');
  c.cp.kubectlOk(['apply', '-f', '-'], mk('q1', 2));
  await until(c, 'q1 admitted and Stopped', () => admitted('q1')?.status === 'True' && q('q1').status.phase === 'Stopped', 60_000);
  // q2 (2 vCPU) would make 4 > 3; q3 (1 vCPU), created after it, fits.
  c.cp.kubectlOk(['apply', '-f', '-'], mk('q2', 2));
  const refused = await until(c, 'q2 refused', () => (admitted('q2')?.status === 'False' ? admitted('q2') : undefined), 60_000);
  assert.equal(refused.reason, 'QuotaExceeded');
  assert.match(refused.message, /vcpu would be 4, limit 3/);
  assert.equal(q('q2').status.phase, 'Pending');
  assert.equal(q('q2').status.node, undefined);
  const ev = c.kubectlJson(['get', 'events', '-n', 'quota-t', '--field-selector', 'involvedObject.name=q2']).items.map((e: any) => e.reason);
  assert.ok(ev.includes('QuotaExceeded'), ev.join(','));
  c.cp.kubectlOk(['apply', '-f', '-'], mk('q3', 1));
  await until(c, 'q3 admitted', () => admitted('q3')?.status === 'True', 60_000);
  // Now 2 VMs (the vms limit) and 3 vCPU: q2 still waits. Deleting q1 makes room for it.
  assert.equal(admitted('q2')?.status, 'False');
  c.cp.kubectlOk(['delete', 'mvm', 'q1', '-n', 'quota-t', '--wait=false']);
  await until(c, 'q2 admitted once q1 is gone', () => admitted('q2')?.status === 'True' && q('q2').status.phase === 'Stopped', 60_000);
  c.cp.kubectl(['delete', 'namespace', 'quota-t', '--wait=false']);
});
