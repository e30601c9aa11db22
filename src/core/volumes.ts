/**
 * Persistent volumes (issue 6, ADR 0018): tenant resources holding an ext4 block device on a
 * storage backend, attached to microVMs at create time, outliving them.
 *
 * Rules: names are unique per tenant; a foreign volume is NOT_FOUND; one writer at a time (a
 * read-write attachment excludes every other attachment, read-only ones exclude a writer); an
 * attached volume cannot be deleted; a volume stays attached (InUse) until its VM is deleted.
 * Quotas: a volume reserves its size (disk) and one `volumes` slot, a volume snapshot the
 * volume's size and one `snapshots` slot, atomically in the tenant store before any work.
 * Crash safety: records are written `Creating` before the backend works and flipped to
 * Available/Ready after; `reconcile` removes what a dead process left half-done.
 */
import { ErrorCodes, MvmError, notFound, validationError, unprocessable } from './errors.js';
import { newId, parseQuantityMiB } from './microvm.js';
import type { ResourceStore, StoredResource } from './ports/resources.js';
import type { Store } from './ports/store.js';
import type { TenantStore } from './ports/tenants.js';
import type { VmVolumeDrive, VolumeAttacher, VolumeBackend } from './ports/volumes.js';
import type { CreateVolumeRequestT, MicroVMSpecT, VolumeSnapshotT, VolumeT } from './schema.js';
import { listTenant, targetTenant, type Principal } from './authz.js';
import { limitsOf } from './tenancy.js';

export const VOLUME_KIND = 'volume';
export const VOLUME_SNAPSHOT_KIND = 'volumesnapshot';

/** Largest volume: 16 TiB in MiB. */
const MAX_VOLUME_MIB = 16 * 1024 * 1024;
/** mountPath must survive the kernel command line (no spaces, no separators of `mvm.vol=`). */
const MOUNT_PATH_RE = /^\/[A-Za-z0-9._/-]*$/;

export interface Attachment {
  vmId: string;
  readOnly: boolean;
  mountPath: string;
  /** When it was claimed: reconcile leaves young claims alone (the VM record is written right after). */
  attachedAt?: string;
}

/** A claim whose VM record does not exist is stale only after this long (the create writes the VM right after claiming). */
const CLAIM_GRACE_MS = 60_000;

export interface VolumeSpec {
  size: string;
  sizeBytes: number;
  backend: string;
  readOnly: boolean;
  labels?: Record<string, string>;
  fromSnapshot?: string;
  phase: VolumeT['status']['phase'];
  message?: string;
  attachedTo: Attachment[];
  /** The node holding a volume of a node-local backend, when volumes live on several nodes (cluster mode). */
  node?: string;
}

export interface VolumeSnapshotSpec {
  volumeId: string;
  backend: string;
  sizeBytes: number;
  phase: VolumeSnapshotT['phase'];
  copyOnWrite: boolean;
  /** The node holding it (its volume's node), for a node-local backend in cluster mode. */
  node?: string;
}

export function toVolume(r: StoredResource<VolumeSpec>): VolumeT {
  const s = r.spec;
  return {
    id: r.id,
    name: r.name,
    tenant: r.tenant,
    size: s.size,
    sizeBytes: s.sizeBytes,
    backend: s.backend,
    readOnly: s.readOnly,
    ...(s.labels ? { labels: s.labels } : {}),
    ...(s.fromSnapshot ? { fromSnapshot: s.fromSnapshot } : {}),
    status: { phase: s.phase, ...(s.message ? { message: s.message } : {}), attachedTo: s.attachedTo, ...(s.node ? { node: s.node } : {}) },
    resourceVersion: r.resourceVersion,
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
  };
}

export function toVolumeSnapshot(r: StoredResource<VolumeSnapshotSpec>): VolumeSnapshotT {
  return {
    id: r.id,
    name: r.name,
    tenant: r.tenant,
    volumeId: r.spec.volumeId,
    backend: r.spec.backend,
    sizeBytes: r.spec.sizeBytes,
    phase: r.spec.phase,
    copyOnWrite: r.spec.copyOnWrite,
    ...(r.spec.node ? { node: r.spec.node } : {}),
    createdAt: r.createdAt,
  };
}

const MiB = 1024 * 1024;

