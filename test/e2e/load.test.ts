/**
 * A bounded run of bench/load.ts against the real service: 1,000 concurrent connections over get
 * and list, 200 concurrent creates against a quota, and a short soak of mixed calls. The benchmark
 * exits non-zero on any 5xx, transport error, unexpected status, or an admission count other than
 * the quota; this test holds it to that and checks the tables it printed.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO } from '../support/service.js';

test('load: 1,000 connections and 200 concurrent creates give no 5xx and exactly the quota admitted', () => {
  const r = spawnSync(process.execPath, [join(REPO, 'dist/bench/load.js'), '--seconds', '2', '--quota', '13', '--soak', '10', '--soak-clients', '4'], {
    encoding: 'utf8',
    timeout: 180_000,
  });
  assert.equal(r.status, 0, `load benchmark failed:\n${r.stdout}\n${r.stderr}`);
  // The creates' row: 200 sent, 13 admitted, 13 listed, no 5xx.
  const row = r.stdout.split('\n').find((l) => /^\| 200 /.test(l));
  assert.ok(row, r.stdout);
  const cells = row.split('|').map((c) => c.trim());
  assert.equal(cells[2], '13', row);
  assert.equal(cells[4], '0', row);
  assert.equal(cells[6], '13', row);
  assert.match(r.stdout, /0 5xx, 0 unexpected statuses/);
});
