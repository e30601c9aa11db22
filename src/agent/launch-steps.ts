/**
 * The node agent's launch of a VM as named steps (src/core/steps.ts, ADR 0020):
 *
 *   cold boot:  prepare → vmm-user → resolve-images → cgroup → root-disk → network → volumes → console → vmm-start → announce
 *   restore:    root-disk swapped for restore-disk; reidentify and restore-done after vmm-start
 *
 * A failure names its step in the VM's status (`step network: …`, shown in the StartFailed
 * condition and event) and undoes what the completed steps did: the VMM is killed, volumes are
 * unmapped, the network is torn down (tap, netns, address), the cgroup removed. The VM directory
 * and its disk stay, for a retry or for delete.
 */
import { execFile } from 'node:child_process';
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { join } from 'node:path';
import { ErrorCodes, MvmError } from '../core/errors.js';
import { memoryMiB, parseDurationMs, parseQuantityMiB, type MicroVM } from '../core/microvm.js';
import type { ActualVm } from '../core/ports/agent.js';
import type { ImageResolver, KernelImage, RootfsImage } from '../core/ports/images.js';
import { kernelIpArgs, type NetworkManager, type NicAttachment, type VmNetworkSpec } from '../core/ports/network.js';
import type { DriveSpec, LaunchSpec, SnapshotFiles, VmmDriver, VmmInstance } from '../core/ports/vmm.js';
import type { VolumeAttacher } from '../core/ports/volumes.js';
import { insertAfter, swapSteps, type Step } from '../core/steps.js';
import { rotateClosed } from '../observability/log-rotation.js';
import { createOverlay, createRawClone } from '../storage/disks.js';
import type { VmmIdentities } from '../vmm/identity.js';
import type { CgroupManager } from './cgroups.js';

/** Headroom above guest RAM for the VMM itself (TCG translation cache, device state). */
export const VMM_OVERHEAD_MIB = 384;

/**
 * Present in the directory of a VM made from a snapshot until a restore of it has succeeded: while
 * it is there every start restores (a failed restore is retried, never turned into a cold boot of
 * the snapshot's disk copy); once gone, starts cold-boot the VM's own disk.
 */
export const RESTORE_PENDING = 'restore.pending';

/**
 * A suspended VM's memory and device state (ADR 0035): `<vmDir>/suspend/`, complete once its
 * `snapshot.json` is there (written last). Removed when the resumed guest runs, or by a stop.
 */
export const SUSPEND_DIR = 'suspend';

/** Whether the VM in `dir` is suspended to disk (its suspend files are complete). */
export function suspendComplete(dir: string): boolean {
  return existsSync(join(dir, SUSPEND_DIR, 'snapshot.json'));
}

/** What the agent keeps about one VM on this node. */
export interface Runtime {
  id: string;
  inst?: VmmInstance;
  state: ActualVm['state'];
  ready: boolean;
  stopping: boolean;
  launchedAt?: number;
  startedAt?: string;
  readyAt?: string;
  bootMs?: { vmm: number; guestReady: number; network?: number };
  reason?: string;
  message?: string;
  attachments?: NicAttachment[];
  stopWatch?: () => void;
  /** Serialises lifecycle operations on one VM. */
  lock: Promise<unknown>;
  /** The boot deadline passed before the guest was ready (killed: the VMM was killed for it). */
  bootTimedOut?: { message: string; killed: boolean };
  /** The link to the guest agent of the running VMM. */
  guest?: import('./guest-link.js').GuestLink;
  /** The guest agent's version, once it answered. */
  agentVersion?: string;
  /** Marks the guest ready (set by the watcher of the running VMM). */
  markReady?: (how: string) => void;
  /** Aborts a suspend under way (a resume arrived). */
  suspendAbort?: AbortController;
}

