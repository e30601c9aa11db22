/**
 * The contract of the tenant port (src/core/ports/tenants.ts) and the API-key port
 * (src/core/ports/apikeys.ts), which every adapter implements together (one record store of the
 * gateway). Written once; run by test/unit/store-ports-sqlite.test.ts (SQLite) and
 * test/integration/store-ports-k8s.test.ts (Kubernetes: namespaces and Secrets of a real
 * kube-apiserver).
 *
 * What an adapter does differently from the reference semantics (SQLite) it declares in
 * `TenantContractCapabilities`; each flag changes exactly the assertions it names, into the
 * other behaviour (never into "anything goes").
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes, MvmError, type ErrorCode } from '../../src/core/errors.js';
import { newId } from '../../src/core/microvm.js';
import type { ApiKeyRecord, ApiKeyStore } from '../../src/core/ports/apikeys.js';
import type { Page, Store } from '../../src/core/ports/store.js';
import type { Tenant, TenantStore } from '../../src/core/ports/tenants.js';
import { emptyUsage } from '../../src/core/quota.js';
import { hashSecret, keyState } from '../../src/core/tenancy.js';
import { vmFixture } from './store.contract.js';

export interface TenantContractFixture {
  tenants: TenantStore & ApiKeyStore;
  /** The microVM store of the same installation: usage counts its VMs. */
  vms: Store;
  close(): Promise<void>;
}

export interface TenantContractCapabilities {
  /**
   * Order of listTenants and listKeys: 'created' = insertion order (reference), 'id' = by id
   * (Kubernetes lists objects by name, and the object is named by the id).
   */
  listOrder?: 'created' | 'id';
  /**
   * A listing may end with one empty page behind a cursor (Kubernetes hands out a continue token
   * when more objects, of other installations, follow in etcd). Reference: the page with the last
   * item carries no cursor.
   */
  mayEndWithEmptyPage?: boolean;
  /**
   * Deleting a tenant is finished later by a controller (a Kubernetes namespace is Terminating until
   * its contents are gone): the tenant is gone at once, but its id is CONFLICT for createTenant until
   * then. Reference: the id can be created again at once.
   */
  asyncDelete?: boolean;
  /**
   * Reservations are kept on the tenant record: reserving for an id that has no record is NOT_FOUND.
   * Reference: reservations are rows of their own and need no record.
   */
  reservationsNeedRecord?: boolean;
  /**
   * A reservation's (kind, id) is unique per tenant: another tenant may hold the same pair, each
   * counted in its own usage. Reference: unique across tenants (a second tenant gets CONFLICT).
   */
  reservationIdsPerTenant?: boolean;
}

const T0 = '2030-01-01T00:00:00.000Z';

export function tenantFixture(id: string, over: Partial<Tenant> = {}): Tenant {
  return { id, displayName: `Tenant ${id}`, quotas: {}, labels: {}, resourceVersion: '0', createdAt: T0, updatedAt: T0, ...over };
}

export function keyFixture(tenant: string, over: Partial<ApiKeyRecord> = {}): ApiKeyRecord {
  const secret = newId('secret');
  return {
    id: newId('key'),
    tenant,
    name: `k-${Math.random().toString(36).slice(2, 8)}`,
    role: 'member',
    secretHash: hashSecret(secret),
    createdAt: new Date().toISOString(),
    createdBy: 'user:alice',
    ...over,
  };
}

