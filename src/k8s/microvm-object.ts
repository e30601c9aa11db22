/**
 * A MicroVM (the domain object) as a `MicroVM` custom resource, and back. Shared by the store
 * adapter (src/store/kubernetes) and, later, the operator and the node agent.
 *
 *   metadata.name        = vm.name (unique per tenant, like the API's names)
 *   metadata.namespace   = the tenant's namespace (`<partition>-<tenant>`, or the tenant id)
 *   metadata.labels      = microvm.service/id, microvm.service/tenant, [microvm.service/partition],
 *                          app.kubernetes.io/managed-by, plus spec.labels mirrored (see mirrorLabels)
 *   metadata.annotations = microvm.service/created-at and /updated-at (ms precision; Kubernetes'
 *                          timestamps have seconds), microvm.service/disk-mib (quota accounting)
 *   spec                 = vm.spec + desiredState
 *   status               = vm.status + updatedAt (time of the last status write)
 *   metadata.generation / resourceVersion = vm.generation / vm.resourceVersion (Kubernetes owns both)
 */
import { createHash } from 'node:crypto';
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { MicroVM } from '../core/microvm.js';
import { vmResources, type VmResources } from '../core/quota.js';
import type { MicroVMSpecT, MicroVMStatusT } from '../core/schema.js';
import { API_VERSION } from './crd.js';

export const LABEL_ID = 'microvm.service/id';
export const LABEL_TENANT = 'microvm.service/tenant';
export const LABEL_PARTITION = 'microvm.service/partition';
export const LABEL_MANAGED_BY = 'app.kubernetes.io/managed-by';
export const MANAGER = 'microvm-service';
export const ANN_CREATED_AT = 'microvm.service/created-at';
export const ANN_UPDATED_AT = 'microvm.service/updated-at';
export const ANN_DISK_MIB = 'microvm.service/disk-mib';
export const ANN_EVENT_TIME = 'microvm.service/time';

/** What a MicroVM object holds against its tenant's quota (the API records the disk it admitted). */
export function resourcesOfObject(o: { spec: MicroVMSpecT; metadata: { annotations?: Record<string, string> } }): VmResources {
  const r = vmResources(o.spec);
  const disk = o.metadata.annotations?.[ANN_DISK_MIB];
  return disk !== undefined && Number.isFinite(Number(disk)) ? { ...r, diskMiB: Number(disk) } : r;
}

export interface ObjectMeta {
  name?: string;
  generateName?: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  creationTimestamp?: string | Date;
  deletionTimestamp?: string | Date;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  finalizers?: string[];
}

export type MicroVMObjectSpec = MicroVMSpecT & { desiredState?: MicroVM['desiredState'] };
export type MicroVMObjectStatus = MicroVMStatusT & { updatedAt?: string };

export interface MicroVMObject {
  apiVersion: string;
  kind: 'MicroVM';
  metadata: ObjectMeta;
  spec: MicroVMObjectSpec;
  status?: MicroVMObjectStatus;
}

const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const LABEL_VALUE = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/;
const LABEL_NAME = /^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;
/** Label prefixes that are ours or Kubernetes': a user label under them is mirrored hashed. */
const RESERVED_PREFIXES = ['microvm.service', 'kubernetes.io', 'k8s.io'];

export const isLabelValue = (v: string): boolean => v.length <= 63 && LABEL_VALUE.test(v);

function isPlainLabelKey(k: string): boolean {
  const slash = k.indexOf('/');
  const prefix = slash >= 0 ? k.slice(0, slash) : undefined;
  const name = slash >= 0 ? k.slice(slash + 1) : k;
  if (name.length === 0 || name.length > 63 || !LABEL_NAME.test(name)) return false;
  if (prefix === undefined) return true;
  if (prefix.length > 253 || !DNS_SUBDOMAIN.test(prefix)) return false;
  return !RESERVED_PREFIXES.some((r) => prefix === r || prefix.endsWith(`.${r}`));
}

const hash = (s: string): string => createHash('sha256').update(s).digest('hex').slice(0, 40);

/**
 * spec.labels as Kubernetes labels, so list-by-label is a server-side label selector. spec.labels
 * allow what Kubernetes labels do not (any value up to 63 characters, longer names, our reserved
 * prefixes); such a pair is mirrored as a hash (`label.microvm.service/<sha>` keys, `h.<sha>`
 * values). The mapping is deterministic, so a selector is mirrored the same way; the store still
 * checks spec.labels of what comes back (a hash collision cannot leak a wrong match).
 */
export function mirrorLabels(labels: Record<string, string> | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(labels ?? {})) {
    out[isPlainLabelKey(k) ? k : `label.microvm.service/${hash(k)}`] = isLabelValue(v) && !/^h\.[0-9a-f]{40}$/.test(v) ? v : `h.${hash(v)}`;
  }
  return out;
}

