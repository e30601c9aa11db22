/**
 * The tenant store port. A tenant is the unit of isolation and quota.
 *
 * Standalone: the SQLite adapter (src/store/sqlite/tenant-store.ts), tables `tenants`,
 * `quota_reservations` and `vm_usage` in the state file.
 * Cluster mode: a tenant *is* a Kubernetes namespace (the id is a DNS label for that reason):
 * create/delete = the namespace labelled `microvm.service/tenant=true`, quotas and display name
 * = annotations on it, resourceVersion = the namespace's; usage = the sum over the MicroVM CRs
 * of the namespace, and admission is a compare-and-swap of a per-namespace usage record (the
 * `Tenant` status / a ConfigMap with its resourceVersion) before the CR is created.
 */
import type { Page } from './store.js';
import type { Quotas, Usage } from '../quota.js';
import type { TenantT } from '../tenancy-schema.js';

export type Tenant = TenantT;

/** Something other than a microVM that counts against a quota (a snapshot, a volume). */
export interface Reservation {
  kind: 'snapshot' | 'volume';
  id: string;
  diskMiB: number;
}

export interface TenantStore {
  /** ALREADY_EXISTS when the id is taken. */
  createTenant(t: Tenant): Promise<Tenant>;
  getTenant(id: string): Promise<Tenant | undefined>;
  listTenants(opts: { limit?: number; cursor?: string }): Promise<Page<Tenant>>;
  /** Read-modify-write; `expectedVersion` makes it conditional (CONFLICT). NOT_FOUND when missing. */
  updateTenant(id: string, mutate: (t: Tenant) => Tenant, expectedVersion?: string): Promise<Tenant>;
  /** Removes the tenant record (the caller has checked ownership or cascaded). */
  deleteTenant(id: string, expectedVersion?: string): Promise<void>;
  /** Current usage: microVMs (any phase until removed) plus reservations. */
  usage(tenant: string): Promise<Usage>;
  /**
   * Atomically: refuse with QUOTA_EXCEEDED when the reservation would pass `limits`, else record it.
   * Idempotent per (kind, id). Used by snapshots and volumes.
   */
  reserve(tenant: string, r: Reservation, limits: Quotas): Promise<void>;
  release(tenant: string, kind: Reservation['kind'], id: string): Promise<void>;
  /** Reservations of a tenant (for cascade deletion and "owns resources" checks). */
  reservations(tenant: string): Promise<Reservation[]>;
}