/** How the watcher of a launched VMM decides readiness. */
export interface WatchOptions {
  /** Ask the guest agent (default true); restores and clones are marked ready by their launch. */
  probeAgent?: boolean;
  /** First boot: the env and files the agent writes before the guest's workload starts. */
  setup?: { env?: Record<string, string>; files?: MicroVM['spec']['files'] };
  /** After the console marker, how long to wait for a guest agent before taking the marker (ms). */
  markerFallbackMs?: number;
}

/** What one launch builds up, step by step. */
export interface Launch {
  readonly vm: MicroVM;
  readonly runtime: Runtime;
  readonly dir: string;
  kernel: KernelImage;
  rootfs: RootfsImage;
  cgroupProcs: string[];
  root: DriveSpec;
  restoreFrom?: SnapshotFiles;
  /** Guest RAM as a file (a template's build: shared, so its snapshot keeps the RAM where it is). */
  memoryFile?: LaunchSpec['memoryFile'];
  nics: LaunchSpec['nics'];
  netArgs: string;
  netnsPath?: string;
  netMs?: number;
  volumeDrives: DriveSpec[];
  volumeArgs: string[];
  /** The user the VMM drops to and that owns the VM's writable disks (its own with per-VM users). */
  owner?: { uid: number; gid: number };
  /** Set when the VM has a VMM user of its own (passed to the driver). */
  runAs?: { uid: number; gid: number };
  spec: LaunchSpec;
  inst: VmmInstance;
  /** An incoming migration (migrateInSteps): the files received from the source node and the addresses to keep. */
  migration?: IncomingMigration;
}

/** What a migration's restore on the target node works from, and what it reports. */
export interface IncomingMigration {
  /** The snapshot files received from the source node (snapshot.json, the memory stream, the disk copy). */
  dir: string;
  sourceNode: string;
  /** NIC name → the address it had on the source node. */
  ips: Record<string, string>;
  /** Filled in by the network step: the addresses it has here, and why they differ. */
  ipChange?: string;
  /** When the VMM was running again here (ms since the epoch). */
  resumedAt?: number;
}

/** The node's parts a launch uses (the agent's options). */
export interface LaunchEnv {
  nodeName: string;
  driver: VmmDriver;
  images: ImageResolver;
  cgroups: CgroupManager;
  /** Owner of per-VM writable disks: the unprivileged user the VMM drops to. */
  vmmOwner?: { uid: number; gid: number };
  /** One VMM user per VM (ADR 0023; QEMU): leased at launch, released when the VM is deleted. Overrides vmmOwner. */
  vmmIdentities?: VmmIdentities;
  /** Networking (CNI + nftables); without it VMs get no NIC. */
  network?: NetworkManager;
  /** The network intent of a VM (groups resolved to ids, egress default applied). */
  networkSpec?: (vm: MicroVM) => Promise<VmNetworkSpec>;
  /** Persistent volumes: mapped on start (extra virtio-blk drives vdb, vdc, ... in spec order), unmapped on stop. */
  volumes?: VolumeAttacher;
  /** Largest `rootfs.size` this node grows a root disk to (MVM_ROOTFS_MAX_SIZE; cluster mode, where the API does not resolve images). */
  maxRootfsBytes?: number;
  /** Boot deadline (MVM_BOOT_TIMEOUT_SECONDS; a VM's lifecycle.bootTimeout overrides it); 0 or absent: none. */
  bootTimeoutMs?: number;
  /** What a passed boot deadline does: fail (kill the VMM; the VM goes Failed) or keep (only say so). */
  bootTimeoutAction?: 'fail' | 'keep';
}

/** What the steps need from the agent. */
export interface LaunchDeps {
  env: LaunchEnv;
  /** The directory of a snapshot's files on this node. */
  snapshotDir(snapshotId: string): string;
  /** Start watching a launched VMM (readiness, exit, the boot deadline). */
  watch(r: Runtime, inst: VmmInstance, t0: number, deadlineMs?: number, opts?: WatchOptions): void;
  /** Give a restored guest this VM's identity, then let it announce readiness. */
  reidentify(vm: MicroVM, dir: string, atts: NicAttachment[], r: Runtime): Promise<void>;
  started(vm: MicroVM, inst: VmmInstance, how: 'started' | 'restored'): void;
  /** A VM resumed from its suspend files runs: drop the files, reconnect its guest agent, mark it ready. */
  resumed(vm: MicroVM, dir: string, r: Runtime): Promise<void>;
}

