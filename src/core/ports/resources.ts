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
  delete(kind: string, id: string): Promise<boolean>;
  watch(cb: (kind: string, id: string) => void): () => void;
}
