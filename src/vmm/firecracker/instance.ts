/**
 * A running (or adopted) Firecracker process as the VMM port's instance: state, stop (Ctrl-Alt-Del,
 * then kill), metrics through the metrics FIFO, pause/resume and snapshots through the API socket.
 * `launch.json` in the VM directory (FcLaunchRecord) is what adoption and cleanup read.
 */
import { copyFileSync, mkdirSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { GuestChannel, SnapshotFiles, VmmExit, VmmInstance, VmmState, VmmStats } from '../../core/ports/vmm.js';

/** The vsock port the guest agent listens on. */
export const GUEST_AGENT_VSOCK_PORT = 1024;
import { pidAlive, procUsage } from '../proc.js';
import { killPid, raceTimeout } from '../spawn.js';
import { FirecrackerApiClient, type ApiCall, type Drive, type NetworkInterface, type Vsock } from './api-client.js';
import { SNAPSHOT_MEMORY_FILE, SNAPSHOT_STATE_FILE, fcFiles, type FcSnapshotMeta } from './config.js';
import { cleanupJail, jailCalls, jailHostPath, prepareChroot } from './jailer.js';
import type { FifoReader, MetricsSink } from './metrics.js';
import { FC_SNAPSHOT_FORMAT, copySnapshotDisks, fileFacts, hostCpuModel, insideDir, writeSnapshotMeta } from './snapshot.js';

export interface JailRecord {
  jailDir: string;
  chrootDir: string;
  leaseDir: string;
  uid: number;
  gid: number;
  cgroupDirs: string[];
}

/** Written to `<vmDir>/launch.json`: everything adoption and cleanup need. */
export interface FcLaunchRecord {
  driver: 'firecracker';
  id: string;
  pid: number;
  startedAt: string;
  mode: 'boot' | 'restore';
  binary: string;
  args: string[];
  /** API socket, host path. */
  apiSock: string;
  /** `--api-sock` value on the process's command line. */
  apiSockArg: string;
  logFifo: string;
  metricsFifo: string;
  vsockUds?: string;
  /** The calls as sent (jail-relative paths when jailed). */
  calls: ApiCall[];
  /** Firecracker drive id -> spec drive id. */
  drives: Record<string, string>;
  vcpu: number;
  memoryMiB: number;
  jail?: JailRecord;
  /** Host kernel the VM booted (recorded in its snapshots). */
  kernelPath?: string;
  vmDir?: string;
  /** The VM's drives: as Firecracker opens them and where they are on the host. */
  driveFiles?: Array<{ drive_id: string; id: string; path_on_host: string; hostPath: string; readOnly: boolean; root: boolean }>;
  /** FIFO feeding the guest serial console (Firecracker's stdin). */
  consoleIn?: string;
  /** Network namespace the VMM runs in. */
  netns?: string;
  /** Restores: the interfaces after the load's overrides (a later snapshot records them). */
  restoredNics?: FcSnapshotMeta['nics'];
}

/** Remove what a Firecracker process leaves behind once it is gone: sockets, FIFOs, the jail. Idempotent. */
export async function cleanupAfter(rec: FcLaunchRecord): Promise<void> {
  for (const p of [rec.apiSock, rec.logFifo, rec.metricsFifo, rec.vsockUds, rec.consoleIn]) {
    if (p) rmSync(p, { force: true });
  }
  if (rec.jail) await cleanupJail({ jailDir: rec.jail.jailDir, leaseDir: rec.jail.leaseDir, id: rec.id, cgroupDirs: rec.jail.cgroupDirs });
}

export class FirecrackerInstance implements VmmInstance {
  readonly driver = 'firecracker';
  readonly accel = 'kvm';
  readonly exited: Promise<VmmExit>;
  private exitInfo: VmmExit | undefined;
  private readonly client: FirecrackerApiClient;

  constructor(
    private readonly rec: FcLaunchRecord,
    private readonly vmDir: string,
    rawExit: Promise<VmmExit>,
    private readonly sinks: { metrics?: MetricsSink; log?: FifoReader },
    opts: { booted?: boolean; apiTimeoutMs: number },
  ) {
    this.client = new FirecrackerApiClient(rec.apiSock, { timeoutMs: opts.apiTimeoutMs, ...(opts.booted !== undefined ? { booted: opts.booted } : {}) });
    this.exited = rawExit.then(async (e) => {
      this.exitInfo = e;
      this.sinks.metrics?.close();
      this.sinks.log?.close();
      await cleanupAfter(this.rec).catch(() => undefined);
      return e;
    });
  }

  get id(): string {
    return this.rec.id;
  }
  get pid(): number {
    return this.rec.pid;
  }
  get consolePath(): string {
    return fcFiles(this.vmDir).consoleLog;
  }
  /** The guest agent listens on vsock port 1024 (docs/guest-agent-protocol.md), reached through Firecracker's hybrid vsock socket. */
  get guestChannel(): GuestChannel | undefined {
    return this.rec.vsockUds ? { kind: 'firecracker-vsock', path: this.rec.vsockUds, port: GUEST_AGENT_VSOCK_PORT } : undefined;
  }
  get config(): Record<string, unknown> {
    return {
      binary: this.rec.binary,
      args: this.rec.args,
      mode: this.rec.mode,
      jailed: this.rec.jail !== undefined,
      ...(this.rec.jail ? { jail: { chrootDir: this.rec.jail.chrootDir, uid: this.rec.jail.uid, gid: this.rec.jail.gid } } : {}),
      calls: this.rec.calls,
    };
  }

  /** The API client (phase-aware), for callers that need more than the port offers (MMDS, balloon). */
  get api(): FirecrackerApiClient {
    return this.client;
  }

  private alive(): boolean {
    return !this.exitInfo && pidAlive(this.rec.pid);
  }

  async state(): Promise<VmmState> {
    if (!this.alive()) return 'exited';
    try {
      const info = await this.client.syncPhase();
      if (info.state === 'Paused') return 'paused';
      if (info.state === 'Not started') return 'booting';
      return 'running';
    } catch {
      return this.alive() ? 'running' : 'exited';
    }
  }

  async stop(timeoutMs: number): Promise<void> {
    if (!this.alive()) {
      await raceTimeout(this.exited, 5000);
      return;
    }
    try {
      const info = await this.client.syncPhase();
      if (info.state === 'Not started') {
        await this.kill();
        return;
      }
      // A paused guest cannot react to Ctrl-Alt-Del.
      if (info.state === 'Paused') await this.client.patchVm('Resumed');
      await this.client.action('SendCtrlAltDel');
    } catch {
      /* fall through to the kill below */
    }
    const gone = await raceTimeout(this.exited.then(() => true), timeoutMs);
    if (!gone) await this.kill();
  }

  async kill(): Promise<void> {
    if (this.alive()) killPid(this.rec.pid);
    await raceTimeout(this.exited, 5000);
  }

  async stats(): Promise<VmmStats> {
    const u = procUsage(this.rec.pid);
    const sink = this.sinks.metrics;
    if (sink && this.alive()) {
      try {
        const next = sink.nextLine(500);
        await this.client.action('FlushMetrics');
        await next;
      } catch {
        /* not booted, or VMM busy: report the totals we have */
      }
    }
    const block = Object.entries(sink?.totals.block ?? {}).map(([fid, c]) => ({ device: this.rec.drives[fid] ?? fid, ...c }));
    return { cpuSeconds: u?.cpuSeconds ?? 0, memoryRssBytes: u?.rssBytes ?? 0, block };
  }

  async pause(): Promise<void> {
    await this.client.patchVm('Paused');
  }

  async resume(): Promise<void> {
    await this.client.patchVm('Resumed');
  }

  /** The VM's drives: host file, path as Firecracker opened it, flags (from the launch record; older records: from the calls). */
  private driveFiles(): NonNullable<FcLaunchRecord['driveFiles']> {
    if (this.rec.driveFiles) return this.rec.driveFiles;
    return this.rec.calls
      .filter((c) => c.method === 'PUT' && c.path.startsWith('/drives/'))
      .map((c) => {
        const d = c.body as Drive;
        const hostPath = this.rec.jail ? jailHostPath(this.rec.jail.chrootDir, d.path_on_host) : resolve(this.vmDir, d.path_on_host);
        return { drive_id: d.drive_id, id: this.rec.drives[d.drive_id] ?? d.drive_id, path_on_host: d.path_on_host, hostPath, readOnly: d.is_read_only, root: d.is_root_device };
      });
  }

  /**
   * Pause (if running), `/snapshot/create` (into the chroot when jailed, then
   * moved out), copy the writable drives while paused, write `snapshot.json`
   * last. The VM is left paused.
   */
  async snapshot(dir: string): Promise<SnapshotFiles> {
    const out = resolve(dir);
    mkdirSync(out, { recursive: true });
    const t0 = Date.now();
    if (!this.alive()) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `cannot snapshot ${this.rec.id}: its VMM is not running`, { details: { id: this.rec.id } });
    const info = await this.client.syncPhase();
    if (info.state === 'Not started') {
      throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `cannot snapshot ${this.rec.id}: the microVM has not started`, { details: { id: this.rec.id } });
    }
    if (info.state !== 'Paused') await this.client.patchVm('Paused');
    const tPaused = Date.now();
    const stateFile = join(out, SNAPSHOT_STATE_FILE);
    const memoryFile = join(out, SNAPSHOT_MEMORY_FILE);
    const call: ApiCall = { method: 'PUT', path: '/snapshot/create', body: { snapshot_type: 'Full', snapshot_path: stateFile, mem_file_path: memoryFile } };
    if (this.rec.jail) {
      const j = this.rec.jail;
      const { calls, files } = jailCalls([call]);
      prepareChroot(j.chrootDir, files, j.uid, j.gid);
      await this.client.call(calls[0]!);
      for (const f of files) moveOut(jailHostPath(j.chrootDir, f.jail), f.host);
    } else {
      await this.client.call(call);
    }
    const tCreated = Date.now();
    const drives = this.driveFiles();
    const vmDir = this.rec.vmDir ?? this.vmDir;
    const disks = await copySnapshotDisks(
      out,
      drives.map((d) => {
        const rel = insideDir(vmDir, d.hostPath);
        return { id: d.id, drive_id: d.drive_id, hostPath: d.hostPath, readOnly: d.readOnly, ...(rel ? { vmRelPath: rel } : {}) };
      }),
    );
    const tCopied = Date.now();
    let vmmVersion = 'unknown';
    try {
      vmmVersion = normalizeVersion(await this.client.getVersion());
    } catch {
      /* keep unknown */
    }
    const vsock = vsockOf(this.rec.calls);
    const meta: FcSnapshotMeta = {
      format: FC_SNAPSHOT_FORMAT,
      driver: 'firecracker',
      vmmVersion,
      cpuModel: hostCpuModel(),
      sourceId: this.rec.id,
      sourceVmDir: vmDir,
      createdAt: new Date().toISOString(),
      vcpu: this.rec.vcpu,
      memoryMiB: this.rec.memoryMiB,
      ...(this.rec.kernelPath ? { kernel: fileFacts(this.rec.kernelPath) } : {}),
      jailed: this.rec.jail !== undefined,
      drives: drives.map((d) => ({ drive_id: d.drive_id, path_on_host: d.path_on_host, id: d.id, readOnly: d.readOnly, root: d.root, hostPath: d.hostPath })),
      disks,
      nics: this.nics(),
      ...(vsock ? { vsockUds: vsock } : {}),
      timingsMs: { pause: tPaused - t0, create: tCreated - tPaused, diskCopy: tCopied - tCreated, total: Date.now() - t0 },
    };
    writeSnapshotMeta(out, meta);
    return { dir: out, memoryFile, stateFile };
  }

  /** Interfaces as Firecracker knows them now (boot calls, or the snapshot's overridden by a restore). */
  private nics(): FcSnapshotMeta['nics'] {
    const boot = this.rec.calls
      .filter((c) => c.path.startsWith('/network-interfaces/'))
      .map((c) => ({ iface_id: (c.body as NetworkInterface).iface_id, host_dev_name: (c.body as NetworkInterface).host_dev_name }));
    if (boot.length > 0 || this.rec.mode === 'boot') return boot;
    return this.rec.restoredNics ?? [];
  }
}

/** "v1.10.1" / "1.10.1" -> "v1.10.1". */
export function normalizeVersion(v: string): string {
  return v === 'unknown' || v.startsWith('v') ? v : `v${v}`;
}

function vsockOf(calls: ApiCall[]): string | undefined {
  const v = calls.find((c) => c.path === '/vsock');
  if (v) return (v.body as Vsock).uds_path;
  const load = calls.find((c) => c.path === '/snapshot/load');
  return (load?.body as { vsock_override?: { uds_path: string } } | undefined)?.vsock_override?.uds_path;
}

/** Move a file the jailed VMM wrote out of the chroot (copy across filesystems). */
function moveOut(from: string, to: string): void {
  rmSync(to, { force: true });
  try {
    renameSync(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    copyFileSync(from, to);
    rmSync(from, { force: true });
  }
}
