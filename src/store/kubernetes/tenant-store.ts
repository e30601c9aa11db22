/**
 * Kubernetes adapters of the tenant and API-key ports (cluster mode, ADR 0015).
 *
 * - A tenant IS a namespace (`TenantNamespaces.namespaceOf(id)`), marked with the label
 *   `microvm.service/tenant-record=true`; display name, quotas, labels and times are one JSON
 *   annotation, snapshot/volume reservations another. resourceVersion is the namespace's, so
 *   `expectedVersion` is Kubernetes optimistic concurrency. A namespace the VM store created on
 *   demand (no marker) is adopted by createTenant. Deleting a tenant deletes its namespace (the
 *   namespace controller then deletes its MicroVMs, whose finalizer the operator removes after
 *   node-side cleanup); a namespace being deleted is no tenant.
 * - Usage = the MicroVMs of the namespace (KubernetesStore.usageOf) plus the reservations.
 *   Reservations are a read-modify-write of the annotation with the read resourceVersion
 *   (atomic among reservations); VM admission is the store's check-then-write (ADR 0010).
 * - An API key is a Secret in the system namespace (`microvm-system`), named by the key id,
 *   labelled with its tenant, holding the record with the SHA-256 of the secret only. Not in the
 *   tenant's namespace: RBAC cannot narrow Secrets by label, so the API may touch Secrets in its
 *   own namespace only. The one-active-key-per-name rule is check-then-create (not atomic).
 */
import { CoreV1Api, KubeConfig, type V1Namespace, type V1Secret } from '@kubernetes/client-node';
import { ErrorCodes, MvmError, notFound } from '../../core/errors.js';
import type { ApiKeyRecord, ApiKeyStore } from '../../core/ports/apikeys.js';
import type { Page } from '../../core/ports/store.js';
import type { Reservation, Tenant, TenantStore } from '../../core/ports/tenants.js';
import { checkQuota, type Quotas, type Usage } from '../../core/quota.js';
import { fromK8sError, httpStatus } from '../../k8s/errors.js';
import { LABEL_TENANT, TenantNamespaces, isLabelValue } from '../../k8s/microvm-object.js';
import type { KubernetesStore } from './k8s-store.js';

export const LABEL_TENANT_RECORD = 'microvm.service/tenant-record';
export const ANN_TENANT = 'microvm.service/tenant';
export const ANN_RESERVATIONS = 'microvm.service/reservations';
export const LABEL_APIKEY = 'microvm.service/apikey';
export const SECRET_TYPE_APIKEY = 'microvm.service/api-key';
export const DEFAULT_SYSTEM_NAMESPACE = 'microvm-system';

type TenantDoc = Omit<Tenant, 'id' | 'resourceVersion'>;

const CURSOR_PREFIX = 'k8s:';
const encodeCursor = (cont: string): string => Buffer.from(CURSOR_PREFIX + cont).toString('base64url');
function decodeCursor(cursor: string | undefined): string | undefined {
  if (!cursor) return undefined;
  const c = Buffer.from(cursor, 'base64url').toString();
  if (!c.startsWith(CURSOR_PREFIX) || c.length === CURSOR_PREFIX.length) {
    throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'cursor: malformed cursor', { violations: [{ field: 'cursor', message: 'malformed cursor' }] });
  }
  return c.slice(CURSOR_PREFIX.length);
}
const listError = (e: unknown, what: string): MvmError => {
  const code = httpStatus(e);
  if (code === 410) return new MvmError(ErrorCodes.VALIDATION_FAILED, 'cursor: expired; list again from the start', { violations: [{ field: 'cursor', message: 'expired' }] });
  return fromK8sError(e, what);
};

export interface KubernetesTenantStoreOptions {
  kubeConfig: KubeConfig;
  /** The VM store of the same installation (same partition): usage counts its MicroVMs. */
  vms: KubernetesStore;
  /** Where API-key Secrets live (default microvm-system). */
  systemNamespace?: string;
  maxRetries?: number;
}

