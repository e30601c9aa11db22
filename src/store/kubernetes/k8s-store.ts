/**
 * Kubernetes adapter of the store port (cluster mode): a MicroVM is a `MicroVM` custom resource
 * (CRD from src/k8s/crd.ts) in its tenant's namespace, which is created on demand. See
 * docs/adr/0010-kubernetes-mode.md for the semantics and where they differ from SQLite:
 *
 * - resourceVersion is the object's; generation is Kubernetes' metadata.generation.
 * - updateVm is read-modify-write: replace with the read resourceVersion; spec/labels go to the
 *   resource, status to the status subresource (two writes when both changed, in that order). A 409
 *   re-reads and re-applies `mutate` unless the caller gave expectedVersion (then CONFLICT). An
 *   update that changes nothing writes nothing (no new resourceVersion), but local watchers are
 *   still told, as with SQLite.
 * - listVms maps limit/cursor to Kubernetes limit/continue: pages are a consistent snapshot taken at
 *   the first page (objects created later are not in that listing), ordered by namespace/name, and
 *   a cursor expires with the continue token (etcd compaction, ~5 min): VALIDATION_FAILED on `cursor`.
 * - Events are core/v1 Events on the object (labelled with the VM id); seq is the Event's
 *   resourceVersion (an etcd revision: increasing across the cluster). They live as long as the
 *   apiserver's --event-ttl (1 h by default).
 * - watch = this process's own writes at once, plus a Kubernetes watch (list + watch, relist on 410)
 *   for everyone else's; each (id, resourceVersion) is reported once.
 * - Quota admission of creates is atomic across writers: a pending admission is written on the
 *   tenant's namespace with its resourceVersion before the create (admission.ts, ADR 0015).
 *   Resizes check a fresh list right before the write (not atomic).
 */
import { hostname } from 'node:os';
import { isDeepStrictEqual } from 'node:util';
import { CoreV1Api, CustomObjectsApi, KubeConfig, Watch, type CoreV1Event } from '@kubernetes/client-node';
import { ErrorCodes, MvmError, notFound } from '../../core/errors.js';
import { memoryMiB, type MicroVM } from '../../core/microvm.js';
import type { ListOptions, Page, Store, StoreChange, VmEvent, WriteOptions } from '../../core/ports/store.js';
import { checkQuota, emptyUsage, vmResources, type Usage } from '../../core/quota.js';
import { MICROVM_RESOURCE } from '../../k8s/crd.js';
import { NamespaceAdmission } from './admission.js';
import { fromK8sError, httpStatus, k8sStatus } from '../../k8s/errors.js';
import {
  ANN_EVENT_TIME,
  LABEL_ID,
  MANAGER,
  TenantNamespaces,
  fromObject,
  isInitialStatus,
  isLabelValue,
  mirrorLabels,
  resourcesOfObject,
  toObject,
  withSpec,
  type MicroVMObject,
} from '../../k8s/microvm-object.js';

export interface KubernetesStoreOptions {
  /** Default: KubeConfig.loadFromDefault() (KUBECONFIG, ~/.kube/config, or in-cluster). */
  kubeConfig?: KubeConfig;
  /** Namespaces become `<partition>-<tenant>` and every object is labelled with the partition. */
  partition?: string;
  /** Event source and field manager. */
  component?: string;
  /** Max optimistic-concurrency retries of updateVm without expectedVersion (default 10). */
  maxRetries?: number;
}

/** What this adapter does differently from the contract's reference (SQLite); see the ADR. */
export const KUBERNETES_STORE_CAPABILITIES = {
  /** Cursor pages are a snapshot at the first page: later inserts are not in that listing. */
  listSnapshot: true,
  /** Creates are admitted atomically through the tenant namespace (admission.ts); resizes are check-then-write. */
  atomicAdmission: true,
} as const;

const { group, version, plural } = MICROVM_RESOURCE;
const CURSOR_PREFIX = 'k8s:';

interface ListResult<T> {
  items: T[];
  metadata?: { resourceVersion?: string; continue?: string };
}

/** Escape a value for a field selector (`\`, `,` and `=` are special). */
const fieldValue = (v: string): string => v.replace(/[\\,=]/g, (c) => `\\${c}`);

