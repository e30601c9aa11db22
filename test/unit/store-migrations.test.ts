/**
 * Schema versions of the SQLite state (PRAGMA user_version) and their migrations: a database made
 * by every earlier version (test/fixtures/db, written by that version's own service through its
 * API: scripts/gen-db-fixtures.mjs) opens, is brought to the current version with its records
 * intact, and re-running every step on top changes nothing; a database newer than this build is
 * refused untouched with a typed error.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { MvmError } from '../../src/core/errors.js';
import { parseApiKeyToken, secretMatches } from '../../src/core/tenancy.js';
import { SCHEMA_VERSION, SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { SqliteResourceStore } from '../../src/store/sqlite/resources.js';
import { SqliteTenantStore } from '../../src/store/sqlite/tenant-store.js';

const FIXTURES = new URL('../../../test/fixtures/db/', import.meta.url).pathname;
/** Versions no build ever left on disk alone: 2 and 3 shipped together (a42f43d), 2 only lives mid-upgrade. */
const NEVER_SHIPPED_ALONE = new Set([2]);

interface FixtureMeta {
  version: number;
  commit: string;
  vms: Array<{ id: string; name: string; tenant: string }>;
  tenant?: string;
  apiKey?: { id: string; token: string };
  securityGroup?: { id: string; name: string };
}

const dir = mkdtempSync(join(tmpdir(), 'mvm-migrations-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

const versions = Array.from({ length: SCHEMA_VERSION - 1 }, (_, i) => i + 1).filter((v) => !NEVER_SHIPPED_ALONE.has(v));

test('every earlier schema version has a fixture database (add one when you add a migration)', () => {
  for (const v of versions) {
    assert.ok(existsSync(join(FIXTURES, `v${v}.sqlite`)), `test/fixtures/db/v${v}.sqlite is missing: generate it with scripts/gen-db-fixtures.mjs`);
  }
});

for (const v of versions) {
  test(`a database of schema version ${v} is upgraded to ${SCHEMA_VERSION} with its records`, async () => {
    const meta = JSON.parse(readFileSync(join(FIXTURES, `v${v}.json`), 'utf8')) as FixtureMeta;
    const path = join(dir, `v${v}.db`);
    copyFileSync(join(FIXTURES, `v${v}.sqlite`), path);
    const raw = new Database(path, { readonly: true });
    assert.equal(raw.pragma('user_version', { simple: true }), v, 'the fixture really is that version');
    raw.close();

    const s = new SqliteStore(path);
    try {
      assert.equal(s.migratedFrom, v);
      assert.equal(s.database.pragma('user_version', { simple: true }), SCHEMA_VERSION);
      for (const want of meta.vms) {
        const vm = await s.getVm(want.id);
        assert.equal(vm?.name, want.name, `microVM ${want.name} of the v${v} database`);
        assert.equal(vm?.status.phase, 'Stopped');
      }
      // Quota accounting (version 3) counts the microVMs that were there before it.
      assert.equal(s.usageOf('default').vms, meta.vms.filter((x) => x.tenant === 'default').length);
      // The resources table (version 4) is there, with whatever an earlier version kept in it.
      const resources = new SqliteResourceStore(s.database);
      const groups = await resources.list('securitygroup');
      if (meta.securityGroup) assert.deepEqual(groups.map((g) => g.name), [meta.securityGroup.name]);
      else assert.deepEqual(groups, []);
      if (meta.apiKey) {
        const tenants = new SqliteTenantStore(s);
        assert.equal((await tenants.getTenant(meta.tenant!))?.id, meta.tenant);
        const rec = await tenants.getKey(meta.apiKey.id);
        assert.ok(rec && secretMatches(parseApiKeyToken(meta.apiKey.token)!.secret, rec.secretHash), 'the old API key still verifies');
      }
    } finally {
      await s.close();
    }
    // Opening again migrates nothing.
    const again = new SqliteStore(path);
    assert.equal(again.migratedFrom, SCHEMA_VERSION);
    await again.close();
  });
}

test('every migration step is idempotent: re-running all of them on a current database keeps its records', async () => {
  const newest = versions[versions.length - 1]!;
  const path = join(dir, 'rerun.db');
  copyFileSync(join(FIXTURES, `v${newest}.sqlite`), path);
  const s = new SqliteStore(path);
  const before = (await s.listVms()).items.map((x) => x.id);
  const usage = s.usageOf('default');
  s.database.pragma('user_version = 0');
  await s.close();
  const again = new SqliteStore(path);
  try {
    assert.equal(again.migratedFrom, 0);
    assert.deepEqual((await again.listVms()).items.map((x) => x.id), before);
    assert.deepEqual(again.usageOf('default'), usage, 'the backfill counts each microVM once');
  } finally {
    await again.close();
  }
});

test('a database newer than this build is refused, untouched, with a typed error that says what to do', async () => {
  const path = join(dir, 'future.db');
  const s = new SqliteStore(path);
  s.database.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
  await s.close();
  assert.throws(
    () => new SqliteStore(path),
    (e: unknown) => {
      assert.ok(e instanceof MvmError);
      assert.equal(e.code, 'UNAVAILABLE');
      assert.equal(e.details.reason, 'SchemaTooNew');
      assert.match(e.message, new RegExp(`schema version ${SCHEMA_VERSION + 1}, but this build of mvm knows versions up to ${SCHEMA_VERSION}: it was written by a newer mvm`));
      return true;
    },
  );
  const raw = new Database(path, { readonly: true });
  assert.equal(raw.pragma('user_version', { simple: true }), SCHEMA_VERSION + 1);
  raw.close();
});