const MiB = 1024 * 1024;
const bytesOf = (q: string, field: string): number => parseQuantityMiB(q, field) * MiB;

/** The cold-boot pipeline. */
export function bootSteps(d: LaunchDeps): Array<Step<Launch>> {
  const o = d.env;
  return [
    {
      name: 'prepare',
      run: (c) => {
        const r = c.runtime;
        Object.assign(r, { stopping: false, ready: false, reason: undefined, message: undefined, readyAt: undefined, bootMs: undefined, state: 'starting' });
        mkdirSync(c.dir, { recursive: true });
        writeFileSync(join(c.dir, 'vm.json'), JSON.stringify({ id: c.vm.id, name: c.vm.name, tenant: c.vm.tenant, spec: c.vm.spec }, null, 2));
        c.volumeDrives = [];
        c.volumeArgs = [];
        c.nics = [];
        c.netArgs = '';
      },
    },
    {
      // The VM's own VMM user (per-VM users): the same uid for its whole life; its directory root:<gid> 0710.
      name: 'vmm-user',
      run: (c) => {
        if (o.vmmIdentities) {
          c.runAs = o.vmmIdentities.assign(c.vm.id, c.dir);
          c.owner = c.runAs;
        } else if (o.vmmOwner) c.owner = o.vmmOwner;
      },
    },
    {
      name: 'resolve-images',
      run: async (c) => {
        // The tenant's image policy applies again right before any pull (ADR 0024).
        c.kernel = await o.images.resolveKernel(c.vm.spec.kernel?.image, { tenant: c.vm.tenant });
        c.rootfs = await o.images.resolveRootfs(c.vm.spec.rootfs?.image, { tenant: c.vm.tenant });
      },
    },
    {
      name: 'cgroup',
      run: (c) => {
        const mem = memoryMiB(c.vm.spec);
        c.cgroupProcs = o.cgroups.ensure(c.vm.id, { vcpu: c.vm.spec.vcpu, memoryBytes: (mem + VMM_OVERHEAD_MIB) * MiB, pidsMax: 512 });
      },
      undo: (c) => o.cgroups.remove(c.vm.id),
    },
    {
      name: 'root-disk',
      run: async (c) => {
        const spec = c.vm.spec;
        const requested = spec.rootfs?.size ? bytesOf(spec.rootfs.size, 'rootfs.size') : undefined;
        if (requested !== undefined && o.maxRootfsBytes !== undefined && requested > o.maxRootfsBytes) {
          throw new MvmError(ErrorCodes.VALIDATION_FAILED, `rootfs.size ${spec.rootfs!.size} exceeds node ${o.nodeName}'s maximum root disk size of ${Math.floor(o.maxRootfsBytes / MiB)}Mi`);
        }
        const size = requested !== undefined ? Math.max(requested, c.rootfs.sizeBytes) : undefined;
        const owner = c.owner ? { owner: c.owner } : {};
        if (spec.rootfs?.readOnly === true) {
          c.root = { id: 'root', path: c.rootfs.path, format: c.rootfs.format, readOnly: true, root: true };
        } else if ((await o.driver.capabilities()).diskFormats.includes('qcow2')) {
          const overlay = join(c.dir, 'root.qcow2');
          await createOverlay({ base: c.rootfs.path, baseFormat: c.rootfs.format, path: overlay, ...(size ? { sizeBytes: size } : {}), ...owner });
          // A disk kept from an earlier start (or put back by `mvm restore`) becomes this VM's user's too.
          if (c.runAs) giveFile(overlay, c.runAs);
          c.root = { id: 'root', path: overlay, format: 'qcow2', readOnly: false, root: true };
        } else {
          // Raw-only VMMs (Firecracker): a reflink/sparse clone of the base (ADR 5), never a write to it.
          const disk = join(c.dir, 'root.raw');
          await createRawClone({ base: c.rootfs.path, path: disk, ...(size ? { sizeBytes: size } : {}), ...owner });
          c.root = { id: 'root', path: disk, format: 'raw', readOnly: false, root: true };
        }
      },
    },
    {
      name: 'network',
      when: () => o.network !== undefined && o.networkSpec !== undefined,
      run: async (c) => {
        const t0 = Date.now();
        const atts = await o.network!.setup(await o.networkSpec!(c.vm)).catch((e: unknown) => {
          throw renameNicFields(e);
        });
        c.runtime.attachments = atts;
        c.nics = atts.map((a) => ({ id: a.name, tap: a.tap, mac: a.mac }));
        c.netArgs = kernelIpArgs(atts, { hostname: c.vm.name });
        const ns = atts[0]?.netnsPath;
        if (ns) c.netnsPath = ns;
        c.netMs = Date.now() - t0;
      },
      undo: async (c) => {
        await o.network!.teardown(c.vm.id);
        c.runtime.attachments = undefined;
      },
    },
    {
      // Extra drives after the root (vdb, vdc, ... in spec order), mounted by the guest init from `mvm.vol=`.
      name: 'volumes',
      when: (c) => (c.vm.spec.volumes?.length ?? 0) > 0,
      run: async (c) => {
        if (!o.volumes) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'this node has no volume backends');
        const vols = await o.volumes.attachForVm(c.vm, o.nodeName);
        vols.forEach((v, i) => {
          // A volume file (local, NFS) becomes the VM's own: with per-VM users no other VMM can open it.
          if (c.runAs && !v.readOnly) giveFile(v.path, c.runAs);
          c.volumeDrives.push({ id: `vol${i}`, path: v.path, format: 'raw', readOnly: v.readOnly, root: false });
          c.volumeArgs.push(`mvm.vol=vd${String.fromCharCode(98 + i)}:${v.readOnly ? 'ro' : 'rw'}:${v.mountPath}`);
        });
      },
      undo: (c) => o.volumes?.detachForVm(c.vm.id, o.nodeName),
    },
    {
      // Keep the previous boot's console as console.log.1 (older ones shift, bounded); each boot starts a fresh log.
      name: 'console',
      run: (c) => rotateClosed(join(c.dir, 'console.log')),
    },
    {
      name: 'vmm-start',
      run: async (c) => {
        c.spec = launchSpec(c);
        const t0 = Date.now();
        const r = c.runtime;
        r.launchedAt = t0;
        c.inst = await o.driver.launch(c.spec);
        r.inst = c.inst;
        r.state = 'running';
        r.startedAt = new Date().toISOString();
        r.bootMs = { vmm: Date.now() - t0, guestReady: 0, ...(c.netMs !== undefined ? { network: c.netMs } : {}) };
        const own = c.vm.spec.lifecycle?.bootTimeout;
        const setup = !c.restoreFrom && (c.vm.spec.files?.length || Object.keys(c.vm.spec.env ?? {}).length) ? { env: c.vm.spec.env ?? {}, files: c.vm.spec.files ?? [] } : undefined;
        d.watch(r, c.inst, t0, own ? parseDurationMs(own, 'lifecycle.bootTimeout') : o.bootTimeoutMs, { probeAgent: !c.restoreFrom, ...(c.restoreFrom ? { markerFallbackMs: 0 } : {}), ...(setup ? { setup } : {}) });
      },
      undo: async (c) => {
        await c.inst?.kill().catch(() => undefined);
        c.runtime.inst = undefined;
      },
    },
    {
      name: 'announce',
      run: (c) => d.started(c.vm, c.inst, c.restoreFrom ? 'restored' : 'started'),
    },
  ];
}

