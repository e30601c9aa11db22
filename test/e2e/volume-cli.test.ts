/**
 * `mvm volume ...` and `mvm create --volume` against the real service (no guest needed), and
 * crash safety: the service killed with -9 in the middle of a volume create leaves nothing behind.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiCall, destroyDataDir, startService, type TestService } from '../support/service.js';
import { cliRunner } from '../support/cli.js';
import { sleep } from '../../src/vmm/proc.js';
import { buildCreateRequest } from '../../src/cli/main.js';

let svc: TestService;
const home = mkdtempSync(join(tmpdir(), 'mvm-volcli-home-'));

const mvm = cliRunner(() => svc, home);

before(async () => {
  svc = await startService({ env: { MVM_NETWORK: 'none' } });
});
after(async () => {
  await svc?.stop();
  if (svc) await destroyDataDir(svc.dataDir);
  rmSync(home, { recursive: true, force: true });
});

test('--volume flags become spec.volumes; bad ones are usage errors', () => {
  const req = buildCreateRequest('a', { start: true, timeout: '1s', volume: ['data:/data', 'logs:/var/log/app:ro', 'new:/new:2Gi'] } as never) as unknown as { volumes: unknown[] };
  assert.deepEqual(req.volumes, [
    { name: 'data', mountPath: '/data' },
    { name: 'logs', mountPath: '/var/log/app', readOnly: true },
    { name: 'new', mountPath: '/new', size: '2Gi' },
  ]);
  assert.throws(() => buildCreateRequest('a', { start: true, timeout: '1s', volume: ['data'] } as never), /expected NAME:\/mount\/path/);
  assert.throws(() => buildCreateRequest('a', { start: true, timeout: '1s', volume: ['data:/d:fast'] } as never), /neither ro, rw nor a size/);
});

test('volume create, ls, get, snapshot, create --from-snapshot, rm', () => {
  const c = mvm('volume', 'create', 'clidata', '--size', '32Mi', '-o', 'json');
  assert.equal(c.code, 0, c.err);
  const v = JSON.parse(c.out) as { id: string; status: { phase: string } };
  assert.equal(v.status.phase, 'Available');
  const ls = mvm('volume', 'ls');
  assert.equal(ls.code, 0, ls.err);
  assert.match(ls.out, /^NAME\s+ID\s+SIZE\s+BACKEND\s+PHASE/);
  assert.match(ls.out, new RegExp(`clidata\\s+${v.id}\\s+32Mi\\s+local\\s+Available`));
  assert.equal(mvm('volume', 'get', 'clidata', '-q').out.trim(), v.id);
  const s = mvm('volume', 'snapshot', 'clidata', 'clisnap');
  assert.equal(s.code, 0, s.err);
  assert.match(s.out, /volume snapshot "clisnap" \(vsnap-[0-9a-z]+\) of vol-/);
  const r = mvm('volume', 'create', 'clicopy', '--from-snapshot', 'clisnap', '-o', 'json');
  assert.equal(r.code, 0, r.err);
  const dup = mvm('volume', 'create', 'clidata', '--size', '32Mi');
  assert.equal(dup.code, 1);
  assert.match(dup.err, /already has a volume named "clidata"/);
  const missing = mvm('volume', 'create', 'nosize');
  assert.equal(missing.code, 1);
  assert.match(missing.err, /- size: is required unless fromSnapshot is given/);
  const busy = mvm('volume', 'rm', 'clidata');
  assert.equal(busy.code, 1, 'a volume with snapshots is not deleted');
  assert.match(busy.err, /has snapshot\(s\) clisnap/);
  assert.equal(mvm('volume', 'rm', 'clicopy').code, 0);
  assert.equal(mvm('volume', 'get', 'clicopy').code, 1);
});

test('crash safety: kill -9 during a volume create leaves no record and no file after the restart', async () => {
  const volDir = join(svc.dataDir, 'volumes', 'volumes');
  const before = new Set(existsSync(volDir) ? readdirSync(volDir) : []);
  // 8 TiB sparse: mkfs.ext4 writes its metadata for ~0.7 s, long enough to die in the middle.
  const pending = apiCall(svc, 'POST', '/volumes', { name: 'huge', size: '8192Gi' }).catch(() => undefined);
  const deadline = Date.now() + 20_000;
  let tmp: string | undefined;
  while (!tmp && Date.now() < deadline) {
    tmp = (existsSync(volDir) ? readdirSync(volDir) : []).find((n) => n.endsWith('.img.tmp') && !before.has(n));
    if (!tmp) await sleep(5);
  }
  assert.ok(tmp, 'the create reached the backend');
  await svc.kill9();
  await pending;
  assert.ok(existsSync(join(volDir, tmp!)), 'the process died with the volume half-created');
  svc = await startService({ dataDir: svc.dataDir, env: { MVM_NETWORK: 'none' } });
  const list = await apiCall(svc, 'GET', '/volumes');
  assert.equal(list.status, 200);
  assert.ok(!list.json.items.some((v: { name: string }) => v.name === 'huge'), 'no record');
  const left = readdirSync(volDir).filter((n) => !before.has(n));
  assert.deepEqual(left, [], 'no orphaned files');
  // The name is free again.
  const again = await apiCall(svc, 'POST', '/volumes', { name: 'huge', size: '16Mi' });
  assert.equal(again.status, 201, JSON.stringify(again.json));
});
