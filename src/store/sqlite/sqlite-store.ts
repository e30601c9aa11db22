/**
 * SQLite adapter of the store port (better-sqlite3 v12, WAL, synchronous=FULL):
 * a write is acknowledged only after it is in the WAL on disk, so it survives
 * `kill -9` of the service (and a power cut).
 */
import Database from 'better-sqlite3';
import { EventEmitter } from 'node:events';
import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import { ErrorCodes, MvmError, notFound } from '../../core/errors.js';
import { memoryMiB, type MicroVM } from '../../core/microvm.js';
import type { ListOptions, Page, RawVm, Store, StoreChange, VmEvent, WriteOptions } from '../../core/ports/store.js';
import { checkQuota, emptyUsage, vmResources, type Usage } from '../../core/quota.js';

/** A migration is SQL, or a function for backfills that need the domain code. Never edit one that shipped. */
type Migration = string | ((db: Database.Database) => void);

const MIGRATIONS: Migration[] = [
  `CREATE TABLE IF NOT EXISTS microvms (
     id TEXT PRIMARY KEY,
     tenant TEXT NOT NULL,
     name TEXT NOT NULL,
     phase TEXT NOT NULL,
     rv INTEGER NOT NULL,
     seq INTEGER NOT NULL,
     doc TEXT NOT NULL,
     UNIQUE (tenant, name)
   );
   CREATE INDEX IF NOT EXISTS microvms_tenant_seq ON microvms (tenant, seq);
   CREATE TABLE IF NOT EXISTS events (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     vm_id TEXT NOT NULL,
     tenant TEXT NOT NULL,
     time TEXT NOT NULL,
     type TEXT NOT NULL,
     reason TEXT NOT NULL,
     message TEXT NOT NULL
   );
   CREATE INDEX IF NOT EXISTS events_vm ON events (vm_id, seq);
   CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);`,
  // 2: the gateway — tenants, quota accounting, API keys, audit log, idempotency records.
  `CREATE TABLE IF NOT EXISTS tenants (
     id TEXT PRIMARY KEY,
     rv INTEGER NOT NULL,
     seq INTEGER NOT NULL,
     doc TEXT NOT NULL
   );
   CREATE TABLE IF NOT EXISTS vm_usage (
     id TEXT PRIMARY KEY,
     tenant TEXT NOT NULL,
     vcpu INTEGER NOT NULL,
     memory_mib INTEGER NOT NULL,
     disk_mib INTEGER NOT NULL
   );
   CREATE INDEX IF NOT EXISTS vm_usage_tenant ON vm_usage (tenant);
   CREATE TABLE IF NOT EXISTS quota_reservations (
     kind TEXT NOT NULL,
     id TEXT NOT NULL,
     tenant TEXT NOT NULL,
     disk_mib INTEGER NOT NULL,
     PRIMARY KEY (kind, id)
   );
   CREATE INDEX IF NOT EXISTS quota_reservations_tenant ON quota_reservations (tenant);
   CREATE TABLE IF NOT EXISTS api_keys (
     id TEXT PRIMARY KEY,
     tenant TEXT NOT NULL,
     name TEXT NOT NULL,
     role TEXT NOT NULL,
     secret_hash TEXT NOT NULL,
     created_at TEXT NOT NULL,
     created_by TEXT NOT NULL,
     expires_at TEXT,
     revoked_at TEXT,
     last_used_at TEXT,
     seq INTEGER NOT NULL
   );
   CREATE UNIQUE INDEX IF NOT EXISTS api_keys_active_name ON api_keys (tenant, name) WHERE revoked_at IS NULL;
   CREATE INDEX IF NOT EXISTS api_keys_tenant_seq ON api_keys (tenant, seq);
   CREATE TABLE IF NOT EXISTS audit (
     seq INTEGER PRIMARY KEY AUTOINCREMENT,
     time TEXT NOT NULL,
     tenant TEXT,
     subject TEXT,
     key_id TEXT,
     result TEXT NOT NULL,
     operation TEXT NOT NULL,
     resource TEXT NOT NULL,
     resource_id TEXT,
     doc TEXT NOT NULL
   );
   CREATE INDEX IF NOT EXISTS audit_tenant_seq ON audit (tenant, seq);
   CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
   CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END;
   CREATE TABLE IF NOT EXISTS idempotency (
     scope TEXT PRIMARY KEY,
     fingerprint TEXT NOT NULL,
     state TEXT NOT NULL,
     response TEXT,
     created_ms INTEGER NOT NULL,
     expires_ms INTEGER NOT NULL
   );
   CREATE INDEX IF NOT EXISTS idempotency_expiry ON idempotency (expires_ms);`,
  // 2b: account the microVMs that existed before quotas.
  (db) => {
    const ins = db.prepare('INSERT OR IGNORE INTO vm_usage (id, tenant, vcpu, memory_mib, disk_mib) VALUES (?, ?, ?, ?, ?)');
    for (const row of db.prepare('SELECT doc FROM microvms').all() as Array<{ doc: string }>) {
      const vm = JSON.parse(row.doc) as MicroVM;
      const r = vmResources(vm.spec);
      ins.run(vm.id, vm.tenant, r.vcpu, r.memoryMiB, r.diskMiB);
    }
  },
  // 4: the generic resources table (security groups, snapshots, volumes, templates), created
  // outside the versioned steps before; IF NOT EXISTS keeps the databases that already have it.
  `CREATE TABLE IF NOT EXISTS resources (
     kind TEXT NOT NULL, id TEXT NOT NULL, tenant TEXT NOT NULL, name TEXT NOT NULL,
     rv INTEGER NOT NULL, doc TEXT NOT NULL, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,
     PRIMARY KEY (kind, id), UNIQUE (kind, tenant, name))`,
];
/** The schema version this build writes (`PRAGMA user_version`); test/fixtures/db holds a database of each earlier one. */
export const SCHEMA_VERSION = MIGRATIONS.length;

