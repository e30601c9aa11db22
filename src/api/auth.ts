/** Authentication at the gateway: bearer tokens resolved to a Principal by a chain of authenticators. */
import { createHash, timingSafeEqual } from 'node:crypto';
import { ErrorCodes, MvmError } from '../core/errors.js';
import { SYSTEM_TENANT, type Principal } from '../core/service.js';

export interface Authenticator {
  /** A principal, undefined when this authenticator does not recognise the token, or throws UNAUTHENTICATED with a reason. */
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
    return timingSafeEqual(digest(token), this.expected) ? { subject: 'admin', tenant: SYSTEM_TENANT, role: 'admin' } : undefined;
  }
}

export function bearerToken(header: string | undefined): string {
  if (!header) throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'missing Authorization header (use "Authorization: Bearer <token>")');
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!m) throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'malformed Authorization header: expected "Bearer <token>"');
  return m[1]!;
}

export async function authenticate(chain: Authenticator[], header: string | undefined): Promise<Principal> {
  const token = bearerToken(header);
  for (const a of chain) {
    const p = await a.authenticate(token);
    if (p) return p;
  }
  throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'invalid token');
}
