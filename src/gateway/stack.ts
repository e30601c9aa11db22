/**
 * The gateway's stack: tenants, API keys, audit, idempotency over the adapters a composition root
 * hands in (SQLite in src/standalone.ts, Kubernetes objects in src/cluster-api.ts); in-memory
 * rate-limit buckets; the authenticator chain (API keys, JWT/OIDC, admin token).
 */
import type { Logger } from 'pino';
import { AuditService } from '../core/audit.js';
import type { ApiKeyStore } from '../core/ports/apikeys.js';
import type { AuditLog } from '../core/ports/audit.js';
import type { IdempotencyStore } from '../core/ports/idempotency.js';
import type { ResourceStore } from '../core/ports/resources.js';
import type { Store } from '../core/ports/store.js';
import type { TenantStore } from '../core/ports/tenants.js';
import { TenantService } from '../core/tenancy.js';
import { ApiKeyAuthenticator } from '../auth/apikey.js';
import { JwtAuthenticator } from '../auth/jwt.js';
import { StaticTokenAuthenticator } from '../auth/static-token.js';
import type { Authenticator } from '../core/ports/auth.js';
import { Gateway } from './gateway.js';
import type { GatewayConfig } from './config.js';
import { MemoryRateLimitStore } from './ratelimit/memory-store.js';
import { RedisRateLimitStore } from './ratelimit/redis-store.js';
import type { RateLimitStore } from '../core/ports/ratelimit.js';

/** The gateway's storage adapters: SQLite in the standalone mode, Kubernetes objects in cluster mode. */
export interface GatewayAdapters {
  tenantStore: TenantStore & ApiKeyStore;
  auditLog: AuditLog;
  idempotency: IdempotencyStore;
}

export interface GatewayStack {
  gateway: Gateway;
  tenantStore: TenantStore & ApiKeyStore;
  tenants: TenantService;
  audit: AuditService;
  /** Release what the stack holds open (the rate limiter's Redis connection). */
  close(): Promise<void>;
}

export async function createGatewayStack(o: {
  store: Store;
  config: GatewayConfig;
  /** Optional in cluster mode (JWT/OIDC and API keys only). */
  adminToken?: string;
  adapters: GatewayAdapters;
  log: Logger;
  resources?: ResourceStore;
  resourceKinds?: string[];
}): Promise<GatewayStack> {
  const tenantStore = o.adapters.tenantStore;
  const keyAuth = new ApiKeyAuthenticator(tenantStore);
  const tenants = new TenantService(o.store, tenantStore, tenantStore, {
    ...(o.resources ? { resources: o.resources } : {}),
    resourceKinds: o.resourceKinds ?? [],
    onKeysInvalidated: (ids) => ids.forEach((id) => keyAuth.forget(id)),
  });
  await tenants.ensureSystemTenant();
  const auditLog = o.log.child({ c: 'audit' });
  const audit = new AuditService(
    o.adapters.auditLog,
    (e) => auditLog.info({ audit: e }, `audit ${e.result} ${e.operation}`),
    (err, e) => auditLog.error({ err: (err as Error).message, audit: e }, 'audit entry could not be stored'),
  );
  const c = o.config;
  // Cheapest recognisers first: API keys by prefix (cached), JWTs by shape, then the admin token (a hash per call).
  const authenticators: Authenticator[] = [keyAuth];
  const jwt = new JwtAuthenticator({
    ...(c.jwtSecret ? { hs256Secret: c.jwtSecret } : {}),
    ...(c.jwtIssuer ? { hsIssuer: c.jwtIssuer } : {}),
    ...(c.jwtAudience ? { hsAudience: c.jwtAudience } : {}),
    ...(c.oidcIssuer ? { oidcIssuer: c.oidcIssuer, oidcAudience: c.oidcAudience! } : {}),
    ...(c.oidcJwksUri ? { jwksUri: c.oidcJwksUri } : {}),
    oidcAlgorithms: c.oidcAlgorithms,
    clockToleranceSec: c.clockSkewSeconds,
    jwksCooldownSec: c.jwksCooldownSeconds,
    tenantClaim: c.tenantClaim,
    roleClaim: c.roleClaim,
    tenantExists: async (id) => (await tenantStore.getTenant(id)) !== undefined,
  });
  authenticators.push(jwt);
  if (o.adminToken) authenticators.push(new StaticTokenAuthenticator(o.adminToken));
  const limiter: RateLimitStore = c.rateLimitRedis
      ? new RedisRateLimitStore({ url: c.rateLimitRedis.url, failOpen: c.rateLimitRedis.failOpen, onError: rateLimitRedisError(o.log) })
      : new MemoryRateLimitStore();
  const gateway = new Gateway({
    authenticators,
    limiter,
    policy: c.rateLimits,
    audit,
    idempotency: o.adapters.idempotency,
    log: o.log,
  });
  return { gateway, tenantStore, tenants, audit, close: async () => limiter.close?.() };
}

/** Redis errors, at most one log line per 10 s (a Redis that is down would otherwise log per request). */
function rateLimitRedisError(log: { warn(o: object, msg: string): void } | undefined): (e: Error) => void {
  let last = 0;
  return (e) => {
    if (Date.now() - last < 10_000) return;
    last = Date.now();
    log?.warn({ err: e.message }, 'rate-limit store (Redis) unavailable');
  };
}