/**
 * Bring `db` to SCHEMA_VERSION: each missing step in its own transaction with the version bump,
 * so a crash leaves the database at a version it really has; every step is idempotent on top.
 * A database newer than this build is refused untouched. Returns the version it had.
 */
export function migrate(db: Database.Database, path: string): number {
  const version = db.pragma('user_version', { simple: true }) as number;
  if (version > SCHEMA_VERSION) {
    throw new MvmError(
      ErrorCodes.UNAVAILABLE,
      `state database ${path} has schema version ${version}, but this build of mvm knows versions up to ${SCHEMA_VERSION}: it was written by a newer mvm; run that version again (or restore a backup taken before the upgrade)`,
      { details: { reason: 'SchemaTooNew', path, schemaVersion: version, supportedVersion: SCHEMA_VERSION } },
    );
  }
  for (let v = version; v < SCHEMA_VERSION; v++) {
    const m = MIGRATIONS[v]!;
    db.transaction(() => {
      if (typeof m === 'string') db.exec(m);
      else m(db);
      db.pragma(`user_version = ${v + 1}`);
    })();
  }
  return version;
}

interface Row {
  id: string;
  doc: string;
  rv: number;
  seq: number;
}

/** Cursor = base64url of the last item's insertion sequence: stable under concurrent inserts. */
export const encodeCursor = (seq: number): string => Buffer.from(`s:${seq}`).toString('base64url');
export function decodeCursor(c: string): number {
  const s = Buffer.from(c, 'base64url').toString();
  const m = /^s:(\d+)$/.exec(s);
  if (!m) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'cursor: malformed cursor', { violations: [{ field: 'cursor', message: 'malformed cursor' }] });
  return Number(m[1]);
}

