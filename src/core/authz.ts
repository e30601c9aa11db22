/**
 * Roles and permissions: the one table of who may do what. Every REST route and
 * every gRPC method declares the permission it needs (src/gateway/operations.ts);
 * the gateway checks it with `assertCan` before any use case runs. Tenancy
 * (which tenant's objects a principal sees) is enforced by the use cases.
 */
import { ErrorCodes, MvmError } from './errors.js';

export const ROLES = ['admin', 'tenant-admin', 'member', 'viewer'] as const;
export type Role = (typeof ROLES)[number];

export interface Principal {
  /** Who: the JWT `sub`, `apikey:<id>`, or `admin` for the static admin token. */
  subject: string;
  /** The tenant the principal acts in (admins: the system tenant unless they name another). */
  tenant: string;
  role: Role;
  /** Id of the API key used, when authenticated by an API key. */
  keyId?: string;
  /** How the principal authenticated: admin-token, jwt, oidc, apikey. */
  method?: 'admin-token' | 'jwt' | 'oidc' | 'apikey';
}

export const SYSTEM_TENANT = 'default';

export const PERMISSIONS = {
  'microvms:read': 'Read microVMs of the tenant: get, list, wait, console, metrics, events',
  'microvms:write': 'Create, update, start, stop and delete microVMs of the tenant',
  'microvms:exec': 'Run commands in, copy files to and from, and connect to ports of the guests of the tenant\'s microVMs',
  'apikeys:read': 'List and read the API keys of the tenant (never their secrets)',
  'apikeys:write': 'Create and revoke API keys of the tenant',
  'securitygroups:read': 'Read security groups of the tenant',
  'securitygroups:write': 'Create, change and delete security groups of the tenant',
  'tenants:read': 'Read the own tenant and its quota usage',
  'tenants:admin': 'Create, list, change quotas and image policies of, and delete any tenant',
  'audit:read': 'Query the audit log (tenant-admins: entries of their tenant only)',
} as const;
export type Permission = keyof typeof PERMISSIONS;

const VIEWER: Permission[] = ['microvms:read', 'securitygroups:read', 'tenants:read'];
const MEMBER: Permission[] = [...VIEWER, 'microvms:write', 'microvms:exec'];
const TENANT_ADMIN: Permission[] = [...MEMBER, 'apikeys:read', 'apikeys:write', 'securitygroups:write', 'audit:read'];

export const ROLE_PERMISSIONS: Record<Role, readonly Permission[]> = {
  admin: Object.keys(PERMISSIONS) as Permission[],
  'tenant-admin': TENANT_ADMIN,
  member: MEMBER,
  viewer: VIEWER,
};

export function isRole(s: unknown): s is Role {
  return typeof s === 'string' && (ROLES as readonly string[]).includes(s);
}

export function can(role: Role, perm: Permission): boolean {
  return ROLE_PERMISSIONS[role].includes(perm);
}

export function assertCan(p: Principal, perm: Permission): void {
  if (!can(p.role, perm)) {
    throw new MvmError(ErrorCodes.PERMISSION_DENIED, `role "${p.role}" lacks permission "${perm}"`, { details: { permission: perm, role: p.role } });
  }
}

/** Roles ordered by power, for "a key may not outrank its creator". */
export const ROLE_RANK: Record<Role, number> = { viewer: 0, member: 1, 'tenant-admin': 2, admin: 3 };

/**
 * The tenant a call acts in: the principal's own, or for admins the one they name.
 * A non-admin naming another tenant is refused.
 */
export function targetTenant(p: Principal, requested: string | undefined): string {
  if (requested === undefined || requested === '' || requested === p.tenant) return p.tenant;
  if (p.role === 'admin') return requested;
  throw new MvmError(ErrorCodes.PERMISSION_DENIED, `only admins may act in another tenant (you are in tenant ${p.tenant})`);
}

/**
 * The tenant a list is scoped to (one rule for every list route, REST and gRPC, docs/tenancy.md):
 * an admin sees every tenant, or the one named; anyone else sees their own tenant, and naming
 * another one is refused (403 PERMISSION_DENIED, as for acting in another tenant).
 */
export function listTenant(p: Principal, requested: string | undefined): string | undefined {
  if (requested === undefined || requested === '') return p.role === 'admin' ? undefined : p.tenant;
  return targetTenant(p, requested);
}
