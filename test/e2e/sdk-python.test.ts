/**
 * The Python SDK (sdk/python, issue 13) against the real service and a real guest: its pytest
 * suite (sdk/python/tests: create, wait, exec buffered and streamed, a 1 MiB file both ways,
 * port forwarding to busybox httpd, typed errors, delete), then the README's example as written.
 * Python and its dependencies come from the virtualenv scripts/setup.sh made under $MVM_CACHE_DIR
 * (Debian's python3, packages from PyPI); the SDK itself is built and installed from sdk/python
 * first, offline, as `pip install` would (its pyproject.toml, its generated models.py), into a
 * directory of this test's own, and the tests import it from there.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
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
      env: { PATH: process.env.PATH, HOME: work, PYTHONPATH: join(work, 'site'), PYTHONDONTWRITEBYTECODE: '1', MVM_URL: svc.url, MVM_TOKEN: svc.token },
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

test('the SDK installs from its source (pyproject.toml) into a clean directory', { timeout: 120_000 }, async () => {
  // A copy: the build writes egg-info beside the sources, which must not land in the repository.
  cpSync(join(REPO, 'sdk/python'), join(work, 'src'), { recursive: true, filter: (p) => !/__pycache__|\.egg-info|\.pytest_cache/.test(p) });
  const pip = await run(pythonVenv(), ['-m', 'pip', 'install', '-q', '--disable-pip-version-check', '--no-deps', '--no-build-isolation', '--no-index', '--target', join(work, 'site'), join(work, 'src')], 110_000);
  assert.equal(pip.code, 0, pip.out);
  const r = await run(pythonVenv(), ['-c', 'import mvm_sdk, mvm_sdk.models as m; print(mvm_sdk.__file__); print(sorted(m.MicroVM.__required_keys__))'], 30_000);
  assert.equal(r.code, 0, r.out);
  assert.ok(r.out.startsWith(join(work, 'site', 'mvm_sdk')), r.out);
  assert.match(r.out, /'id'.*'status'/);
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
  // -W error: a deprecation in httpx or websockets fails here first, not in users' code later.
  const r = await run(pythonVenv(), ['-m', 'pytest', '-q', '-p', 'no:cacheprovider', '-W', 'error::DeprecationWarning', join(REPO, 'sdk/python/tests')], 540_000);
  assert.equal(r.code, 0, r.out);
  assert.match(r.out, /\b7 passed\b/, r.out);
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
