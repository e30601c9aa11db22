/** The standalone admin token (MVM_ADMIN_TOKEN or the generated <data dir>/admin.token) as an Authenticator. */
import { createHash, timingSafeEqual } from 'node:crypto';
import { SYSTEM_TENANT, type Principal } from '../core/authz.js';
import type { Authenticator } from '../core/ports/auth.js';

const digest = (s: string): Buffer => createHash('sha256').update(s).digest();

export class StaticTokenAuthenticator implements Authenticator {
  private readonly expected: Buffer;
  constructor(token: string) {
    this.expected = digest(token);
  }
  async authenticate(token: string): Promise<Principal | undefined> {
    return timingSafeEqual(digest(token), this.expected) ? { subject: 'admin', tenant: SYSTEM_TENANT, role: 'admin', method: 'admin-token' } : undefined;
  }
}
