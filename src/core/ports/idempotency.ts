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
   * `lockMs` (its request died with the process) is taken over by the same request (another
   * fingerprint stays `mismatch`). A record is kept `ttlMs` from its claim, then forgotten.
   * Of concurrent claims of one scope exactly one is `new`.
   */
  begin(scope: string, fingerprint: string, opts: { ttlMs: number; lockMs: number }): Promise<BeginResult>;
  /** Store the response of a claim (replayed as `done`); a scope nobody claimed stays unclaimed. */
  complete(scope: string, response: StoredResponse): Promise<void>;
  /** Forget an in-progress claim (the request failed in a way worth retrying); a completed one is kept. */
  abandon(scope: string): Promise<void>;
}
