/**
 * Composition root of the node agent in cluster mode (`mvm-agent`, the DaemonSet): the same
 * LocalAgent and Controller as the standalone service, over the node's view of the Kubernetes
 * store (src/agent/cluster-agent.ts), plus the heartbeat Lease. No API here: the cluster API and
 * the operator are other processes; console and metrics go through the agent endpoint.
 */
import { chmodSync, mkdirSync } from 'node:fs';
import { KubeConfig } from '@kubernetes/client-node';
import pino, { type Logger } from 'pino';
import type { Config } from '../config.js';
import { Controller } from '../controller/controller.js';
import { NetworkController } from '../controller/network-controller.js';
import { SecurityGroupService } from '../core/security-groups.js';
import { validateRules } from '../network/sg-rules.js';
import type { ImageManager } from '../storage/oci/index.js';
import { KubernetesStore } from '../store/kubernetes/k8s-store.js';
import { KubernetesTenantStore } from '../store/kubernetes/tenant-store.js';
import { KubernetesResourceStore } from '../store/kubernetes/resource-store.js';
import { passwdIds } from '../vmm/proc.js';
import { QemuDriver } from '../vmm/qemu/qemu-driver.js';
import { LocalAgent } from './agent.js';
import { claimNode, createImageManager, createImageResolver, createLocalRuntime, createNetworkManager, createVmmDriver, releaseNode } from './node-runtime.js';
import { detectCgroups } from './cgroups.js';
import { NodeHeartbeat, NodeScopedStore } from './cluster-agent.js';
import { NodeRegistration, nodeRegisterEnv } from './node-registration.js';
import type { VolumeBackend } from '../core/ports/volumes.js';
import { VolumeService } from '../core/volumes.js';
import { volumeBackendsFromEnv } from '../storage/volumes/index.js';
import { readFileSync } from 'node:fs';
import { RemoteNodeAgents } from './endpoint/client.js';
import { MigrationSource } from './migration.js';

export interface ClusterNode {
  nodeName: string;
  kubeConfig: KubeConfig;
  k8s: KubernetesStore;
  store: NodeScopedStore;
  agent: LocalAgent;
  controller: Controller;
  log: Logger;
  /** This node's volume backends (the endpoint runs the API's volume operations on them) and the Volume records. */
  volumeBackends: VolumeBackend[];
  volumeRecords: KubernetesResourceStore;
  /** This node's image cache (the endpoint serves it to the API's images routes); its periodic gc runs here. */
  images: ImageManager;
  /** Requests to other nodes' agents (migrations: docs/adr/0034), with MVM_AGENT_TOKEN_FILE (default the pod's token). */
  peers: RemoteNodeAgents;
  dataDir: string;
  close(): Promise<void>;
}

