/** Recording and querying the audit log. Entries never hold secrets: no tokens, no key secrets, no bodies. */
import { listTenant, type Principal } from './authz.js';
import type { AuditEntry, AuditLog, AuditQuery, NewAuditEntry } from './ports/audit.js';
import type { Page } from './ports/store.js';

export class AuditService {
  constructor(
    private readonly log: AuditLog,
    /** Also written as a structured log line (the adapter decides where). */
    private readonly sink: (e: AuditEntry) => void = () => undefined,
    private readonly onError: (e: unknown, entry: NewAuditEntry) => void = () => undefined,
  ) {}

  async record(e: NewAuditEntry): Promise<void> {
    try {
      const stored = await this.log.append(e);
      this.sink(stored);
    } catch (err) {
      this.onError(err, e);
    }
  }

  /** Admins query everything; tenant-admins only their tenant's entries. */
  async query(p: Principal, q: AuditQuery): Promise<Page<AuditEntry>> {
    const { tenant: _t, ...rest } = q;
    const tenant = listTenant(p, q.tenant);
    return this.log.query({ ...rest, ...(tenant !== undefined ? { tenant } : {}) });
  }
}
