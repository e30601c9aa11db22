/**
 * The start of a Firecracker process as named steps (src/core/steps.ts). Two pipelines:
 *
 *  plan:   validate → restore-check (restores) → plan-calls
 *  launch: prepare → jail | direct → spawn → api-socket → one step per API call
 *
 * The API calls of a cold boot (machine config, boot source, drives, NICs, vsock, ..., InstanceStart)
 * and of a restore (`PUT /snapshot/load` with its overrides) are the last steps, each named by its
 * call (`PUT /drives/root`), so a refused call names itself. A restore swaps the calls, nothing
 * else. On a failure every completed step is undone: the process killed, the FIFOs, sockets and
 * the jail (chroot, uid lease, cgroups) removed.
 */
import { closeSync, constants, existsSync, mkdirSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { ErrorCodes, MvmError, asMvmError } from '../../core/errors.js';
import type { LaunchSpec, VmmExit } from '../../core/ports/vmm.js';
import { runSteps, type Step } from '../../core/steps.js';
import { sleep } from '../proc.js';
import { killPid, safeTail, spawnVmm, type SpawnFn } from '../spawn.js';
import { FirecrackerApiClient, callLabel, type ApiCall } from './api-client.js';
import {
  MAX_SOCKET_PATH,
  buildBootCalls,
  buildRestoreCalls,
  driveIdMap,
  fcFiles,
  fcResourceId,
  loggingArgs,
  pruneRestoreOverrides,
  validateForFirecracker,
  type FcConfigExtras,
  type FcSnapshotMeta,
} from './config.js';
import { FirecrackerInstance, cleanupAfter, type FcLaunchRecord, type JailRecord } from './instance.js';
import {
  JAIL_API_SOCK,
  allocateUid,
  buildJailerArgs,
  cgroupSettings,
  cleanupJail,
  execFileName,
  jailCalls,
  jailCgroupDirs,
  jailHostPath,
  jailPaths,
  jailSinks,
  nodeJailFs,
  prepareChroot,
  type JailerConfig,
} from './jailer.js';
import { MetricsSink, drainLogFifo, type FifoReader } from './metrics.js';
import { checkRestoreCompatible, drivePathSeen, hostCpuModel, relativizeDrives } from './snapshot.js';

/** The guest's vsock context id (each VM has its own vsock device; the host side is a Unix socket). */
export const GUEST_CID = 3;

/** What the launch needs from the driver. */
export interface FcLauncher {
  /** The resolved firecracker binary, or undefined. */
  binary(): string | undefined;
  /** The binary's name as configured (for messages). */
  readonly binaryName: string;
  jailerConfig(): JailerConfig | undefined;
  version(bin: string): Promise<string>;
  /** Why a version cannot be used (undefined when it can). */
  versionRefusal(version: string, bin: string): string | undefined;
  extras?: (spec: LaunchSpec) => FcConfigExtras;
  netnsFor?: (spec: LaunchSpec) => string | undefined;
  /** Is a jailed Firecracker of this VM still running? (a stale jail may be removed, a live one never) */
  liveJailed(id: string): Promise<boolean>;
  spawn: SpawnFn;
  env?: Record<string, string>;
  apiTimeoutMs: number;
  startTimeoutMs: number;
}

/** The state one launch builds up, step by step. */
export interface FcLaunch {
  readonly spec: LaunchSpec;
  readonly files: ReturnType<typeof fcFiles>;
  extras: FcConfigExtras;
  bin: string;
  jcfg: JailerConfig | undefined;
  hostFiles: { logFifo: string; metricsFifo: string; vsockUds?: string };
  meta?: FcSnapshotMeta;
  calls: ApiCall[];
  netns?: string;
  driveFiles: NonNullable<FcLaunchRecord['driveFiles']>;
  // where the process sees things (jail paths when jailed)
  apiSock: string;
  apiSockArg: string;
  logFifo: string;
  metricsFifo: string;
  vsockUds?: string;
  command: string;
  args: string[];
  jail?: JailRecord;
  pid?: number;
  exitInfo?: () => VmmExit | undefined;
  rec?: FcLaunchRecord;
  sinks: { metrics?: MetricsSink; log?: FifoReader };
  inst?: FirecrackerInstance;
}

function planSteps(l: FcLauncher): Array<Step<FcLaunch>> {
  return [
    {
      name: 'validate',
      run: async (c) => {
        c.extras = l.extras?.(c.spec) ?? {};
        validateForFirecracker(c.spec, c.extras);
        const bin = l.binary();
        if (!bin) throw new MvmError(ErrorCodes.VMM_ERROR, `no firecracker binary: ${l.binaryName} not found`);
        c.bin = bin;
        const old = l.versionRefusal(await l.version(bin), bin);
        if (old) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, old);
        c.jcfg = l.jailerConfig();
      },
    },
    {
      // Refuse an incompatible restore before anything is started.
      name: 'restore-check',
      when: (c) => c.spec.restoreFrom !== undefined,
      run: async (c) => {
        c.meta = checkRestoreCompatible(c.spec.restoreFrom!, c.spec, { vmmVersion: await l.version(c.bin), cpuModel: hostCpuModel(), jailed: c.jcfg !== undefined });
      },
    },
    {
      name: 'plan-calls',
      run: (c) => {
        const { spec } = c;
        // The guest agent's channel is a vsock device; a restore has one exactly when its snapshot had.
        const agent = spec.restoreFrom ? c.meta?.vsockUds !== undefined : spec.guestAgent === true;
        if (agent && !c.extras.vsock) c.extras = { ...c.extras, vsock: { guestCid: GUEST_CID } };
        if (!agent && spec.restoreFrom && c.extras.vsock) {
          const { vsock: _v, ...rest } = c.extras;
          c.extras = rest;
        }
        c.hostFiles = { logFifo: c.files.logFifo, metricsFifo: c.files.metricsFifo, ...(c.extras.vsock ? { vsockUds: c.files.vsockUds } : {}) };
        c.calls = spec.restoreFrom ? buildRestoreCalls(spec, c.hostFiles, spec.restoreFrom, c.extras) : buildBootCalls(spec, c.hostFiles, c.extras);
        const netns = l.netnsFor?.(spec) ?? spec.netnsPath ?? c.jcfg?.netns;
        if (netns) c.netns = netns;
        c.driveFiles = spec.drives.map((d) => ({
          drive_id: fcResourceId(d.id),
          id: d.id,
          path_on_host: drivePathSeen(d, spec.vmDir, c.jcfg !== undefined),
          hostPath: resolve(d.path),
          readOnly: d.readOnly,
          root: d.root,
        }));
      },
    },
  ];
}

