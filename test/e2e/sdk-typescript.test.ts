/**
 * The TypeScript SDK (sdk/typescript, issue 13) against the real service and a real guest:
 * create, wait ready, exec (buffered; streamed with stdin and a signal), a 1 MiB file both ways,
 * file listing/stat/mkdir/remove, port forwarding to busybox httpd in the guest, typed errors
 * (404 NOT_FOUND, 400 with violations), delete; then the README example, as written, importing
 * the built package (`make build`) by its name. Then the rest of the API the CLI and the dashboard
 * are built on, with microVMs that are never started: whoami, tenants and API keys, paging,
 * Idempotency-Key, If-Match, the event log and its SSE follow, the served operations.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { Mvm, MvmApiError, type MicroVM, type VmEvent } from '../../sdk/typescript/src/index.js';
import { REPO, destroyDataDir, startService, type TestService } from '../support/service.js';
import { readmeBlock } from '../support/sdk.js';

let svc: TestService;
let mvm: Mvm;
let vm: MicroVM;
const work = mkdtempSync(join(tmpdir(), 'mvm-sdk-ts-'));

async function collect(r: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of r) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function rejectsApi(p: Promise<unknown>): Promise<MvmApiError> {
  try {
    await p;
  } catch (e) {
    assert.ok(e instanceof MvmApiError, `expected MvmApiError, got ${String(e)}`);
    return e;
  }
  assert.fail('expected a rejection');
}

before(async () => {
  svc = await startService();
  mvm = new Mvm({ url: svc.url, token: svc.token });
  vm = await mvm.microvms.create({ name: 'sdk-ts', memory: '256Mi' });
  const ready = await mvm.microvms.waitFor(vm.id, { timeoutMs: 240_000 });
  assert.equal(ready.status?.phase, 'Running');
});

after(async () => {
  try {
    if (mvm && vm) await mvm.microvms.delete(vm.id, { wait: true, timeoutMs: 60_000 }).catch(() => undefined);
    await svc?.stop();
  } finally {
    if (svc) await destroyDataDir(svc.dataDir);
    rmSync(work, { recursive: true, force: true });
  }
});

describe('@mvm/sdk', () => {
  test('microvms.get and list', async () => {
    assert.equal((await mvm.microvms.get(vm.id)).name, 'sdk-ts');
    assert.ok((await mvm.microvms.list()).items.some((x) => x.id === vm.id));
  });

  test('exec (buffered): exit code and both outputs', async () => {
    const r = await mvm.exec(vm.id, ['sh', '-c', 'echo out-$((6*7)); echo err >&2; exit 3']);
    assert.equal(r.exitCode, 3);
    assert.equal(r.stdout, 'out-42\n');
    assert.equal(r.stderr, 'err\n');
    assert.equal(r.timedOut, false);
  });

  test('execStream: stdin in, stdout and stderr out, the exit', async () => {
    const s = await mvm.execStream(vm.id, { cmd: ['sh', '-c', 'read a; echo got-$a; echo e-$a >&2; exit 5'] });
    const out = collect(s.stdout);
    const err = collect(s.stderr);
    s.stdin.end('hello\n');
    assert.equal((await s.result).exitCode, 5);
    assert.equal((await out).toString(), 'got-hello\n');
    assert.equal((await err).toString(), 'e-hello\n');
  });

  test('execStream: a signal ends the command', async () => {
    const s = await mvm.execStream(vm.id, { cmd: ['sleep', '60'] });
    s.signal('TERM');
    const exit = await s.result;
    assert.equal(exit.exitCode, 128 + 15);
    assert.equal(exit.signal, 'TERM');
  });

  test('files: 1 MiB up and down, identical; stat, mkdir, list, remove', async () => {
    const data = randomBytes(1024 * 1024);
    const up = await mvm.files.write(vm.id, '/tmp/sdk/blob.bin', Readable.from([data.subarray(0, 300_000), data.subarray(300_000)]), { mode: 0o640 });
    assert.equal(up.size, data.length);
    const down = await mvm.files.read(vm.id, '/tmp/sdk/blob.bin');
    assert.equal(down.size, data.length);
    assert.equal(down.mode, 0o640);
    const got = await collect(down.stream);
    assert.equal(createHash('sha256').update(got).digest('hex'), createHash('sha256').update(data).digest('hex'));
    const st = await mvm.files.stat(vm.id, '/tmp/sdk/blob.bin');
    assert.deepEqual([st.type, st.size, st.mode], ['file', data.length, 0o640]);
    assert.equal((await mvm.files.mkdir(vm.id, '/tmp/sdk/d/e')).created, true);
    assert.deepEqual((await mvm.files.list(vm.id, '/tmp/sdk')).map((e) => e.name), ['blob.bin', 'd']);
    await mvm.files.remove(vm.id, '/tmp/sdk', { recursive: true });
    assert.equal((await rejectsApi(mvm.files.stat(vm.id, '/tmp/sdk'))).status, 404);
  });

  test('portForward: busybox httpd in the guest fetched through a local port', async () => {
    await mvm.files.write(vm.id, '/srv/index.html', 'hello-from-guest-ts\n');
    const r = await mvm.exec(vm.id, ['busybox', 'httpd', '-p', '8080', '-h', '/srv']);
    assert.equal(r.exitCode, 0, r.stderr);
    const fwd = await mvm.portForward(vm.id, 8080);
    try {
      assert.ok(fwd.port > 0);
      const deadline = Date.now() + 30_000;
      let body: string | undefined;
      while (body === undefined) {
        try {
          const res = await fetch(`http://127.0.0.1:${fwd.port}/index.html`, { signal: AbortSignal.timeout(10_000) });
          body = await res.text();
        } catch (e) {
          if (Date.now() > deadline) throw e;
          await new Promise((res) => setTimeout(res, 500));
        }
      }
      assert.equal(body, 'hello-from-guest-ts\n');
    } finally {
      await fwd.close();
    }
    assert.equal((await rejectsApi(mvm.connectPort(vm.id, 9))).status, 503);
  });

  test('typed errors: 404 NOT_FOUND, 400 VALIDATION_FAILED with violations', async () => {
    const e = await rejectsApi(mvm.exec('no-such-vm-ts', ['true']));
    assert.deepEqual([e.status, e.code], [404, 'NOT_FOUND']);
    const ws = await rejectsApi(mvm.execStream('no-such-vm-ts', { cmd: ['true'] }));
    assert.deepEqual([ws.status, ws.code], [404, 'NOT_FOUND']);
    const v = await rejectsApi(mvm.exec(vm.id, { cmd: [] }));
    assert.deepEqual([v.status, v.code], [400, 'VALIDATION_FAILED']);
    assert.ok(v.violations.some((x) => x.field.startsWith('cmd')), JSON.stringify(v.problem));
  });

  test('the README example runs as written (the built package, imported as @mvm/sdk)', { timeout: 400_000 }, async () => {
    assert.ok(existsSync(join(REPO, 'sdk/typescript/dist/index.js')), 'sdk/typescript/dist is missing: run make build');
    mkdirSync(join(work, 'node_modules/@mvm'), { recursive: true });
    symlinkSync(join(REPO, 'sdk/typescript'), join(work, 'node_modules/@mvm/sdk'));
    const file = join(work, 'example.mjs');
    writeFileSync(file, readmeBlock('sdk/typescript/README.md', 'js'));
    const child = spawn(process.execPath, [file], { cwd: work, env: { PATH: process.env.PATH, MVM_URL: svc.url, MVM_TOKEN: svc.token }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((res) => child.on('close', res));
    assert.equal(code, 0, out);
    assert.match(out, /^0 hello from Linux$/m);
    assert.match(out, /^hi there$/m);
    assert.match(out, /^STREAMED exit 0$/m);
    assert.match(out, /^404 NOT_FOUND$/m);
  });

  test('delete: the VM goes away', async () => {
    await mvm.microvms.delete(vm.id, { wait: true, timeoutMs: 120_000 });
    assert.equal((await rejectsApi(mvm.microvms.get(vm.id))).status, 404);
  });
});

describe('@mvm/sdk: the rest of the API', () => {
  const made: string[] = [];
  const create = async (name: string, opts: { idempotencyKey?: string } = {}): Promise<MicroVM> => {
    const v = await mvm.microvms.create({ name, memory: '128Mi', start: false }, opts);
    if (!made.includes(v.id)) made.push(v.id);
    return v;
  };

  after(async () => {
    for (const id of made) await mvm.microvms.delete(id, { wait: true, timeoutMs: 60_000 }).catch(() => undefined);
    await mvm.tenants.delete('sdk-ts-tenant', { cascade: true }).catch(() => undefined);
  });

  test('a validation problem becomes MvmApiError with its code and the field', async () => {
    const e = await rejectsApi(mvm.microvms.create({ name: 'Not A Valid Name!', start: false }));
    assert.deepEqual([e.status, e.code], [400, 'VALIDATION_FAILED']);
    assert.ok(e.violations.some((x) => /name/.test(x.field)), JSON.stringify(e.problem));
  });

  test('whoami; a tenant\'s API key acts as that tenant; once revoked it is 401 UNAUTHENTICATED', async () => {
    assert.equal((await mvm.whoami()).role, 'admin');
    await mvm.tenants.create({ id: 'sdk-ts-tenant', displayName: 'SDK test' });
    assert.equal((await mvm.tenants.get('sdk-ts-tenant')).displayName, 'SDK test');
    const key = await mvm.apiKeys.create({ name: 'sdk-key', role: 'member' }, { tenant: 'sdk-ts-tenant' });
    const asKey = new Mvm({ url: svc.url, token: key.token });
    assert.deepEqual([(await asKey.whoami()).tenant, (await asKey.whoami()).role], ['sdk-ts-tenant', 'member']);
    assert.ok((await mvm.apiKeys.list({ tenant: 'sdk-ts-tenant' })).items.some((k) => k.id === key.id));
    // A member may not create tenants: 403 with the service's code.
    assert.deepEqual([(await rejectsApi(asKey.tenants.create({ id: 'sdk-ts-other' }))).status], [403]);
    await mvm.apiKeys.revoke(key.id);
    const e = await rejectsApi(asKey.whoami());
    assert.deepEqual([e.status, e.code], [401, 'UNAUTHENTICATED']);
    const tenantIds: string[] = [];
    for await (const t of mvm.tenants.listAll()) tenantIds.push(t.id);
    assert.ok(tenantIds.includes('sdk-ts-tenant'), tenantIds.join(','));
  });

  test('paging: list with a limit answers a cursor, listAll follows it to the end', async () => {
    await create('sdk-page-a');
    await create('sdk-page-b');
    const first = await mvm.microvms.list({ limit: 1 });
    assert.equal(first.items.length, 1);
    assert.ok(first.next_cursor, 'a next_cursor');
    const all: string[] = [];
    for await (const v of mvm.microvms.listAll({ limit: 1 })) all.push(v.name);
    assert.ok(all.includes('sdk-page-a') && all.includes('sdk-page-b'), all.join(','));
    assert.equal(new Set(all).size, all.length);
  });

  test('Idempotency-Key: a retried create answers the first microVM; the key reused for another request is 409', async () => {
    const a = await create('sdk-idem', { idempotencyKey: 'sdk-ts-key-1' });
    const again = await create('sdk-idem', { idempotencyKey: 'sdk-ts-key-1' });
    assert.equal(again.id, a.id);
    const e = await rejectsApi(create('sdk-idem-other', { idempotencyKey: 'sdk-ts-key-1' }));
    assert.deepEqual([e.status, e.code], [409, 'CONFLICT']);
  });

  test('If-Match: an update with the current resourceVersion applies, a stale one is 409 CONFLICT', async () => {
    const v = await create('sdk-ifmatch');
    const cur = await mvm.microvms.get(v.id);
    const updated = await mvm.microvms.update(v.id, { labels: { tier: 'one' } }, { ifMatch: cur.resourceVersion });
    assert.equal(updated.spec?.labels?.tier, 'one');
    const e = await rejectsApi(mvm.microvms.update(v.id, { labels: { tier: 'two' } }, { ifMatch: cur.resourceVersion }));
    assert.deepEqual([e.status, e.code], [409, 'CONFLICT']);
    assert.equal((await mvm.microvms.get(v.id)).spec?.labels?.tier, 'one');
  });

  test('events: the SSE follow sees a new microVM, the log lists it; the served operations', async () => {
    const ac = new AbortController();
    const seen: VmEvent[] = [];
    let onOpen!: () => void;
    const opened = new Promise<void>((r) => (onOpen = r));
    const follow = (async () => {
      for await (const { id, event } of mvm.events.follow({ tail: 0, signal: ac.signal, onOpen })) {
        assert.match(id ?? '', /^\d+$/);
        seen.push(event);
        if (seen.some((e) => e.vmId === v?.id)) return;
      }
    })();
    let v: MicroVM | undefined;
    try {
      await opened;
      v = await create('sdk-events');
      await Promise.race([follow, new Promise((_, rej) => setTimeout(() => rej(new Error(`no event of ${v?.id} in 20 s: ${JSON.stringify(seen)}`)), 20_000))]);
    } finally {
      ac.abort();
      await follow.catch(() => undefined);
    }
    assert.ok((await mvm.events.list({ vm: v.id })).some((e) => e.vmId === v!.id));
    assert.ok((await mvm.microvms.events(v.id)).length > 0);
    const ops = await mvm.operations();
    assert.ok(ops.has('POST /api/v1/microvms') && ops.has('GET /api/v1/whoami'), [...ops].slice(0, 5).join(','));
  });
});
