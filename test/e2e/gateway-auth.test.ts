/**
 * Authentication at the gateway, against the real service process: the admin token, API keys,
 * HS256 JWTs and RS256/ES256 tokens of a real OIDC issuer (JWKS over HTTP, key rotation). Every
 * failure mode answers 401 with a clear reason, over REST and gRPC.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { createHmac } from 'node:crypto';
import { createGrpcClient, unaryCall } from '../../src/grpc/client.js';
import { sleep } from '../../src/vmm/proc.js';
import { destroyDataDir } from '../support/service.js';
import { parseApiKeyToken } from '../../src/core/tenancy.js';
import { AUDIENCE, JWT_SECRET, createKey, createTenant, hsToken, startGatewayService, startOidcIssuer, unsignedToken, type GatewayService, type OidcIssuer } from '../support/gateway.js';

let svc: GatewayService;
let idp: OidcIssuer;

before(async () => {
  idp = await startOidcIssuer();
  svc = await startGatewayService({
    MVM_OIDC_ISSUER: idp.url,
    MVM_OIDC_AUDIENCE: AUDIENCE,
    MVM_JWT_CLOCK_SKEW_SECONDS: '30',
    MVM_OIDC_JWKS_COOLDOWN_SECONDS: '0',
  });
  await createTenant(svc, 'acme');
});

after(async () => {
  await svc?.stop();
  if (svc) await destroyDataDir(svc.dataDir);
  await idp?.close();
});

async function expect401(token: string | null, reason: RegExp, header?: string): Promise<void> {
  const r = await svc.call('GET', '/microvms', header !== undefined ? { token: null, headers: { authorization: header } } : { token });
  assert.equal(r.status, 401, `${r.status} ${r.text}`);
  assert.equal(r.json.code, 'UNAUTHENTICATED');
  assert.match(r.json.detail, reason);
  assert.match(r.headers.get('content-type') ?? '', /problem\+json/);
}

describe('credentials that work', () => {
  test('the admin token keeps working', async () => {
    const r = await svc.call('GET', '/whoami');
    assert.equal(r.status, 200);
    assert.deepEqual(r.json, { subject: 'admin', tenant: 'default', role: 'admin', method: 'admin-token' });
  });

  test('an API key authenticates as its tenant and role', async () => {
    const k = await createKey(svc, 'acme', 'member');
    const r = await svc.call('GET', '/whoami', { token: k.token });
    assert.equal(r.status, 200);
    assert.equal(r.json.tenant, 'acme');
    assert.equal(r.json.role, 'member');
    assert.equal(r.json.keyId, k.id);
    // Shown once: later reads never carry the token or its hash.
    const again = await svc.call('GET', `/apikeys/${k.id}`);
    assert.equal(again.status, 200);
    assert.equal(again.json.token, undefined);
    assert.ok(!again.text.includes(parseApiKeyToken(k.token)!.secret));
    assert.ok(!('secretHash' in again.json));
  });

  test('HS256 JWT: claims map to subject, tenant and role', async () => {
    const r = await svc.call('GET', '/whoami', { token: await hsToken({ sub: 'alice', tenant: 'acme', role: 'viewer' }) });
    assert.equal(r.status, 200, r.text);
    assert.deepEqual(r.json, { subject: 'alice', tenant: 'acme', role: 'viewer', method: 'jwt' });
    // `roles` arrays: the most powerful known role wins; an admin needs no tenant.
    const admin = await svc.call('GET', '/whoami', { token: await hsToken({ sub: 'root', roles: ['viewer', 'admin', 'unknown'] }) });
    assert.deepEqual(admin.json, { subject: 'root', tenant: 'default', role: 'admin', method: 'jwt' });
  });

  test('OIDC: RS256 and ES256 tokens verified against the issuer JWKS', async () => {
    for (const alg of ['RS256', 'ES256'] as const) {
      const r = await svc.call('GET', '/whoami', { token: await idp.sign({ sub: `bob-${alg}`, tenant: 'acme', role: 'member' }, { alg }) });
      assert.equal(r.status, 200, r.text);
      assert.deepEqual(r.json, { subject: `bob-${alg}`, tenant: 'acme', role: 'member', method: 'oidc' });
    }
  });

  test('OIDC key rotation: tokens signed with the new keys are accepted without a restart', async () => {
    const before = idp.jwksFetches;
    await idp.rotate();
    for (const alg of ['RS256', 'ES256'] as const) {
      const r = await svc.call('GET', '/whoami', { token: await idp.sign({ sub: 'carol', tenant: 'acme', role: 'member' }, { alg }) });
      assert.equal(r.status, 200, r.text);
    }
    assert.ok(idp.jwksFetches > before, 'the JWKS was fetched again for the unknown kid');
  });

  test('clock skew: a token expired a few seconds ago (within the tolerance) still passes, one minute ago does not', async () => {
    const ok = await svc.call('GET', '/whoami', { token: await hsToken({ sub: 'a', tenant: 'acme', role: 'member' }, { expSec: -10 }) });
    assert.equal(ok.status, 200, ok.text);
    const nbfOk = await svc.call('GET', '/whoami', { token: await idp.sign({ sub: 'a', tenant: 'acme', role: 'member' }, { nbfSec: 10 }) });
    assert.equal(nbfOk.status, 200, nbfOk.text);
    await expect401(await hsToken({ sub: 'a', tenant: 'acme', role: 'member' }, { expSec: -60 }), /token expired/);
  });
});

describe('each failure mode is 401 with a clear reason', () => {
  test('missing and malformed credentials', async () => {
    await expect401(null, /missing Authorization header/);
    await expect401(null, /malformed Authorization header/, 'Basic dXNlcjpwYXNz');
    await expect401(null, /malformed Authorization header/, 'Bearer');
    await expect401('not-a-known-token', /invalid token/);
    await expect401('eyJhbGciOiJIUzI1NiJ9.e30.!!!', /invalid token/);
    // Correctly signed, but the payload is not a JSON claims set.
    const signingInput = `${Buffer.from('{"alg":"HS256"}').toString('base64url')}.${Buffer.from('not json').toString('base64url')}`;
    const sig = createHmac('sha256', JWT_SECRET).update(signingInput).digest('base64url');
    await expect401(`${signingInput}.${sig}`, /malformed token/);
    await expect401('mvmk_garbage', /malformed API key/);
  });

  test('expired and not-yet-valid tokens', async () => {
    await expect401(await hsToken({ sub: 'a', tenant: 'acme', role: 'member' }, { expSec: -3600 }), /token expired at/);
    await expect401(await idp.sign({ sub: 'a', tenant: 'acme', role: 'member' }, { expSec: -3600 }), /token expired at/);
    await expect401(await hsToken({ sub: 'a', tenant: 'acme', role: 'member' }, { nbfSec: 3600, expSec: 7200 }), /not yet valid/);
    await expect401(await idp.sign({ sub: 'a', tenant: 'acme', role: 'member' }, { nbfSec: 3600, expSec: 7200 }), /not yet valid/);
  });

  test('wrong signature', async () => {
    await expect401(await hsToken({ sub: 'a', tenant: 'acme', role: 'admin' }, { secret: 'another-secret-0123456789abcdef01234' }), /signature verification failed/);
    await expect401(await idp.sign({ sub: 'a', tenant: 'acme', role: 'admin' }, { unpublished: true }), /signature verification failed/);
    await expect401(await idp.sign({ sub: 'a', tenant: 'acme', role: 'admin' }, { alg: 'ES256', unpublished: true }), /signature verification failed/);
    // A tampered payload (role raised) under the original signature.
    const t = await hsToken({ sub: 'a', tenant: 'acme', role: 'viewer' });
    const [h, , s] = t.split('.');
    const forged = `${h}.${Buffer.from(JSON.stringify({ sub: 'a', tenant: 'acme', role: 'admin', exp: Math.floor(Date.now() / 1000) + 300 })).toString('base64url')}.${s}`;
    await expect401(forged, /signature verification failed/);
  });

  test('wrong algorithm, including alg none', async () => {
    await expect401(unsignedToken({ sub: 'a', tenant: 'acme', role: 'admin' }), /algorithm "none" is not allowed/);
    await expect401(await hsToken({ sub: 'a', tenant: 'acme', role: 'admin' }, { alg: 'HS512' }), /algorithm "HS512" is not allowed/);
    await expect401(await hsToken({ sub: 'a', tenant: 'acme', role: 'admin' }, { alg: 'HS384' }), /algorithm "HS384" is not allowed/);
  });

  test('wrong audience and wrong issuer', async () => {
    await expect401(await idp.sign({ sub: 'a', tenant: 'acme', role: 'member' }, { aud: 'someone-else' }), /audience mismatch/);
    await expect401(await idp.sign({ sub: 'a', tenant: 'acme', role: 'member' }, { iss: 'https://evil.example' }), /issuer mismatch/);
  });

  test('tokens without a role or tenant, or for a tenant that does not exist', async () => {
    await expect401(await hsToken({ sub: 'a', tenant: 'acme' }), /no known role/);
    await expect401(await hsToken({ sub: 'a', role: 'member' }), /no tenant claim/);
    await expect401(await hsToken({ sub: 'a', tenant: 'ghost', role: 'member' }), /tenant "ghost" does not exist/);
  });

  test('revoked, expired and unknown API keys', async () => {
    const k = await createKey(svc, 'acme', 'member');
    assert.equal((await svc.call('GET', '/microvms', { token: k.token })).status, 200);
    const rev = await svc.call('DELETE', `/apikeys/${k.id}`);
    assert.equal(rev.status, 200);
    assert.equal(rev.json.state, 'revoked');
    await expect401(k.token, /API key key-\w+ was revoked/);

    const short = await createKey(svc, 'acme', 'member', { expiresIn: '1s' });
    await sleep(1500);
    await expect401(short.token, /API key key-\w+ expired at/);

    // Right id, wrong secret; unknown id: the same answer, which tells nothing about the key.
    const other = await createKey(svc, 'acme', 'viewer');
    await expect401(other.token.slice(0, -4) + 'AAAA', /invalid API key/);
    await expect401('mvmk_key-00000000000000_' + 'A'.repeat(43), /invalid API key/);
  });

  test('over gRPC: missing and bad credentials are UNAUTHENTICATED with the reason', async () => {
    for (const token of [undefined, 'nope', await hsToken({ sub: 'a', tenant: 'acme', role: 'member' }, { expSec: -3600 })]) {
      const c = createGrpcClient(svc.grpc, token);
      await assert.rejects(unaryCall(c.ListMicroVMs.bind(c), {}), (e: grpc.ServiceError) => {
        assert.equal(e.code, grpc.status.UNAUTHENTICATED);
        assert.match(e.details, token === undefined ? /missing Authorization/ : /invalid token|expired/);
        assert.equal(e.metadata.get('mvm-error-code')[0], 'UNAUTHENTICATED');
        return true;
      });
      c.close();
    }
  });
});
