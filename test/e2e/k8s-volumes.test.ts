/**
 * Volumes in cluster mode (ADR 0018, "Cluster mode") on a real kube-apiserver: the cluster API (its
 * own ServiceAccount), the operator and two node agents as local processes, real QEMU guests.
 * REST create → a Volume object placed on a node (kubectl shows Size/Phase/Node/Backend); a VM
 * attaching it is placed on that node and its guest writes into the volume; one writer; deleting it
 * in use is a CONFLICT; the VM goes, the volume stays; snapshot + restore to a new volume run on the
 * volume's node; the next VM (same node) reads the data from both; a VM pinned to a cordoned node is
 * Unschedulable, saying why; quotas; another tenant sees 404; the agents refuse callers without
 * the right.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { ANN_AGENT_ENDPOINT } from '../../src/agent/endpoint/server.js';
import { guestRun } from '../support/console.js';
import { until } from '../support/k8s-operator-cluster.js';
import { startClusterApiHarness, type ClusterApiHarness } from '../support/k8s-cluster-api.js';

const ADMIN = 'adm_cluster_volumes_token_0123456789';
let k: ClusterApiHarness;

before(async () => {
  k = await startClusterApiHarness({ admin: ADMIN, nodes: ['node-a', 'node-b'], grpc: true, waitAgentEndpoints: true });
});

after(async () => {
  await k?.stop();
});

const volumeFiles = (node: string): string[] => {
  const a = k.c.agents.find((x) => x.node === node)!;
  return ['volumes', 'snapshots'].flatMap((d) => {
    const p = join(a.dataDir, 'volumes', d);
    return existsSync(p) ? readdirSync(p) : [];
  });
};

test('volumes in cluster mode: placed on a node, the VM follows, data outlives VMs, snapshot/restore on the node, one writer, quotas, tenancy', { timeout: 600_000 }, async () => {
  const { c, call, waitPhase } = k;
  const t0 = Date.now();
  await k.tenant('acme', { quotas: { volumes: 4 } });
  const token = await k.apiKey('acme', 'member', 'vol');

  // Two volumes: spread over the nodes (fewest volumes first, then by name): scratch → node-a, data → node-b.
  const scratch = await call(token, 'POST', '/volumes', { name: 'scratch', size: '32Mi' });
  assert.equal(scratch.status, 201, scratch.text);
  assert.equal(scratch.json.status.node, 'node-a');
  const created = await call(token, 'POST', '/volumes', { name: 'data', size: '64Mi' });
  assert.equal(created.status, 201, created.text);
  const vol = created.json;
  assert.equal(vol.status.phase, 'Available');
  assert.equal(vol.backend, 'local');
  assert.equal(vol.status.node, 'node-b');
  assert.ok(volumeFiles('node-b').includes(`${vol.id}.img`), 'the bytes are on node-b');
  assert.ok(!volumeFiles('node-a').includes(`${vol.id}.img`), 'and not on node-a');
  // A Volume object in the tenant's namespace, with its printer columns.
  const obj = c.kubectlJson(['get', 'volumes.microvm.service', 'data', '-n', 'acme']);
  assert.equal(obj.metadata.labels['microvm.service/id'], vol.id);
  assert.equal(obj.spec.node, 'node-b');
  const table = c.cp.kubectlOk(['get', 'mvmvol', '-n', 'acme']);
  assert.match(table, /NAME\s+SIZE\s+PHASE\s+NODE\s+BACKEND\s+ATTACHEDTO\s+AGE/);
  assert.match(table, /data\s+64Mi\s+Available\s+node-b\s+local\s/);
  // Quotas: the tenant's volume count, through the namespace's reservations.
  const usage = (await call(ADMIN, 'GET', '/tenants/acme/usage')).json;
  assert.deepEqual(usage.volumes, { used: 2, limit: 4 });

  // A VM attaching it runs on node-b, wherever the scheduler would have put it.
  const secret = `k8s-vol-${process.pid}-${Date.now()}`;
  const boot = async (name: string, volumes: unknown[]): Promise<any> => {
    const r = await call(token, 'POST', '/microvms', { name, vcpu: 1, memory: '128Mi', volumes });
    assert.equal(r.status, 201, r.text);
    return waitPhase(token, r.json.id as string, 'Running', true);
  };
  const run = (vm: any, cmd: string): Promise<string> => guestRun(join(c.agents.find((a) => a.node === vm.status.node)!.dataDir, 'vms', vm.id), cmd, 30_000);
  const remove = async (vm: any): Promise<void> => {
    assert.equal((await call(token, 'DELETE', `/microvms/${vm.id}`)).status, 202);
    await until(c, `${vm.name} gone`, async () => (await call(token, 'GET', `/microvms/${vm.id}`)).status === 404, 120_000);
  };
  const bootMs0 = Date.now();
  const w1 = await boot('writer', [{ name: 'data', mountPath: '/data' }]);
  const bootMs = Date.now() - bootMs0;
  assert.equal(w1.status.node, 'node-b');
  assert.deepEqual(c.guests(w1.id).map((g) => g.node), ['node-b']);
  assert.match(await run(w1, `grep ' /data ' /proc/mounts && echo ${secret} > /data/f.txt && sync && cat /data/f.txt`), new RegExp(`/dev/vdb /data ext4 rw[\\s\\S]*${secret}`));
  const inUse = (await call(token, 'GET', `/volumes/${vol.id}`)).json;
  assert.equal(inUse.status.phase, 'InUse');
  assert.deepEqual(inUse.status.attachedTo.map((a: any) => a.vmId), [w1.id]);
  assert.match(c.cp.kubectlOk(['get', 'mvmvol', 'data', '-n', 'acme']), new RegExp(`InUse\\s+node-b\\s+local\\s+${w1.id}`));

  // One writer; an attached volume is not deleted.
  const second = await call(token, 'POST', '/microvms', { name: 'writer2', volumes: [{ name: 'data', mountPath: '/data' }] });
  assert.equal(second.status, 409, second.text);
  assert.equal(second.json.errors?.[0]?.field, 'volumes[0].name');
  const del = await call(token, 'DELETE', `/volumes/${vol.id}`);
  assert.equal(del.status, 409, del.text);
  assert.equal(del.json.code, 'CONFLICT');

  // Another tenant sees none of it.
  await k.tenant('globex');
  const other = await k.apiKey('globex', 'member', 'x');
  assert.equal((await call(other, 'GET', `/volumes/${vol.id}`)).status, 404);
  assert.equal((await call(other, 'DELETE', `/volumes/${vol.id}`)).status, 404);
  assert.equal((await call(other, 'POST', `/volumes/${vol.id}/snapshots`, { name: 'steal' })).status, 404);
  assert.deepEqual((await call(other, 'GET', '/volumes')).json.items, []);
  const thief = await call(other, 'POST', '/microvms', { name: 'thief', volumes: [{ name: 'data', mountPath: '/data' }] });
  // Another tenant's volume is as missing as one that never existed: 404 naming the field.
  assert.equal(thief.status, 404, thief.text);
  assert.equal(thief.json.errors?.[0]?.field, 'volumes[0].name', thief.text);

  // The agents do volume work only for callers with the right (update volumes/storage).
  const epB = c.kubectlJson(['get', 'node', 'node-b']).metadata.annotations[ANN_AGENT_ENDPOINT] as string;
  assert.equal((await fetch(`${epB}/v1/volumes/${vol.id}/delete?backend=local`, { method: 'POST' })).status, 401);
  const agentSa = c.cp.kubectlOk(['create', 'token', 'firecracker-runtime', '-n', 'microvm-system', '--audience', 'microvm-agent']).trim();
  assert.equal((await fetch(`${epB}/v1/volumes/${vol.id}/delete?backend=local`, { method: 'POST', headers: { authorization: `Bearer ${agentSa}` } })).status, 403);
  assert.ok(volumeFiles('node-b').includes(`${vol.id}.img`));

  // The VM goes, the volume stays (Available again, still on node-b).
  await remove(w1);
  await until(c, 'data Available again', async () => (await call(token, 'GET', `/volumes/${vol.id}`)).json.status?.phase === 'Available', 30_000);

  // Snapshot and restore to a new volume: both on node-b, where the bytes are.
  const snap = await call(token, 'POST', `/volumes/${vol.id}/snapshots`, { name: 's1' });
  assert.equal(snap.status, 201, snap.text);
  assert.equal(snap.json.phase, 'Ready');
  assert.equal(snap.json.node, 'node-b');
  assert.ok(volumeFiles('node-b').includes(`${snap.json.id}.img`));
  assert.match(c.cp.kubectlOk(['get', 'mvmvolsnap', '-n', 'acme']), new RegExp(`s1\\s+${vol.id}\\s+Ready\\s+node-b`));
  const restored = await call(token, 'POST', '/volumes', { name: 'restored', fromSnapshot: 's1', size: '96Mi' });
  assert.equal(restored.status, 201, restored.text);
  assert.equal(restored.json.status.node, 'node-b');
  assert.equal(restored.json.fromSnapshot, snap.json.id);
  assert.equal((await call(token, 'DELETE', `/volumes/${vol.id}`)).status, 409, 'a volume with snapshots is not deleted');

  // A VM pinned to a node that cannot take it is Unschedulable, saying why (no guest boots).
  c.cp.kubectlOk(['cordon', 'node-a']);
  const stuck = await call(token, 'POST', '/microvms', { name: 'stuck', vcpu: 1, memory: '128Mi', volumes: [{ name: 'scratch', mountPath: '/s' }] });
  assert.equal(stuck.status, 201, stuck.text);
  const msg = await until(c, 'stuck Unschedulable', async () => {
    const v = (await call(token, 'GET', `/microvms/${stuck.json.id}`)).json;
    return v.status.conditions?.find((x: any) => x.type === 'Scheduled' && x.reason === 'Unschedulable')?.message as string | undefined;
  }, 60_000);
  assert.match(msg, /volume scratch lives on node node-a: only that node can run it/);
  assert.equal((await call(token, 'DELETE', `/microvms/${stuck.json.id}`)).status, 202);
  c.cp.kubectlOk(['uncordon', 'node-a']);
  await until(c, 'stuck gone', async () => (await call(token, 'GET', `/microvms/${stuck.json.id}`)).status === 404, 60_000);

  // The next VM (node-b again) reads what the first wrote, from the volume and from its restored copy.
  const r2 = await boot('reader', [
    { name: 'data', mountPath: '/data' },
    { name: 'restored', mountPath: '/restored' },
  ]);
  assert.equal(r2.status.node, 'node-b');
  const out = await run(r2, 'cat /data/f.txt; cat /restored/f.txt; df -m /restored | tail -1');
  assert.equal(out.split(secret).length - 1, 2, `both volumes hold the data: ${out}`);
  const df = /\/dev\/vdc\s+(\d+)/.exec(out);
  assert.ok(df && Number(df[1]) > 64, `the restored filesystem grew to the requested size: ${out}`);

  // Quotas: a fifth volume is refused (scratch, data, restored + the limit of 4 → one more fits, then no).
  assert.equal((await call(token, 'POST', '/volumes', { name: 'v4', size: '16Mi' })).status, 201);
  const over = await call(token, 'POST', '/volumes', { name: 'v5', size: '16Mi' });
  assert.equal(over.status, 403, over.text);
  assert.equal(over.json.code, 'QUOTA_EXCEEDED');

  // Clean up in order; the bytes go with the records, on their nodes.
  await remove(r2);
  await until(c, 'data released', async () => (await call(token, 'GET', `/volumes/${vol.id}`)).json.status?.phase === 'Available', 30_000);
  assert.equal((await call(token, 'DELETE', `/volumesnapshots/${snap.json.id}`)).status, 204);
  for (const v of ['data', 'restored', 'scratch', 'v4']) assert.equal((await call(token, 'DELETE', `/volumes/${v}`)).status, 204, v);
  assert.deepEqual((await call(token, 'GET', '/volumes')).json.items, []);
  assert.deepEqual(c.cp.kubectlOk(['get', 'mvmvol', '-n', 'acme', '-o', 'name']).trim(), '');
  assert.deepEqual([...volumeFiles('node-a'), ...volumeFiles('node-b')], [], 'no bytes left on the nodes');
  assert.deepEqual((await call(ADMIN, 'GET', '/tenants/acme/usage')).json.volumes, { used: 0, limit: 4 });
  console.log(`# cluster volumes: guest boot with a volume ${bootMs} ms; whole scenario ${Date.now() - t0} ms`);
});
