/**
 * QEMU adapter of the VMM driver port: `-M microvm`, PVH boot of the
 * uncompressed vmlinux, virtio-mmio block and net, QMP control, serial console
 * to a log file (and a socket for input). The VMM runs detached from the
 * service (own session and process group) inside the VM's cgroup, so a crash of
 * the service does not take guests with it; `adopt` re-attaches afterwards.
 */
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes, MvmError, asMvmError } from '../../core/errors.js';
import { runSteps, type Step } from '../../core/steps.js';
import type { DriveSpec, GuestChannel, LaunchSpec, SnapshotFiles, SnapshotOptions, VmmCapabilities, VmmDriver, VmmExit, VmmInstance, VmmState, VmmStats } from '../../core/ports/vmm.js';
import { describeExit, listPids, passwdIds, pidAlive, procUsage, readCmdline, sleep, waitPidGone } from '../proc.js';
import { runAsArg } from '../identity.js';
import { probeAccel, qemuVersion, type Accel } from './accel.js';
import { QmpClient } from './qmp.js';
import { safeTail, spawnVmm, type VmmProcess } from '../spawn.js';
import { SNAPSHOT_RECORD_FILE, checkRestoreCompatible, prepareRestoreDrives, readSnapshotRecord, restoreIncoming, takeSnapshot } from './snapshot.js';

export interface QemuDriverOptions {
  binary?: string;
  /** 'auto' (probe), 'kvm' or 'tcg'. */
  accel?: string;
  /** Kernel used for the KVM probe boot. */
  probeKernelPath?: string;
  cacheDir: string;
  /** Apply QEMU's seccomp sandbox (default true). */
  sandbox?: boolean;
  /** Drop privileges to this user after set-up (QEMU -runas), when it exists. */
  runAs?: string;
  /** Translation block cache for TCG in MiB (default 32). */
  tbSizeMiB?: number;
}

/** File layout inside a VM directory. */
export const qemuFiles = (vmDir: string) => ({
  qmp: join(vmDir, 'qmp.sock'),
  consoleSock: join(vmDir, 'console.sock'),
  consoleLog: join(vmDir, 'console.log'),
  pid: join(vmDir, 'vmm.pid'),
  vmmLog: join(vmDir, 'vmm.log'),
  launch: join(vmDir, 'launch.json'),
  /** The guest agent's virtio-serial port, as a Unix socket (QEMU listens). */
  agentSock: join(vmDir, 'agent.sock'),
});

/** The id of the file memory backend (LaunchSpec.memoryFile). */
export const MEMORY_BACKEND_ID = 'mvm-ram';

/** The name of the guest agent's virtio-serial port (the guest finds it in /sys/class/virtio-ports). */
export const AGENT_PORT_NAME = 'org.mvm.agent.0';

