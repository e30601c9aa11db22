/**
 * The host's register of running instances (ADR 0027): before a service or node agent creates
 * anything host-global, it claims its instance name, bridge and subnet here, under a host-wide lock.
 *
 * - `/run/mvm/instances/<instance>.json` (tmpfs: gone after a reboot, like the processes it
 *   names) holds the claimant's pid (with its start time, so a reused pid is not mistaken for it),
 *   data dir, host network namespace, bridge and subnet. A claim whose process is gone is void.
 * - `<dataDir>/instance.json` binds a data dir to its instance and keeps the subnet picked for it,
 *   so the instance's VMs keep their addresses across restarts.
 *
 * Refused, with an error naming the setting to change: an instance name already claimed by a live
 * process for another data dir (MVM_INSTANCE), a data dir bound to another instance
 * (MVM_INSTANCE / MVM_DATA_DIR), and, within one network namespace, a bridge another live
 * instance uses (MVM_NET_BRIDGE) or a subnet overlapping another live instance's or any address or
 * route already there (MVM_NET_SUBNET). Without MVM_NET_SUBNET, the first /20 of the pool that
 * is free by those rules is taken, starting from the one the name hashes to.
 */
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, rmdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes, MvmError } from '../core/errors.js';
import { firstHost, subnetCandidates } from '../instance.js';
import { pidAlive, procUsage } from '../vmm/proc.js';
import { run } from './exec.js';
import { cidrsOverlap, parseCidr } from './ipv4.js';

export const CLAIM_DIR = '/run/mvm/instances';
const LOCK_STALE_MS = 30_000;

export interface InstanceClaim {
  instance: string;
  pid: number;
  /** Start time of the pid (clock ticks since boot), to tell a reused pid from the claimant. */
  pidStart?: number;
  dataDir: string;
  /** '' = the host's own network namespace. */
  hostNetns: string;
  bridge?: string;
  subnet?: string;
  startedAt: string;
}

export interface ClaimOptions {
  instance: string;
  dataDir: string;
  hostNetns?: string;
  /** Network objects to claim (absent with MVM_NETWORK=none). */
  network?: {
    bridge: string;
    /** MVM_NET_SUBNET, or undefined: take the recorded one or pick from the pool. */
    subnet?: string;
    gateway?: string;
  };
  /** Register directory (tests use their own). */
  dir?: string;
  /** IPv4 networks already in use in the host namespace (default: `ip` addresses and routes, except those of our bridge). */
  usedNetworks?: (hostNetns: string | undefined, ownBridge: string) => Promise<UsedNetwork[]>;
}

export interface HeldClaim {
  claim: InstanceClaim;
  /** The subnet and gateway to use (given, recorded or picked). */
  subnet?: string;
  gateway?: string;
  /** Drop the claim (a clean stop). */
  release(): void;
}

const conflict = (field: string, message: string, details: Record<string, unknown> = {}): MvmError =>
  new MvmError(ErrorCodes.CONFLICT, `${field}: ${message}`, { violations: [{ field, message }], details });

