/**
 * A host inventory of everything one service instance can leave behind, scoped to that instance
 * (its data dir, its stand-in host network namespace, its VM namespace prefix, its cgroup parent,
 * the uid leases naming its data dir), so other services on the machine never count.
 *
 *   processes       every process whose command line names the data dir (QEMU, qemu-storage-daemon, nsenter, …)
 *   netns           VM namespaces `<instance prefix><id>` (ip netns; src/instance.ts)
 *   links           veth/tap/other links in the stand-in host namespace (the bridge's ports)
 *   nft             the ruleset of that namespace: per-VM chains, the addresses in its sets
 *   cgroups         VM cgroups under the parent, on v1 and v2
 *   ipam            host-local leases under <dataDir>/network/ipam (ip → holder)
 *   mounts, loops   mount points and loop devices under the data dir (FUSE exports of root disks)
 *   uidLeases       /var/lib/mvm/vmm-uids (or MVM_VMM_UID_LEASE_DIR) leases whose directory is in the data dir
 *   files           every file under the data dir but the database, logs and host-local's bookkeeping
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { vmNetnsPrefixOf } from '../support/service.js';

export interface InventoryScope {
  dataDir: string;
  /** The stand-in host namespace (bridge, veths, nftables); undefined: the host's own. */
  hostNetns?: string;
  cgroupParent: string;
  uidLeaseDir: string;
}

export interface Inventory {
  processes: Array<{ pid: number; comm: string; vm?: string }>;
  /** VM ids with a QEMU process (one entry per process). */
  qemu: string[];
  storageDaemons: number;
  netns: string[];
  links: { veth: string[]; tap: string[]; other: string[] };
  nft: { text: string; vmChains: number; addresses: string[] };
  cgroups: string[];
  ipam: Array<{ ip: string; holder: string }>;
  mounts: string[];
  loops: string[];
  uidLeases: Array<{ uid: string; id: string }>;
  vmDirs: string[];
  snapshotDirs: string[];
  volumeFiles: string[];
  volumeSnapshotFiles: string[];
  files: string[];
}

/** The VM network namespaces' prefix of the service's instance (ADR 0027): `mvm.` for instance `mvm`, `mvm-<instance>.` otherwise. */
export const netnsPrefixOf = (dataDir: string): string => vmNetnsPrefixOf(dataDir);

const ls = (dir: string): string[] => {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
};

function sh(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
  } catch {
    return '';
  }
}

/** Files the service keeps for itself whatever runs (not per VM): never a leak. */
const KEEP = [/^state\.db(-wal|-shm|-journal)?$/, /^admin\.token$/, /^server\.json(\.tmp)?$/, /^network\/policy\.json$/, /^network\/ipam\/[^/]+\/(lock|last_reserved_ip\.\d+)$/, /\.log(\.\d+)?$/];

function walk(root: string, dir = root, out: string[] = []): string[] {
  for (const e of ls(dir)) {
    const p = join(dir, e);
    let st;
    try {
      st = statSync(p);
    } catch {
      out.push(`${relative(root, p)} (unreadable)`); // e.g. a FUSE export whose daemon died
      continue;
    }
    if (st.isDirectory()) walk(root, p, out);
    else out.push(relative(root, p));
  }
  return out;
}

