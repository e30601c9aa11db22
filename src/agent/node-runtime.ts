/**
 * What a node needs to run VMs, built the same way by the standalone service and the cluster
 * node agent: the instance's claim on its host-global names, the VMM driver the configuration
 * names, the CNI network manager, and the image resolver with its configuration (MVM_IMAGE_*,
 * registry credentials, kernel dirs) and cache manager, and the local agent with its controller.
 */
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { Store } from '../core/ports/store.js';
import type { VmmDriver } from '../core/ports/vmm.js';
import { claimInstance, type HeldClaim } from '../network/instance-claim.js';
import { CniNetworkManager } from '../network/manager.js';
import type { CgroupManager } from './cgroups.js';
import { DefaultImageResolver } from '../storage/default-images.js';
import type { ImagePolicy } from '../core/image-policy.js';
import { ImageManager, ImagePolicyGate, loadImageConfig, loadImagePolicy, OciImageResolver, setResolveLeaseMs, type ImageConfig, type ImageUser } from '../storage/oci/index.js';
import { FirecrackerDriver } from '../vmm/firecracker/firecracker-driver.js';
import type { QemuDriver } from '../vmm/qemu/qemu-driver.js';
import { LocalAgent } from './agent.js';
import { Controller } from '../controller/controller.js';
import type { NetworkController } from '../controller/network-controller.js';
import type { VolumeService } from '../core/volumes.js';
import type { MicroVM } from '../core/microvm.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { vmmIdentitiesFor } from '../vmm/identity.js';
import { passwdIds } from '../vmm/proc.js';

/** Firecracker runs only where KVM really boots a guest: the QEMU driver's probe decides. */
export function createVmmDriver(cfg: Config, qemu: QemuDriver): VmmDriver {
  if (cfg.driver !== 'firecracker') return qemu;
  return new FirecrackerDriver({
    ...(cfg.firecrackerBinary ? { binary: cfg.firecrackerBinary } : {}),
    kvm: { kvmUsable: async () => (await qemu.accel()) === 'kvm' },
    // The VMM runs in the VM's network namespace (set up by the network manager), where its taps are.
    netnsFor: (spec) => spec.netnsPath,
    // Jailed: the chroot base on the data filesystem, so the VM's disks are hard-linked, not copied.
    ...(cfg.firecrackerJailer ? { jailer: { binary: cfg.firecrackerJailer, chrootBaseDir: join(cfg.dataDir, 'jailer'), parentCgroup: cfg.cgroupParent } } : {}),
  });
}

/**
 * Claim the instance's names on this host before anything host-global is made (ADR 0027): a
 * name, data dir, bridge or subnet another live instance holds is refused with an error naming
 * the setting; the subnet is the configured one, the one recorded in the data dir, or a free one
 * of the pool.
 */
export function claimNode(cfg: Config): Promise<HeldClaim> {
  return claimInstance({
    instance: cfg.instance,
    dataDir: cfg.dataDir,
    ...(cfg.network.hostNetns ? { hostNetns: cfg.network.hostNetns } : {}),
    ...(cfg.network.mode === 'cni'
      ? { network: { bridge: cfg.network.bridge, ...(cfg.network.subnet ? { subnet: cfg.network.subnet } : {}), ...(cfg.network.gateway ? { gateway: cfg.network.gateway } : {}) } }
      : {}),
  });
}

/** The CNI network manager of `network.mode: cni` (resynced), or undefined for no networking; named after the instance. */
export async function createNetworkManager(cfg: Config, log: Logger, claim: Pick<HeldClaim, 'subnet' | 'gateway'>): Promise<CniNetworkManager | undefined> {
  if (cfg.network.mode !== 'cni') return undefined;
  const subnet = claim.subnet ?? cfg.network.subnet;
  const gateway = claim.gateway ?? cfg.network.gateway;
  if (!subnet || !gateway) throw new Error(`instance ${cfg.instance} has no subnet (MVM_NET_SUBNET)`);
  // Published ports bind by default to this instance's own gateway (known once its subnet is claimed).
  if (cfg.hostPorts.addressDefault) cfg.hostPorts.addresses = [gateway];
  const network = new CniNetworkManager({
    dataDir: cfg.dataDir,
    networks: [{ name: 'mvm', bridge: cfg.network.bridge, subnet, gateway, ipMasq: cfg.network.ipMasq }],
    table: cfg.network.table,
    netnsPrefix: cfg.network.netnsPrefix,
    hostPortAddresses: cfg.hostPorts.addresses,
    ...(cfg.network.hostNetns ? { hostNetns: cfg.network.hostNetns } : {}),
    log: log.child({ c: 'network' }),
  });
  await network.resync();
  log.info({ instance: cfg.instance, bridge: cfg.network.bridge, subnet, table: cfg.network.table, hostNetns: cfg.network.hostNetns ?? '(host)' }, 'network of this instance');
  return network;
}

/**
 * What a clean stop of a node removes (issue 17): when none of the instance's VMs is left, its
 * nftables tables, the bridge and host namespace it made, its cgroup parent; then its claim.
 * With VMs left running (MVM_SHUTDOWN_POLICY=leave) all of it stays for the next start to re-adopt.
 */
