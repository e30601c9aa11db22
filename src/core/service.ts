/**
 * Use cases of the MicroVM service. REST, gRPC and the dashboard call these;
 * they validate, enforce tenancy and legal actions, write desired state to the
 * store (the acknowledgement point) and leave the doing to the controller.
 */
import { ErrorCodes, MvmError, notFound, validationError, unprocessable } from './errors.js';
import { ACTION_PHASES, DEFAULT_SPEC, assertAction, holdsNode, newId, parseDurationMs, parseQuantityMiB, requestDelete, requestResume, requestStop, requestSuspend, validateSpec, type MicroVM, type Phase } from './microvm.js';
import { activity, extendedClock } from './lifetimes.js';
import { vmResources } from './quota.js';
import { hostPortViolations, takenPortError, type HostPortPolicy } from './host-ports.js';
import type { NodeAgent } from './ports/agent.js';
import type { ImageAdmission, ImageResolver } from './ports/images.js';
import type { ListOptions, Page, RawVm, Store, VmEvent } from './ports/store.js';
import type { TenantStore } from './ports/tenants.js';
import { limitsOf } from './tenancy.js';
import type { CreateMicroVMRequestT, MicroVMSpecT, MigrateRequestT, UpdateMicroVMRequestT, VmMetricsT } from './schema.js';
import type { Principal } from './authz.js';

export { SYSTEM_TENANT, listTenant, targetTenant, type Principal, type Role } from './authz.js';
import { listTenant, targetTenant } from './authz.js';

export interface ServiceOptions {
  /** Tenants: admission checks the tenant exists and its quotas (atomically, in the store). */
  tenants?: TenantStore;
  /** Largest `rootfs.size` a VM may ask for (MVM_ROOTFS_MAX_SIZE); larger is refused at admission. */
  maxRootfsBytes?: number;
  /** Volumes: `spec.volumes` are claimed (created when sized and missing) for the new VM, released if its create fails. */
  volumes?: {
    claim(p: Principal, spec: MicroVMSpecT, tenant: string, vmId: string): Promise<void>;
    releaseVm(vmId: string): Promise<void>;
  };
  /** The admin's image policy: `rootfs.image` and `kernel.image` from an allowed registry (ADR 0024), checked before anything is pulled. */
  imageAdmission?: ImageAdmission;
  /** Host port range and addresses (MVM_HOST_PORT_RANGE, MVM_HOST_PORT_ADDRESS); unchecked when absent. */
  hostPorts?: HostPortPolicy;
}

/** Refusals by the image policy keep their code (403) through admission's image resolution. */
const POLICY_CODES: ReadonlySet<string> = new Set([ErrorCodes.REGISTRY_NOT_ALLOWED, ErrorCodes.SIGNATURE_VERIFICATION_FAILED]);

export interface WaitOptions {
  phase: Phase;
  /** Also wait for the GuestReady condition. */
  ready?: boolean;
  timeoutMs: number;
  signal?: AbortSignal;
}

export class MicroVMService {
  constructor(
    private readonly store: Store,
    private readonly agent: NodeAgent,
    private readonly images?: ImageResolver,
    /** Extra admission checks by other components (e.g. network: groups exist, ports and CIDRs valid). */
    private readonly admit?: (p: Principal, spec: MicroVMSpecT, tenant: string) => Promise<void>,
    private readonly opts: ServiceOptions = {},
  ) {}

  /** Serialises "is this host port free? then write" in this process (standalone: atomic; cluster: per API replica, ADR 0025). */
  private portTail: Promise<unknown> = Promise.resolve();
  private withPortLock<T>(ports: unknown[] | undefined, fn: () => Promise<T>): Promise<T> {
    if (!ports?.length) return fn();
    const next = this.portTail.then(fn, fn);
    this.portTail = next.catch(() => undefined);
    return next;
  }

  /** Range and address of each published port (400 naming the field). */
  private checkPortPolicy(ports: MicroVMSpecT['ports']): void {
    const violations = this.opts.hostPorts ? hostPortViolations(ports, this.opts.hostPorts) : [];
    if (violations.length) throw new MvmError(ErrorCodes.VALIDATION_FAILED, violations.map((v) => `${v.field}: ${v.message}`).join('; '), { violations });
  }

