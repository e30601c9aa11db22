/**
 * Firecracker configuration generated from a LaunchSpec: the ordered list of
 * API calls that boots (or restores) the microVM. The list is the driver's
 * `config`, so users can inspect exactly what was sent.
 *
 * Paths in the calls are host paths; when the VM is jailed, `jailer.ts`
 * rewrites every one of them relative to the chroot.
 */
import { join } from 'node:path';
import { ErrorCodes, MvmError, validationError } from '../../core/errors.js';
import type { LaunchSpec, SnapshotFiles } from '../../core/ports/vmm.js';
import type { ApiCall, Balloon, Drive, LoggerConfig, MachineConfig, NetworkInterface, RateLimiter, SnapshotLoadParams } from './api-client.js';
import { FC_INSTANCE_ID_RE, FC_RESOURCE_ID_RE } from './protocol.js';

/** Snapshot file names inside a snapshot directory. */
export const SNAPSHOT_STATE_FILE = 'vm.state';
export const SNAPSHOT_MEMORY_FILE = 'memory';
export const SNAPSHOT_META_FILE = 'snapshot.json';

/** Unix socket paths are limited to 107 bytes (sun_path). */
export const MAX_SOCKET_PATH = 107;

/** Files of a Firecracker VM inside its VM directory (direct, un-jailed mode). */
export const fcFiles = (vmDir: string) => ({
  apiSock: join(vmDir, 'firecracker.sock'),
  consoleLog: join(vmDir, 'console.log'),
  /** stderr of the VMM (and of the jailer). */
  vmmLog: join(vmDir, 'vmm.log'),
  /** Firecracker's logger output, drained from the log FIFO. */
  fcLog: join(vmDir, 'firecracker.log'),
  logFifo: join(vmDir, 'fc-log.fifo'),
  metricsFifo: join(vmDir, 'fc-metrics.fifo'),
  /** Block counters accumulated from the metrics FIFO (survives service restarts). */
  metricsTotals: join(vmDir, 'fc-metrics.json'),
  vsockUds: join(vmDir, 'vsock.sock'),
  /** FIFO that is the guest serial console's input (Firecracker's stdin). */
  consoleIn: join(vmDir, 'console.in'),
  launch: join(vmDir, 'launch.json'),
});

/** Optional devices and tuning, beyond what a LaunchSpec says. */
export interface FcConfigExtras {
  smt?: boolean;
  trackDirtyPages?: boolean;
  logLevel?: LoggerConfig['level'];
  /** Attach a vsock device (host side: `<vmDir>/vsock.sock`). */
  vsock?: { guestCid: number };
  /** MMDS: metadata served to the guest on the given interfaces (spec NIC ids; default all). */
  mmds?: { version?: 'V1' | 'V2'; ipv4Address?: string; interfaces?: string[]; data?: Record<string, unknown> };
  balloon?: { amountMib: number; deflateOnOom: boolean; statsPollingIntervalS?: number };
  driveRateLimiter?: RateLimiter;
  netRxRateLimiter?: RateLimiter;
  netTxRateLimiter?: RateLimiter;
}

/** Host-side files the calls point at. */
export interface FcConfigFiles {
  logFifo: string;
  metricsFifo: string;
  vsockUds?: string;
}

/** Firecracker resource ids allow [A-Za-z0-9_] only: `net-0` becomes `net_0`. */
export function fcResourceId(id: string): string {
  return id.replace(/[^A-Za-z0-9_]/g, '_');
}

