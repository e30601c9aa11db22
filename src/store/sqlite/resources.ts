/** SQLite adapter of the generic resource store, sharing the service's database file. */
import type Database from 'better-sqlite3';
import { ErrorCodes, MvmError, notFound } from '../../core/errors.js';
import type { ResourceStore, StoredResource } from '../../core/ports/resources.js';

interface Row {
  kind: string;
  id: string;
  tenant: string;
  name: string;
  rv: number;
  doc: string;
  created_at: string;
  updated_at: string;
}

const toResource = <T>(r: Row): StoredResource<T> => ({
  kind: r.kind,
  id: r.id,
  tenant: r.tenant,
  name: r.name,
  spec: JSON.parse(r.doc) as T,
  resourceVersion: String(r.rv),
  createdAt: r.created_at,
  updatedAt: r.updated_at,
});

export class SqliteResourceStore implements ResourceStore {
  private readonly subs = new Set<(kind: string, id: string) => void>();

  /** `db` is the SqliteStore's database: its migrations create the table (schema version 4). */
  constructor(private readonly db: Database.Database) {}

  /** Tell every subscriber; a subscriber's failure is its own (the write is committed already). */
  private tell(kind: string, id: string): void {
    for (const cb of [...this.subs]) {
      try {
        cb(kind, id);
      } catch {
        // not the writer's failure
      }
    }
  }

  async create<T>(r: Omit<StoredResource<T>, 'resourceVersion' | 'createdAt' | 'updatedAt'>): Promise<StoredResource<T>> {
    const now = new Date().toISOString();
    try {
      this.db
        .prepare('INSERT INTO resources (kind, id, tenant, name, rv, doc, created_at, updated_at) VALUES (?, ?, ?, ?, 1, ?, ?, ?)')
        .run(r.kind, r.id, r.tenant, r.name, JSON.stringify(r.spec), now, now);
    } catch (e) {
      if ((e as { code?: string }).code?.startsWith('SQLITE_CONSTRAINT')) {
        throw new MvmError(ErrorCodes.ALREADY_EXISTS, `a ${r.kind} named ${JSON.stringify(r.name)} already exists`, { violations: [{ field: 'name', message: 'already in use' }] });
      }
      throw e;
    }
    this.tell(r.kind, r.id);
    return { ...r, resourceVersion: '1', createdAt: now, updatedAt: now };
  }

  async get<T>(kind: string, id: string): Promise<StoredResource<T> | undefined> {
    const row = this.db.prepare('SELECT * FROM resources WHERE kind = ? AND id = ?').get(kind, id) as Row | undefined;
    return row ? toResource<T>(row) : undefined;
  }

  async getByName<T>(kind: string, tenant: string, name: string): Promise<StoredResource<T> | undefined> {
    const row = this.db.prepare('SELECT * FROM resources WHERE kind = ? AND tenant = ? AND name = ?').get(kind, tenant, name) as Row | undefined;
    return row ? toResource<T>(row) : undefined;
  }

  async list<T>(kind: string, opts: { tenant?: string } = {}): Promise<Array<StoredResource<T>>> {
    const rows = (
      opts.tenant === undefined
        ? this.db.prepare('SELECT * FROM resources WHERE kind = ? ORDER BY created_at, id').all(kind)
        : this.db.prepare('SELECT * FROM resources WHERE kind = ? AND tenant = ? ORDER BY created_at, id').all(kind, opts.tenant)
    ) as Row[];
    return rows.map((r) => toResource<T>(r));
  }

  async update<T>(kind: string, id: string, mutate: (spec: T) => T, expectedVersion?: string): Promise<StoredResource<T>> {
    const tx = this.db.transaction(() => {
      const row = this.db.prepare('SELECT * FROM resources WHERE kind = ? AND id = ?').get(kind, id) as Row | undefined;
      if (!row) throw notFound(kind, id);
      if (expectedVersion !== undefined && String(row.rv) !== expectedVersion) {
        throw new MvmError(ErrorCodes.CONFLICT, `${kind} ${id} was modified (resourceVersion ${row.rv}, expected ${expectedVersion})`);
      }
      const spec = mutate(JSON.parse(row.doc) as T);
      const now = new Date().toISOString();
      this.db.prepare('UPDATE resources SET doc = ?, rv = rv + 1, updated_at = ? WHERE kind = ? AND id = ?').run(JSON.stringify(spec), now, kind, id);
      return toResource<T>({ ...row, doc: JSON.stringify(spec), rv: row.rv + 1, updated_at: now });
    });
    const out = tx();
    this.tell(kind, id);
    return out;
  }

  async delete(kind: string, id: string): Promise<boolean> {
    const r = this.db.prepare('DELETE FROM resources WHERE kind = ? AND id = ?').run(kind, id);
    if (r.changes) this.tell(kind, id);
    return r.changes > 0;
  }

  watch(cb: (kind: string, id: string) => void): () => void {
    // A wrapper per subscription: the same callback may subscribe twice and unsubscribe once.
    const sub = (kind: string, id: string): void => cb(kind, id);
    this.subs.add(sub);
    return () => this.subs.delete(sub);
  }
}
