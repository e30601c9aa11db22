/** MicroVMPool objects for the API (src/core/pools.ts): a tenant's pools are those of its namespace. */
import { CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import type { PoolStore } from '../../core/pools.js';
import type { MicroVMPoolSpecT, MicroVMPoolStatusT, MicroVMPoolT } from '../../core/schema.js';
import { POOL_RESOURCE } from '../../k8s/crd.js';
import { fromK8sError, httpStatus } from '../../k8s/errors.js';
import type { ObjectMeta, TenantNamespaces } from '../../k8s/microvm-object.js';

const { group, version, plural } = POOL_RESOURCE;

interface MicroVMPoolObject {
  metadata: ObjectMeta;
  spec: MicroVMPoolSpecT;
  status?: MicroVMPoolStatusT;
}

export class KubernetesPoolStore implements PoolStore {
  private readonly custom: CustomObjectsApi;

  constructor(
    kc: KubeConfig,
    private readonly tn: TenantNamespaces,
  ) {
    this.custom = kc.makeApiClient(CustomObjectsApi);
  }

  private view(o: MicroVMPoolObject): MicroVMPoolT {
    const created = o.metadata.creationTimestamp;
    return {
      name: o.metadata.name!,
      tenant: this.tn.tenantOf(o.metadata.namespace!),
      spec: o.spec,
      ...(o.status ? { status: o.status } : {}),
      createdAt: created ? new Date(created).toISOString() : new Date(0).toISOString(),
    };
  }

  async list(tenant?: string): Promise<MicroVMPoolT[]> {
    try {
      const res = (
        tenant !== undefined
          ? await this.custom.listNamespacedCustomObject({ group, version, plural, namespace: this.tn.namespaceOf(tenant) })
          : await this.custom.listClusterCustomObject({ group, version, plural })
      ) as { items: MicroVMPoolObject[] };
      // A partition sees its own namespaces only.
      const mine = res.items.filter((o) => !this.tn.partition || o.metadata.namespace!.startsWith(`${this.tn.partition}-`));
      return mine.map((o) => this.view(o)).sort((a, b) => (a.tenant === b.tenant ? a.name.localeCompare(b.name) : a.tenant.localeCompare(b.tenant)));
    } catch (e) {
      throw fromK8sError(e, 'list pools');
    }
  }

  async get(tenant: string, name: string): Promise<MicroVMPoolT | undefined> {
    try {
      return this.view((await this.custom.getNamespacedCustomObject({ group, version, plural, namespace: this.tn.namespaceOf(tenant), name })) as MicroVMPoolObject);
    } catch (e) {
      if (httpStatus(e) === 404) return undefined;
      throw fromK8sError(e, `get pool ${name}`);
    }
  }

  async scale(tenant: string, name: string, replicas: number): Promise<MicroVMPoolT | undefined> {
    const namespace = this.tn.namespaceOf(tenant);
    for (let attempt = 0; ; attempt++) {
      try {
        const s = (await this.custom.getNamespacedCustomObjectScale({ group, version, plural, namespace, name })) as { metadata: Record<string, unknown>; spec?: { replicas?: number } };
        await this.custom.replaceNamespacedCustomObjectScale({ group, version, plural, namespace, name, body: { ...s, spec: { ...(s.spec ?? {}), replicas } }, fieldManager: 'microvm-api' });
        return await this.get(tenant, name);
      } catch (e) {
        if (httpStatus(e) === 404) return undefined;
        if (httpStatus(e) === 409 && attempt < 3) continue; // the operator wrote meanwhile
        throw fromK8sError(e, `scale pool ${name}`);
      }
    }
  }
}
