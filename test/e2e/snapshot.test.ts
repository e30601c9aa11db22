/**
 * Pause/resume, snapshots and restores through the API with real QEMU guests:
 * memory survives pause → snapshot → delete → restore, and two clones of one
 * snapshot get their own identity (IP, MAC, hostname) and their own disks.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import type { MicroVM } from '../../sdk/typescript/src/index.js';
import { destroyDataDir, apiCall, startService, type TestService } from '../support/service.js';
import { guestRun } from '../support/console.js';

let svc: TestService;

const api = (method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> => apiCall(svc, method, path, body);

const run = (vm: MicroVM, cmd: string): Promise<string> => guestRun(join(svc.dataDir, 'vms', vm.id), cmd, 20_000);

before(async () => {
  svc = await startService();
});
after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

test('pause, resume, snapshot, delete, restore twice: memory survives, identity is fresh', async () => {
  const created = await svc.client.microvms.create({ name: 'origin' });
  const a = await svc.client.microvms.waitFor(created.id, { phase: 'Running', ready: true, timeoutMs: 150_000 });
  const secret = `secret-${process.pid}-${Date.now()}`;
  assert.match(await run(a, `echo ${secret} > /tmp/mem.txt && echo W$((6*7))`), /W42/, 'the write ran (W42 is computed; the echoed command shows W$((6*7)))');

  // Illegal in the wrong phase.
  assert.equal((await api('POST', `/microvms/${a.id}/resume`)).json.code, 'ILLEGAL_TRANSITION');

  // Pause: the guest stops making progress; resume brings it back.
  assert.equal((await api('POST', `/microvms/${a.id}/pause`)).status, 202);
  const paused = await svc.client.microvms.waitFor(a.id, { phase: 'Paused', timeoutMs: 30_000 });
  assert.equal(paused.status.phase, 'Paused');
  assert.equal((await api('POST', `/microvms/${a.id}/pause`)).json.code, 'ILLEGAL_TRANSITION');
  assert.equal((await api('POST', `/microvms/${a.id}/resume`)).status, 202);
  await svc.client.microvms.waitFor(a.id, { phase: 'Running', ready: false, timeoutMs: 30_000 });
  assert.match(await run(a, 'cat /tmp/mem.txt'), new RegExp(secret));
  assert.equal((await api('POST', `/microvms/${a.id}/pause`)).status, 202);
  await svc.client.microvms.waitFor(a.id, { phase: 'Paused', timeoutMs: 30_000 });

  // Snapshot the paused VM.
  const t0 = Date.now();
  const snap = await api('POST', `/microvms/${a.id}/snapshots`, { name: 'snap1' });
  assert.equal(snap.status, 201, JSON.stringify(snap.json));
  assert.equal(snap.json.phase, 'Ready');
  assert.equal(snap.json.vmId, a.id);
  assert.ok(snap.json.sizeBytes > 0);
  const snapMs = Date.now() - t0;
  assert.equal((await api('POST', `/microvms/${a.id}/snapshots`, { name: 'snap1' })).status, 409, 'names are unique');
  // Snapshots count against the tenant's quota.
  assert.equal((await api('PUT', '/tenants/default', { quotas: { snapshots: 1 } })).status, 200);
  const over = await api('POST', `/microvms/${a.id}/snapshots`, { name: 'snap2' });
  assert.equal(over.status, 403, JSON.stringify(over.json));
  assert.equal(over.json.code, 'QUOTA_EXCEEDED');
  assert.equal((await api('GET', '/tenants/default/usage')).json.snapshots.used, 1);
  assert.equal((await api('PUT', '/tenants/default', { quotas: {} })).status, 200);
  assert.equal((await api('GET', `/microvms/${a.id}/snapshots`)).json.items.length, 1);

  // Delete the original; the snapshot lives on.
  await svc.client.microvms.delete(a.id);
  await svc.client.microvms.waitDeleted(a.id, { timeoutMs: 60_000 });

  // Bad restores: a shape that differs from the snapshot, an unknown snapshot.
  const bad = await api('POST', `/snapshots/${snap.json.id}/restore`, { name: 'bad', vcpu: 2 });
  assert.equal(bad.status, 422, 'valid by the schema, but not the snapshot\'s shape');
  assert.ok(bad.json.errors.some((e: { field: string }) => e.field === 'vcpu'));
  const missing = await api('POST', '/microvms', { name: 'bad2', snapshot: 'snap-nope' });
  assert.equal(missing.status, 404);
  assert.ok(missing.json.errors.some((e: { field: string }) => e.field === 'snapshot'));

  // Two clones: one via /restore, one via POST /microvms {snapshot}.
  const t1 = Date.now();
  const r1 = await api('POST', `/snapshots/${snap.json.id}/restore`, { name: 'clone-1' });
  assert.equal(r1.status, 201, JSON.stringify(r1.json));
  const r2 = await api('POST', '/microvms', { name: 'clone-2', snapshot: 'snap1' });
  assert.equal(r2.status, 201, JSON.stringify(r2.json));
  const [c1, c2] = await Promise.all([r1.json.id, r2.json.id].map((id: string) => svc.client.microvms.waitFor(id, { phase: 'Running', ready: true, timeoutMs: 120_000 })));
  const restoreMs = Date.now() - t1;
  for (const c of [c1!, c2!]) {
    assert.match(await run(c, 'cat /tmp/mem.txt'), new RegExp(secret), `memory state survived in ${c.name}`);
    const ipOut = await run(c, 'ip -4 addr show eth0; hostname; cat /etc/machine-id');
    assert.ok(ipOut.includes(c.status.ip!), `guest uses its new address ${c.status.ip}: ${ipOut}`);
    assert.match(ipOut, new RegExp(c.name));
  }
  assert.notEqual(c1!.status.ip, c2!.status.ip);
  assert.notEqual(c1!.status.interfaces![0]!.mac, c2!.status.interfaces![0]!.mac);
  // Own disks: a write in one clone is not seen by the other.
  await run(c1!, 'echo only-in-1 > /root/disk.txt && sync');
  assert.doesNotMatch(await run(c2!, 'cat /root/disk.txt 2>&1 || true'), /only-in-1/);

  // The snapshot backs the clones' disks: deleting it is refused until they are gone.
  assert.equal((await api('DELETE', `/snapshots/${snap.json.id}`)).status, 409);
  for (const c of [c1!, c2!]) await svc.client.microvms.delete(c.id);
  for (const c of [c1!, c2!]) await svc.client.microvms.waitDeleted(c.id, { timeoutMs: 60_000 });
  assert.equal((await api('DELETE', `/snapshots/${snap.json.id}`)).status, 204);
  assert.equal((await api('GET', `/snapshots/${snap.json.id}`)).status, 404);
  console.log(`# snapshot ${snapMs} ms; two restores to ready ${restoreMs} ms`);
});
