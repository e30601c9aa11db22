/**
 * Firecracker adapter of the VMM driver port.
 *
 * The VMM runs detached from the service (own session, inside the VM's cgroup,
 * joined by a wrapper before exec), either directly (`firecracker --api-sock
 * <vmDir>/firecracker.sock --id <id>`) or under the jailer (chroot, own uid/gid,
 * cgroup, optional netns). Its start is a pipeline of named steps (launch.ts)
 * ending with its API calls (config.ts), one step each; a restore swaps the
 * configuration + InstanceStart calls for one snapshot load. The running
 * process is a FirecrackerInstance (instance.ts). The guest serial console is Firecracker's stdout, sent to
 * `<vmDir>/console.log`. `launch.json` in the VM directory lets a restarted
 * service re-adopt the process.
 */
import { spawn as nodeSpawn } from 'node:child_process';
import { accessSync, constants, existsSync, readFileSync, realpathSync } from 'node:fs';
import { delimiter, dirname, isAbsolute, join, resolve, basename } from 'node:path';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { DriveSpec, LaunchSpec, SnapshotFiles, VmmCapabilities, VmmDriver, VmmInstance } from '../../core/ports/vmm.js';
import { describeExit, listPids, pidAlive, readCmdline, waitPidGone } from '../proc.js';
import type { SpawnFn } from '../spawn.js';
import type { FcConfigExtras } from './config.js';
import { fcFiles } from './config.js';
import { FirecrackerInstance, cleanupAfter, type FcLaunchRecord } from './instance.js';
import { JAIL_API_SOCK, defaultJailerConfig, execFileName, jailPaths, type JailerConfig } from './jailer.js';
import { launchFirecracker } from './launch.js';
import { MetricsSink, drainLogFifo, type FifoReader } from './metrics.js';
import { hostCpuModel, prepareRestoreDrives, readFcSnapshotMeta, snapshotFilesOf } from './snapshot.js';

export type { SpawnFn } from '../spawn.js';
export type { FcLaunchRecord } from './instance.js';

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

/**
 * The oldest Firecracker the service runs: Debian's guest kernel finds virtio-mmio devices only
 * through ACPI, which Firecracker offers since v1.8 (older ones pass them on the command line).
 */
export const MIN_FIRECRACKER_VERSION = [1, 8, 0] as const;

/** Why this version cannot be used (undefined when it can). */
export function versionRefusal(version: string, binary: string): string | undefined {
  const min = `v${MIN_FIRECRACKER_VERSION.join('.')}`;
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(version);
  if (!m) return `cannot tell the version of ${binary} (\`--version\` printed no Firecracker version); the service needs Firecracker ${min} or later`;
  const got = [Number(m[1]), Number(m[2]), Number(m[3])];
  for (let i = 0; i < 3; i++) {
    if (got[i]! > MIN_FIRECRACKER_VERSION[i]!) return undefined;
    if (got[i]! < MIN_FIRECRACKER_VERSION[i]!) {
      return `${binary} is Firecracker ${version}, older than ${min}: the guest kernel finds its virtio-mmio devices only through ACPI, which Firecracker offers since v1.8; install ${min} or later and point MVM_FIRECRACKER_BIN at it`;
    }
  }
  return undefined;
}

/** The binary resolved on PATH, through its symlinks. */
export function realBinary(name: string): string | undefined {
  const bin = resolveBinary(name);
  if (!bin) return undefined;
  try {
    return realpathSync(bin);
  } catch {
    return bin;
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
    // The jailer names the jail after the exec file it really runs: a release download on PATH is
    // often a symlink `firecracker` -> `firecracker-v1.17.0-x86_64`, so the real path, not the link.
    const fc = realBinary(this.binary) ?? this.binary;
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
    const old = versionRefusal(this.version, bin);
    if (old) return no(old, this.version);
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
    return launchFirecracker(
      {
        binary: () => resolveBinary(this.binary),
        binaryName: this.binary,
        jailerConfig: () => this.jailerConfig(),
        version: async (bin) => (this.version ??= await firecrackerVersion(bin, this.spawnFn)),
        versionRefusal,
        ...(this.opts.extras ? { extras: this.opts.extras } : {}),
        ...(this.opts.netnsFor ? { netnsFor: this.opts.netnsFor } : {}),
        liveJailed: async (id) => (await this.findProcesses('/')).some((p) => p.id === id),
        spawn: this.spawnFn,
        ...(this.opts.env ? { env: this.opts.env } : {}),
        apiTimeoutMs: this.apiTimeoutMs,
        startTimeoutMs: this.startTimeoutMs,
      },
      spec,
    );
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

  async restoreRefusal(snapshotDir: string): Promise<string | undefined> {
    let meta;
    try {
      meta = readFcSnapshotMeta(snapshotDir);
    } catch (e) {
      return (e as Error).message;
    }
    const jailed = this.jailerConfig() !== undefined;
    if (meta.jailed !== jailed) {
      return meta.jailed
        ? 'it was taken under the jailer (drives at /drives/<id> in the chroot) and this service runs Firecracker un-jailed'
        : 'it was taken without the jailer (drives relative to the VM directory) and this service runs Firecracker jailed';
    }
    const bin = resolveBinary(this.binary);
    const version = bin ? (this.version ??= await firecrackerVersion(bin, this.spawnFn)) : 'unknown';
    if (meta.vmmVersion && meta.vmmVersion !== 'unknown' && version !== 'unknown' && meta.vmmVersion !== version) {
      return `it was taken by Firecracker ${meta.vmmVersion} and this node runs ${version}`;
    }
    const cpu = hostCpuModel();
    if (meta.cpuModel && meta.cpuModel !== 'unknown' && cpu !== 'unknown' && meta.cpuModel !== cpu) return `it was taken on a ${meta.cpuModel} CPU and this node has a ${cpu}`;
    return undefined;
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