export interface VolumeServiceOptions {
  resources: ResourceStore;
  store: Store;
  backends: VolumeBackend[];
  defaultBackend?: string;
  tenants?: TenantStore;
  log?: (msg: string, fields?: Record<string, unknown>) => void;
  /** How old a claim of a VM that does not exist must be before reconcile drops it (default 60 s). */
  claimGraceMs?: number;
  /**
   * Volumes on several nodes (cluster mode, ADR 0018): the node a new volume of a node-local
   * backend (capabilities().shared false) is created on. Without it volumes record no node.
   */
  placeVolume?: (o: { backend: string; tenant: string; sizeBytes: number }) => Promise<string>;
  /** The backend as it runs on `node` (cluster mode: through that node's agent); default: the backend itself. */
  backendOn?: (backend: VolumeBackend, node: string) => VolumeBackend;
  /**
   * How old a Creating/Deleting record must be before reconcile undoes it (default 0: this is the
   * only process). Several API replicas: long enough that none undoes another's work in progress.
   */
  staleAfterMs?: number;
  /** Sweep node-local backends for bytes without a record (default true; false where the bytes are on other nodes). */
  sweepLocal?: boolean;
}

export class VolumeService implements VolumeAttacher {
  private readonly backends = new Map<string, VolumeBackend>();
  private readonly defaultBackend: string;
  private stopWatch?: () => void;
  private timer?: NodeJS.Timeout;
  /** Volumes and snapshots being created or deleted by this process right now (reconcile leaves them alone). */
  private readonly inflight = new Set<string>();

  constructor(private readonly o: VolumeServiceOptions) {
    for (const b of o.backends) this.backends.set(b.name, b);
    this.defaultBackend = o.defaultBackend ?? o.backends[0]?.name ?? 'local';
  }

  private backend(name: string, field = 'backend'): VolumeBackend {
    const b = this.backends.get(name);
    if (!b) throw unprocessable(field, `unknown volume backend ${JSON.stringify(name)} (configured: ${[...this.backends.keys()].join(', ') || 'none'})`);
    return b;
  }

  /** The backend of a record, where its bytes are (its node, if it has one). */
  private at(backend: VolumeBackend, node: string | undefined): VolumeBackend {
    return node && this.o.backendOn ? this.o.backendOn(backend, node) : backend;
  }

  private log(msg: string, fields: Record<string, unknown> = {}): void {
    this.o.log?.(msg, fields);
  }

  // ---- volumes -------------------------------------------------------------

  async get(p: Principal, idOrName: string): Promise<StoredResource<VolumeSpec>> {
    const byId = await this.o.resources.get<VolumeSpec>(VOLUME_KIND, idOrName);
    if (byId && (p.role === 'admin' || byId.tenant === p.tenant)) return byId;
    const byName = await this.o.resources.getByName<VolumeSpec>(VOLUME_KIND, p.tenant, idOrName);
    if (byName) return byName;
    throw notFound('volume', idOrName);
  }

  async list(p: Principal, o: { tenant?: string } = {}): Promise<Array<StoredResource<VolumeSpec>>> {
    const tenant = listTenant(p, o.tenant);
    return this.o.resources.list<VolumeSpec>(VOLUME_KIND, tenant !== undefined ? { tenant } : {});
  }