/** The first start of a VM made from a snapshot: the snapshot's memory and disk instead of a cold boot. */
export function restoreSteps(d: LaunchDeps): Array<Step<Launch>> {
  const o = d.env;
  const restoreDisk: Step<Launch> = {
    name: 'restore-disk',
    run: async (c) => {
      const snapshotId = restoreSourceOf(c.vm)!;
      const dir = d.snapshotDir(snapshotId);
      if (!existsSync(dir) || !existsSync(join(dir, 'snapshot.json'))) {
        const t = c.vm.spec.source?.template;
        throw new MvmError(
          ErrorCodes.IMAGE_ERROR,
          t ? `template ${t.id} version ${t.version} has no files on node ${o.nodeName} (a host reboot empties tmpfs, or it was deleted): rebuild the template` : `snapshot ${snapshotId} has no files on node ${o.nodeName}`,
        );
      }
      if (!o.driver.prepareRestoreDisk || !o.driver.snapshotFiles) {
        throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `driver ${o.driver.name} cannot restore snapshots`);
      }
      // Marked before the disk exists: until a restore succeeds, every start restores.
      writeFileSync(join(c.dir, RESTORE_PENDING), `${snapshotId}\n`);
      c.root = await o.driver.prepareRestoreDisk(dir, c.dir, c.owner);
      c.restoreFrom = o.driver.snapshotFiles(dir);
    },
  };
  const reidentify: Step<Launch> = {
    // The restored guest still carries the source's identity in memory: give it this VM's
    // MAC, address, hostname and machine id, then let it announce readiness.
    name: 'reidentify',
    run: (c) => d.reidentify(c.vm, c.dir, c.runtime.attachments ?? [], c.runtime),
  };
  const restored: Step<Launch> = {
    name: 'restore-done',
    run: (c) => rmSync(join(c.dir, RESTORE_PENDING), { force: true }),
  };
  return insertAfter(swapSteps(bootSteps(d), { 'root-disk': restoreDisk }), 'vmm-start', reidentify, restored);
}

