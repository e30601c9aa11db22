/**
 * Migration with memory (docs/adr/0034), the parts that need no cluster: standalone refuses it
 * with a code saying why (409 ILLEGAL_TRANSITION, reason NeedsClusterMode); the protocol's
 * annotations and the Migrated condition's message; what cannot move. The moves themselves run on
 * the real control plane with real guests (test/e2e/k8s-migration.test.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Principal } from '../../src/core/authz.js';
import { MvmError } from '../../src/core/errors.js';
import type { NodeAgent } from '../../src/core/ports/agent.js';
import { MicroVMService } from '../../src/core/service.js';
import { HTTP_STATUS } from '../../src/gateway/problem.js';
import { migrationMessage, migrationOf, migrationRefusal, parseMigrateRequest, parseMigrationPlan } from '../../src/k8s/cluster.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';

const admin: Principal = { subject: 'admin', tenant: 'default', role: 'admin' };

test('standalone: migrate is refused with 409 ILLEGAL_TRANSITION, reason NeedsClusterMode; a missing VM is 404', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-mig-'));
  const store = new SqliteStore(join(dir, 'state.db'));
  try {
    const agent = new Proxy({ nodeName: 'n1' }, { get: (t, k) => (k in t ? t[k as keyof typeof t] : async () => undefined) }) as unknown as NodeAgent;
    const vms = new MicroVMService(store, agent);
    const vm = await vms.create(admin, { name: 'one', start: false });
    await assert.rejects(vms.migrate(admin, vm.id, {}), (e: unknown) => {
      assert.ok(e instanceof MvmError);
      assert.equal(e.code, 'ILLEGAL_TRANSITION');
      assert.equal(HTTP_STATUS[e.code], 409);
      assert.equal(e.details.reason, 'NeedsClusterMode');
      assert.match(e.message, /migration needs cluster mode/);
      return true;
    });
    await assert.rejects(vms.migrate(admin, 'vm-nope', {}), (e: unknown) => e instanceof MvmError && e.code === 'NOT_FOUND');
    // With a migrator (cluster mode) the call is its.
    vms.migrator = async (v, req) => ({ ...v, name: `to-${req.node}` });
    assert.equal((await vms.migrate(admin, vm.id, { node: 'b' })).name, 'to-b');
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the migration protocol: requests, plans, the condition message, refusals', () => {
  assert.deepEqual(parseMigrateRequest(undefined), undefined);
  assert.deepEqual(parseMigrateRequest(''), {});
  assert.deepEqual(parseMigrateRequest('{}'), {});
  assert.deepEqual(parseMigrateRequest('{"node":"node-b"}'), { node: 'node-b' });
  assert.deepEqual(parseMigrateRequest('node-b'), { node: 'node-b' }, 'kubectl annotate ...=node-b');
  assert.deepEqual(parseMigrateRequest('{not json'), {});
  const plan = { id: 'mig-1', source: 'a', target: 'b', reason: 'NodeDrain', startedAt: '2026-01-01T00:00:00.000Z' };
  assert.deepEqual(parseMigrationPlan(JSON.stringify(plan)), plan);
  assert.equal(parseMigrationPlan('{"id":"x"}'), undefined);
  assert.equal(parseMigrationPlan('garbage'), undefined);
  assert.equal(migrationOf(migrationMessage('mig-1', 'failed at step transfer: cut')), 'mig-1');
  assert.equal(migrationOf('something else'), undefined);
  const running = { spec: {}, status: { phase: 'Running' } };
  assert.equal(migrationRefusal(running), undefined);
  assert.match(migrationRefusal({ ...running, status: { phase: 'Stopped' } })!, /only a Running microVM migrates/);
  assert.match(migrationRefusal({ spec: { source: { snapshot: 's' } }, status: { phase: 'Running' } })!, /snapshot/);
  assert.match(migrationRefusal({ spec: { volumes: [{}] }, status: { phase: 'Running' } })!, /volumes/);
});