/** The QEMU command line for a launch spec. Exported so the benchmark boots exactly what the driver boots. */
export function buildQemuArgs(spec: LaunchSpec, o: { accel: Accel; sandbox: boolean; runAs?: string; tbSizeMiB: number }): string[] {
  const f = qemuFiles(spec.vmDir);
  const mem = spec.memoryFile;
  const args: string[] = [
    '-name', `mvm.${spec.id}`,
    '-M', `microvm,x-option-roms=off,isa-serial=on,rtc=on${mem ? `,memory-backend=${MEMORY_BACKEND_ID}` : ''}`,
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-m', String(spec.memoryMiB),
    '-smp', String(spec.vcpu),
  ];
  // Guest RAM as a file: shared (the VM writes it), or a private copy-on-write mapping of it.
  if (mem) args.push('-object', `memory-backend-file,id=${MEMORY_BACKEND_ID},size=${spec.memoryMiB}M,mem-path=${mem.path},share=${mem.shared ? 'on' : 'off'}`);
  if (o.accel === 'kvm') {
    args.push('-accel', 'kvm', '-cpu', 'host');
  } else {
    // TCG boots hang in early boot unless guest time follows instruction count (brief §3).
    // A fixed shift keeps guest timers on time for one vCPU (shift=auto leaves idle timers ~1 s
    // late on QEMU 7.2) but hangs SMP bring-up, where shift=auto (+ lpj below) works.
    args.push('-accel', `tcg,tb-size=${o.tbSizeMiB}`, '-icount', `shift=${spec.vcpu > 1 ? 'auto' : '3'},sleep=on`, '-cpu', 'max');
  }
  args.push('-kernel', spec.kernelPath);
  if (spec.initrdPath) args.push('-initrd', spec.initrdPath);
  // Under TCG the secondary-CPU delay calibration never converges (no reference clock in
  // microvm): give the kernel loops-per-jiffy so SMP guests boot.
  const cmdline = o.accel === 'tcg' && spec.vcpu > 1 && !/\blpj=/.test(spec.cmdline) ? `${spec.cmdline} lpj=4000000` : spec.cmdline;
  args.push('-append', cmdline);
  for (const d of spec.drives) {
    args.push(
      '-drive', `id=${d.id},file=${d.path},format=${d.format},if=none,cache=unsafe,discard=unmap${d.readOnly ? ',read-only=on' : ''}`,
      '-device', `virtio-blk-device,drive=${d.id}`,
    );
  }
  for (const n of spec.nics) {
    args.push('-netdev', `tap,id=${n.id},ifname=${n.tap},script=no,downscript=no`, '-device', `virtio-net-device,netdev=${n.id},mac=${n.mac}`);
  }
  if (spec.guestAgent) {
    // The guest agent's channel: virtio-serial over virtio-mmio (no vhost-vsock on this host).
    args.push(
      '-device', 'virtio-serial-device,id=vser0,max_ports=2',
      '-chardev', `socket,id=agent0,path=${f.agentSock},server=on,wait=off`,
      '-device', `virtserialport,bus=vser0.0,nr=1,chardev=agent0,id=agent0,name=${AGENT_PORT_NAME}`,
    );
  }
  args.push(
    '-chardev', `socket,id=ser0,path=${f.consoleSock},server=on,wait=off,logfile=${f.consoleLog},logappend=on`,
    '-serial', 'chardev:ser0',
    '-qmp', `unix:${f.qmp},server=on,wait=off`,
    '-pidfile', f.pid,
  );
  if (spec.restoreFrom) args.push('-incoming', 'defer');
  // seccomp is installed before -runas drops to the VMM user, so set*id must stay allowed then;
  // once QEMU has given up root it cannot regain it anyway.
  if (o.sandbox) args.push('-sandbox', `on,obsolete=deny,elevateprivileges=${o.runAs ? 'allow' : 'deny'},spawn=deny,resourcecontrol=deny`);
  if (o.runAs) args.push('-runas', o.runAs);
  return args;
}



interface LaunchRecord {
  id: string;
  pid: number;
  accel: Accel;
  args: string[];
  startedAt: string;
}

class QemuInstance implements VmmInstance {
  readonly driver = 'qemu';
  readonly exited: Promise<VmmExit>;
  private exitInfo: VmmExit | undefined;
  private readonly files: ReturnType<typeof qemuFiles>;

  constructor(
    readonly id: string,
    readonly pid: number,
    readonly accel: Accel,
    private readonly vmDir: string,
    readonly config: Record<string, unknown>,
    exited: Promise<VmmExit>,
  ) {
    this.files = qemuFiles(vmDir);
    this.exited = exited.then((e) => {
      this.removeSockets();
      return (this.exitInfo = e);
    });
  }

  get consolePath(): string {
    return this.files.consoleLog;
  }

  get guestChannel(): GuestChannel | undefined {
    const args = (this.config.args as string[] | undefined) ?? [];
    return args.some((a) => a.includes(`name=${AGENT_PORT_NAME}`)) ? { kind: 'unix', path: this.files.agentSock } : undefined;
  }

