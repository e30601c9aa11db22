/** In-memory token buckets (standalone, one API process). Refilled lazily; idle full buckets are swept. */
import type { Bucket, BucketState, RateDecision, RateLimitStore } from '../../core/ports/ratelimit.js';

interface State {
  tokens: number;
  at: number;
  capacity: number;
  refillPerSec: number;
}

export class MemoryRateLimitStore implements RateLimitStore {
  private readonly buckets = new Map<string, State>();
  private lastSweep = 0;

  constructor(private readonly now: () => number = () => performance.timeOrigin + performance.now()) {}

  async take(buckets: Bucket[], cost = 1): Promise<RateDecision> {
    return this.takeSync(buckets, cost);
  }

  /** Synchronous core (the store is local): refill, check every bucket, then take from all or none. */
  takeSync(buckets: Bucket[], cost = 1): RateDecision {
    const now = this.now();
    if (now - this.lastSweep > 60_000) this.sweep(now);
    const states = buckets.map((b) => {
      let s = this.buckets.get(b.key);
      if (!s || s.capacity !== b.capacity || s.refillPerSec !== b.refillPerSec) {
        s = { tokens: b.capacity, at: now, capacity: b.capacity, refillPerSec: b.refillPerSec };
        this.buckets.set(b.key, s);
      } else {
        s.tokens = Math.min(s.capacity, s.tokens + ((now - s.at) / 1000) * s.refillPerSec);
        s.at = now;
      }
      return { b, s };
    });
    const allowed = states.every(({ s }) => s.tokens >= cost);
    let retryAfterMs = 0;
    if (allowed) for (const { s } of states) s.tokens -= cost;
    else for (const { s } of states) if (s.tokens < cost) retryAfterMs = Math.max(retryAfterMs, ((cost - s.tokens) / s.refillPerSec) * 1000);
    let tightest: BucketState | undefined;
    for (const { b, s } of states) {
      const st: BucketState = { key: b.key, capacity: s.capacity, remaining: Math.max(0, Math.floor(s.tokens)), resetMs: ((s.capacity - s.tokens) / s.refillPerSec) * 1000 };
      if (!tightest || st.remaining / st.capacity < tightest.remaining / tightest.capacity) tightest = st;
    }
    return { allowed, retryAfterMs: Math.ceil(retryAfterMs), tightest: tightest ?? { key: '', capacity: 0, remaining: 0, resetMs: 0 } };
  }

  private sweep(now: number): void {
    this.lastSweep = now;
    for (const [k, s] of this.buckets) {
      if (s.tokens + ((now - s.at) / 1000) * s.refillPerSec >= s.capacity) this.buckets.delete(k);
    }
  }

  get size(): number {
    return this.buckets.size;
  }
}
