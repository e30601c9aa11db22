/**
 * Volumes through the API with real QEMU guests: a file written to a volume by one VM is read
 * by the next VM that attaches it; a read-only attachment refuses writes in the guest; one
 * writer at a time; an attached volume cannot be deleted; snapshot + restore-to-new-volume keeps
 * the data; quotas refuse an oversized volume; another tenant sees 404.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { MicroVM } from '../../sdk/typescript/src/index.js';
import { destroyDataDir, apiCall, startService, type TestService } from '../support/service.js';
import { guestRun } from '../support/console.js';
import { sleep } from '../../src/vmm/proc.js';

let svc: TestService;

const api = (method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> => apiCall(svc, method, path, body);
const as = (token: string) => (method: string, path: string, body?: unknown) => apiCall({ url: svc.url, token }, method, path, body);
const run = (vm: MicroVM, cmd: string): Promise<string> => guestRun(join(svc.dataDir, 'vms', vm.id), cmd, 30_000);

async function boot(name: string, volumes: unknown[]): Promise<MicroVM> {
  const r = await api('POST', '/microvms', { name, volumes });
  assert.equal(r.status, 201, JSON.stringify(r.json));
  return svc.client.microvms.waitFor(r.json.id, { phase: 'Running', ready: true, timeoutMs: 180_000 });
}

async function remove(vm: MicroVM): Promise<void> {
  assert.equal((await api('DELETE', `/microvms/${vm.id}`)).status < 300, true);
  await svc.client.microvms.waitDeleted(vm.id, { timeoutMs: 60_000 });
}

async function volumeUntil(id: string, phase: string): Promise<any> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const v = (await api('GET', `/volumes/${id}`)).json;
    if (v.status?.phase === phase || Date.now() > deadline) return v;
    await sleep(100);
  }
}

before(async () => {
  svc = await startService();
});
after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

test('volumes: data outlives VMs, one writer, read-only in the guest, snapshot/restore, quotas, tenancy', async () => {
  const t0 = Date.now();
  // A volume of the admin's tenant.
  const created = await api('POST', '/volumes', { name: 'data', size: '64Mi' });
  assert.equal(created.status, 201, JSON.stringify(created.json));
  assert.equal(created.json.status.phase, 'Available');
  assert.equal(created.json.backend, 'local');
  assert.equal(created.json.sizeBytes, 64 * 1024 * 1024);
  const vol = created.json;
  const createMs = Date.now() - t0;
  assert.equal((await api('POST', '/volumes', { name: 'data', size: '64Mi' })).status, 409, 'names are unique per tenant');
  assert.equal((await api('POST', '/volumes', { name: 'nosize' })).json.errors?.[0]?.field, 'size');
  assert.equal((await api('POST', '/volumes', { name: 'x', size: '64Mi', backend: 'nope' })).json.errors?.[0]?.field, 'backend');

  // Quotas: an oversized volume is refused and leaves nothing behind; usage counts volumes.
  assert.equal((await api('POST', '/tenants', { id: 'vq', quotas: { disk: '100Mi', volumes: 2 } })).status, 201);
  const over = await api('POST', '/volumes?tenant=vq', { name: 'big', size: '1Gi' });
  assert.equal(over.status, 403, JSON.stringify(over.json));
  assert.equal(over.json.code, 'QUOTA_EXCEEDED');
  assert.deepEqual((await api('GET', '/volumes?tenant=vq')).json.items, []);
  const small = await api('POST', '/volumes?tenant=vq', { name: 'small', size: '64Mi' });
  assert.equal(small.status, 201);
  assert.equal(small.json.tenant, 'vq');
  const usage = (await api('GET', '/tenants/vq/usage')).json;
  assert.deepEqual(usage.volumes, { used: 1, limit: 2 });
  assert.equal(usage.diskMiB.used, 64);

  // VM 1 writes a file to the volume.
  const secret = `vol-secret-${process.pid}-${Date.now()}`;
  const w1 = await boot('writer', [{ name: 'data', mountPath: '/data' }]);
  const inUse = (await api('GET', `/volumes/${vol.id}`)).json;
  assert.equal(inUse.status.phase, 'InUse');
  assert.deepEqual(inUse.status.attachedTo.map(({ attachedAt: _t, ...a }: any) => a), [{ vmId: w1.id, readOnly: false, mountPath: '/data' }]);
  assert.match(await run(w1, `grep ' /data ' /proc/mounts && echo ${secret} > /data/f.txt && sync && cat /data/f.txt`), new RegExp(`/dev/vdb /data ext4 rw[\\s\\S]*${secret}`));

  // Attached: not deletable; a second writer is refused; an unknown volume names the field.
  const del = await api('DELETE', `/volumes/${vol.id}`);
  assert.equal(del.status, 409, JSON.stringify(del.json));
  assert.match(del.json.detail, /attached to microVM/);
  const second = await api('POST', '/microvms', { name: 'writer2', volumes: [{ name: 'data', mountPath: '/data' }] });
  assert.equal(second.status, 409, JSON.stringify(second.json));
  assert.equal(second.json.errors?.[0]?.field, 'volumes[0].name');
  const unknown = await api('POST', '/microvms', { name: 'nov', volumes: [{ name: 'missing', mountPath: '/m' }] });
  assert.equal(unknown.status, 404);
  assert.equal(unknown.json.errors?.[0]?.field, 'volumes[0].name');
  assert.equal((await api('GET', '/microvms')).json.items.length, 1, 'refused creates leave no VM');

  // The VM goes, the volume stays (Available again).
  await remove(w1);
  assert.equal((await volumeUntil(vol.id, 'Available')).status.phase, 'Available');

  // Snapshot, then restore to a new volume.
  const snap = await api('POST', `/volumes/${vol.id}/snapshots`, { name: 's1' });
  assert.equal(snap.status, 201, JSON.stringify(snap.json));
  assert.equal(snap.json.phase, 'Ready');
  const restored = await api('POST', '/volumes', { name: 'restored', fromSnapshot: 's1', size: '96Mi' });
  assert.equal(restored.status, 201, JSON.stringify(restored.json));
  assert.equal(restored.json.fromSnapshot, snap.json.id);
  assert.equal((await api('DELETE', `/volumes/${vol.id}`)).status, 409, 'a volume with snapshots is not deleted');

  // VM 2: the original read-only, the restored copy read-write, and a new volume created from `size`.
  const r2 = await boot('reader', [
    { name: 'data', mountPath: '/data', readOnly: true },
    { name: 'restored', mountPath: '/restored' },
    { name: 'scratch', mountPath: '/scratch', size: '32Mi' },
  ]);
  const out = await run(r2, `cat /data/f.txt; touch /data/new 2>&1; echo TOUCH-RC=$?; cat /restored/f.txt; df -m /restored | tail -1; echo S$((6*7)) > /scratch/s && cat /scratch/s`);
  assert.match(out, new RegExp(secret), 'the next VM reads what the first wrote');
  // Computed markers: the echoed command line shows TOUCH-RC=$? and S$((6*7)), never these.
  assert.match(out, /Read-only file system[\s\S]*TOUCH-RC=[1-9]/, out);
  assert.equal(out.split(secret).length - 1 >= 2, true, `the restored volume has the data: ${out}`);
  const df = /\/dev\/vdc\s+(\d+)/.exec(out);
  assert.ok(df && Number(df[1]) > 64, `the restored filesystem grew to the requested size: ${out}`);
  assert.match(out, /S42/, 'the scratch volume is writable');
  const scratch = (await api('GET', '/volumes/scratch')).json;
  assert.equal(scratch.status.phase, 'InUse');
  // A reader excludes a writer.
  const w3 = await api('POST', '/microvms', { name: 'writer3', volumes: [{ name: 'data', mountPath: '/data' }] });
  assert.equal(w3.status, 409, JSON.stringify(w3.json));

  // Another tenant sees none of it.
  assert.equal((await api('POST', '/tenants', { id: 'vb' })).status, 201);
  const key = await api('POST', '/apikeys?tenant=vb', { name: 'member', role: 'member' });
  assert.equal(key.status, 201, JSON.stringify(key.json));
  const vb = as(key.json.token);
  assert.equal((await vb('GET', `/volumes/${vol.id}`)).status, 404);
  assert.equal((await vb('DELETE', `/volumes/${vol.id}`)).status, 404);
  assert.equal((await vb('GET', `/volumesnapshots/${snap.json.id}`)).status, 404);
  assert.equal((await vb('POST', `/volumes/${vol.id}/snapshots`, { name: 'steal' })).status, 404);
  assert.equal((await vb('POST', '/volumes', { name: 'steal', fromSnapshot: snap.json.id })).status, 404);
  assert.deepEqual((await vb('GET', '/volumes')).json.items, []);
  const foreign = await vb('POST', '/microvms', { name: 'thief', volumes: [{ name: 'data', mountPath: '/data' }] });
  assert.equal(foreign.status, 404);
  assert.equal(foreign.json.errors?.[0]?.field, 'volumes[0].name');

  // Clean up in order; volumes outlive the VM and then go with their files.
  await remove(r2);
  assert.equal((await api('DELETE', `/volumes/${small.json.id}`)).status, 204);
  assert.deepEqual((await api('GET', '/tenants/vq/usage')).json.volumes, { used: 0, limit: 2 }, 'deleting releases the quota');
  for (const id of ['scratch', 'restored']) assert.equal((await api('DELETE', `/volumes/${id}`)).status, 204);
  assert.equal((await api('DELETE', `/volumesnapshots/${snap.json.id}`)).status, 204);
  assert.equal((await api('DELETE', `/volumes/${vol.id}`)).status, 204);
  assert.equal((await api('GET', `/volumes/${vol.id}`)).status, 404);
  const files = ['volumes', 'snapshots'].flatMap((d) => {
    const p = join(svc.dataDir, 'volumes', d);
    return existsSync(p) ? readdirSync(p) : [];
  });
  assert.deepEqual(files, [], 'no files left behind');
  console.log(`# volume create (64Mi, mkfs.ext4): ${createMs} ms; whole scenario ${Date.now() - t0} ms`);
});
