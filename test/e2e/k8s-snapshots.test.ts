/**
 * Pause/resume, memory snapshots and restores in cluster mode (ADR 0009, 0015): the API in cluster
 * mode (its own ServiceAccount), the operator and two node agents as local processes on a real
 * kube-apiserver, real QEMU guests. The same SnapshotService and routes as standalone: the record is
 * a `Snapshot` object in the tenant's namespace, the files are written by the agent of the VM's node
 * (through its authenticated endpoint), a restored VM is placed only on that node.
 *
 * Two guests in all: the origin and one restored clone.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { sleep } from '../../src/vmm/proc.js';
import { ANN_AGENT_ENDPOINT } from '../../src/agent/endpoint/server.js';
import { guestRun } from '../support/console.js';
import { until } from '../support/k8s-operator-cluster.js';
import { startClusterApiHarness, type ClusterApiHarness } from '../support/k8s-cluster-api.js';

const ADMIN = 'adm_cluster_snap_token_0123456789';
let k: ClusterApiHarness;

/** Run a command on a guest's serial console (on the node's data directory, as the standalone test does). */
const run = (node: string, id: string, cmd: string): Promise<string> => guestRun(join(k.c.agents.find((a) => a.node === node)!.dataDir, 'vms', id), cmd, 30_000);

before(async () => {
  k = await startClusterApiHarness({ admin: ADMIN, nodes: ['node-a', 'node-b'] });
});

after(async () => {
  await k?.stop();
});

