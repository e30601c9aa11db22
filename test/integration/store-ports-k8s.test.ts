/**
 * The gateway's port contracts (tenants + API keys, idempotency, audit, resources) against the
 * Kubernetes adapters of cluster mode (ADR 0015) and a real kube-apiserver: tenants are
 * namespaces, API keys Secrets and idempotency claims ConfigMaps in the system namespace, audit
 * entries Events, resources SecurityGroup/Snapshot objects. Every case gets its own partition, so
 * cases never see each other's objects.
 */
import { after } from 'node:test';
import { CoreV1Api } from '@kubernetes/client-node';
import { SG_KIND } from '../../src/core/security-groups.js';
import { SNAPSHOT_KIND } from '../../src/core/snapshots.js';
import { VOLUME_KIND, VOLUME_SNAPSHOT_KIND } from '../../src/core/volumes.js';
import { httpStatus } from '../../src/k8s/errors.js';
import { TenantNamespaces } from '../../src/k8s/microvm-object.js';
import { KubernetesAuditLog } from '../../src/store/kubernetes/audit-log.js';
import { KubernetesIdempotencyStore } from '../../src/store/kubernetes/idempotency-store.js';
import { KubernetesStore } from '../../src/store/kubernetes/k8s-store.js';
import { KubernetesResourceStore } from '../../src/store/kubernetes/resource-store.js';
import { KubernetesTenantStore } from '../../src/store/kubernetes/tenant-store.js';
import { auditContract } from '../contract/audit.contract.js';
import { idempotencyContract } from '../contract/idempotency.contract.js';
import { resourceContract, type ResourceContractCapabilities } from '../contract/resources.contract.js';
import { tenantContract, type TenantContractCapabilities } from '../contract/tenants.contract.js';
import { installCrds, startControlPlane } from '../support/k8s-control-plane.js';

const cp = await startControlPlane();
after(() => cp.stop());
installCrds(cp);
cp.kubectlOk(['wait', '--for=condition=Established', '--timeout=60s', 'crd/snapshots.microvm.service']);
for (let i = 0; cp.kubectl(['get', 'snapshots.microvm.service', '-A']).status !== 0; i++) {
  if (i > 100) throw new Error('snapshots.microvm.service is not served');
  await new Promise((r) => setTimeout(r, 100));
}
const SYSTEM_NAMESPACE = 'microvm-system';
cp.kubectlOk(['create', 'namespace', SYSTEM_NAMESPACE]);

const kc = cp.kubeConfig();
const core = kc.makeApiClient(CoreV1Api);
let n = 0;
const partition = (what: string): string => `${what}${n++}`;

/** What the Kubernetes tenant/API-key adapter does differently from the reference (SQLite). */
const TENANT_CAPABILITIES: TenantContractCapabilities = {
  // Namespaces and Secrets are listed by name: the namespace is `<partition>-<id>`, the Secret `<partition>-<key id>`.
  listOrder: 'id',
  // A continue token can precede an empty last page (namespaces of other installations follow in etcd).
  mayEndWithEmptyPage: true,
  // The namespace is Terminating until the namespace controller has emptied it.
  asyncDelete: true,
  // Reservations are an annotation on the tenant's namespace, so (kind, id) is unique per tenant.
  reservationsNeedRecord: true,
  reservationIdsPerTenant: true,
};

const RESOURCE_CAPABILITIES: ResourceContractCapabilities = {
  listOrder: 'tenant-name',
  kinds: [SG_KIND, SNAPSHOT_KIND, VOLUME_KIND, VOLUME_SNAPSHOT_KIND],
  // Objects live in the tenant's namespace, which the tenant store creates.
  tenantMustExist: true,
  // The id is a label: the API server enforces unique names, not unique label values.
  uniqueIds: false,
};

tenantContract(
  'kubernetes',
  async () => {
    const vms = new KubernetesStore({ kubeConfig: kc, partition: partition('t') });
    return { tenants: new KubernetesTenantStore({ kubeConfig: kc, vms, systemNamespace: SYSTEM_NAMESPACE }), vms, close: () => vms.close() };
  },
  TENANT_CAPABILITIES,
);

idempotencyContract('kubernetes', async (now) => ({
  store: new KubernetesIdempotencyStore(kc, new TenantNamespaces(partition('i')), { systemNamespace: SYSTEM_NAMESPACE, now }),
  close: async () => undefined,
}));

auditContract('kubernetes', async () => ({
  log: new KubernetesAuditLog(kc, new TenantNamespaces(partition('a')), { systemNamespace: SYSTEM_NAMESPACE }),
  close: async () => undefined,
}));

resourceContract(
  'kubernetes',
  async () => {
    const tn = new TenantNamespaces(partition('r'));
    const store = new KubernetesResourceStore(kc, tn);
    return {
      store,
      async ensureTenant(tenant) {
        try {
          await core.createNamespace({ body: { metadata: { name: tn.namespaceOf(tenant), labels: tn.systemLabels(tenant) } } });
        } catch (e) {
          if (httpStatus(e) !== 409) throw e;
        }
      },
      close: () => store.close(),
    };
  },
  RESOURCE_CAPABILITIES,
);