const execFileP = promisify(execFile);

/**
 * A migration's restore on the target node (docs/adr/0034), in two parts: `prepare` runs before
 * the source pauses the guest, `restore` once its files arrived. The cold-boot pipeline with the disk
 * and memory received from the source node instead of a boot, the same MAC (derived from the VM
 * id), the same address when this node's network can give it, and no re-identification: the guest
 * is the same machine, only moved. Steps replaced: root-disk → migrated-disk, network → the same
 * with the source's addresses asked for; after vmm-start (which restores and resumes the guest):
 * guest-resumed. The guest's agent answering (and new addresses, if any) is the resume call's
 * (LocalAgent.resumeIncoming).
 */
export function migrateInSteps(d: LaunchDeps): { prepare: Array<Step<Launch>>; restore: Array<Step<Launch>> } {
  const o = d.env;
  const boot = bootSteps(d);
  const plainNetwork = boot.find((s) => s.name === 'network')!;
  const migratedDisk: Step<Launch> = {
    name: 'migrated-disk',
    run: async (c) => {
      const m = c.migration!;
      if (!o.driver.snapshotFiles) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `driver ${o.driver.name} cannot restore snapshots`);
      const recPath = join(m.dir, 'snapshot.json');
      const rec = JSON.parse(readFileSync(recPath, 'utf8')) as { driver?: string; disks?: Array<{ id: string; file: string; format: string; sourcePath: string }> };
      if (rec.driver && rec.driver !== o.driver.name) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `the source ran the ${rec.driver} driver and node ${o.nodeName} runs ${o.driver.name}`);
      if (c.vm.spec.rootfs?.readOnly === true) {
        c.root = { id: 'root', path: c.rootfs.path, format: c.rootfs.format, readOnly: true, root: true };
      } else {
        const copy = rec.disks?.find((x) => x.id === 'root');
        if (!copy) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `the migration's files in ${m.dir} hold no copy of the root disk`);
        const disk = join(c.dir, `root.${copy.format}`);
        // The source's overlay, moved in place: its backing file is the base image, resolved on this node.
        renameSync(join(m.dir, copy.file), disk);
        if (copy.format === 'qcow2') await execFileP('qemu-img', ['rebase', '-u', '-F', c.rootfs.format, '-b', c.rootfs.path, disk]);
        if (c.owner) giveFile(disk, c.owner);
        c.root = { id: 'root', path: disk, format: copy.format === 'qcow2' ? 'qcow2' : 'raw', readOnly: false, root: true };
        // The record names the source node's live disk: this node's disk is its own copy of it.
        rec.disks = rec.disks!.map((x) => ({ ...x, sourcePath: `${m.sourceNode}:${x.sourcePath}` }));
        writeFileSync(recPath, JSON.stringify(rec, null, 2));
      }
      c.restoreFrom = o.driver.snapshotFiles(m.dir);
    },
  };
  const network: Step<Launch> = {
    ...plainNetwork,
    run: async (c) => {
      const m = c.migration!;
      const spec = await o.networkSpec!(c.vm);
      const keep = { ...spec, nics: spec.nics.map((n) => (m.ips[n.name] && !n.ip ? { ...n, ip: m.ips[n.name] } : n)) };
      const t0 = Date.now();
      let atts;
      try {
        atts = await o.network!.setup(keep);
      } catch (e) {
        // This node's network cannot give the same address (another subnet, or taken): a new one, said so.
        await o.network!.teardown(c.vm.id).catch(() => undefined);
        atts = await o.network!.setup(spec);
        m.ipChange = `node ${o.nodeName} cannot keep the address (${(e as Error).message.slice(0, 200)})`;
      }
      c.runtime.attachments = atts;
      c.nics = atts.map((a) => ({ id: a.name, tap: a.tap, mac: a.mac }));
      c.netArgs = kernelIpArgs(atts, { hostname: c.vm.name });
      const ns = atts[0]?.netnsPath;
      if (ns) c.netnsPath = ns;
      c.netMs = Date.now() - t0;
      const moved = atts.filter((a) => m.ips[a.name] && m.ips[a.name] !== a.ip).map((a) => `${a.name} ${m.ips[a.name]} → ${a.ip}`);
      if (moved.length) m.ipChange = `${m.ipChange ?? `node ${o.nodeName} gave other addresses`}: ${moved.join(', ')}`;
      else m.ipChange = undefined;
    },
  };
  const resumed: Step<Launch> = {
    // vmm-start restored the memory and resumed the vCPUs: the guest runs here from where it stopped.
    name: 'guest-resumed',
    run: (c) => {
      c.migration!.resumedAt = Date.now();
    },
  };
  const all = insertAfter(swapSteps(boot, { 'root-disk': migratedDisk, network }), 'vmm-start', resumed);
  const at = all.findIndex((x) => x.name === 'migrated-disk');
  // Before the pause, while the guest still runs on its source: images, cgroup, network (the slow part), volumes, console.
  const prepare = all.filter((x, i) => i !== at && i < all.findIndex((y) => y.name === 'vmm-start'));
  // While it is paused: its disk, then the VMM restored from the memory received and resumed.
  const restore = all.filter((x) => !prepare.includes(x));
  return { prepare, restore };
}

