/**
 * Upgrades with the VMs kept running (ADR 0003, ADR 0022): a guest boots under the current
 * service, the service stops (its guests run on), and its state database is put back to each
 * earlier schema version — the fixture that version's own service wrote (test/fixtures/db),
 * holding the running VM's record too. The current service then starts on it: it migrates the
 * database, re-adopts the same QEMU process (same pid) as Running, and serves the old records (the
 * old API key still works). A database newer than the service is refused at start, the guest
 * untouched.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { apiCall, destroyDataDir, qemuProcessesUnder, startService, type TestService } from '../support/service.js';
import { SCHEMA_VERSION } from '../../src/store/sqlite/sqlite-store.js';

const FIXTURES = new URL('../../../test/fixtures/db/', import.meta.url).pathname;
const FIXTURE_VERSIONS = [1, 3];

let svc: TestService | undefined;
let dataDir: string | undefined;
after(async () => {
  await svc?.stop().catch(() => undefined);
  if (dataDir) await destroyDataDir(dataDir);
});

/** The state database of `dir` replaced by fixture v`version` plus the given microVM rows (and their quota rows, where the schema has them). */
function rollBack(dir: string, version: number, keep: { microvms: unknown[]; usage: unknown[] }): void {
  const path = join(dir, 'state.db');
  for (const f of ['state.db', 'state.db-wal', 'state.db-shm']) rmSync(join(dir, f), { force: true });
  copyFileSync(join(FIXTURES, `v${version}.sqlite`), path);
  const db = new Database(path);
  try {
    const ins = db.prepare('INSERT INTO microvms (id, tenant, name, phase, rv, seq, doc) VALUES (@id, @tenant, @name, @phase, @rv, @seq + 1000, @doc)');
    for (const r of keep.microvms) ins.run(r);
    const hasUsage = db.prepare(`SELECT 1 FROM sqlite_master WHERE name = 'vm_usage'`).get();
    if (hasUsage) for (const u of keep.usage) db.prepare('INSERT INTO vm_usage (id, tenant, vcpu, memory_mib, disk_mib) VALUES (@id, @tenant, @vcpu, @memory_mib, @disk_mib)').run(u);
    assert.equal(db.pragma('user_version', { simple: true }), version);
  } finally {
    db.close();
  }
}

test('a running guest is re-adopted (same QEMU pid, Running) by a service that upgrades each earlier schema', async () => {
  svc = await startService();
  dataDir = svc.dataDir;
  const token = svc.token;
  const created = await apiCall(svc, 'POST', '/microvms', { name: 'keeper' });
  assert.equal(created.status, 201, created.text);
  const id = created.json.id as string;
  await svc.client.microvms.waitFor(id, { phase: 'Running', ready: true, timeoutMs: 180_000 });
  const pid = qemuProcessesUnder(dataDir).find((p) => p.id === id)?.pid;
  assert.ok(pid);
  await svc.stop();
  svc = undefined;
  // The guest's record as the current service wrote it.
  const db = new Database(join(dataDir, 'state.db'), { readonly: true });
  const keep = { microvms: db.prepare('SELECT * FROM microvms WHERE id = ?').all(id), usage: db.prepare('SELECT * FROM vm_usage WHERE id = ?').all(id) };
  db.close();

  for (const version of FIXTURE_VERSIONS) {
    const meta = JSON.parse(readFileSync(join(FIXTURES, `v${version}.json`), 'utf8')) as { vms: Array<{ id: string; name: string }>; apiKey?: { token: string } };
    assert.equal(qemuProcessesUnder(dataDir).find((p) => p.id === id)?.pid, pid, `the guest ran on while no service ran (before v${version})`);
    rollBack(dataDir, version, keep);
    const t0 = Date.now();
    svc = await startService({ dataDir, token });
    const startMs = Date.now() - t0;
    const probe: Database.Database = new Database(join(dataDir, 'state.db'), { readonly: true });
    assert.equal(probe.pragma('user_version', { simple: true }), SCHEMA_VERSION, `v${version} migrated`);
    probe.close();
    const vm = (await apiCall(svc, 'GET', `/microvms/${id}`)).json;
    assert.equal(vm.status.phase, 'Running', `v${version}: ${JSON.stringify(vm.status)}`);
    assert.equal(qemuProcessesUnder(dataDir).find((p) => p.id === id)?.pid, pid, `v${version}: the same QEMU process, re-adopted`);
    assert.equal(vm.status.pid, pid);
    const ran = await apiCall(svc, 'POST', `/microvms/${id}/exec`, { cmd: ['echo', 'still here'] });
    assert.equal(ran.json?.stdout, 'still here\n', ran.text);
    // The old version's own records.
    const names = (await apiCall(svc, 'GET', '/microvms')).json.items.map((x: { name: string }) => x.name).sort();
    assert.deepEqual(names, [...meta.vms.map((x) => x.name), 'keeper'].sort());
    if (meta.apiKey) assert.equal((await apiCall({ url: svc.url, token: meta.apiKey.token }, 'GET', '/whoami')).json?.tenant, 'acme', 'the old API key works');
    process.stderr.write(`# v${version} -> v${SCHEMA_VERSION}: service up in ${startMs} ms, guest pid ${pid} re-adopted\n`);
    await svc.stop();
    svc = undefined;
  }

  // A database from the future: the service refuses to start, says why, and leaves the guest alone.
  const db2 = new Database(join(dataDir, 'state.db'));
  db2.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
  db2.close();
  await assert.rejects(startService({ dataDir, token }), /UNAVAILABLE: state database .* has schema version \d+, but this build of mvm knows versions up to \d+: it was written by a newer mvm/);
  assert.equal(qemuProcessesUnder(dataDir).find((p) => p.id === id)?.pid, pid);
});
