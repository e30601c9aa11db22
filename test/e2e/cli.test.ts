/** The `mvm` CLI against the real service with a real guest: the README's walkthrough. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CLI_BIN, destroyDataDir, qemuProcessesUnder, startService, type TestService } from '../support/service.js';
import { cliRunner } from '../support/cli.js';

let svc: TestService;
const home = mkdtempSync(join(tmpdir(), 'mvm-cli-home-'));

const mvm = cliRunner(() => svc, home, 180_000);

before(async () => {
  svc = await startService();
});
after(async () => {
  await svc?.stop();
  if (svc) await destroyDataDir(svc.dataDir);
  rmSync(home, { recursive: true, force: true });
});

test('create --wait, list, get, console, metrics, stop, start, delete', () => {
  const c = mvm('create', 'cli-demo', '--memory', '128Mi', '--wait', '-o', 'json');
  assert.equal(c.code, 0, c.err);
  const vm = JSON.parse(c.out) as { id: string; status: { phase: string; conditions: Array<{ type: string; status: string }> } };
  assert.equal(vm.status.phase, 'Running');
  assert.ok(vm.status.conditions.some((x) => x.type === 'GuestReady' && x.status === 'True'));

  const l = mvm('list');
  assert.equal(l.code, 0, l.err);
  assert.match(l.out, /NAME/);
  assert.match(l.out, /cli-demo\s+Running/);

  const con = mvm('console', 'cli-demo');
  assert.equal(con.code, 0, con.err);
  assert.ok(con.out.includes(`MVM-READY id=${vm.id}`));

  const m = mvm('metrics', 'cli-demo', '-o', 'json');
  assert.equal(m.code, 0, m.err);
  assert.ok((JSON.parse(m.out) as { cpuSeconds: number }).cpuSeconds > 0);

  const s = mvm('stop', 'cli-demo', '--wait');
  assert.equal(s.code, 0, s.err);
  assert.equal((JSON.parse(mvm('get', 'cli-demo', '-o', 'json').out) as { status: { phase: string } }).status.phase, 'Stopped');

  const again = mvm('stop', 'cli-demo');
  assert.equal(again.code, 1);
  assert.match(again.err, /cannot stop/);

  const st = mvm('start', 'cli-demo', '--wait');
  assert.equal(st.code, 0, st.err);

  const d = mvm('delete', 'cli-demo', '--wait');
  assert.equal(d.code, 0, d.err);
  assert.equal(mvm('get', 'cli-demo').code, 1);
  assert.deepEqual(qemuProcessesUnder(svc.dataDir), []);
});

test('clear errors: bad input names the field, wrong token, unreachable server', () => {
  const bad = mvm('create', 'x', '--vcpu', '9');
  assert.equal(bad.code, 1);
  assert.match(bad.err, /vcpu/);
  const r = spawnSync(process.execPath, [CLI_BIN, '--server', svc.url, '--token', 'wrong', 'list'], { encoding: 'utf8', env: { PATH: process.env.PATH, HOME: home } });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /authentication failed/);
  const down = spawnSync(process.execPath, [CLI_BIN, '--server', 'http://127.0.0.1:1', 'list'], { encoding: 'utf8', env: { PATH: process.env.PATH, HOME: home } });
  assert.equal(down.status, 1);
  assert.match(down.stderr, /cannot reach/);
});