/**
 * The resume of a suspended VM: its own disks, network (same tap, MAC, IP) and VMM user as a boot,
 * but the VMM loads the memory and device state of `<dir>/suspend` instead of booting; no
 * re-identification (it is the same VM).
 */
export function resumeSteps(d: LaunchDeps): Array<Step<Launch>> {
  const o = d.env;
  const state: Step<Launch> = {
    name: 'suspend-state',
    run: (c) => {
      if (!o.driver.snapshotFiles) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `driver ${o.driver.name} cannot resume a suspended VM`);
      c.restoreFrom = o.driver.snapshotFiles(join(c.dir, SUSPEND_DIR));
    },
  };
  const resumed: Step<Launch> = { name: 'resumed', run: (c) => d.resumed(c.vm, c.dir, c.runtime) };
  const boot = bootSteps(d);
  // The guest's memory holds its addresses: a failed resume keeps the lease (tap, MAC, IP) for the next try.
  const network = boot.find((x) => x.name === 'network')!;
  const keepLease: Step<Launch> = { ...network };
  delete keepLease.undo;
  return insertAfter(insertAfter(swapSteps(boot, { network: keepLease }), 'volumes', state), 'vmm-start', resumed);
}

/**
 * Restore or cold boot: a VM made from a snapshot restores until one restore has succeeded (the
 * marker RESTORE_PENDING is there, or its disk does not exist yet); later starts boot its own disk.
 */