export async function startClusterNode(cfg: Config, o: { kubeConfig?: KubeConfig; logger?: Logger; heartbeatMs?: number; registerNode?: boolean } = {}): Promise<ClusterNode> {
  const nodeName = process.env.NODE_NAME ?? process.env.MVM_NODE_NAME;
  if (!nodeName) throw new Error('NODE_NAME is not set (the DaemonSet sets it from spec.nodeName)');
  const log = o.logger ?? pino({ level: cfg.logLevel, base: { svc: 'mvm-agent', node: nodeName } });
  const kc = o.kubeConfig ?? new KubeConfig();
  if (!o.kubeConfig) kc.loadFromDefault();
  mkdirSync(cfg.dataDir, { recursive: true, mode: 0o711 });
  chmodSync(cfg.dataDir, 0o711);
  // This instance's host-global names (bridge, tables, subnet, cgroup parent) are ours alone on this host (ADR 0027).
  const claim = await claimNode(cfg);
  log.info({ instance: cfg.instance, dataDir: cfg.dataDir, cgroupParent: cfg.cgroupParent }, 'instance claimed');
  // The same image settings as standalone (credentials, kernel dirs, cache dir, lease, gc policy, max root disk).
  const k8s = new KubernetesStore({ kubeConfig: kc, component: `mvm-agent/${nodeName}`, ...(cfg.cluster?.partition ? { partition: cfg.cluster.partition } : {}) });
  // The image policy's tenant overrides are read from the tenant's namespace (ADR 0024) right before a pull.
  const tenants = new KubernetesTenantStore({ kubeConfig: kc, vms: k8s, ...(cfg.cluster?.systemNamespace ? { systemNamespace: cfg.cluster.systemNamespace } : {}) });
  const { images, imageCfg } = createImageResolver(cfg, log, process.env, async (t) => (await tenants.getTenant(t))?.imagePolicy);
  const kernel = await images.resolveKernel(undefined).catch((e: Error) => {
    log.error({ err: e.message }, 'default guest images are not available');
    return undefined;
  });
  const qemu = new QemuDriver({ cacheDir: cfg.cacheDir, accel: cfg.accel, runAs: cfg.vmmUser, ...(kernel ? { probeKernelPath: kernel.kernelPath } : {}) });
  const driver = createVmmDriver(cfg, qemu);
  const caps = await driver.capabilities();
  if (!caps.available) log.error({ driver: caps.driver, reason: caps.unavailableReason }, 'VMM driver cannot run guests on this node');
  const network = await createNetworkManager(cfg, log, claim);
  const store = new NodeScopedStore(k8s, kc, nodeName, log.child({ c: 'view' }));
  await store.start();
  // Security groups as standalone enforces them (ADR 0017): the same NetworkController and policy
  // compiler, over the SecurityGroup objects (list+watch, so changes made through the API apply live).
  let resources: KubernetesResourceStore | undefined;
  let netController: NetworkController | undefined;
  if (network) {
    resources = new KubernetesResourceStore(kc, k8s.tn);
    await resources.startInformer(log.child({ c: 'securitygroups' }));
    netController = new NetworkController({
      network,
      resources,
      store,
      groups: new SecurityGroupService(resources, store, validateRules),
      log: log.child({ c: 'network' }),
      defaultEgress: { default: cfg.network.egressDefault },
    });
  }
  // Volumes (ADR 0018, cluster mode): the VM's volumes are mapped from this node's backends when it
  // starts (the same VolumeService.attachForVm as standalone, over the Volume objects; read only).
  const volumeRecords = new KubernetesResourceStore(kc, k8s.tn);
  const vmmOwner = passwdIds(cfg.vmmUser);
  const { backends: volumeBackends } = volumeBackendsFromEnv(process.env, { dataDir: cfg.dataDir, node: nodeName, ...(vmmOwner ? { owner: vmmOwner } : {}) });
  const volumes = new VolumeService({ resources: volumeRecords, store, backends: volumeBackends });
  const cgroups = detectCgroups('/sys/fs/cgroup', cfg.cgroupParent);
  const { agent, controller } = createLocalRuntime(cfg, { nodeName, store, driver, images, imageCfg, volumes, cgroups, network, netController, log });
  // Image cache management as standalone (ADR 0019): in use = named by a MicroVM bound to this node
  // (every phase) or leased by a resolve in progress; periodic gc by the same policy.
  const imageManager = createImageManager(images, store, imageCfg, log.child({ c: 'images' }));
  // No kubelet (MVM_NODE_REGISTER=true): the agent registers its Node and keeps it Ready with each heartbeat.
  const registration = (o.registerNode ?? nodeRegisterEnv()) ? new NodeRegistration(kc, { nodeName, log: log.child({ c: 'node' }) }) : undefined;
  await registration?.ensure();
  const heartbeat = new NodeHeartbeat(kc, {
    namespace: cfg.cluster?.systemNamespace ?? 'microvm-system',
    agent,
    periodMs: o.heartbeatMs ?? 10_000,
    log,
    ...(registration ? { alsoOnBeat: () => registration.beat() } : {}),
  });
  await heartbeat.start();
  await netController?.start();
  // Migration with memory (docs/adr/0034): other nodes' agents reached as the API reaches them
  // (the Node's endpoint annotation, a token of the agents' audience, the agents' CA).
  const peers = new RemoteNodeAgents({
    kubeConfig: kc,
    ...(cfg.cluster.agentTokenFile ? { tokenFile: cfg.cluster.agentTokenFile } : {}),
    ...(cfg.cluster.agentCaFile ? { ca: () => readFileSync(cfg.cluster.agentCaFile!) } : {}),
    ...(cfg.cluster.agentServerName !== 'address' ? { serverName: (n: string) => cfg.cluster.agentServerName.replaceAll('{node}', n) } : {}),
    endpointCacheMs: 0,
  });
  // A VM arriving by migration is the controller's once it is bound here.
  const adoptIncoming = store.watch((c) => {
    if (!c.deleted && agent.isIncoming(c.id) && store.objectOf(c.id)) agent.adoptIncoming(c.id);
  });
  const migrations = new MigrationSource({ nodeName, dataDir: cfg.dataDir, store, k8s, agent, send: peers.send, log: log.child({ c: 'migration' }) });
  await controller.start();
  migrations.start();
  imageManager.start();
  log.info({ node: nodeName, driver: caps.driver, accel: caps.accel }, 'node agent running');
  let closed = false;
  return {
    nodeName,
    kubeConfig: kc,
    k8s,
    store,
    agent,
    controller,
    log,
    volumeBackends,
    volumeRecords,
    images: imageManager,
    peers,
    dataDir: cfg.dataDir,
    async close() {
      if (closed) return;
      closed = true;
      migrations.stop();
      adoptIncoming();
      await peers.shutdown();
      heartbeat.stop();
      await registration?.stopped();
      imageManager.stop();
      netController?.stop();
      await controller.stop();
      if (cfg.shutdownPolicy === 'stop') await agent.stopAll(cfg.stopTimeoutSeconds * 1000);
      await agent.shutdown();
      await store.close();
      await resources?.close();
      await volumeRecords.close();
      await k8s.close();
      await releaseNode({ ...(network ? { network } : {}), cgroups, claim, log });
    },
  };
}
