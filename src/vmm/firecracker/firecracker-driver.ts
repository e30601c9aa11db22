/**
 * Firecracker adapter of the VMM driver port.
 *
 * The VMM runs detached from the service (own session, inside the VM's cgroup,
 * joined by a wrapper before exec), either directly (`firecracker --api-sock
 * <vmDir>/firecracker.sock --id <id>`) or under the jailer (chroot, own uid/gid,
 * cgroup, optional netns). It is configured through its API socket by an
 * ordered list of calls (config.ts) — a named pipeline whose steps are the
 * calls; a restore swaps the configuration + InstanceStart steps for one
 * snapshot load. The guest serial console is Firecracker's stdout, sent to
 * `<vmDir>/console.log`. `launch.json` in the VM directory lets a restarted
 * service re-adopt the process.
 */
import { spawn as nodeSpawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { accessSync, closeSync, constants, copyFileSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, delimiter, dirname, isAbsolute, join, resolve } from 'node:path';
import { ErrorCodes, MvmError, asMvmError } from '../../core/errors.js';
import type { DriveSpec, LaunchSpec, SnapshotFiles, VmmCapabilities, VmmDriver, VmmExit, VmmInstance, VmmState, VmmStats } from '../../core/ports/vmm.js';
import { describeExit, listPids, pidAlive, procUsage, readCmdline, sleep, waitPidGone } from '../proc.js';
import { FirecrackerApiClient, callLabel, type ApiCall, type Drive, type NetworkInterface, type Vsock } from './api-client.js';
import {
  MAX_SOCKET_PATH,
  SNAPSHOT_MEMORY_FILE,
  SNAPSHOT_META_FILE,
  SNAPSHOT_STATE_FILE,
  buildBootCalls,
  buildRestoreCalls,
  driveIdMap,
  fcResourceId,
  fcFiles,
  pruneRestoreOverrides,
  validateForFirecracker,
  type FcConfigExtras,
  type FcSnapshotMeta,
} from './config.js';
import {
  JAIL_API_SOCK,
  allocateUid,
  buildJailerArgs,
  cgroupSettings,
  cleanupJail,
  defaultJailerConfig,
  execFileName,
  jailCalls,
  jailCgroupDirs,
  jailHostPath,
  jailPaths,
  nodeJailFs,
  prepareChroot,
  type JailerConfig,
} from './jailer.js';
import { MetricsSink, drainLogFifo, type FifoReader } from './metrics.js';
import {
  FC_SNAPSHOT_FORMAT,
  checkRestoreCompatible,
  copySnapshotDisks,
  drivePathSeen,
  fileFacts,
  hostCpuModel,
  insideDir,
  prepareRestoreDrives,
  relativizeDrives,
  snapshotFilesOf,
  writeSnapshotMeta,
} from './snapshot.js';
import { wrapInNetns } from '../../core/ports/network.js';

export type SpawnFn = (command: string, args: readonly string[], options: SpawnOptions) => ChildProcess;

export interface FirecrackerDriverOptions {
  /** The firecracker binary: a path, or a name looked up on PATH (default `firecracker`). */
  binary?: string;
  /** Run under the jailer. `binary` is the jailer; the rest defaults as in `defaultJailerConfig`. */
  jailer?: Partial<Omit<JailerConfig, 'jailerBinary' | 'firecrackerBinary'>> & { binary: string };
  /** Network namespace handle for a VM when jailed (`--netns`), e.g. /var/run/netns/<ns>. */
  netnsFor?: (spec: LaunchSpec) => string | undefined;
  /**
   * Can KVM boot a guest here? Default: /dev/kvm exists AND it was probed
   * usable (`kvmProbedUsable: true` or MVM_KVM_USABLE=1). The device file alone
   * proves nothing (nested PVM hosts hang guests, brief §3).
   */
  kvm?: { kvmUsable(): Promise<boolean> };
  kvmProbedUsable?: boolean;
  /** Optional devices per VM: vsock, MMDS, balloon, rate limiters, SMT, dirty page tracking. */
  extras?: (spec: LaunchSpec) => FcConfigExtras;
  /** Injectable for tests. */
  spawn?: SpawnFn;
  /** Extra environment for the VMM process (not passed through the jailer, which clears it). */
  env?: Record<string, string>;
  /** Per API call (default 10 s). */
  apiTimeoutMs?: number;
  /** For the API socket to answer after spawn (default 10 s). */
  startTimeoutMs?: number;
}

interface JailRecord {
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

/** Does this command line belong to a Firecracker process (or the test peer standing in for it)? */
export function isFirecrackerCmdline(cmd: string[] | undefined): boolean {
  if (!cmd || cmd.length === 0) return false;
  const heads = [cmd[0], cmd[1]].filter((a): a is string => typeof a === 'string' && !a.startsWith('-'));
  return heads.some((a) => basename(a).includes('firecracker') && !basename(a).includes('jailer')) && argValue(cmd, '--api-sock') !== undefined;
}

/** `--name value` or `--name=value`. */
export function argValue(cmd: string[], name: string): string | undefined {
  for (let i = 0; i < cmd.length; i++) {
    const a = cmd[i]!;
    if (a === name) return cmd[i + 1];
    if (a.startsWith(name + '=')) return a.slice(name.length + 1);
  }
  return undefined;
}


/** Resolve a binary name on PATH (or check a path); undefined when not executable. */
export function resolveBinary(name: string, pathEnv = process.env.PATH ?? ''): string | undefined {
  const ok = (p: string): boolean => {
    try {
      accessSync(p, constants.X_OK);
      return true;
    } catch {
      return false;
    }
  };
  if (name.includes('/')) return ok(name) ? resolve(name) : undefined;
  for (const dir of pathEnv.split(delimiter)) {
    if (!dir) continue;
    const p = join(dir, name);
    if (ok(p)) return p;
  }
  return undefined;
}

/** `firecracker --version` -> e.g. "v1.10.1" ("unknown" when it cannot be run). */
export function firecrackerVersion(binary: string, spawnFn: SpawnFn = nodeSpawn): Promise<string> {
  return new Promise((resolveP) => {
    let out = '';
    let settled = false;
    const done = (v: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolveP(v);
    };
    const p = spawnFn(binary, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
    const timer = setTimeout(() => {
      p.kill('SIGKILL');
      done('unknown');
    }, 5000);
    p.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', () => done('unknown'));
    p.on('close', () => {
      const m = /Firecracker\s+(v?[0-9][^\s]*)/i.exec(out);
      done(m ? (m[1]!.startsWith('v') ? m[1]! : `v${m[1]!}`) : 'unknown');
    });
  });
}

function raceTimeout<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<undefined>((r) => (t = setTimeout(() => r(undefined), ms)))]).finally(() => clearTimeout(t));
}

