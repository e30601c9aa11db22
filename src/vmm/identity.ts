/**
 * One uid/gid per VM for its VMM process (ADR 0023): a compromised QEMU runs as a user that owns
 * nothing but its own VM's disks, so it cannot open another VM's disk, memory file or socket.
 *
 * Leases are files `<leaseDir>/<uid>` created exclusively (O_EXCL) and holding the VM's id and
 * directory, so two VMs — of this service or of another instance on the host sharing the lease
 * folder — never get the same uid. A lease whose VM directory is gone is stale and taken over.
 * The gid is the uid's number (a group of one, with no /etc/group entry): QEMU `-runas uid:gid`
 * drops every supplementary group.
 *
 * The VM directory is `root:<gid>` mode 0710: the VMM may reach the files in it, never create,
 * rename or replace one (a symlink planted there would otherwise redirect what the agent, as root,
 * writes). Its writable disks are `<uid>:<gid>` 0600 (QEMU reopens a disk as that user after a
 * restore). Everything else the VMM needs it opens as root before it drops privileges.
 */
import { chmodSync, chownSync, existsSync, mkdirSync, readFileSync, readdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes, MvmError, validationError } from '../core/errors.js';
import { passwdIds } from './proc.js';

export interface VmmIdentity {
  uid: number;
  gid: number;
}

export interface VmmIdentityOptions {
  /** uids handed to VMs: start .. start+size-1 (MVM_VMM_UIDS, default 200000-265535). */
  range: { start: number; size: number };
  /** Host-wide lease folder (default /var/lib/mvm/vmm-uids), shared by every instance on the host. */
  leaseDir: string;
}

export const DEFAULT_VMM_UID_RANGE = { start: 200_000, size: 65_536 };
export const DEFAULT_VMM_LEASE_DIR = '/var/lib/mvm/vmm-uids';

/** `200000-265535` → {start, size}; names the setting in the error. */
export function parseUidRange(s: string, field = 'MVM_VMM_UIDS'): { start: number; size: number } {
  const m = /^(\d+)-(\d+)$/.exec(s.trim());
  const a = m ? Number(m[1]) : NaN;
  const b = m ? Number(m[2]) : NaN;
  if (!m || a < 1000 || b < a || b > 0xfffffffe) throw validationError(field, `must be a uid range like 200000-265535 (from 1000, start <= end), got ${JSON.stringify(s)}`);
  return { start: a, size: b - a + 1 };
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h >>> 0;
}

/** The uids a VM tries, in order: a deterministic start derived from its id, then every other uid of the range. */
export function uidCandidates(id: string, range: { start: number; size: number }, field = 'uidRange'): number[] {
  if (!Number.isInteger(range.start) || range.start < 1 || !Number.isInteger(range.size) || range.size < 1) {
    throw validationError(field, `bad uid range ${JSON.stringify(range)}`);
  }
  const first = fnv1a(id) % range.size;
  const out: number[] = [];
  for (let i = 0; i < range.size; i++) out.push(range.start + ((first + i) % range.size));
  return out;
}

/** A lease file's content: a plain VM id (the jailer's) or a JSON record `{id, dir}` (per-VM users). */
export interface LeaseRecord {
  id: string;
  dir?: string;
  /** false when the content is neither: not ours to judge. */
  ours: boolean;
}

export function parseLease(content: string): LeaseRecord {
  const rec = content.trim();
  if (!rec.startsWith('{')) return { id: rec, ours: rec !== '' };
  try {
    const j = JSON.parse(rec) as { id?: unknown; dir?: unknown };
    if (j && typeof j === 'object' && typeof j.id === 'string') return { id: j.id, ...(typeof j.dir === 'string' ? { dir: j.dir } : {}), ours: true };
  } catch {
    /* not JSON after all */
  }
  return { id: rec, ours: false };
}

/**
 * Lease a uid for `id`: a `<leaseDir>/<uid>` file holding `owner` (the VM id, or a JSON record
 * whose `id` is it), created exclusively. A lease whose owner is no longer live is taken over.
 * Idempotent per id.
 */
