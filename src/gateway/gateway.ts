/**
 * The gateway pipeline, shared by REST and gRPC so both enforce the same rules in the same order:
 *
 *   authenticate (bearer token) → rate limit (tenant + key buckets, or client IP without valid
 *   credentials) → 401 if authentication failed → permission of the operation (403) →
 *   idempotency (POST / mutating RPCs with a key) → the use case → audit (every mutation and
 *   every denied call) .
 */
import { createHash } from 'node:crypto';
import type { Logger } from 'pino';
import { assertCan, type Principal } from '../core/authz.js';
import type { AuditService } from '../core/audit.js';
import { ErrorCodes, MvmError, asMvmError } from '../core/errors.js';
import type { BeginResult, IdempotencyStore, StoredResponse } from '../core/ports/idempotency.js';
import type { RateDecision, RateLimitStore } from '../core/ports/ratelimit.js';
import { parseApiKeyToken } from '../core/tenancy.js';
import { authenticate } from './authenticate.js';
import type { Authenticator } from '../core/ports/auth.js';
import type { Operation } from './operations.js';
import { HTTP_STATUS } from './problem.js';
import { bucketsFor, type RateLimitPolicy } from './ratelimit/policy.js';

export interface CallInfo {
  transport: 'rest' | 'grpc';
  requestId: string;
  /** `POST /api/v1/microvms` or the gRPC method path. */
  method: string;
  sourceIp: string;
  userAgent?: string;
  /** The Authorization header / metadata value (never stored or logged). */
  authorization?: string;
}

export interface Admitted {
  principal?: Principal;
  decision?: RateDecision;
  error?: MvmError;
}

export interface Outcome {
  status: number;
  code?: string;
  reason?: string;
  resourceId?: string;
  /** Recorded in the audit entry (exec: argv and exit code; never input or output). */
  details?: Record<string, unknown>;
}

export interface GatewayOptions {
  authenticators: Authenticator[];
  limiter: RateLimitStore;
  policy: RateLimitPolicy;
  audit: AuditService;
  idempotency: IdempotencyStore;
  log: Logger;
  /** How long a stored response is replayed (default 24 h). */
  idempotencyTtlMs?: number;
}

export const IDEMPOTENCY_KEY_RE = /^[\x21-\x7e]{1,255}$/;

export class Gateway {
  constructor(readonly o: GatewayOptions) {}

  async admit(op: Operation, info: CallInfo): Promise<Admitted> {
    if (op.permission === 'public') return {};
    let principal: Principal | undefined;
    let authError: MvmError | undefined;
    try {
      principal = await authenticate(this.o.authenticators, info.authorization);
    } catch (e) {
      authError = asMvmError(e);
      if (authError.code !== ErrorCodes.UNAUTHENTICATED && authError.code !== ErrorCodes.UNAVAILABLE) authError = new MvmError(ErrorCodes.UNAUTHENTICATED, authError.message);
    }
    const buckets = bucketsFor(this.o.policy, op.rateClass, principal, info.sourceIp);
    let decision: RateDecision | undefined;
    if (buckets.length > 0) {
      decision = await this.o.limiter.take(buckets);
      if (!decision.allowed) {
        const secs = Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
        const scope = decision.tightest.key.split(':')[0];
        return {
          ...(principal ? { principal } : {}),
          decision,
          error: new MvmError(ErrorCodes.RATE_LIMITED, `rate limit of the ${scope === 'ip' ? 'client address' : scope} exceeded for ${op.rateClass}s; retry in ${secs} s`, {
            details: { retryAfterSeconds: secs },
          }),
        };
      }
    }
    if (authError || !principal) return { ...(decision ? { decision } : {}), error: authError ?? new MvmError(ErrorCodes.UNAUTHENTICATED, 'not authenticated') };
    if (op.permission !== 'authenticated') {
      try {
        assertCan(principal, op.permission);
      } catch (e) {
        return { principal, ...(decision ? { decision } : {}), error: asMvmError(e) };
      }
    }
    return { principal, ...(decision ? { decision } : {}) };
  }

