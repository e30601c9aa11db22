/**
 * Templates (ADR 0021): a guest booted once, made ready, paused and snapshotted with its memory
 * kept as a file; creates clone it in ~0.1 s instead of booting (E2B's templates, Fly's suspended
 * machines). A template is a tenant resource with versions: a rebuild adds a version, VMs keep the
 * version they were cloned from, and a template in use cannot be deleted.
 *
 * The build runs on a node (NodeAgent.buildTemplate): boot with the guest RAM in a shared tmpfs
 * file, wait for readiness (the guest agent, or a command exiting 0), run `command`, pause,
 * snapshot the device state, discard the VM. The version is then Ready; its files stay on that
 * node.
 */
import { ErrorCodes, MvmError, asMvmError, notFound, validationError } from './errors.js';
import { failedStep } from './steps.js';
import { MAX_MEMORY_MIB, MIN_MEMORY_MIB, DEFAULT_SPEC, newId, parseDurationMs, parseQuantityMiB } from './microvm.js';
import type { NodeAgent, TemplateBuildSpec } from './ports/agent.js';
import type { ImageAdmission } from './ports/images.js';
import type { ResourceStore, StoredResource } from './ports/resources.js';
import type { Store } from './ports/store.js';
import type { CreateMicroVMRequestT, CreateTemplateRequestT, MicroVMSpecT, TemplateT, TemplateVersionT } from './schema.js';
import { SNAPSHOT_KIND } from './snapshots.js';
import { listTenant, type Principal } from './authz.js';

export const TEMPLATE_KIND = 'template';

export type TemplateSpecT = Omit<CreateTemplateRequestT, 'name'>;

/** What the resource store keeps of a template. */
export interface TemplateRecord {
  spec: TemplateSpecT;
  versions: TemplateVersionT[];
}

export function toTemplate(r: StoredResource<TemplateRecord>): TemplateT {
  const latest = r.spec.versions[r.spec.versions.length - 1];
  const ready = [...r.spec.versions].reverse().find((v) => v.phase === 'Ready');
  return {
    id: r.id,
    name: r.name,
    tenant: r.tenant,
    spec: r.spec.spec,
    phase: latest?.phase === 'Ready' ? 'Ready' : latest?.phase === 'Building' ? 'Building' : latest?.phase === 'Lost' ? 'Lost' : 'Failed',
    ...(ready ? { readyVersion: ready.version } : {}),
    versions: r.spec.versions,
    createdAt: r.createdAt,
  };
}

export interface TemplateServiceOptions {
  /** The service's boot deadline, for builds that do not set bootTimeout. */
  bootTimeoutMs?: number;
  /** How many builds run at once on this node (TCG boots are CPU-bound). Default 2. */
  concurrentBuilds?: number;
  log?: { info(o: object, m: string): void; warn(o: object, m: string): void };
  /** The admin's image policy (ADR 0024): a template's image comes from an allowed registry, checked at create and rebuild. */
  imageAdmission?: ImageAdmission;
}

export class TemplateService {
  private readonly running = new Map<string, Promise<void>>();
  private active = 0;
  private readonly waiting: Array<() => void> = [];

  constructor(
    private readonly store: Store,
    private readonly resources: ResourceStore,
    private readonly agent: NodeAgent,
    private readonly opts: TemplateServiceOptions = {},
  ) {}

  /** Checks the schema cannot express: quantities and durations. */
  private validate(spec: TemplateSpecT): void {
    if (spec.memory !== undefined) {
      const mem = parseQuantityMiB(spec.memory, 'memory');
      if (mem < MIN_MEMORY_MIB || mem > MAX_MEMORY_MIB) throw validationError('memory', `must be between 128Mi and 8Gi, got ${spec.memory}`);
    }
    if (spec.image !== undefined && spec.rootfs?.image !== undefined && spec.image !== spec.rootfs.image) throw validationError('image', 'give image or rootfs.image, not both');
    if (spec.rootfs?.readOnly) throw validationError('rootfs.readOnly', 'a template guest needs a writable root disk (its clones get their own overlays)');
    if (spec.bootTimeout !== undefined) parseDurationMs(spec.bootTimeout, 'bootTimeout');
    // Accepted by the schema for the warm pools to come; until they exist, a pool is refused rather than ignored.
    if (spec.pool && spec.pool.size > 0) throw validationError('pool.size', 'warm pools are not available yet: give 0 or leave pool out (a template clone is ready in well under a second without one)');
    if (spec.readiness && 'command' in spec.readiness && spec.readiness.timeout !== undefined) parseDurationMs(spec.readiness.timeout, 'readiness.timeout');
  }

