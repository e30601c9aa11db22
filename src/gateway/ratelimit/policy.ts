/**
 * Which buckets a call draws from. Route classes: `read` and `mutation`. Authenticated calls take
 * a token from their tenant's bucket and from their API key's (or JWT subject's) bucket; calls
 * without valid credentials from their client IP's bucket. Admins are exempt by default (the
 * break-glass admin token must work during an incident).
 *
 * MVM_RATE_LIMITS overrides the defaults: comma-separated `<scope>.<class>=<rate>/s:<burst>`,
 * scope tenant|key|ip, class read|mutation, e.g. `tenant.read=200/s:400,ip.mutation=1/s:5`.
 * MVM_RATE_LIMITS=off disables limiting; MVM_RATE_LIMIT_ADMINS=1 limits admins too.
 */
import type { Principal } from '../../core/authz.js';
import type { Bucket } from '../../core/ports/ratelimit.js';

export type RateClass = 'read' | 'mutation';
export type Scope = 'tenant' | 'key' | 'ip';
export interface Rate {
  perSec: number;
  burst: number;
}

export interface RateLimitPolicy {
  enabled: boolean;
  limitAdmins: boolean;
  rates: Record<Scope, Record<RateClass, Rate>>;
}

export const DEFAULT_POLICY: RateLimitPolicy = {
  enabled: true,
  limitAdmins: false,
  rates: {
    tenant: { read: { perSec: 200, burst: 400 }, mutation: { perSec: 50, burst: 100 } },
    key: { read: { perSec: 100, burst: 200 }, mutation: { perSec: 20, burst: 40 } },
    ip: { read: { perSec: 20, burst: 40 }, mutation: { perSec: 5, burst: 10 } },
  },
};

export function parsePolicy(spec: string | undefined, limitAdmins = false): RateLimitPolicy {
  const p: RateLimitPolicy = structuredClone(DEFAULT_POLICY);
  p.limitAdmins = limitAdmins;
  if (spec === undefined || spec.trim() === '') return p;
  if (spec.trim() === 'off') return { ...p, enabled: false };
  for (const part of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const m = /^(tenant|key|ip)\.(read|mutation)=(\d+(?:\.\d+)?)\/s:(\d+)$/.exec(part);
    if (!m) throw new Error(`MVM_RATE_LIMITS: cannot parse ${JSON.stringify(part)} (expected e.g. tenant.read=100/s:200)`);
    const rate = { perSec: Number(m[3]), burst: Number(m[4]) };
    if (rate.perSec <= 0 || rate.burst < 1) throw new Error(`MVM_RATE_LIMITS: ${part}: rate and burst must be positive`);
    p.rates[m[1] as Scope][m[2] as RateClass] = rate;
  }
  return p;
}

export function bucketsFor(policy: RateLimitPolicy, cls: RateClass, principal: Principal | undefined, ip: string): Bucket[] {
  if (!policy.enabled) return [];
  const b = (scope: Scope, id: string): Bucket => ({ key: `${scope}:${id}:${cls}`, capacity: policy.rates[scope][cls].burst, refillPerSec: policy.rates[scope][cls].perSec });
  if (!principal) return [b('ip', ip)];
  if (principal.role === 'admin' && !policy.limitAdmins) return [];
  return [b('tenant', principal.tenant), b('key', principal.keyId ?? `sub:${principal.subject}`)];
}