export class KubernetesTenantStore implements TenantStore, ApiKeyStore {
  private readonly core: CoreV1Api;
  private readonly tn: TenantNamespaces;
  readonly systemNamespace: string;
  private readonly maxRetries: number;

  constructor(private readonly o: KubernetesTenantStoreOptions) {
    this.core = o.kubeConfig.makeApiClient(CoreV1Api);
    this.tn = o.vms.tn;
    this.systemNamespace = o.systemNamespace ?? DEFAULT_SYSTEM_NAMESPACE;
    this.maxRetries = o.maxRetries ?? 10;
  }

  // ---- tenants ----------------------------------------------------------------------------

  private toTenant(ns: V1Namespace): Tenant | undefined {
    if (ns.metadata?.labels?.[LABEL_TENANT_RECORD] !== 'true' || ns.metadata.deletionTimestamp) return undefined;
    if (this.tn.partition && !ns.metadata.name!.startsWith(`${this.tn.partition}-`)) return undefined;
    const doc = JSON.parse(ns.metadata.annotations?.[ANN_TENANT] ?? '{}') as TenantDoc;
    return { ...doc, quotas: doc.quotas ?? {}, id: this.tn.tenantOf(ns.metadata.name!), resourceVersion: ns.metadata.resourceVersion! };
  }

  private nsBody(t: Tenant, base?: V1Namespace): V1Namespace {
    const { id: _id, resourceVersion: _rv, ...doc } = t;
    return {
      ...(base ?? {}),
      metadata: {
        ...(base?.metadata ?? {}),
        name: this.tn.namespaceOf(t.id),
        labels: { ...(base?.metadata?.labels ?? {}), ...this.tn.systemLabels(t.id), [LABEL_TENANT_RECORD]: 'true' },
        annotations: { ...(base?.metadata?.annotations ?? {}), [ANN_TENANT]: JSON.stringify(doc) },
      },
    };
  }

  private async readNs(name: string): Promise<V1Namespace | undefined> {
    try {
      return await this.core.readNamespace({ name });
    } catch (e) {
      if (httpStatus(e) === 404) return undefined;
      throw fromK8sError(e, `read namespace ${name}`);
    }
  }

  private nsName(id: string): string | undefined {
    try {
      return this.tn.namespaceOf(id);
    } catch {
      return undefined;
    }
  }

  async createTenant(t: Tenant): Promise<Tenant> {
    const name = this.tn.namespaceOf(t.id);
    const exists = (): MvmError =>
      new MvmError(ErrorCodes.ALREADY_EXISTS, `tenant ${JSON.stringify(t.id)} already exists`, { violations: [{ field: 'id', message: 'already in use' }] });
    try {
      const ns = await this.core.createNamespace({ body: this.nsBody(t) });
      return this.toTenant(ns)!;
    } catch (e) {
      if (httpStatus(e) !== 409) throw fromK8sError(e, `create tenant ${t.id}`);
    }
    // The namespace exists: a tenant already, being deleted, or made on demand by the VM store (adopt it).
    for (let attempt = 0; ; attempt++) {
      const cur = await this.readNs(name);
      if (!cur) return this.createTenant(t);
      if (cur.metadata?.deletionTimestamp) throw new MvmError(ErrorCodes.CONFLICT, `tenant ${t.id} is being deleted; try again when its namespace is gone`);
      if (cur.metadata?.labels?.[LABEL_TENANT_RECORD] === 'true') throw exists();
      try {
        return this.toTenant(await this.core.replaceNamespace({ name, body: this.nsBody(t, cur) }))!;
      } catch (e) {
        if (httpStatus(e) !== 409 || attempt >= this.maxRetries) throw fromK8sError(e, `create tenant ${t.id}`);
      }
    }
  }

  async getTenant(id: string): Promise<Tenant | undefined> {
    const name = this.nsName(id);
    if (!name) return undefined;
    const ns = await this.readNs(name);
    return ns ? this.toTenant(ns) : undefined;
  }