export function takeInventory(s: InventoryScope): Inventory {
  const dd = s.dataDir;
  const processes: Inventory['processes'] = [];
  for (const e of ls('/proc')) {
    if (!/^\d+$/.test(e)) continue;
    let argv: string[];
    try {
      argv = readFileSync(`/proc/${e}/cmdline`, 'utf8').split('\0').filter(Boolean);
    } catch {
      continue;
    }
    if (!argv.some((a) => a.includes(dd + '/') || a === dd)) continue;
    // The service and the harness name the data dir in their environment, never in argv.
    let comm = '';
    try {
      comm = readFileSync(`/proc/${e}/comm`, 'utf8').trim();
    } catch {
      continue;
    }
    const name = argv.indexOf('-name');
    const vm = name >= 0 ? argv[name + 1]?.replace(/^mvm\./, '') : undefined;
    processes.push({ pid: Number(e), comm, ...(vm ? { vm } : {}) });
  }
  const qemu = processes.filter((p) => p.comm.startsWith('qemu-system')).map((p) => p.vm ?? '?').sort();
  const storageDaemons = processes.filter((p) => p.comm.startsWith('qemu-storage')).length;
  const prefix = netnsPrefixOf(dd);
  const netns = ls('/var/run/netns').filter((n) => n.startsWith(prefix)).map((n) => n.slice(prefix.length));
  const nsArgs = s.hostNetns ? ['-n', s.hostNetns] : [];
  const links: Inventory['links'] = { veth: [], tap: [], other: [] };
  try {
    const j = JSON.parse(sh('ip', [...nsArgs, '-j', '-d', 'link', 'show']) || '[]') as Array<{ ifname: string; linkinfo?: { info_kind?: string } }>;
    for (const l of j) {
      if (l.ifname === 'lo') continue;
      const kind = l.linkinfo?.info_kind;
      (kind === 'veth' ? links.veth : kind === 'tun' ? links.tap : links.other).push(kind && kind !== 'veth' && kind !== 'tun' ? `${l.ifname}(${kind})` : l.ifname);
    }
  } catch {
    /* no namespace */
  }
  const nftText = s.hostNetns ? sh('ip', ['netns', 'exec', s.hostNetns, 'nft', 'list', 'ruleset']) : sh('nft', ['list', 'ruleset']);
  // Counters and handles change with traffic; the structure is what must come back.
  const text = nftText.replace(/counter packets \d+ bytes \d+/g, 'counter').replace(/ # handle \d+/g, '');
  const vmChains = (text.match(/^\s*chain v_\S+_in \{/gm) ?? []).length;
  const addresses = [...new Set((text.match(/\belements = \{[^}]*\}/g) ?? []).flatMap((e) => e.match(/\d+\.\d+\.\d+\.\d+/g) ?? []))].sort();
  const cgroups = new Set<string>();
  for (const root of ['/sys/fs/cgroup', ...['cpu', 'memory', 'pids', 'cpuset', 'cpu,cpuacct'].map((c) => `/sys/fs/cgroup/${c}`)]) {
    const p = join(root, s.cgroupParent);
    for (const e of ls(p)) {
      try {
        if (statSync(join(p, e)).isDirectory()) cgroups.add(e);
      } catch {
        /* gone */
      }
    }
  }
  const ipam: Inventory['ipam'] = [];
  const ipamDir = join(dd, 'network', 'ipam');
  for (const net of ls(ipamDir)) {
    for (const f of ls(join(ipamDir, net))) {
      if (!/^\d+\.\d+\.\d+\.\d+$/.test(f)) continue;
      let holder = '?';
      try {
        holder = readFileSync(join(ipamDir, net, f), 'utf8').split(/\r?\n/)[0]!.trim();
      } catch {
        /* gone */
      }
      ipam.push({ ip: f, holder });
    }
  }
  const mounts = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' ') ?? '')
    .filter((m) => m.startsWith(dd + '/') || m.startsWith(`/var/run/netns/${prefix}`) || m.startsWith(`/run/netns/${prefix}`));
  let loops: string[] = [];
  try {
    const j = JSON.parse(sh('losetup', ['-J', '-l']) || '{"loopdevices":[]}') as { loopdevices?: Array<{ name: string; 'back-file'?: string }> };
    loops = (j.loopdevices ?? []).filter((l) => (l['back-file'] ?? '').includes(dd + '/')).map((l) => `${l.name}=${l['back-file']}`);
  } catch {
    /* no losetup */
  }
  const uidLeases: Inventory['uidLeases'] = [];
  for (const f of ls(s.uidLeaseDir)) {
    try {
      const rec = JSON.parse(readFileSync(join(s.uidLeaseDir, f), 'utf8')) as { id?: string; dir?: string };
      if (typeof rec.dir === 'string' && rec.dir.startsWith(dd + '/')) uidLeases.push({ uid: f, id: rec.id ?? '?' });
    } catch {
      /* not a record, or gone */
    }
  }
  const files = walk(dd).filter((f) => !KEEP.some((k) => k.test(f)));
  return {
    processes,
    qemu,
    storageDaemons,
    netns,
    links,
    nft: { text, vmChains, addresses },
    cgroups: [...cgroups].sort(),
    ipam,
    mounts,
    loops,
    uidLeases,
    vmDirs: ls(join(dd, 'vms')),
    snapshotDirs: ls(join(dd, 'snapshots')),
    volumeFiles: ls(join(dd, 'volumes', 'volumes')),
    volumeSnapshotFiles: ls(join(dd, 'volumes', 'snapshots')),
    files,
  };
}

/** What differs between two inventories (empty: nothing leaked and nothing went missing). */
export function diffInventory(before: Inventory, after: Inventory): string[] {
  const out: string[] = [];
  const set = (what: string, a: string[], b: string[]): void => {
    const added = b.filter((x) => !a.includes(x));
    const gone = a.filter((x) => !b.includes(x));
    if (added.length) out.push(`${what}: left behind ${added.join(', ')}`);
    if (gone.length) out.push(`${what}: went missing ${gone.join(', ')}`);
  };
  set('processes', before.processes.map((p) => `${p.comm}${p.vm ? `(${p.vm})` : ''}`), after.processes.map((p) => `${p.comm}${p.vm ? `(${p.vm})` : ''}`));
  set('VM netns', before.netns, after.netns);
  set('veths', before.links.veth, after.links.veth);
  set('taps', before.links.tap, after.links.tap);
  // The bridge is the network's, made at the first VM's start and kept (like the nftables tables).
  const notBridge = (l: string): boolean => !l.endsWith('(bridge)');
  set('other links', before.links.other.filter(notBridge), after.links.other.filter(notBridge));
  if (before.nft.text !== after.nft.text) out.push(`nftables ruleset differs (${after.nft.vmChains} VM chains, addresses ${after.nft.addresses.join(' ') || 'none'}):\n${lineDiff(before.nft.text, after.nft.text)}`);
  set('cgroups', before.cgroups, after.cgroups);
  set('IPAM leases', before.ipam.map((l) => `${l.ip}:${l.holder}`), after.ipam.map((l) => `${l.ip}:${l.holder}`));
  set('mounts', before.mounts, after.mounts);
  set('loop devices', before.loops, after.loops);
  set('uid leases', before.uidLeases.map((l) => `${l.uid}:${l.id}`), after.uidLeases.map((l) => `${l.uid}:${l.id}`));
  set('files under the data dir', before.files, after.files);
  return out;
}

function lineDiff(a: string, b: string): string {
  const al = a.split('\n');
  const bl = b.split('\n');
  return [...bl.filter((l) => !al.includes(l)).map((l) => `+ ${l}`), ...al.filter((l) => !bl.includes(l)).map((l) => `- ${l}`)].slice(0, 20).join('\n');
}
