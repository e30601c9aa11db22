/**
 * Pause/resume and memory snapshots (suspend/resume à la Fly, pause/fork à la E2B):
 * snapshots are tenant resources holding memory + device state and a copy-on-write
 * copy of the disks on the node; a new microVM can be restored (cloned) from one.
 */
import { ErrorCodes, MvmError, notFound, unprocessable, validationError } from './errors.js';
import { assertAction, memoryMiB, newId, type MicroVM } from './microvm.js';
import type { NodeAgent } from './ports/agent.js';
import type { ResourceStore, StoredResource } from './ports/resources.js';
import type { Store } from './ports/store.js';
import type { CreateMicroVMRequestT, ForkRequestT, MicroVMSpecT, SnapshotT } from './schema.js';
import type { MicroVMService } from './service.js';
import { listTenant, type Principal } from './authz.js';
import type { TenantStore } from './ports/tenants.js';
import { limitsOf } from './tenancy.js';

export const SNAPSHOT_KIND = 'snapshot';

export interface SnapshotSpec {
  vmId: string;
  phase: SnapshotT['phase'];
  message?: string;
  driver: string;
  node: string;
  vmSpec: MicroVMSpecT;
  sizeBytes?: number;
  durationMs?: number;
}

export function toSnapshot(r: StoredResource<SnapshotSpec>): SnapshotT {
  return {
    id: r.id,
    name: r.name,
    tenant: r.tenant,
    vmId: r.spec.vmId,
    phase: r.spec.phase,
    ...(r.spec.message ? { message: r.spec.message } : {}),
    driver: r.spec.driver,
    node: r.spec.node,
    spec: r.spec.vmSpec,
    ...(r.spec.sizeBytes !== undefined ? { sizeBytes: r.spec.sizeBytes } : {}),
    ...(r.spec.durationMs !== undefined ? { durationMs: r.spec.durationMs } : {}),
    createdAt: r.createdAt,
  };
}

export class SnapshotService {
  constructor(
    private readonly store: Store,
    private readonly resources: ResourceStore,
    private readonly agent: NodeAgent,
    private readonly vms: MicroVMService,
    /** Quotas: a snapshot counts against the tenant's snapshot count and disk. */
    private readonly tenants?: TenantStore,
  ) {}

  /**
   * After a crash mid-snapshot: a snapshot still "Creating" never completed; remove it and its files.
   * With several API replicas (cluster mode) only those older than `olderThanMs`: a younger one may
   * be another replica's snapshot in progress.
   */
  async recover(o: { olderThanMs?: number } = {}): Promise<void> {
    const before = Date.now() - (o.olderThanMs ?? 0);
    for (const s of await this.resources.list<SnapshotSpec>(SNAPSHOT_KIND)) {
      if (s.spec.phase === 'Creating' && (o.olderThanMs === undefined || Date.parse(s.createdAt) < before)) {
        await this.agent.deleteSnapshot(s.id);
        await this.resources.delete(SNAPSHOT_KIND, s.id);
        await this.tenants?.release(s.tenant, 'snapshot', s.id);
      }
    }
  }

  async pause(p: Principal, idOrName: string): Promise<MicroVM> {
    const vm = await this.vms.get(p, idOrName);
    return this.store.updateVm(vm.id, (cur) => {
      assertAction(cur, 'pause');
      cur.desiredState = 'Paused';
      return cur;
    });
  }

  /** Paused: the vCPUs run again; Suspending/Suspended: see MicroVMService.resume. */
  async resume(p: Principal, idOrName: string): Promise<MicroVM> {
    return this.vms.resume(p, idOrName);
  }

