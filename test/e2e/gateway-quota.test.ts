/**
 * Quotas, idempotency, pagination, optimistic concurrency and tenant lifecycle against the real
 * service process (SQLite state, no guests booted: VMs are created stopped).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { destroyDataDir } from '../support/service.js';
import { createKey, createTenant, startGatewayService, type GatewayService } from '../support/gateway.js';

let svc: GatewayService;

before(async () => {
  svc = await startGatewayService();
});

after(async () => {
  await svc?.stop();
  if (svc) await destroyDataDir(svc.dataDir);
});

describe('quotas', () => {
  test('200 concurrent creates against a quota of 7 VMs leave exactly 7', async () => {
    await createTenant(svc, 'race', { vms: 7 });
    const k = await createKey(svc, 'race', 'member');
    const results = await Promise.all(
      Array.from({ length: 200 }, (_, i) => svc.call('POST', '/microvms', { token: k.token, body: { name: `r${i}`, start: false } })),
    );
    const created = results.filter((r) => r.status === 201);
    const refused = results.filter((r) => r.status !== 201);
    assert.equal(created.length, 7, `created ${created.length}`);
    for (const r of refused) {
      assert.equal(r.status, 403, r.text);
      assert.equal(r.json.code, 'QUOTA_EXCEEDED');
      assert.equal(r.json.resource, 'vms');
      assert.equal(r.json.limit, 7);
    }
    const list = await svc.call('GET', '/microvms?limit=1000', { token: k.token });
    assert.equal(list.json.items.length, 7);
    const usage = await svc.call('GET', '/tenants/race/usage', { token: k.token });
    assert.deepEqual(usage.json.vms, { used: 7, limit: 7 });
    assert.deepEqual(usage.json.vcpu, { used: 7, limit: null });
    assert.equal(usage.json.memoryMiB.used, 7 * 128);
  });

  test('vCPU, memory and disk limits apply at create and at update; raising the quota admits again', async () => {
    await createTenant(svc, 'sized', { vcpu: 4, memory: '1Gi', disk: '10Gi' });
    const k = await createKey(svc, 'sized', 'member');
    const a = await svc.call('POST', '/microvms', { token: k.token, body: { name: 'a', vcpu: 2, memory: '512Mi', start: false } });
    assert.equal(a.status, 201, a.text);
    const tooMuchCpu = await svc.call('POST', '/microvms', { token: k.token, body: { name: 'b', vcpu: 3, start: false } });
    assert.equal(tooMuchCpu.json.code, 'QUOTA_EXCEEDED');
    assert.equal(tooMuchCpu.json.resource, 'vcpu');
    const tooMuchMem = await svc.call('POST', '/microvms', { token: k.token, body: { name: 'b', memory: '768Mi', start: false } });
    assert.equal(tooMuchMem.json.resource, 'memoryMiB');
    const tooMuchDisk = await svc.call('POST', '/microvms', { token: k.token, body: { name: 'b', rootfs: { size: '11Gi' }, start: false } });
    assert.equal(tooMuchDisk.json.resource, 'diskMiB');
    // Growing a stopped VM counts too; shrinking never is refused.
    await waitPhase(k.token, a.json.id, 'Stopped');
    const grow = await svc.call('PUT', `/microvms/${a.json.id}`, { token: k.token, body: { vcpu: 5 } });
    assert.equal(grow.status, 403, grow.text);
    assert.equal(grow.json.code, 'QUOTA_EXCEEDED');
    assert.equal((await svc.call('PUT', `/microvms/${a.json.id}`, { token: k.token, body: { vcpu: 4 } })).status, 200);
    assert.equal((await svc.call('PUT', `/tenants/sized`, { body: { quotas: { vcpu: 1, memory: '1Gi' } } })).status, 200);
    assert.equal((await svc.call('PUT', `/microvms/${a.json.id}`, { token: k.token, body: { vcpu: 3 } })).status, 200, 'shrinking above a lowered limit');
    assert.equal((await svc.call('PUT', `/tenants/sized`, { body: { quotas: { vcpu: 8, memory: '1Gi' } } })).status, 200);
    assert.equal((await svc.call('POST', '/microvms', { token: k.token, body: { name: 'b', vcpu: 2, start: false } })).status, 201);
    const u = await svc.call('GET', '/tenants/sized/usage', { token: k.token });
    assert.deepEqual(u.json.vcpu, { used: 5, limit: 8 });
    assert.deepEqual(u.json.diskMiB.limit, null);
  });
});

async function waitPhase(token: string, id: string, phase: string): Promise<void> {
  const r = await svc.call('GET', `/microvms/${id}/wait?phase=${phase}&timeout=30s`, { token });
  assert.equal(r.status, 200, r.text);
}

describe('idempotency', () => {
  test('a retried create returns the original result and never a second VM', async () => {
    await createTenant(svc, 'idem');
    const k = await createKey(svc, 'idem', 'member');
    const body = { name: 'once', start: false };
    const first = await svc.call('POST', '/microvms', { token: k.token, body, headers: { 'idempotency-key': 'create-once-1' } });
    assert.equal(first.status, 201);
    const again = await svc.call('POST', '/microvms', { token: k.token, body, headers: { 'idempotency-key': 'create-once-1' } });
    assert.equal(again.status, 201);
    assert.equal(again.headers.get('idempotent-replayed'), 'true');
    assert.equal(again.json.id, first.json.id);
    assert.equal(again.headers.get('location'), first.headers.get('location'));
    // Without the key the same request is a real second attempt (409: the name is taken).
    assert.equal((await svc.call('POST', '/microvms', { token: k.token, body })).status, 409);
    // The same key with another body is refused.
    const reused = await svc.call('POST', '/microvms', { token: k.token, body: { name: 'other', start: false }, headers: { 'idempotency-key': 'create-once-1' } });
    assert.equal(reused.status, 409);
    assert.match(reused.json.detail, /already used for a different request/);
    // Keys are per caller: another key's identical request is its own.
    const k2 = await createKey(svc, 'idem', 'member');
    const other = await svc.call('POST', '/microvms', { token: k2.token, body: { name: 'twice', start: false }, headers: { 'idempotency-key': 'create-once-1' } });
    assert.equal(other.status, 201);
    // Twenty concurrent retries of one request: one VM.
    const burst = await Promise.all(
      Array.from({ length: 20 }, () => svc.call('POST', '/microvms', { token: k.token, body: { name: 'burst', start: false }, headers: { 'idempotency-key': 'burst-1' } })),
    );
    const ids = new Set(burst.filter((r) => r.status === 201).map((r) => r.json.id));
    assert.equal(ids.size, 1);
    for (const r of burst) assert.ok(r.status === 201 || (r.status === 409 && /in progress/.test(r.json.detail)), r.text);
    const list = await svc.call('GET', '/microvms?limit=1000', { token: k.token });
    assert.equal(list.json.items.filter((v: { name: string }) => v.name === 'burst').length, 1);
    // Errors are replayed too (a 4xx is the original result), and POST actions honour the key.
    const bad = await svc.call('POST', '/microvms', { token: k.token, body: { name: 'Bad Name' }, headers: { 'idempotency-key': 'bad-1' } });
    assert.equal(bad.status, 400);
    const stop1 = await svc.call('POST', `/microvms/${first.json.id}/stop`, { token: k.token, headers: { 'idempotency-key': 'stop-1' } });
    const stop2 = await svc.call('POST', `/microvms/${first.json.id}/stop`, { token: k.token, headers: { 'idempotency-key': 'stop-1' } });
    assert.equal(stop2.status, stop1.status);
    assert.equal(stop2.headers.get('idempotent-replayed'), 'true');
  });
});

describe('lists', () => {
  test('cursor pagination is stable under concurrent inserts: no item twice, none skipped', async () => {
    await createTenant(svc, 'pages');
    const k = await createKey(svc, 'pages', 'member');
    const initial: string[] = [];
    for (let i = 0; i < 12; i++) initial.push((await svc.call('POST', '/microvms', { token: k.token, body: { name: `p${i}`, start: false, labels: { parity: i % 2 ? 'odd' : 'even' } } })).json.id);
    let inserting = true;
    let n = 0;
    const writer = (async () => {
      while (inserting) await svc.call('POST', '/microvms', { token: k.token, body: { name: `late${n++}`, start: false } });
    })();
    const seen: string[] = [];
    let cursor: string | undefined;
    do {
      const r = await svc.call('GET', `/microvms?limit=3${cursor ? `&cursor=${cursor}` : ''}`, { token: k.token });
      assert.equal(r.status, 200);
      seen.push(...r.json.items.map((v: { id: string }) => v.id));
      cursor = r.json.next_cursor;
      if (seen.length > 60) inserting = false;
    } while (cursor);
    inserting = false;
    await writer;
    assert.equal(new Set(seen).size, seen.length, 'no duplicates');
    assert.deepEqual(seen.slice(0, initial.length), initial, 'every item that existed is seen, in creation order');
    // Filters: label selector and phase.
    const odd = await svc.call('GET', '/microvms?label=parity=odd&limit=100', { token: k.token });
    assert.equal(odd.json.items.length, 6);
    const pending = await svc.call('GET', '/microvms?phase=Failed', { token: k.token });
    assert.equal(pending.json.items.length, 0);
  });
});

describe('optimistic concurrency', () => {
  test('ETag on reads, If-Match on updates, 409 on a stale version, 304 on an unchanged read', async () => {
    await createTenant(svc, 'occ');
    const k = await createKey(svc, 'occ', 'member');
    const c = await svc.call('POST', '/microvms', { token: k.token, body: { name: 'v', start: false } });
    await waitPhase(k.token, c.json.id, 'Stopped');
    const g = await svc.call('GET', `/microvms/${c.json.id}`, { token: k.token });
    const etag = g.headers.get('etag')!;
    assert.equal(etag, `"${g.json.resourceVersion}"`);
    const nm = await svc.call('GET', `/microvms/${c.json.id}`, { token: k.token, headers: { 'if-none-match': etag } });
    assert.equal(nm.status, 304);
    const ok = await svc.call('PUT', `/microvms/${c.json.id}`, { token: k.token, body: { labels: { a: '1' } }, headers: { 'if-match': etag } });
    assert.equal(ok.status, 200, ok.text);
    assert.notEqual(ok.headers.get('etag'), etag);
    const stale = await svc.call('PUT', `/microvms/${c.json.id}`, { token: k.token, body: { labels: { a: '2' } }, headers: { 'if-match': etag } });
    assert.equal(stale.status, 409);
    assert.equal(stale.json.code, 'CONFLICT');
    assert.equal(stale.json.resourceVersion, ok.json.resourceVersion);
    assert.equal((await svc.call('POST', `/microvms/${c.json.id}/start`, { token: k.token, headers: { 'if-match': etag } })).status, 409);
    assert.equal((await svc.call('DELETE', `/microvms/${c.json.id}`, { token: k.token, headers: { 'if-match': etag } })).status, 409);
    // Two writers racing with the same version: exactly one wins.
    const cur = (await svc.call('GET', `/microvms/${c.json.id}`, { token: k.token })).headers.get('etag')!;
    const race = await Promise.all([1, 2, 3].map((i) => svc.call('PUT', `/microvms/${c.json.id}`, { token: k.token, body: { labels: { w: String(i) } }, headers: { 'if-match': cur } })));
    assert.equal(race.filter((r) => r.status === 200).length, 1);
    assert.equal(race.filter((r) => r.status === 409).length, 2);
    // Tenants too.
    const t = await svc.call('GET', '/tenants/occ');
    assert.equal((await svc.call('PUT', '/tenants/occ', { body: { displayName: 'x' }, headers: { 'if-match': t.headers.get('etag')! } })).status, 200);
    assert.equal((await svc.call('PUT', '/tenants/occ', { body: { displayName: 'y' }, headers: { 'if-match': t.headers.get('etag')! } })).status, 409);
  });
});

describe('tenants', () => {
  test('create, list, get, update quotas; delete is refused while the tenant owns resources unless cascading', async () => {
    const c = await svc.call('POST', '/tenants', { body: { id: 'doomed', displayName: 'Doomed Inc', quotas: { vms: 3, memory: '2Gi' } } });
    assert.equal(c.status, 201, c.text);
    assert.equal((await svc.call('POST', '/tenants', { body: { id: 'doomed' } })).status, 409);
    assert.equal((await svc.call('POST', '/tenants', { body: { id: 'Bad_Id' } })).status, 400);
    assert.equal((await svc.call('POST', '/tenants', { body: { id: 'q', quotas: { memory: '2GB' } } })).status, 400);
    const list = await svc.call('GET', '/tenants?limit=1000');
    assert.ok(list.json.items.some((t: { id: string }) => t.id === 'doomed'));
    const upd = await svc.call('PUT', '/tenants/doomed', { body: { quotas: { vms: 5 } } });
    assert.deepEqual(upd.json.quotas, { vms: 5 });
    const k = await createKey(svc, 'doomed', 'tenant-admin');
    const vm = await svc.call('POST', '/microvms', { token: k.token, body: { name: 'x', start: false } });
    assert.equal(vm.status, 201);
    const sg = await svc.call('POST', '/securitygroups', { token: k.token, body: { name: 'g', rules: [] } });
    assert.equal(sg.status, 201, sg.text);
    const refused = await svc.call('DELETE', '/tenants/doomed');
    assert.equal(refused.status, 409);
    assert.match(refused.json.detail, /still owns 1 microVM/);
    const cascade = await svc.call('DELETE', '/tenants/doomed?cascade=true');
    assert.equal(cascade.status, 200, cascade.text);
    assert.deepEqual(cascade.json.microvms, [vm.json.id]);
    assert.equal(cascade.json.apiKeys, 1);
    assert.equal(cascade.json.resources, 1);
    assert.equal((await svc.call('GET', '/tenants/doomed')).status, 404);
    assert.equal((await svc.call('GET', '/whoami', { token: k.token })).status, 401, "the tenant's keys are gone");
    const gone = await svc.call('GET', `/microvms/${vm.json.id}/wait?phase=Deleting&timeout=1s`);
    assert.ok(gone.status === 200 || gone.status === 404);
    // The system tenant stays.
    assert.equal((await svc.call('DELETE', '/tenants/default?cascade=true')).status, 409);
    // An empty tenant goes without cascade; creating VMs in a missing tenant is refused.
    await createTenant(svc, 'empty');
    assert.equal((await svc.call('DELETE', '/tenants/empty')).status, 200);
    assert.equal((await svc.call('POST', '/microvms?tenant=empty', { body: { name: 'x', start: false } })).status, 404);
  });
});
