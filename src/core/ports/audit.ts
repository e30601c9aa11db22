/**
 * The audit log port: append-only, queryable. Standalone: the SQLite table `audit` (triggers
 * refuse UPDATE and DELETE). Cluster mode: the same table shape in the API's database, or a
 * log shipper reading the structured `audit` log lines every entry is also written as.
 */
import type { AuditEntryT } from '../tenancy-schema.js';
import type { Page } from './store.js';

export type AuditEntry = AuditEntryT;
export type NewAuditEntry = Omit<AuditEntry, 'seq'>;

export interface AuditQuery {
  tenant?: string;
  subject?: string;
  keyId?: string;
  result?: AuditEntry['result'];
  operation?: string;
  resource?: string;
  resourceId?: string;
  since?: string;
  until?: string;
  limit?: number;
  cursor?: string;
}

export interface AuditLog {
  append(e: NewAuditEntry): Promise<AuditEntry>;
  query(q: AuditQuery): Promise<Page<AuditEntry>>;
}