  /** Create a template and start building its first version (answer: the template, phase Building). */
  /** The template's images by the tenant's image policy (REGISTRY_NOT_ALLOWED naming `image`, `rootfs.image` or `kernel.image`). */
  private async admitImages(spec: TemplateSpecT, tenant: string): Promise<void> {
    await this.opts.imageAdmission?.admit(spec.image ?? spec.rootfs?.image, spec.image !== undefined ? 'image' : 'rootfs.image', tenant);
    await this.opts.imageAdmission?.admit(spec.kernel?.image, 'kernel.image', tenant);
  }

  async create(p: Principal, tenant: string, req: CreateTemplateRequestT): Promise<StoredResource<TemplateRecord>> {
    const { name, ...spec } = req;
    this.validate(spec);
    await this.admitImages(spec, tenant);
    const rec = await this.resources.create<TemplateRecord>({
      kind: TEMPLATE_KIND,
      id: newId('tpl'),
      tenant,
      name,
      spec: { spec, versions: [{ version: 1, phase: 'Building', startedAt: new Date().toISOString() }] },
    });
    this.startBuild(rec.id, 1);
    this.opts.log?.info({ template: rec.id, by: p.subject }, `template ${name} created; building version 1`);
    return rec;
  }

  /** A new version of the template, built from its spec now (what the image tag points at now, say). */
  async rebuild(p: Principal, idOrName: string): Promise<StoredResource<TemplateRecord>> {
    const t = await this.get(p, idOrName);
    // The policy may have changed since the template was created.
    await this.admitImages(t.spec.spec, t.tenant);
    let version = 0;
    const out = await this.resources.update<TemplateRecord>(TEMPLATE_KIND, t.id, (r) => {
      if (r.versions.some((v) => v.phase === 'Building')) {
        throw new MvmError(ErrorCodes.CONFLICT, `template ${t.name} is building version ${r.versions.find((v) => v.phase === 'Building')!.version} already`);
      }
      version = Math.max(0, ...r.versions.map((v) => v.version)) + 1;
      return { ...r, versions: [...r.versions, { version, phase: 'Building', startedAt: new Date().toISOString() }] };
    });
    this.startBuild(t.id, version);
    return out;
  }

  private startBuild(id: string, version: number): void {
    const key = `${id}/${version}`;
    const p = this.build(id, version).finally(() => this.running.delete(key));
    this.running.set(key, p);
  }

  /** Resolves when every build under way is over (tests, shutdown). */
  async settle(): Promise<void> {
    while (this.running.size) await Promise.allSettled([...this.running.values()]);
  }

  private async slot(): Promise<() => void> {
    const max = this.opts.concurrentBuilds ?? 2;
    if (this.active >= max) await new Promise<void>((r) => this.waiting.push(r));
    this.active++;
    return () => {
      this.active--;
      this.waiting.shift()?.();
    };
  }

