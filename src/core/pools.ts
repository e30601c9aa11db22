/**
 * MicroVMPools through the API (cluster mode, ADR 0033): list, get and scale. The pools are
 * MicroVMPool objects the operator's pool controller keeps; the API reads them and writes only
 * `spec.replicas`, through the scale subresource (what `kubectl scale` writes). Standalone mode has
 * no pools: the routes are not registered there.
 */
import { ErrorCodes, MvmError } from './errors.js';
import { listTenant, targetTenant, type Principal } from './authz.js';
import type { MicroVMPoolT } from './schema.js';

/** Where pools live (src/store/kubernetes/pool-store.ts). */
export interface PoolStore {
  list(tenant?: string): Promise<MicroVMPoolT[]>;
  get(tenant: string, name: string): Promise<MicroVMPoolT | undefined>;
  /** Set spec.replicas through the scale subresource; undefined when the pool does not exist. */
  scale(tenant: string, name: string, replicas: number): Promise<MicroVMPoolT | undefined>;
}

const notFound = (name: string): MvmError => new MvmError(ErrorCodes.NOT_FOUND, `microVM pool ${JSON.stringify(name)} does not exist`, { details: { kind: 'pool', id: name } });

export class PoolService {
  constructor(private readonly store: PoolStore) {}

  list(p: Principal, o: { tenant?: string } = {}): Promise<MicroVMPoolT[]> {
    return this.store.list(listTenant(p, o.tenant));
  }

  async get(p: Principal, name: string, o: { tenant?: string } = {}): Promise<MicroVMPoolT> {
    return (await this.store.get(targetTenant(p, o.tenant), name)) ?? Promise.reject(notFound(name));
  }

  async scale(p: Principal, name: string, replicas: number, o: { tenant?: string } = {}): Promise<MicroVMPoolT> {
    return (await this.store.scale(targetTenant(p, o.tenant), name, replicas)) ?? Promise.reject(notFound(name));
  }
}
