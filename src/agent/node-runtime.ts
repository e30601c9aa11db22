/**
 * What a node needs to run VMs, built the same way by the standalone service and the cluster
 * node agent: the VMM driver the configuration names and the CNI network manager.
 */
import { createHash } from 'node:crypto';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { VmmDriver } from '../core/ports/vmm.js';
import { CniNetworkManager } from '../network/manager.js';
import { FirecrackerDriver } from '../vmm/firecracker/firecracker-driver.js';
import type { QemuDriver } from '../vmm/qemu/qemu-driver.js';

/** Firecracker runs only where KVM really boots a guest: the QEMU driver's probe decides. */
export function createVmmDriver(cfg: Config, qemu: QemuDriver): VmmDriver {
  if (cfg.driver !== 'firecracker') return qemu;
  return new FirecrackerDriver({
    kvm: { kvmUsable: async () => (await qemu.accel()) === 'kvm' },
    // The VMM runs in the VM's network namespace (set up by the network manager), where its taps are.
    netnsFor: (spec) => spec.netnsPath,
    // Jailed: the chroot base on the data filesystem, so the VM's disks are hard-linked, not copied.
    ...(cfg.firecrackerJailer ? { jailer: { binary: cfg.firecrackerJailer, chrootBaseDir: join(cfg.dataDir, 'jailer') } } : {}),
  });
}

/** The CNI network manager of `network.mode: cni` (resynced), or undefined for no networking. */
export async function createNetworkManager(cfg: Config, log: Logger): Promise<CniNetworkManager | undefined> {
  if (cfg.network.mode !== 'cni') return undefined;
  // VM namespaces are host-global: a prefix per data directory keeps side-by-side instances apart.
  const tag = createHash('sha256').update(cfg.dataDir).digest('hex').slice(0, 4);
  const network = new CniNetworkManager({
    dataDir: cfg.dataDir,
    networks: [{ name: 'mvm', bridge: cfg.network.bridge, subnet: cfg.network.subnet, gateway: cfg.network.gateway, ipMasq: cfg.network.ipMasq }],
    netnsPrefix: `mvm${tag}-`,
    ...(cfg.network.hostNetns ? { hostNetns: cfg.network.hostNetns } : {}),
    log: log.child({ c: 'network' }),
  });
  await network.resync();
  return network;
}
