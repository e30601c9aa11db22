/**
 * Cluster mode end to end on a real kube-apiserver: the operator and two node agents as local
 * processes (each its own node: data dir, network namespace, Node object, RBAC of deploy/),
 * real guests under QEMU. `kubectl apply` boots a guest on the chosen node, `kubectl get mvm`
 * shows it, `kubectl delete` stops it and the finalizer goes only after the node cleaned up.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { microVMs, startCluster, until, type TestCluster } from '../support/k8s-operator-cluster.js';

let c: TestCluster;
before(async () => {
  c = await startCluster();
  await c.startOperator('op-0');
  await Promise.all([c.startAgent('node-a'), c.startAgent('node-b')]);
  c.cp.kubectlOk(['create', 'namespace', 'demo']);
});
after(async () => {
  if (process.env.MVM_TEST_DUMP) process.stderr.write(c?.dump() ?? '');
  await c?.stop();
});

const vmManifest = (name: string, extra: Record<string, unknown> = {}): string => microVMs(c).manifest(name, extra);
const get = (name: string): any => microVMs(c).get(name);
const ready = (o: any): boolean => o?.status?.phase === 'Running' && o.status.conditions?.some((x: any) => x.type === 'GuestReady' && x.status === 'True');

test('kubectl apply boots a real guest on the chosen node; status, label, finalizer, events, printer columns', { timeout: 240_000 }, async () => {
  c.cp.kubectlOk(['apply', '-f', '-'], vmManifest('web'));
  const o = await until(c, 'web Running with GuestReady', () => (ready(get('web')) ? get('web') : undefined), 180_000);
  const id = o.metadata.labels['microvm.service/id'];
  assert.match(id, /^vm-/);
  assert.ok(['node-a', 'node-b'].includes(o.status.node), o.status.node);
  assert.equal(o.metadata.labels['microvm.service/node'] ?? (await until(c, 'node label', () => get('web').metadata.labels['microvm.service/node'])), o.status.node);
  assert.deepEqual(o.metadata.finalizers, ['microvm.service/finalizer']);
  assert.match(o.status.ip, /^\d+\.\d+\.\d+\.\d+$/);
  assert.equal(o.status.observedGeneration, o.metadata.generation);
  assert.ok(o.status.bootMs?.guestReady > 0);
  // One guest, on the node the status names.
  const g = c.guests(id);
  assert.deepEqual(g.map((x) => x.node), [o.status.node]);
  const agent = c.agents.find((a) => a.node === o.status.node)!;
  assert.ok(existsSync(join(agent.dataDir, 'vms', id)));
  // Kubernetes Events for the transitions, from the operator and the node agent.
  const reasons = await until(c, 'events', () => {
    const ev = c.kubectlJson(['get', 'events', '-n', 'demo', '--field-selector', 'involvedObject.name=web']).items.map((e: any) => e.reason);
    return ['Accepted', 'Scheduled', 'Starting', 'Started', 'GuestReady'].every((r) => ev.includes(r)) ? ev : undefined;
  }, 30_000);
  assert.ok(reasons.length >= 5);
  // Printer columns.
  const table = c.cp.kubectlOk(['get', 'mvm', '-n', 'demo']);
  const [head, row] = table.trim().split('\n');
  assert.match(head!, /^NAME\s+PHASE\s+IP\s+NODE\s+VCPU\s+MEMORY\s+READY\s+AGE/);
  assert.match(row!, new RegExp(`^web\\s+Running\\s+${o.status.ip.replace(/\./g, '\\.')}\\s+${o.status.node}\\s+1\\s+128Mi\\s+True\\s+`));
});

test('spec.desiredState: Stopped stops the guest on its node, Running starts it again (kubectl patch)', { timeout: 240_000 }, async () => {
  const o = get('web');
  assert.ok(ready(o), 'web is running (first test)');
  const id = o.metadata.labels['microvm.service/id'];
  c.cp.kubectlOk(['patch', 'mvm', 'web', '-n', 'demo', '--type=merge', '-p', '{"spec":{"desiredState":"Stopped"}}']);
  const s = await until(c, 'web Stopped', () => (get('web')?.status?.phase === 'Stopped' ? get('web') : undefined), 60_000);
  assert.equal(s.status.observedGeneration, s.metadata.generation);
  assert.equal(s.status.node, o.status.node, 'a stopped VM keeps its node (and its disk there)');
  await until(c, 'no guest', () => c.guests(id).length === 0, 30_000);
  c.cp.kubectlOk(['patch', 'mvm', 'web', '-n', 'demo', '--type=merge', '-p', '{"spec":{"desiredState":"Running"}}']);
  const r = await until(c, 'web Running again', () => (ready(get('web')) ? get('web') : undefined), 180_000);
  assert.equal(r.status.node, o.status.node);
  assert.deepEqual(c.guests(id).map((g) => g.node), [o.status.node]);
  assert.ok(c.kubectlJson(['get', 'events', '-n', 'demo', '--field-selector', 'involvedObject.name=web']).items.some((e: any) => e.reason === 'Restarting'));
});

test('kubectl delete stops the guest; the finalizer goes only after the node cleaned up', { timeout: 180_000 }, async () => {
  const o = get('web');
  assert.ok(o, 'web exists (previous test)');
  const id = o.metadata.labels['microvm.service/id'];
  const agent = c.agents.find((a) => a.node === o.status.node)!;
  c.cp.kubectlOk(['delete', 'mvm', 'web', '-n', 'demo', '--wait=false']);
  // While the object is still there (finalizer), it is terminating, not gone.
  const seen: string[] = [];
  await until(c, 'web gone', () => {
    const cur = get('web');
    if (cur) {
      seen.push(cur.metadata.deletionTimestamp ? 'terminating' : 'live');
      if (cur.status?.conditions?.some((x: any) => x.type === 'NodeCleanedUp' && x.status === 'True')) {
        assert.deepEqual(c.guests(id), [], 'cleanup reported while the guest still runs');
      }
    }
    return !cur;
  }, 120_000);
  assert.deepEqual(c.guests(id), []);
  assert.ok(!existsSync(join(agent.dataDir, 'vms', id)), 'VM directory removed from the node');
  const ev = c.kubectlJson(['get', 'events', '-n', 'demo', '--field-selector', 'involvedObject.name=web']).items.map((e: any) => e.reason);
  assert.ok(ev.includes('Deleted'), ev.join(','));
});

test('RBAC: the processes above ran as their ServiceAccounts; the agent heartbeat Role is namespaced', () => {
  const can = (sa: string, args: string[]): boolean =>
    c.cp.kubectl(['auth', 'can-i', ...args, `--as=system:serviceaccount:microvm-system:${sa}`]).stdout.trim() === 'yes';
  const checks: Array<[string, string[], boolean]> = [
    ['firecracker-runtime', ['create', 'leases.coordination.k8s.io', '-n', 'microvm-system'], true],
    ['firecracker-runtime', ['update', 'leases.coordination.k8s.io', '-n', 'microvm-system'], true],
    ['firecracker-runtime', ['update', 'leases.coordination.k8s.io', '-n', 'kube-node-lease'], false],
    ['firecracker-runtime', ['delete', 'leases.coordination.k8s.io', '-n', 'microvm-system'], false],
    ['firecracker-runtime', ['update', 'microvms.microvm.service', '--subresource=finalizers', '-n', 'demo'], false],
    ['microvm-operator', ['watch', 'leases.coordination.k8s.io', '-n', 'microvm-system'], true],
    ['microvm-operator', ['update', 'microvms.microvm.service', '-n', 'demo'], true],
    ['microvm-operator', ['update', 'nodes'], false],
  ];
  const wrong = checks.filter(([sa, args, want]) => can(sa, args) !== want).map(([sa, args, want]) => `${sa} ${args.join(' ')}: expected ${want ? 'yes' : 'no'}`);
  assert.deepEqual(wrong, []);
  // The heartbeat the operator schedules with carries the node's report.
  const lease = c.kubectlJson(['get', 'lease', '-n', 'microvm-system', 'mvm-node-node-a']);
  const info = JSON.parse(lease.metadata.annotations['microvm.service/node-info']);
  assert.equal(info.name, 'node-a');
  assert.ok(info.cpus > 0 && info.memoryMiB > 0 && info.drivers.includes('qemu'), JSON.stringify(info));
  assert.ok(Date.now() - Date.parse(lease.spec.renewTime) < 30_000, 'renewed recently');
});