export async function releaseNode(o: { network?: CniNetworkManager; cgroups: CgroupManager; claim: HeldClaim; log: Logger }): Promise<void> {
  try {
    const removed = [...((await o.network?.release()) ?? []), ...o.cgroups.removeParent().map((d) => `cgroup ${d}`)];
    if (removed.length) o.log.info({ removed }, 'removed what this instance made');
  } finally {
    o.claim.release();
  }
}

/**
 * The image policy (ADR 0024) of the environment (MVM_REGISTRIES_ALLOWED, MVM_IMAGE_POLICY_FILE)
 * with the tenants' overrides: admission in the API and the check before every pull on a node.
 */
export function createImagePolicy(env: NodeJS.ProcessEnv, tenantPolicy?: (tenant: string) => Promise<ImagePolicy | undefined>): ImagePolicyGate {
  return new ImagePolicyGate({ global: loadImagePolicy(env), ...(tenantPolicy ? { tenantPolicy } : {}) });
}

/**
 * The node's images: default images for `default`/omitted references, OCI images (pulled, built,
 * cached by digest) otherwise, with the image settings of the environment (README "Images") and
 * the image policy checked before every pull.
 */
export function createImageResolver(
  cfg: Config,
  log: Logger,
  env: NodeJS.ProcessEnv = process.env,
  tenantPolicy?: (tenant: string) => Promise<ImagePolicy | undefined>,
): { images: OciImageResolver; imageCfg: ImageConfig; policy: ImagePolicyGate } {
  const imageCfg = loadImageConfig(env);
  const policy = createImagePolicy(env, tenantPolicy);
  const images = new OciImageResolver(new DefaultImageResolver({ cacheDir: cfg.cacheDir, log: (m) => log.info(m) }), {
    cacheDir: imageCfg.cacheDir ?? cfg.cacheDir,
    kernelDirs: imageCfg.kernelDirs,
    insecureRegistries: imageCfg.insecureRegistries,
    ...(imageCfg.credentials ? { credentials: imageCfg.credentials } : {}),
    policy,
    log: (m) => log.debug(m),
  });
  setResolveLeaseMs(imageCfg.leaseMs);
  log.info({ allowedRegistries: policy.global.allowedRegistries, signatureRules: policy.global.signatures?.length ?? 0, source: policy.global.source }, 'image policy');
  return { images, imageCfg, policy };
}

/** What the microVMs of `store` name (every phase): the standalone store, or a node agent's view of the VMs bound to it. */
export async function imageUsersOf(store: Pick<Store, 'listVms'>): Promise<ImageUser[]> {
  const users: ImageUser[] = [];
  let cursor: string | undefined;
  do {
    const page = await store.listVms({ limit: 1000, ...(cursor ? { cursor } : {}) });
    for (const v of page.items) users.push({ id: v.id, ...(v.spec.rootfs?.image ? { rootfs: v.spec.rootfs.image } : {}), ...(v.spec.kernel?.image ? { kernel: v.spec.kernel.image } : {}) });
    cursor = page.nextCursor;
  } while (cursor);
  return users;
}

/** The image cache manager (list, delete, gc; periodic gc once started): in use = named by a microVM of `store`, or leased by a resolve. */
export function createImageManager(images: OciImageResolver, store: Pick<Store, 'listVms'>, imageCfg: ImageConfig, log: Logger): ImageManager {
  return new ImageManager(images, () => imageUsersOf(store), imageCfg.gc, (m, d) => log.info(d ?? {}, m));
}

/**
 * The node's agent (VMMs, disks, network attachments, volumes) and the controller that reconciles
 * the store's VMs onto it, configured the same way for the standalone service and a cluster node.
 */
export function createLocalRuntime(
  cfg: Config,
  d: {
    nodeName: string;
    store: Store;
    driver: VmmDriver;
    images: ConstructorParameters<typeof LocalAgent>[0]['images'];
    imageCfg: Pick<ImageConfig, 'maxRootfsBytes'>;
    volumes: VolumeService;
    cgroups: CgroupManager;
    network: CniNetworkManager | undefined;
    netController: NetworkController | undefined;
    log: Logger;
  },
): { agent: LocalAgent; controller: Controller } {
  const vmmOwner = passwdIds(cfg.vmmUser);
  const { network, netController } = d;
  const agent = new LocalAgent({
    volumes: d.volumes,
    nodeName: d.nodeName,
    dataDir: cfg.dataDir,
    driver: d.driver,
    images: d.images,
    maxRootfsBytes: d.imageCfg.maxRootfsBytes,
    bootTimeoutMs: cfg.bootTimeoutSeconds * 1000,
    bootTimeoutAction: cfg.bootTimeoutAction,
    // The instance's parent (MVM_CGROUP_PARENT, default mvm-<instance>): several services or agents on one host do not share it.
    cgroups: d.cgroups,
    log: d.log.child({ c: 'agent' }),
    ...(vmmOwner ? { vmmOwner } : {}),
    ...vmmIdentitiesFor(cfg, d.driver.name),
    ...(network && netController ? { network, networkSpec: (vm: MicroVM) => netController.specFor(vm) } : {}),
  });
  const controller = new Controller({
    store: d.store,
    agent,
    scheduler: new Scheduler({ cpuOvercommit: cfg.cpuOvercommit }),
    log: d.log.child({ c: 'controller' }),
    resyncMs: cfg.resyncSeconds * 1000,
    stopTimeoutMs: cfg.stopTimeoutSeconds * 1000,
  });
  return { agent, controller };
}