export function leaseUid(
  id: string,
  range: { start: number; size: number },
  leaseDir: string,
  isLive: (ownerRecord: string) => boolean,
  o: { record?: string; what?: string } = {},
): number {
  mkdirSync(leaseDir, { recursive: true, mode: 0o700 });
  const record = o.record ?? id;
  for (const uid of uidCandidates(id, range)) {
    const lease = join(leaseDir, String(uid));
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        writeFileSync(lease, record, { flag: 'wx', mode: 0o600 });
        return uid;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
      let owner = '';
      try {
        owner = readFileSync(lease, 'utf8').trim();
      } catch {
        continue; // released meanwhile: retry
      }
      if (parseLease(owner).id === id) return uid;
      if (owner && isLive(owner)) break;
      try {
        unlinkSync(lease); // stale lease of a VM that is gone
      } catch {
        /* someone else took it over: retry once */
      }
    }
  }
  throw new MvmError(ErrorCodes.NO_CAPACITY, `no free uid left in ${range.start}..${range.start + range.size - 1} for ${o.what ?? 'VM'} ${id}`);
}

/** Release every lease held by `id` (a plain id or a JSON record with that id). */
export function releaseUidLeases(id: string, leaseDir: string): void {
  if (!existsSync(leaseDir)) return;
  for (const f of readdirSync(leaseDir)) {
    const p = join(leaseDir, f);
    try {
      if (parseLease(readFileSync(p, 'utf8')).id === id) unlinkSync(p);
    } catch {
      /* gone */
    }
  }
}

/** Per-VM VMM users: lease, apply to a VM directory, release. */
export class VmmIdentities {
  constructor(private readonly o: VmmIdentityOptions) {
    this.pruneStale();
  }

  /** Drop the leases whose VM directory is gone (a data dir removed by hand, a crash before release). */
  pruneStale(): number {
    if (!existsSync(this.o.leaseDir)) return 0;
    let n = 0;
    for (const f of readdirSync(this.o.leaseDir)) {
      const p = join(this.o.leaseDir, f);
      try {
        const { dir } = parseLease(readFileSync(p, 'utf8'));
        if (dir !== undefined && !existsSync(dir)) {
          unlinkSync(p);
          n++;
        }
      } catch {
        /* not a record of ours, or gone */
      }
    }
    return n;
  }

  /** The VM's uid/gid (the same for its whole life, until release), its directory made root:<gid> 0710. */
  assign(vmId: string, vmDir: string): VmmIdentity {
    const record = JSON.stringify({ id: vmId, dir: vmDir });
    const isLive = (content: string): boolean => {
      const lease = parseLease(content);
      if (!lease.ours) return true; // not ours to judge: leave it
      return lease.dir !== undefined && existsSync(lease.dir);
    };
    const uid = leaseUid(vmId, this.o.range, this.o.leaseDir, isLive, { record });
    const id = { uid, gid: uid };
    mkdirSync(vmDir, { recursive: true });
    chownSync(vmDir, 0, id.gid);
    chmodSync(vmDir, 0o710);
    return id;
  }

  release(vmId: string): void {
    releaseUidLeases(vmId, this.o.leaseDir);
  }
}

/** QEMU's `-runas` argument for an identity. */
export const runAsArg = (id: VmmIdentity): string => `${id.uid}:${id.gid}`;

/** uid/gid of a `-runas` value: `uid:gid`, or a user name from /etc/passwd. */
export function runAsIds(runAs: string | undefined): VmmIdentity | undefined {
  if (!runAs) return undefined;
  const m = /^(\d+):(\d+)$/.exec(runAs);
  if (m) return { uid: Number(m[1]), gid: Number(m[2]) };
  return passwdIds(runAs);
}

/**
 * The agent's per-VM users under this configuration: QEMU, run as root, MVM_VMM_USERS=per-vm
 * (Firecracker's jailer hands out its own uids; without root there is nothing to drop from).
 */
export function vmmIdentitiesFor(cfg: { vmmUsers: 'per-vm' | 'shared'; vmmUidRange: { start: number; size: number }; vmmUidLeaseDir: string }, driver: string): { vmmIdentities?: VmmIdentities } {
  if (cfg.vmmUsers !== 'per-vm' || driver !== 'qemu' || process.getuid?.() !== 0) return {};
  return { vmmIdentities: new VmmIdentities({ range: cfg.vmmUidRange, leaseDir: cfg.vmmUidLeaseDir }) };
}
