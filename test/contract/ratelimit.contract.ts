/**
 * The contract of the rate limiter's store (src/core/ports/ratelimit.ts): token buckets that allow
 * their burst, refuse beyond it with a usable Retry-After, refill at their rate, take from all of a
 * request's buckets or none, and stay exact under concurrent takes. Written once; run against the
 * in-memory store (test/unit/ratelimit-memory.test.ts) and Redis (test/integration/ratelimit-redis.test.ts).
 * Real time: refill rates are chosen so the waits stay in tens of milliseconds.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { Bucket, RateLimitStore } from '../../src/core/ports/ratelimit.js';

export interface RateLimitFixture {
  store: RateLimitStore;
  close(): Promise<void>;
}

let n = 0;
const key = (s: string): string => `contract:${process.pid}:${Date.now()}:${++n}:${s}`;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

export function rateLimitContract(name: string, make: () => Promise<RateLimitFixture>): void {
  describe(`rate-limit store contract: ${name}`, () => {
    const withStore = (f: (s: RateLimitStore) => Promise<void>) => async () => {
      const fx = await make();
      try {
        await f(fx.store);
      } finally {
        await fx.close();
      }
    };

    test(
      'a fresh bucket allows its burst, then refuses with a Retry-After of about one token',
      withStore(async (s) => {
        const b: Bucket = { key: key('burst'), capacity: 5, refillPerSec: 0.5 };
        for (let i = 0; i < 5; i++) {
          const d = await s.take([b]);
          assert.equal(d.allowed, true, `take ${i + 1}`);
          assert.equal(d.tightest.remaining, 4 - i);
          assert.equal(d.tightest.capacity, 5);
        }
        const no = await s.take([b]);
        assert.equal(no.allowed, false);
        assert.ok(no.retryAfterMs > 1000 && no.retryAfterMs <= 2000, `retryAfterMs ${no.retryAfterMs}`);
        assert.equal(no.tightest.remaining, 0);
        assert.ok(no.tightest.resetMs > 9000 && no.tightest.resetMs <= 10_000, `resetMs ${no.tightest.resetMs}`);
      }),
    );

    test(
      'buckets refill at their rate',
      withStore(async (s) => {
        const b: Bucket = { key: key('refill'), capacity: 2, refillPerSec: 20 };
        assert.equal((await s.take([b], 2)).allowed, true);
        assert.equal((await s.take([b])).allowed, false);
        await sleep(120); // 20/s: at least two tokens back
        assert.equal((await s.take([b])).allowed, true);
        assert.equal((await s.take([b])).allowed, true);
      }),
    );

    test(
      'all or nothing: one empty bucket refuses, and the others keep their tokens',
      withStore(async (s) => {
        const a: Bucket = { key: key('a'), capacity: 10, refillPerSec: 0.01 };
        const b: Bucket = { key: key('b'), capacity: 1, refillPerSec: 0.01 };
        assert.equal((await s.take([a, b])).allowed, true);
        const no = await s.take([a, b]);
        assert.equal(no.allowed, false);
        assert.equal(no.tightest.key, b.key, 'the tightest bucket is the empty one');
        const alone = await s.take([a]);
        assert.equal(alone.allowed, true);
        assert.equal(alone.tightest.remaining, 10 - 2, 'the refused take took nothing from a');
      }),
    );

    test(
      'a cost above one; a bucket whose limits change starts afresh',
      withStore(async (s) => {
        const b: Bucket = { key: key('cost'), capacity: 10, refillPerSec: 0.01 };
        assert.equal((await s.take([b], 7)).allowed, true);
        assert.equal((await s.take([b], 4)).allowed, false);
        assert.equal((await s.take([b], 3)).allowed, true);
        const bigger = { ...b, capacity: 20 };
        const d = await s.take([bigger], 1);
        assert.equal(d.allowed, true);
        assert.equal(d.tightest.remaining, 19);
      }),
    );

    test(
      'exact under concurrency: 60 concurrent takes from a burst of 17 admit 17',
      withStore(async (s) => {
        const b: Bucket = { key: key('race'), capacity: 17, refillPerSec: 0.001 };
        const all = await Promise.all(Array.from({ length: 60 }, () => s.take([b])));
        assert.equal(all.filter((d) => d.allowed).length, 17);
      }),
    );
  });
}
