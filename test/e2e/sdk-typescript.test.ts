/**
 * The TypeScript SDK (sdk/typescript, issue 13) against the real service and a real guest:
 * create, wait ready, exec (buffered; streamed with stdin and a signal), a 1 MiB file both ways,
 * file listing/stat/mkdir/remove, port forwarding to busybox httpd in the guest, typed errors
 * (404 NOT_FOUND, 400 with violations), delete; then the README example, as written, importing
 * the built package (`make build`) by its name.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { Mvm, MvmApiError, type MicroVM } from '../../sdk/typescript/src/index.js';
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