/** Refuse what Firecracker cannot run, before any process is spawned. */
export function validateForFirecracker(spec: LaunchSpec, extras: FcConfigExtras = {}): void {
  if (!FC_INSTANCE_ID_RE.test(spec.id)) throw validationError('id', `Firecracker instance ids are 1-64 alphanumerics or hyphens, got ${JSON.stringify(spec.id)}`);
  if (!Number.isInteger(spec.vcpu) || spec.vcpu < 1 || spec.vcpu > 32) throw validationError('vcpu', `Firecracker runs 1 to 32 vCPUs, got ${spec.vcpu}`);
  if (extras.smt && spec.vcpu !== 1 && spec.vcpu % 2 !== 0) throw validationError('vcpu', `with SMT Firecracker needs 1 or an even number of vCPUs, got ${spec.vcpu}`);
  if (!Number.isInteger(spec.memoryMiB) || spec.memoryMiB < 1) throw validationError('memoryMiB', `must be a positive integer, got ${spec.memoryMiB}`);
  const roots = spec.drives.filter((d) => d.root);
  if (roots.length > 1) throw validationError('drives', `Firecracker takes one root device, got ${roots.length}`);
  const ids = new Map<string, string>();
  for (const d of spec.drives) {
    if (d.format !== 'raw') {
      throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `Firecracker attaches raw block devices only; drive ${d.id} is ${d.format} (${d.path})`, {
        details: { drive: d.id, format: d.format, supported: ['raw'] },
      });
    }
    const fid = fcResourceId(d.id);
    if (!FC_RESOURCE_ID_RE.test(fid)) throw validationError(`drives.${d.id}`, 'empty drive id');
    if (ids.has(fid)) throw validationError(`drives.${d.id}`, `drive ids ${ids.get(fid)} and ${d.id} both become ${fid} in Firecracker`);
    ids.set(fid, d.id);
  }
  const nids = new Map<string, string>();
  for (const n of spec.nics) {
    const fid = fcResourceId(n.id);
    if (!FC_RESOURCE_ID_RE.test(fid)) throw validationError(`nics.${n.id}`, 'empty interface id');
    if (nids.has(fid)) throw validationError(`nics.${n.id}`, `interface ids ${nids.get(fid)} and ${n.id} both become ${fid} in Firecracker`);
    nids.set(fid, n.id);
    if (!n.tap || n.tap.length > 15) throw validationError(`nics.${n.id}.tap`, `tap device names are 1-15 characters, got ${JSON.stringify(n.tap)}`);
    if (n.mac && !/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(n.mac)) throw validationError(`nics.${n.id}.mac`, `not a MAC address: ${n.mac}`);
  }
  if (extras.vsock && (!Number.isInteger(extras.vsock.guestCid) || extras.vsock.guestCid < 3)) {
    throw validationError('vsock.guestCid', `guest CIDs start at 3, got ${extras.vsock.guestCid}`);
  }
  if (extras.mmds && spec.nics.length === 0) throw validationError('mmds', 'MMDS needs at least one network interface');
}

/** Map from Firecracker drive id to the spec's drive id (metrics come back keyed by the former). */
export function driveIdMap(spec: LaunchSpec): Record<string, string> {
  return Object.fromEntries(spec.drives.map((d) => [fcResourceId(d.id), d.id]));
}

/**
 * The logger and metrics sinks as command-line flags, so they are set before Firecracker writes a
 * line: configured through the API instead, its first lines ("Running Firecracker", the request
 * log of `PUT /logger` with its body) went to stdout, which is the guest console log.
 */
export function loggingArgs(files: FcConfigFiles, extras: FcConfigExtras = {}): string[] {
  return ['--log-path', files.logFifo, '--level', extras.logLevel ?? 'Info', '--show-level', '--metrics-path', files.metricsFifo];
}

/**
 * The cold-boot calls: machine, boot source, drives (root first), network
 * interfaces, vsock, MMDS, balloon, then InstanceStart (logger and metrics are
 * command-line flags: loggingArgs).
 */
export function buildBootCalls(spec: LaunchSpec, files: FcConfigFiles, extras: FcConfigExtras = {}): ApiCall[] {
  validateForFirecracker(spec, extras);
  const calls: ApiCall[] = [];
  const machine: MachineConfig = {
    vcpu_count: spec.vcpu,
    mem_size_mib: spec.memoryMiB,
    smt: extras.smt ?? false,
    track_dirty_pages: extras.trackDirtyPages ?? false,
  };
  calls.push({ method: 'PUT', path: '/machine-config', body: machine });
  calls.push({
    method: 'PUT',
    path: '/boot-source',
    body: { kernel_image_path: spec.kernelPath, boot_args: spec.cmdline, ...(spec.initrdPath ? { initrd_path: spec.initrdPath } : {}) },
  });
  const drives = [...spec.drives].sort((a, b) => Number(b.root) - Number(a.root));
  for (const d of drives) {
    const body: Drive = {
      drive_id: fcResourceId(d.id),
      path_on_host: d.path,
      is_root_device: d.root,
      is_read_only: d.readOnly,
      ...(extras.driveRateLimiter ? { rate_limiter: extras.driveRateLimiter } : {}),
    };
    calls.push({ method: 'PUT', path: `/drives/${body.drive_id}`, body });
  }
  for (const n of spec.nics) {
    const body: NetworkInterface = {
      iface_id: fcResourceId(n.id),
      host_dev_name: n.tap,
      ...(n.mac ? { guest_mac: n.mac.toLowerCase() } : {}),
      ...(extras.netRxRateLimiter ? { rx_rate_limiter: extras.netRxRateLimiter } : {}),
      ...(extras.netTxRateLimiter ? { tx_rate_limiter: extras.netTxRateLimiter } : {}),
    };
    calls.push({ method: 'PUT', path: `/network-interfaces/${body.iface_id}`, body });
  }
  if (extras.vsock) {
    if (!files.vsockUds) throw new MvmError(ErrorCodes.INTERNAL, 'vsock requested without a host socket path');
    calls.push({ method: 'PUT', path: '/vsock', body: { guest_cid: extras.vsock.guestCid, uds_path: files.vsockUds } });
  }
  if (extras.mmds) {
    const ifaces = (extras.mmds.interfaces ?? spec.nics.map((n) => n.id)).map(fcResourceId);
    calls.push({
      method: 'PUT',
      path: '/mmds/config',
      body: { network_interfaces: ifaces, version: extras.mmds.version ?? 'V2', ...(extras.mmds.ipv4Address ? { ipv4_address: extras.mmds.ipv4Address } : {}) },
    });
    if (extras.mmds.data) calls.push({ method: 'PUT', path: '/mmds', body: extras.mmds.data });
  }
  if (extras.balloon) {
    const b: Balloon = {
      amount_mib: extras.balloon.amountMib,
      deflate_on_oom: extras.balloon.deflateOnOom,
      ...(extras.balloon.statsPollingIntervalS !== undefined ? { stats_polling_interval_s: extras.balloon.statsPollingIntervalS } : {}),
    };
    calls.push({ method: 'PUT', path: '/balloon', body: b });
  }
  calls.push({ method: 'PUT', path: '/actions', body: { action_type: 'InstanceStart' } });
  return calls;
}

