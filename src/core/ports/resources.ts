/**
 * Tenant-scoped resources other than microVMs (security groups, snapshots,
 * volumes, images): one small generic port, so each new kind needs no new
 * storage code. Adapters: SQLite (standalone), Kubernetes CRs (cluster mode).
 */
export interface StoredResource<T> {
  kind: string;
  id: string;
  tenant: string;
  name: string;
  spec: T;
  resourceVersion: string;
  createdAt: string;
  updatedAt: string;
}

export interface ResourceStore {
  /** ALREADY_EXISTS when the tenant has a resource of that kind and name. */
  create<T>(r: Omit<StoredResource<T>, 'resourceVersion' | 'createdAt' | 'updatedAt'>): Promise<StoredResource<T>>;
  get<T>(kind: string, id: string): Promise<StoredResource<T> | undefined>;
  getByName<T>(kind: string, tenant: string, name: string): Promise<StoredResource<T> | undefined>;
  list<T>(kind: string, opts?: { tenant?: string }): Promise<Array<StoredResource<T>>>;
  /** Read-modify-write; CONFLICT when expectedVersion does not match; NOT_FOUND when missing. */
  update<T>(kind: string, id: string, mutate: (spec: T) => T, expectedVersion?: string): Promise<StoredResource<T>>;
  /** true when it deleted the resource, false when there was none. */
  delete(kind: string, id: string): Promise<boolean>;
  /**
   * `cb` is told of every create, update and delete this store makes (before the write returns;
   * adapters may report other writers' changes too). Refused writes tell nothing. A subscriber's
   * failure is its own: it never fails the write or keeps the other subscribers from being told.
   */
  watch(cb: (kind: string, id: string) => void): () => void;
}