/** Tenants ↔ namespaces. A partition isolates installations (or test runs) sharing a cluster. */
export class TenantNamespaces {
  constructor(readonly partition?: string) {
    if (partition !== undefined && (!DNS_LABEL.test(partition) || partition.length > 30)) throw new Error(`partition ${JSON.stringify(partition)} must be a DNS label of at most 30 characters`);
  }

  namespaceOf(tenant: string): string {
    const ns = this.partition ? `${this.partition}-${tenant}` : tenant;
    if (ns.length > 63 || !DNS_LABEL.test(ns)) {
      throw new MvmError(ErrorCodes.VALIDATION_FAILED, `tenant ${JSON.stringify(tenant)} does not map to a Kubernetes namespace (${ns})`, {
        violations: [{ field: 'tenant', message: 'must be a DNS label (namespace name)' }],
      });
    }
    return ns;
  }

  tenantOf(namespace: string): string {
    return this.partition && namespace.startsWith(`${this.partition}-`) ? namespace.slice(this.partition.length + 1) : namespace;
  }

  /** Labels every object of ours carries. */
  systemLabels(tenant: string): Record<string, string> {
    return { [LABEL_MANAGED_BY]: MANAGER, [LABEL_TENANT]: tenant, ...(this.partition ? { [LABEL_PARTITION]: this.partition } : {}) };
  }

  /** Selector of everything of this installation (empty without a partition). */
  selector(): string[] {
    return this.partition ? [`${LABEL_PARTITION}=${this.partition}`] : [];
  }
}

const iso = (t: string | Date | undefined): string | undefined => (t === undefined ? undefined : typeof t === 'string' ? t : t.toISOString());

/** The status a VM has before anyone wrote one (create does not write a default status). */
export const isInitialStatus = (s: MicroVMStatusT): boolean => s.phase === 'Pending' && s.conditions.length === 0 && Object.keys(s).length === 2;

export function toObject(vm: MicroVM, tn: TenantNamespaces, diskMiB?: number): MicroVMObject {
  const annotations: Record<string, string> = { [ANN_CREATED_AT]: vm.createdAt, [ANN_UPDATED_AT]: vm.updatedAt };
  if (diskMiB !== undefined) annotations[ANN_DISK_MIB] = String(diskMiB);
  return {
    apiVersion: API_VERSION,
    kind: 'MicroVM',
    metadata: {
      name: vm.name,
      namespace: tn.namespaceOf(vm.tenant),
      labels: { ...mirrorLabels(vm.spec.labels), ...tn.systemLabels(vm.tenant), [LABEL_ID]: vm.id },
      annotations,
    },
    spec: { ...vm.spec, desiredState: vm.desiredState },
  };
}

/** `obj` with vm's spec, desiredState and labels: the body of a main-resource write. */
export function withSpec(obj: MicroVMObject, prev: MicroVM, next: MicroVM, now: string): MicroVMObject {
  const labels = { ...(obj.metadata.labels ?? {}) };
  for (const k of Object.keys(mirrorLabels(prev.spec.labels))) delete labels[k];
  Object.assign(labels, mirrorLabels(next.spec.labels), { [LABEL_ID]: next.id });
  return {
    ...obj,
    metadata: { ...obj.metadata, labels, annotations: { ...(obj.metadata.annotations ?? {}), [ANN_UPDATED_AT]: now } },
    spec: { ...next.spec, desiredState: next.desiredState },
  };
}

export function fromObject(obj: MicroVMObject, tn: TenantNamespaces): MicroVM {
  const m = obj.metadata;
  const { desiredState, ...spec } = obj.spec;
  const { updatedAt: statusAt, ...status } = obj.status ?? { phase: 'Pending' as const, conditions: [] };
  const createdAt = m.annotations?.[ANN_CREATED_AT] ?? iso(m.creationTimestamp) ?? new Date(0).toISOString();
  const specAt = m.annotations?.[ANN_UPDATED_AT] ?? createdAt;
  return {
    id: m.labels?.[LABEL_ID] ?? m.uid ?? '',
    name: m.name ?? '',
    tenant: m.labels?.[LABEL_TENANT] ?? tn.tenantOf(m.namespace ?? ''),
    spec: spec as MicroVMSpecT,
    desiredState: desiredState ?? 'Running',
    status: { ...status, conditions: status.conditions ?? [] },
    generation: m.generation ?? 1,
    resourceVersion: m.resourceVersion ?? '0',
    createdAt,
    updatedAt: statusAt !== undefined && statusAt > specAt ? statusAt : specAt,
  };
}
