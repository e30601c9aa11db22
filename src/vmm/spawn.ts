/**
 * How both drivers start a VMM process: detached from the service (own session, so a crash of the
 * service does not take guests with it), inside the VM's cgroups before it allocates guest memory
 * (a shell wrapper joins them, then execs), in the VM's network namespace when it has one
 * (nsenter switches only the netns, then execs: the pid stays the VMM's), with a minimal
 * environment. Also the small helpers both drivers use around the process.
 */
import { spawn as nodeSpawn, type ChildProcess, type SpawnOptions, type StdioOptions } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { VmmExit } from '../core/ports/vmm.js';
import { wrapInNetns } from '../core/ports/network.js';
import { describeExit } from './proc.js';

export type SpawnFn = (command: string, args: readonly string[], options: SpawnOptions) => ChildProcess;

/** Joins every cgroup.procs file in $MVM_CGROUP_PROCS, then execs the VMM (exit 125 when a join fails). */
export const CGROUP_JOIN_WRAPPER = 'for f in $MVM_CGROUP_PROCS; do echo $$ > "$f" || { echo "cannot join cgroup $f" >&2; exit 125; }; done; exec "$@"';

export interface VmmSpawnSpec {
  command: string;
  args: readonly string[];
  /** The VM directory (the VMM's working directory). */
  cwd: string;
  /** cgroup.procs files to join before exec. */
  cgroupProcs: readonly string[];
  /** Network namespace (path) to run in. */
  netnsPath?: string;
  stdio: StdioOptions;
  /** Extra environment (PATH and the cgroup list are always set). */
  env?: Record<string, string>;
  spawn?: SpawnFn;
}

export interface VmmProcess {
  pid: number;
  /** Resolves once the process is gone, with how it went. */
  exited: Promise<VmmExit>;
  /** The exit, once known (undefined while running). */
  exitInfo: () => VmmExit | undefined;
}

/** The full argv a VMM is started with: cgroup wrapper, then nsenter (when in a netns), then the VMM. */
export function vmmArgv(command: string, args: readonly string[], netnsPath?: string): string[] {
  const vmm = [command, ...args];
  return ['/bin/sh', '-c', CGROUP_JOIN_WRAPPER, 'mvm-vmm', ...(netnsPath ? wrapInNetns(netnsPath, vmm) : vmm)];
}

export function spawnVmm(s: VmmSpawnSpec): VmmProcess {
  const argv = vmmArgv(s.command, s.args, s.netnsPath);
  const child = (s.spawn ?? nodeSpawn)(argv[0]!, argv.slice(1), {
    detached: true,
    stdio: s.stdio,
    cwd: s.cwd,
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', ...(s.env ?? {}), MVM_CGROUP_PROCS: s.cgroupProcs.join(' ') },
  });
  const pid = child.pid;
  if (pid === undefined) {
    child.on('error', () => undefined);
    throw new MvmError(ErrorCodes.VMM_ERROR, `cannot start ${s.command}: spawn failed`);
  }
  let info: VmmExit | undefined;
  const exited = new Promise<VmmExit>((resolve) => {
    child.on('exit', (code, signal) => resolve((info = describeExit(pid, code, signal))));
    child.on('error', (e) => resolve((info = { code: null, signal: null, reason: `cannot start VMM: ${e.message}` })));
  });
  child.unref();
  return { pid, exited, exitInfo: () => info };
}

/** The last `n` characters of a log file, trimmed ('' when it cannot be read). */
export function safeTail(path: string, n: number): string {
  try {
    return readFileSync(path, 'utf8').slice(-n).trim();
  } catch {
    return '';
  }
}

/** `p`, or undefined once `ms` have passed. */
export function raceTimeout<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let t: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<undefined>((r) => (t = setTimeout(() => r(undefined), ms)))]).finally(() => clearTimeout(t));
}

/** SIGKILL a pid, ignoring a process that is already gone. */
export function killPid(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}