  async listTenants(opts: { limit?: number; cursor?: string }): Promise<Page<Tenant>> {
    const limit = Math.min(Math.max(opts.limit ?? 100, 1), 1000);
    const cont = decodeCursor(opts.cursor);
    let out;
    try {
      out = await this.core.listNamespace({ labelSelector: [...this.tn.selector(), `${LABEL_TENANT_RECORD}=true`].join(','), limit, ...(cont ? { _continue: cont } : {}) });
    } catch (e) {
      throw listError(e, 'list tenants');
    }
    const page: Page<Tenant> = { items: out.items.map((ns) => this.toTenant(ns)).filter((t): t is Tenant => t !== undefined) };
    if (out.metadata?._continue) page.nextCursor = encodeCursor(out.metadata._continue);
    return page;
  }

  /** Read-modify-write of the tenant's namespace; a 409 is retried unless expectedVersion was given. */
  private async rmw(id: string, f: (ns: V1Namespace, t: Tenant) => V1Namespace, expectedVersion?: string): Promise<V1Namespace> {
    const name = this.nsName(id);
    for (let attempt = 0; ; attempt++) {
      const ns = name ? await this.readNs(name) : undefined;
      const t = ns ? this.toTenant(ns) : undefined;
      if (!ns || !t) throw notFound('tenant', id);
      if (expectedVersion !== undefined && t.resourceVersion !== expectedVersion) throw conflict(id, t.resourceVersion, expectedVersion);
      try {
        return await this.core.replaceNamespace({ name: name!, body: f(structuredClone(ns), t) });
      } catch (e) {
        if (httpStatus(e) !== 409) throw fromK8sError(e, `update tenant ${id}`);
        if (expectedVersion !== undefined) throw conflict(id, undefined, expectedVersion);
        if (attempt >= this.maxRetries) throw fromK8sError(e, `update tenant ${id}`);
      }
    }
  }

  async updateTenant(id: string, mutate: (t: Tenant) => Tenant, expectedVersion?: string): Promise<Tenant> {
    const ns = await this.rmw(
      id,
      (cur, t) => {
        const next = mutate(structuredClone(t));
        return this.nsBody({ ...next, id, resourceVersion: t.resourceVersion, updatedAt: new Date().toISOString() }, cur);
      },
      expectedVersion,
    );
    return this.toTenant(ns)!;
  }

  async deleteTenant(id: string, expectedVersion?: string): Promise<void> {
    const t = await this.getTenant(id);
    if (!t) throw notFound('tenant', id);
    if (expectedVersion !== undefined && t.resourceVersion !== expectedVersion) throw conflict(id, t.resourceVersion, expectedVersion);
    try {
      await this.core.deleteNamespace({ name: this.tn.namespaceOf(id), body: { preconditions: { resourceVersion: t.resourceVersion } } });
    } catch (e) {
      if (httpStatus(e) === 404) throw notFound('tenant', id);
      if (httpStatus(e) === 409) throw conflict(id, undefined, t.resourceVersion);
      throw fromK8sError(e, `delete tenant ${id}`);
    }
  }

  async usage(tenant: string): Promise<Usage> {
    const u = await this.o.vms.usageOf(tenant);
    for (const r of await this.reservations(tenant)) {
      u.diskMiB += r.diskMiB;
      if (r.kind === 'snapshot') u.snapshots += 1;
      else if (r.kind === 'volume') u.volumes += 1;
    }
    return u;
  }