  /** CONFLICT naming the field when another microVM (any tenant) publishes one of these host ports. */
  private async checkPortsFree(ports: MicroVMSpecT['ports'], self: { id?: string; tenant: string }): Promise<void> {
    if (!ports?.length) return;
    const all: MicroVM[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.store.listVms({ limit: 1000, ...(cursor ? { cursor } : {}) });
      for (const v of page.items) if (v.spec.ports?.length) all.push(v);
      cursor = page.nextCursor;
    } while (cursor);
    const e = takenPortError(ports, self, all);
    if (e) throw e;
  }

  private visible(p: Principal, vm: MicroVM): boolean {
    return p.role === 'admin' || vm.tenant === p.tenant;
  }

  /** Find by id or by name within the caller's tenant; a foreign VM is indistinguishable from a missing one. */
  async get(p: Principal, idOrName: string): Promise<MicroVM> {
    const byId = await this.store.getVm(idOrName);
    if (byId && this.visible(p, byId)) return byId;
    if (byId || !/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(idOrName)) throw notFound('microVM', idOrName);
    const byName = await this.store.listVms({ tenant: p.tenant, name: idOrName, limit: 1 });
    const vm = byName.items[0];
    if (vm) return vm;
    throw notFound('microVM', idOrName);
  }

  /** `get` as the stored JSON text when the store can give it (the REST read path); same tenancy rules. */
  async getRaw(p: Principal, idOrName: string): Promise<RawVm> {
    const raw = this.store.getVmRaw ? await this.store.getVmRaw(idOrName) : undefined;
    if (raw && (p.role === 'admin' || raw.tenant === p.tenant)) return raw;
    const vm = await this.get(p, idOrName);
    return { json: JSON.stringify(vm), tenant: vm.tenant, resourceVersion: vm.resourceVersion };
  }

  /** `list` as stored JSON texts when the store can give them; same scoping as `list`. */
  async listRaw(p: Principal, opts: ListOptions): Promise<Page<string>> {
    const { tenant: _t, ...rest } = opts;
    const tenant = listTenant(p, opts.tenant);
    const scoped: ListOptions = { ...rest, ...(tenant !== undefined ? { tenant } : {}) };
    if (this.store.listVmsRaw) return this.store.listVmsRaw(scoped);
    const page = await this.store.listVms(scoped);
    return { items: page.items.map((v) => JSON.stringify(v)), ...(page.nextCursor ? { nextCursor: page.nextCursor } : {}) };
  }

  async list(p: Principal, opts: ListOptions): Promise<Page<MicroVM>> {
    const { tenant: _t, ...rest } = opts;
    const tenant = listTenant(p, opts.tenant);
    return this.store.listVms({ ...rest, ...(tenant !== undefined ? { tenant } : {}) });
  }

  /** Turns a create request with `snapshot` into a restore (set by the snapshot use case). */
  restoreResolver?: (p: Principal, req: CreateMicroVMRequestT) => Promise<CreateMicroVMRequestT>;
  /** Cluster mode: asks the operator to move a running VM with its memory (docs/adr/0034); standalone has one node. */
  migrator?: (vm: MicroVM, req: MigrateRequestT) => Promise<MicroVM>;
  /** Turns a create request with `template` into a clone of the template (set by the template use case). */
  templateResolver?: (p: Principal, tenant: string, req: CreateMicroVMRequestT) => Promise<CreateMicroVMRequestT>;

