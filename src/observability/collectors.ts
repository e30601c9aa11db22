/**
 * Readers of per-VM figures that the kernel keeps for us: network counters of
 * the VM's tap devices (from the VMM's own network namespace) and the VM's
 * cgroup (v1/hybrid or v2, under our `mvm/` parent). Pure functions over a
 * root path, so tests can point them at a fixture tree.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

export interface NetCounters {
  device: string;
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
}

/**
 * Parse /proc/<pid>/net/dev. The VMM runs inside the VM's network namespace
 * (ADR 6), so this file lists exactly that namespace's devices, taps included,
 * without entering the namespace. `taps` selects the VM's tap devices; a VM
 * without a tap has no network figures (the VMM may run in the host namespace,
 * whose devices are not the VM's).
 *
 * Counters are returned from the guest's point of view: what the host's tap
 * receives, the guest transmitted (and vice versa).
 */
export function parseNetDev(text: string, taps: string[]): NetCounters[] {
  if (taps.length === 0) return [];
  const want = new Set(taps);
  const out: NetCounters[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*([^:\s]+):\s*(.*)$/.exec(line);
    if (!m || !want.has(m[1]!)) continue;
    const f = m[2]!.trim().split(/\s+/).map(Number);
    // receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets ...
    if (f.length < 16 || f.some((n) => !Number.isFinite(n))) continue;
    out.push({ device: m[1]!, rxBytes: f[8]!, rxPackets: f[9]!, txBytes: f[0]!, txPackets: f[1]! });
  }
  return out.sort((a, b) => a.device.localeCompare(b.device));
}

/** Network counters of a VMM's tap devices (guest's point of view); [] when none can be read. */
export function vmNetCounters(pid: number | undefined, taps: string[], procRoot = '/proc'): NetCounters[] {
  if (!pid || taps.length === 0) return [];
  try {
    return parseNetDev(readFileSync(join(procRoot, String(pid), 'net', 'dev'), 'utf8'), taps);
  } catch {
    return [];
  }
}

export interface CgroupFigures {
  /** CPU time charged to the VM's cgroup (v2 cpu.stat usage_usec, v1 cpuacct.usage). */
  cpuSeconds?: number;
  /** Memory charged to the VM's cgroup (v2 memory.current, v1 memory.usage_in_bytes). */
  memoryBytes?: number;
  /** Memory limit of the cgroup. */
  memoryLimitBytes?: number;
  pids?: number;
}

function readNum(path: string): number | undefined {
  try {
    const s = readFileSync(path, 'utf8').trim();
    if (s === 'max') return undefined;
    const n = Number(s);
    return Number.isFinite(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

function readKeyed(path: string, key: string): number | undefined {
  try {
    const m = new RegExp(`^${key}\\s+(\\d+)$`, 'm').exec(readFileSync(path, 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** What the VM's cgroup says, on v2 or v1/hybrid hosts; fields the host does not have are absent. */
export function cgroupFigures(id: string, root = '/sys/fs/cgroup', parent = 'mvm'): CgroupFigures {
  const out: CgroupFigures = {};
  const v2 = join(root, parent, id);
  const usec = readKeyed(join(v2, 'cpu.stat'), 'usage_usec');
  if (usec !== undefined) {
    out.cpuSeconds = usec / 1e6;
    const mem = readNum(join(v2, 'memory.current'));
    if (mem !== undefined) out.memoryBytes = mem;
    const lim = readNum(join(v2, 'memory.max'));
    if (lim !== undefined) out.memoryLimitBytes = lim;
    const pids = readNum(join(v2, 'pids.current'));
    if (pids !== undefined) out.pids = pids;
    return out;
  }
  // v1: cpuacct may be co-mounted with cpu (cpu,cpuacct) or on its own.
  for (const c of ['cpuacct', 'cpu', 'cpu,cpuacct']) {
    const ns = readNum(join(root, c, parent, id, 'cpuacct.usage'));
    if (ns !== undefined) {
      out.cpuSeconds = ns / 1e9;
      break;
    }
  }
  const mem = readNum(join(root, 'memory', parent, id, 'memory.usage_in_bytes'));
  if (mem !== undefined) out.memoryBytes = mem;
  const lim = readNum(join(root, 'memory', parent, id, 'memory.limit_in_bytes'));
  if (lim !== undefined && lim < 2 ** 60) out.memoryLimitBytes = lim;
  const pids = readNum(join(root, 'pids', parent, id, 'pids.current'));
  if (pids !== undefined) out.pids = pids;
  return out;
}
