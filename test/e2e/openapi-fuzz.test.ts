/**
 * The API from outside (issue 14), against the real standalone service:
 * - the defects a fuzz run found, each at the API: unknown methods (405 + Allow), long ids
 *   (problem+json, never a bare 414), a restore of an unknown snapshot (404), API key lifetimes
 *   (400 naming expiresIn), a NIC address (400 at admission), one `?tenant=` rule on every list,
 *   an admin restoring into another tenant, and GetMicroVM(id="") over gRPC (INVALID_ARGUMENT);
 * - Schemathesis, property-based, from the service's own OpenAPI document, with every check
 *   (test/fuzz/schemathesis.toml): as the tenant-admin of a tenant with small quotas, stateful links
 *   followed; zero failures. Bounded at 5 minutes.
 * It skips (with the reason) when the Python virtualenv of scripts/setup.sh is missing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { request } from 'node:http';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { createGrpcClient, unaryCall } from '../../src/grpc/client.js';
import { REPO, destroyDataDir } from '../support/service.js';
import { createKey, createTenant, hsToken, startGatewayService, type GatewayService } from '../support/gateway.js';
import { pythonVenv } from '../support/sdk.js';

const FUZZ_BUDGET_MS = 5 * 60_000;
/** The fuzzing tenant: one small microVM at a time (guests boot under TCG), one snapshot, one volume. */
const FUZZ_QUOTAS = { vms: 1, vcpu: 1, memory: '256Mi', disk: '4Gi', snapshots: 1, volumes: 1 };

let svc: GatewayService;

before(async () => {
  svc = await startGatewayService();
  await createTenant(svc, 'alpha');
  await createTenant(svc, 'beta');
});

after(async () => {
  await svc?.stop();
  if (svc) await destroyDataDir(svc.dataDir);
});

const isProblem = (r: { headers: Headers; json: unknown }): boolean =>
  (r.headers.get('content-type') ?? '').startsWith('application/problem+json') && typeof (r.json as { code?: unknown })?.code === 'string';

/** Any method, TRACE included (fetch refuses it): status, headers, parsed body. */
function rawCall(method: string, path: string): Promise<{ status: number; headers: Headers; json: any; text: string }> {
  return new Promise((resolve, reject) => {
    const req = request(`${svc.url}/api/v1${path}`, { method, headers: { authorization: `Bearer ${svc.token}` } }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => {
        const headers = new Headers();
        for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') headers.set(k, v);
        let json: any;
        try {
          json = JSON.parse(text);
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers, json, text });
      });
    });
    req.on('error', reject);
    req.end();
  });
}

