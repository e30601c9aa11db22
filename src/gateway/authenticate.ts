/** Authentication at the gateway: the bearer token of a call resolved to a Principal by a chain of authenticators (src/auth/). */
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { Principal } from '../core/authz.js';
import type { Authenticator } from '../core/ports/auth.js';

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