test('cluster mode: pause/resume, snapshot → Snapshot object on the node, restore pinned to that node with memory intact, isolation, delete conflicts', { timeout: 600_000 }, async () => {
  const { c, call, waitPhase } = k;
  await k.tenant('acme');
  await k.tenant('globex');
  const token = await k.apiKey('acme', 'member');
  const other = await k.apiKey('globex', 'member');

  const created = await call(token, 'POST', '/microvms', { name: 'origin', vcpu: 1, memory: '128Mi' });
  assert.equal(created.status, 201, created.text);
  const id = created.json.id as string;
  const a = await waitPhase(token, id, 'Running', true);
  const node = a.status.node as string;
  assert.ok(['node-a', 'node-b'].includes(node));
  const secret = `secret-${process.pid}-${Date.now()}`;
  assert.match(await run(node, id, `echo ${secret} > /tmp/mem.txt && echo W$((6*7))`), /W42/, 'the write ran (W42 is computed; the echoed command shows W$((6*7)))');

  // Pause/resume: desiredState in the MicroVM object, acted on by the VM's node agent.
  assert.equal((await call(token, 'POST', `/microvms/${id}/resume`)).json.code, 'ILLEGAL_TRANSITION');
  assert.equal((await call(other, 'POST', `/microvms/${id}/pause`)).status, 404, 'another tenant cannot pause it');
  const p = await call(token, 'POST', `/microvms/${id}/pause`);
  assert.equal(p.status, 202, p.text);
  assert.equal(c.kubectlJson(['get', 'mvm', 'origin', '-n', 'acme']).spec.desiredState, 'Paused');
  await waitPhase(token, id, 'Paused');
  assert.equal(c.kubectlJson(['get', 'mvm', 'origin', '-n', 'acme']).status.phase, 'Paused');
  assert.equal((await call(token, 'POST', `/microvms/${id}/resume`)).status, 202);
  await waitPhase(token, id, 'Running');
  assert.match(await run(node, id, 'cat /tmp/mem.txt'), new RegExp(secret));
  assert.equal((await call(token, 'POST', `/microvms/${id}/pause`)).status, 202);
  await waitPhase(token, id, 'Paused');

  // Snapshot (of the paused VM): files on its node, the record a Snapshot object in the tenant's namespace.
  const snap = await call(token, 'POST', `/microvms/${id}/snapshots`, { name: 'snap1' });
  assert.equal(snap.status, 201, `${snap.text}\n${c.dump()}`);
  assert.equal(snap.json.phase, 'Ready');
  assert.equal(snap.json.vmId, id);
  assert.equal(snap.json.node, node);
  assert.ok(snap.json.sizeBytes > 0);
  const snapId = snap.json.id as string;
  const cr = c.kubectlJson(['get', 'mvmsnap', 'snap1', '-n', 'acme']);
  assert.equal(cr.kind, 'Snapshot');
  assert.equal(cr.metadata.labels['microvm.service/id'], snapId);
  assert.equal(cr.spec.phase, 'Ready');
  assert.equal(cr.spec.node, node);
  assert.equal(cr.spec.vmSpec.memory, '128Mi');
  const snapDir = join(c.agents.find((x) => x.node === node)!.dataDir, 'snapshots', snapId);
  assert.ok(existsSync(snapDir), 'the files are on the VM node');
  const table = c.cp.kubectlOk(['get', 'mvmsnap', '-n', 'acme']);
  assert.match(table, /^NAME\s+VM\s+PHASE\s+NODE\s+SIZE\s+AGE\n/);
  assert.match(table, new RegExp(`\\nsnap1\\s+${id}\\s+Ready\\s+${node}\\s+\\d+\\s+\\d+[sm]\\n$`));
  assert.equal((await call(token, 'POST', `/microvms/${id}/snapshots`, { name: 'snap1' })).status, 409, 'names are unique');
  assert.equal((await call(token, 'GET', `/microvms/${id}/snapshots`)).json.items.length, 1);
  // Quota: snapshots are reserved on the tenant (its namespace), as in standalone.
  assert.equal((await call(ADMIN, 'PUT', '/tenants/acme', { quotas: { snapshots: 1 } })).status, 200);
  const over = await call(token, 'POST', `/microvms/${id}/snapshots`, { name: 'snap2' });
  assert.equal(over.status, 403, over.text);
  assert.equal(over.json.code, 'QUOTA_EXCEEDED');
  assert.equal(c.cp.kubectl(['get', 'mvmsnap', 'snap2', '-n', 'acme']).status, 1, 'nothing left behind');

  // The node agent's snapshot routes serve only callers the cluster authorises: none → 401, a
  // ServiceAccount without the RBAC rights (microvms/snapshot, snapshots/files) → 403.
  const ep = c.kubectlJson(['get', 'node', node]).metadata.annotations[ANN_AGENT_ENDPOINT] as string;
  assert.equal((await fetch(`${ep}/v1/microvms/${id}/snapshots/snap-x`, { method: 'POST' })).status, 401);
  c.cp.kubectlOk(['create', 'serviceaccount', 'nosy', '-n', 'acme']);
  const nosy = c.cp.kubectlOk(['create', 'token', 'nosy', '-n', 'acme', '--audience', 'microvm-agent']).trim();
  const auth = { authorization: `Bearer ${nosy}` };
  assert.equal((await fetch(`${ep}/v1/microvms/${id}/snapshots/snap-x`, { method: 'POST', headers: auth })).status, 403);
  assert.equal((await fetch(`${ep}/v1/snapshots/${snapId}`, { method: 'DELETE', headers: auth })).status, 403);
  assert.ok(existsSync(snapDir), 'a refused delete removes nothing');

  // Another tenant sees nothing of it.
  assert.equal((await call(other, 'GET', `/snapshots/${snapId}`)).status, 404);
  assert.equal((await call(other, 'GET', '/snapshots')).json.items.length, 0);
  assert.equal((await call(other, 'DELETE', `/snapshots/${snapId}`)).status, 404);
  assert.equal((await call(other, 'POST', `/snapshots/${snapId}/restore`, { name: 'steal' })).status, 404);

  // Restore: only the snapshot's node may run the clone. With that node capped below what the
  // clone needs it stays Unschedulable (the other node has room) and says why.
  c.cp.kubectlOk(['annotate', 'node', node, '--overwrite', 'microvm.service/allocatable={"cpus":8,"memoryMiB":200}']);
  await sleep(1000); // the operator's Node informer sees it
  const r = await call(token, 'POST', `/snapshots/${snapId}/restore`, { name: 'clone' });
  assert.equal(r.status, 201, r.text);
  const cloneId = r.json.id as string;
  assert.deepEqual(r.json.spec.source, { snapshot: snapId });
  const cond = await until(c, 'clone Unschedulable', () =>
    (c.kubectlJson(['get', 'mvm', 'clone', '-n', 'acme']).status?.conditions ?? []).find((x: any) => x.type === 'Scheduled' && x.reason === 'Unschedulable'),
  );
  assert.match(cond.message, new RegExp(`snapshot ${snapId}: only node ${node} \\(which holds its files\\) can run it`));
  assert.match(cond.message, /insufficient memory/);
  assert.equal(c.kubectlJson(['get', 'mvm', 'clone', '-n', 'acme']).status.node, undefined);
  c.cp.kubectlOk(['annotate', 'node', node, 'microvm.service/allocatable-']);
  const clone = await waitPhase(token, cloneId, 'Running', true);
  assert.equal(clone.status.node, node, 'restored on the node holding the snapshot');
  assert.deepEqual(c.guests(cloneId).map((g) => g.node), [node]);
  // Memory survived: the file written in the origin's tmpfs before the snapshot.
  assert.match(await run(node, cloneId, 'cat /tmp/mem.txt'), new RegExp(secret), 'memory state survived the restore');
  assert.notEqual(clone.status.ip, a.status.ip, 'fresh identity');

  // Delete while a VM restored from it exists: CONFLICT, as in standalone.
  const busy = await call(token, 'DELETE', `/snapshots/${snapId}`);
  assert.equal(busy.status, 409, busy.text);
  assert.equal(busy.json.code, 'CONFLICT');
  assert.ok(existsSync(snapDir));

  const d = await call(token, 'DELETE', `/microvms/${cloneId}`);
  assert.equal(d.status, 202, d.text);
  await until(c, 'clone gone', () => c.cp.kubectl(['get', 'mvm', 'clone', '-n', 'acme']).status !== 0, 120_000);
  await until(c, 'the API no longer lists the clone', async () => (await call(token, 'GET', `/microvms/${cloneId}`)).status === 404, 10_000);
  const gone = await call(token, 'DELETE', `/snapshots/${snapId}`);
  assert.equal(gone.status, 204, gone.text);
  assert.equal(c.cp.kubectl(['get', 'mvmsnap', 'snap1', '-n', 'acme']).status, 1, 'the Snapshot object is gone');
  assert.ok(!existsSync(snapDir), 'its files are gone from the node');
  assert.equal((await call(token, 'GET', `/snapshots/${snapId}`)).status, 404);
  // The reservation went with it: the quota of 1 admits a new snapshot.
  const again = await call(token, 'POST', `/microvms/${id}/snapshots`, { name: 'snap3' });
  assert.equal(again.status, 201, again.text);
  assert.equal((await call(token, 'DELETE', `/snapshots/${again.json.id}`)).status, 204);
});