export class KubernetesStore implements Store {
  readonly tn: TenantNamespaces;
  private readonly kc: KubeConfig;
  private readonly custom: CustomObjectsApi;
  private readonly core: CoreV1Api;
  private readonly component: string;
  private readonly maxRetries: number;
  /** id → namespace/name: ids never move, so a hit is checked by one GET. */
  private readonly locations = new Map<string, { namespace: string; name: string }>();
  private readonly subs = new Set<(c: StoreChange) => void>();
  /** (id@resourceVersion | id@deleted) already reported, insertion-ordered, bounded. */
  private readonly reported = new Map<string, true>();
  /** id → last resourceVersion seen by the Kubernetes watch (to report deletions missed across a relist). */
  private readonly watched = new Map<string, string>();
  private watchGen = 0;
  private watchAbort: AbortController | undefined;
  private closed = false;

  constructor(opts: KubernetesStoreOptions = {}) {
    this.kc = opts.kubeConfig ?? new KubeConfig();
    if (!opts.kubeConfig) this.kc.loadFromDefault();
    this.tn = new TenantNamespaces(opts.partition);
    this.custom = this.kc.makeApiClient(CustomObjectsApi);
    this.core = this.kc.makeApiClient(CoreV1Api);
    this.component = opts.component ?? MANAGER;
    this.maxRetries = opts.maxRetries ?? 10;
    this.admission = new NamespaceAdmission({
      core: this.core,
      ensureNamespace: (namespace, tenant) => this.ensureNamespace(namespace, tenant),
    });
  }
  private readonly admission: NamespaceAdmission;

  /**
   * Hooks for a read cache (src/store/kubernetes/read-cache.ts): every object this store writes or its
   * watch sees, before watchers are told; `undefined` = deleted. `cacheSynced` after a full list.
   */
  protected cacheObject(_id: string, _o: MicroVMObject | undefined): void {}
  protected cacheSynced(): void {}

  // ---- microVMs -------------------------------------------------------------------------------

  async createVm(vm: MicroVM, opts: WriteOptions = {}): Promise<MicroVM> {
    const namespace = this.tn.namespaceOf(vm.tenant);
    const res = vmResources(vm.spec);
    if (opts.admission?.diskMiB !== undefined) res.diskMiB = opts.admission.diskMiB;
    // Atomic against concurrent creates: a pending admission on the tenant's namespace (admission.ts, ADR 0015).
    const release = opts.admission
      ? await this.admission.reserve(namespace, vm.tenant, vm.name, res, opts.admission.limits, (names) => this.usageOf(vm.tenant, names))
      : undefined;
    const body = toObject(vm, this.tn, opts.admission?.diskMiB);
    let created: MicroVMObject;
    try {
      created = await this.withNamespace(namespace, vm.tenant, () =>
        this.custom.createNamespacedCustomObject({ group, version, plural, namespace, body, fieldManager: this.component }),
      );
    } catch (e) {
      const err = fromK8sError(e, `create microVM ${vm.name}`);
      if (err.code === ErrorCodes.ALREADY_EXISTS) {
        const existing = await this.rawByName(namespace, vm.name);
        const id = existing ? fromObject(existing, this.tn).id : undefined;
        throw new MvmError(ErrorCodes.ALREADY_EXISTS, `a microVM named ${JSON.stringify(vm.name)} already exists${id ? ` (${id})` : ''}`, {
          violations: [{ field: 'name', message: 'already in use' }],
          details: id ? { id } : {},
        });
      }
      throw err;
    } finally {
      void release?.().catch(() => undefined);
    }
    this.locations.set(vm.id, { namespace, name: vm.name });
    const rvs = [created.metadata.resourceVersion!];
    // Create ignores status (status subresource): write a non-initial one after.
    if (!isInitialStatus(vm.status)) {
      for (let attempt = 0; ; attempt++) {
        try {
          created = await this.replaceStatus({ ...created, status: { ...vm.status, updatedAt: vm.updatedAt } });
          break;
        } catch (e) {
          if (httpStatus(e) !== 409 || attempt >= this.maxRetries) throw fromK8sError(e, `write status of microVM ${vm.id}`);
          created = (await this.rawByName(namespace, vm.name)) ?? created;
        }
      }
      rvs.push(created.metadata.resourceVersion!);
    }
    this.cacheObject(vm.id, created);
    this.notify(vm.id, rvs, false);
    return fromObject(created, this.tn);
  }

  async getVm(id: string): Promise<MicroVM | undefined> {
    const raw = await this.locate(id);
    return raw ? fromObject(raw, this.tn) : undefined;
  }