  async create(p: Principal, vmIdOrName: string, name: string): Promise<StoredResource<SnapshotSpec>> {
    const vm = await this.vms.get(p, vmIdOrName);
    assertAction(vm, 'snapshot');
    const id = newId('snap');
    const tenant = this.tenants ? await this.tenants.getTenant(vm.tenant) : undefined;
    // Reserve before any work: QUOTA_EXCEEDED leaves nothing behind. Disk: the guest memory plus its root disk, an upper bound.
    if (this.tenants && tenant) await this.tenants.reserve(vm.tenant, { kind: 'snapshot', id, diskMiB: memoryMiB(vm.spec) }, limitsOf(tenant));
    const rec = await this.resources
      .create<SnapshotSpec>({
        kind: SNAPSHOT_KIND,
        id,
        tenant: vm.tenant,
        name,
        spec: { vmId: vm.id, phase: 'Creating', driver: vm.status.driver ?? 'unknown', node: vm.status.node ?? '', vmSpec: vm.spec },
      })
      .catch(async (e: unknown) => {
        await this.tenants?.release(vm.tenant, 'snapshot', id); // e.g. the name is taken
        throw e;
      });
    try {
      const r = await this.agent.snapshot(vm.id, id);
      await this.store.appendEvent({ vmId: vm.id, tenant: vm.tenant, time: new Date().toISOString(), type: 'Normal', reason: 'Snapshot', message: `snapshot ${name} (${id}) taken in ${r.durationMs} ms` });
      return await this.resources.update<SnapshotSpec>(SNAPSHOT_KIND, rec.id, (s) => ({ ...s, phase: 'Ready', driver: r.driver, sizeBytes: r.sizeBytes, durationMs: r.durationMs }));
    } catch (e) {
      // Nothing half-done: no record, no files.
      await this.agent.deleteSnapshot(id).catch(() => undefined);
      await this.resources.delete(SNAPSHOT_KIND, id);
      await this.tenants?.release(vm.tenant, 'snapshot', id);
      throw e;
    }
  }

  /**
   * A live fork: the parent is paused only for its snapshot (memory, devices, disks), then runs on;
   * each child restores that snapshot with a fresh identity (MAC, IP, hostname, machine id). The
   * snapshot stays, named `<parent>-fork-<n>`, while children exist (their disks are backed by it).
   */
  async fork(p: Principal, vmIdOrName: string, req: ForkRequestT): Promise<{ snapshot: StoredResource<SnapshotSpec>; children: MicroVM[] }> {
    const parent = await this.vms.get(p, vmIdOrName);
    const count = req.count ?? req.names?.length ?? 1;
    if (req.names && new Set(req.names).size !== req.names.length) throw validationError('names', 'must be distinct');
    if (req.names && req.names.length !== count) throw unprocessable('names', `give ${count} names (one per child) or none`);
    assertAction(parent, 'snapshot');
    const n = Date.now().toString(36);
    const snap = await this.create(p, parent.id, `${parent.name.slice(0, 40)}-fork-${n}`);
    const children: MicroVM[] = [];
    try {
      for (let i = 0; i < count; i++) {
        const name = req.names?.[i] ?? `${parent.name.slice(0, 40)}-fork-${n}-${i + 1}`;
        children.push(await this.vms.create(p, { name, snapshot: snap.id, labels: { ...parent.spec.labels, 'microvm.service/forked-from': parent.id } }, { tenant: parent.tenant }));
      }
    } catch (e) {
      // All or nothing: the children made so far go, and the snapshot with them.
      for (const c of children) await this.vms.delete(p, c.id).catch(() => undefined);
      if (!children.length) await this.delete(p, snap.id).catch(() => undefined);
      throw e;
    }
    await this.store.appendEvent({ vmId: parent.id, tenant: parent.tenant, time: new Date().toISOString(), type: 'Normal', reason: 'Forked', message: `forked into ${children.map((c) => c.name).join(', ')} (snapshot ${snap.name})` });
    return { snapshot: snap, children };
  }

  async get(p: Principal, idOrName: string): Promise<StoredResource<SnapshotSpec>> {
    const byId = await this.resources.get<SnapshotSpec>(SNAPSHOT_KIND, idOrName);
    if (byId && (p.role === 'admin' || byId.tenant === p.tenant)) return byId;
    const byName = await this.resources.getByName<SnapshotSpec>(SNAPSHOT_KIND, p.tenant, idOrName);
    if (byName) return byName;
    throw notFound('snapshot', idOrName);
  }

  async list(p: Principal, opts: { vmId?: string; tenant?: string } = {}): Promise<Array<StoredResource<SnapshotSpec>>> {
    const tenant = listTenant(p, opts.tenant);
    const all = await this.resources.list<SnapshotSpec>(SNAPSHOT_KIND, tenant !== undefined ? { tenant } : {});
    return opts.vmId ? all.filter((s) => s.spec.vmId === opts.vmId) : all;
  }

