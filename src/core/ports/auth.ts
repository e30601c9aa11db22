/** The authentication port: a bearer token resolved to a Principal. Adapters: src/auth/ (API keys, JWT/OIDC, the admin token). */
import type { Principal } from '../authz.js';

export interface Authenticator {
  /** A principal; undefined when this authenticator does not recognise the kind of token; or throws UNAUTHENTICATED with a reason. */
  authenticate(token: string): Promise<Principal | undefined>;
}
