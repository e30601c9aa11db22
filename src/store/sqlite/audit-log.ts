/** SQLite adapter of the audit port: an append-only table (UPDATE and DELETE abort in triggers). */
import type { AuditEntry, AuditLog, AuditQuery, NewAuditEntry } from '../../core/ports/audit.js';
import type { Page } from '../../core/ports/store.js';
import { decodeCursor, encodeCursor, type SqliteStore } from './sqlite-store.js';

export class SqliteAuditLog implements AuditLog {
  constructor(private readonly s: SqliteStore) {}

  async append(e: NewAuditEntry): Promise<AuditEntry> {
    const seq = Number(
      this.s
        .stmt('INSERT INTO audit (time, tenant, subject, key_id, result, operation, resource, resource_id, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)')
        .run(e.time, e.tenant ?? null, e.subject ?? null, e.keyId ?? null, e.result, e.operation, e.resource, e.resourceId ?? null, JSON.stringify(e)).lastInsertRowid,
    );
    return { seq, ...e };
  }

  async query(q: AuditQuery): Promise<Page<AuditEntry>> {
    const where: string[] = ['seq > ?'];
    const args: unknown[] = [q.cursor ? decodeCursor(q.cursor) : 0];
    const eq = (col: string, v: string | undefined): void => {
      if (v === undefined) return;
      where.push(`${col} = ?`);
      args.push(v);
    };
    eq('tenant', q.tenant);
    eq('subject', q.subject);
    eq('key_id', q.keyId);
    eq('result', q.result);
    eq('operation', q.operation);
    eq('resource', q.resource);
    eq('resource_id', q.resourceId);
    if (q.since) {
      where.push('time >= ?');
      args.push(q.since);
    }
    if (q.until) {
      where.push('time < ?');
      args.push(q.until);
    }
    const limit = Math.min(Math.max(q.limit ?? 100, 1), 1000);
    const rows = this.s.stmt(`SELECT seq, doc FROM audit WHERE ${where.join(' AND ')} ORDER BY seq LIMIT ?`).all(...args, limit + 1) as Array<{ seq: number; doc: string }>;
    const page: Page<AuditEntry> = { items: rows.slice(0, limit).map((r) => ({ seq: r.seq, ...(JSON.parse(r.doc) as NewAuditEntry) })) };
    if (rows.length > limit) page.nextCursor = encodeCursor(rows[limit - 1]!.seq);
    return page;
  }
}
