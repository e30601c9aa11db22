/**
 * JWT bearer tokens (jose): HS256 with a shared secret (JWT_SECRET), and RS256/ES256 from an
 * OIDC issuer, verified against its JWKS (discovered from `<issuer>/.well-known/openid-configuration`,
 * refetched when a token names an unknown `kid`, so key rotation needs no restart).
 *
 * Claims (docs/permissions.md): `sub` → subject; the tenant claim (`tenant` by default,
 * MVM_JWT_TENANT_CLAIM) → tenant; the role claim (`role` by default, MVM_JWT_ROLE_CLAIM; a string,
 * or an array of which the most powerful known role is taken) → role. `exp` is required. An admin
 * token needs no tenant (it acts in the system tenant).
 */
import { createRemoteJWKSet, decodeProtectedHeader, errors as joseErrors, jwtVerify, type JWTPayload, type JWTVerifyGetKey } from 'jose';
import { ErrorCodes, MvmError } from '../core/errors.js';
import { ROLE_RANK, SYSTEM_TENANT, isRole, type Principal, type Role } from '../core/authz.js';
import type { Authenticator } from '../core/ports/auth.js';

export interface JwtOptions {
  /** JWT_SECRET: enables HS256. */
  hs256Secret?: string;
  /** MVM_JWT_ISSUER / MVM_JWT_AUDIENCE: checked on HS256 tokens when set. */
  hsIssuer?: string;
  hsAudience?: string;
  /** MVM_OIDC_ISSUER: enables RS256/ES256 against the issuer's JWKS. */
  oidcIssuer?: string;
  /** MVM_OIDC_AUDIENCE: required with an issuer. */
  oidcAudience?: string;
  /** MVM_OIDC_JWKS_URI: skip discovery. */
  jwksUri?: string;
  /** MVM_OIDC_ALGORITHMS, default RS256,ES256. */
  oidcAlgorithms?: string[];
  /** MVM_JWT_CLOCK_SKEW_SECONDS, default 30: tolerance on exp and nbf. */
  clockToleranceSec?: number;
  /** MVM_OIDC_JWKS_COOLDOWN_SECONDS, default 30: least time between two JWKS fetches. */
  jwksCooldownSec?: number;
  tenantClaim?: string;
  roleClaim?: string;
  /** Refuse tokens naming a tenant that does not exist. */
  tenantExists?: (id: string) => Promise<boolean>;
  fetch?: typeof fetch;
}

const unauth = (reason: string, details: Record<string, unknown> = {}): MvmError => new MvmError(ErrorCodes.UNAUTHENTICATED, reason, { details: { reason: details.reason ?? reason, ...details } });

const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*$/;

export class JwtAuthenticator implements Authenticator {
  private readonly secret?: Uint8Array;
  private readonly algs: string[];
  private jwks?: JWTVerifyGetKey;
  private jwksLoading?: Promise<JWTVerifyGetKey>;

  constructor(private readonly o: JwtOptions) {
    if (o.hs256Secret) this.secret = new TextEncoder().encode(o.hs256Secret);
    this.algs = o.oidcAlgorithms ?? ['RS256', 'ES256'];
    if (o.oidcIssuer && !o.oidcAudience) throw new Error('MVM_OIDC_AUDIENCE is required with MVM_OIDC_ISSUER');
    if (this.algs.some((a) => a === 'none' || a.startsWith('HS'))) throw new Error('MVM_OIDC_ALGORITHMS may name only asymmetric algorithms');
  }

  get enabled(): boolean {
    return this.secret !== undefined || this.o.oidcIssuer !== undefined;
  }

  async authenticate(token: string): Promise<Principal | undefined> {
    if (!JWT_SHAPE.test(token)) return undefined;
    let alg: string | undefined;
    try {
      alg = decodeProtectedHeader(token).alg;
    } catch {
      return undefined; // three dots but no JOSE header: not ours to judge (e.g. another token format)
    }
    if (!this.enabled) throw unauth('JWT bearer tokens are not accepted: neither JWT_SECRET nor MVM_OIDC_ISSUER is configured');
    if (!alg || alg.toLowerCase() === 'none') throw unauth('token rejected: algorithm "none" is not allowed', { reason: 'alg-none' });
    let payload: JWTPayload;
    let method: 'jwt' | 'oidc';
    try {
      if (alg === 'HS256' && this.secret) {
        method = 'jwt';
        ({ payload } = await jwtVerify(token, this.secret, {
          algorithms: ['HS256'],
          clockTolerance: this.o.clockToleranceSec ?? 30,
          requiredClaims: ['exp', 'sub'],
          ...(this.o.hsAudience ? { audience: this.o.hsAudience } : {}),
          ...(this.o.hsIssuer ? { issuer: this.o.hsIssuer } : {}),
        }));
      } else if (this.o.oidcIssuer && this.algs.includes(alg)) {
        method = 'oidc';
        ({ payload } = await jwtVerify(token, await this.keySet(), {
          algorithms: this.algs,
          issuer: this.o.oidcIssuer,
          audience: this.o.oidcAudience!,
          clockTolerance: this.o.clockToleranceSec ?? 30,
          requiredClaims: ['exp', 'sub'],
        }));
      } else {
        const accepted = [...(this.secret ? ['HS256'] : []), ...(this.o.oidcIssuer ? this.algs : [])];
        throw unauth(`token rejected: algorithm "${alg}" is not allowed (accepted: ${accepted.join(', ')})`, { reason: 'wrong-algorithm' });
      }
    } catch (e) {
      throw this.explain(e);
    }
    return this.principal(payload, method);
  }