  async listVms(opts: ListOptions = {}): Promise<Page<MicroVM>> {
    const limit = Math.min(Math.max(opts.limit ?? 100, 1), 1000);
    const labels = [...this.tn.selector()];
    const wanted = Object.entries(opts.labels ?? {});
    for (const [k, v] of Object.entries(mirrorLabels(opts.labels))) labels.push(`${k}=${v}`);
    const fields: string[] = [];
    if (opts.name !== undefined) fields.push(`metadata.name=${fieldValue(opts.name)}`);
    if (opts.phase !== undefined) fields.push(`status.phase=${fieldValue(opts.phase)}`);
    let cont: string | undefined;
    if (opts.cursor) {
      const c = Buffer.from(opts.cursor, 'base64url').toString();
      if (!c.startsWith(CURSOR_PREFIX) || c.length === CURSOR_PREFIX.length) throw cursorError('malformed cursor');
      cont = c.slice(CURSOR_PREFIX.length);
    }
    const q = {
      group,
      version,
      plural,
      limit,
      ...(labels.length ? { labelSelector: labels.join(',') } : {}),
      ...(fields.length ? { fieldSelector: fields.join(',') } : {}),
      ...(cont ? { _continue: cont } : {}),
    };
    let out: ListResult<MicroVMObject>;
    try {
      out = (opts.tenant !== undefined
        ? await this.custom.listNamespacedCustomObject({ ...q, namespace: this.tn.namespaceOf(opts.tenant) })
        : await this.custom.listClusterCustomObject(q)) as ListResult<MicroVMObject>;
    } catch (e) {
      const code = httpStatus(e);
      if (cont && code === 410) throw cursorError('expired (Kubernetes continue tokens live until the next etcd compaction, ~5 min); list again from the start');
      if (cont && code === 400) throw cursorError('malformed cursor');
      throw fromK8sError(e, 'list microVMs');
    }
    const items = out.items
      .map((o) => fromObject(o, this.tn))
      .filter((vm) => wanted.every(([k, v]) => vm.spec.labels?.[k] === v));
    for (const o of out.items) {
      const id = o.metadata.labels?.[LABEL_ID];
      if (id) this.locations.set(id, { namespace: o.metadata.namespace!, name: o.metadata.name! });
    }
    const page: Page<MicroVM> = { items };
    if (out.metadata?.continue) page.nextCursor = Buffer.from(CURSOR_PREFIX + out.metadata.continue).toString('base64url');
    return page;
  }

  async updateVm(id: string, mutate: (vm: MicroVM) => MicroVM, expectedVersion?: string, opts: WriteOptions = {}): Promise<MicroVM> {
    let expected = expectedVersion;
    const rvs: string[] = [];
    for (let attempt = 0; ; attempt++) {
      const obj = await this.locate(id);
      if (!obj) throw notFound('microVM', id);
      const rv = obj.metadata.resourceVersion!;
      if (expected !== undefined && rv !== expected) throw conflict(id, rv, expected);
      const cur = fromObject(obj, this.tn);
      const next = mutate(structuredClone(cur));
      if (next.name !== cur.name || next.tenant !== cur.tenant) {
        throw new MvmError(ErrorCodes.FIELD_IMMUTABLE, `microVM ${id}: name and tenant cannot change in Kubernetes mode`, {
          violations: [{ field: next.name !== cur.name ? 'name' : 'tenant', message: 'immutable' }],
        });
      }
      const specChanged = !isDeepStrictEqual(cur.spec, next.spec) || cur.desiredState !== next.desiredState;
      const statusChanged = !isDeepStrictEqual(cur.status, next.status);
      if (!specChanged && !statusChanged) {
        this.notify(id, rvs, false, true);
        return cur;
      }
      const morePorts = (next.spec.ports?.length ?? 0) - (cur.spec.ports?.length ?? 0);
      if (specChanged && (next.spec.vcpu !== cur.spec.vcpu || next.spec.memory !== cur.spec.memory || morePorts > 0) && opts.admission) {
        checkQuota(cur.tenant, opts.admission.limits, await this.usageOf(cur.tenant), {
          vcpu: next.spec.vcpu - cur.spec.vcpu,
          memoryMiB: memoryMiB(next.spec) - memoryMiB(cur.spec),
          hostPorts: morePorts,
        });
      }
      const now = new Date().toISOString();
      let latest = obj;
      try {
        if (specChanged) {
          latest = (await this.custom.replaceNamespacedCustomObject({
            group,
            version,
            plural,
            namespace: obj.metadata.namespace!,
            name: obj.metadata.name!,
            body: withSpec(obj, cur, next, now),
            fieldManager: this.component,
          })) as MicroVMObject;
          rvs.push(latest.metadata.resourceVersion!);
          // From here the caller's precondition held; a retry re-applies mutate unconditionally.
          expected = undefined;
        }
        if (statusChanged) {
          latest = await this.replaceStatus({ ...latest, status: { ...next.status, updatedAt: now } });
          rvs.push(latest.metadata.resourceVersion!);
        }
      } catch (e) {
        const code = httpStatus(e);
        if (code === 404) throw notFound('microVM', id);
        if (code !== 409) throw fromK8sError(e, `update microVM ${id}`);
        if (expected !== undefined) throw conflict(id, undefined, expected);
        if (attempt >= this.maxRetries) throw new MvmError(ErrorCodes.CONFLICT, `microVM ${id}: still conflicting after ${attempt + 1} attempts`);
        continue;
      }
      this.cacheObject(id, latest);
      this.notify(id, rvs, false);
      return fromObject(latest, this.tn);
    }
  }