function safeTail(path: string, n: number): string {
  try {
    return readFileSync(path, 'utf8').slice(-n).trim();
  } catch {
    return '';
  }
}

/** Remove what a Firecracker process leaves behind once it is gone: sockets, FIFOs, the jail. Idempotent. */
async function cleanupAfter(rec: FcLaunchRecord): Promise<void> {
  for (const p of [rec.apiSock, rec.logFifo, rec.metricsFifo, rec.vsockUds, rec.consoleIn]) {
    if (p) rmSync(p, { force: true });
  }
  if (rec.jail) await cleanupJail({ jailDir: rec.jail.jailDir, leaseDir: rec.jail.leaseDir, id: rec.id, cgroupDirs: rec.jail.cgroupDirs });
}

class FirecrackerInstance implements VmmInstance {
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
    if (this.alive()) {
      try {
        process.kill(this.rec.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
    }
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

function wrapIf(netns: string | undefined, argv: string[]): string[] {
  return netns ? wrapInNetns(netns, argv) : argv;
}

/** The snapshot's interfaces with this restore's taps. */
function restoredNics(meta: FcSnapshotMeta, spec: LaunchSpec): FcSnapshotMeta['nics'] {
  return meta.nics.map((n) => ({ ...n, host_dev_name: spec.nics.find((x) => fcResourceId(x.id) === n.iface_id)?.tap ?? n.host_dev_name }));
}

/** "v1.10.1" / "1.10.1" -> "v1.10.1". */
function normalizeVersion(v: string): string {
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

export class FirecrackerDriver implements VmmDriver {
  readonly name = 'firecracker';
  private readonly binary: string;
  private readonly spawnFn: SpawnFn;
  private readonly kvm: { kvmUsable(): Promise<boolean> };
  private readonly apiTimeoutMs: number;
  private readonly startTimeoutMs: number;
  private version: string | undefined;

  constructor(private readonly opts: FirecrackerDriverOptions = {}) {
    this.binary = opts.binary ?? 'firecracker';
    this.spawnFn = opts.spawn ?? nodeSpawn;
    this.apiTimeoutMs = opts.apiTimeoutMs ?? 10_000;
    this.startTimeoutMs = opts.startTimeoutMs ?? 10_000;
    this.kvm = opts.kvm ?? {
      kvmUsable: async () => existsSync('/dev/kvm') && (opts.kvmProbedUsable === true || process.env.MVM_KVM_USABLE === '1'),
    };
  }

  /** The jailer configuration in effect, or undefined when Firecracker runs un-jailed. */
  jailerConfig(): JailerConfig | undefined {
    const j = this.opts.jailer;
    if (!j) return undefined;
    const fc = resolveBinary(this.binary) ?? this.binary;
    const { binary, ...rest } = j;
    return defaultJailerConfig({ ...rest, jailerBinary: binary, firecrackerBinary: fc });
  }

  async capabilities(): Promise<VmmCapabilities> {
    const base = { driver: 'firecracker', pause: true, snapshot: true, diskFormats: ['raw'] as Array<'raw'> };
    const no = (reason: string, version = 'unknown'): VmmCapabilities => ({ ...base, accel: 'none', available: false, unavailableReason: reason, version });
    const bin = resolveBinary(this.binary);
    if (!bin) {
      return no(this.binary.includes('/') ? `no firecracker binary at ${this.binary}` : `no firecracker binary: ${this.binary} is not on PATH (${process.env.PATH ?? ''})`);
    }
    this.version ??= await firecrackerVersion(bin, this.spawnFn);
    if (this.opts.jailer && !resolveBinary(this.opts.jailer.binary)) return no(`no jailer binary: ${this.opts.jailer.binary} not found`, this.version);
    if (!(await this.kvm.kvmUsable())) {
      const why = !existsSync('/dev/kvm')
        ? '/dev/kvm does not exist'
        : this.opts.kvm
          ? 'the KVM probe could not boot a guest'
          : '/dev/kvm exists but was not probed usable (nested/PVM KVM hangs guests; set MVM_KVM_USABLE=1 after a successful probe boot)';
      return no(`KVM cannot boot a guest on this host: ${why}`, this.version);
    }
    return { ...base, accel: 'kvm', available: true, version: this.version };
  }

  async launch(spec: LaunchSpec): Promise<VmmInstance> {
    let step = 'validate';
    let rec: FcLaunchRecord | undefined;
    let child: ChildProcess | undefined;
    let inst: FirecrackerInstance | undefined;
    let jail: JailRecord | undefined;
    const sinks: { metrics?: MetricsSink; log?: FifoReader } = {};
    const f = fcFiles(spec.vmDir);
    try {
      const extras = this.opts.extras?.(spec) ?? {};
      validateForFirecracker(spec, extras);
      const bin = resolveBinary(this.binary);
      if (!bin) throw new MvmError(ErrorCodes.VMM_ERROR, `no firecracker binary: ${this.binary} not found`);
      const jcfg = this.jailerConfig();
      const hostFiles = { logFifo: f.logFifo, metricsFifo: f.metricsFifo, ...(extras.vsock ? { vsockUds: f.vsockUds } : {}) };
      let meta: FcSnapshotMeta | undefined;
      if (spec.restoreFrom) {
        // Refuse an incompatible restore before anything is started.
        step = 'restore-check';
        this.version ??= await firecrackerVersion(bin, this.spawnFn);
        meta = checkRestoreCompatible(spec.restoreFrom, spec, { vmmVersion: this.version, cpuModel: hostCpuModel(), jailed: jcfg !== undefined });
      }
      let calls = spec.restoreFrom ? buildRestoreCalls(spec, hostFiles, spec.restoreFrom, extras) : buildBootCalls(spec, hostFiles, extras);
      const netns = this.opts.netnsFor?.(spec) ?? spec.netnsPath ?? jcfg?.netns;
      const driveFiles = spec.drives.map((d) => ({
        drive_id: fcResourceId(d.id),
        id: d.id,
        path_on_host: drivePathSeen(d, spec.vmDir, jcfg !== undefined),
        hostPath: resolve(d.path),
        readOnly: d.readOnly,
        root: d.root,
      }));

      step = 'prepare';
      mkdirSync(spec.vmDir, { recursive: true });
      for (const p of [f.apiSock, f.logFifo, f.metricsFifo, f.vsockUds, f.metricsTotals, f.consoleIn]) rmSync(p, { force: true });
      // The guest serial console's input: a FIFO the VMM holds open read-write as its stdin (it never sees EOF).
      nodeJailFs.mkfifo(f.consoleIn);
      let apiSock = f.apiSock;
      let apiSockArg = f.apiSock;
      let logFifo = f.logFifo;
      let metricsFifo = f.metricsFifo;
      let vsockUds = extras.vsock ? f.vsockUds : undefined;
      let command: string;
      let args: string[];
      if (jcfg) {
        step = 'jail';
        const execName = execFileName(jcfg.firecrackerBinary);
        const jp = jailPaths(jcfg.chrootBaseDir, execName, spec.id);
        // A jail left by a dead process of this VM is stale; never touch a live one.
        if (existsSync(jp.jailDir)) {
          const live = (await this.findProcesses('/')).some((p) => p.id === spec.id);
          if (live) throw new MvmError(ErrorCodes.CONFLICT, `a jailed Firecracker of ${spec.id} is still running`, { details: { jailDir: jp.jailDir } });
          rmSync(jp.jailDir, { recursive: true, force: true });
        }
        mkdirSync(jp.chrootDir, { recursive: true }); // exists before the uid lease: it is what marks the lease live
        let uid: number;
        try {
          uid = allocateUid(spec.id, jcfg.uidRange, jp.leaseDir, (owner) => existsSync(jailPaths(jcfg.chrootBaseDir, execName, owner).jailDir));
        } catch (e) {
          rmSync(jp.jailDir, { recursive: true, force: true });
          throw e;
        }
        const memBytes = (spec.memoryMiB + jcfg.memoryOverheadMiB) * 1024 * 1024;
        const settings = cgroupSettings(jcfg.cgroupVersion, spec.vcpu, memBytes);
        jail = { jailDir: jp.jailDir, chrootDir: jp.chrootDir, leaseDir: jp.leaseDir, uid, gid: uid, cgroupDirs: jailCgroupDirs(jcfg, spec.id, settings) };
        writeFileSync(jp.meta, JSON.stringify({ id: spec.id, vmDir: spec.vmDir, uid, gid: uid }, null, 2));
        const jailed = jailCalls(calls);
        calls = jailed.calls;
        // A restore reopens the drives at their jail paths: link them in too.
        const restoreDrives = spec.restoreFrom ? jailCalls(buildBootCalls(spec, hostFiles, extras)).files.filter((x) => x.jail.startsWith('/drives/')) : [];
        prepareChroot(jp.chrootDir, [...jailed.files, ...restoreDrives], uid, uid, nodeJailFs);
        apiSock = jp.apiSock;
        apiSockArg = JAIL_API_SOCK;
        const fifo = (host: string): string => jailHostPath(jp.chrootDir, jailed.files.find((x) => x.host === host)!.jail);
        logFifo = fifo(f.logFifo);
        metricsFifo = fifo(f.metricsFifo);
        if (vsockUds) vsockUds = jailHostPath(jp.chrootDir, '/vsock.sock');
        command = jcfg.jailerBinary;
        args = buildJailerArgs({
          id: spec.id,
          uid,
          gid: uid,
          execFile: jcfg.firecrackerBinary,
          chrootBaseDir: resolve(jcfg.chrootBaseDir),
          cgroupVersion: jcfg.cgroupVersion,
          cgroups: settings,
          parentCgroup: jcfg.parentCgroup,
          ...(netns ? { netns } : {}),
          ...(jcfg.resourceLimits ? { resourceLimits: jcfg.resourceLimits } : {}),
        });
      } else {
        for (const p of [f.logFifo, f.metricsFifo]) nodeJailFs.mkfifo(p);
        // The VM's own disks by paths relative to the VM directory (Firecracker's cwd): a clone's
        // Firecracker reopens the same relative paths from the snapshot, i.e. its own disks.
        calls = relativizeDrives(calls, spec.vmDir);
        // Taps live in the VM's network namespace: nsenter switches the netns only and execs (same pid).
        const argv = wrapIf(netns, [bin, '--api-sock', f.apiSock, '--id', spec.id]);
        command = argv[0]!;
        args = argv.slice(1);
      }
      if (Buffer.byteLength(apiSock) > MAX_SOCKET_PATH) {
        throw new MvmError(ErrorCodes.VALIDATION_FAILED, `API socket path ${apiSock} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter data directory`);
      }
      calls = pruneRestoreOverrides(calls, meta);

      step = 'spawn';
      const consoleFd = openSync(f.consoleLog, 'a');
      const err = openSync(f.vmmLog, 'a');
      const stdin = openSync(f.consoleIn, constants.O_RDWR);
      // The wrapper joins the VM's cgroups before exec, so the VMM never allocates outside them.
      const wrapper = 'for f in $MVM_CGROUP_PROCS; do echo $$ > "$f" || { echo "cannot join cgroup $f" >&2; exit 125; }; done; exec "$@"';
      try {
        child = this.spawnFn('/bin/sh', ['-c', wrapper, 'mvm-vmm', command, ...args], {
          detached: true,
          stdio: [stdin, consoleFd, err],
          cwd: spec.vmDir,
          env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...(this.opts.env ?? {}), MVM_CGROUP_PROCS: spec.cgroupProcs.join(' ') },
        });
      } finally {
        closeSync(consoleFd);
        closeSync(err);
        closeSync(stdin);
      }
      const pid = child.pid;
      if (pid === undefined) throw new MvmError(ErrorCodes.VMM_ERROR, `cannot start ${command}: spawn failed`);
      const c = child;
      const rawExit = new Promise<VmmExit>((res) => {
        c.on('exit', (code, signal) => res(describeExit(pid, code, signal)));
        c.on('error', (e) => res({ code: null, signal: null, reason: `cannot start VMM: ${e.message}` }));
      });
      child.unref();
      rec = {
        driver: 'firecracker',
        id: spec.id,
        pid,
        startedAt: new Date().toISOString(),
        mode: spec.restoreFrom ? 'restore' : 'boot',
        binary: command,
        args,
        apiSock,
        apiSockArg,
        logFifo,
        metricsFifo,
        ...(vsockUds ? { vsockUds } : {}),
        calls,
        drives: driveIdMap(spec),
        vcpu: spec.vcpu,
        memoryMiB: spec.memoryMiB,
        ...(jail ? { jail } : {}),
        kernelPath: resolve(spec.kernelPath),
        vmDir: resolve(spec.vmDir),
        driveFiles,
        consoleIn: f.consoleIn,
        ...(netns ? { netns } : {}),
        ...(meta ? { restoredNics: restoredNics(meta, spec) } : {}),
      };
      writeFileSync(f.launch, JSON.stringify(rec, null, 2));
      sinks.log = drainLogFifo(logFifo, f.fcLog);
      sinks.metrics = new MetricsSink(metricsFifo, f.metricsTotals).start();
      inst = new FirecrackerInstance(rec, spec.vmDir, rawExit, sinks, { booted: false, apiTimeoutMs: this.apiTimeoutMs });
      let exitInfo: VmmExit | undefined;
      void rawExit.then((e) => (exitInfo = e));

      step = 'api-socket';
      await this.waitForApi(apiSock, () => exitInfo, f.vmmLog);

      for (const call of calls) {
        step = callLabel(call);
        if (exitInfo) throw new MvmError(ErrorCodes.VMM_ERROR, `Firecracker exited: ${exitInfo.reason}`);
        await inst.api.call(call);
      }
      return inst;
    } catch (e) {
      const err = asMvmError(e, ErrorCodes.VMM_ERROR);
      if (inst) await inst.kill().catch(() => undefined);
      else if (child?.pid) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
      sinks.metrics?.close();
      sinks.log?.close();
      if (rec) await cleanupAfter(rec).catch(() => undefined);
      else {
        for (const p of [f.apiSock, f.logFifo, f.metricsFifo, f.vsockUds, f.consoleIn]) rmSync(p, { force: true });
        if (jail) await cleanupJail({ jailDir: jail.jailDir, leaseDir: jail.leaseDir, id: spec.id, cgroupDirs: jail.cgroupDirs }).catch(() => undefined);
      }
      const tail = err.code === ErrorCodes.VMM_ERROR && !err.details.faultMessage && step !== 'api-socket' ? safeTail(f.vmmLog, 500) : '';
      throw new MvmError(err.code, `Firecracker start of ${spec.id} failed at step "${step}": ${err.message}${tail ? ` (vmm.log: ${tail})` : ''}`, {
        details: { ...err.details, step },
        violations: err.violations,
        cause: e,
      });
    }
  }

  private async waitForApi(apiSock: string, exited: () => VmmExit | undefined, vmmLog: string): Promise<void> {
    const deadline = Date.now() + this.startTimeoutMs;
    const probe = new FirecrackerApiClient(apiSock, { timeoutMs: 1000 });
    let last = '';
    for (;;) {
      const e = exited();
      if (e) {
        const tail = safeTail(vmmLog, 1000);
        throw new MvmError(ErrorCodes.VMM_ERROR, `Firecracker exited during start-up: ${e.reason}${tail ? `: ${tail}` : ''}`);
      }
      if (existsSync(apiSock)) {
        try {
          await probe.describeInstance();
          return;
        } catch (err) {
          last = (err as Error).message;
        }
      }
      if (Date.now() > deadline) {
        throw new MvmError(ErrorCodes.TIMEOUT, `Firecracker API socket ${apiSock} did not answer within ${this.startTimeoutMs} ms${last ? ` (${last})` : ''}`);
      }
      await sleep(10);
    }
  }

  async adopt(id: string, vmDir: string): Promise<VmmInstance | null> {
    const f = fcFiles(vmDir);
    let rec: FcLaunchRecord;
    try {
      rec = JSON.parse(readFileSync(f.launch, 'utf8')) as FcLaunchRecord;
    } catch {
      return null;
    }
    if (rec.driver !== 'firecracker' || rec.id !== id) return null;
    const cmd = pidAlive(rec.pid) ? readCmdline(rec.pid) : undefined;
    const ours = cmd !== undefined && isFirecrackerCmdline(cmd) && argValue(cmd, '--api-sock') === rec.apiSockArg && argValue(cmd, '--id') === id;
    if (!ours) {
      // The VMM is gone (or the pid was reused): clear what it left behind.
      await cleanupAfter(rec).catch(() => undefined);
      return null;
    }
    const sinks: { metrics?: MetricsSink; log?: FifoReader } = {};
    try {
      if (existsSync(rec.logFifo)) sinks.log = drainLogFifo(rec.logFifo, f.fcLog);
      if (existsSync(rec.metricsFifo)) sinks.metrics = new MetricsSink(rec.metricsFifo, f.metricsTotals).start();
    } catch {
      /* metrics are best effort */
    }
    const rawExit = waitPidGone(rec.pid).then(() => describeExit(rec.pid, null, null));
    const inst = new FirecrackerInstance(rec, vmDir, rawExit, sinks, { apiTimeoutMs: this.apiTimeoutMs });
    try {
      await inst.api.syncPhase();
    } catch {
      /* busy: the phase stays unknown and calls are not pre-checked */
    }
    return inst;
  }

  /**
   * A restored/cloned VM's own writable root disk: a reflink/sparse raw clone
   * of the snapshot's disk copy, at the same place in `vmDir` as the source's
   * disk in its VM directory (owned by the jailed user once the jail links it).
   */
  async prepareRestoreDisk(snapshotDir: string, vmDir: string): Promise<DriveSpec> {
    const drives = await prepareRestoreDrives(snapshotDir, vmDir);
    const root = drives.find((d) => d.root) ?? drives[0];
    if (!root) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot in ${snapshotDir} has no drives`);
    return root;
  }

  /** All drives of a restore (root first), for callers that attach more than the root. */
  prepareRestoreDrives(snapshotDir: string, vmDir: string): Promise<DriveSpec[]> {
    return prepareRestoreDrives(snapshotDir, vmDir);
  }

  snapshotFiles(snapshotDir: string): SnapshotFiles {
    return snapshotFilesOf(snapshotDir);
  }

  async findProcesses(root: string): Promise<Array<{ pid: number; id: string; vmDir: string }>> {
    const out: Array<{ pid: number; id: string; vmDir: string }> = [];
    const prefix = root.endsWith('/') ? root : root + '/';
    const jcfg = this.jailerConfig();
    for (const pid of listPids()) {
      const cmd = readCmdline(pid);
      if (!isFirecrackerCmdline(cmd)) continue;
      const id = argValue(cmd!, '--id');
      const sock = argValue(cmd!, '--api-sock');
      if (!id || !sock) continue;
      let vmDir: string | undefined;
      if (sock === JAIL_API_SOCK || !isAbsolute(sock)) {
        // Jailed: the command line only has jail paths; the jail's mvm.json says where the VM lives.
        if (!jcfg) continue;
        try {
          const jp = jailPaths(jcfg.chrootBaseDir, execFileName(jcfg.firecrackerBinary), id);
          vmDir = (JSON.parse(readFileSync(jp.meta, 'utf8')) as { vmDir?: string }).vmDir;
        } catch {
          continue;
        }
      } else {
        vmDir = dirname(sock);
      }
      if (!vmDir || !(vmDir + '/').startsWith(prefix) || !pidAlive(pid)) continue;
      out.push({ pid, id, vmDir });
    }
    return out;
  }
}
