/**
 * Instance names (ADR 0027): several services and node agents run side by side on one host, each
 * with its own host-global objects. One short name, `MVM_INSTANCE`, names them all:
 *
 * | object | instance `mvm` (the default standalone) | instance `<n>` |
 * |---|---|---|
 * | data dir | `/var/lib/mvm` | `/var/lib/mvm-<n>` |
 * | nftables tables (inet, bridge, ip) | `mvm` | `mvm_<n>` |
 * | bridge | `fc-br0` | `mvm-<n>` |
 * | VM network namespaces | `mvm.<vm>` | `mvm-<n>.<vm>` |
 * | cgroup parent | `mvm` | `mvm-<n>` |
 * | subnet | `10.100.0.0/16` | a free /20 of `10.112.0.0/12` (src/network/instance-claim.ts) |
 *
 * Without `MVM_INSTANCE` the name follows from the data dir (`/var/lib/mvm` ↔ `mvm`,
 * `/var/lib/mvm-<n>` ↔ `<n>`, any other dir ↔ `d<6 hex of its path's hash>`), and without either
 * from the binary's role, so that a standalone service, a node agent and the API in cluster mode
 * started with no settings share nothing.
 */
import { createHash } from 'node:crypto';
import { resolve } from 'node:path';
import { ipToString, parseCidr } from './network/ipv4.js';

/** The default instance: the objects the service always had (table `mvm`, bridge `fc-br0`, 10.100.0.0/16). */
export const DEFAULT_INSTANCE = 'mvm';
export const DEFAULT_DATA_DIR = '/var/lib/mvm';
/** 1–11 characters of [a-z0-9-], a letter or digit at both ends: `mvm-<n>` stays a Linux interface name (≤ 15). */
export const INSTANCE_PATTERN = /^[a-z0-9]([a-z0-9-]{0,9}[a-z0-9])?$/;
/** Subnets of instances other than `mvm` come from this pool, one /20 (4094 addresses) each. */
export const SUBNET_POOL = '10.112.0.0/12';
export const POOL_PREFIX = 20;

/** What runs: the default instance name when neither MVM_INSTANCE nor MVM_DATA_DIR is set. */
export type Role = 'standalone' | 'agent' | 'api' | 'operator';
export const ROLE_INSTANCE: Record<Role, string> = { standalone: DEFAULT_INSTANCE, agent: 'agent', api: 'api', operator: 'operator' };

export interface InstanceNames {
  instance: string;
  /** nftables table name in each family. */
  table: string;
  bridge: string;
  /** Prefix of the VM network namespaces (`<prefix><vm id>`); `.` cannot occur in an instance name, so prefixes never nest. */
  netnsPrefix: string;
  cgroupParent: string;
  /** The default data dir of this instance. */
  dataDir: string;
  /** The fixed subnet of the default instance; undefined: picked from SUBNET_POOL at start. */
  subnet?: { subnet: string; gateway: string };
}

/** The name, or an error naming `field` and the rule. */
export function validateInstanceName(name: string, field = 'MVM_INSTANCE'): string {
  if (!INSTANCE_PATTERN.test(name)) {
    throw new Error(`${field} must be 1-11 characters of a-z, 0-9 and '-' (not at either end), got ${JSON.stringify(name)}`);
  }
  return name;
}

/** The instance a data dir belongs to when MVM_INSTANCE is not set. */
export function instanceForDataDir(dataDir: string): string {
  const d = resolve(dataDir);
  if (d === DEFAULT_DATA_DIR) return DEFAULT_INSTANCE;
  const m = /^\/var\/lib\/mvm-(.+)$/.exec(d);
  if (m && INSTANCE_PATTERN.test(m[1]!) && m[1] !== DEFAULT_INSTANCE) return m[1]!;
  return `d${createHash('sha256').update(d).digest('hex').slice(0, 6)}`;
}

export function instanceNames(instance: string): InstanceNames {
  validateInstanceName(instance);
  if (instance === DEFAULT_INSTANCE) {
    return {
      instance,
      table: 'mvm',
      bridge: 'fc-br0',
      netnsPrefix: 'mvm.',
      cgroupParent: 'mvm',
      dataDir: DEFAULT_DATA_DIR,
      subnet: { subnet: '10.100.0.0/16', gateway: '10.100.0.1' },
    };
  }
  return {
    instance,
    table: `mvm_${instance.replace(/-/g, '_')}`,
    bridge: `mvm-${instance}`,
    netnsPrefix: `mvm-${instance}.`,
    cgroupParent: `mvm-${instance}`,
    dataDir: `/var/lib/mvm-${instance}`,
  };
}

/** The gateway a subnet gets unless MVM_NET_GATEWAY says otherwise: its first host address. */
export function firstHost(subnet: string): string {
  const c = parseCidr(subnet);
  if (!c) throw new Error(`not an IPv4 network: ${JSON.stringify(subnet)}`);
  return ipToString(c.base + 1);
}

/**
 * The pool's /20s in the order an instance tries them: first the one its name hashes to, then the
 * following ones (wrapping), so an instance usually gets the same subnet wherever it runs.
 */
export function subnetCandidates(instance: string): string[] {
  const pool = parseCidr(SUBNET_POOL)!;
  const n = 2 ** (POOL_PREFIX - pool.prefix);
  const first = createHash('sha256').update(`subnet/${instance}`).digest().readUInt32BE(0) % n;
  return Array.from({ length: n }, (_, i) => `${ipToString(pool.base + ((first + i) % n) * 2 ** (32 - POOL_PREFIX))}/${POOL_PREFIX}`);
}