  async create(p: Principal, req: CreateVolumeRequestT, o: { tenant?: string; fieldPrefix?: string } = {}): Promise<StoredResource<VolumeSpec>> {
    const tenant = targetTenant(p, o.tenant);
    const f = (name: string): string => `${o.fieldPrefix ?? ''}${name}`;
    let source: StoredResource<VolumeSnapshotSpec> | undefined;
    if (req.fromSnapshot !== undefined) {
      source = await this.getSnapshot({ ...p, tenant }, req.fromSnapshot).catch((e: unknown) => {
        if (e instanceof MvmError && e.code === ErrorCodes.NOT_FOUND) {
          throw new MvmError(ErrorCodes.NOT_FOUND, `volume snapshot ${JSON.stringify(req.fromSnapshot)} does not exist`, { violations: [{ field: f('fromSnapshot'), message: 'no such volume snapshot' }], details: { kind: 'volume snapshot', id: req.fromSnapshot } });
        }
        throw e;
      });
      if (source.spec.phase !== 'Ready') throw new MvmError(ErrorCodes.CONFLICT, `volume snapshot ${source.name} is ${source.spec.phase}, not Ready`, { violations: [{ field: f('fromSnapshot'), message: source.spec.phase }] });
      if (req.backend !== undefined && req.backend !== source.spec.backend) {
        throw unprocessable(f('backend'), `must be the snapshot's backend (${source.spec.backend}) or be omitted`);
      }
    }
    const backendName = source?.spec.backend ?? req.backend ?? this.defaultBackend;
    const backend = this.backend(backendName, f('backend'));
    let sizeMiB: number;
    let size: string;
    if (req.size !== undefined) {
      sizeMiB = parseQuantityMiB(req.size, f('size'));
      size = req.size;
      if (sizeMiB < 16) throw validationError(f('size'), 'must be at least 16Mi (an ext4 filesystem needs room for its journal)');
      if (sizeMiB > MAX_VOLUME_MIB) throw validationError(f('size'), 'must be at most 16384Gi');
      if (source && sizeMiB * MiB < source.spec.sizeBytes) throw unprocessable(f('size'), `must be at least the snapshot's size (${source.spec.sizeBytes / MiB}Mi)`);
    } else if (source) {
      sizeMiB = source.spec.sizeBytes / MiB;
      size = `${sizeMiB}Mi`;
    } else {
      throw validationError(f('size'), 'required (unless fromSnapshot is given)');
    }
    const caps = await backend.capabilities();
    if (!caps.available) throw new MvmError(ErrorCodes.UNAVAILABLE, `volume backend ${backendName} is not available: ${caps.reason ?? 'unknown reason'}`);
    // A node-local volume lives on one node: a restore where its snapshot is, a new one where placed.
    const node = caps.shared ? undefined : (source?.spec.node ?? (await this.o.placeVolume?.({ backend: backendName, tenant, sizeBytes: sizeMiB * MiB })));
    const id = newId('vol');
    const t = this.o.tenants ? await this.o.tenants.getTenant(tenant) : undefined;
    if (this.o.tenants && !t) throw notFound('tenant', tenant);
    // Reserve before any work: QUOTA_EXCEEDED leaves nothing behind.
    if (this.o.tenants && t) await this.o.tenants.reserve(tenant, { kind: 'volume', id, diskMiB: sizeMiB }, limitsOf(t));
    const rec = await this.o.resources
      .create<VolumeSpec>({
        kind: VOLUME_KIND,
        id,
        tenant,
        name: req.name,
        spec: {
          size,
          sizeBytes: sizeMiB * MiB,
          backend: backendName,
          readOnly: req.readOnly === true,
          ...(req.labels ? { labels: req.labels } : {}),
          ...(source ? { fromSnapshot: source.id } : {}),
          phase: 'Creating',
          attachedTo: [],
          ...(node ? { node } : {}),
        },
      })
      .catch(async (e: unknown) => {
        await this.o.tenants?.release(tenant, 'volume', id);
        if (e instanceof MvmError && e.code === ErrorCodes.ALREADY_EXISTS) {
          throw new MvmError(ErrorCodes.ALREADY_EXISTS, `tenant ${tenant} already has a volume named ${JSON.stringify(req.name)}`, { violations: [{ field: f('name'), message: 'already in use' }] });
        }
        throw e;
      });
    this.inflight.add(id);
    const where = this.at(backend, node);
    try {
      if (source) await where.cloneFromSnapshot(source.spec.volumeId, source.id, id, sizeMiB * MiB);
      else await where.create(id, sizeMiB * MiB);
      return await this.o.resources.update<VolumeSpec>(VOLUME_KIND, id, (s) => ({ ...s, phase: 'Available' }));
    } catch (e) {
      // Nothing half-done: no record, no bytes, no reservation.
      await where.delete(id).catch(() => undefined);
      await this.o.resources.delete(VOLUME_KIND, id);
      await this.o.tenants?.release(tenant, 'volume', id);
      throw e instanceof MvmError ? e : new MvmError(ErrorCodes.INTERNAL, `creating volume ${rec.name} on ${backendName} failed: ${(e as Error).message}`, { cause: e });
    } finally {
      this.inflight.delete(id);
    }
  }

