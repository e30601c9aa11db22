/**
 * Idempotency records for `Idempotency-Key` on POST (REST) and the `idempotency-key` metadata
 * (gRPC): the first request's response is kept and replayed to retries for a day.
 * Standalone: SQLite (`idempotency`). Cluster mode: the same rows in the API's database or Redis
 * (`SET NX` for begin).
 */
export interface StoredResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

export type BeginResult =
  | { state: 'new' }
  | { state: 'done'; response: StoredResponse }
  | { state: 'in-progress' }
  | { state: 'mismatch' };

export interface IdempotencyStore {
  /**
   * Claim `scope` for a request with this fingerprint. An in-progress claim older than
   * `lockMs` (its request died with the process) is taken over.
   */
  begin(scope: string, fingerprint: string, opts: { ttlMs: number; lockMs: number }): Promise<BeginResult>;
  complete(scope: string, response: StoredResponse): Promise<void>;
  /** Forget an in-progress claim (the request failed in a way worth retrying). */
  abandon(scope: string): Promise<void>;
}
