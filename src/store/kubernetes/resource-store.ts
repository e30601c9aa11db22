/**
 * Kubernetes adapter of the generic resource port (cluster mode, ADR 0015) for the kinds that have
 * a CRD: a security group is a `SecurityGroup` object (a snapshot a `Snapshot` object) in its tenant's namespace, named by its
 * name, its id in the label `microvm.service/id`, its times in annotations. Optimistic concurrency
 * by resourceVersion. `watch` reports this process's writes; after `startInformer()` (the node
 * agent, which enforces the groups) also every change made by other processes (a list+watch of all
 * SecurityGroup objects of this partition). Other kinds: CAPABILITY_UNSUPPORTED.
 */
import { CustomObjectsApi, KubeConfig, ListWatch, Watch, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { ErrorCodes, MvmError, notFound } from '../../core/errors.js';
import type { ResourceStore, StoredResource } from '../../core/ports/resources.js';
import { SG_KIND } from '../../core/security-groups.js';
import { SNAPSHOT_KIND } from '../../core/snapshots.js';
import { VOLUME_KIND, VOLUME_SNAPSHOT_KIND } from '../../core/volumes.js';
import { SECURITYGROUP_RESOURCE, SNAPSHOT_RESOURCE, VOLUME_RESOURCE, VOLUME_SNAPSHOT_RESOURCE } from '../../k8s/crd.js';
import { fromK8sError, httpStatus } from '../../k8s/errors.js';
import { ANN_CREATED_AT, ANN_UPDATED_AT, LABEL_ID, TenantNamespaces, isLabelValue } from '../../k8s/microvm-object.js';

type Resource = { group: string; version: string; plural: string; kind: string };

/** The resource port's kinds (as the services name them) that have a CRD. */
const RESOURCES: Record<string, Resource> = {
  [SG_KIND]: SECURITYGROUP_RESOURCE,
  [SNAPSHOT_KIND]: SNAPSHOT_RESOURCE,
  [VOLUME_KIND]: VOLUME_RESOURCE,
  [VOLUME_SNAPSHOT_KIND]: VOLUME_SNAPSHOT_RESOURCE,
};

interface Obj {
  apiVersion: string;
  kind: string;
  metadata: { name?: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string>; resourceVersion?: string; creationTimestamp?: string | Date };
  spec: unknown;
}

export class KubernetesResourceStore implements ResourceStore {
  private readonly custom: CustomObjectsApi;
  private readonly subs = new Set<(kind: string, id: string) => void>();
  private informer: ListWatch<Obj & KubernetesObject> | undefined;
  private restartTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly kubeConfig: KubeConfig,
    private readonly tn: TenantNamespaces,
  ) {
    this.custom = kubeConfig.makeApiClient(CustomObjectsApi);
  }

  /**
   * List+watch every SecurityGroup object (of this partition) and report each added, changed or
   * deleted one to the `watch` subscribers, whoever wrote it. Resolves after the initial list.
   */
  async startInformer(log?: Logger): Promise<void> {
    if (this.informer) return;
    const { group, version, plural } = SECURITYGROUP_RESOURCE;
    const sel = [...this.tn.selector(), LABEL_ID].join(',');
    const informer = new ListWatch<Obj & KubernetesObject>(
      `/apis/${group}/${version}/${plural}`,
      new Watch(this.kubeConfig),
      async () => (await this.custom.listClusterCustomObject({ group, version, plural, labelSelector: sel })) as never,
      false,
      sel,
    );
    const changed = (o: Obj): void => {
      const id = o.metadata.labels?.[LABEL_ID];
      if (id) this.tell(SG_KIND, id);
    };
    informer.on('add', changed);
    informer.on('update', changed);
    informer.on('delete', changed);
    informer.on('error', (e: unknown) => {
      if (this.closed) return;
      log?.warn({ err: (e as Error)?.message }, 'SecurityGroup informer failed; restarting');
      clearTimeout(this.restartTimer);
      this.restartTimer = setTimeout(() => void informer.start().catch(() => undefined), 1000);
      this.restartTimer.unref();
    });
    this.informer = informer;
    await informer.start();
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.restartTimer);
    this.subs.clear();
    await this.informer?.stop();
  }

  private res(kind: string): Resource {
    const r = RESOURCES[kind];
    if (!r) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `${kind} resources are not available in cluster mode yet`);
    return r;
  }

  private from<T>(kind: string, o: Obj): StoredResource<T> {
    const created = o.metadata.annotations?.[ANN_CREATED_AT] ?? new Date(o.metadata.creationTimestamp ?? 0).toISOString();
    return {
      kind,
      id: o.metadata.labels![LABEL_ID]!,
      tenant: this.tn.tenantOf(o.metadata.namespace!),
      name: o.metadata.name!,
      spec: o.spec as T,
      resourceVersion: o.metadata.resourceVersion!,
      createdAt: created,
      updatedAt: o.metadata.annotations?.[ANN_UPDATED_AT] ?? created,
    };
  }

  private tell(kind: string, id: string): void {
    for (const cb of [...this.subs]) {
      try {
        cb(kind, id);
      } catch {
        // a subscriber's failure is its own
      }
    }
  }

  async create<T>(r: Omit<StoredResource<T>, 'resourceVersion' | 'createdAt' | 'updatedAt'>): Promise<StoredResource<T>> {
    const { group, version, plural, kind } = this.res(r.kind);
    const namespace = this.tn.namespaceOf(r.tenant);
    const now = new Date().toISOString();
    const body: Obj = {
      apiVersion: `${group}/${version}`,
      kind,
      metadata: { name: r.name, namespace, labels: { ...this.tn.systemLabels(r.tenant), [LABEL_ID]: r.id }, annotations: { [ANN_CREATED_AT]: now, [ANN_UPDATED_AT]: now } },
      spec: r.spec,
    };
    try {
      const o = (await this.custom.createNamespacedCustomObject({ group, version, plural, namespace, body })) as Obj;
      this.tell(r.kind, r.id);
      return this.from<T>(r.kind, o);
    } catch (e) {
      const err = fromK8sError(e, `create ${r.kind} ${r.name}`);
      if (err.code === ErrorCodes.ALREADY_EXISTS) {
        throw new MvmError(ErrorCodes.ALREADY_EXISTS, `a ${r.kind} named ${JSON.stringify(r.name)} already exists`, { violations: [{ field: 'name', message: 'already in use' }] });
      }
      throw err;
    }
  }

  private async rawById(kind: string, id: string): Promise<Obj | undefined> {
    if (!id || !isLabelValue(id)) return undefined;
    const { group, version, plural } = this.res(kind);
    try {
      const list = (await this.custom.listClusterCustomObject({ group, version, plural, labelSelector: [...this.tn.selector(), `${LABEL_ID}=${id}`].join(',') })) as { items: Obj[] };
      return list.items[0];
    } catch (e) {
      throw fromK8sError(e, `find ${kind} ${id}`);
    }
  }

  async get<T>(kind: string, id: string): Promise<StoredResource<T> | undefined> {
    const o = await this.rawById(kind, id);
    return o ? this.from<T>(kind, o) : undefined;
  }

  async getByName<T>(kind: string, tenant: string, name: string): Promise<StoredResource<T> | undefined> {
    const { group, version, plural } = this.res(kind);
    if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(name)) return undefined;
    try {
      const o = (await this.custom.getNamespacedCustomObject({ group, version, plural, namespace: this.tn.namespaceOf(tenant), name })) as Obj;
      return o.metadata.labels?.[LABEL_ID] ? this.from<T>(kind, o) : undefined;
    } catch (e) {
      if (httpStatus(e) === 404) return undefined;
      throw fromK8sError(e, `get ${kind} ${name}`);
    }
  }

  async list<T>(kind: string, opts: { tenant?: string } = {}): Promise<Array<StoredResource<T>>> {
    const { group, version, plural } = this.res(kind);
    const sel = [...this.tn.selector(), LABEL_ID].join(',');
    try {
      const out = (opts.tenant !== undefined
        ? await this.custom.listNamespacedCustomObject({ group, version, plural, namespace: this.tn.namespaceOf(opts.tenant), labelSelector: sel })
        : await this.custom.listClusterCustomObject({ group, version, plural, labelSelector: sel })) as { items: Obj[] };
      return out.items.map((o) => this.from<T>(kind, o));
    } catch (e) {
      throw fromK8sError(e, `list ${kind}s`);
    }
  }

  async update<T>(kind: string, id: string, mutate: (spec: T) => T, expectedVersion?: string): Promise<StoredResource<T>> {
    const { group, version, plural } = this.res(kind);
    for (let attempt = 0; ; attempt++) {
      const o = await this.rawById(kind, id);
      if (!o) throw notFound(kind, id);
      if (expectedVersion !== undefined && o.metadata.resourceVersion !== expectedVersion) {
        throw new MvmError(ErrorCodes.CONFLICT, `${kind} ${id} was modified (resourceVersion ${o.metadata.resourceVersion}, expected ${expectedVersion})`, { details: { resourceVersion: o.metadata.resourceVersion } });
      }
      const next: Obj = { ...o, spec: mutate(structuredClone(o.spec) as T), metadata: { ...o.metadata, annotations: { ...(o.metadata.annotations ?? {}), [ANN_UPDATED_AT]: new Date().toISOString() } } };
      try {
        const out = (await this.custom.replaceNamespacedCustomObject({ group, version, plural, namespace: o.metadata.namespace!, name: o.metadata.name!, body: next })) as Obj;
        this.tell(kind, id);
        return this.from<T>(kind, out);
      } catch (e) {
        if (httpStatus(e) !== 409) throw fromK8sError(e, `update ${kind} ${id}`);
        if (expectedVersion !== undefined) throw new MvmError(ErrorCodes.CONFLICT, `${kind} ${id} was modified (expected ${expectedVersion})`);
        if (attempt >= 10) throw fromK8sError(e, `update ${kind} ${id}`);
      }
    }
  }

  async delete(kind: string, id: string): Promise<boolean> {
    const { group, version, plural } = this.res(kind);
    const o = await this.rawById(kind, id);
    if (!o) return false;
    try {
      await this.custom.deleteNamespacedCustomObject({ group, version, plural, namespace: o.metadata.namespace!, name: o.metadata.name! });
    } catch (e) {
      if (httpStatus(e) === 404) return false;
      throw fromK8sError(e, `delete ${kind} ${id}`);
    }
    this.tell(kind, id);
    return true;
  }

  watch(cb: (kind: string, id: string) => void): () => void {
    this.subs.add(cb);
    return () => this.subs.delete(cb);
  }
}
