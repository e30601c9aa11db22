/** SQLite adapter of the idempotency port. Claims are rows; expired rows are purged on the way. */
import type { BeginResult, IdempotencyStore, StoredResponse } from '../../core/ports/idempotency.js';
import type { SqliteStore } from './sqlite-store.js';

export class SqliteIdempotencyStore implements IdempotencyStore {
  private lastPurge = 0;
  constructor(
    private readonly s: SqliteStore,
    private readonly now: () => number = Date.now,
  ) {}

  async begin(scope: string, fingerprint: string, opts: { ttlMs: number; lockMs: number }): Promise<BeginResult> {
    const now = this.now();
    if (now - this.lastPurge > 60_000) {
      this.lastPurge = now;
      this.s.stmt('DELETE FROM idempotency WHERE expires_ms < ?').run(now);
    }
    return this.s.database.transaction((): BeginResult => {
      const row = this.s.stmt('SELECT fingerprint, state, response, created_ms, expires_ms FROM idempotency WHERE scope = ?').get(scope) as
        | { fingerprint: string; state: string; response: string | null; created_ms: number; expires_ms: number }
        | undefined;
      if (row && row.expires_ms >= now) {
        if (row.fingerprint !== fingerprint) return { state: 'mismatch' };
        if (row.state === 'done' && row.response) return { state: 'done', response: JSON.parse(row.response) as StoredResponse };
        if (now - row.created_ms < opts.lockMs) return { state: 'in-progress' };
      }
      this.s
        .stmt('INSERT OR REPLACE INTO idempotency (scope, fingerprint, state, response, created_ms, expires_ms) VALUES (?, ?, ?, NULL, ?, ?)')
        .run(scope, fingerprint, 'pending', now, now + opts.ttlMs);
      return { state: 'new' };
    })();
  }

  async complete(scope: string, response: StoredResponse): Promise<void> {
    this.s.stmt(`UPDATE idempotency SET state = 'done', response = ? WHERE scope = ?`).run(JSON.stringify(response), scope);
  }

  async abandon(scope: string): Promise<void> {
    this.s.stmt(`DELETE FROM idempotency WHERE scope = ? AND state = 'pending'`).run(scope);
  }
}