  async reserve(tenant: string, r: Reservation, limits: Quotas): Promise<void> {
    // VM usage is read first (check-then-write, as VM admission); reservations are exact: same object, same version.
    const vmUsage = await this.o.vms.usageOf(tenant);
    await this.rmw(tenant, (ns) => {
      const list = reservationsOf(ns);
      if (list.some((x) => x.kind === r.kind && x.id === r.id)) return ns; // idempotent: an unchanged replace writes nothing
      const u = { ...vmUsage };
      for (const x of list) {
        u.diskMiB += x.diskMiB;
        if (x.kind === 'snapshot') u.snapshots += 1;
        else if (x.kind === 'volume') u.volumes += 1;
      }
      checkQuota(tenant, limits, u, { ...(r.kind === 'snapshot' ? { snapshots: 1 } : { volumes: 1 }), diskMiB: r.diskMiB });
      ns.metadata!.annotations = { ...(ns.metadata!.annotations ?? {}), [ANN_RESERVATIONS]: JSON.stringify([...list, r]) };
      return ns;
    });
  }

  async release(tenant: string, kind: Reservation['kind'], id: string): Promise<void> {
    if (!(await this.getTenant(tenant))) return;
    await this.rmw(tenant, (ns) => {
      const list = reservationsOf(ns).filter((x) => !(x.kind === kind && x.id === id));
      ns.metadata!.annotations = { ...(ns.metadata!.annotations ?? {}), [ANN_RESERVATIONS]: JSON.stringify(list) };
      return ns;
    });
  }

  async reservations(tenant: string): Promise<Reservation[]> {
    const name = this.nsName(tenant);
    const ns = name ? await this.readNs(name) : undefined;
    return ns ? reservationsOf(ns) : [];
  }

  // ---- API keys ---------------------------------------------------------------------------

  private keyLabels(tenant: string): Record<string, string> {
    return { ...this.tn.systemLabels(tenant), [LABEL_APIKEY]: 'true' };
  }

  private keyOf(s: V1Secret): ApiKeyRecord | undefined {
    if (s.metadata?.labels?.[LABEL_APIKEY] !== 'true') return undefined;
    if ((this.tn.partition ?? '') !== (s.metadata.labels['microvm.service/partition'] ?? '')) return undefined;
    const raw = s.data?.record;
    return raw ? (JSON.parse(Buffer.from(raw, 'base64').toString('utf8')) as ApiKeyRecord) : undefined;
  }

  private secretName(id: string): string {
    return this.tn.partition ? `${this.tn.partition}-${id}` : id;
  }

  private secretBody(k: ApiKeyRecord, base?: V1Secret): V1Secret {
    return {
      ...(base ?? {}),
      metadata: { ...(base?.metadata ?? {}), name: this.secretName(k.id), namespace: this.systemNamespace, labels: this.keyLabels(k.tenant) },
      type: SECRET_TYPE_APIKEY,
      data: { record: Buffer.from(JSON.stringify(k)).toString('base64') },
    };
  }

  private async readSecret(id: string): Promise<V1Secret | undefined> {
    if (!/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(id) || id.length > 200) return undefined;
    try {
      return await this.core.readNamespacedSecret({ name: this.secretName(id), namespace: this.systemNamespace });
    } catch (e) {
      if (httpStatus(e) === 404) return undefined;
      throw fromK8sError(e, `read API key ${id}`);
    }
  }

  async createKey(k: ApiKeyRecord): Promise<ApiKeyRecord> {
    if (!isLabelValue(k.tenant)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `tenant ${k.tenant} is not a valid label value`);
    const all = await this.allKeys(k.tenant);
    if (all.some((x) => x.name === k.name && !x.revokedAt)) {
      throw new MvmError(ErrorCodes.ALREADY_EXISTS, `tenant ${k.tenant} already has an active API key named ${JSON.stringify(k.name)}`, {
        violations: [{ field: 'name', message: 'already in use' }],
      });
    }
    try {
      await this.core.createNamespacedSecret({ namespace: this.systemNamespace, body: this.secretBody(k) });
    } catch (e) {
      throw fromK8sError(e, `create API key ${k.name}`);
    }
    return { ...k };
  }

  async getKey(id: string): Promise<ApiKeyRecord | undefined> {
    const s = await this.readSecret(id);
    return s ? this.keyOf(s) : undefined;
  }

