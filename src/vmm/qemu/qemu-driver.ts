/**
 * QEMU adapter of the VMM driver port: `-M microvm`, PVH boot of the
 * uncompressed vmlinux, virtio-mmio block and net, QMP control, serial console
 * to a log file (and a socket for input). The VMM runs detached from the
 * service (own session and process group) inside the VM's cgroup, so a crash of
 * the service does not take guests with it; `adopt` re-attaches afterwards.
 */
import { spawn } from 'node:child_process';
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { DriveSpec, LaunchSpec, SnapshotFiles, VmmCapabilities, VmmDriver, VmmExit, VmmInstance, VmmState, VmmStats } from '../../core/ports/vmm.js';
import { describeExit, listPids, passwdIds, pidAlive, procUsage, readCmdline, sleep, waitPidGone } from '../proc.js';
import { probeAccel, qemuVersion, type Accel } from './accel.js';
import { QmpClient } from './qmp.js';
import { SNAPSHOT_RECORD_FILE, checkRestoreCompatible, prepareRestoreDrives, readSnapshotRecord, restoreIncoming, takeSnapshot } from './snapshot.js';
import { wrapInNetns } from '../../core/ports/network.js';

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
});

/** The QEMU command line for a launch spec. Exported so the benchmark boots exactly what the driver boots. */
export function buildQemuArgs(spec: LaunchSpec, o: { accel: Accel; sandbox: boolean; runAs?: string; tbSizeMiB: number }): string[] {
  const f = qemuFiles(spec.vmDir);
  const args: string[] = [
    '-name', `mvm.${spec.id}`,
    '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=on',
    '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-m', String(spec.memoryMiB),
    '-smp', String(spec.vcpu),
  ];
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
      // QEMU removes its sockets only on a clean exit.
      for (const p of [this.files.qmp, this.files.consoleSock, this.files.pid]) rmSync(p, { force: true });
      return (this.exitInfo = e);
    });
  }

  get consolePath(): string {
    return this.files.consoleLog;
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

  async kill(): Promise<void> {
    if (!pidAlive(this.pid)) return;
    try {
      process.kill(this.pid, 'SIGKILL');
    } catch {
      /* already gone */
    }
    await Promise.race([this.exited, sleep(5000)]);
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
    return { cpuSeconds: u?.cpuSeconds ?? 0, memoryRssBytes: u?.rssBytes ?? 0, block };
  }

  async pause(): Promise<void> {
    await this.qmp('stop');
  }

  async resume(): Promise<void> {
    await this.qmp('cont');
  }

  /** Pause, migrate the machine state into `dir` (our process receives the stream), copy writable disks; left paused. See snapshot.ts. */
  async snapshot(dir: string): Promise<SnapshotFiles> {
    if (this.exitInfo) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `cannot snapshot ${this.id}: its VMM has exited (${this.exitInfo.reason})`, { details: { id: this.id } });
    return takeSnapshot({ id: this.id, pid: this.pid, qmpPath: this.files.qmp, args: (this.config.args as string[] | undefined) ?? [], dir });
  }

  private async qmp(cmd: string, args?: Record<string, unknown>): Promise<unknown> {
    try {
      return await QmpClient.run(this.files.qmp, cmd, args, 10000);
    } catch (e) {
      throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU ${cmd} failed for ${this.id}: ${(e as Error).message}`, { cause: e });
    }
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
    return { binary: this.binary, args: buildQemuArgs(spec, { accel, sandbox: this.sandbox, runAs: this.runAs, tbSizeMiB: this.tbSizeMiB }), accel };
  }

  async launch(spec: LaunchSpec): Promise<VmmInstance> {
    const f = qemuFiles(spec.vmDir);
    for (const p of [f.qmp, f.consoleSock, f.pid]) rmSync(p, { force: true });
    const { binary, args, accel } = await this.commandFor(spec);
    // Restore: an incompatible snapshot is refused before anything starts.
    if (spec.restoreFrom) checkRestoreCompatible(spec.restoreFrom, { qemuVersion: (this.version ??= await qemuVersion(this.binary)), args });
    const log = openSync(f.vmmLog, 'a');
    // The wrapper joins the VM's cgroups before exec, so QEMU never allocates outside them.
    const wrapper = 'for f in $MVM_CGROUP_PROCS; do echo $$ > "$f" || { echo "cannot join cgroup $f" >&2; exit 125; }; done; exec "$@"';
    const argv = ['/bin/sh', '-c', wrapper, 'mvm-vmm', binary, ...args];
    // Taps live in the VM's network namespace: nsenter switches only the netns and execs (same pid).
    const full = spec.netnsPath ? wrapInNetns(spec.netnsPath, argv) : argv;
    const child = spawn(full[0]!, full.slice(1), {
      detached: true,
      stdio: ['ignore', log, log],
      cwd: spec.vmDir,
      env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', MVM_CGROUP_PROCS: spec.cgroupProcs.join(' ') },
    });
    closeSync(log);
    const pid = child.pid;
    if (pid === undefined) {
      throw new MvmError(ErrorCodes.VMM_ERROR, `cannot start ${binary}: spawn failed`);
    }
    const exited = new Promise<VmmExit>((resolve) => {
      child.on('exit', (code, signal) => resolve(describeExit(pid, code, signal)));
      child.on('error', (e) => resolve({ code: null, signal: null, reason: `cannot start VMM: ${e.message}` }));
    });
    child.unref();
    const rec: LaunchRecord = { id: spec.id, pid, accel, args: [binary, ...args], startedAt: new Date().toISOString() };
    writeFileSync(f.launch, JSON.stringify(rec, null, 2));
    const inst = new QemuInstance(spec.id, pid, accel, spec.vmDir, { binary, args, accel }, exited);
    // Wait for QMP: proves QEMU parsed its command line and created the machine.
    const deadline = Date.now() + 15000;
    let exitInfo: VmmExit | undefined;
    void exited.then((e) => (exitInfo = e));
    for (;;) {
      if (exitInfo) {
        const tail = safeTail(f.vmmLog, 2000);
        throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU exited during start-up: ${exitInfo.reason}${tail ? `: ${tail}` : ''}`, { details: { step: 'vmm-start' } });
      }
      if (existsSync(f.qmp)) {
        try {
          const c = await QmpClient.connect(f.qmp, 2000);
          try {
            await c.execute('query-status');
          } finally {
            c.close();
          }
          break;
        } catch (e) {
          if (Date.now() > deadline) {
            await inst.kill();
            throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU QMP did not come up: ${(e as Error).message}`, { details: { step: 'vmm-start' } });
          }
        }
      }
      if (Date.now() > deadline) {
        await inst.kill();
        throw new MvmError(ErrorCodes.VMM_ERROR, 'QEMU did not create its QMP socket within 15 s', { details: { step: 'vmm-start' } });
      }
      await sleep(20);
    }
    if (spec.restoreFrom) {
      // Our process serves the snapshot file on a one-shot socket; QEMU (-incoming defer) loads it, then `cont`.
      try {
        await restoreIncoming({ id: spec.id, qmpPath: f.qmp, args, snapshot: spec.restoreFrom, alive: () => !exitInfo && pidAlive(pid) });
      } catch (e) {
        await inst.kill();
        const tail = safeTail(f.vmmLog, 1000);
        throw new MvmError(e instanceof MvmError ? e.code : ErrorCodes.VMM_ERROR, `QEMU restore of ${spec.id} failed: ${(e as Error).message}${tail ? `: ${tail}` : ''}`, { details: { step: 'restore' }, cause: e });
      }
    }
    return inst;
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
  async prepareRestoreDisk(snapshotDir: string, vmDir: string): Promise<DriveSpec> {
    const owner = this.runAs ? passwdIds(this.runAs) : undefined;
    const drives = await prepareRestoreDrives(snapshotDir, vmDir, owner ? { owner } : {});
    const root = drives.find((d) => d.root) ?? drives[0];
    if (!root) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot in ${snapshotDir} has no drives`);
    return root;
  }

  snapshotFiles(snapshotDir: string): SnapshotFiles {
    const rec = readSnapshotRecord(snapshotDir);
    return { dir: snapshotDir, memoryFile: join(snapshotDir, rec.stateFile), stateFile: join(snapshotDir, SNAPSHOT_RECORD_FILE) };
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

function safeTail(path: string, n: number): string {
  try {
    const s = readFileSync(path, 'utf8');
    return s.slice(-n).trim();
  } catch {
    return '';
  }
}