  async deleteVm(id: string): Promise<void> {
    const obj = await this.locate(id);
    if (obj) {
      try {
        const res = (await this.custom.deleteNamespacedCustomObject({ group, version, plural, namespace: obj.metadata.namespace!, name: obj.metadata.name! })) as MicroVMObject | undefined;
        // With finalizers it stays (deletionTimestamp set) until they are removed.
        this.cacheObject(id, res?.metadata?.finalizers?.length ? res : undefined);
      } catch (e) {
        if (httpStatus(e) !== 404) throw fromK8sError(e, `delete microVM ${id}`);
      }
    }
    this.locations.delete(id);
    this.notify(id, [], true);
  }

  // ---- events ---------------------------------------------------------------------------------

  async appendEvent(e: VmEvent): Promise<void> {
    const namespace = this.tn.namespaceOf(e.tenant);
    const obj = await this.locate(e.vmId);
    const name = obj?.metadata.name ?? e.vmId;
    const at = new Date(e.time);
    const body: CoreV1Event = {
      metadata: {
        generateName: `${name.slice(0, 200)}.`,
        namespace,
        labels: { ...this.tn.systemLabels(e.tenant), ...(isLabelValue(e.vmId) ? { [LABEL_ID]: e.vmId } : {}) },
        annotations: { [ANN_EVENT_TIME]: e.time },
      },
      involvedObject: {
        apiVersion: `${group}/${version}`,
        kind: MICROVM_RESOURCE.kind,
        name,
        namespace,
        ...(obj?.metadata.uid ? { uid: obj.metadata.uid } : {}),
      },
      type: e.type,
      reason: e.reason,
      message: e.message,
      firstTimestamp: at,
      lastTimestamp: at,
      count: 1,
      source: { component: this.component, host: hostname() },
    };
    try {
      await this.withNamespace(namespace, e.tenant, () => this.core.createNamespacedEvent({ namespace, body }));
    } catch (err) {
      throw fromK8sError(err, `record event ${e.reason} of microVM ${e.vmId}`);
    }
  }

  async listEvents(opts: { vmId?: string; tenant?: string; afterSeq?: number; limit?: number }): Promise<VmEvent[]> {
    if (opts.vmId !== undefined && !isLabelValue(opts.vmId)) return [];
    const labels = [...this.tn.selector(), `${LABEL_ID}${opts.vmId !== undefined ? `=${opts.vmId}` : ''}`];
    const all: CoreV1Event[] = [];
    let cont: string | undefined;
    try {
      do {
        const q = { labelSelector: labels.join(','), limit: 1000, ...(cont ? { _continue: cont } : {}) };
        const page = opts.tenant !== undefined ? await this.core.listNamespacedEvent({ ...q, namespace: this.tn.namespaceOf(opts.tenant) }) : await this.core.listEventForAllNamespaces(q);
        all.push(...page.items);
        cont = page.metadata?._continue;
      } while (cont);
    } catch (e) {
      throw fromK8sError(e, 'list events');
    }
    const after = opts.afterSeq ?? 0;
    return all
      .map((ev): VmEvent => ({
        seq: Number(ev.metadata.resourceVersion),
        vmId: ev.metadata.labels?.[LABEL_ID] ?? '',
        tenant: this.tn.tenantOf(ev.metadata.namespace ?? ''),
        time: ev.metadata.annotations?.[ANN_EVENT_TIME] ?? (ev.lastTimestamp ?? ev.firstTimestamp ?? new Date(0)).toISOString(),
        type: ev.type === 'Warning' ? 'Warning' : 'Normal',
        reason: ev.reason ?? '',
        message: ev.message ?? '',
      }))
      .filter((ev) => ev.seq! > after)
      .sort((a, b) => a.seq! - b.seq!)
      .slice(0, Math.min(opts.limit ?? 500, 5000));
  }

