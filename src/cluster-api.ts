/**
 * Composition root of the API in cluster mode (ADR 0015): the same REST and gRPC API (same route
 * code, same gateway) over Kubernetes objects, and nothing else. No controller, scheduler or
 * local agent runs here: the operator places and reconciles MicroVM resources and the node
 * agents run them. Console and live metrics are proxied from the VM's node agent.
 *
 *   microVMs      → MicroVM CRs in the tenant's namespace (KubernetesStore, ADR 0010); reads from
 *                   the informer cache (src/store/kubernetes/read-cache.ts)
 *   tenants       → namespaces (KubernetesTenantStore)
 *   API keys      → Secrets in the system namespace (hash only)
 *   audit         → Events in the system namespace (+ structured `audit` log lines)
 *   idempotency   → ConfigMaps in the system namespace (create = claim)
 *   security groups → SecurityGroup objects in the tenant's namespace (KubernetesResourceStore)
 *   console/metrics → the node agent's endpoint (RemoteNodeAgents), SA token + TokenReview/SAR there
 *   snapshots     → Snapshot objects in the tenant's namespace (the same SnapshotService and routes
 *                   as standalone); the files are taken/deleted by the agent of the VM's node through
 *                   its endpoint; pause/resume = desiredState, acted on by the VM's node agent
 *   volumes       → Volume/VolumeSnapshot objects in the tenant's namespace (the same VolumeService
 *                   and routes as standalone); the bytes are created, snapshotted, restored and
 *                   deleted by a node agent through its endpoint (RemoteVolumes): a node-local
 *                   volume's on its node (placed at create, recorded on the Volume), a shared one's on any
 *   pools         → MicroVMPool objects (list, get, scale through the scale subresource); the
 *                   operator's pool controller keeps their members (ADR 0033)
 *   images        → each node agent's image cache (RemoteImages): listed with the node, deleted from
 *                   every node holding it, gc per node; a node not answering is a `warnings` entry
 */
import { KubeConfig } from '@kubernetes/client-node';
import type { FastifyInstance } from 'fastify';
import pino, { type Logger } from 'pino';
import { RemoteNodeAgents } from './agent/endpoint/client.js';
import { clusterMigrator } from './k8s/migrations.js';
import { createGatewayStack } from './gateway/stack.js';
import { loadGatewayConfig } from './gateway/config.js';
import { buildApi } from './api/server.js';
import type { Config } from './config.js';
import type { MicroVM } from './core/microvm.js';
import type { WriteOptions } from './core/ports/store.js';
import { MicroVMService } from './core/service.js';
import { GuestService } from './core/guest.js';
import { startGrpcServer, type GrpcServer } from './grpc/server.js';
import { openServerTls } from './tls/server.js';
import { CaBundle } from './tls/files.js';
import { KubernetesAuditLog } from './store/kubernetes/audit-log.js';
import { KubernetesIdempotencyStore } from './store/kubernetes/idempotency-store.js';
import { CachedKubernetesStore } from './store/kubernetes/read-cache.js';
import type { KubernetesStore } from './store/kubernetes/k8s-store.js';
import { KubernetesTenantStore } from './store/kubernetes/tenant-store.js';
import { KubernetesResourceStore } from './store/kubernetes/resource-store.js';
import { SG_KIND, SecurityGroupService } from './core/security-groups.js';
import { SNAPSHOT_KIND, SnapshotService, type SnapshotSpec } from './core/snapshots.js';
import { networkAdmission } from './network/admission.js';
import { RemoteVolumes } from './agent/endpoint/volumes.js';
import { RemoteImages } from './agent/endpoint/images.js';
import { ImagePolicyGate, loadImagePolicy } from './storage/oci/policy.js';
import { VOLUME_KIND, VOLUME_SNAPSHOT_KIND, VolumeService } from './core/volumes.js';
import { validateRules } from './network/sg-rules.js';
import { PoolService } from './core/pools.js';
import { KubernetesPoolStore } from './store/kubernetes/pool-store.js';

export const VERSION = '0.1.0';

/**
 * The API's view of the MicroVM store: a microVM put into phase Deleting (REST/gRPC delete, tenant
 * cascade) is then deleted in Kubernetes, so a REST delete and `kubectl delete` take the same
 * path: deletionTimestamp, the operator's node-side cleanup, its finalizer removed, gone.
 */
