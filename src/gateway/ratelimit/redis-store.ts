/**
 * Token buckets in Redis, shared by every API replica (cluster mode behind a load balancer): the
 * same contract as the in-memory store, over one Lua script that refills and takes from all of a
 * request's buckets atomically on the Redis server (all or nothing), with `PEXPIRE` dropping a
 * bucket once it would be full again. Time comes from Redis (`TIME`), so replicas with skewed
 * clocks still agree.
 *
 * A Redis that does not answer fails open or closed as configured (`failOpen`): a rate limiter
 * is no reason to take the API down, but an operator may choose otherwise.
 */
import { Redis } from 'ioredis';
import type { Bucket, BucketState, RateDecision, RateLimitStore } from '../../core/ports/ratelimit.js';

// KEYS: bucket keys. ARGV: cost, then capacity and refillPerSec per key.
// Returns {allowed (0/1), retryAfterMs, then remaining*1000 and resetMs per key}.
const TAKE = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local cost = tonumber(ARGV[1])
local n = #KEYS
local tokens = {}
local allowed = 1
local retry = 0
for i = 1, n do
  local cap = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local h = redis.call('HMGET', KEYS[i], 'tk', 'at', 'cap', 'rate')
  local tk = cap
  if h[1] and tonumber(h[3]) == cap and tonumber(h[4]) == rate then
    local elapsed = math.max(0, now - tonumber(h[2]))
    tk = math.min(cap, tonumber(h[1]) + elapsed / 1000 * rate)
  end
  tokens[i] = tk
  if tk < cost then
    allowed = 0
    retry = math.max(retry, (cost - tk) / rate * 1000)
  end
end
local out = {allowed, math.ceil(retry)}
for i = 1, n do
  local cap = tonumber(ARGV[2 * i])
  local rate = tonumber(ARGV[2 * i + 1])
  local tk = tokens[i]
  if allowed == 1 then tk = tk - cost end
  redis.call('HSET', KEYS[i], 'tk', tostring(tk), 'at', now, 'cap', cap, 'rate', rate)
  redis.call('PEXPIRE', KEYS[i], math.max(1000, math.ceil((cap - tk) / rate * 1000) + 1000))
  out[#out + 1] = math.floor(tk * 1000)
  out[#out + 1] = math.ceil((cap - tk) / rate * 1000)
end
return out
`;

export interface RedisRateLimitOptions {
  /** redis://[:password@]host:port[/db] (MVM_RATE_LIMIT_REDIS). */
  url: string;
  /** Key prefix, so several services can share one Redis (default `mvm:rl:`). */
  prefix?: string;
  /** When Redis does not answer: allow (default) or refuse. */
  failOpen?: boolean;
  /** Per-call deadline in ms (default 250). */
  timeoutMs?: number;
  onError?: (e: Error) => void;
}

type TakeFn = (numKeys: number, ...args: Array<string | number>) => Promise<number[]>;

export class RedisRateLimitStore implements RateLimitStore {
  private readonly redis: Redis;
  private readonly prefix: string;
  private readonly timeoutMs: number;

  constructor(private readonly o: RedisRateLimitOptions) {
    this.prefix = o.prefix ?? 'mvm:rl:';
    this.timeoutMs = o.timeoutMs ?? 250;
    // The offline queue holds calls made while (re)connecting; each is still bounded by timeoutMs, and
    // maxRetriesPerRequest flushes them with an error when a reconnect fails.
    this.redis = new Redis(o.url, { maxRetriesPerRequest: 1, enableOfflineQueue: true, connectTimeout: 2000 });
    this.redis.on('error', (e: Error) => o.onError?.(e));
    this.redis.defineCommand('mvmTake', { lua: TAKE });
  }

  async take(buckets: Bucket[], cost = 1): Promise<RateDecision> {
    if (buckets.length === 0) return { allowed: true, retryAfterMs: 0, tightest: { key: '', capacity: 0, remaining: 0, resetMs: 0 } };
    const args: Array<string | number> = [...buckets.map((b) => this.prefix + b.key), cost];
    for (const b of buckets) args.push(b.capacity, b.refillPerSec);
    let r: number[];
    try {
      r = await withTimeout((this.redis as unknown as { mvmTake: TakeFn }).mvmTake(buckets.length, ...args), this.timeoutMs);
    } catch (e) {
      this.o.onError?.(e as Error);
      const allowed = this.o.failOpen !== false;
      return { allowed, retryAfterMs: allowed ? 0 : 1000, tightest: { key: buckets[0]!.key, capacity: buckets[0]!.capacity, remaining: 0, resetMs: 1000 } };
    }
    let tightest: BucketState | undefined;
    buckets.forEach((b, i) => {
      const st: BucketState = { key: b.key, capacity: b.capacity, remaining: Math.max(0, Math.floor(r[2 + 2 * i]! / 1000)), resetMs: r[3 + 2 * i]! };
      if (!tightest || st.remaining / st.capacity < tightest.remaining / tightest.capacity) tightest = st;
    });
    return { allowed: r[0] === 1, retryAfterMs: r[1]!, tightest: tightest! };
  }

  async close(): Promise<void> {
    await this.redis.quit().catch(() => this.redis.disconnect());
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<T>((_, rej) => (t = setTimeout(() => rej(new Error(`Redis did not answer within ${ms} ms`)), ms)))]).finally(() => clearTimeout(t));
}