  /**
   * What the snapshot's disk copies back (ADR 0030): microVMs restored from it (their root disk is a
   * qcow2 overlay on its copy) and snapshots taken of such microVMs (their copy of that overlay still
   * names its copy as backing file), in any tenant (an admin may restore into another one).
   */
  async dependents(id: string): Promise<{ microvms: string[]; snapshots: string[] }> {
    const microvms: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.store.listVms({ limit: 1000, ...(cursor ? { cursor } : {}) });
      for (const vm of page.items) if (vm.spec.source?.snapshot === id) microvms.push(vm.id);
      cursor = page.nextCursor;
    } while (cursor);
    const snapshots = (await this.resources.list<SnapshotSpec>(SNAPSHOT_KIND)).filter((x) => x.spec.vmSpec.source?.snapshot === id).map((x) => x.id);
    return { microvms, snapshots };
  }

  async delete(p: Principal, idOrName: string): Promise<void> {
    const s = await this.get(p, idOrName);
    // Never break another object (ADR 0030): refused, naming them, while anything is backed by its disk copy.
    const deps = await this.dependents(s.id);
    if (deps.microvms.length || deps.snapshots.length) {
      const named = [...(deps.microvms.length ? [`microVM(s) ${deps.microvms.join(', ')}`] : []), ...(deps.snapshots.length ? [`snapshot(s) ${deps.snapshots.join(', ')}`] : [])].join(' and ');
      throw new MvmError(ErrorCodes.CONFLICT, `snapshot ${s.name} backs the disks of ${named}; delete those first`, {
        details: { usedBy: deps.microvms, snapshots: deps.snapshots },
      });
    }
    await this.agent.deleteSnapshot(s.id);
    await this.resources.delete(SNAPSHOT_KIND, s.id);
    await this.tenants?.release(s.tenant, 'snapshot', s.id);
  }

  /**
   * A create request restoring `req.snapshot`: the machine shape comes from the snapshot
   * (a restore needs the same vCPUs, memory, kernel and root image); conflicting values are refused.
   */
  async restoreRequest(p: Principal, req: CreateMicroVMRequestT): Promise<CreateMicroVMRequestT & { source: { snapshot: string } }> {
    const s = await this.get(p, req.snapshot!).catch((e: unknown) => {
      if (e instanceof MvmError && e.code === ErrorCodes.NOT_FOUND) throw new MvmError(ErrorCodes.NOT_FOUND, `snapshot ${JSON.stringify(req.snapshot)} does not exist`, { violations: [{ field: 'snapshot', message: 'no such snapshot' }], details: { kind: 'snapshot', id: req.snapshot } });
      throw e;
    });
    if (s.spec.phase !== 'Ready') throw new MvmError(ErrorCodes.CONFLICT, `snapshot ${s.name} is ${s.spec.phase}, not Ready`, { violations: [{ field: 'snapshot', message: s.spec.phase }] });
    // What no VM can change (the files, VMM version, jailing): refused now, not after the VM was made.
    const refusal = await this.agent.restoreRefusal?.(s.id);
    if (refusal) throw new MvmError(ErrorCodes.CONFLICT, `snapshot ${s.name} cannot be restored here: ${refusal}`, { details: { snapshot: s.id, reason: refusal } });
    const src = s.spec.vmSpec;
    for (const f of ['vcpu', 'memory', 'kernel', 'rootfs', 'networkInterfaces', 'volumes'] as const) {
      if (req[f] !== undefined && JSON.stringify(req[f]) !== JSON.stringify(src[f])) {
        throw unprocessable(f, `must match the snapshot (${JSON.stringify(src[f] ?? null)}) or be omitted`);
      }
    }
    const { snapshot: _omit, ...rest } = req;
    void _omit;
    return {
      ...rest,
      vcpu: src.vcpu,
      memory: src.memory,
      ...(src.kernel ? { kernel: src.kernel } : {}),
      ...(src.rootfs ? { rootfs: src.rootfs } : {}),
      ...(src.networkInterfaces ? { networkInterfaces: src.networkInterfaces } : {}),
      ...(src.volumes ? { volumes: src.volumes } : {}),
      labels: req.labels ?? src.labels ?? {},
      source: { snapshot: s.id },
    };
  }
}
