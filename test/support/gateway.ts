/**
 * Helpers of the gateway tests: a real service process with gateway settings, tenants and API
 * keys made through the API, HS256 tokens, and a real OIDC issuer (discovery + JWKS over HTTP on
 * 127.0.0.1) whose signing keys can rotate.
 */
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SignJWT, exportJWK, generateKeyPair, type JWK, type JWTPayload } from 'jose';
import { startService, type TestService } from './service.js';
import { recordErrorAnswer, recordSecret } from './ledger.js';
import { fetchTrusting } from '../../sdk/typescript/src/https-fetch.js';

export const JWT_SECRET = 'test-secret-0123456789abcdef0123456789';
export const AUDIENCE = 'mvm-test';

export interface GatewayService extends TestService {
  grpc: string;
  call(method: string, path: string, o?: { token?: string | null; body?: unknown; headers?: Record<string, string> }): Promise<Res>;
}

export interface Res {
  status: number;
  json: any;
  text: string;
  headers: Headers;
}

export async function startGatewayService(env: Record<string, string> = {}, o: { ca?: string | Buffer } = {}): Promise<GatewayService> {
  const svc = await startService({ ...(o.ca ? { ca: o.ca } : {}), env: { MVM_NETWORK: 'none', MVM_GRPC_LISTEN: '127.0.0.1:0', JWT_SECRET, MVM_RATE_LIMITS: 'tenant.read=5000/s:10000,tenant.mutation=5000/s:10000,key.read=5000/s:10000,key.mutation=5000/s:10000,ip.read=5000/s:10000,ip.mutation=5000/s:10000', ...env } });
  const { grpc } = JSON.parse(readFileSync(join(svc.dataDir, 'server.json'), 'utf8')) as { grpc: string };
  const doFetch = svc.ca ? fetchTrusting(svc.ca) : fetch;
  const call: GatewayService['call'] = async (method, path, o = {}) => {
    const token = o.token === undefined ? svc.token : o.token;
    const res = await doFetch(`${svc.url}/api/v1${path}`, {
      method,
      headers: {
        ...(token !== null ? { authorization: `Bearer ${token}` } : {}),
        ...(o.body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(o.headers ?? {}),
      },
      ...(o.body !== undefined ? { body: typeof o.body === 'string' ? o.body : JSON.stringify(o.body) } : {}),
    });
    const text = await res.text();
    recordErrorAnswer(method, path, res.status, text);
    let json: any;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: res.status, json, text, headers: res.headers };
  };
  return Object.assign(svc, { grpc, call });
}

export async function createTenant(svc: GatewayService, id: string, quotas: Record<string, unknown> = {}): Promise<void> {
  const r = await svc.call('POST', '/tenants', { body: { id, quotas } });
  if (r.status !== 201) throw new Error(`create tenant ${id}: ${r.status} ${r.text}`);
}

export async function createKey(svc: GatewayService, tenant: string, role: string, extra: Record<string, unknown> = {}): Promise<{ id: string; token: string }> {
  const r = await svc.call('POST', `/apikeys?tenant=${tenant}`, { body: { name: `${role}-${Math.random().toString(36).slice(2, 8)}`, role, ...extra } });
  if (r.status !== 201) throw new Error(`create key: ${r.status} ${r.text}`);
  recordSecret('API key', r.json.token);
  return { id: r.json.id, token: r.json.token };
}

export async function hsToken(claims: JWTPayload, o: { secret?: string; expSec?: number; nbfSec?: number; aud?: string; alg?: string } = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  let jwt = new SignJWT(claims).setProtectedHeader({ alg: o.alg ?? 'HS256' }).setIssuedAt(now - 5).setExpirationTime(now + (o.expSec ?? 300));
  if (o.nbfSec !== undefined) jwt = jwt.setNotBefore(now + o.nbfSec);
  if (o.aud) jwt = jwt.setAudience(o.aud);
  recordSecret('JWT secret', o.secret ?? JWT_SECRET);
  const token = await jwt.sign(new TextEncoder().encode(o.secret ?? JWT_SECRET));
  recordSecret('JWT', token);
  return token;
}

/** `alg: none` token (jose refuses to make one). */
export function unsignedToken(claims: JWTPayload): string {
  const b = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url');
  return `${b({ alg: 'none', typ: 'JWT' })}.${b({ exp: Math.floor(Date.now() / 1000) + 300, ...claims })}.`;
}

interface IssuerKey {
  kid: string;
  alg: 'RS256' | 'ES256';
  privateKey: Parameters<SignJWT["sign"]>[0];
  jwk: JWK;
}

export interface OidcIssuer {
  url: string;
  /** Sign with the current key of that algorithm (or a key that is not published: `unpublished: true`). */
  sign(claims: JWTPayload, o?: { alg?: 'RS256' | 'ES256'; aud?: string; expSec?: number; nbfSec?: number; iss?: string; unpublished?: boolean }): Promise<string>;
  /** Replace the published keys by fresh ones (new kids). */
  rotate(): Promise<void>;
  jwksFetches: number;
  close(): Promise<void>;
}

async function newKey(alg: 'RS256' | 'ES256'): Promise<IssuerKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true });
  const kid = `${alg.toLowerCase()}-${Math.random().toString(36).slice(2, 10)}`;
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, jwk };
}

export async function startOidcIssuer(): Promise<OidcIssuer> {
  let keys: IssuerKey[] = [await newKey('RS256'), await newKey('ES256')];
  const stray = { RS256: await newKey('RS256'), ES256: await newKey('ES256') };
  let url = '';
  const state = { jwksFetches: 0 };
  const server: Server = createServer((req, res) => {
    if (req.url === '/.well-known/openid-configuration') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ issuer: url, jwks_uri: `${url}/jwks`, id_token_signing_alg_values_supported: ['RS256', 'ES256'] }));
    } else if (req.url === '/jwks') {
      state.jwksFetches++;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ keys: keys.map((k) => k.jwk) }));
    } else {
      res.statusCode = 404;
      res.end();
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    get jwksFetches() {
      return state.jwksFetches;
    },
    async sign(claims, o = {}) {
      const alg = o.alg ?? 'RS256';
      const key = o.unpublished ? { ...stray[alg], kid: keys.find((k) => k.alg === alg)!.kid } : keys.find((k) => k.alg === alg)!;
      const now = Math.floor(Date.now() / 1000);
      let jwt = new SignJWT(claims)
        .setProtectedHeader({ alg, kid: key.kid })
        .setIssuer(o.iss ?? url)
        .setAudience(o.aud ?? AUDIENCE)
        .setIssuedAt(now - 5)
        .setExpirationTime(now + (o.expSec ?? 300));
      if (o.nbfSec !== undefined) jwt = jwt.setNotBefore(now + o.nbfSec);
      const token = await jwt.sign(key.privateKey);
      recordSecret('JWT', token);
      return token;
    },
    async rotate() {
      keys = [await newKey('RS256'), await newKey('ES256')];
    },
    async close() {
      await new Promise<void>((r) => server.close(() => r()));
    },
  } as OidcIssuer;
}