export function wantsRestore(vm: MicroVM, dir: string): boolean {
  if (!restoreSourceOf(vm)) return false;
  if (existsSync(join(dir, RESTORE_PENDING))) return true;
  return !existsSync(join(dir, 'root.qcow2')) && !existsSync(join(dir, 'root.raw'));
}

/** The files of a template version on a node sit in its snapshot store under this id. */
export function templateFilesId(templateId: string, version: number): string {
  return `${templateId}-v${version}`;
}

/** The snapshot-store id a VM made from a snapshot or a template restores from (undefined: it boots). */
export function restoreSourceOf(vm: MicroVM): string | undefined {
  const src = vm.spec.source;
  if (src?.snapshot) return src.snapshot;
  if (src?.template) return templateFilesId(src.template.id, src.template.version);
  return undefined;
}

function launchSpec(c: Launch): LaunchSpec {
  const { vm, rootfs } = c;
  const readOnly = vm.spec.rootfs?.readOnly === true;
  const cmdline = [
    'console=ttyS0',
    'reboot=k',
    'panic=-1',
    'root=/dev/vda',
    readOnly ? 'ro' : 'rw',
    `mvm.id=${vm.id}`,
    `mvm.name=${vm.name}`,
    rootfs.init ? `init=${rootfs.init}` : '',
    // The init waits for the guest agent's first-boot setup (the VM's env and files) before its workload.
    !c.restoreFrom && (vm.spec.files?.length || Object.keys(vm.spec.env ?? {}).length) ? 'mvm.setup=1' : '',
    c.netArgs,
    ...c.volumeArgs,
    vm.spec.kernel?.cmdline ?? '',
  ]
    .filter(Boolean)
    .join(' ');
  return {
    id: vm.id,
    name: vm.name,
    vcpu: vm.spec.vcpu,
    memoryMiB: memoryMiB(vm.spec),
    kernelPath: c.kernel.kernelPath,
    ...(c.kernel.initrdPath ? { initrdPath: c.kernel.initrdPath } : {}),
    cmdline,
    drives: [c.root, ...c.volumeDrives],
    nics: c.nics,
    vmDir: c.dir,
    cgroupProcs: c.cgroupProcs,
    ...(c.netnsPath ? { netnsPath: c.netnsPath } : {}),
    ...(c.restoreFrom ? { restoreFrom: c.restoreFrom } : {}),
    ...(c.memoryFile && !c.restoreFrom ? { memoryFile: c.memoryFile } : {}),
    guestAgent: true,
    ...(c.runAs ? { runAs: c.runAs } : {}),
  };
}

/** chown a regular file to the VM's user (block devices and files a root-squashed NFS refuses stay as they are). */
function giveFile(path: string, id: { uid: number; gid: number }): void {
  try {
    if (!statSync(path).isFile()) return;
    chownSync(path, id.uid, id.gid);
    chmodSync(path, 0o600);
  } catch {
    /* the VMM opens its drives before it drops privileges: ownership only matters for a re-open */
  }
}

/** The network adapter names NICs `nics[i]`; the API calls them `networkInterfaces[i]`. */
function renameNicFields(e: unknown): unknown {
  if (!(e instanceof MvmError)) return e;
  const violations = e.violations.map((v) => ({ ...v, field: v.field.replace(/^nics\[/, 'networkInterfaces[') }));
  return new MvmError(e.code, e.message.replace(/\bnics\[/g, 'networkInterfaces['), { violations, details: e.details, cause: e });
}
