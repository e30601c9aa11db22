/**
 * The gateway's SQLite adapters on their own: migration from the first schema (existing VMs are
 * accounted), atomic quota admission in the store, the read caches staying coherent with writes,
 * tenants/keys/reservations, idempotency claims.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MvmError } from '../../src/core/errors.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { SqliteTenantStore } from '../../src/store/sqlite/tenant-store.js';
import { SqliteIdempotencyStore } from '../../src/store/sqlite/idempotency-store.js';
import { vmFixture } from '../contract/store.contract.js';

const dir = mkdtempSync(join(tmpdir(), 'mvm-gwstore-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

test('a state file of schema 1 is migrated: existing VMs count against quotas', async () => {
  const path = join(dir, 'v1.db');
  const db = new Database(path);
  db.exec(`CREATE TABLE microvms (id TEXT PRIMARY KEY, tenant TEXT NOT NULL, name TEXT NOT NULL, phase TEXT NOT NULL, rv INTEGER NOT NULL, seq INTEGER NOT NULL, doc TEXT NOT NULL, UNIQUE (tenant, name));
    CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, vm_id TEXT NOT NULL, tenant TEXT NOT NULL, time TEXT NOT NULL, type TEXT NOT NULL, reason TEXT NOT NULL, message TEXT NOT NULL);
    CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);`);
  const vm = vmFixture({ tenant: 'old', spec: { vcpu: 2, memory: '1Gi', rootfs: { size: '2Gi' }, labels: {} } });
  db.prepare('INSERT INTO microvms VALUES (?, ?, ?, ?, 1, 1, ?)').run(vm.id, vm.tenant, vm.name, 'Stopped', JSON.stringify(vm));
  db.pragma('user_version = 1');
  db.close();
  const s = new SqliteStore(path);
  const t = new SqliteTenantStore(s);
  assert.deepEqual(await t.usage('old'), { vms: 1, vcpu: 2, memoryMiB: 1024, diskMiB: 2048, snapshots: 0, volumes: 0, hostPorts: 0 });
  assert.equal((await s.getVm(vm.id))?.name, vm.name, 'the microvms table is untouched');
  await assert.rejects(s.createVm(vmFixture({ tenant: 'old' }), { admission: { limits: { vms: 1 } } }), (e: unknown) => e instanceof MvmError && e.code === 'QUOTA_EXCEEDED');
  await s.close();
  // Reopening is idempotent.
  const again = new SqliteStore(path);
  assert.equal((await new SqliteTenantStore(again).usage('old')).vms, 1);
  await again.close();
});

test('quota admission and usage follow creates, resizes and deletes; reservations count', async () => {
  const s = new SqliteStore(join(dir, 'q.db'));
  const t = new SqliteTenantStore(s);
  const limits = { vms: 3, vcpu: 4, memoryMiB: 1024, diskMiB: 4096, snapshots: 1 };
  const a = await s.createVm(vmFixture({ tenant: 'q', spec: { vcpu: 2, memory: '512Mi', labels: {} } }), { admission: { limits, diskMiB: 1024 } });
  await assert.rejects(s.createVm(vmFixture({ tenant: 'q', spec: { vcpu: 3, memory: '128Mi', labels: {} } }), { admission: { limits } }), /vcpu would be 5, limit 4/);
  await assert.rejects(s.updateVm(a.id, (v) => ({ ...v, spec: { ...v.spec, memory: '2Gi' } }), undefined, { admission: { limits } }), /memoryMiB/);
  await s.updateVm(a.id, (v) => ({ ...v, spec: { ...v.spec, vcpu: 1 } }), undefined, { admission: { limits } });
  assert.deepEqual(await t.usage('q'), { vms: 1, vcpu: 1, memoryMiB: 512, diskMiB: 1024, snapshots: 0, volumes: 0, hostPorts: 0 });
  await t.reserve('q', { kind: 'snapshot', id: 'snap-1', diskMiB: 2048 }, limits);
  await t.reserve('q', { kind: 'snapshot', id: 'snap-1', diskMiB: 2048 }, limits); // idempotent
  await assert.rejects(t.reserve('q', { kind: 'snapshot', id: 'snap-2', diskMiB: 1 }, limits), /snapshots would be 2, limit 1/);
  assert.deepEqual(await t.usage('q'), { vms: 1, vcpu: 1, memoryMiB: 512, diskMiB: 3072, snapshots: 1, volumes: 0, hostPorts: 0 });
  await t.release('q', 'snapshot', 'snap-1');
  await s.deleteVm(a.id);
  assert.deepEqual(await t.usage('q'), { vms: 0, vcpu: 0, memoryMiB: 0, diskMiB: 0, snapshots: 0, volumes: 0, hostPorts: 0 });
  await s.close();
});

test('raw read caches stay coherent with every write', async () => {
  const s = new SqliteStore(join(dir, 'c.db'));
  const a = await s.createVm(vmFixture({ tenant: 'c', name: 'a' }));
  const r1 = await s.getVmRaw(a.id);
  const l1 = await s.listVmsRaw({ tenant: 'c' });
  assert.equal(l1, await s.listVmsRaw({ tenant: 'c' }), 'served from memory while nothing changed');
  await s.updateVm(a.id, (v) => ({ ...v, spec: { ...v.spec, labels: { x: '1' } } }));
  const r2 = await s.getVmRaw(a.id);
  assert.notEqual(r2!.resourceVersion, r1!.resourceVersion);
  assert.equal(JSON.parse(r2!.json).spec.labels.x, '1');
  const l2 = await s.listVmsRaw({ tenant: 'c' });
  assert.equal(JSON.parse(l2.items[0]!).spec.labels.x, '1');
  await s.createVm(vmFixture({ tenant: 'c', name: 'b' }));
  assert.equal((await s.listVmsRaw({ tenant: 'c' })).items.length, 2);
  await s.deleteVm(a.id);
  assert.equal(await s.getVmRaw(a.id), undefined);
  assert.equal((await s.listVmsRaw({ tenant: 'c' })).items.length, 1);
  await s.close();
});

test('idempotency claims: new, in progress, done, mismatch, and a stale claim is taken over', async () => {
  const s = new SqliteStore(join(dir, 'i.db'));
  let now = 1_000_000;
  const st = new SqliteIdempotencyStore(s, () => now);
  const o = { ttlMs: 86_400_000, lockMs: 60_000 };
  assert.equal((await st.begin('k', 'f1', o)).state, 'new');
  assert.equal((await st.begin('k', 'f1', o)).state, 'in-progress');
  assert.equal((await st.begin('k', 'f2', o)).state, 'mismatch');
  now += 61_000;
  assert.equal((await st.begin('k', 'f1', o)).state, 'new', 'the request that claimed it died');
  await st.complete('k', { status: 201, headers: { location: '/x' }, body: '{"id":"x"}' });
  const done = await st.begin('k', 'f1', o);
  assert.equal(done.state, 'done');
  assert.equal(done.state === 'done' && done.response.body, '{"id":"x"}');
  now += 86_400_001;
  assert.equal((await st.begin('k', 'f2', o)).state, 'new', 'expired records are forgotten');
  await s.close();
});
