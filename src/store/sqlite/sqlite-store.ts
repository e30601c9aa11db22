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
import type { MicroVM } from '../../core/microvm.js';
import type { ListOptions, Page, Store, StoreChange, VmEvent } from '../../core/ports/store.js';

const SCHEMA_VERSION = 1;

const MIGRATIONS: string[] = [
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
];

interface Row {
  id: string;
  doc: string;
  rv: number;
  seq: number;
}

/** Cursor = base64url of the last item's insertion sequence: stable under concurrent inserts. */
const encodeCursor = (seq: number): string => Buffer.from(`s:${seq}`).toString('base64url');
function decodeCursor(c: string): number {
  const s = Buffer.from(c, 'base64url').toString();
  const m = /^s:(\d+)$/.exec(s);
  if (!m) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'cursor: malformed cursor', { violations: [{ field: 'cursor', message: 'malformed cursor' }] });
  return Number(m[1]);
}

export class SqliteStore implements Store {
  private readonly db: Database.Database;
  private readonly emitter = new EventEmitter();

  constructor(path: string) {
    if (path !== ':memory:') mkdirSync(dirname(path), { recursive: true });
    this.db = new Database(path);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('synchronous = FULL');
    this.db.pragma('busy_timeout = 5000');
    this.db.pragma('foreign_keys = ON');
    const version = this.db.pragma('user_version', { simple: true }) as number;
    for (let v = version; v < SCHEMA_VERSION; v++) {
      this.db.exec(MIGRATIONS[v]!);
    }
    this.db.pragma(`user_version = ${SCHEMA_VERSION}`);
    this.emitter.setMaxListeners(0);
  }

  /** Exposed for other tables of the standalone mode (tenants, keys, audit) to share the file. */
  get database(): Database.Database {
    return this.db;
  }

  private nextSeq(name: string): number {
    const row = this.db
      .prepare('INSERT INTO counters (name, value) VALUES (?, 1) ON CONFLICT(name) DO UPDATE SET value = value + 1 RETURNING value')
      .get(name) as { value: number };
    return row.value;
  }

  async createVm(vm: MicroVM): Promise<MicroVM> {
    const tx = this.db.transaction((v: MicroVM) => {
      const existing = this.db.prepare('SELECT id FROM microvms WHERE tenant = ? AND name = ?').get(v.tenant, v.name) as { id: string } | undefined;
      if (existing) {
        throw new MvmError(ErrorCodes.ALREADY_EXISTS, `a microVM named ${JSON.stringify(v.name)} already exists (${existing.id})`, {
          violations: [{ field: 'name', message: 'already in use' }],
          details: { id: existing.id },
        });
      }
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
    const row = this.db.prepare('SELECT doc FROM microvms WHERE id = ?').get(id) as Row | undefined;
    return row ? (JSON.parse(row.doc) as MicroVM) : undefined;
  }

  async listVms(opts: ListOptions = {}): Promise<Page<MicroVM>> {
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
    const rows = this.db.prepare(sql).all(...args, limit + 1) as Row[];
    const items = rows.slice(0, limit).map((r) => JSON.parse(r.doc) as MicroVM);
    const page: Page<MicroVM> = { items };
    if (rows.length > limit) page.nextCursor = encodeCursor(rows[limit - 1]!.seq);
    return page;
  }

  async updateVm(id: string, mutate: (vm: MicroVM) => MicroVM, expectedVersion?: string): Promise<MicroVM> {
    const tx = this.db.transaction(() => {
      const row = this.db.prepare('SELECT doc, rv FROM microvms WHERE id = ?').get(id) as Row | undefined;
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
      this.db.prepare('UPDATE microvms SET doc = ?, rv = ?, phase = ?, name = ? WHERE id = ?').run(JSON.stringify(stored), rv, stored.status.phase, stored.name, id);
      return stored;
    });
    const out = tx();
    this.emit({ kind: 'vm', id, deleted: false });
    return structuredClone(out);
  }

  async deleteVm(id: string): Promise<void> {
    this.db.prepare('DELETE FROM microvms WHERE id = ?').run(id);
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
    this.emitter.emit('change', c);
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}