  async state(): Promise<VmmState> {
    if (this.exitInfo || !pidAlive(this.pid)) return 'exited';
    try {
      const st = await QmpClient.run<{ status: string; running: boolean }>(this.files.qmp, 'query-status', undefined, 3000);
      if (st.status === 'paused') return 'paused';
      if (st.status === 'shutdown') return 'shutdown';
      if (st.status === 'inmigrate' || st.status === 'prelaunch') return 'booting';
      return st.running ? 'running' : 'paused';
    } catch {
      return pidAlive(this.pid) ? 'running' : 'exited';
    }
  }

  async stop(timeoutMs: number): Promise<void> {
    if (!pidAlive(this.pid)) return;
    try {
      const st = await QmpClient.run<{ status: string }>(this.files.qmp, 'query-status', undefined, 3000);
      // A paused guest cannot react to the power button.
      if (st.status === 'paused') await QmpClient.run(this.files.qmp, 'cont', undefined, 3000);
      await QmpClient.run(this.files.qmp, 'system_powerdown', undefined, 3000);
    } catch {
      /* fall through to the kill below */
    }
    const gone = await Promise.race([this.exited.then(() => true), sleep(timeoutMs).then(() => false)]);
    if (!gone) await this.kill();
  }

  /** QEMU removes its sockets only on a clean exit: after a kill (or a crash) they are ours to remove. */
  private removeSockets(): void {
    for (const p of [this.files.qmp, this.files.consoleSock, this.files.pid, this.files.agentSock]) rmSync(p, { force: true });
  }

  /** SIGKILL, then wait until the process is gone (not just signalled) and remove what it leaves behind. */
  async kill(): Promise<void> {
    if (pidAlive(this.pid)) {
      try {
        process.kill(this.pid, 'SIGKILL');
      } catch {
        /* already gone */
      }
      // A SIGKILLed process goes within milliseconds unless stuck in the kernel (D state): wait for it.
      const deadline = Date.now() + 30_000;
      while (pidAlive(this.pid) && Date.now() < deadline) await Promise.race([this.exited, sleep(50)]);
      if (pidAlive(this.pid)) throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU ${this.pid} of ${this.id} did not exit within 30 s of SIGKILL`);
    }
    this.removeSockets();
  }

  async stats(): Promise<VmmStats> {
    const u = procUsage(this.pid);
    let block: VmmStats['block'] = [];
    try {
      const bs = await QmpClient.run<Array<{ device: string; qdev?: string; node_name?: string; stats: Record<string, number> }>>(this.files.qmp, 'query-blockstats', undefined, 3000);
      block = bs.map((b) => ({
        device: b.device || b.node_name || b.qdev || 'unknown',
        readBytes: b.stats.rd_bytes ?? 0,
        writeBytes: b.stats.wr_bytes ?? 0,
        readOps: b.stats.rd_operations ?? 0,
        writeOps: b.stats.wr_operations ?? 0,
      }));
    } catch {
      /* VMM busy or gone: report what /proc knows */
    }
    let guestMemoryBytes: number | undefined;
    try {
      const mem = await QmpClient.run<{ 'base-memory': number; 'plugged-memory'?: number }>(this.files.qmp, 'query-memory-size-summary', undefined, 3000);
      guestMemoryBytes = mem['base-memory'] + (mem['plugged-memory'] ?? 0);
    } catch {
      /* as above */
    }
    return { cpuSeconds: u?.cpuSeconds ?? 0, memoryRssBytes: u?.rssBytes ?? 0, ...(guestMemoryBytes !== undefined ? { guestMemoryBytes } : {}), block };
  }

  async pause(): Promise<void> {
    await this.qmp('stop');
  }

  async resume(): Promise<void> {
    await this.qmp('cont');
  }

  /** Pause, migrate the machine state into `dir` (our process receives the stream), copy writable disks; left paused. See snapshot.ts. */
  async snapshot(dir: string, opts: SnapshotOptions = {}): Promise<SnapshotFiles> {
    if (this.exitInfo) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `cannot snapshot ${this.id}: its VMM has exited (${this.exitInfo.reason})`, { details: { id: this.id } });
    return takeSnapshot({
      id: this.id,
      pid: this.pid,
      qmpPath: this.files.qmp,
      args: (this.config.args as string[] | undefined) ?? [],
      dir,
      ...(opts.memoryTo ? { memoryTo: opts.memoryTo } : {}),
      ...(opts.inPlace ? { inPlace: true } : {}),
      ...(opts.signal ? { signal: opts.signal } : {}),
    });
  }

  private async qmp(cmd: string, args?: Record<string, unknown>): Promise<unknown> {
    try {
      return await QmpClient.run(this.files.qmp, cmd, args, 10000);
    } catch (e) {
      throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU ${cmd} failed for ${this.id}: ${(e as Error).message}`, { cause: e });
    }
  }
}


