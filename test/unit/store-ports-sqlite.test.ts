/**
 * The gateway's port contracts (tenants + API keys, idempotency, audit, resources) against the
 * SQLite adapters: one state file per case in a temp dir, as in standalone mode (the tenant store
 * shares the microVM store's connection).
 */
import { after } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteAuditLog } from '../../src/store/sqlite/audit-log.js';
import { SqliteIdempotencyStore } from '../../src/store/sqlite/idempotency-store.js';
import { SqliteResourceStore } from '../../src/store/sqlite/resources.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { SqliteTenantStore } from '../../src/store/sqlite/tenant-store.js';
import { auditContract } from '../contract/audit.contract.js';
import { idempotencyContract } from '../contract/idempotency.contract.js';
import { resourceContract } from '../contract/resources.contract.js';
import { tenantContract } from '../contract/tenants.contract.js';

const dir = mkdtempSync(join(tmpdir(), 'mvm-ports-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const open = (): SqliteStore => new SqliteStore(join(dir, `s${n++}.db`));

tenantContract('sqlite', async () => {
  const vms = open();
  return { tenants: new SqliteTenantStore(vms), vms, close: () => vms.close() };
});

idempotencyContract('sqlite', async (now) => {
  const s = open();
  return { store: new SqliteIdempotencyStore(s, now), close: () => s.close() };
});

auditContract('sqlite', async () => {
  const s = open();
  return { log: new SqliteAuditLog(s), close: () => s.close() };
});

resourceContract('sqlite', async () => {
  const s = open();
  return { store: new SqliteResourceStore(s.database), ensureTenant: async () => undefined, close: () => s.close() };
});