const launchSteps = (l: FcLauncher): Array<Step<FcLaunch>> => [
  {
    name: 'prepare',
    run: (c) => {
      const f = c.files;
      mkdirSync(c.spec.vmDir, { recursive: true });
      for (const p of [f.apiSock, f.logFifo, f.metricsFifo, f.vsockUds, f.metricsTotals, f.consoleIn]) rmSync(p, { force: true });
      // The guest serial console's input: a FIFO the VMM holds open read-write as its stdin (it never sees EOF).
      nodeJailFs.mkfifo(f.consoleIn);
      c.apiSock = c.apiSockArg = f.apiSock;
      c.logFifo = f.logFifo;
      c.metricsFifo = f.metricsFifo;
      if (c.extras.vsock) c.vsockUds = f.vsockUds;
    },
    undo: (c) => {
      const f = c.files;
      for (const p of [f.apiSock, f.logFifo, f.metricsFifo, f.vsockUds, f.consoleIn]) rmSync(p, { force: true });
    },
  },
  {
    name: 'jail',
    when: (c) => c.jcfg !== undefined,
    run: async (c) => {
      const jcfg = c.jcfg!;
      const { spec } = c;
      const execName = execFileName(jcfg.firecrackerBinary);
      const jp = jailPaths(jcfg.chrootBaseDir, execName, spec.id);
      // A jail left by a dead process of this VM is stale; never touch a live one.
      if (existsSync(jp.jailDir)) {
        if (await l.liveJailed(spec.id)) throw new MvmError(ErrorCodes.CONFLICT, `a jailed Firecracker of ${spec.id} is still running`, { details: { jailDir: jp.jailDir } });
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
      c.jail = { jailDir: jp.jailDir, chrootDir: jp.chrootDir, leaseDir: jp.leaseDir, uid, gid: uid, cgroupDirs: jailCgroupDirs(jcfg, spec.id, settings) };
      writeFileSync(jp.meta, JSON.stringify({ id: spec.id, vmDir: spec.vmDir, uid, gid: uid }, null, 2));
      const jailed = jailCalls(c.calls);
      c.calls = jailed.calls;
      // A restore reopens the drives at their jail paths: link them in too.
      const restoreDrives = spec.restoreFrom ? jailCalls(buildBootCalls(spec, c.hostFiles, c.extras)).files.filter((x) => x.jail.startsWith('/drives/')) : [];
      // The logger and metrics FIFOs, named on Firecracker's command line by their jail paths.
      const { sinks, files: fifos } = jailSinks(c.files);
      prepareChroot(jp.chrootDir, [...fifos, ...jailed.files, ...restoreDrives], uid, uid, nodeJailFs);
      c.apiSock = jp.apiSock;
      c.apiSockArg = JAIL_API_SOCK;
      c.logFifo = jailHostPath(jp.chrootDir, sinks.logFifo);
      c.metricsFifo = jailHostPath(jp.chrootDir, sinks.metricsFifo);
      if (c.vsockUds) c.vsockUds = jailHostPath(jp.chrootDir, '/vsock.sock');
      c.command = jcfg.jailerBinary;
      c.args = buildJailerArgs({
        id: spec.id,
        uid,
        gid: uid,
        execFile: jcfg.firecrackerBinary,
        chrootBaseDir: resolve(jcfg.chrootBaseDir),
        cgroupVersion: jcfg.cgroupVersion,
        cgroups: settings,
        parentCgroup: jcfg.parentCgroup,
        ...(c.netns ? { netns: c.netns } : {}),
        ...(jcfg.resourceLimits ? { resourceLimits: jcfg.resourceLimits } : {}),
        firecrackerArgs: loggingArgs(sinks, c.extras),
      });
    },
    undo: async (c) => {
      if (c.jail) await cleanupJail({ jailDir: c.jail.jailDir, leaseDir: c.jail.leaseDir, id: c.spec.id, cgroupDirs: c.jail.cgroupDirs });
    },
  },
  {
    name: 'direct',
    when: (c) => c.jcfg === undefined,
    run: (c) => {
      for (const p of [c.files.logFifo, c.files.metricsFifo]) nodeJailFs.mkfifo(p);
      // The VM's own disks by paths relative to the VM directory (Firecracker's cwd): a clone's
      // Firecracker reopens the same relative paths from the snapshot, i.e. its own disks.
      c.calls = relativizeDrives(c.calls, c.spec.vmDir);
      c.command = c.bin;
      c.args = ['--api-sock', c.files.apiSock, '--id', c.spec.id, ...loggingArgs(c.files, c.extras)];
    },
  },
  {
    name: 'spawn',
    run: (c) => {
      const { spec, files: f } = c;
      if (Buffer.byteLength(c.apiSock) > MAX_SOCKET_PATH) {
        throw new MvmError(ErrorCodes.VALIDATION_FAILED, `API socket path ${c.apiSock} is longer than ${MAX_SOCKET_PATH} bytes; use a shorter data directory`);
      }
      c.calls = pruneRestoreOverrides(c.calls, c.meta);
      const consoleFd = openSync(f.consoleLog, 'a');
      const err = openSync(f.vmmLog, 'a');
      const stdin = openSync(f.consoleIn, constants.O_RDWR);
      let proc;
      try {
        proc = spawnVmm({
          command: c.command,
          args: c.args,
          cwd: spec.vmDir,
          cgroupProcs: spec.cgroupProcs,
          // Un-jailed, the taps' netns is entered by nsenter; the jailer takes --netns itself.
          ...(c.jcfg === undefined && c.netns ? { netnsPath: c.netns } : {}),
          stdio: [stdin, consoleFd, err],
          ...(l.env ? { env: l.env } : {}),
          spawn: l.spawn,
        });
      } finally {
        closeSync(consoleFd);
        closeSync(err);
        closeSync(stdin);
      }
      c.pid = proc.pid;
      c.exitInfo = proc.exitInfo;
      c.rec = {
        driver: 'firecracker',
        id: spec.id,
        pid: proc.pid,
        startedAt: new Date().toISOString(),
        mode: spec.restoreFrom ? 'restore' : 'boot',
        binary: c.command,
        args: c.args,
        apiSock: c.apiSock,
        apiSockArg: c.apiSockArg,
        logFifo: c.logFifo,
        metricsFifo: c.metricsFifo,
        ...(c.vsockUds ? { vsockUds: c.vsockUds } : {}),
        calls: c.calls,
        drives: driveIdMap(spec),
        vcpu: spec.vcpu,
        memoryMiB: spec.memoryMiB,
        ...(c.jail ? { jail: c.jail } : {}),
        kernelPath: resolve(spec.kernelPath),
        vmDir: resolve(spec.vmDir),
        driveFiles: c.driveFiles,
        consoleIn: f.consoleIn,
        ...(c.netns ? { netns: c.netns } : {}),
        ...(c.meta ? { restoredNics: restoredNics(c.meta, spec) } : {}),
      };
      writeFileSync(f.launch, JSON.stringify(c.rec, null, 2));
      c.sinks.log = drainLogFifo(c.logFifo, f.fcLog);
      c.sinks.metrics = new MetricsSink(c.metricsFifo, f.metricsTotals).start();
      c.inst = new FirecrackerInstance(c.rec, spec.vmDir, proc.exited, c.sinks, { booted: false, apiTimeoutMs: l.apiTimeoutMs });
    },
    undo: async (c) => {
      if (c.inst) await c.inst.kill().catch(() => undefined);
      else if (c.pid) killPid(c.pid);
      c.sinks.metrics?.close();
      c.sinks.log?.close();
      if (c.rec) await cleanupAfter(c.rec).catch(() => undefined);
    },
  },
  {
    name: 'api-socket',
    run: (c) => waitForApi(c.apiSock, () => c.exitInfo?.(), c.files.vmmLog, l.startTimeoutMs),
  },
];

/**
 * One step per API call, named by the call (`PUT /drives/root`). Built from the planned calls;
 * each runs the call as it stands when reached (jailing and pruning rewrite bodies, never the
 * number, order or labels of the calls).
 */
const callSteps = (planned: ApiCall[]): Array<Step<FcLaunch>> =>
  planned.map((call, i) => ({
    name: callLabel(call),
    run: async (c: FcLaunch) => {
      const exit = c.exitInfo?.();
      if (exit) throw new MvmError(ErrorCodes.VMM_ERROR, `Firecracker exited: ${exit.reason}`);
      await c.inst!.api.call(c.calls[i]!);
    },
  }));

/** Start Firecracker for `spec`: plan, then launch; a failure names its step and leaves nothing behind. */
export async function launchFirecracker(l: FcLauncher, spec: LaunchSpec): Promise<FirecrackerInstance> {
  const c = { spec, files: fcFiles(spec.vmDir), sinks: {} } as FcLaunch;
  const pipeline = `Firecracker start of ${spec.id}`;
  try {
    await runSteps(pipeline, planSteps(l), c);
    // The calls are known once planned: they become the launch's last steps.
    await runSteps(pipeline, [...launchSteps(l), ...callSteps(c.calls)], c);
    return c.inst!;
  } catch (e) {
    const err = asMvmError(e, ErrorCodes.VMM_ERROR);
    const step = typeof err.details.step === 'string' ? err.details.step : 'unknown';
    // A VMM that said nothing through the API may have said why on stderr.
    const tail = err.code === ErrorCodes.VMM_ERROR && !err.details.faultMessage && step !== 'api-socket' ? safeTail(c.files.vmmLog, 500) : '';
    throw new MvmError(err.code, `${err.message}${tail ? ` (vmm.log: ${tail})` : ''}`, { details: { ...err.details, step }, violations: err.violations, cause: e });
  }
}

async function waitForApi(apiSock: string, exited: () => VmmExit | undefined, vmmLog: string, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
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
      throw new MvmError(ErrorCodes.TIMEOUT, `Firecracker API socket ${apiSock} did not answer within ${timeoutMs} ms${last ? ` (${last})` : ''}`);
    }
    await sleep(10);
  }
}

/** The snapshot's interfaces with this restore's taps. */
function restoredNics(meta: FcSnapshotMeta, spec: LaunchSpec): FcSnapshotMeta['nics'] {
  return meta.nics.map((n) => ({ ...n, host_dev_name: spec.nics.find((x) => fcResourceId(x.id) === n.iface_id)?.tap ?? n.host_dev_name }));
}