export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly emitter = new EventEmitter();
  /** The schema version the file had when opened (SCHEMA_VERSION: nothing to migrate; 0: new). */
  readonly migratedFrom: number;

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.db.pragma('foreign_keys = ON');
    try {
      this.migratedFrom = migrate(this.db, path);
    } catch (e) {
      this.db.close();
      throw e;
    }
    this.emitter.setMaxListeners(0);
  }

  /** Exposed for other tables of the standalone mode (tenants, keys, audit) to share the file. */
  get database(): Database.Database {
    return this.db;
  }

  private readonly stmts = new Map<string, Database.Statement>();
  /** Prepared statements are cached: preparing costs more than running a point query. */
  stmt(sql: string): Database.Statement {
    let st = this.stmts.get(sql);
    if (!st) {
      st = this.db.prepare(sql);
      this.stmts.set(sql, st);
    }
    return st;
  }

  /** Usage of a tenant, read inside the caller's transaction. */
  usageOf(tenant: string): Usage {
    const u = emptyUsage();
    const v = this.stmt('SELECT COUNT(*) AS n, COALESCE(SUM(vcpu), 0) AS vcpu, COALESCE(SUM(memory_mib), 0) AS mem, COALESCE(SUM(disk_mib), 0) AS disk FROM vm_usage WHERE tenant = ?').get(tenant) as {
      n: number;
      vcpu: number;
      mem: number;
      disk: number;
    };
    const r = this.stmt(`SELECT COALESCE(SUM(kind = 'snapshot'), 0) AS snaps, COALESCE(SUM(kind = 'volume'), 0) AS vols, COALESCE(SUM(disk_mib), 0) AS disk FROM quota_reservations WHERE tenant = ?`).get(tenant) as { snaps: number; vols: number; disk: number };
    u.vms = v.n;
    u.vcpu = v.vcpu;
    u.memoryMiB = v.mem;
    u.diskMiB = v.disk + r.disk;
    u.snapshots = r.snaps;
    u.volumes = r.vols;
    u.hostPorts = (this.stmt(`SELECT COALESCE(SUM(json_array_length(doc, '$.spec.ports')), 0) AS n FROM microvms WHERE tenant = ?`).get(tenant) as { n: number }).n;
    return u;
  }

  nextSeq(name: string): number {
    const row = this.db
      .prepare('INSERT INTO counters (name, value) VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value')
      .get(name) as { value: number };
    return row.value;
  }

  async createVm(vm: MicroVM, opts: WriteOptions = {}): Promise<MicroVM> {
    const tx = this.db.transaction((v: MicroVM) => {
      const existing = this.db.prepare('SELECT id FROM microvms WHERE tenant = ? AND name = ?').get(v.tenant, v.name) as { id: string } | undefined;
      if (existing) {
        throw new MvmError(ErrorCodes.ALREADY_EXISTS, `a microVM named ${JSON.stringify(v.name)} already exists (${existing.id})`, {
          violations: [{ field: 'name', message: 'already in use' }],
          details: { id: existing.id },
        });
      }
      const res = vmResources(v.spec);
      if (opts.admission?.diskMiB !== undefined) res.diskMiB = opts.admission.diskMiB;
      if (opts.admission) checkQuota(v.tenant, opts.admission.limits, this.usageOf(v.tenant), { vms: 1, ...res });
      this.stmt('INSERT OR REPLACE INTO vm_usage (id, tenant, vcpu, memory_mib, disk_mib) VALUES (?, ?, ?, ?, ?)').run(v.id, v.tenant, res.vcpu, res.memoryMiB, res.diskMiB);
      const seq = this.nextSeq('microvms');
      const stored: MicroVM = { ...v, resourceVersion: '1' };
      this.db
        .prepare('INSERT INTO microvms (id, tenant, name, phase, rv, seq, doc) VALUES (?, ?, ?, ?, 1, ?, ?)')
        .run(v.id, v.tenant, v.name, v.status.phase, seq, JSON.stringify(stored));
      return stored;
    });
    const out = tx(vm);
    this.emit({ kind: 'vm', id: vm.id, deleted: false });
    return structuredClone(out);
  }

  async getVm(id: string): Promise<MicroVM | undefined> {
    const row = this.stmt('SELECT doc FROM microvms WHERE id = ?').get(id) as Row | undefined;
    return row ? (JSON.parse(row.doc) as MicroVM) : undefined;
  }

  /** Point reads for the API, served from memory until the VM's next write (every write passes `emit`). */
  private readonly rawCache = new Map<string, RawVm>();

  async getVmRaw(id: string): Promise<RawVm | undefined> {
    const hit = this.rawCache.get(id);
    if (hit) return hit;
    const row = this.stmt('SELECT doc, tenant, rv FROM microvms WHERE id = ?').get(id) as { doc: string; tenant: string; rv: number } | undefined;
    if (!row) return undefined;
    const raw = { json: row.doc, tenant: row.tenant, resourceVersion: String(row.rv) };
    if (this.rawCache.size >= 10_000) this.rawCache.clear();
    this.rawCache.set(id, raw);
    return raw;
  }

  async listVms(opts: ListOptions = {}): Promise<Page<MicroVM>> {
    const raw = this.listRows(opts);
    const page: Page<MicroVM> = { items: raw.rows.map((r) => JSON.parse(r.doc) as MicroVM) };
    if (raw.nextCursor) page.nextCursor = raw.nextCursor;
    return page;
  }

  /**
   * Raw list pages are served from memory until the next microVM write (like the Kubernetes API
   * server's watch cache): every write of this table goes through this object, so a bumped
   * generation invalidates them all.
   */
  private listGen = 0;
  private readonly listCache = new Map<string, { gen: number; page: Page<string> }>();

  async listVmsRaw(opts: ListOptions = {}): Promise<Page<string>> {
    const key = JSON.stringify([opts.tenant, opts.name, opts.phase, opts.labels, opts.limit, opts.cursor]);
    const hit = this.listCache.get(key);
    if (hit && hit.gen === this.listGen) return hit.page;
    const raw = this.listRows(opts);
    const page: Page<string> = { items: raw.rows.map((r) => r.doc) };
    if (raw.nextCursor) page.nextCursor = raw.nextCursor;
    if (this.listCache.size >= 256) this.listCache.clear();
    if (page.items.reduce((n, d) => n + d.length, 0) < 1 << 20) this.listCache.set(key, { gen: this.listGen, page });
    return page;
  }

  private listRows(opts: ListOptions): { rows: Row[]; nextCursor?: string } {
    const where: string[] = [];
    const args: unknown[] = [];
    if (opts.tenant !== undefined) {
      where.push('tenant = ?');
      args.push(opts.tenant);
    }
    if (opts.name !== undefined) {
      where.push('name = ?');
      args.push(opts.name);
    }
    if (opts.phase !== undefined) {
      where.push('phase = ?');
      args.push(opts.phase);
    }
    if (opts.cursor) {
      where.push('seq > ?');
      args.push(decodeCursor(opts.cursor));
    }
    const labelEntries = Object.entries(opts.labels ?? {});
    for (const [k, v] of labelEntries) {
      where.push(`json_extract(doc, '$.spec.labels.' || json_quote(?)) = ?`);
      args.push(k, v);
    }
    const limit = Math.min(Math.max(opts.limit ?? 100, 1), 1000);
    const sql = `SELECT doc, seq FROM microvms ${where.length ? 'WHERE ' + where.join(' AND ') : ''} ORDER BY seq LIMIT ?`;
    const rows = this.stmt(sql).all(...args, limit + 1) as Row[];
    return { rows: rows.slice(0, limit), ...(rows.length > limit ? { nextCursor: encodeCursor(rows[limit - 1]!.seq) } : {}) };
  }

  async updateVm(id: string, mutate: (vm: MicroVM) => MicroVM, expectedVersion?: string, opts: WriteOptions = {}): Promise<MicroVM> {
    const tx = this.db.transaction(() => {
      const row = this.stmt('SELECT doc, rv FROM microvms WHERE id = ?').get(id) as Row | undefined;
      if (!row) throw notFound('microVM', id);
      if (expectedVersion !== undefined && String(row.rv) !== expectedVersion) {
        throw new MvmError(ErrorCodes.CONFLICT, `microVM ${id} was modified (resourceVersion ${row.rv}, expected ${expectedVersion})`, {
          details: { resourceVersion: String(row.rv) },
        });
      }
      const current = JSON.parse(row.doc) as MicroVM;
      const next = mutate(structuredClone(current));
      const rv = row.rv + 1;
      const stored: MicroVM = { ...next, id, resourceVersion: String(rv), updatedAt: new Date().toISOString() };
      if (stored.spec.vcpu !== current.spec.vcpu || stored.spec.memory !== current.spec.memory) {
        const prev = this.stmt('SELECT vcpu, memory_mib FROM vm_usage WHERE id = ?').get(id) as { vcpu: number; memory_mib: number } | undefined;
        const vcpu = stored.spec.vcpu;
        const mem = memoryMiB(stored.spec);
        if (opts.admission) {
          checkQuota(stored.tenant, opts.admission.limits, this.usageOf(stored.tenant), { vcpu: vcpu - (prev?.vcpu ?? 0), memoryMiB: mem - (prev?.memory_mib ?? 0) });
        }
        if (prev) this.stmt('UPDATE vm_usage SET vcpu = ?, memory_mib = ? WHERE id = ?').run(vcpu, mem, id);
        else this.stmt('INSERT INTO vm_usage (id, tenant, vcpu, memory_mib, disk_mib) VALUES (?, ?, ?, ?, ?)').run(id, stored.tenant, vcpu, mem, vmResources(stored.spec).diskMiB);
      }
      const morePorts = (stored.spec.ports?.length ?? 0) - (current.spec.ports?.length ?? 0);
      if (morePorts > 0 && opts.admission) checkQuota(stored.tenant, opts.admission.limits, this.usageOf(stored.tenant), { hostPorts: morePorts });
      this.stmt('UPDATE microvms SET doc = ?, rv = ?, phase = ?, name = ? WHERE id = ?').run(JSON.stringify(stored), rv, stored.status.phase, stored.name, id);
      return stored;
    });
    const out = tx();
    this.emit({ kind: 'vm', id, deleted: false });
    return structuredClone(out);
  }

  async deleteVm(id: string): Promise<void> {
    this.db.transaction(() => {
      this.stmt('DELETE FROM microvms WHERE id = ?').run(id);
      this.stmt('DELETE FROM vm_usage WHERE id = ?').run(id);
    })();
    this.emit({ kind: 'vm', id, deleted: true });
  }

  async appendEvent(e: VmEvent): Promise<void> {
    this.db
      .prepare('INSERT INTO events (vm_id, tenant, time, type, reason, message) VALUES (?, ?, ?, ?, ?, ?)')
      .run(e.vmId, e.tenant, e.time, e.type, e.reason, e.message);
  }

  async listEvents(opts: { vmId?: string; tenant?: string; afterSeq?: number; limit?: number }): Promise<VmEvent[]> {
    const where: string[] = ['seq > ?'];
    const args: unknown[] = [opts.afterSeq ?? 0];
    if (opts.vmId) {
      where.push('vm_id = ?');
      args.push(opts.vmId);
    }
    if (opts.tenant) {
      where.push('tenant = ?');
      args.push(opts.tenant);
    }
    const rows = this.db
      .prepare(`SELECT seq, vm_id, tenant, time, type, reason, message FROM events WHERE ${where.join(' AND ')} ORDER BY seq LIMIT ?`)
      .all(...args, Math.min(opts.limit ?? 500, 5000)) as Array<{ seq: number; vm_id: string; tenant: string; time: string; type: 'Normal' | 'Warning'; reason: string; message: string }>;
    return rows.map((r) => ({ seq: r.seq, vmId: r.vm_id, tenant: r.tenant, time: r.time, type: r.type, reason: r.reason, message: r.message }));
  }

  watch(cb: (c: StoreChange) => void): () => void {
    this.emitter.on('change', cb);
    return () => this.emitter.off('change', cb);
  }

  private emit(c: StoreChange): void {
    this.listGen++;
    this.rawCache.delete(c.id);
    this.emitter.emit('change', c);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}