/** What one QEMU launch builds up, step by step. */
interface QemuLaunch {
  spec: LaunchSpec;
  files: ReturnType<typeof qemuFiles>;
  cmd: { binary: string; args: string[]; accel: Accel };
  proc?: VmmProcess;
  inst?: QemuInstance;
}

/** Until QMP answers `query-status`; fails when QEMU exits first or `timeoutMs` pass. */
async function waitForQmp(files: ReturnType<typeof qemuFiles>, exited: () => VmmExit | undefined, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const exit = exited();
    if (exit) throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU exited during start-up: ${exit.reason}`);
    if (existsSync(files.qmp)) {
      try {
        const c = await QmpClient.connect(files.qmp, 2000);
        try {
          await c.execute('query-status');
        } finally {
          c.close();
        }
        return;
      } catch (e) {
        if (Date.now() > deadline) throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU QMP did not come up: ${(e as Error).message}`);
      }
    }
    if (Date.now() > deadline) throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU did not create its QMP socket within ${timeoutMs / 1000} s`);
    await sleep(20);
  }
}

export class QemuDriver implements VmmDriver {
  readonly name = 'qemu';
  private readonly binary: string;
  private readonly sandbox: boolean;
  private readonly tbSizeMiB: number;
  private readonly runAs: string | undefined;
  private version: string | undefined;

  constructor(private readonly opts: QemuDriverOptions) {
    this.binary = opts.binary ?? 'qemu-system-x86_64';
    this.sandbox = opts.sandbox ?? true;
    this.tbSizeMiB = opts.tbSizeMiB ?? 32;
    this.runAs = opts.runAs && passwdIds(opts.runAs) !== undefined ? opts.runAs : undefined;
  }

  async accel(): Promise<Accel> {
    const r = await probeAccel({
      binary: this.binary,
      kernelPath: this.opts.probeKernelPath ?? '',
      cacheDir: this.opts.cacheDir,
      mode: this.opts.accel ?? 'auto',
    });
    return r.accel;
  }

  async capabilities(): Promise<VmmCapabilities> {
    this.version ??= await qemuVersion(this.binary);
    const available = this.version !== 'unknown';
    return {
      driver: 'qemu',
      accel: available ? await this.accel() : 'none',
      available,
      ...(available ? {} : { unavailableReason: `${this.binary} not found (run make deps)` }),
      pause: true,
      snapshot: true,
      diskFormats: ['qcow2', 'raw'],
      version: this.version,
    };
  }

  /** The argv the driver would run for this spec (used by the boot benchmark). */
  async commandFor(spec: LaunchSpec): Promise<{ binary: string; args: string[]; accel: Accel }> {
    const accel = await this.accel();
    const runAs = spec.runAs ? runAsArg(spec.runAs) : this.runAs;
    return { binary: this.binary, args: buildQemuArgs(spec, { accel, sandbox: this.sandbox, ...(runAs ? { runAs } : {}), tbSizeMiB: this.tbSizeMiB }), accel };
  }

  /**
   * The start of QEMU as named steps (src/core/steps.ts): command → spawn → qmp, and for a restore
   * the incoming migration stream (the snapshot's state, then `cont`). A failure names its step
   * and kills what was started.
   */
  async launch(spec: LaunchSpec): Promise<VmmInstance> {
    const c = { spec, files: qemuFiles(spec.vmDir) } as QemuLaunch;
    await runSteps(`QEMU start of ${spec.id}`, this.launchSteps(), c).catch((e: unknown) => {
      // The VMM's own last words explain most failures (bad arguments, an incompatible stream).
      const tail = safeTail(c.files.vmmLog, 1000);
      const err = asMvmError(e, ErrorCodes.VMM_ERROR);
      throw new MvmError(err.code, `${err.message}${tail && !err.message.includes(tail) ? `: ${tail}` : ''}`, { details: err.details, violations: err.violations, cause: e });
    });
    return c.inst!;
  }

  private launchSteps(): Array<Step<QemuLaunch>> {
    return [
      {
        name: 'command',
        run: async (c) => {
          for (const p of [c.files.qmp, c.files.consoleSock, c.files.pid, c.files.agentSock]) rmSync(p, { force: true });
          // A restore recreates the machine its snapshot saved: the agent's port is there or not as it was.
          if (c.spec.restoreFrom) {
            const rec = readSnapshotRecord(c.spec.restoreFrom.dir);
            const { memoryFile: _m, ...rest } = c.spec;
            c.spec = {
              ...rest,
              guestAgent: rec.machine.devices.some((d) => d.type === 'virtserialport'),
              // A snapshot of shared-file RAM is restored as a private copy-on-write view of its frozen file.
              ...(rec.memory?.kind === 'shared-file' ? { memoryFile: { path: rec.memory.path, shared: false } } : {}),
            };
          }
          c.cmd = await this.commandFor(c.spec);
          // Restore: an incompatible snapshot is refused before anything starts.
          if (c.spec.restoreFrom) checkRestoreCompatible(c.spec.restoreFrom, { qemuVersion: (this.version ??= await qemuVersion(this.binary)), args: c.cmd.args });
        },
      },
      {
        name: 'spawn',
        run: (c) => {
          const { spec, cmd } = c;
          const log = openSync(c.files.vmmLog, 'a');
          try {
            c.proc = spawnVmm({ command: cmd.binary, args: cmd.args, cwd: spec.vmDir, cgroupProcs: spec.cgroupProcs, ...(spec.netnsPath ? { netnsPath: spec.netnsPath } : {}), stdio: ['ignore', log, log] });
          } finally {
            closeSync(log);
          }
          const rec: LaunchRecord = { id: spec.id, pid: c.proc.pid, accel: cmd.accel, args: [cmd.binary, ...cmd.args], startedAt: new Date().toISOString() };
          writeFileSync(c.files.launch, JSON.stringify(rec, null, 2));
          c.inst = new QemuInstance(spec.id, c.proc.pid, cmd.accel, spec.vmDir, { binary: cmd.binary, args: cmd.args, accel: cmd.accel }, c.proc.exited);
        },
        undo: async (c) => {
          await c.inst?.kill();
        },
      },
      {
        // QMP answering proves QEMU parsed its command line and created the machine.
        name: 'qmp',
        run: (c) => waitForQmp(c.files, () => c.proc!.exitInfo(), 15_000),
      },
      {
        // Our process serves the snapshot file on a one-shot socket; QEMU (-incoming defer) loads it, then `cont`.
        name: 'restore',
        when: (c) => c.spec.restoreFrom !== undefined,
        run: async (c) => {
          await restoreIncoming({
            id: c.spec.id,
            qmpPath: c.files.qmp,
            args: c.cmd.args,
            snapshot: c.spec.restoreFrom!,
            alive: () => !c.proc!.exitInfo() && pidAlive(c.proc!.pid),
            // The exit is reaped a moment after the pid is gone.
            exitReason: async () => {
              for (let i = 0; i < 50 && !c.proc!.exitInfo(); i++) await sleep(10);
              return c.proc!.exitInfo()?.reason;
            },
          });
        },
      },
    ];
  }

  async adopt(id: string, vmDir: string): Promise<VmmInstance | null> {
    const f = qemuFiles(vmDir);
    let rec: LaunchRecord;
    try {
      rec = JSON.parse(readFileSync(f.launch, 'utf8')) as LaunchRecord;
    } catch {
      return null;
    }
    if (rec.id !== id || !pidAlive(rec.pid)) return null;
    const cmd = readCmdline(rec.pid);
    if (!cmd || !cmd.some((a) => a.includes(f.qmp))) return null; // pid reused by something else
    const exited = waitPidGone(rec.pid).then(() => describeExit(rec.pid, null, null));
    return new QemuInstance(id, rec.pid, rec.accel, vmDir, { binary: rec.args[0], args: rec.args.slice(1), accel: rec.accel }, exited);
  }

  /** A restored/cloned VM's own writable root disk over the snapshot's copy (owned by the VMM user: QEMU re-opens it after the restore). */
  async prepareRestoreDisk(snapshotDir: string, vmDir: string, vmOwner?: { uid: number; gid: number }): Promise<DriveSpec> {
    const owner = vmOwner ?? (this.runAs ? passwdIds(this.runAs) : undefined);
    const drives = await prepareRestoreDrives(snapshotDir, vmDir, owner ? { owner } : {});
    const root = drives.find((d) => d.root) ?? drives[0];
    if (!root) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot in ${snapshotDir} has no drives`);
    return root;
  }

  async restoreRefusal(snapshotDir: string): Promise<string | undefined> {
    let rec;
    try {
      rec = readSnapshotRecord(snapshotDir);
    } catch (e) {
      return (e as Error).message;
    }
    const version = (this.version ??= await qemuVersion(this.binary));
    if (rec.qemuVersion !== version) return `it was taken by QEMU ${rec.qemuVersion} and this node runs QEMU ${version}`;
    const accel = await this.accel();
    if (rec.machine.accel !== accel) return `it was taken with ${rec.machine.accel} acceleration and this node uses ${accel}`;
    return undefined;
  }

  snapshotFiles(snapshotDir: string): SnapshotFiles {
    const rec = readSnapshotRecord(snapshotDir);
    return {
      dir: snapshotDir,
      memoryFile: join(snapshotDir, rec.stateFile),
      stateFile: join(snapshotDir, SNAPSHOT_RECORD_FILE),
      ...(rec.memory?.kind === 'shared-file' ? { sharedMemoryFile: rec.memory.path } : {}),
    };
  }

  async findProcesses(root: string): Promise<Array<{ pid: number; id: string; vmDir: string }>> {
    const out: Array<{ pid: number; id: string; vmDir: string }> = [];
    const prefix = root.endsWith('/') ? root : root + '/';
    for (const pid of listPids()) {
      const cmd = readCmdline(pid);
      if (!cmd || !cmd[0]?.includes('qemu-system')) continue;
      const nameArg = cmd[cmd.indexOf('-name') + 1] ?? '';
      const m = /^mvm\.([a-z0-9-]+)/.exec(nameArg);
      const qmpArg = cmd[cmd.indexOf('-qmp') + 1] ?? '';
      const q = /^unix:(.*)\/qmp\.sock/.exec(qmpArg);
      if (!m || !q || !q[1]!.startsWith(prefix)) continue;
      if (!pidAlive(pid)) continue;
      out.push({ pid, id: m[1]!, vmDir: q[1]! });
    }
    return out;
  }
}