function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(readFileSync(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

function writeJson(file: string, value: unknown): void {
  writeFileSync(`${file}.tmp`, JSON.stringify(value, null, 2) + '\n');
  renameSync(`${file}.tmp`, file);
}

/** Whether the claim's process still runs (same pid, same start time). */
export function claimLive(c: InstanceClaim): boolean {
  if (!pidAlive(c.pid)) return false;
  return c.pidStart === undefined || procUsage(c.pid)?.startTicks === c.pidStart;
}

/** Every live claim of the register. */
export function liveClaims(dir = CLAIM_DIR): InstanceClaim[] {
  if (!existsSync(dir)) return [];
  return readdirSync(dir)
    .filter((f) => f.endsWith('.json'))
    .map((f) => readJson<InstanceClaim>(join(dir, f)))
    .filter((c): c is InstanceClaim => !!c && typeof c.instance === 'string' && claimLive(c));
}

/** A host-wide lock: a directory made atomically, taken over when older than 30 s (a crashed holder). */
async function withLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  mkdirSync(dir, { recursive: true });
  const lock = join(dir, '.lock');
  const deadline = Date.now() + 2 * LOCK_STALE_MS;
  for (;;) {
    try {
      mkdirSync(lock);
      break;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      try {
        if (Date.now() - statSync(lock).mtimeMs > LOCK_STALE_MS) rmdirSync(lock);
      } catch {
        /* taken or released meanwhile */
      }
      if (Date.now() > deadline) throw new MvmError(ErrorCodes.UNAVAILABLE, `cannot take the instance register lock ${lock}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  try {
    return await fn();
  } finally {
    rmSync(lock, { recursive: true, force: true });
  }
}

/**
 * A network in use in a namespace: an interface's address (any overlap collides), or a route
 * (only one at least as specific as ours collides: a broader one, e.g. a VPN's 10.0.0.0/8, loses
 * to the bridge's more specific route).
 */
export interface UsedNetwork {
  cidr: string;
  kind: 'address' | 'route';
}

/** IPv4 networks of the addresses and (non-default) routes of a namespace, except those on `ownBridge`. */
export async function usedNetworks(hostNetns: string | undefined, ownBridge: string): Promise<UsedNetwork[]> {
  const o = hostNetns ? { netns: hostNetns } : {};
  const out: UsedNetwork[] = [];
  if (hostNetns && !existsSync(join('/var/run/netns', hostNetns))) return out;
  const addrs = await run('ip', ['-j', '-4', 'addr', 'show'], o);
  if (addrs.code === 0) {
    for (const l of JSON.parse(addrs.stdout || '[]') as Array<{ ifname: string; addr_info?: Array<{ local: string; prefixlen: number }> }>) {
      if (l.ifname === ownBridge || l.ifname === 'lo') continue;
      for (const a of l.addr_info ?? []) out.push({ cidr: `${a.local}/${a.prefixlen}`, kind: 'address' });
    }
  }
  const routes = await run('ip', ['-j', '-4', 'route', 'show'], o);
  if (routes.code === 0) {
    for (const r of JSON.parse(routes.stdout || '[]') as Array<{ dst: string; dev?: string }>) {
      if (r.dst === 'default' || r.dev === ownBridge) continue;
      out.push({ cidr: r.dst.includes('/') ? r.dst : `${r.dst}/32`, kind: 'route' });
    }
  }
  return out;
}

interface DataDirRecord {
  instance: string;
  subnet?: string;
  gateway?: string;
}

/**
 * Claim the instance for this process (throws a CONFLICT naming the setting on a collision).
 * Idempotent for the same process, instance and data dir.
 */
export async function claimInstance(o: ClaimOptions): Promise<HeldClaim> {
  const dir = o.dir ?? CLAIM_DIR;
  const hostNetns = o.hostNetns ?? '';
  const recordFile = join(o.dataDir, 'instance.json');
  return withLock(dir, async () => {
    const rec = readJson<DataDirRecord>(recordFile);
    if (rec && rec.instance !== o.instance) {
      throw conflict('MVM_INSTANCE', `data dir ${o.dataDir} belongs to instance ${rec.instance} (${recordFile}), not ${o.instance}: set MVM_INSTANCE=${rec.instance} or use another MVM_DATA_DIR`, {
        dataDir: o.dataDir,
        instance: rec.instance,
      });
    }
    const others = liveClaims(dir).filter((c) => !(c.pid === process.pid && c.instance === o.instance));
    const same = others.find((c) => c.instance === o.instance);
    if (same) {
      throw conflict('MVM_INSTANCE', `instance ${o.instance} is already running (pid ${same.pid}, data dir ${same.dataDir}); give this one another MVM_INSTANCE`, { pid: same.pid, dataDir: same.dataDir });
    }
    const sameDir = others.find((c) => c.dataDir === o.dataDir);
    if (sameDir) {
      throw conflict('MVM_DATA_DIR', `data dir ${o.dataDir} is in use by instance ${sameDir.instance} (pid ${sameDir.pid})`, { pid: sameDir.pid, instance: sameDir.instance });
    }
    let subnet: string | undefined;
    let gateway: string | undefined;
    if (o.network) {
      const net = o.network;
      const neighbours = others.filter((c) => c.hostNetns === hostNetns);
      const nsText = hostNetns ? `network namespace ${hostNetns}` : "the host's network namespace";
      const clash = neighbours.find((c) => c.bridge === net.bridge);
      if (clash) throw conflict('MVM_NET_BRIDGE', `bridge ${net.bridge} in ${nsText} belongs to instance ${clash.instance} (pid ${clash.pid})`, { instance: clash.instance });
      const used = [
        ...neighbours.filter((c) => c.subnet).map((c) => ({ cidr: parseCidr(c.subnet!)!, route: false, by: `instance ${c.instance} (pid ${c.pid})` })),
        ...(await (o.usedNetworks ?? usedNetworks)(o.hostNetns, net.bridge)).flatMap((u) => {
          const c = parseCidr(u.cidr);
          return c ? [{ cidr: c, route: u.kind === 'route', by: `the ${u.kind} ${u.cidr} there` }] : [];
        }),
      ];
      const overlap = (s: string): string | undefined => {
        const c = parseCidr(s)!;
        return used.find((u) => cidrsOverlap(u.cidr, c) && !(u.route && u.cidr.prefix < c.prefix))?.by;
      };
      if (net.subnet !== undefined || rec?.subnet !== undefined) {
        subnet = net.subnet ?? rec!.subnet!;
        const by = overlap(subnet);
        if (by) {
          const whence = net.subnet !== undefined ? '' : ` (recorded for instance ${o.instance} in ${recordFile})`;
          throw conflict('MVM_NET_SUBNET', `subnet ${subnet}${whence} overlaps ${by} in ${nsText}; set MVM_NET_SUBNET to a free network`, { subnet });
        }
        gateway = net.gateway ?? (net.subnet === undefined ? rec?.gateway : undefined) ?? firstHost(subnet);
      } else {
        subnet = subnetCandidates(o.instance).find((s) => !overlap(s));
        if (!subnet) throw conflict('MVM_NET_SUBNET', `no free /20 left in the pool for instance ${o.instance} in ${nsText}; set MVM_NET_SUBNET`);
        gateway = firstHost(subnet);
      }
    }
    mkdirSync(o.dataDir, { recursive: true });
    const keep = o.network && o.network.subnet === undefined && subnet ? { subnet, gateway } : rec?.subnet ? { subnet: rec.subnet, gateway: rec.gateway } : {};
    writeJson(recordFile, { instance: o.instance, ...keep });
    const claim: InstanceClaim = {
      instance: o.instance,
      pid: process.pid,
      ...(procUsage(process.pid) ? { pidStart: procUsage(process.pid)!.startTicks } : {}),
      dataDir: o.dataDir,
      hostNetns,
      ...(o.network ? { bridge: o.network.bridge } : {}),
      ...(subnet ? { subnet } : {}),
      startedAt: new Date().toISOString(),
    };
    const file = join(dir, `${o.instance}.json`);
    writeJson(file, claim);
    return {
      claim,
      ...(subnet ? { subnet, gateway: gateway! } : {}),
      release() {
        const now = readJson<InstanceClaim>(file);
        if (now && now.pid === claim.pid && now.dataDir === claim.dataDir) rmSync(file, { force: true });
      },
    };
  });
}