  private async build(id: string, version: number): Promise<void> {
    const release = await this.slot();
    const t0 = Date.now();
    try {
      const rec = await this.resources.get<TemplateRecord>(TEMPLATE_KIND, id);
      if (!rec) return;
      if (!this.agent.buildTemplate) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'this deployment cannot build templates');
      const s = rec.spec.spec;
      const image = s.image ?? s.rootfs?.image;
      const spec: TemplateBuildSpec = {
        templateId: id,
        version,
        tenant: rec.tenant,
        name: rec.name,
        vcpu: s.vcpu ?? DEFAULT_SPEC.vcpu,
        memory: s.memory ?? DEFAULT_SPEC.memory,
        ...(s.kernel ? { kernel: s.kernel } : {}),
        rootfs: { ...(s.rootfs ?? {}), ...(image ? { image } : {}) },
        ...(s.env ? { env: s.env } : {}),
        ...(s.files ? { files: s.files } : {}),
        ...(s.command ? { command: s.command } : {}),
        readiness: s.readiness ?? { agent: true },
        bootTimeoutMs: s.bootTimeout ? parseDurationMs(s.bootTimeout, 'bootTimeout') : (this.opts.bootTimeoutMs ?? 300_000),
      };
      const r = await this.agent.buildTemplate(spec);
      await this.setVersion(id, version, (v) => ({
        ...v,
        phase: 'Ready',
        node: r.node,
        driver: r.driver,
        builtAt: new Date().toISOString(),
        buildMs: Date.now() - t0,
        memoryBytes: r.memoryBytes,
        diskBytes: r.diskBytes,
      }));
      this.opts.log?.info({ template: id, version, ms: Date.now() - t0 }, 'template version ready');
    } catch (e) {
      const err = asMvmError(e);
      const step = failedStep(err);
      const consoleTail = typeof err.details.consoleTail === 'string' ? err.details.consoleTail : undefined;
      await this.setVersion(id, version, (v) => ({
        ...v,
        phase: 'Failed',
        message: err.message,
        ...(step ? { step } : {}),
        ...(consoleTail ? { consoleTail } : {}),
        buildMs: Date.now() - t0,
      })).catch(() => undefined);
      this.opts.log?.warn({ template: id, version, step, err: err.message }, 'template build failed');
    } finally {
      release();
    }
  }

  private async setVersion(id: string, version: number, f: (v: TemplateVersionT) => TemplateVersionT): Promise<void> {
    await this.resources.update<TemplateRecord>(TEMPLATE_KIND, id, (r) => ({ ...r, versions: r.versions.map((v) => (v.version === version ? f(v) : v)) }));
  }

  async get(p: Principal, idOrName: string): Promise<StoredResource<TemplateRecord>> {
    const byId = await this.resources.get<TemplateRecord>(TEMPLATE_KIND, idOrName);
    if (byId && (p.role === 'admin' || byId.tenant === p.tenant)) return byId;
    const byName = await this.resources.getByName<TemplateRecord>(TEMPLATE_KIND, p.tenant, idOrName);
    if (byName) return byName;
    throw notFound('template', idOrName);
  }

  async list(p: Principal, tenant?: string): Promise<Array<StoredResource<TemplateRecord>>> {
    const scope = listTenant(p, tenant);
    return this.resources.list<TemplateRecord>(TEMPLATE_KIND, scope !== undefined ? { tenant: scope } : {});
  }

  /** The microVMs (any phase) cloned from the template, or from one version of it. */
  async users(id: string, version?: number): Promise<string[]> {
    const out: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.store.listVms({ limit: 1000, ...(cursor ? { cursor } : {}) });
      for (const vm of page.items) {
        const src = vm.spec.source?.template;
        if (src?.id === id && (version === undefined || src.version === version)) out.push(vm.id);
      }
      cursor = page.nextCursor;
    } while (cursor);
    return out;
  }

  /** Delete a template and its files; refused (409, naming them) while microVMs cloned from it exist. */
  async delete(p: Principal, idOrName: string): Promise<void> {
    const t = await this.get(p, idOrName);
    const users = await this.users(t.id);
    if (users.length) {
      throw new MvmError(ErrorCodes.CONFLICT, `template ${t.name} is in use by ${users.join(', ')}: their disks are backed by it; delete those microVMs first`, { details: { usedBy: users } });
    }
    // A snapshot of a clone copied the clone's overlay, whose backing file is the template's disk (ADR 0030).
    const snaps = (await this.resources.list<{ vmSpec: MicroVMSpecT }>(SNAPSHOT_KIND)).filter((x) => x.spec.vmSpec.source?.template?.id === t.id).map((x) => x.id);
    if (snaps.length) {
      throw new MvmError(ErrorCodes.CONFLICT, `template ${t.name} backs the disks of snapshot(s) ${snaps.join(', ')} (taken of its clones); delete those snapshots first`, { details: { snapshots: snaps } });
    }
    if (t.spec.versions.some((v) => v.phase === 'Building')) throw new MvmError(ErrorCodes.CONFLICT, `template ${t.name} is building; delete it once the build is over`);
    await this.agent.deleteTemplate?.(t.id);
    await this.resources.delete(TEMPLATE_KIND, t.id);
  }

  /**
   * A create request cloning `req.template` (`name` or `name@version`): the machine comes from the
   * template (its vCPUs, memory, kernel and root image); the VM's own env and files are applied by
   * the guest agent after the clone starts.
   */
  async cloneRequest(p: Principal, tenant: string, req: CreateMicroVMRequestT): Promise<CreateMicroVMRequestT & { source: { template: { id: string; version: number } } }> {
    const [name, v] = req.template!.split('@') as [string, string | undefined];
    const t = await this.resources.getByName<TemplateRecord>(TEMPLATE_KIND, tenant, name);
    if (!t) throw new MvmError(ErrorCodes.NOT_FOUND, `template ${JSON.stringify(name)} does not exist`, { violations: [{ field: 'template', message: 'no such template' }] });
    const version = v !== undefined ? t.spec.versions.find((x) => x.version === Number(v)) : [...t.spec.versions].reverse().find((x) => x.phase === 'Ready');
    if (!version) {
      const latest = t.spec.versions[t.spec.versions.length - 1];
      throw new MvmError(ErrorCodes.CONFLICT, v !== undefined ? `template ${name} has no version ${v}` : `template ${name} has no Ready version yet (version ${latest?.version} is ${latest?.phase})`, {
        violations: [{ field: 'template', message: 'not ready' }],
      });
    }
    if (version.phase !== 'Ready') throw new MvmError(ErrorCodes.CONFLICT, `template ${name} version ${version.version} is ${version.phase}, not Ready`, { violations: [{ field: 'template', message: version.phase }] });
    const s = t.spec.spec;
    for (const f of ['vcpu', 'memory', 'kernel', 'rootfs', 'volumes', 'networkInterfaces'] as const) {
      if (req[f] !== undefined) throw validationError(f, 'comes from the template: omit it when creating from a template');
    }
    const { template: _t, ...rest } = req;
    const image = s.image ?? s.rootfs?.image;
    return {
      ...rest,
      vcpu: s.vcpu ?? DEFAULT_SPEC.vcpu,
      memory: s.memory ?? DEFAULT_SPEC.memory,
      ...(s.kernel ? { kernel: s.kernel } : {}),
      ...(image || s.rootfs ? { rootfs: { ...(s.rootfs ?? {}), ...(image ? { image } : {}) } } : {}),
      source: { template: { id: t.id, version: version.version } },
    };
  }

  /**
   * After a restart: a build under way when the service stopped never finishes (its VM is gone or
   * orphaned): Failed, files removed. A Ready version whose files this node no longer has (a host
   * reboot empties tmpfs) is Lost.
   */
  async recover(): Promise<void> {
    for (const t of await this.resources.list<TemplateRecord>(TEMPLATE_KIND)) {
      for (const v of t.spec.versions) {
        if (v.phase === 'Building' && !this.running.has(`${t.id}/${v.version}`)) {
          await this.agent.deleteTemplate?.(t.id, v.version).catch(() => undefined);
          await this.setVersion(t.id, v.version, (x) => ({ ...x, phase: 'Failed', message: 'the build was interrupted by a restart of the service; rebuild the template' }));
        } else if (v.phase === 'Ready' && this.agent.hasTemplate && !(await this.agent.hasTemplate(t.id, v.version))) {
          await this.setVersion(t.id, v.version, (x) => ({ ...x, phase: 'Lost', message: `its files are gone from node ${x.node ?? this.agent.nodeName} (a host reboot empties tmpfs); rebuild the template` }));
        }
      }
    }
  }
}