  // ---- change notifications ---------------------------------------------------------------------

  watch(cb: (c: StoreChange) => void): () => void {
    this.subs.add(cb);
    if (this.subs.size === 1 && !this.closed) void this.runWatch(++this.watchGen);
    return () => {
      this.subs.delete(cb);
      if (this.subs.size === 0) this.stopWatch();
    };
  }

  async close(): Promise<void> {
    this.closed = true;
    this.subs.clear();
    this.stopWatch();
  }

  private stopWatch(): void {
    this.watchGen++;
    this.watchAbort?.abort();
    this.watchAbort = undefined;
  }

  /** Report (id, rvs) once; `always` reports even without a new version (a no-op update). */
  private notify(id: string, rvs: string[], deleted: boolean, always = false): void {
    const keys = deleted ? [`${id}@deleted`] : rvs.map((rv) => `${id}@${rv}`);
    let fresh = always;
    for (const k of keys) {
      if (this.reported.has(k)) continue;
      fresh = true;
      this.reported.set(k, true);
    }
    while (this.reported.size > 10000) this.reported.delete(this.reported.keys().next().value!);
    if (!fresh) return;
    const c: StoreChange = { kind: 'vm', id, deleted };
    for (const cb of [...this.subs]) {
      try {
        cb(c);
      } catch {
        // A subscriber's failure is its own.
      }
    }
  }

  /** list + watch of every MicroVM of this installation until stopWatch(); relists after 410 Gone. */
  private async runWatch(gen: number): Promise<void> {
    const w = new Watch(this.kc);
    const path = `/apis/${group}/${version}/${plural}`;
    const selector = this.tn.selector().join(',');
    let rv = '';
    let first = true;
    let backoff = 250;
    while (gen === this.watchGen) {
      try {
        if (!rv) {
          const list = (await this.custom.listClusterCustomObject({ group, version, plural, ...(selector ? { labelSelector: selector } : {}) })) as ListResult<MicroVMObject>;
          if (gen !== this.watchGen) return;
          rv = list.metadata?.resourceVersion ?? '';
          const present = new Set<string>();
          for (const o of list.items) {
            const id = fromObject(o, this.tn).id;
            present.add(id);
            this.cacheObject(id, o);
            // After a relist, whatever changed meanwhile is reported (the first list only primes).
            if (!first && this.watched.get(id) !== o.metadata.resourceVersion) this.notify(id, [o.metadata.resourceVersion!], false);
            this.watched.set(id, o.metadata.resourceVersion!);
          }
          for (const id of [...this.watched.keys()]) {
            if (present.has(id)) continue;
            this.watched.delete(id);
            this.cacheObject(id, undefined);
            if (!first) this.notify(id, [], true);
          }
          this.cacheSynced();
          first = false;
        }
        const err = await new Promise<unknown>((resolve) => {
          w.watch(
            path,
            { resourceVersion: rv, allowWatchBookmarks: true, ...(selector ? { labelSelector: selector } : {}) },
            (type: string, o: MicroVMObject & { code?: number }) => {
              if (gen !== this.watchGen) return;
              if (type === 'ERROR') {
                if (o.code === 410) rv = '';
                return;
              }
              if (o.metadata?.resourceVersion) rv = o.metadata.resourceVersion;
              if (type === 'BOOKMARK') return;
              const id = fromObject(o, this.tn).id;
              if (type === 'DELETED') {
                this.watched.delete(id);
                this.locations.delete(id);
                this.cacheObject(id, undefined);
                this.notify(id, [], true);
              } else {
                this.watched.set(id, o.metadata.resourceVersion!);
                this.cacheObject(id, o);
                this.notify(id, [o.metadata.resourceVersion!], false);
              }
            },
            resolve,
          ).then(
            (ac) => {
              if (gen !== this.watchGen) ac.abort();
              else this.watchAbort = ac;
            },
            resolve,
          );
        });
        if (gen !== this.watchGen) return;
        if (err && httpStatus(err) === 410) rv = '';
        else if (err) throw err instanceof Error ? err : new Error(String(err));
        backoff = 250;
      } catch {
        if (gen !== this.watchGen) return;
        // Transient (apiserver restart, network): back off, then resume or relist.
        await new Promise((r) => setTimeout(r, backoff).unref());
        backoff = Math.min(backoff * 2, 10000);
      }
    }
  }

