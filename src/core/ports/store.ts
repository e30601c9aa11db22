/**
 * The store port: the source of truth for desired and observed state.
 * Adapters: src/store/sqlite (standalone) and src/store/kubernetes (cluster mode).
 * Every method is async so that both adapters fit; every acknowledged write is durable.
 */
import type { MicroVM, Phase } from '../microvm.js';
import type { Quotas } from '../quota.js';
import type { VmEventT } from '../schema.js';

/**
 * Quota admission done by the store in the same atomic step as the write, so concurrent
 * creates can never pass a limit together. `diskMiB` is what the VM's disks count (computed by
 * the service, which knows the image sizes); on update the store keeps the VM's previous disk.
 */
export interface Admission {
  limits: Quotas;
  diskMiB?: number;
}

export interface WriteOptions {
  admission?: Admission;
}

export interface ListOptions {
  tenant?: string;
  name?: string;
  phase?: Phase;
  /** Equality label selector: {"app": "web"} matches labels.app == "web". */
  labels?: Record<string, string>;
  limit?: number;
  /** Opaque cursor from a previous page's `nextCursor`. */
  cursor?: string;
}

export interface Page<T> {
  items: T[];
  nextCursor?: string;
}

/** An event as written and read; the store assigns `seq` (core/schema.ts VmEvent is the wire form). */
export type VmEvent = Omit<VmEventT, 'seq'> & { seq?: number };

/** A microVM as its stored JSON text, plus the fields needed to authorise and tag it. */
export interface RawVm {
  json: string;
  tenant: string;
  resourceVersion: string;
}

export interface StoreChange {
  kind: 'vm';
  id: string;
  deleted: boolean;
}

export interface Store {
  /** Insert a new VM; ALREADY_EXISTS when the tenant already has one of that name; QUOTA_EXCEEDED past the admission's limits. */
  createVm(vm: MicroVM, opts?: WriteOptions): Promise<MicroVM>;
  getVm(id: string): Promise<MicroVM | undefined>;
  listVms(opts?: ListOptions): Promise<Page<MicroVM>>;
  /**
   * Optional fast paths for the API's reads: the stored JSON document as is (no parse, no
   * re-serialisation), with what tenancy and ETags need beside it.
   */
  getVmRaw?(id: string): Promise<RawVm | undefined>;
  listVmsRaw?(opts?: ListOptions): Promise<Page<string>>;
  /**
   * Read-modify-write under the store's own concurrency control. `mutate` gets the
   * current VM and returns the next one; `expectedVersion` (resourceVersion) makes
   * it conditional (CONFLICT on mismatch). The store bumps resourceVersion/updatedAt.
   */
  updateVm(id: string, mutate: (vm: MicroVM) => MicroVM, expectedVersion?: string, opts?: WriteOptions): Promise<MicroVM>;
  deleteVm(id: string): Promise<void>;
  appendEvent(e: VmEvent): Promise<void>;
  listEvents(opts: { vmId?: string; tenant?: string; afterSeq?: number; limit?: number }): Promise<VmEvent[]>;
  /** Subscribe to changes (for the controller and `wait`). Returns an unsubscribe function. */
  watch(cb: (c: StoreChange) => void): () => void;
  close(): Promise<void>;
}
