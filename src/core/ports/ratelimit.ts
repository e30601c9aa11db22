/**
 * The rate limiter's store: token buckets keyed by tenant, API key / subject, or client IP.
 * Standalone: in memory (src/gateway/ratelimit/memory-store.ts). Cluster mode, where several API
 * replicas must share buckets: the same contract over Redis (one Lua script doing the
 * refill-and-take of all keys atomically, `PEXPIRE` to drop idle buckets).
 */
export interface Bucket {
  key: string;
  /** Burst size: the most tokens a bucket holds. */
  capacity: number;
  /** Tokens added per second. */
  refillPerSec: number;
}

export interface BucketState {
  key: string;
  capacity: number;
  remaining: number;
  /** Milliseconds until the bucket is full again. */
  resetMs: number;
}

export interface RateDecision {
  allowed: boolean;
  /** When refused: milliseconds until a token is available in every bucket. */
  retryAfterMs: number;
  /** State of the most constraining bucket after the decision (for RateLimit-* headers). */
  tightest: BucketState;
}

export interface RateLimitStore {
  /** All or nothing: takes `cost` tokens from every bucket only when each has them. */
  take(buckets: Bucket[], cost?: number): Promise<RateDecision>;
  /** Release connections (a shared store); the process may then exit. */
  close?(): Promise<void>;
}