  // ---- helpers --------------------------------------------------------------------------------

  private async rawByName(namespace: string, name: string): Promise<MicroVMObject | undefined> {
    try {
      return (await this.custom.getNamespacedCustomObject({ group, version, plural, namespace, name })) as MicroVMObject;
    } catch (e) {
      if (httpStatus(e) === 404) return undefined;
      throw fromK8sError(e, `get microVM ${namespace}/${name}`);
    }
  }

  /** The object of a VM id, read from the apiserver (never from a cache). */
  private async locate(id: string): Promise<MicroVMObject | undefined> {
    if (!id || !isLabelValue(id)) return undefined;
    const loc = this.locations.get(id);
    if (loc) {
      const o = await this.rawByName(loc.namespace, loc.name);
      if (o?.metadata.labels?.[LABEL_ID] === id) return o;
      this.locations.delete(id);
    }
    let list: ListResult<MicroVMObject>;
    try {
      list = (await this.custom.listClusterCustomObject({ group, version, plural, labelSelector: [...this.tn.selector(), `${LABEL_ID}=${id}`].join(',') })) as ListResult<MicroVMObject>;
    } catch (e) {
      throw fromK8sError(e, `find microVM ${id}`);
    }
    const o = list.items[0];
    if (o) this.locations.set(id, { namespace: o.metadata.namespace!, name: o.metadata.name! });
    return o;
  }

  private async replaceStatus(obj: MicroVMObject): Promise<MicroVMObject> {
    return (await this.custom.replaceNamespacedCustomObjectStatus({
      group,
      version,
      plural,
      namespace: obj.metadata.namespace!,
      name: obj.metadata.name!,
      body: obj,
      fieldManager: this.component,
    })) as MicroVMObject;
  }

  /** Run `write`; if the namespace does not exist yet, create it (tenants are namespaces) and retry once. */
  private async withNamespace<T>(namespace: string, tenant: string, write: () => Promise<T>): Promise<T> {
    try {
      return await write();
    } catch (e) {
      if (httpStatus(e) !== 404 || k8sStatus(e).details?.kind !== 'namespaces') throw e;
    }
    await this.ensureNamespace(namespace, tenant);
    return write();
  }

  /** Create a tenant's namespace (on demand); one that exists is fine. */
  private async ensureNamespace(namespace: string, tenant: string): Promise<void> {
    try {
      await this.core.createNamespace({ body: { metadata: { name: namespace, labels: this.tn.systemLabels(tenant) } } });
    } catch (e) {
      if (httpStatus(e) !== 409) throw fromK8sError(e, `create namespace ${namespace} of tenant ${tenant}`);
    }
  }

  /** Usage of a tenant from a fresh (consistent) list of its namespace. */
  async usageOf(tenant: string, names?: Set<string>): Promise<Usage> {
    const u = emptyUsage();
    let cont: string | undefined;
    do {
      let page: ListResult<MicroVMObject>;
      try {
        page = (await this.custom.listNamespacedCustomObject({ group, version, plural, namespace: this.tn.namespaceOf(tenant), limit: 500, ...(cont ? { _continue: cont } : {}) })) as ListResult<MicroVMObject>;
      } catch (e) {
        throw fromK8sError(e, `usage of tenant ${tenant}`);
      }
      for (const o of page.items) {
        names?.add(o.metadata.name!);
        const r = resourcesOfObject(o);
        u.vms += 1;
        u.vcpu += r.vcpu;
        u.memoryMiB += r.memoryMiB;
        u.diskMiB += r.diskMiB;
        u.hostPorts += r.hostPorts;
      }
      cont = page.metadata?.continue;
    } while (cont);
    return u;
  }
}

const cursorError = (message: string): MvmError =>
  new MvmError(ErrorCodes.VALIDATION_FAILED, `cursor: ${message}`, { violations: [{ field: 'cursor', message }] });

const conflict = (id: string, rv: string | undefined, expected: string): MvmError =>
  new MvmError(ErrorCodes.CONFLICT, `microVM ${id} was modified (${rv ? `resourceVersion ${rv}, ` : ''}expected ${expected})`, {
    details: rv ? { resourceVersion: rv } : {},
  });
