/**
 * The audit log: every mutation and every denied call, with who / what / when / from where /
 * result; queryable by admins (tenant-admins: their tenant); append-only in the store; written as
 * structured log lines too; never a secret in it.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import Database from 'better-sqlite3';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { sleep } from '../../src/vmm/proc.js';
import { destroyDataDir } from '../support/service.js';
import { parseApiKeyToken } from '../../src/core/tenancy.js';
import { createKey, createTenant, hsToken, startGatewayService, type GatewayService } from '../support/gateway.js';

let svc: GatewayService;

before(async () => {
  svc = await startGatewayService({ MVM_LOG_LEVEL: 'info' });
});

after(async () => {
  await svc?.stop();
  if (svc) await destroyDataDir(svc.dataDir);
});

test('allowed and denied calls are recorded with who, what, when, where and the result', async () => {
  await createTenant(svc, 'aud');
  const member = await createKey(svc, 'aud', 'member');
  const viewer = await createKey(svc, 'aud', 'viewer');
  const jwt = await hsToken({ sub: 'dana', tenant: 'aud', role: 'member' });
  const t0 = new Date().toISOString();
  const created = await svc.call('POST', '/microvms', { token: member.token, body: { name: 'audited', start: false }, headers: { 'user-agent': 'audit-test/1' } });
  assert.equal(created.status, 201);
  const denied = await svc.call('POST', '/microvms', { token: viewer.token, body: { name: 'nope', start: false } });
  assert.equal(denied.status, 403);
  assert.equal((await svc.call('GET', '/microvms', { token: `${member.token.slice(0, -3)}xyz` })).status, 401);
  assert.equal((await svc.call('PUT', `/microvms/${created.json.id}`, { token: jwt, body: { labels: { by: 'dana' } } })).status, 200);
  assert.equal((await svc.call('DELETE', '/microvms/vm-00000000000000', { token: jwt })).status, 404);
  // A plain read that was allowed is not audited.
  assert.equal((await svc.call('GET', `/microvms/${created.json.id}`, { token: member.token })).status, 200);

  const q = await svc.call('GET', `/audit?since=${encodeURIComponent(t0)}&limit=1000`);
  assert.equal(q.status, 200);
  const items = q.json.items as Array<Record<string, unknown>>;
  const find = (pred: (e: Record<string, unknown>) => boolean): Record<string, unknown> => {
    const e = items.find(pred);
    assert.ok(e, `no entry in ${JSON.stringify(items, null, 1)}`);
    return e;
  };
  const c = find((e) => e.operation === 'microvms.create' && e.result === 'allowed');
  assert.equal(c.subject, `apikey:aud/${(await svc.call('GET', `/apikeys/${member.id}`)).json.name}`);
  assert.equal(c.tenant, 'aud');
  assert.equal(c.keyId, member.id);
  assert.equal(c.role, 'member');
  assert.equal(c.authMethod, 'apikey');
  assert.equal(c.verb, 'create');
  assert.equal(c.resource, 'microvms');
  assert.equal(c.resourceId, created.json.id);
  assert.equal(c.method, 'POST /api/v1/microvms');
  assert.equal(c.sourceIp, '127.0.0.1');
  assert.equal(c.userAgent, 'audit-test/1');
  assert.equal(c.status, 201);
  assert.equal(c.transport, 'rest');
  assert.ok(Date.parse(c.time as string) >= Date.parse(t0));
  const d = find((e) => e.operation === 'microvms.create' && e.result === 'denied');
  assert.equal(d.keyId, viewer.id);
  assert.equal(d.status, 403);
  assert.equal(d.code, 'PERMISSION_DENIED');
  const u = find((e) => e.code === 'UNAUTHENTICATED');
  assert.equal(u.result, 'denied');
  assert.equal(u.subject, undefined);
  assert.equal(u.keyId, member.id, 'the key id a failed call presented (not its secret)');
  assert.equal(u.reason, 'invalid API key');
  const upd = find((e) => e.operation === 'microvms.update');
  assert.equal(upd.subject, 'dana');
  assert.equal(upd.authMethod, 'jwt');
  const del = find((e) => e.operation === 'microvms.delete');
  assert.equal(del.result, 'failed');
  assert.equal(del.code, 'NOT_FOUND');
  assert.ok(!items.some((e) => e.operation === 'microvms.get' && e.result === 'allowed'));

  // Filters.
  const byKey = await svc.call('GET', `/audit?keyId=${viewer.id}`);
  assert.ok(byKey.json.items.length >= 1 && byKey.json.items.every((e: { keyId: string }) => e.keyId === viewer.id));
  const byResult = await svc.call('GET', '/audit?result=denied&limit=1000');
  assert.ok(byResult.json.items.every((e: { result: string }) => e.result === 'denied'));

  // Who may read it: admins, tenant-admins (own tenant); not members.
  assert.equal((await svc.call('GET', '/audit', { token: member.token })).status, 403);

  // No secrets anywhere: not in the API answer, not in the database, not in the logs.
  const secrets = [member.token, viewer.token, jwt, svc.token, parseApiKeyToken(member.token)!.secret];
  await sleep(200);
  const db = new Database(join(svc.dataDir, 'state.db'), { readonly: true });
  const rows = JSON.stringify(db.prepare('SELECT * FROM audit').all());
  const logs = svc.logs();
  for (const s of secrets) {
    assert.ok(!q.text.includes(s), 'secret in the audit API');
    assert.ok(!rows.includes(s), 'secret in the audit table');
    assert.ok(!logs.includes(s), 'secret in the logs');
  }
  db.close();

  // Structured log lines, one per entry.
  const lines = logs.split('\n').filter((l) => l.includes('"audit":'));
  assert.ok(lines.some((l) => JSON.parse(l).audit.operation === 'microvms.create' && JSON.parse(l).audit.result === 'allowed'));
  assert.ok(lines.some((l) => JSON.parse(l).audit.result === 'denied'));
});

test('the audit table is append-only', () => {
  const db = new Database(join(svc.dataDir, 'state.db'));
  try {
    assert.throws(() => db.prepare("UPDATE audit SET result = 'allowed'").run(), /append-only/);
    assert.throws(() => db.prepare('DELETE FROM audit').run(), /append-only/);
  } finally {
    db.close();
  }
  assert.ok(readFileSync(join(svc.dataDir, 'state.db')).length > 0);
});
