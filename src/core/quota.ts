/** Tenant quotas: limits, usage, and the one admission check (atomic in the store adapters). */
import { ErrorCodes, MvmError } from './errors.js';
import { parseQuantityMiB, type MicroVMSpec } from './microvm.js';

/** Limits of a tenant; an absent limit is unlimited. */
export interface Quotas {
  vms?: number;
  vcpu?: number;
  memoryMiB?: number;
  diskMiB?: number;
  snapshots?: number;
  volumes?: number;
  /** Host ports published by the tenant's microVMs (src/core/host-ports.ts). */
  hostPorts?: number;
}

export const QUOTA_RESOURCES = ['vms', 'vcpu', 'memoryMiB', 'diskMiB', 'snapshots', 'volumes', 'hostPorts'] as const;
export type QuotaResource = (typeof QUOTA_RESOURCES)[number];
export type Usage = Record<QuotaResource, number>;

export const emptyUsage = (): Usage => ({ vms: 0, vcpu: 0, memoryMiB: 0, diskMiB: 0, snapshots: 0, volumes: 0, hostPorts: 0 });

/** What one microVM holds against its tenant's quota. */
export interface VmResources {
  vcpu: number;
  memoryMiB: number;
  diskMiB: number;
  hostPorts: number;
}

/**
 * Disk counted for a VM: its root disk (the requested size, at least the image's size). Volumes
 * are resources of their own, reserved when they are created (src/core/volumes.ts).
 */
export function vmResources(spec: MicroVMSpec, rootImageMiB = 0): VmResources {
  const root = Math.max(spec.rootfs?.size ? parseQuantityMiB(spec.rootfs.size, 'rootfs.size') : 0, rootImageMiB);
  return { vcpu: spec.vcpu, memoryMiB: parseQuantityMiB(spec.memory, 'memory'), diskMiB: root, hostPorts: spec.ports?.length ?? 0 };
}

/**
 * Refuse when adding `add` to `used` passes a limit. Only dimensions that grow are checked, so a
 * tenant above a lowered limit can still shrink or relabel what it has.
 */
export function checkQuota(tenant: string, limits: Quotas, used: Usage, add: Partial<Usage>): void {
  for (const r of QUOTA_RESOURCES) {
    const delta = add[r] ?? 0;
    const limit = limits[r];
    if (delta <= 0 || limit === undefined) continue;
    if (used[r] + delta > limit) {
      throw new MvmError(ErrorCodes.QUOTA_EXCEEDED, `quota of tenant ${tenant} exceeded: ${r} would be ${used[r] + delta}, limit ${limit}`, {
        details: { tenant, resource: r, limit, used: used[r], requested: delta },
      });
    }
  }
}