  async delete(p: Principal, idOrName: string): Promise<void> {
    const v = await this.get(p, idOrName);
    if (v.spec.attachedTo.length > 0) {
      const vms = v.spec.attachedTo.map((a) => a.vmId);
      throw new MvmError(ErrorCodes.CONFLICT, `volume ${v.name} is attached to microVM(s) ${vms.join(', ')}; delete them first`, { details: { attachedTo: vms } });
    }
    const snaps = (await this.o.resources.list<VolumeSnapshotSpec>(VOLUME_SNAPSHOT_KIND, { tenant: v.tenant })).filter((s) => s.spec.volumeId === v.id);
    if (snaps.length > 0) {
      throw new MvmError(ErrorCodes.CONFLICT, `volume ${v.name} has snapshot(s) ${snaps.map((s) => s.name).join(', ')}; delete them first`, { details: { snapshots: snaps.map((s) => s.id) } });
    }
    // Deleting first, atomically re-checking attachments: a concurrent VM create cannot claim it meanwhile.
    await this.o.resources.update<VolumeSpec>(VOLUME_KIND, v.id, (s) => {
      if (s.attachedTo.length > 0) throw new MvmError(ErrorCodes.CONFLICT, `volume ${v.name} was just attached to ${s.attachedTo.map((a) => a.vmId).join(', ')}`);
      return { ...s, phase: 'Deleting' };
    });
    this.inflight.add(v.id);
    try {
      await this.finishDelete(v);
    } finally {
      this.inflight.delete(v.id);
    }
  }

  private async finishDelete(v: StoredResource<VolumeSpec>): Promise<void> {
    const b = this.backends.get(v.spec.backend);
    if (!b) throw new MvmError(ErrorCodes.UNAVAILABLE, `volume backend ${v.spec.backend} of volume ${v.name} is not configured`);
    await this.at(b, v.spec.node).delete(v.id);
    await this.o.resources.delete(VOLUME_KIND, v.id);
    await this.o.tenants?.release(v.tenant, 'volume', v.id);
  }

  // ---- volume snapshots ------------------------------------------------------

  async getSnapshot(p: Principal, idOrName: string): Promise<StoredResource<VolumeSnapshotSpec>> {
    const byId = await this.o.resources.get<VolumeSnapshotSpec>(VOLUME_SNAPSHOT_KIND, idOrName);
    if (byId && (p.role === 'admin' || byId.tenant === p.tenant)) return byId;
    const byName = await this.o.resources.getByName<VolumeSnapshotSpec>(VOLUME_SNAPSHOT_KIND, p.tenant, idOrName);
    if (byName) return byName;
    throw notFound('volume snapshot', idOrName);
  }

  async listSnapshots(p: Principal, o: { volumeId?: string; tenant?: string } = {}): Promise<Array<StoredResource<VolumeSnapshotSpec>>> {
    const tenant = listTenant(p, o.tenant);
    const all = await this.o.resources.list<VolumeSnapshotSpec>(VOLUME_SNAPSHOT_KIND, tenant !== undefined ? { tenant } : {});
    return o.volumeId ? all.filter((s) => s.spec.volumeId === o.volumeId) : all;
  }

