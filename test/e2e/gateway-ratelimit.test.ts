/**
 * Rate limiting: token buckets per tenant, per API key and per client IP (for calls without valid
 * credentials); 429 with Retry-After and RateLimit-* headers; read and mutation classes apart.
 * Unit tests of the bucket store with a fake clock, then the real service over REST and gRPC.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { MemoryRateLimitStore } from '../../src/gateway/ratelimit/memory-store.js';
import { bucketsFor, parsePolicy } from '../../src/gateway/ratelimit/policy.js';
import { createGrpcClient, unaryCall } from '../../src/grpc/client.js';
import { sleep } from '../../src/vmm/proc.js';
import { destroyDataDir } from '../support/service.js';
import { createKey, createTenant, startGatewayService, type GatewayService } from '../support/gateway.js';

describe('token buckets (fake clock)', () => {
  test('burst, refill, all-or-nothing across buckets, retry-after', () => {
    let now = 0;
    const s = new MemoryRateLimitStore(() => now);
    const a = { key: 'a', capacity: 3, refillPerSec: 1 };
    const b = { key: 'b', capacity: 10, refillPerSec: 10 };
    for (let i = 0; i < 3; i++) assert.equal(s.takeSync([a, b]).allowed, true);
    const refused = s.takeSync([a, b]);
    assert.equal(refused.allowed, false);
    assert.equal(refused.retryAfterMs, 1000);
    assert.equal(refused.tightest.key, 'a');
    assert.equal(refused.tightest.remaining, 0);
    // b was not charged for the refused call.
    assert.equal(s.takeSync([b]).tightest.remaining, 6);
    now = 1000;
    assert.equal(s.takeSync([a]).allowed, true);
    assert.equal(s.takeSync([a]).allowed, false);
    now = 60_000;
    assert.equal(s.takeSync([a]).tightest.remaining, 2, 'refilled to capacity, not beyond');
  });

  test('policy: buckets per tenant and key, per IP without a principal, admins exempt by default', () => {
    const p = parsePolicy('key.read=2/s:4,ip.mutation=1/s:1');
    assert.deepEqual(p.rates.key.read, { perSec: 2, burst: 4 });
    const member = bucketsFor(p, 'read', { subject: 's', tenant: 't', role: 'member', keyId: 'key-1' }, '10.0.0.1');
    assert.deepEqual(member.map((b) => b.key), ['tenant:t:read', 'key:key-1:read']);
    const jwtUser = bucketsFor(p, 'mutation', { subject: 'alice', tenant: 't', role: 'member' }, '::1');
    assert.deepEqual(jwtUser.map((b) => b.key), ['tenant:t:mutation', 'key:sub:alice:mutation']);
    assert.deepEqual(bucketsFor(p, 'read', undefined, '127.0.0.9').map((b) => b.key), ['ip:127.0.0.9:read']);
    assert.deepEqual(bucketsFor(p, 'read', { subject: 'admin', tenant: 'default', role: 'admin' }, 'x'), []);
    assert.equal(bucketsFor(parsePolicy('off'), 'read', undefined, 'x').length, 0);
    assert.throws(() => parsePolicy('tenant.read=fast'), /cannot parse/);
  });
});

describe('rate limits on the real service', () => {
  let svc: GatewayService;
  before(async () => {
    svc = await startGatewayService({
      MVM_RATE_LIMITS: 'key.read=2/s:5,key.mutation=1/s:2,tenant.read=100/s:100,tenant.mutation=100/s:100,ip.read=1/s:3,ip.mutation=1/s:3',
    });
    await createTenant(svc, 'rl');
    await createTenant(svc, 'calm');
  });
  after(async () => {
    await svc?.stop();
    if (svc) await destroyDataDir(svc.dataDir);
  });

  test('an API key over its read budget gets 429 with Retry-After and RateLimit-* headers; others are unaffected', async () => {
    const k = await createKey(svc, 'rl', 'member');
    const other = await createKey(svc, 'calm', 'member');
    const first = await svc.call('GET', '/microvms', { token: k.token });
    assert.equal(first.status, 200);
    assert.equal(first.headers.get('ratelimit-limit'), '5');
    assert.equal(first.headers.get('ratelimit-remaining'), '4');
    assert.ok(Number(first.headers.get('ratelimit-reset')) >= 1);
    let limited;
    for (let i = 0; i < 10 && !limited; i++) {
      const r = await svc.call('GET', '/microvms', { token: k.token });
      if (r.status === 429) limited = r;
    }
    assert.ok(limited, 'a 429 within the burst');
    assert.equal(limited.json.code, 'RATE_LIMITED');
    assert.match(limited.json.detail, /rate limit of the key exceeded for reads/);
    const retry = Number(limited.headers.get('retry-after'));
    assert.ok(retry >= 1 && retry <= 2, `Retry-After ${retry}`);
    assert.equal(limited.headers.get('ratelimit-remaining'), '0');
    // Another tenant's key is not affected; the limited key's mutation bucket is separate.
    assert.equal((await svc.call('GET', '/microvms', { token: other.token })).status, 200);
    assert.equal((await svc.call('POST', '/microvms', { token: k.token, body: { name: 'm', start: false } })).status, 201);
    // After Retry-After the key works again.
    await sleep(retry * 1000 + 100);
    assert.equal((await svc.call('GET', '/microvms', { token: k.token })).status, 200);
    // The admin token is exempt.
    for (let i = 0; i < 10; i++) assert.equal((await svc.call('GET', '/microvms')).status, 200);
  });

  test('calls without valid credentials are limited per client IP', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) statuses.push((await svc.call('GET', '/microvms', { token: 'wrong' })).status);
    assert.deepEqual(statuses.slice(0, 3), [401, 401, 401]);
    assert.ok(statuses.slice(3).includes(429), statuses.join(','));
    const r = await svc.call('GET', '/microvms', { token: null });
    assert.equal(r.status, 429);
    assert.ok(r.headers.get('retry-after'));
  });

  test('gRPC: RESOURCE_EXHAUSTED with retry-after in the trailers', async () => {
    const k = await createKey(svc, 'rl', 'viewer');
    const c = createGrpcClient(svc.grpc, k.token);
    let err: grpc.ServiceError | undefined;
    for (let i = 0; i < 10 && !err; i++) {
      try {
        await unaryCall(c.ListMicroVMs.bind(c), {});
      } catch (e) {
        err = e as grpc.ServiceError;
      }
    }
    c.close();
    assert.ok(err);
    assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(err.metadata.get('mvm-error-code')[0], 'RATE_LIMITED');
    assert.ok(Number(err.metadata.get('retry-after')[0]) >= 1);
  });

  test('denied calls are audited, without the credential', async () => {
    const audit = await svc.call('GET', '/audit?result=denied&limit=1000');
    assert.equal(audit.status, 200);
    const codes = new Set(audit.json.items.map((e: { code: string }) => e.code));
    assert.ok(codes.has('RATE_LIMITED') && codes.has('UNAUTHENTICATED'), [...codes].join(','));
    assert.ok(!audit.text.includes('wrong'), 'no token in the audit log');
    assert.ok(audit.json.items.some((e: { transport: string; code: string }) => e.transport === 'grpc' && e.code === 'RATE_LIMITED'));
  });
});