  private explain(e: unknown): MvmError {
    if (e instanceof MvmError) return e;
    if (e instanceof joseErrors.JWTExpired) return unauth(`token expired at ${new Date(Number(e.payload.exp) * 1000).toISOString()}`, { reason: 'expired' });
    if (e instanceof joseErrors.JWTClaimValidationFailed) {
      if (e.claim === 'nbf') return unauth(`token not yet valid (nbf ${new Date(Number(e.payload.nbf) * 1000).toISOString()})`, { reason: 'not-yet-valid' });
      if (e.claim === 'iat' && e.reason === 'check_failed') return unauth('token not yet valid (issued in the future)', { reason: 'not-yet-valid' });
      if (e.claim === 'aud') return unauth(`token audience mismatch: expected ${JSON.stringify(this.o.oidcAudience ?? this.o.hsAudience)}`, { reason: 'wrong-audience' });
      if (e.claim === 'iss') return unauth(`token issuer mismatch: expected ${JSON.stringify(this.o.oidcIssuer ?? this.o.hsIssuer)}`, { reason: 'wrong-issuer' });
      return unauth(`token claim ${e.claim} invalid: ${e.message}`, { reason: 'invalid-claim' });
    }
    if (e instanceof joseErrors.JWSSignatureVerificationFailed) return unauth('token signature verification failed', { reason: 'bad-signature' });
    if (e instanceof joseErrors.JWKSNoMatchingKey) return unauth("token signature verification failed: no key of the issuer's JWKS matches the token", { reason: 'bad-signature' });
    if (e instanceof joseErrors.JOSEAlgNotAllowed) return unauth('token rejected: algorithm not allowed', { reason: 'wrong-algorithm' });
    if (e instanceof joseErrors.JWTInvalid || e instanceof joseErrors.JWSInvalid || e instanceof joseErrors.JOSENotSupported) {
      return unauth(`malformed token: ${e.message}`, { reason: 'malformed' });
    }
    if (e instanceof joseErrors.JWKSTimeout || e instanceof joseErrors.JWKSInvalid || e instanceof TypeError || (e as { code?: string }).code === 'ERR_JOSE_GENERIC') {
      return new MvmError(ErrorCodes.UNAVAILABLE, `cannot verify the token: the issuer's keys are unavailable (${(e as Error).message})`);
    }
    return unauth(`invalid token: ${(e as Error).message}`, { reason: 'invalid' });
  }

  private async principal(payload: JWTPayload, method: 'jwt' | 'oidc'): Promise<Principal> {
    const roleClaim = payload[this.o.roleClaim ?? 'role'] ?? payload['roles'];
    const roles = (Array.isArray(roleClaim) ? roleClaim : [roleClaim]).filter(isRole) as Role[];
    if (roles.length === 0) throw unauth(`token has no known role in claim "${this.o.roleClaim ?? 'role'}" (one of admin, tenant-admin, member, viewer)`, { reason: 'no-role' });
    const role = roles.reduce((a, b) => (ROLE_RANK[b] > ROLE_RANK[a] ? b : a));
    const tenantClaim = payload[this.o.tenantClaim ?? 'tenant'];
    let tenant: string;
    if (typeof tenantClaim === 'string' && tenantClaim) tenant = tenantClaim;
    else if (role === 'admin') tenant = SYSTEM_TENANT;
    else throw unauth(`token has no tenant claim "${this.o.tenantClaim ?? 'tenant'}"`, { reason: 'no-tenant' });
    if (this.o.tenantExists && !(await this.o.tenantExists(tenant))) throw unauth(`the token's tenant ${JSON.stringify(tenant)} does not exist`, { reason: 'unknown-tenant' });
    return { subject: String(payload.sub), tenant, role, method };
  }

  private async keySet(): Promise<JWTVerifyGetKey> {
    if (this.jwks) return this.jwks;
    this.jwksLoading ??= this.discover().finally(() => (this.jwksLoading = undefined));
    return this.jwksLoading;
  }

  private async discover(): Promise<JWTVerifyGetKey> {
    let uri = this.o.jwksUri;
    if (!uri) {
      const url = `${this.o.oidcIssuer!.replace(/\/+$/, '')}/.well-known/openid-configuration`;
      const res = await (this.o.fetch ?? fetch)(url, { signal: AbortSignal.timeout(5000) });
      if (!res.ok) throw new TypeError(`OIDC discovery ${url}: HTTP ${res.status}`);
      const doc = (await res.json()) as { jwks_uri?: string; issuer?: string };
      if (!doc.jwks_uri) throw new TypeError(`OIDC discovery ${url}: no jwks_uri`);
      uri = doc.jwks_uri;
    }
    this.jwks = createRemoteJWKSet(new URL(uri), {
      cooldownDuration: (this.o.jwksCooldownSec ?? 30) * 1000,
      cacheMaxAge: 10 * 60_000,
      timeoutDuration: 5000,
    });
    return this.jwks;
  }
}