export class ApiKubernetesStore extends CachedKubernetesStore {
  override async updateVm(id: string, mutate: (vm: MicroVM) => MicroVM, expectedVersion?: string, opts?: WriteOptions): Promise<MicroVM> {
    const vm = await super.updateVm(id, mutate, expectedVersion, opts);
    if (vm.status.phase === 'Deleting') await this.deleteVm(vm.id);
    return vm;
  }
}

export interface ClusterApi {
  app: FastifyInstance;
  url: string;
  store: KubernetesStore;
  tenantStore: KubernetesTenantStore;
  log: Logger;
  grpcAddress?: string;
  close(): Promise<void>;
}

export interface ClusterApiOptions {
  logger?: Logger;
  /** Default: KUBECONFIG, ~/.kube/config or the in-cluster service account. */
  kubeConfig?: KubeConfig;
  /** Token presented to node agents (default: the pod's service-account token file). */
  agentToken?: () => Promise<string> | string;
}

export async function startClusterApi(cfg: Config, opts: ClusterApiOptions = {}): Promise<ClusterApi> {
  const log =
    opts.logger ??
    pino({
      level: cfg.logLevel,
      base: { svc: 'mvm-api', mode: 'cluster' },
      redact: { paths: ['req.headers.authorization', 'token', 'adminToken', '*.token'], censor: '[redacted]' },
    });
  let kc = opts.kubeConfig;
  if (!kc) {
    kc = new KubeConfig();
    kc.loadFromDefault();
  }
  const systemNamespace = cfg.cluster.systemNamespace;
  const store = new ApiKubernetesStore({ kubeConfig: kc, component: 'microvm-api', ...(cfg.cluster.partition ? { partition: cfg.cluster.partition } : {}) });
  const tenantStore = new KubernetesTenantStore({ kubeConfig: kc, vms: store, systemNamespace });
  // Security groups are SecurityGroup objects in the tenant's namespace.
  const resources = new KubernetesResourceStore(kc, store.tn);
  const groups = new SecurityGroupService(resources, store, validateRules);
  const gatewayConfig = cfg.gateway ?? loadGatewayConfig();
  const gw = await createGatewayStack({
    store,
    config: gatewayConfig,
    ...(cfg.adminToken ? { adminToken: cfg.adminToken } : {}),
    log: log.child({ c: 'gateway' }),
    resources,
    resourceKinds: [SG_KIND, VOLUME_KIND, VOLUME_SNAPSHOT_KIND],
    adapters: {
      tenantStore,
      auditLog: new KubernetesAuditLog(kc, store.tn, { systemNamespace }),
      idempotency: new KubernetesIdempotencyStore(kc, store.tn, { systemNamespace }),
    },
  });
  if (!cfg.adminToken) log.info('no MVM_ADMIN_TOKEN: callers authenticate with JWT/OIDC or API keys only');
  const agentCa = cfg.cluster.agentCaFile ? new CaBundle(cfg.cluster.agentCaFile, { pollMs: cfg.tls?.reloadMs ?? 5000, log: log.child({ c: 'tls' }) }) : undefined;
  const agents = new RemoteNodeAgents({
    kubeConfig: kc,
    ...(opts.agentToken ? { token: opts.agentToken } : {}),
    ...(cfg.cluster.agentTokenFile ? { tokenFile: cfg.cluster.agentTokenFile } : {}),
    // The agents' CA (re-read when the file changes) and the name each agent's certificate must carry (ADR 0026).
    ...(agentCa ? { ca: () => agentCa.current } : {}),
    ...(cfg.cluster.agentServerName !== 'address' ? { serverName: (node: string) => cfg.cluster.agentServerName.replaceAll('{node}', node) } : {}),
    // Snapshots are taken on the VM's node and deleted on the node that holds them.
    vmOf: (id) => store.getVm(id),
    snapshotNodeOf: async (id) => (await resources.get<SnapshotSpec>(SNAPSHOT_KIND, id))?.spec.node || undefined,
  });
  // Volumes (ADR 0018, "Cluster mode"): the backends the nodes offer (MVM_VOLUME_BACKENDS, `local` always), reached through the agents.
  const remoteVolumes = new RemoteVolumes({ kubeConfig: kc, call: agents.call, resources });
  const volumes = new VolumeService({
    resources,
    store,
    backends: remoteVolumes.backends(['local', ...(process.env.MVM_VOLUME_BACKENDS ?? '').split(',').map((b) => b.trim()).filter(Boolean)]),
    ...(process.env.MVM_VOLUME_DEFAULT_BACKEND ? { defaultBackend: process.env.MVM_VOLUME_DEFAULT_BACKEND } : {}),
    tenants: gw.tenantStore,
    placeVolume: (o) => remoteVolumes.placeVolume(o),
    backendOn: remoteVolumes.backendOn,
    // Several replicas: none undoes another's create in progress; the bytes are the nodes' own.
    staleAfterMs: 15 * 60_000,
    sweepLocal: false,
    log: (msg, fields) => log.child({ c: 'volumes' }).info(fields ?? {}, msg),
  });
  // No image resolver (images are resolved on the node), but the image policy's admission
  // (ADR 0024): a refused registry is the caller's 403 now; the node checks again before pulling.
  const imageAdmission = new ImagePolicyGate({ global: loadImagePolicy(process.env), tenantPolicy: async (t) => (await gw.tenantStore.getTenant(t))?.imagePolicy });
  const service = new MicroVMService(store, agents, undefined, networkAdmission(groups), { tenants: gw.tenantStore, volumes, imageAdmission, hostPorts: cfg.hostPorts });
  // Snapshots and restores as in standalone (ADR 0009): records are Snapshot objects, quota
  // reservations on the tenant's namespace; a restored VM is placed on the snapshot's node by the operator.
  const snapshots = new SnapshotService(store, resources, agents, service, gw.tenantStore);
  service.restoreResolver = (p, req) => snapshots.restoreRequest(p, req);
  // Migration with memory (docs/adr/0034): a request annotation the operator plans and the source node carries out.
  service.migrator = clusterMigrator(kc, store.tn);
  // The images API (ADR 0019, cluster mode): the same routes over every node agent's image cache.
  const images = new RemoteImages({ kubeConfig: kc, call: agents.call, systemNamespace });
  // Inside the guest (issue 13): through the agent of the VM's node, which relays onto its guest connection.
  const guest = new GuestService(service, agents);
  // TLS for REST and gRPC (ADR 0026): one key pair, reloaded when its files change.
  const tls = openServerTls(cfg.tls, { dataDir: cfg.dataDir, listenHost: cfg.listen.host, log: log.child({ c: 'tls' }) });
  const app = await buildApi({ ...(tls ? { tls } : {}), service, gateway: gw.gateway, tenants: gw.tenants, audit: gw.audit, logger: log.child({ c: 'api' }), version: VERSION, securityGroups: groups, snapshots, volumes, images, guest, pools: new PoolService(new KubernetesPoolStore(kc, store.tn)) });
  const grpcServer: GrpcServer | undefined = gatewayConfig.grpcListen
    ? await startGrpcServer({ ...(tls ? { tls } : {}), service, gateway: gw.gateway, host: gatewayConfig.grpcListen.host, port: gatewayConfig.grpcListen.port, log: log.child({ c: 'grpc' }) })
    : undefined;
  // A snapshot left "Creating" by a crashed replica (another replica's may be in progress: only old ones).
  await snapshots.recover({ olderThanMs: 15 * 60_000 }).catch((e: Error) => log.warn({ err: e.message }, 'snapshot recovery failed'));
  // Claims of deleted VMs are released (store watch + periodic reconcile), as in standalone.
  await volumes.start(cfg.resyncSeconds * 1000 * 15).catch((e: Error) => log.warn({ err: e.message }, 'volume reconcile failed'));
  const address = await app.listen({ host: cfg.listen.host, port: cfg.listen.port }).catch((e: NodeJS.ErrnoException) => {
    throw e.code === 'EADDRINUSE' ? new Error(`MVM_LISTEN ${cfg.listen.host}:${cfg.listen.port} is already in use (another instance?): set MVM_LISTEN`, { cause: e }) : e;
  });
  const url = address.replace('[::1]', '127.0.0.1');
  let closed = false;
  return {
    app,
    url,
    store,
    tenantStore,
    log,
    ...(grpcServer ? { grpcAddress: grpcServer.address } : {}),
    async close() {
      if (closed) return;
      closed = true;
      await grpcServer?.close();
      await app.close();
      await gw.close();
      tls?.close();
      agentCa?.close();
      await agents.shutdown();
      volumes.stop();
      await store.close();
    },
  };
}
