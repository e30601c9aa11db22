/** Gateway configuration from the environment (README "Configuration" lists these). */
import { parsePolicy, type RateLimitPolicy } from './ratelimit/policy.js';

export interface GatewayConfig {
  /** JWT_SECRET (or MVM_JWT_SECRET): enables HS256 bearer tokens. */
  jwtSecret?: string;
  /** MVM_JWT_ISSUER, MVM_JWT_AUDIENCE: checked on HS256 tokens when set. */
  jwtIssuer?: string;
  jwtAudience?: string;
  /** MVM_OIDC_ISSUER + MVM_OIDC_AUDIENCE: RS256/ES256 tokens verified against the issuer's JWKS. */
  oidcIssuer?: string;
  oidcAudience?: string;
  /** MVM_OIDC_JWKS_URI: skip discovery. */
  oidcJwksUri?: string;
  /** MVM_OIDC_ALGORITHMS: default RS256,ES256. */
  oidcAlgorithms: string[];
  /** MVM_JWT_CLOCK_SKEW_SECONDS: default 30. */
  clockSkewSeconds: number;
  /** MVM_OIDC_JWKS_COOLDOWN_SECONDS: least time between JWKS refetches, default 30. */
  jwksCooldownSeconds: number;
  /** MVM_JWT_TENANT_CLAIM (tenant), MVM_JWT_ROLE_CLAIM (role). */
  tenantClaim: string;
  roleClaim: string;
  /** MVM_RATE_LIMITS, MVM_RATE_LIMIT_ADMINS. */
  rateLimits: RateLimitPolicy;
  /**
   * MVM_RATE_LIMIT_REDIS (redis://[:password@]host:port[/db]): keep the buckets in Redis, shared by
   * every API replica; MVM_RATE_LIMIT_REDIS_FAIL=open (default: allow while Redis is down) | closed.
   */
  rateLimitRedis?: { url: string; failOpen: boolean };
  /** MVM_GRPC_LISTEN: host:port of the gRPC API (default 127.0.0.1:9090 for instance `mvm`, 127.0.0.1:9190 for the API in cluster mode, 127.0.0.1:0 otherwise; src/config.ts; `off` disables it). */
  grpcListen?: { host: string; port: number };
}

/** `defaults.grpcListen`: the gRPC address when MVM_GRPC_LISTEN is unset (src/config.ts derives it from the role and instance). */
export function loadGatewayConfig(env: NodeJS.ProcessEnv = process.env, defaults: { grpcListen?: string } = {}): GatewayConfig {
  const num = (name: string, def: number): number => {
    const v = env[name];
    if (v === undefined || v === '') return def;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${JSON.stringify(v)}`);
    return n;
  };
  const cfg: GatewayConfig = {
    oidcAlgorithms: (env.MVM_OIDC_ALGORITHMS ?? 'RS256,ES256').split(',').map((s) => s.trim()).filter(Boolean),
    clockSkewSeconds: num('MVM_JWT_CLOCK_SKEW_SECONDS', 30),
    jwksCooldownSeconds: num('MVM_OIDC_JWKS_COOLDOWN_SECONDS', 30),
    tenantClaim: env.MVM_JWT_TENANT_CLAIM || 'tenant',
    roleClaim: env.MVM_JWT_ROLE_CLAIM || 'role',
    rateLimits: parsePolicy(env.MVM_RATE_LIMITS, env.MVM_RATE_LIMIT_ADMINS === '1'),
  };
  const secret = env.JWT_SECRET || env.MVM_JWT_SECRET;
  if (secret) {
    if (secret.length < 32) throw new Error('JWT_SECRET must be at least 32 characters (HS256 needs a 256-bit key)');
    cfg.jwtSecret = secret;
  }
  if (env.MVM_JWT_ISSUER) cfg.jwtIssuer = env.MVM_JWT_ISSUER;
  if (env.MVM_JWT_AUDIENCE) cfg.jwtAudience = env.MVM_JWT_AUDIENCE;
  if (env.MVM_OIDC_ISSUER) {
    if (!env.MVM_OIDC_AUDIENCE) throw new Error('MVM_OIDC_AUDIENCE is required with MVM_OIDC_ISSUER');
    cfg.oidcIssuer = env.MVM_OIDC_ISSUER;
    cfg.oidcAudience = env.MVM_OIDC_AUDIENCE;
  }
  if (env.MVM_OIDC_JWKS_URI) cfg.oidcJwksUri = env.MVM_OIDC_JWKS_URI;
  if (env.MVM_RATE_LIMIT_REDIS) {
    if (!/^rediss?:\/\//.test(env.MVM_RATE_LIMIT_REDIS)) throw new Error('MVM_RATE_LIMIT_REDIS must be a redis:// or rediss:// URL');
    const fail = env.MVM_RATE_LIMIT_REDIS_FAIL ?? 'open';
    if (fail !== 'open' && fail !== 'closed') throw new Error(`MVM_RATE_LIMIT_REDIS_FAIL must be open or closed, got ${JSON.stringify(fail)}`);
    cfg.rateLimitRedis = { url: env.MVM_RATE_LIMIT_REDIS, failOpen: fail === 'open' };
  }
  const grpc = env.MVM_GRPC_LISTEN ?? defaults.grpcListen ?? '127.0.0.1:9090';
  if (grpc !== 'off') {
    const m = /^(.*):(\d+)$/.exec(grpc);
    if (!m || Number(m[2]) > 65535) throw new Error(`MVM_GRPC_LISTEN must be host:port or off, got ${JSON.stringify(grpc)}`);
    cfg.grpcListen = { host: m[1]!.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1', port: Number(m[2]) };
  }
  return cfg;
}
