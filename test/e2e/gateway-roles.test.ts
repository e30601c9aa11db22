/**
 * Roles and tenant isolation over REST against the real service: what each role may and may not
 * do, and that a tenant never sees or changes another tenant's objects (a foreign id answers
 * exactly like a missing one). Also: every route is in the operations table and
 * docs/permissions.md is current.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { REPO, destroyDataDir } from '../support/service.js';
import { createKey, createTenant, hsToken, startGatewayService, type GatewayService } from '../support/gateway.js';
import { OPERATIONS, renderPermissionsDoc } from '../../src/gateway/operations.js';

let svc: GatewayService;
const tok: Record<string, string> = {};
let vmA = '';
let vmB = '';

before(async () => {
  svc = await startGatewayService();
  await createTenant(svc, 'alpha');
  await createTenant(svc, 'beta');
  for (const role of ['tenant-admin', 'member', 'viewer']) tok[role] = (await createKey(svc, 'alpha', role)).token;
  tok['beta-admin'] = (await createKey(svc, 'beta', 'tenant-admin')).token;
  tok['beta-member'] = await hsToken({ sub: 'mallory', tenant: 'beta', role: 'member' });
  tok.admin = svc.token;
  const a = await svc.call('POST', '/microvms?tenant=alpha', { body: { name: 'shared-name', start: false, labels: { app: 'a' } } });
  assert.equal(a.status, 201, a.text);
  vmA = a.json.id;
  const b = await svc.call('POST', '/microvms', { token: tok['beta-member'], body: { name: 'shared-name', start: false } });
  assert.equal(b.status, 201, b.text);
  vmB = b.json.id;
});

after(async () => {
  await svc?.stop();
  if (svc) await destroyDataDir(svc.dataDir);
});

type Call = { name: string; method: string; path: () => string; body?: () => unknown };
const calls: Call[] = [
  { name: 'list VMs', method: 'GET', path: () => '/microvms' },
  { name: 'get VM', method: 'GET', path: () => `/microvms/${vmA}` },
  { name: 'VM events', method: 'GET', path: () => `/microvms/${vmA}/events` },
  { name: 'VM console', method: 'GET', path: () => `/microvms/${vmA}/console` },
  { name: 'create VM', method: 'POST', path: () => '/microvms', body: () => ({ name: `r-${Math.random().toString(36).slice(2, 8)}`, start: false }) },
  { name: 'update VM', method: 'PUT', path: () => `/microvms/${vmA}`, body: () => ({ labels: { app: 'a', touched: 'yes' } }) },
  { name: 'stop VM', method: 'POST', path: () => `/microvms/${vmA}/stop` },
  { name: 'list keys', method: 'GET', path: () => '/apikeys' },
  { name: 'create key', method: 'POST', path: () => '/apikeys', body: () => ({ name: `k-${Math.random().toString(36).slice(2, 8)}`, role: 'viewer' }) },
  { name: 'list security groups', method: 'GET', path: () => '/securitygroups' },
  { name: 'create security group', method: 'POST', path: () => '/securitygroups', body: () => ({ name: `sg-${Math.random().toString(36).slice(2, 8)}`, rules: [] }) },
  { name: 'get own tenant', method: 'GET', path: () => '/tenants/alpha' },
  { name: 'own tenant usage', method: 'GET', path: () => '/tenants/alpha/usage' },
  { name: 'list tenants', method: 'GET', path: () => '/tenants' },
  { name: 'create tenant', method: 'POST', path: () => '/tenants', body: () => ({ id: `t-${Math.random().toString(36).slice(2, 8)}` }) },
  { name: 'change quotas', method: 'PUT', path: () => '/tenants/alpha', body: () => ({ quotas: { vms: 50 } }) },
  { name: 'query audit', method: 'GET', path: () => '/audit' },
];

const ALLOWED: Record<string, string[]> = {
  admin: calls.map((c) => c.name),
  'tenant-admin': ['list VMs', 'get VM', 'VM events', 'VM console', 'create VM', 'update VM', 'stop VM', 'list keys', 'create key', 'list security groups', 'create security group', 'get own tenant', 'own tenant usage', 'query audit'],
  member: ['list VMs', 'get VM', 'VM events', 'VM console', 'create VM', 'update VM', 'stop VM', 'list security groups', 'get own tenant', 'own tenant usage'],
  viewer: ['list VMs', 'get VM', 'VM events', 'VM console', 'list security groups', 'get own tenant', 'own tenant usage'],
};

describe('roles', () => {
  for (const role of ['admin', 'tenant-admin', 'member', 'viewer']) {
    test(`${role}: allowed and denied calls`, async () => {
      for (const c of calls) {
        const r = await svc.call(c.method, c.path(), { token: tok[role]!, ...(c.body ? { body: c.body() } : {}) });
        if (ALLOWED[role]!.includes(c.name)) {
          // Allowed means the permission check passed (a 409 for stopping a stopped VM is the state machine talking).
          assert.ok(r.status < 400 || r.status === 409, `${role} ${c.name}: expected allowed, got ${r.status} ${r.text}`);
        } else {
          assert.equal(r.status, 403, `${role} ${c.name}: expected 403, got ${r.status} ${r.text}`);
          assert.equal(r.json.code, 'PERMISSION_DENIED');
          assert.match(r.json.detail, new RegExp(`role "${role}" lacks permission`));
        }
      }
    });
  }

  test('a key cannot be created with a role above its creator, nor an admin key outside the system tenant', async () => {
    const up = await svc.call('POST', '/apikeys', { token: tok['tenant-admin']!, body: { name: 'escalate', role: 'admin' } });
    assert.equal(up.status, 403);
    const adminInTenant = await svc.call('POST', '/apikeys?tenant=alpha', { body: { name: 'x', role: 'admin' } });
    assert.equal(adminInTenant.status, 400);
    // A tenant-admin cannot create keys for another tenant.
    const cross = await svc.call('POST', '/apikeys?tenant=beta', { token: tok['tenant-admin']!, body: { name: 'cross', role: 'viewer' } });
    assert.equal(cross.status, 403);
  });
});

describe('tenant isolation', () => {
  test('lists show only the own tenant; names resolve within the tenant', async () => {
    const a = await svc.call('GET', '/microvms', { token: tok.member! });
    assert.ok(a.json.items.every((v: { tenant: string }) => v.tenant === 'alpha'));
    assert.ok(a.json.items.some((v: { id: string }) => v.id === vmA));
    assert.ok(!a.json.items.some((v: { id: string }) => v.id === vmB));
    // The same name exists in both tenants: each caller gets its own.
    assert.equal((await svc.call('GET', '/microvms/shared-name', { token: tok.member! })).json.id, vmA);
    assert.equal((await svc.call('GET', '/microvms/shared-name', { token: tok['beta-member']! })).json.id, vmB);
    // ?tenant= of another tenant never widens a non-admin's list: it is refused (docs/tenancy.md).
    const sneaky = await svc.call('GET', '/microvms?tenant=beta', { token: tok.member! });
    assert.equal(sneaky.status, 403, sneaky.text);
    assert.equal(sneaky.json.code, 'PERMISSION_DENIED');
    // Admins see both.
    const all = await svc.call('GET', '/microvms');
    assert.ok(all.json.items.some((v: { id: string }) => v.id === vmA) && all.json.items.some((v: { id: string }) => v.id === vmB));
  });

  test("a foreign VM id answers 404 exactly like a missing one, on every endpoint", async () => {
    const endpoints: Array<[string, string, unknown?]> = [
      ['GET', ''],
      ['PUT', '', { labels: { x: 'y' } }],
      ['DELETE', ''],
      ['POST', '/start'],
      ['POST', '/stop'],
      ['GET', '/console'],
      ['GET', '/metrics'],
      ['GET', '/events'],
      ['GET', '/wait?timeout=1s'],
      ['GET', '/metrics/history'],
    ];
    for (const [m, suffix, body] of endpoints) {
      for (const t of [tok['beta-member']!, tok['beta-admin']!]) {
        const foreign = await svc.call(m, `/microvms/${vmA}${suffix}`, { token: t, ...(body ? { body } : {}) });
        const missing = await svc.call(m, `/microvms/vm-00000000000000${suffix}`, { token: t, ...(body ? { body } : {}) });
        assert.equal(foreign.status, 404, `${m} ${suffix}: ${foreign.status} ${foreign.text}`);
        assert.equal(missing.status, 404);
        assert.equal(foreign.json.code, 'NOT_FOUND');
        assert.equal(foreign.json.title, missing.json.title);
        assert.equal(foreign.json.detail.replace(vmA, 'ID'), missing.json.detail.replace('vm-00000000000000', 'ID'));
      }
    }
    // Nothing changed on the VM.
    const after = await svc.call('GET', `/microvms/${vmA}`);
    assert.equal(after.json.status.phase === 'Deleting', false);
    assert.equal(after.json.spec.labels.x, undefined);
  });

  test('foreign keys, tenants, usage and security groups are 404 too; audit is scoped', async () => {
    const aKey = await createKey(svc, 'alpha', 'viewer');
    for (const [m, p] of [
      ['GET', `/apikeys/${aKey.id}`],
      ['DELETE', `/apikeys/${aKey.id}`],
      ['GET', '/tenants/alpha'],
      ['GET', '/tenants/alpha/usage'],
    ] as const) {
      const r = await svc.call(m, p, { token: tok['beta-admin']! });
      assert.equal(r.status, 404, `${m} ${p}: ${r.text}`);
    }
    assert.equal((await svc.call('GET', `/apikeys/${aKey.id}`)).json.state, 'active', 'the foreign revoke did nothing');
    const keys = await svc.call('GET', '/apikeys', { token: tok['beta-admin']! });
    assert.ok(keys.json.items.every((k: { tenant: string }) => k.tenant === 'beta'));
    const sg = await svc.call('POST', '/securitygroups', { token: tok['tenant-admin']!, body: { name: 'alpha-web', rules: [] } });
    assert.equal(sg.status, 201, sg.text);
    assert.equal((await svc.call('GET', `/securitygroups/${sg.json.id}`, { token: tok['beta-admin']! })).status, 404);
    assert.equal((await svc.call('DELETE', `/securitygroups/${sg.json.id}`, { token: tok['beta-admin']! })).status, 404);
    const audit = await svc.call('GET', '/audit?limit=1000', { token: tok['beta-admin']! });
    assert.equal(audit.status, 200);
    assert.ok(audit.json.items.length > 0);
    assert.ok(audit.json.items.every((e: { tenant?: string }) => e.tenant === 'beta'));
  });
});

describe('declarations', () => {
  test('every REST route under /api is in the operations table', async () => {
    const { loadConfig } = await import('../../src/config.js');
    assert.ok(loadConfig);
    // The served OpenAPI document lists every visible route; each must map to an operation.
    const doc = (await (await fetch(`${svc.url}/api/v1/openapi.json`)).json()) as { paths: Record<string, Record<string, unknown>> };
    const declared = new Set(Object.values(OPERATIONS).flatMap((o) => (o.rest ? [o.rest.replace(/:(\w+)/g, '{$1}').replace(/\/\*$/, '/{*}')] : [])));
    for (const [path, methods] of Object.entries(doc.paths)) {
      if (!path.startsWith('/api/')) continue;
      for (const m of Object.keys(methods)) {
        if (m === 'head') continue;
        // `* /path` declares every method (routes registered with app.all, the proxy to guest ports).
        const ok = declared.has(`${m.toUpperCase()} ${path}`) || declared.has(`* ${path}`);
        assert.ok(ok, `${m.toUpperCase()} ${path} has no operation`);
      }
    }
  });

  test('docs/permissions.md is generated from the table', () => {
    assert.equal(readFileSync(`${REPO}/docs/permissions.md`, 'utf8'), renderPermissionsDoc(), 'regenerate: node -e "import(\'./dist/src/gateway/operations.js\').then(m=>process.stdout.write(m.renderPermissionsDoc()))" > docs/permissions.md');
  });
});