  async create(p: Principal, req: CreateMicroVMRequestT, o: { tenant?: string } = {}): Promise<MicroVM> {
    if (req.snapshot !== undefined && req.template !== undefined) throw validationError('template', 'give snapshot or template, not both');
    if (req.snapshot !== undefined) {
      if (!this.restoreResolver) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'restoring from snapshots is not available');
      req = await this.restoreResolver(p, req);
    }
    if (req.template !== undefined) {
      if (!this.templateResolver) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'templates are not available in this deployment');
      req = await this.templateResolver(p, targetTenant(p, o.tenant), req);
    }
    const tenantId = targetTenant(p, o.tenant);
    const tenant = this.opts.tenants ? await this.opts.tenants.getTenant(tenantId) : undefined;
    if (this.opts.tenants && !tenant) throw notFound('tenant', tenantId);
    let rootImageMiB = 0;
    const spec: MicroVMSpecT = {
      vcpu: req.vcpu ?? DEFAULT_SPEC.vcpu,
      memory: req.memory ?? DEFAULT_SPEC.memory,
      ...(req.kernel ? { kernel: req.kernel } : {}),
      ...(req.rootfs ? { rootfs: req.rootfs } : {}),
      ...(req.networkInterfaces ? { networkInterfaces: req.networkInterfaces } : {}),
      ...(req.volumes ? { volumes: req.volumes } : {}),
      labels: req.labels ?? {},
      ...(req.securityGroups ? { securityGroups: req.securityGroups } : {}),
      ...(req.ports ? { ports: req.ports } : {}),
      ...(req.egress ? { egress: req.egress } : {}),
      ...(req.nodeSelector ? { nodeSelector: req.nodeSelector } : {}),
      ...(req.tolerations ? { tolerations: req.tolerations } : {}),
      ...(req.affinity ? { affinity: req.affinity } : {}),
      ...(req.lifecycle ? { lifecycle: req.lifecycle } : {}),
      ...(req.env && Object.keys(req.env).length ? { env: req.env } : {}),
      ...(req.files?.length ? { files: req.files } : {}),
      // Set by SnapshotService.restoreRequest: the first boot restores this snapshot.
      ...(sourceOf(req) ? { source: sourceOf(req)! } : {}),
    };
    validateSpec(spec);
    this.checkPortPolicy(spec.ports);
    await this.admit?.(p, spec, tenantId);
    await this.opts.imageAdmission?.admit(spec.rootfs?.image, 'rootfs.image', tenant ?? tenantId);
    await this.opts.imageAdmission?.admit(spec.kernel?.image, 'kernel.image', tenant ?? tenantId);
    if (this.images) {
      // Admission: an unknown image is the caller's error now, not a failed boot later.
      let imageMiB = 0;
      try {
        await this.images.resolveKernel(spec.kernel?.image, { tenant: tenantId });
      } catch (e) {
        if (e instanceof MvmError && POLICY_CODES.has(e.code)) throw e;
        throw new MvmError(ErrorCodes.VALIDATION_FAILED, `kernel.image: ${(e as Error).message}`, { violations: [{ field: 'kernel.image', message: (e as Error).message }] });
      }
      try {
        const img = await this.images.resolveRootfs(spec.rootfs?.image, { tenant: tenantId });
        imageMiB = Math.ceil(img.sizeBytes / (1024 * 1024));
        rootImageMiB = spec.rootfs?.readOnly ? 0 : imageMiB;
      } catch (e) {
        if (e instanceof MvmError && POLICY_CODES.has(e.code)) throw e;
        throw new MvmError(ErrorCodes.VALIDATION_FAILED, `rootfs.image: ${(e as Error).message}`, { violations: [{ field: 'rootfs.image', message: (e as Error).message }] });
      }
      if (spec.rootfs?.size !== undefined) {
        // The guest filesystem is grown to rootfs.size (never shrunk): below the image is an error, as is beyond the node's maximum.
        const sizeMiB = parseQuantityMiB(spec.rootfs.size, 'rootfs.size');
        if (spec.rootfs.readOnly) throw unprocessable('rootfs.size', 'a read-only root disk is the shared image itself and cannot be resized; drop rootfs.size or readOnly');
        if (sizeMiB < imageMiB) throw unprocessable('rootfs.size', `${spec.rootfs.size} is smaller than the image (${imageMiB}Mi); the root filesystem can only grow`);
        const max = this.opts.maxRootfsBytes;
        if (max !== undefined && sizeMiB * 1024 * 1024 > max) throw unprocessable('rootfs.size', `${spec.rootfs.size} exceeds this node's maximum root disk size of ${Math.floor(max / (1024 * 1024))}Mi`);
      }
    }
    const now = new Date().toISOString();
    const start = req.start !== false;
    const id = newId('vm');
    if (spec.volumes?.length) {
      if (!this.opts.volumes) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'volumes are not available in this deployment', { violations: [{ field: 'volumes', message: 'unsupported' }] });
      await this.opts.volumes.claim(p, spec, tenantId, id);
    }
    const vm: MicroVM = {
      id,
      name: req.name,
      tenant: tenantId,
      spec,
      desiredState: start ? 'Running' : 'Stopped',
      status: { phase: 'Pending', conditions: [] },
      generation: 1,
      resourceVersion: '0',
      createdAt: now,
      updatedAt: now,
    };
    const res = vmResources(spec, rootImageMiB);
    const created = await this.withPortLock(spec.ports, async () => {
      await this.checkPortsFree(spec.ports, { tenant: tenantId });
      return this.store.createVm(vm, tenant ? { admission: { limits: limitsOf(tenant), diskMiB: res.diskMiB } } : {});
    }).catch(async (e: unknown) => {
      if (spec.volumes?.length) await this.opts.volumes?.releaseVm(id);
      throw e;
    });
    await this.store.appendEvent({ vmId: vm.id, tenant: vm.tenant, time: now, type: 'Normal', reason: 'Created', message: `created by ${p.subject}` });
    return created;
  }

  async update(p: Principal, idOrName: string, req: UpdateMicroVMRequestT, ifMatch?: string): Promise<MicroVM> {
    const vm = await this.get(p, idOrName);
    for (const field of ['rootfs', 'networkInterfaces', 'volumes'] as const) {
      if (req[field] !== undefined && JSON.stringify(req[field]) !== JSON.stringify(vm.spec[field])) {
        throw new MvmError(ErrorCodes.FIELD_IMMUTABLE, `${field} cannot be changed after creation; create a new microVM instead`, {
          violations: [{ field, message: 'immutable after creation' }],
        });
      }
    }
    if (req.ports !== undefined) this.checkPortPolicy(req.ports);
    if (req.securityGroups !== undefined || req.ports !== undefined || req.egress !== undefined) {
      await this.admit?.(p, { ...vm.spec, ...(req.securityGroups ? { securityGroups: req.securityGroups } : {}), ...(req.ports ? { ports: req.ports } : {}), ...(req.egress ? { egress: req.egress } : {}) }, vm.tenant);
    }
    const changesSpec = (['vcpu', 'memory', 'kernel'] as const).filter((f) => req[f] !== undefined && JSON.stringify(req[f]) !== JSON.stringify(vm.spec[f]));
    if (changesSpec.includes('kernel')) await this.opts.imageAdmission?.admit(req.kernel?.image, 'kernel.image', vm.tenant);
    const admission = await this.admission(vm.tenant);
    return this.withPortLock(req.ports, async () => {
      if (req.ports !== undefined) await this.checkPortsFree(req.ports, vm);
      return this.store.updateVm(
        vm.id,
        (cur) => {
          if (changesSpec.length > 0 && !ACTION_PHASES.update.includes(cur.status.phase)) {
            throw new MvmError(
              ErrorCodes.ILLEGAL_TRANSITION,
              `${changesSpec.join(', ')} can only be changed while the microVM is Stopped (it is ${cur.status.phase}); stop it first`,
              { violations: changesSpec.map((f) => ({ field: f, message: 'requires a stopped microVM' })), details: { phase: cur.status.phase } },
            );
          }
          const spec = { ...cur.spec };
          if (req.vcpu !== undefined) spec.vcpu = req.vcpu;
          if (req.memory !== undefined) spec.memory = req.memory;
          if (req.kernel !== undefined) spec.kernel = req.kernel;
          if (req.labels !== undefined) spec.labels = req.labels;
          // Network policy applies to running VMs without a restart.
          if (req.securityGroups !== undefined) spec.securityGroups = req.securityGroups;
          if (req.ports !== undefined) spec.ports = req.ports;
          if (req.egress !== undefined) spec.egress = req.egress;
          // Placement constraints apply at the next placement (like Kubernetes' IgnoredDuringExecution).
          if (req.nodeSelector !== undefined) spec.nodeSelector = req.nodeSelector;
          if (req.tolerations !== undefined) spec.tolerations = req.tolerations;
          if (req.affinity !== undefined) spec.affinity = req.affinity;
          // A new boot deadline applies from the next start.
          if (req.lifecycle !== undefined) spec.lifecycle = req.lifecycle;
          validateSpec(spec);
          if (JSON.stringify(spec) !== JSON.stringify(cur.spec)) cur.generation += 1;
          cur.spec = spec;
          return cur;
        },
        ifMatch,
        admission,
      );
    });
  }

  private async admission(tenantId: string): Promise<{ admission?: { limits: ReturnType<typeof limitsOf> } }> {
    const t = this.opts.tenants ? await this.opts.tenants.getTenant(tenantId) : undefined;
    return t ? { admission: { limits: limitsOf(t) } } : {};
  }

  async start(p: Principal, idOrName: string, ifMatch?: string): Promise<MicroVM> {
    const vm = await this.get(p, idOrName);
    return this.store.updateVm(vm.id, (cur) => {
      assertAction(cur, 'start');
      cur.desiredState = 'Running';
      cur.status.phase = cur.status.node ? 'Scheduled' : 'Pending';
      delete cur.status.reason;
      delete cur.status.message;
      return cur;
    }, ifMatch);
  }

  /** Move a running VM to another node with its memory, processes, disk and MAC (cluster mode; 409 NeedsClusterMode otherwise). */
  async migrate(p: Principal, idOrName: string, req: MigrateRequestT): Promise<MicroVM> {
    const vm = await this.get(p, idOrName);
    if (!this.migrator) {
      throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, 'migration needs cluster mode (several nodes, docs/adr/0034): this service runs standalone on one node', { details: { id: vm.id, reason: 'NeedsClusterMode' } });
    }
    return this.migrator(vm, req);
  }

  async stop(p: Principal, idOrName: string, ifMatch?: string): Promise<MicroVM> {
    const vm = await this.get(p, idOrName);
    return this.store.updateVm(vm.id, (cur) => {
      assertAction(cur, 'stop');
      return requestStop(cur);
    }, ifMatch);
  }

  async delete(p: Principal, idOrName: string, ifMatch?: string): Promise<MicroVM> {
    const vm = await this.get(p, idOrName);
    const out = await this.store.updateVm(vm.id, (cur) => {
      assertAction(cur, 'delete');
      return requestDelete(cur);
    }, ifMatch);
    // A suspend under way stops writing (its files go with the VM's directory).
    this.agent.cancelSuspend?.(vm.id);
    activity.forget(vm.id);
    return out;
  }

  /**
   * Suspend to disk (ADR 0035): memory and device state to the node's disk, then no VMM runs
   * (phase Suspending, then Suspended). Quota: a suspended VM keeps counting everything it
   * counted (as a stopped one does), so its resume is never refused for quota.
   */
  async suspend(p: Principal, idOrName: string, ifMatch?: string): Promise<MicroVM> {
    const vm = await this.get(p, idOrName);
    if (!this.agent.suspend) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'suspend to disk is not available in this deployment (standalone mode only for now; ADR 0035)');
    return this.store.updateVm(vm.id, (cur) => {
      assertAction(cur, 'suspend');
      return requestSuspend(cur);
    }, ifMatch);
  }

  /**
   * Resume: a Paused VM's vCPUs run again; a Suspended VM is restored from disk with the same
   * identity (IP, MAC, processes, open files); a suspend still writing is cancelled (QEMU
   * migrate_cancel) and the VM runs on.
   */
  async resume(p: Principal, idOrName: string, ifMatch?: string): Promise<MicroVM> {
    const vm = await this.get(p, idOrName);
    let cancel = false;
    const out = await this.store.updateVm(vm.id, (cur) => {
      assertAction(cur, 'resume');
      cancel = cur.status.phase === 'Suspending';
      return requestResume(cur);
    }, ifMatch);
    if (cancel) this.agent.cancelSuspend?.(vm.id);
    activity.touch(vm.id);
    return out;
  }

  /**
   * A guest call (exec, files, port forwarding) to a Suspended (or Suspending) VM resumes it and
   * waits until it is Running and ready; the call is activity for the idle clock either way.
   */
  async ensureAwake(p: Principal, vm: MicroVM, timeoutMs = 120_000): Promise<MicroVM> {
    activity.touch(vm.id);
    if (vm.status.phase !== 'Suspended' && vm.status.phase !== 'Suspending') return vm;
    await this.resume(p, vm.id).catch((e: unknown) => {
      // Someone else resumed it first: wait for that one.
      if (!(e instanceof MvmError && e.code === ErrorCodes.ILLEGAL_TRANSITION)) throw e;
    });
    const up = await this.wait(p, vm.id, { phase: 'Running', ready: true, timeoutMs });
    activity.touch(vm.id);
    return up;
  }

  /** `POST /microvms/{id}/timeout`: lifecycle.timeout ends `timeout` from now (Running/Paused time only). */
  async extendTimeout(p: Principal, idOrName: string, timeout: string): Promise<MicroVM> {
    const ms = parseDurationMs(timeout, 'timeout');
    const vm = await this.get(p, idOrName);
    return this.store.updateVm(vm.id, (cur) => {
      assertAction(cur, 'timeout');
      if (!cur.spec.lifecycle?.timeout) throw unprocessable('timeout', `microVM ${cur.name} has no spec.lifecycle.timeout to extend; set one first (PATCH lifecycle)`);
      cur.status.lifetime = extendedClock(cur, Date.now(), ms);
      return cur;
    });
  }

  /** Long-poll until the VM reaches the phase (and readiness), fails, or the timeout passes. */
  async wait(p: Principal, idOrName: string, o: WaitOptions): Promise<MicroVM> {
    const first = await this.get(p, idOrName);
    const id = first.id;
    const check = (vm: MicroVM | undefined): MicroVM | 'gone' | undefined => {
      if (!vm) return 'gone';
      const ready = vm.status.conditions.some((c) => c.type === 'GuestReady' && c.status === 'True');
      if (vm.status.phase === o.phase && (!o.ready || ready)) return vm;
      if (vm.status.phase === 'Failed' && o.phase !== 'Failed') {
        throw new MvmError(ErrorCodes.VM_FAILED, `microVM ${id} failed: ${vm.status.reason ?? 'Failed'}: ${vm.status.message ?? ''}`.trim(), {
          details: { reason: vm.status.reason, message: vm.status.message },
        });
      }
      return undefined;
    };
    const r0 = check(first);
    if (r0 === 'gone') throw notFound('microVM', idOrName);
    if (r0) return r0;
    return new Promise<MicroVM>((resolve, reject) => {
      let done = false;
      const finish = (fn: () => void): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        unsub();
        o.signal?.removeEventListener('abort', onAbort);
        fn();
      };
      const onChange = async (): Promise<void> => {
        try {
          const vm = await this.store.getVm(id);
          const r = check(vm);
          if (r === 'gone') finish(() => reject(notFound('microVM', id)));
          else if (r) finish(() => resolve(r));
        } catch (e) {
          finish(() => reject(e));
        }
      };
      const unsub = this.store.watch((c) => {
        if (c.id === id) void onChange();
      });
      const onAbort = (): void => finish(() => reject(new MvmError(ErrorCodes.TIMEOUT, 'client went away')));
      o.signal?.addEventListener('abort', onAbort);
      const timer = setTimeout(
        () =>
          finish(() =>
            reject(new MvmError(ErrorCodes.TIMEOUT, `microVM ${id} did not reach ${o.phase}${o.ready ? ' and ready' : ''} within ${Math.round(o.timeoutMs / 1000)} s`)),
          ),
        o.timeoutMs,
      );
      void onChange(); // close the race between the first read and the subscription
    });
  }

  async consolePath(p: Principal, idOrName: string): Promise<{ vm: MicroVM; path: string | undefined }> {
    const vm = await this.get(p, idOrName);
    activity.touch(vm.id);
    return { vm, path: this.agent.consolePath(vm.id) };
  }

  /**
   * Cluster mode: the console of an (already authorised) VM streamed from its node's agent;
   * undefined when the agent is local (read `consolePath`).
   */
  remoteConsole(vm: MicroVM): ((o: { tail: number; follow: boolean; signal?: AbortSignal }) => AsyncIterable<Buffer>) | undefined {
    const a = this.agent;
    return a.streamConsole ? (o) => a.streamConsole!(vm, o) : undefined;
  }

  /**
   * What following the local console log of an (already authorised) VM polls: the log's current
   * path (a restart rotates it) and whether the VM can still write to it — while it holds a node;
   * no longer once it is gone or out of `p`'s sight. Shared by REST and gRPC.
   */
  localConsole(p: Principal, vm: MicroVM): { path: () => Promise<string | undefined>; alive: () => Promise<boolean> } {
    return {
      path: () => this.consolePath(p, vm.id).then((r) => r.path, () => undefined),
      alive: () => this.get(p, vm.id).then((cur) => holdsNode(cur.status.phase), () => false),
    };
  }

  async metrics(p: Principal, idOrName: string): Promise<VmMetricsT> {
    const vm = await this.get(p, idOrName);
    return this.agent.metrics(vm);
  }

  async events(p: Principal, idOrName: string): Promise<VmEvent[]> {
    const vm = await this.get(p, idOrName);
    return this.store.listEvents({ vmId: vm.id });
  }

  /** Effective VMM configuration of a running VM (QEMU argv or Firecracker API calls). */
  vmmConfig(vm: MicroVM): Record<string, unknown> | undefined {
    return this.agent.observe(vm.id).config;
  }
}

const sourceOf = (req: unknown): MicroVMSpecT['source'] => (req as { source?: MicroVMSpecT['source'] }).source;

export function parseDuration(s: string, field: string): number {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(s);
  if (!m) throw validationError(field, `must be a duration like 30s, 500ms or 2m, got ${JSON.stringify(s)}`);
  const n = Number(m[1]);
  const unit = m[2] ?? 's';
  return unit === 'ms' ? n : unit === 'm' ? n * 60000 : n * 1000;
}