export const isCode =
  (code: ErrorCode, field?: string) =>
  (e: unknown): boolean => {
    assert.ok(e instanceof MvmError, `expected an MvmError ${code}, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (field !== undefined) assert.ok(e.violations.some((v) => v.field === field), `expected a violation on ${field}: ${JSON.stringify(e.violations)}`);
    return true;
  };

/** Every page of a listing, checked against `limit` and the page-shape capability. */
export async function allPages<T>(list: (cursor?: string) => Promise<Page<T>>, limit: number, mayEndWithEmptyPage = false): Promise<T[]> {
  const sizes: number[] = [];
  const items: T[] = [];
  let cursor: string | undefined;
  do {
    const page = await list(cursor);
    sizes.push(page.items.length);
    items.push(...page.items);
    cursor = page.nextCursor;
    assert.ok(sizes.length < 100, 'the listing never ends');
  } while (cursor);
  // Full pages, then one partial (or full) last page; possibly one empty page behind it.
  const last = mayEndWithEmptyPage && sizes.length > 1 && sizes.at(-1) === 0 ? sizes.length - 2 : sizes.length - 1;
  for (let i = 0; i < sizes.length; i++) {
    if (i < last) assert.equal(sizes[i], limit, `page ${i} of ${JSON.stringify(sizes)} is not full`);
    else if (i === last) assert.ok(sizes[i]! <= limit && (sizes[i]! > 0 || i === 0), `last page of ${JSON.stringify(sizes)}`);
    else assert.equal(sizes[i], 0);
  }
  return items;
}

export function tenantContract(name: string, make: () => Promise<TenantContractFixture>, caps: TenantContractCapabilities = {}): void {
  const order = caps.listOrder ?? 'created';
  const expectOrder = <T extends { id: string }>(created: T[]): string[] => {
    const ids = created.map((x) => x.id);
    return order === 'id' ? [...ids].sort() : ids;
  };

  describe(`tenant store contract: ${name}`, () => {
    test('createTenant keeps what it was given; a taken id is ALREADY_EXISTS; an unknown id is undefined', async () => {
      const f = await make();
      const t = tenantFixture('acme', { displayName: 'Acme Corp', quotas: { vms: 3, vcpu: 8, memory: '8Gi', disk: '100Gi', snapshots: 2, volumes: 1 }, labels: { team: 'infra', 'example.com/tier': 'gold' } });
      const created = await f.tenants.createTenant(t);
      assert.ok(created.resourceVersion && created.resourceVersion !== '0', 'the store assigns the resourceVersion');
      assert.deepEqual(created, { ...t, resourceVersion: created.resourceVersion });
      assert.deepEqual(await f.tenants.getTenant('acme'), created);
      await assert.rejects(f.tenants.createTenant(tenantFixture('acme', { displayName: 'Impostor' })), isCode(ErrorCodes.ALREADY_EXISTS, 'id'));
      assert.equal((await f.tenants.getTenant('acme'))?.displayName, 'Acme Corp', 'the refused create changed nothing');
      assert.equal(await f.tenants.getTenant('nobody'), undefined);
      assert.equal(await f.tenants.getTenant('Not A Valid Id!'), undefined);
      await f.close();
    });

    test('a tenant is its record: microVMs of an id without one make no tenant, and createTenant then adopts them', async () => {
      const f = await make();
      const vm = await f.vms.createVm(vmFixture({ tenant: 'orphan', spec: { vcpu: 2, memory: '256Mi', labels: {} } }));
      assert.equal(await f.tenants.getTenant('orphan'), undefined);
      assert.deepEqual((await f.tenants.listTenants({})).items.map((t) => t.id), []);
      const created = await f.tenants.createTenant(tenantFixture('orphan'));
      assert.equal(created.id, 'orphan');
      assert.deepEqual((await f.tenants.listTenants({})).items.map((t) => t.id), ['orphan']);
      assert.equal((await f.vms.getVm(vm.id))?.tenant, 'orphan', 'the VM is untouched');
      assert.equal((await f.tenants.usage('orphan')).vcpu, 2);
      await f.close();
    });

    test('listTenants pages over every tenant once, in the declared order; a malformed cursor is VALIDATION_FAILED', async () => {
      const f = await make();
      // Creation order differs from id order, so the order assertion can tell them apart.
      const created: Tenant[] = [];
      for (const id of ['delta', 'alpha', 'echo', 'charlie', 'bravo']) created.push(await f.tenants.createTenant(tenantFixture(id)));
      for (const limit of [2, 5, 1000]) {
        const items = await allPages((cursor) => f.tenants.listTenants({ limit, ...(cursor ? { cursor } : {}) }), limit, caps.mayEndWithEmptyPage);
        assert.deepEqual(items.map((t) => t.id), expectOrder(created), `limit ${limit}`);
        assert.deepEqual(items, expectOrder(created).map((id) => created.find((t) => t.id === id)), 'list items are the records');
      }
      assert.equal((await f.tenants.listTenants({})).items.length, 5, 'the default limit holds them all');
      await assert.rejects(f.tenants.listTenants({ cursor: 'not-a-cursor' }), isCode(ErrorCodes.VALIDATION_FAILED, 'cursor'));
      await f.close();
    });

    test('updateTenant is read-modify-write: new resourceVersion and updatedAt, id and createdAt kept; stale version CONFLICT; unknown NOT_FOUND; a throwing mutate changes nothing', async () => {
      const f = await make();
      const a = await f.tenants.createTenant(tenantFixture('upd', { quotas: { vms: 1 } }));
      const b = await f.tenants.updateTenant('upd', (t) => ({ ...t, id: 'hijack', displayName: 'Renamed', quotas: { ...t.quotas, vcpu: 4 } }));
      assert.equal(b.id, 'upd', 'the id cannot change');
      assert.equal(b.displayName, 'Renamed');
      assert.deepEqual(b.quotas, { vms: 1, vcpu: 4 });
      assert.equal(b.createdAt, T0);
      assert.notEqual(b.updatedAt, T0);
      assert.ok(Math.abs(Date.parse(b.updatedAt) - Date.now()) < 60_000, `updatedAt ${b.updatedAt} is now`);
      assert.notEqual(b.resourceVersion, a.resourceVersion);
      assert.deepEqual(await f.tenants.getTenant('upd'), b);
      assert.equal(await f.tenants.getTenant('hijack'), undefined);
      // Conditional: the current version passes, the old one is CONFLICT and changes nothing.
      const c = await f.tenants.updateTenant('upd', (t) => ({ ...t, labels: { v: 'c' } }), b.resourceVersion);
      assert.deepEqual(c.labels, { v: 'c' });
      await assert.rejects(f.tenants.updateTenant('upd', (t) => ({ ...t, displayName: 'stale' }), b.resourceVersion), isCode(ErrorCodes.CONFLICT));
      await assert.rejects(f.tenants.updateTenant('upd', () => {
        throw new Error('boom');
      }), /boom/);
      assert.deepEqual(await f.tenants.getTenant('upd'), c);
      await assert.rejects(f.tenants.updateTenant('ghost', (t) => t), isCode(ErrorCodes.NOT_FOUND));
      await assert.rejects(f.tenants.updateTenant('ghost', (t) => t, '1'), isCode(ErrorCodes.NOT_FOUND));
      await f.close();
    });

    test('concurrent read-modify-writes of a tenant lose nothing', async () => {
      const f = await make();
      await f.tenants.createTenant(tenantFixture('busy', { labels: { n: '0' } }));
      const bump = (): Promise<Tenant> => f.tenants.updateTenant('busy', (t) => ({ ...t, labels: { n: String(Number(t.labels?.n ?? 0) + 1) } }));
      await Promise.all(Array.from({ length: 6 }, bump));
      assert.equal((await f.tenants.getTenant('busy'))?.labels?.n, '6');
      await f.close();
    });

    test('deleteTenant: gone from get and list; a stale version is CONFLICT and deletes nothing; unknown is NOT_FOUND', async () => {
      const f = await make();
      const a = await f.tenants.createTenant(tenantFixture('doomed'));
      await f.tenants.createTenant(tenantFixture('keeper'));
      const b = await f.tenants.updateTenant('doomed', (t) => ({ ...t, displayName: 'v2' }));
      await assert.rejects(f.tenants.deleteTenant('doomed', a.resourceVersion), isCode(ErrorCodes.CONFLICT));
      assert.equal((await f.tenants.getTenant('doomed'))?.displayName, 'v2');
      await f.tenants.deleteTenant('doomed', b.resourceVersion);
      assert.equal(await f.tenants.getTenant('doomed'), undefined);
      assert.deepEqual((await f.tenants.listTenants({})).items.map((t) => t.id), ['keeper']);
      await assert.rejects(f.tenants.deleteTenant('doomed'), isCode(ErrorCodes.NOT_FOUND));
      await assert.rejects(f.tenants.updateTenant('doomed', (t) => t), isCode(ErrorCodes.NOT_FOUND));
      await assert.rejects(f.tenants.deleteTenant('never-was'), isCode(ErrorCodes.NOT_FOUND));
      await f.tenants.deleteTenant('keeper');
      assert.deepEqual((await f.tenants.listTenants({})).items, []);
      if (caps.asyncDelete) {
        await assert.rejects(f.tenants.createTenant(tenantFixture('doomed')), isCode(ErrorCodes.CONFLICT));
      } else {
        assert.equal((await f.tenants.createTenant(tenantFixture('doomed', { displayName: 'reborn' }))).displayName, 'reborn');
        assert.equal((await f.tenants.getTenant('doomed'))?.displayName, 'reborn');
      }
      await f.close();
    });

    test('usage counts the tenant\'s microVMs until they are removed, plus its reservations; other tenants have their own', async () => {
      const f = await make();
      for (const id of ['u1', 'u2']) await f.tenants.createTenant(tenantFixture(id));
      assert.deepEqual(await f.tenants.usage('u1'), emptyUsage());
      const a = await f.vms.createVm(vmFixture({ tenant: 'u1', spec: { vcpu: 2, memory: '256Mi', rootfs: { size: '1Gi' }, labels: {}, ports: [{ hostPort: 30001, guestPort: 80 }, { hostPort: 30002, guestPort: 443 }] } }));
      await f.vms.createVm(vmFixture({ tenant: 'u1', spec: { vcpu: 1, memory: '128Mi', labels: {} } }));
      await f.vms.createVm(vmFixture({ tenant: 'u2', spec: { vcpu: 4, memory: '1Gi', labels: {} } }));
      const limits = {};
      await f.tenants.reserve('u1', { kind: 'snapshot', id: 'snap-1', diskMiB: 300 }, limits);
      await f.tenants.reserve('u1', { kind: 'volume', id: 'vol-1', diskMiB: 2048 }, limits);
      assert.deepEqual(await f.tenants.usage('u1'), { vms: 2, vcpu: 3, memoryMiB: 384, diskMiB: 1024 + 300 + 2048, snapshots: 1, volumes: 1, hostPorts: 2 });
      assert.deepEqual(await f.tenants.usage('u2'), { ...emptyUsage(), vms: 1, vcpu: 4, memoryMiB: 1024 });
      // Any phase counts until the VM is removed.
      await f.vms.updateVm(a.id, (v) => ({ ...v, status: { ...v.status, phase: 'Stopped' } }));
      assert.equal((await f.tenants.usage('u1')).vcpu, 3);
      await f.vms.deleteVm(a.id);
      assert.deepEqual(await f.tenants.usage('u1'), { vms: 1, vcpu: 1, memoryMiB: 128, diskMiB: 300 + 2048, snapshots: 1, volumes: 1, hostPorts: 0 });
      assert.deepEqual(await f.tenants.usage('nobody'), emptyUsage());
      await f.close();
    });

    test('reserve is idempotent per (kind, id), refuses with QUOTA_EXCEEDED and then changes nothing; release frees; reservations lists them', async () => {
      const f = await make();
      await f.tenants.createTenant(tenantFixture('r'));
      await f.tenants.createTenant(tenantFixture('r2'));
      const limits = { snapshots: 2, volumes: 1, diskMiB: 1000 };
      await f.tenants.reserve('r', { kind: 'snapshot', id: 's1', diskMiB: 100 }, limits);
      await f.tenants.reserve('r', { kind: 'snapshot', id: 's1', diskMiB: 100 }, limits); // idempotent: counted once
      await f.tenants.reserve('r', { kind: 'volume', id: 'v1', diskMiB: 500 }, limits);
      assert.deepEqual(await f.tenants.usage('r'), { ...emptyUsage(), diskMiB: 600, snapshots: 1, volumes: 1 });
      await assert.rejects(f.tenants.reserve('r', { kind: 'volume', id: 'v2', diskMiB: 1 }, limits), isCode(ErrorCodes.QUOTA_EXCEEDED));
      await assert.rejects(f.tenants.reserve('r', { kind: 'snapshot', id: 's2', diskMiB: 401 }, limits), isCode(ErrorCodes.QUOTA_EXCEEDED));
      // A reservation already held is not refused again by a lowered limit (idempotent, not re-checked).
      await f.tenants.reserve('r', { kind: 'volume', id: 'v1', diskMiB: 500 }, { volumes: 0 });
      const got = await f.tenants.reservations('r');
      const key = (x: { kind: string; id: string }): string => `${x.kind}/${x.id}`;
      assert.deepEqual([...got].sort((x, y) => key(x).localeCompare(key(y))), [
        { kind: 'snapshot', id: 's1', diskMiB: 100 },
        { kind: 'volume', id: 'v1', diskMiB: 500 },
      ]);
      assert.deepEqual(await f.tenants.reservations('r2'), [], 'tenant scoped');
      assert.deepEqual(await f.tenants.usage('r2'), emptyUsage());
      // A limit of another dimension does not block; within the limits it passes.
      await f.tenants.reserve('r', { kind: 'snapshot', id: 's2', diskMiB: 400 }, limits);
      await f.tenants.release('r', 'volume', 'v1');
      await f.tenants.release('r', 'volume', 'v1'); // twice: nothing left to free
      await f.tenants.release('r', 'snapshot', 'never-reserved');
      await f.tenants.release('r2', 'snapshot', 's1'); // another tenant's release frees nothing of r
      assert.deepEqual(await f.tenants.usage('r'), { ...emptyUsage(), diskMiB: 500, snapshots: 2 });
      await f.tenants.reserve('r', { kind: 'volume', id: 'v2', diskMiB: 500 }, limits);
      assert.equal((await f.tenants.usage('r')).volumes, 1);
      await f.close();
    });

    test('concurrent reservations never pass a limit together', async () => {
      const f = await make();
      await f.tenants.createTenant(tenantFixture('race'));
      const results = await Promise.allSettled(Array.from({ length: 6 }, (_, i) => f.tenants.reserve('race', { kind: 'snapshot', id: `s${i}`, diskMiB: 10 }, { snapshots: 2 })));
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 2, JSON.stringify(results.map((r) => (r.status === 'rejected' ? String(r.reason) : 'ok'))));
      for (const r of results) if (r.status === 'rejected') isCode(ErrorCodes.QUOTA_EXCEEDED)(r.reason);
      assert.equal((await f.tenants.reservations('race')).length, 2);
      assert.deepEqual(await f.tenants.usage('race'), { ...emptyUsage(), diskMiB: 20, snapshots: 2 });
      await f.close();
    });

    test(`reserving for an id without a tenant record ${caps.reservationsNeedRecord ? 'is NOT_FOUND' : 'is recorded'}; releasing there is no error`, async () => {
      const f = await make();
      const r = { kind: 'snapshot' as const, id: 'snap-x', diskMiB: 64 };
      if (caps.reservationsNeedRecord) {
        await assert.rejects(f.tenants.reserve('norecord', r, {}), isCode(ErrorCodes.NOT_FOUND));
        assert.deepEqual(await f.tenants.reservations('norecord'), []);
      } else {
        await f.tenants.reserve('norecord', r, {});
        assert.deepEqual(await f.tenants.reservations('norecord'), [r]);
        assert.equal((await f.tenants.usage('norecord')).snapshots, 1);
      }
      await f.tenants.release('norecord', 'snapshot', 'snap-x');
      assert.deepEqual(await f.tenants.reservations('norecord'), []);
      await f.close();
    });

    test(`the same reservation (kind, id) in a second tenant ${caps.reservationIdsPerTenant ? 'is a reservation of its own' : 'is CONFLICT'}`, async () => {
      const f = await make();
      for (const id of ['one', 'two']) await f.tenants.createTenant(tenantFixture(id));
      await f.tenants.reserve('one', { kind: 'volume', id: 'vol-shared', diskMiB: 10 }, {});
      if (caps.reservationIdsPerTenant) {
        await f.tenants.reserve('two', { kind: 'volume', id: 'vol-shared', diskMiB: 20 }, {});
        assert.deepEqual(await f.tenants.reservations('two'), [{ kind: 'volume', id: 'vol-shared', diskMiB: 20 }]);
        assert.equal((await f.tenants.usage('two')).diskMiB, 20);
      } else {
        await assert.rejects(f.tenants.reserve('two', { kind: 'volume', id: 'vol-shared', diskMiB: 20 }, {}), isCode(ErrorCodes.CONFLICT));
        assert.deepEqual(await f.tenants.reservations('two'), []);
      }
      assert.deepEqual(await f.tenants.reservations('one'), [{ kind: 'volume', id: 'vol-shared', diskMiB: 10 }]);
      assert.equal((await f.tenants.usage('one')).diskMiB, 10);
      await f.close();
    });
  });

  describe(`API key store contract: ${name}`, () => {
    test('createKey keeps the record (the hash, role, expiry); getKey reads it; an unknown id is undefined', async () => {
      const f = await make();
      const k = keyFixture('acme', { role: 'tenant-admin', name: 'ci', expiresAt: '2031-02-03T04:05:06.000Z' });
      assert.deepEqual(await f.tenants.createKey(k), k);
      assert.deepEqual(await f.tenants.getKey(k.id), k);
      const plain = keyFixture('acme', { name: 'plain' });
      await f.tenants.createKey(plain);
      const got = await f.tenants.getKey(plain.id);
      assert.deepEqual(got, plain);
      assert.ok(got && !('expiresAt' in got) && !('revokedAt' in got) && !('lastUsedAt' in got), 'absent fields stay absent');
      assert.equal(await f.tenants.getKey(newId('key')), undefined);
      assert.equal(await f.tenants.getKey('NOT a key id'), undefined);
      await f.close();
    });

    test('a name is unique among a tenant\'s active keys: ALREADY_EXISTS; other tenants and revoked keys do not count, an expired key does', async () => {
      const f = await make();
      const a = await f.tenants.createKey(keyFixture('t1', { name: 'deploy' }));
      await assert.rejects(f.tenants.createKey(keyFixture('t1', { name: 'deploy' })), isCode(ErrorCodes.ALREADY_EXISTS, 'name'));
      await f.tenants.createKey(keyFixture('t2', { name: 'deploy' }));
      // Expiry does not free a name (the key is still listed, as 'expired'); revocation does.
      await f.tenants.createKey(keyFixture('t1', { name: 'old', expiresAt: '2001-01-01T00:00:00.000Z' }));
      await assert.rejects(f.tenants.createKey(keyFixture('t1', { name: 'old' })), isCode(ErrorCodes.ALREADY_EXISTS, 'name'));
      await f.tenants.revokeKey(a.id, new Date().toISOString());
      const again = await f.tenants.createKey(keyFixture('t1', { name: 'deploy' }));
      assert.equal((await f.tenants.getKey(again.id))?.name, 'deploy');
      assert.equal((await f.tenants.listKeys({ tenant: 't1' })).items.filter((k) => k.name === 'deploy').length, 2, 'the revoked key is still listed');
      await f.close();
    });

    test('createKey with an id that is taken is ALREADY_EXISTS and changes nothing', async () => {
      const f = await make();
      const a = await f.tenants.createKey(keyFixture('t1', { name: 'first' }));
      await assert.rejects(f.tenants.createKey(keyFixture('t1', { id: a.id, name: 'second' })), isCode(ErrorCodes.ALREADY_EXISTS));
      assert.deepEqual(await f.tenants.getKey(a.id), a);
      await f.close();
    });

    test('listKeys is scoped by tenant and pages over every key once, in the declared order', async () => {
      const f = await make();
      const tail = newId('').slice(1, 9);
      const mine: ApiKeyRecord[] = [];
      // Ids whose order differs from creation order.
      for (const [i, c] of ['e', 'a', 'd', 'b', 'c'].entries()) mine.push(await f.tenants.createKey(keyFixture('mine', { id: `key-${c}${tail}`, name: `k${i}` })));
      const theirs = await f.tenants.createKey(keyFixture('theirs', { id: `key-0${tail}`, name: 'k0' }));
      for (const limit of [2, 5, 1000]) {
        const items = await allPages((cursor) => f.tenants.listKeys({ tenant: 'mine', limit, ...(cursor ? { cursor } : {}) }), limit, caps.mayEndWithEmptyPage);
        assert.deepEqual(items.map((k) => k.id), expectOrder(mine), `limit ${limit}`);
      }
      assert.deepEqual((await f.tenants.listKeys({ tenant: 'theirs' })).items, [theirs]);
      assert.deepEqual((await f.tenants.listKeys({ tenant: 'nobody' })).items, []);
      const all = await allPages((cursor) => f.tenants.listKeys({ limit: 4, ...(cursor ? { cursor } : {}) }), 4, caps.mayEndWithEmptyPage);
      assert.deepEqual(all.map((k) => k.id), expectOrder([...mine, theirs]));
      await assert.rejects(f.tenants.listKeys({ cursor: 'not-a-cursor' }), isCode(ErrorCodes.VALIDATION_FAILED, 'cursor'));
      await f.close();
    });

    test('revokeKey sets revokedAt once (a second revocation keeps the first time); unknown is NOT_FOUND', async () => {
      const f = await make();
      const k = await f.tenants.createKey(keyFixture('t'));
      const r1 = await f.tenants.revokeKey(k.id, '2030-05-05T05:05:05.000Z');
      assert.deepEqual(r1, { ...k, revokedAt: '2030-05-05T05:05:05.000Z' });
      const r2 = await f.tenants.revokeKey(k.id, '2030-06-06T06:06:06.000Z');
      assert.equal(r2.revokedAt, '2030-05-05T05:05:05.000Z');
      assert.deepEqual(await f.tenants.getKey(k.id), r1);
      assert.equal(keyState(r1, Date.parse('2030-01-01T00:00:00.000Z')), 'revoked');
      await assert.rejects(f.tenants.revokeKey(newId('key'), new Date().toISOString()), isCode(ErrorCodes.NOT_FOUND));
      await f.close();
    });

    test('touchKey records lastUsedAt and changes nothing else; touching an unknown key is no error', async () => {
      const f = await make();
      const k = await f.tenants.createKey(keyFixture('t'));
      await f.tenants.touchKey(k.id, '2030-01-02T00:00:00.000Z');
      assert.deepEqual(await f.tenants.getKey(k.id), { ...k, lastUsedAt: '2030-01-02T00:00:00.000Z' });
      await f.tenants.touchKey(k.id, '2030-01-03T00:00:00.000Z');
      assert.equal((await f.tenants.getKey(k.id))?.lastUsedAt, '2030-01-03T00:00:00.000Z');
      const gone = newId('key');
      await f.tenants.touchKey(gone, '2030-01-03T00:00:00.000Z');
      assert.equal(await f.tenants.getKey(gone), undefined, 'touch creates nothing');
      await f.close();
    });

    test('an expired key is kept with its expiry (the authenticator tells "expired" from "invalid")', async () => {
      const f = await make();
      const expiresAt = '2030-03-01T00:00:00.000Z';
      const k = await f.tenants.createKey(keyFixture('t', { expiresAt }));
      const at = Date.parse(expiresAt);
      const got = await f.tenants.getKey(k.id);
      assert.ok(got);
      assert.equal(keyState(got, at - 1), 'active');
      assert.equal(keyState(got, at), 'expired');
      assert.equal(keyState(got, at + 86_400_000), 'expired');
      assert.deepEqual((await f.tenants.listKeys({ tenant: 't' })).items, [k]);
      await f.close();
    });

    test('deleteKeysOfTenant removes every key of the tenant (revoked ones too), counts them, and leaves other tenants alone', async () => {
      const f = await make();
      const a = await f.tenants.createKey(keyFixture('gone'));
      await f.tenants.createKey(keyFixture('gone'));
      await f.tenants.revokeKey(a.id, new Date().toISOString());
      const other = await f.tenants.createKey(keyFixture('stays'));
      assert.equal(await f.tenants.deleteKeysOfTenant('gone'), 2);
      assert.equal(await f.tenants.getKey(a.id), undefined);
      assert.deepEqual((await f.tenants.listKeys({ tenant: 'gone' })).items, []);
      assert.deepEqual(await f.tenants.getKey(other.id), other);
      assert.equal(await f.tenants.deleteKeysOfTenant('gone'), 0);
      assert.equal(await f.tenants.deleteKeysOfTenant('nobody'), 0);
      await f.close();
    });
  });
}
