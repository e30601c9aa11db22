/**
 * SQLite adapters of the tenant and API-key ports. They share the state file (and its
 * connection) with the microVM store, so quota admission and VM inserts are one transaction.
 */
import { ErrorCodes, MvmError, notFound } from '../../core/errors.js';
import type { ApiKeyRecord, ApiKeyStore } from '../../core/ports/apikeys.js';
import type { Page } from '../../core/ports/store.js';
import type { Reservation, Tenant, TenantStore } from '../../core/ports/tenants.js';
import { checkQuota, type Quotas, type Usage } from '../../core/quota.js';
import { decodeCursor, encodeCursor, type SqliteStore } from './sqlite-store.js';

interface TenantRow {
  doc: string;
  rv: number;
  seq: number;
}

interface KeyRow {
  id: string;
  tenant: string;
  name: string;
  role: string;
  secret_hash: string;
  created_at: string;
  created_by: string;
  expires_at: string | null;
  revoked_at: string | null;
  last_used_at: string | null;
  seq: number;
}

const keyFromRow = (r: KeyRow): ApiKeyRecord => ({
  id: r.id,
  tenant: r.tenant,
  name: r.name,
  role: r.role as ApiKeyRecord['role'],
  secretHash: r.secret_hash,
  createdAt: r.created_at,
  createdBy: r.created_by,
  ...(r.expires_at ? { expiresAt: r.expires_at } : {}),
  ...(r.revoked_at ? { revokedAt: r.revoked_at } : {}),
  ...(r.last_used_at ? { lastUsedAt: r.last_used_at } : {}),
});

export class SqliteTenantStore implements TenantStore, ApiKeyStore {
  constructor(private readonly s: SqliteStore) {}

  private get db() {
    return this.s.database;
  }

  // ---- tenants ---------------------------------------------------------

  async createTenant(t: Tenant): Promise<Tenant> {
    return this.db.transaction(() => {
      if (this.s.stmt('SELECT 1 FROM tenants WHERE id = ?').get(t.id)) {
        throw new MvmError(ErrorCodes.ALREADY_EXISTS, `tenant ${JSON.stringify(t.id)} already exists`, { violations: [{ field: 'id', message: 'already in use' }] });
      }
      const stored: Tenant = { ...t, resourceVersion: '1' };
      this.s.stmt('INSERT INTO tenants (id, rv, seq, doc) VALUES (?, 1, ?, ?)').run(t.id, this.s.nextSeq('tenants'), JSON.stringify(stored));
      return stored;
    })();
  }

  async getTenant(id: string): Promise<Tenant | undefined> {
    const row = this.s.stmt('SELECT doc FROM tenants WHERE id = ?').get(id) as TenantRow | undefined;
    return row ? (JSON.parse(row.doc) as Tenant) : undefined;
  }

  async listTenants(opts: { limit?: number; cursor?: string }): Promise<Page<Tenant>> {
    const limit = Math.min(Math.max(opts.limit ?? 100, 1), 1000);
    const after = opts.cursor ? decodeCursor(opts.cursor) : 0;
    const rows = this.s.stmt('SELECT doc, seq FROM tenants WHERE seq > ? ORDER BY seq LIMIT ?').all(after, limit + 1) as TenantRow[];
    const page: Page<Tenant> = { items: rows.slice(0, limit).map((r) => JSON.parse(r.doc) as Tenant) };
    if (rows.length > limit) page.nextCursor = encodeCursor(rows[limit - 1]!.seq);
    return page;
  }

  async updateTenant(id: string, mutate: (t: Tenant) => Tenant, expectedVersion?: string): Promise<Tenant> {
    return this.db.transaction(() => {
      const row = this.s.stmt('SELECT doc, rv FROM tenants WHERE id = ?').get(id) as TenantRow | undefined;
      if (!row) throw notFound('tenant', id);
      if (expectedVersion !== undefined && String(row.rv) !== expectedVersion) {
        throw new MvmError(ErrorCodes.CONFLICT, `tenant ${id} was modified (resourceVersion ${row.rv}, expected ${expectedVersion})`, { details: { resourceVersion: String(row.rv) } });
      }
      const next = mutate(structuredClone(JSON.parse(row.doc) as Tenant));
      const rv = row.rv + 1;
      const stored: Tenant = { ...next, id, resourceVersion: String(rv), updatedAt: new Date().toISOString() };
      this.s.stmt('UPDATE tenants SET doc = ?, rv = ? WHERE id = ?').run(JSON.stringify(stored), rv, id);
      return stored;
    })();
  }

  async deleteTenant(id: string, expectedVersion?: string): Promise<void> {
    this.db.transaction(() => {
      const row = this.s.stmt('SELECT rv FROM tenants WHERE id = ?').get(id) as { rv: number } | undefined;
      if (!row) throw notFound('tenant', id);
      if (expectedVersion !== undefined && String(row.rv) !== expectedVersion) {
        throw new MvmError(ErrorCodes.CONFLICT, `tenant ${id} was modified (resourceVersion ${row.rv}, expected ${expectedVersion})`, { details: { resourceVersion: String(row.rv) } });
      }
      this.s.stmt('DELETE FROM tenants WHERE id = ?').run(id);
    })();
  }

