/** Authentication at the gateway: bearer tokens resolved to a Principal by a chain of authenticators. */
import { createHash, timingSafeEqual } from 'node:crypto';
import { ErrorCodes, MvmError } from '../core/errors.js';
import { SYSTEM_TENANT, type Principal } from '../core/authz.js';

export interface Authenticator {
  /** A principal; undefined when this authenticator does not recognise the kind of token; or throws UNAUTHENTICATED with a reason. */
  authenticate(token: string): Promise<Principal | undefined>;
}

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

/** The standalone admin token (MVM_ADMIN_TOKEN or the generated <data dir>/admin.token). */
export class StaticTokenAuthenticator implements Authenticator {
  private readonly expected: Buffer;
  constructor(token: string) {
    this.expected = digest(token);
  }
  async authenticate(token: string): Promise<Principal | undefined> {
    return timingSafeEqual(digest(token), this.expected) ? { subject: 'admin', tenant: SYSTEM_TENANT, role: 'admin', method: 'admin-token' } : undefined;
  }
}

const unauth = (detail: string, reason: string): MvmError => new MvmError(ErrorCodes.UNAUTHENTICATED, detail, { details: { reason } });

export function bearerToken(header: string | undefined): string {
  if (!header) throw unauth('missing Authorization header (use "Authorization: Bearer <token>")', 'missing');
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!m) throw unauth('malformed Authorization header: expected "Bearer <token>"', 'malformed');
  return m[1]!;
}

export async function authenticate(chain: Authenticator[], header: string | undefined): Promise<Principal> {
  const token = bearerToken(header);
  for (const a of chain) {
    const p = await a.authenticate(token);
    if (p) return p;
  }
  throw unauth('invalid token', 'invalid');
}