  private async allKeys(tenant?: string): Promise<ApiKeyRecord[]> {
    const out: ApiKeyRecord[] = [];
    let cont: string | undefined;
    do {
      const page = await this.listKeys({ ...(tenant ? { tenant } : {}), limit: 1000, ...(cont ? { cursor: cont } : {}) });
      out.push(...page.items);
      cont = page.nextCursor;
    } while (cont);
    return out;
  }

  async listKeys(opts: { tenant?: string; limit?: number; cursor?: string }): Promise<Page<ApiKeyRecord>> {
    const limit = Math.min(Math.max(opts.limit ?? 100, 1), 1000);
    const cont = decodeCursor(opts.cursor);
    const sel = [...this.tn.selector(), `${LABEL_APIKEY}=true`];
    if (opts.tenant !== undefined) {
      if (!isLabelValue(opts.tenant)) return { items: [] };
      sel.push(`${LABEL_TENANT}=${opts.tenant}`);
    }
    let out;
    try {
      out = await this.core.listNamespacedSecret({ namespace: this.systemNamespace, labelSelector: sel.join(','), limit, ...(cont ? { _continue: cont } : {}) });
    } catch (e) {
      throw listError(e, 'list API keys');
    }
    const page: Page<ApiKeyRecord> = { items: out.items.map((s) => this.keyOf(s)).filter((k): k is ApiKeyRecord => k !== undefined) };
    if (out.metadata?._continue) page.nextCursor = encodeCursor(out.metadata._continue);
    return page;
  }

  private async keyRmw(id: string, f: (k: ApiKeyRecord) => ApiKeyRecord, tries = this.maxRetries): Promise<ApiKeyRecord> {
    for (let attempt = 0; ; attempt++) {
      const s = await this.readSecret(id);
      const k = s ? this.keyOf(s) : undefined;
      if (!s || !k) throw notFound('API key', id);
      const next = f({ ...k });
      if (JSON.stringify(next) === JSON.stringify(k)) return k;
      try {
        await this.core.replaceNamespacedSecret({ name: s.metadata!.name!, namespace: this.systemNamespace, body: this.secretBody(next, s) });
        return next;
      } catch (e) {
        if (httpStatus(e) !== 409 || attempt >= tries) throw fromK8sError(e, `update API key ${id}`);
      }
    }
  }

  async revokeKey(id: string, at: string): Promise<ApiKeyRecord> {
    return this.keyRmw(id, (k) => (k.revokedAt ? k : { ...k, revokedAt: at }));
  }

  /** Best effort (ApiKeyStore): a key deleted meanwhile is no error. */
  async touchKey(id: string, at: string): Promise<void> {
    try {
      await this.keyRmw(id, (k) => ({ ...k, lastUsedAt: at }), 1);
    } catch (e) {
      if (!(e instanceof MvmError && e.code === ErrorCodes.NOT_FOUND)) throw e;
    }
  }

  async deleteKeysOfTenant(tenant: string): Promise<number> {
    let n = 0;
    for (const k of await this.allKeys(tenant)) {
      try {
        await this.core.deleteNamespacedSecret({ name: this.secretName(k.id), namespace: this.systemNamespace });
        n++;
      } catch (e) {
        if (httpStatus(e) !== 404) throw fromK8sError(e, `delete API key ${k.id}`);
      }
    }
    return n;
  }
}

function reservationsOf(ns: V1Namespace): Reservation[] {
  const raw = ns.metadata?.annotations?.[ANN_RESERVATIONS];
  return raw ? (JSON.parse(raw) as Reservation[]) : [];
}

const conflict = (id: string, rv: string | undefined, expected: string): MvmError =>
  new MvmError(ErrorCodes.CONFLICT, `tenant ${id} was modified (${rv ? `resourceVersion ${rv}, ` : ''}expected ${expected})`, {
    details: rv ? { resourceVersion: rv } : {},
  });
