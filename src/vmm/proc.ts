/** Small /proc helpers shared by the VMM drivers and the agent. */
import { readFileSync, readdirSync, existsSync } from 'node:fs';
import type { VmmExit } from '../core/ports/vmm.js';

const CLK_TCK = 100;

export function pidAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    // A zombie is not alive for our purposes.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0];
    return state !== 'Z' && state !== 'X';
  } catch {
    return false;
  }
}

export function readCmdline(pid: number): string[] | undefined {
  try {
    const raw = readFileSync(`/proc/${pid}/cmdline`);
    if (raw.length === 0) return undefined;
    return raw.toString('utf8').split('\0').filter((s, i, a) => i < a.length - 1 || s !== '');
  } catch {
    return undefined;
  }
}

/** CPU seconds (user + system) and RSS bytes of a process. */
export function procUsage(pid: number): { cpuSeconds: number; rssBytes: number; startTicks: number } | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // fields[0] is field 3 (state); utime is field 14, stime field 15, starttime field 22.
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    const startTicks = Number(fields[19]);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /VmRSS:\s+(\d+) kB/.exec(status);
    return { cpuSeconds: (utime + stime) / CLK_TCK, rssBytes: m ? Number(m[1]) * 1024 : 0, startTicks };
  } catch {
    return undefined;
  }
}

/** Every live pid on the machine. */
export function listPids(): number[] {
  if (!existsSync('/proc')) return [];
  return readdirSync('/proc')
    .filter((d) => /^\d+$/.test(d))
    .map(Number);
}

/** Resolves when the pid is gone, polling /proc (works for processes that are not our children). */
export function waitPidGone(pid: number, intervalMs = 250, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const tick = (): void => {
      if (signal?.aborted || !pidAlive(pid)) {
        resolve();
        return;
      }
      const t = setTimeout(tick, intervalMs);
      t.unref();
    };
    tick();
  });
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** uid/gid of a local user from /etc/passwd, or undefined when there is no such user. */
export function passwdIds(user: string): { uid: number; gid: number } | undefined {
  try {
    for (const l of readFileSync('/etc/passwd', 'utf8').split('\n')) {
      const f = l.split(':');
      if (f[0] === user && f.length > 3) return { uid: Number(f[2]), gid: Number(f[3]) };
    }
  } catch {
    /* no passwd */
  }
  return undefined;
}

/** How a VMM process ended, in words (shared by the drivers). */
export function describeExit(pid: number, code: number | null, signal: string | null): VmmExit {
  let reason: string;
  if (signal) reason = `VMM process ${pid} was killed by ${signal}`;
  else if (code === 0) reason = `VMM process ${pid} exited (guest powered off)`;
  else if (code === null) reason = `VMM process ${pid} is gone`;
  else reason = `VMM process ${pid} exited with code ${code}`;
  return { code, signal, reason };
}