  /** Audit the call when it mutated (or tried to) or was denied. Never throws. */
  async finish(op: Operation, info: CallInfo, principal: Principal | undefined, out: Outcome): Promise<void> {
    const denied = out.status === 401 || out.status === 403 || out.status === 429;
    if (!op.mutation && !denied) return;
    const attemptedKey = !principal && info.authorization ? parseApiKeyToken(info.authorization.replace(/^Bearer\s+/i, '').trim())?.id : undefined;
    await this.o.audit.record({
      time: new Date().toISOString(),
      requestId: info.requestId,
      transport: info.transport,
      ...(principal ? { subject: principal.subject, tenant: principal.tenant, role: principal.role, ...(principal.method ? { authMethod: principal.method } : {}) } : {}),
      ...(principal?.keyId ? { keyId: principal.keyId } : attemptedKey ? { keyId: attemptedKey } : {}),
      operation: op.id,
      verb: op.verb,
      resource: op.resource,
      ...(out.resourceId ? { resourceId: out.resourceId } : {}),
      method: info.method,
      sourceIp: info.sourceIp,
      ...(info.userAgent ? { userAgent: info.userAgent.slice(0, 200) } : {}),
      result: out.status < 400 ? 'allowed' : denied ? 'denied' : 'failed',
      status: out.status,
      ...(out.code ? { code: out.code } : {}),
      ...(out.reason ? { reason: out.reason.slice(0, 500) } : {}),
      ...(out.details ? { details: out.details } : {}),
    });
  }

  outcomeOf(e: MvmError, resourceId?: string): Outcome {
    return { status: HTTP_STATUS[e.code] ?? 500, code: e.code, reason: e.message, ...(resourceId ? { resourceId } : {}) };
  }

  // ---- idempotency -------------------------------------------------------

  scopeOf(p: Principal, transport: string, key: string, target: string): string {
    return `${p.tenant}\u0000${p.keyId ?? p.subject}\u0000${transport}\u0000${target}\u0000${key}`;
  }

  fingerprint(parts: unknown[]): string {
    return createHash('sha256').update(JSON.stringify(parts)).digest('hex');
  }

  async beginIdempotent(scope: string, fingerprint: string): Promise<BeginResult> {
    return this.o.idempotency.begin(scope, fingerprint, { ttlMs: this.o.idempotencyTtlMs ?? 86_400_000, lockMs: 60_000 });
  }

  completeIdempotent(scope: string, r: StoredResponse): Promise<void> {
    return this.o.idempotency.complete(scope, r);
  }

  abandonIdempotent(scope: string): Promise<void> {
    return this.o.idempotency.abandon(scope);
  }

  static idempotencyError(r: BeginResult): MvmError | undefined {
    if (r.state === 'mismatch') {
      return new MvmError(ErrorCodes.CONFLICT, 'Idempotency-Key was already used for a different request; use a new key for a new request', { details: { reason: 'idempotency-key-reused' } });
    }
    if (r.state === 'in-progress') {
      return new MvmError(ErrorCodes.CONFLICT, 'a request with this Idempotency-Key is still in progress; retry later', { details: { reason: 'idempotency-in-progress', retryAfterSeconds: 1 } });
    }
    return undefined;
  }
}

/** RateLimit-* response fields (IETF draft: limit, remaining, seconds to reset). */
export function rateLimitFields(d: RateDecision | undefined): Record<string, string> {
  if (!d) return {};
  const out: Record<string, string> = {
    'ratelimit-limit': String(d.tightest.capacity),
    'ratelimit-remaining': String(d.tightest.remaining),
    'ratelimit-reset': String(Math.ceil(d.tightest.resetMs / 1000)),
  };
  if (!d.allowed) out['retry-after'] = String(Math.max(1, Math.ceil(d.retryAfterMs / 1000)));
  return out;
}