  async snapshot(p: Principal, volumeIdOrName: string, name: string): Promise<StoredResource<VolumeSnapshotSpec>> {
    const v = await this.get(p, volumeIdOrName);
    if (v.spec.phase !== 'Available' && v.spec.phase !== 'InUse') throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `volume ${v.name} is ${v.spec.phase}`);
    const backend = this.backend(v.spec.backend);
    const caps = await backend.capabilities();
    if (!caps.atomicSnapshots) {
      // A plain copy of a device a running guest writes to is torn: only when no writer runs.
      for (const a of v.spec.attachedTo.filter((x) => !x.readOnly)) {
        const vm = await this.o.store.getVm(a.vmId);
        if (vm && !['Stopped', 'Failed', 'Pending'].includes(vm.status.phase)) {
          throw new MvmError(ErrorCodes.CONFLICT, `volume ${v.name} is written by running microVM ${a.vmId} and backend ${v.spec.backend} has no atomic snapshots; stop the microVM first`, {
            details: { vmId: a.vmId, phase: vm.status.phase },
          });
        }
      }
    }
    const id = newId('vsnap');
    const t = this.o.tenants ? await this.o.tenants.getTenant(v.tenant) : undefined;
    if (this.o.tenants && t) await this.o.tenants.reserve(v.tenant, { kind: 'snapshot', id, diskMiB: v.spec.sizeBytes / MiB }, limitsOf(t));
    await this.o.resources
      .create<VolumeSnapshotSpec>({
        kind: VOLUME_SNAPSHOT_KIND,
        id,
        tenant: v.tenant,
        name,
        spec: { volumeId: v.id, backend: v.spec.backend, sizeBytes: v.spec.sizeBytes, phase: 'Creating', copyOnWrite: false, ...(v.spec.node ? { node: v.spec.node } : {}) },
      })
      .catch(async (e: unknown) => {
        await this.o.tenants?.release(v.tenant, 'snapshot', id);
        throw e;
      });
    this.inflight.add(id);
    const where = this.at(backend, v.spec.node);
    try {
      const r = await where.snapshot(v.id, id);
      return await this.o.resources.update<VolumeSnapshotSpec>(VOLUME_SNAPSHOT_KIND, id, (s) => ({ ...s, phase: 'Ready', copyOnWrite: r.copyOnWrite }));
    } catch (e) {
      await where.deleteSnapshot(v.id, id).catch(() => undefined);
      await this.o.resources.delete(VOLUME_SNAPSHOT_KIND, id);
      await this.o.tenants?.release(v.tenant, 'snapshot', id);
      throw e;
    } finally {
      this.inflight.delete(id);
    }
  }

  async deleteSnapshot(p: Principal, idOrName: string): Promise<void> {
    const s = await this.getSnapshot(p, idOrName);
    await this.at(this.backend(s.spec.backend), s.spec.node).deleteSnapshot(s.spec.volumeId, s.id);
    await this.o.resources.delete(VOLUME_SNAPSHOT_KIND, s.id);
    await this.o.tenants?.release(s.tenant, 'snapshot', s.id);
  }

  // ---- attachment to microVMs --------------------------------------------------

  /**
   * Admission of a microVM's `volumes`: each names a volume of the tenant, or (with `size`) one is
   * created; each is claimed for `vmId` (InUse) under the one-writer rule. All or nothing.
   */
  async claim(p: Principal, spec: MicroVMSpecT, tenant: string, vmId: string): Promise<void> {
    const vols = spec.volumes ?? [];
    const mounts = new Set<string>();
    for (const [i, v] of vols.entries()) {
      if (!MOUNT_PATH_RE.test(v.mountPath) || v.mountPath === '/' || v.mountPath.split('/').includes('..')) {
        throw validationError(`volumes[${i}].mountPath`, 'must be an absolute path of letters, digits, ".", "_", "-" and "/", not "/" and without ".."');
      }
      if (mounts.has(v.mountPath)) throw unprocessable(`volumes[${i}].mountPath`, `duplicate mountPath ${v.mountPath}`);
      mounts.add(v.mountPath);
    }
    const scoped: Principal = { ...p, tenant };
    const claimed: string[] = [];
    const created: string[] = [];
    try {
      for (const [i, v] of vols.entries()) {
        let vol = await this.o.resources.getByName<VolumeSpec>(VOLUME_KIND, tenant, v.name);
        if (!vol) {
          if (!v.size) {
            throw new MvmError(ErrorCodes.NOT_FOUND, `volumes[${i}].name: tenant ${tenant} has no volume named ${JSON.stringify(v.name)} (give a size to create one)`, {
              violations: [{ field: `volumes[${i}].name`, message: 'no such volume' }],
              details: { kind: 'volume', id: v.name },
            });
          }
          vol = await this.create(scoped, { name: v.name, size: v.size }, { tenant, fieldPrefix: `volumes[${i}].` });
          created.push(vol.id);
        } else if (v.size && parseQuantityMiB(v.size, `volumes[${i}].size`) * MiB > vol.spec.sizeBytes) {
          throw unprocessable(`volumes[${i}].size`, `volume ${v.name} exists with size ${vol.spec.size}; it is not grown on attach`);
        }
        const readOnly = v.readOnly === true || vol.spec.readOnly;
        await this.o.resources.update<VolumeSpec>(VOLUME_KIND, vol.id, (s) => {
          if (s.phase !== 'Available' && s.phase !== 'InUse') throw new MvmError(ErrorCodes.CONFLICT, `volumes[${i}].name: volume ${v.name} is ${s.phase}`, { violations: [{ field: `volumes[${i}].name`, message: s.phase }] });
          if (s.readOnly && v.readOnly === false) throw unprocessable(`volumes[${i}].readOnly`, `volume ${v.name} is read-only`);
          const others = s.attachedTo.filter((a) => a.vmId !== vmId);
          const writer = others.find((a) => !a.readOnly);
          if (writer || (!readOnly && others.length > 0)) {
            throw new MvmError(
              ErrorCodes.CONFLICT,
              `volumes[${i}].name: volume ${v.name} is attached ${writer ? 'read-write' : 'read-only'} to microVM ${(writer ?? others[0])!.vmId}; ` +
                `one writer at a time${readOnly ? '' : ' (attach it readOnly, or delete that microVM first)'}`,
              { violations: [{ field: `volumes[${i}].name`, message: 'in use' }], details: { volume: vol!.id, attachedTo: others } },
            );
          }
          const mine = s.attachedTo.find((a) => a.vmId === vmId);
          return { ...s, phase: 'InUse', attachedTo: [...others, { vmId, readOnly, mountPath: v.mountPath, attachedAt: mine?.attachedAt ?? new Date().toISOString() }] };
        });
        claimed.push(vol.id);
      }
    } catch (e) {
      await this.releaseIds(claimed, vmId);
      for (const id of created) {
        const r = await this.o.resources.get<VolumeSpec>(VOLUME_KIND, id);
        if (r) await this.finishDelete(r).catch(() => undefined);
      }
      throw e;
    }
  }

  /** Detach `vmId` from every volume (its VM is gone); volumes created for it stay (they outlive it). */
  async releaseVm(vmId: string): Promise<void> {
    const ids = (await this.o.resources.list<VolumeSpec>(VOLUME_KIND)).filter((v) => v.spec.attachedTo.some((a) => a.vmId === vmId)).map((v) => v.id);
    await this.releaseIds(ids, vmId);
  }

  private async releaseIds(ids: string[], vmId: string): Promise<void> {
    for (const id of ids) {
      await this.o.resources
        .update<VolumeSpec>(VOLUME_KIND, id, (s) => {
          const attachedTo = s.attachedTo.filter((a) => a.vmId !== vmId);
          return { ...s, attachedTo, phase: s.phase === 'InUse' && attachedTo.length === 0 ? 'Available' : s.phase };
        })
        .catch((e: unknown) => {
          if (!(e instanceof MvmError && e.code === ErrorCodes.NOT_FOUND)) throw e;
        });
    }
  }

  /** The node agent, starting a VM: map each of its volumes on this node, in spec order (vdb, vdc, ...). */
  async attachForVm(vm: { id: string; tenant: string; spec: { volumes?: Array<{ name: string; mountPath: string; readOnly?: boolean }> } }, node: string): Promise<VmVolumeDrive[]> {
    const out: VmVolumeDrive[] = [];
    try {
      for (const [i, v] of (vm.spec.volumes ?? []).entries()) {
        const vol = await this.o.resources.getByName<VolumeSpec>(VOLUME_KIND, vm.tenant, v.name);
        const att = vol?.spec.attachedTo.find((a) => a.vmId === vm.id);
        if (!vol || !att) throw new MvmError(ErrorCodes.CONFLICT, `volumes[${i}]: volume ${v.name} is not attached to microVM ${vm.id} (deleted or never claimed)`);
        if (vol.spec.node && vol.spec.node !== node) throw new MvmError(ErrorCodes.CONFLICT, `volumes[${i}]: volume ${v.name} lives on node ${vol.spec.node}, not on ${node}`);
        const info = await this.backend(vol.spec.backend).attach(vol.id, node, { readOnly: att.readOnly, holder: vm.id });
        out.push({ name: v.name, volumeId: vol.id, path: info.path, readOnly: att.readOnly, mountPath: att.mountPath });
      }
    } catch (e) {
      await this.detachForVm(vm.id, node).catch(() => undefined);
      throw e;
    }
    return out;
  }

  /** The node agent, stopping a VM: unmap its volumes on this node (the claim stays until the VM is deleted). */
  async detachForVm(vmId: string, node: string): Promise<void> {
    for (const v of await this.o.resources.list<VolumeSpec>(VOLUME_KIND)) {
      if (!v.spec.attachedTo.some((a) => a.vmId === vmId)) continue;
      await this.backends.get(v.spec.backend)?.detach(v.id, node, { holder: vmId });
    }
  }

  // ---- reconcile ------------------------------------------------------------------

  /**
   * Measure, then act: finish or undo what a dead process left (Creating/Deleting records and
   * their bytes, leftovers of node-local backends, bytes without a record), and drop attachments
   * of microVMs that no longer exist.
   */
  async reconcile(): Promise<{ removed: string[]; released: string[] }> {
    const removed: string[] = [];
    const released: string[] = [];
    const vols = await this.o.resources.list<VolumeSpec>(VOLUME_KIND);
    for (const v of vols) {
      if (this.inflight.has(v.id)) continue;
      if ((v.spec.phase === 'Creating' || v.spec.phase === 'Deleting') && this.stale(v)) {
        await this.finishDelete(v).then(
          () => removed.push(v.id),
          (e: Error) => this.log('volume cleanup failed', { volume: v.id, err: e.message }),
        );
        continue;
      }
      for (const a of v.spec.attachedTo) {
        if (a.attachedAt && Date.now() - Date.parse(a.attachedAt) < (this.o.claimGraceMs ?? CLAIM_GRACE_MS)) continue;
        if (!(await this.o.store.getVm(a.vmId))) {
          await this.releaseIds([v.id], a.vmId);
          released.push(`${v.id}:${a.vmId}`);
        }
      }
    }
    const snaps = await this.o.resources.list<VolumeSnapshotSpec>(VOLUME_SNAPSHOT_KIND);
    for (const s of snaps.filter((x) => x.spec.phase === 'Creating' && !this.inflight.has(x.id) && this.stale(x))) {
      const b = this.backends.get(s.spec.backend);
      if (b) await this.at(b, s.spec.node).deleteSnapshot(s.spec.volumeId, s.id).catch(() => undefined);
      await this.o.resources.delete(VOLUME_SNAPSHOT_KIND, s.id);
      await this.o.tenants?.release(s.tenant, 'snapshot', s.id);
      removed.push(s.id);
    }
    const knownVols = new Set((await this.o.resources.list<VolumeSpec>(VOLUME_KIND)).map((v) => v.id));
    const knownSnaps = new Set((await this.o.resources.list<VolumeSnapshotSpec>(VOLUME_SNAPSHOT_KIND)).map((s) => s.id));
    for (const b of this.o.sweepLocal === false ? [] : this.backends.values()) {
      const caps = await b.capabilities().catch(() => undefined);
      // A shared backend (NFS, Ceph) may hold other services' volumes: only node-local ones are swept.
      if (!caps?.available || caps.shared) continue;
      const l = await b.list();
      for (const name of l.partial) {
        if ([...this.inflight].some((id) => name.includes(id))) continue;
        await b.removePartial(name);
        removed.push(name);
      }
      for (const s of l.snapshots) {
        if (!knownSnaps.has(s.snapshotId) && !this.inflight.has(s.snapshotId)) {
          await b.deleteSnapshot(s.volumeId ?? '', s.snapshotId);
          removed.push(s.snapshotId);
        }
      }
      for (const id of l.volumes) {
        if (!knownVols.has(id) && !this.inflight.has(id)) {
          await b.delete(id);
          removed.push(id);
        }
      }
    }
    if (removed.length || released.length) this.log('volume reconcile', { removed, released });
    return { removed, released };
  }

  private stale(r: { updatedAt: string }): boolean {
    return !this.o.staleAfterMs || Date.now() - Date.parse(r.updatedAt) > this.o.staleAfterMs;
  }

  /** Reconcile now, again every `resyncMs`, and release a VM's volumes as soon as its record is deleted. */
  async start(resyncMs = 30000): Promise<void> {
    await this.reconcile();
    this.stopWatch = this.o.store.watch((c) => {
      if (c.deleted) void this.releaseVm(c.id).catch((e: Error) => this.log('volume release failed', { vm: c.id, err: e.message }));
    });
    this.timer = setInterval(() => void this.reconcile().catch((e: Error) => this.log('volume reconcile failed', { err: e.message })), resyncMs);
    this.timer.unref();
  }

  stop(): void {
    this.stopWatch?.();
    if (this.timer) clearInterval(this.timer);
  }
}