/**
 * The restore pipeline (same steps up to the process, then the snapshot load
 * replaces configuration + InstanceStart): logger, metrics, snapshot/load with
 * the VM's current taps and vsock socket as overrides.
 */
export function buildRestoreCalls(spec: LaunchSpec, files: FcConfigFiles, snap: SnapshotFiles, extras: FcConfigExtras = {}): ApiCall[] {
  validateForFirecracker(spec, extras);
  const load: SnapshotLoadParams = {
    snapshot_path: snap.stateFile ?? join(snap.dir, SNAPSHOT_STATE_FILE),
    mem_backend: { backend_type: 'File', backend_path: snap.memoryFile },
    track_dirty_pages: extras.trackDirtyPages ?? false,
    resume_vm: true,
  };
  if (spec.nics.length > 0) load.network_overrides = spec.nics.map((n) => ({ iface_id: fcResourceId(n.id), host_dev_name: n.tap }));
  if (extras.vsock && files.vsockUds) load.vsock_override = { uds_path: files.vsockUds };
  return [{ method: 'PUT', path: '/snapshot/load', body: load }];
}

/** What `snapshot()` records next to the snapshot files (`snapshot.json`; see snapshot.ts). */
export interface FcSnapshotMeta {
  /** `mvm-firecracker-snapshot/1` (absent in records of earlier versions). */
  format?: string;
  driver: 'firecracker';
  vmmVersion: string;
  /** Host CPU (vendor + model name) the snapshot was taken on. */
  cpuModel?: string;
  sourceId: string;
  /** The source VM's directory (un-jailed drive paths are relative to it). */
  sourceVmDir?: string;
  createdAt: string;
  vcpu: number;
  memoryMiB: number;
  /** Kernel the source booted (path and size). */
  kernel?: { path: string; sizeBytes: number };
  jailed: boolean;
  /** Paths exactly as Firecracker saw them (jail-relative when jailed, VM-directory-relative for the VM's own disks when not). */
  drives: Array<{ drive_id: string; path_on_host: string; id?: string; readOnly?: boolean; root?: boolean; hostPath?: string }>;
  /** Copies of the writable drives taken while paused; `vmRelPath` is where a clone gets its own copy. */
  disks?: Array<{ drive_id: string; id: string; file: string; sourcePath: string; vmRelPath?: string }>;
  nics: Array<{ iface_id: string; host_dev_name: string }>;
  vsockUds?: string;
  timingsMs?: { pause: number; create: number; diskCopy: number; total: number };
}

/**
 * Drop the overrides of a snapshot load that match what the snapshot recorded,
 * so restores work on Firecracker versions that predate the override fields
 * whenever nothing needs overriding. Run after any jail rewrite.
 */
export function pruneRestoreOverrides(calls: ApiCall[], meta: FcSnapshotMeta | undefined): ApiCall[] {
  if (!meta) return calls;
  return calls.map((c) => {
    if (c.path !== '/snapshot/load') return c;
    const body = { ...(c.body as SnapshotLoadParams) };
    if (body.network_overrides) {
      const recorded = new Map(meta.nics.map((n) => [n.iface_id, n.host_dev_name]));
      const changed = body.network_overrides.filter((o) => recorded.get(o.iface_id) !== o.host_dev_name);
      if (changed.length > 0) body.network_overrides = changed;
      else delete body.network_overrides;
    }
    if (body.vsock_override && body.vsock_override.uds_path === meta.vsockUds) delete body.vsock_override;
    return { ...c, body };
  });
}
