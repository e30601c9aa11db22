/**
 * Limits across API replicas (issue 16): two cluster-mode API replicas over the real control plane.
 * With in-memory counters each replica keeps its own buckets, so a client spreading its calls over
 * both gets twice its limit; with MVM_RATE_LIMIT_REDIS both take from one bucket in Redis and
 * enforce the limit together.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { startClusterApiHarness, type ClusterApiHarness } from '../support/k8s-cluster-api.js';
import { redisMissing, startRedis, type TestRedis } from '../support/redis.js';
import { apiCall } from '../support/service.js';

const ADMIN = 'admin-token-ratelimit-replicas-0123456789';
// A burst of 12 reads per API key, refilled at one every 10 s: the test's calls take far less.
const LIMITS = 'key.read=0.1/s:12,tenant.read=1000/s:1000,ip.read=1000/s:1000';
const skip = redisMissing();
let h: ClusterApiHarness | undefined;
let redis: TestRedis | undefined;

before(async () => {
  if (skip) return;
  redis = await startRedis();
  h = await startClusterApiHarness({ admin: ADMIN, nodes: [], operator: false, config: { MVM_RATE_LIMITS: LIMITS } });
  await h.tenant('rl');
});
after(async () => {
  await h?.stop();
  await redis?.stop();
});

/** 40 reads with one key, alternating between two replicas: how many each admitted. */
async function spread(urls: [string, string], token: string): Promise<{ ok: number[]; other: number[] }> {
  const ok = [0, 0];
  const other: number[] = [];
  for (let i = 0; i < 40; i++) {
    const r = await apiCall({ url: urls[i % 2]!, token }, 'GET', '/microvms');
    if (r.status === 200) ok[i % 2]!++;
    else if (r.status === 429) assert.ok(Number(r.headers.get('retry-after')) >= 1, 'a 429 says when to retry');
    else other.push(r.status);
  }
  return { ok, other };
}

test('in-memory counters: two replicas admit twice the limit (the problem)', { skip }, async () => {
  const a = await h!.startReplica();
  const b = await h!.startReplica();
  const r = await spread([a.url, b.url], await h!.apiKey('rl', 'member', 'mem'));
  assert.deepEqual(r.other, []);
  assert.deepEqual(r.ok, [12, 12], 'each replica enforces the burst alone');
});

test('with Redis, two replicas enforce one limit together', { skip }, async () => {
  const a = await h!.startReplica({ MVM_RATE_LIMIT_REDIS: redis!.url });
  const b = await h!.startReplica({ MVM_RATE_LIMIT_REDIS: redis!.url });
  const r = await spread([a.url, b.url], await h!.apiKey('rl', 'member', 'redis'));
  assert.deepEqual(r.other, []);
  assert.equal(r.ok[0]! + r.ok[1]!, 12, `admitted ${JSON.stringify(r.ok)}`);
  assert.ok(r.ok[0]! > 0 && r.ok[1]! > 0, 'both replicas served');
});