  async usage(tenant: string): Promise<Usage> {
    return this.s.usageOf(tenant);
  }

  async reserve(tenant: string, r: Reservation, limits: Quotas): Promise<void> {
    this.db.transaction(() => {
      const existing = this.s.stmt('SELECT tenant FROM quota_reservations WHERE kind = ? AND id = ?').get(r.kind, r.id) as { tenant: string } | undefined;
      if (existing) {
        if (existing.tenant !== tenant) throw new MvmError(ErrorCodes.CONFLICT, `${r.kind} ${r.id} is reserved by another tenant`);
        return;
      }
      checkQuota(tenant, limits, this.s.usageOf(tenant), { ...(r.kind === 'snapshot' ? { snapshots: 1 } : { volumes: 1 }), diskMiB: r.diskMiB });
      this.s.stmt('INSERT INTO quota_reservations (kind, id, tenant, disk_mib) VALUES (?, ?, ?, ?)').run(r.kind, r.id, tenant, r.diskMiB);
    })();
  }

  async release(tenant: string, kind: Reservation['kind'], id: string): Promise<void> {
    this.s.stmt('DELETE FROM quota_reservations WHERE kind = ? AND id = ? AND tenant = ?').run(kind, id, tenant);
  }

  async reservations(tenant: string): Promise<Reservation[]> {
    const rows = this.s.stmt('SELECT kind, id, disk_mib FROM quota_reservations WHERE tenant = ? ORDER BY kind, id').all(tenant) as Array<{ kind: Reservation['kind']; id: string; disk_mib: number }>;
    return rows.map((r) => ({ kind: r.kind, id: r.id, diskMiB: r.disk_mib }));
  }

  // ---- API keys --------------------------------------------------------

  async createKey(k: ApiKeyRecord): Promise<ApiKeyRecord> {
    return this.db.transaction(() => {
      if (this.s.stmt('SELECT 1 FROM api_keys WHERE id = ?').get(k.id)) {
        throw new MvmError(ErrorCodes.ALREADY_EXISTS, `API key ${JSON.stringify(k.id)} already exists`, { violations: [{ field: 'id', message: 'already in use' }] });
      }
      if (this.s.stmt('SELECT 1 FROM api_keys WHERE tenant = ? AND name = ? AND revoked_at IS NULL').get(k.tenant, k.name)) {
        throw new MvmError(ErrorCodes.ALREADY_EXISTS, `tenant ${k.tenant} already has an active API key named ${JSON.stringify(k.name)}`, {
          violations: [{ field: 'name', message: 'already in use' }],
        });
      }
      this.s
        .stmt(
          'INSERT INTO api_keys (id, tenant, name, role, secret_hash, created_at, created_by, expires_at, revoked_at, last_used_at, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, ?)',
        )
        .run(k.id, k.tenant, k.name, k.role, k.secretHash, k.createdAt, k.createdBy, k.expiresAt ?? null, this.s.nextSeq('api_keys'));
      return { ...k };
    })();
  }

  async getKey(id: string): Promise<ApiKeyRecord | undefined> {
    const r = this.s.stmt('SELECT * FROM api_keys WHERE id = ?').get(id) as KeyRow | undefined;
    return r ? keyFromRow(r) : undefined;
  }

  async listKeys(opts: { tenant?: string; limit?: number; cursor?: string }): Promise<Page<ApiKeyRecord>> {
    const limit = Math.min(Math.max(opts.limit ?? 100, 1), 1000);
    const after = opts.cursor ? decodeCursor(opts.cursor) : 0;
    const rows = (
      opts.tenant !== undefined
        ? this.s.stmt('SELECT * FROM api_keys WHERE tenant = ? AND seq > ? ORDER BY seq LIMIT ?').all(opts.tenant, after, limit + 1)
        : this.s.stmt('SELECT * FROM api_keys WHERE seq > ? ORDER BY seq LIMIT ?').all(after, limit + 1)
    ) as KeyRow[];
    const page: Page<ApiKeyRecord> = { items: rows.slice(0, limit).map(keyFromRow) };
    if (rows.length > limit) page.nextCursor = encodeCursor(rows[limit - 1]!.seq);
    return page;
  }

  async revokeKey(id: string, at: string): Promise<ApiKeyRecord> {
    return this.db.transaction(() => {
      this.s.stmt('UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?').run(at, id);
      const r = this.s.stmt('SELECT * FROM api_keys WHERE id = ?').get(id) as KeyRow | undefined;
      if (!r) throw notFound('API key', id);
      return keyFromRow(r);
    })();
  }

  async touchKey(id: string, at: string): Promise<void> {
    this.s.stmt('UPDATE api_keys SET last_used_at = ? WHERE id = ?').run(at, id);
  }

  async deleteKeysOfTenant(tenant: string): Promise<number> {
    return this.s.stmt('DELETE FROM api_keys WHERE tenant = ?').run(tenant).changes;
  }
}
