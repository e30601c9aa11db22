/**
 * The Python SDK (sdk/python, issue 13) against the real service and a real guest: its pytest
 * suite (sdk/python/tests: create, wait, exec buffered and streamed, a 1 MiB file both ways,
 * port forwarding to busybox httpd, typed errors, delete), then the README's example as written.
 * Python and its packages come from the virtualenv scripts/setup.sh made under $MVM_CACHE_DIR.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, destroyDataDir, startService, type TestService } from '../support/service.js';
import { pythonVenv, readmeBlock } from '../support/sdk.js';

let svc: TestService;
const work = mkdtempSync(join(tmpdir(), 'mvm-sdk-py-'));

function run(python: string, args: string[], timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(python, args, {
      cwd: work,
      env: { PATH: process.env.PATH, HOME: work, PYTHONPATH: join(REPO, 'sdk/python/src'), PYTHONDONTWRITEBYTECODE: '1', MVM_URL: svc.url, MVM_TOKEN: svc.token },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('close', (code) => {
      clearTimeout(t);
      resolve({ code, out });
    });
  });
}

before(async () => {
  svc = await startService();
});

after(async () => {
  try {
    await svc?.stop();
  } finally {
    if (svc) await destroyDataDir(svc.dataDir);
    rmSync(work, { recursive: true, force: true });
  }
});

test('the pytest suite of sdk/python passes against the service', { timeout: 600_000 }, async () => {
  const r = await run(pythonVenv(), ['-m', 'pytest', '-q', '-p', 'no:cacheprovider', join(REPO, 'sdk/python/tests')], 540_000);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /\b8 passed\b/, r.out);
});

test('the README example runs as written', { timeout: 400_000 }, async () => {
  const file = join(work, 'example.py');
  writeFileSync(file, readmeBlock('sdk/python/README.md', 'python'));
  const r = await run(pythonVenv(), [file], 360_000);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /^0 hello from Linux$/m);
  assert.match(r.out, /^hi there$/m);
  assert.match(r.out, /^STREAMED exit 0$/m);
  assert.match(r.out, /^404 NOT_FOUND$/m);
});
