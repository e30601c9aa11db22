/**
 * The rate-limit store over a real Redis: the port's contract, and what only a shared store shows
 * — two stores (two API replicas) over one Redis enforce one limit together, and a Redis that
 * goes away fails open or closed as configured.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { RedisRateLimitStore } from '../../src/gateway/ratelimit/redis-store.js';
import { rateLimitContract } from '../contract/ratelimit.contract.js';
import { redisMissing, startRedis, type TestRedis } from '../support/redis.js';

const skip = redisMissing();
let redis: TestRedis | undefined;

before(async () => {
  if (!skip) redis = await startRedis();
});
after(async () => {
  await redis?.stop();
});

if (skip) test('Redis rate-limit store', { skip }, () => undefined);
else {
  rateLimitContract('redis', async () => {
    const store = new RedisRateLimitStore({ url: redis!.url, failOpen: false });
    return { store, close: () => store.close() };
  });

  test('two replicas over one Redis share one bucket', async () => {
    const a = new RedisRateLimitStore({ url: redis!.url, failOpen: false });
    const b = new RedisRateLimitStore({ url: redis!.url, failOpen: false });
    try {
      const bucket = { key: `shared:${Date.now()}`, capacity: 10, refillPerSec: 0.001 };
      const got = await Promise.all(Array.from({ length: 30 }, (_, i) => (i % 2 ? a : b).take([bucket])));
      assert.equal(got.filter((d) => d.allowed).length, 10);
    } finally {
      await a.close();
      await b.close();
    }
  });

  test('an unreachable Redis fails open or closed, as configured, without hanging', async () => {
    const dead = 'redis://127.0.0.1:1';
    const open = new RedisRateLimitStore({ url: dead, failOpen: true, timeoutMs: 200, onError: () => undefined });
    const closed = new RedisRateLimitStore({ url: dead, failOpen: false, timeoutMs: 200, onError: () => undefined });
    try {
      const t0 = Date.now();
      const bucket = { key: 'x', capacity: 1, refillPerSec: 1 };
      assert.equal((await open.take([bucket])).allowed, true);
      const no = await closed.take([bucket]);
      assert.equal(no.allowed, false);
      assert.ok(no.retryAfterMs > 0);
      assert.ok(Date.now() - t0 < 2000, 'answered within the deadline');
    } finally {
      await open.close();
      await closed.close();
    }
  });
}