describe('defects found from outside', () => {
  test('an unknown method is 405 with Allow and a problem body, on every route (QUERY was 500, TRACE 404)', async () => {
    for (const [method, path, allow] of [
      ['QUERY', '/microvms', 'GET, HEAD, POST'],
      ['TRACE', '/microvms', 'GET, HEAD, POST'],
      ['PATCH', '/microvms/vm-x', 'GET, HEAD, PUT, DELETE'],
      ['QUERY', '/snapshots/x/restore', 'POST'],
      ['OPTIONS', '/images/gc', 'POST'],
    ] as const) {
      const r = await rawCall(method, path);
      assert.equal(r.status, 405, `${method} ${path}: ${r.status} ${r.text}`);
      assert.equal(r.headers.get('allow'), allow, `${method} ${path}`);
      assert.ok(isProblem(r), r.text);
      assert.equal(r.json.code, 'METHOD_NOT_ALLOWED');
    }
  });

  test('ids of 101-128 characters are served (404 when missing); longer ones are 400 naming the field; every answer is problem+json', async () => {
    const r110 = await svc.call('GET', `/microvms/${'a'.repeat(110)}`);
    assert.equal(r110.status, 404, r110.text);
    assert.ok(isProblem(r110));
    const r128 = await svc.call('DELETE', `/snapshots/${'b'.repeat(128)}`);
    assert.equal(r128.status, 404, r128.text);
    const r129 = await svc.call('GET', `/volumes/${'c'.repeat(129)}`);
    assert.equal(r129.status, 400, r129.text);
    assert.equal(r129.json.errors[0].field, 'id');
    const huge = await svc.call('GET', `/microvms/${'d'.repeat(5000)}`);
    assert.equal(huge.status, 414, huge.text);
    assert.ok(isProblem(huge), huge.text);
    const badUrl = await svc.call('GET', '/microvms/%zz');
    assert.ok(isProblem(badUrl) && badUrl.status === 400, `${badUrl.status} ${badUrl.text}`);
  });

  test('restoring an unknown snapshot is 404 like every unknown id (was 400)', async () => {
    const r = await svc.call('POST', '/snapshots/snap-nope/restore', { body: { name: 'r1', start: false } });
    assert.equal(r.status, 404, r.text);
    assert.equal(r.json.code, 'NOT_FOUND');
  });

  test('an API key lifetime past what a date holds is 400 naming expiresIn (was 500 RangeError)', async () => {
    const r = await svc.call('POST', '/apikeys', { body: { name: 'k-far', expiresIn: '300000000d' } });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.errors[0].field, 'expiresIn');
    const both = await svc.call('POST', '/apikeys', { body: { name: 'k-both', expiresIn: '1d', expiresAt: '2099-01-01T00:00:00Z' } });
    assert.equal(both.status, 400, both.text);
    assert.equal(both.json.errors[0].field, 'expiresIn');
  });

  test('a bad NIC address is refused at admission, naming the field (was 201, then a Failed VM)', async () => {
    const r = await svc.call('POST', '/microvms', { body: { name: 'badnic', start: false, networkInterfaces: [{ name: 'eth0', ip: 'not-an-ip' }] } });
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.errors[0].field, 'networkInterfaces[0].ip');
    const list = await svc.call('GET', '/microvms');
    assert.ok(!list.json.items.some((v: { name: string }) => v.name === 'badnic'));
  });

  test('one ?tenant= rule on every list route: admins list that tenant, others only their own (403)', async () => {
    const a = await svc.call('POST', '/microvms?tenant=alpha', { body: { name: 'in-alpha', start: false } });
    assert.equal(a.status, 201, a.text);
    const memberB = (await createKey(svc, 'beta', 'tenant-admin')).token;
    for (const path of ['/microvms', '/apikeys', '/audit', '/events', '/volumes', '/volumesnapshots', '/snapshots', '/securitygroups', '/templates']) {
      const own = await svc.call('GET', `${path}?tenant=alpha`);
      assert.equal(own.status, 200, `${path}: ${own.text}`);
      for (const it of own.json.items as Array<{ tenant?: string }>) if (it.tenant !== undefined) assert.equal(it.tenant, 'alpha', path);
      const foreign = await svc.call('GET', `${path}?tenant=alpha`, { token: memberB });
      assert.equal(foreign.status, 403, `${path} as beta: ${foreign.status} ${foreign.text}`);
      assert.equal(foreign.json.code, 'PERMISSION_DENIED');
      assert.equal((await svc.call('GET', `${path}?tenant=beta`, { token: memberB })).status, 200, path);
    }
    const vms = await svc.call('GET', '/microvms?tenant=alpha');
    assert.deepEqual(vms.json.items.map((v: { name: string }) => v.name), ['in-alpha']);
    assert.deepEqual((await svc.call('GET', '/microvms?tenant=beta')).json.items, []);
  });

  test('GetMicroVM(id="") over gRPC is INVALID_ARGUMENT (was NOT_FOUND)', async () => {
    const c = createGrpcClient(svc.grpc, svc.token);
    try {
      await assert.rejects(unaryCall(c.GetMicroVM.bind(c), { id: '' }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
      await assert.rejects(unaryCall(c.GetMicroVM.bind(c), { id: 'vm-none' }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
    } finally {
      c.close();
    }
  });
});

describe('schemathesis against the real service', () => {
  test('every operation, every check, stateful links, a tenant with small quotas: zero failures', { timeout: FUZZ_BUDGET_MS + 60_000 }, async (t) => {
    let python: string;
    try {
      python = pythonVenv();
    } catch (e) {
      t.skip(`needs the Python virtualenv with schemathesis: ${(e as Error).message}`);
      return;
    }
    const st = join(python, '..', 'st');
    if (!existsSync(st)) {
      t.skip(`no schemathesis in ${join(python, '..')}: run make deps (scripts/setup.sh)`);
      return;
    }
    await createTenant(svc, 'fuzz', FUZZ_QUOTAS);
    // A token the fuzzer cannot revoke (an API key could revoke itself): a JWT of the tenant's admin.
    const token = await hsToken({ sub: 'fuzzer', tenant: 'fuzz', role: 'tenant-admin' }, { expSec: 3600 });
    const work = mkdtempSync(join(tmpdir(), 'mvm-fuzz-'));
    const t0 = Date.now();
    const out = await new Promise<{ code: number | null; text: string }>((resolve) => {
      const p = spawn(
        st,
        ['--config-file', join(REPO, 'test/fuzz/schemathesis.toml'), 'run', `${svc.url}/api/v1/openapi.json`, '--url', svc.url, '-H', `Authorization: Bearer ${token}`, '--no-color', '--workers', '1'],
        { cwd: work, env: { ...process.env, SCHEMATHESIS_HOOKS: '', HYPOTHESIS_STORAGE_DIRECTORY: join(work, '.hypothesis') }, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let text = '';
      p.stdout.on('data', (d: Buffer) => (text += d.toString()));
      p.stderr.on('data', (d: Buffer) => (text += d.toString()));
      const timer = setTimeout(() => {
        text += `\n[killed: over the ${FUZZ_BUDGET_MS / 1000} s budget]\n`;
        p.kill('SIGKILL');
      }, FUZZ_BUDGET_MS);
      p.on('close', (code) => {
        clearTimeout(timer);
        resolve({ code, text });
      });
    });
    const seconds = Math.round((Date.now() - t0) / 1000);
    rmSync(work, { recursive: true, force: true });
    // The whole report, for reading a failure (the assertion shows its end).
    const log = join(tmpdir(), 'mvm-openapi-fuzz.log');
    writeFileSync(log, out.text);
    const cases = /(\d+) generated/.exec(out.text)?.[1];
    const tested = /Tested: (\d+)/.exec(out.text)?.[1];
    t.diagnostic(`schemathesis: ${seconds} s, ${tested ?? '?'} operations, ${cases ?? '?'} test cases`);
    const summary = out.text.slice(out.text.lastIndexOf('= SUMMARY ='));
    assert.equal(out.code, 0, `schemathesis failed (exit ${out.code}) after ${seconds} s (whole report: ${log}):\n${out.text.length > 60_000 ? out.text.slice(-60_000) : out.text}`);
    assert.match(summary, /No issues found|0 failures|passed/i, summary);
    assert.ok(Number(tested) >= 60, `only ${tested} operations were tested:\n${summary}`);
    // The service survived it: still answering, nothing over the tenant's quota.
    const usage = await svc.call('GET', '/tenants/fuzz/usage');
    assert.equal(usage.status, 200, usage.text);
    assert.ok(!/internal error/.test(svc.logs()), 'the service logged an internal error during the fuzz run');
  });
});
