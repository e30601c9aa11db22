/**
 * The `nfs` volume backend: the same sparse ext4 files as `local`, on a directory that is an NFS
 * mount shared by the nodes. What NFS needs on top of a local directory:
 *
 * - the path must really be an NFS mount (`nfs`/`nfs4` in /proc/self/mountinfo), else volumes
 *   would silently land on a node's own disk;
 * - every file is fsync'ed, and its directory after a rename (close-to-open consistency; a
 *   rename is only durable on the server once the directory is committed);
 * - a cross-node writer lock: `<id>.img.lock` created with O_EXCL (atomic on NFSv3+), holding the
 *   holder (VM), node and time, taken on a read-write attach and removed on detach, so two nodes
 *   never run a writer on one volume even if their control planes disagree;
 * - ownership: files are chowned to the VMM user, which fails under `root_squash` (the error
 *   says to export with `no_root_squash`);
 * - reconcile never sweeps it (another service may own files there).
 */
import { closeSync, existsSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { VolumeAttachInfo } from '../../core/ports/volumes.js';
import { FileVolumeBackend, commandExists, fsyncPath } from './file-backend.js';

/** The filesystem type of the mount holding `path` (longest mount point prefix in mountinfo). */
export function mountTypeOf(path: string, mountinfo = readFileSync('/proc/self/mountinfo', 'utf8')): { mountPoint: string; fsType: string; source: string } | undefined {
  const abs = resolve(path);
  let best: { mountPoint: string; fsType: string; source: string } | undefined;
  for (const line of mountinfo.split('\n')) {
    const [pre, post] = line.split(' - ');
    if (!pre || !post) continue;
    const mountPoint = unescape(pre.split(' ')[4] ?? '');
    const [fsType, source] = post.split(' ');
    if (!fsType) continue;
    if (abs === mountPoint || abs.startsWith(mountPoint.endsWith('/') ? mountPoint : `${mountPoint}/`)) {
      if (!best || mountPoint.length >= best.mountPoint.length) best = { mountPoint, fsType, source: source ?? '' };
    }
  }
  return best;
}

const unescape = (s: string): string => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));

interface LockRecord {
  holder: string;
  node: string;
  pid: number;
  at: string;
}

export class NfsVolumeBackend extends FileVolumeBackend {
  private readonly node: string;

  constructor(private readonly nfs: { dir: string; owner?: { uid: number; gid: number }; node?: string; mountinfo?: () => string }) {
    super({ name: 'nfs', dir: nfs.dir, fsync: true, shared: true, ...(nfs.owner ? { owner: nfs.owner } : {}) });
    this.node = nfs.node ?? hostname();
  }

  protected override async unavailableReason(): Promise<string | undefined> {
    const m = mountTypeOf(this.nfs.dir, this.nfs.mountinfo?.());
    if (!m || !/^nfs4?$/.test(m.fsType)) {
      return `${this.nfs.dir} is not on an NFS mount (it is on ${m ? `${m.fsType} at ${m.mountPoint}` : 'no known mount'}); mount the export there first`;
    }
    if (!(await commandExists('mkfs.ext4'))) return 'mkfs.ext4 is not installed (Debian package e2fsprogs)';
    return super.unavailableReason();
  }

  lockPath(id: string): string {
    return `${this.volumePath(id)}.lock`;
  }

  /** The current writer lock of a volume, if any. */
  readLock(id: string): LockRecord | undefined {
    try {
      return JSON.parse(readFileSync(this.lockPath(id), 'utf8')) as LockRecord;
    } catch {
      return undefined;
    }
  }

  override async attach(id: string, node: string, o: { readOnly: boolean; holder: string }): Promise<VolumeAttachInfo> {
    const info = await super.attach(id, node, o);
    const lock = this.lockPath(id);
    const held = this.readLock(id);
    if (o.readOnly) {
      if (held && held.holder !== o.holder) throw this.lockedError(id, held);
      return info;
    }
    if (held) {
      if (held.holder === o.holder) return info;
      throw this.lockedError(id, held);
    }
    let fd: number;
    try {
      fd = openSync(lock, 'wx', 0o644); // O_CREAT|O_EXCL: atomic on the server
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
        const now = this.readLock(id);
        if (now?.holder === o.holder) return info;
        throw this.lockedError(id, now);
      }
      throw e;
    }
    try {
      const rec: LockRecord = { holder: o.holder, node: node || this.node, pid: process.pid, at: new Date().toISOString() };
      writeSync(fd, JSON.stringify(rec) + '\n');
    } finally {
      closeSync(fd);
    }
    fsyncPath(lock);
    return info;
  }

  override async detach(id: string, _node: string, o: { holder: string }): Promise<void> {
    const held = this.readLock(id);
    if (held && held.holder === o.holder) {
      rmSync(this.lockPath(id), { force: true });
      if (existsSync(this.volDir)) fsyncPath(this.volDir);
    }
  }

  private lockedError(id: string, held: LockRecord | undefined): MvmError {
    return new MvmError(ErrorCodes.CONFLICT, `nfs: volume ${id} is locked for writing by ${held ? `${held.holder} on node ${held.node} since ${held.at}` : 'another holder'}`, {
      details: { volume: id, lock: held },
    });
  }
}
