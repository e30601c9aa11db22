/** API keys as bearer tokens: `mvmk_<id>_<secret>`; the record is found by id, the secret checked against its hash. */
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { Principal } from '../core/authz.js';
import type { ApiKeyRecord, ApiKeyStore } from '../core/ports/apikeys.js';
import { API_KEY_PREFIX, keyState, parseApiKeyToken, secretMatches } from '../core/tenancy.js';
import type { Authenticator } from '../core/ports/auth.js';

const unauth = (reason: string, code: string): MvmError => new MvmError(ErrorCodes.UNAUTHENTICATED, reason, { details: { reason: code } });

/**
 * Verified keys are remembered for `cacheMs` (default 2 s) so a busy key costs neither a store
 * read nor a hash per call. Revocation through this process forgets the key at once (`forget`);
 * other API replicas (cluster mode) see it within `cacheMs`. Expiry is checked on every call.
 */
export class ApiKeyAuthenticator implements Authenticator {
  private readonly touched = new Map<string, number>();
  private readonly verified = new Map<string, { rec: ApiKeyRecord; until: number }>();
  constructor(
    private readonly keys: ApiKeyStore,
    private readonly o: { touchIntervalMs?: number; cacheMs?: number; now?: () => number } = {},
  ) {}

  forget(id: string): void {
    for (const [t, v] of this.verified) if (v.rec.id === id) this.verified.delete(t);
  }

  async authenticate(token: string): Promise<Principal | undefined> {
    if (!token.startsWith(API_KEY_PREFIX)) return undefined;
    const now = (this.o.now ?? Date.now)();
    let rec = this.verified.get(token)?.rec;
    if (rec && this.verified.get(token)!.until < now) {
      this.verified.delete(token);
      rec = undefined;
    }
    if (!rec) {
      const parsed = parseApiKeyToken(token);
      if (!parsed) throw unauth('malformed API key', 'malformed');
      rec = await this.keys.getKey(parsed.id);
      // Unknown id and wrong secret answer alike; a key's state is told only to whoever holds its secret.
      if (!rec || !secretMatches(parsed.secret, rec.secretHash)) throw unauth('invalid API key', 'invalid');
      const cacheMs = this.o.cacheMs ?? 2000;
      if (cacheMs > 0 && !rec.revokedAt) {
        if (this.verified.size >= 10_000) this.verified.clear();
        this.verified.set(token, { rec, until: now + cacheMs });
      }
    }
    const state = keyState(rec, now);
    if (state === 'revoked') throw unauth(`API key ${rec.id} was revoked at ${rec.revokedAt}`, 'revoked');
    if (state === 'expired') throw unauth(`API key ${rec.id} expired at ${rec.expiresAt}`, 'expired');
    const last = this.touched.get(rec.id) ?? 0;
    if (now - last > (this.o.touchIntervalMs ?? 60_000)) {
      this.touched.set(rec.id, now);
      void this.keys.touchKey(rec.id, new Date(now).toISOString()).catch(() => undefined);
    }
    return { subject: `apikey:${rec.tenant}/${rec.name}`, tenant: rec.tenant, role: rec.role, keyId: rec.id, method: 'apikey' };
  }
}
