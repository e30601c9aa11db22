/**
 * Volumes as raw sparse files holding an ext4 filesystem, in a directory: the `local` backend,
 * and the base of `nfs` (the same files on an NFS mount, plus lock files and fsync).
 *
 * Layout: <dir>/volumes/<id>.img, <dir>/snapshots/<snapshotId>.img. Every file is written as
 * `<name>.tmp` and renamed into place, so a crash leaves either a complete file or a `.tmp`
 * leftover that `list().partial` reports and reconcile removes. Snapshots and restores are a
 * reflink clone (`cp --reflink=always`, XFS/btrfs/NFS 4.2 servers that support CLONE) where the
 * filesystem allows, else a sparse copy.
 */
import { execFile } from 'node:child_process';
import { chownSync, closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, renameSync, rmSync, statSync, ftruncateSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { VolumeAttachInfo, VolumeBackend, VolumeBackendCapabilities } from '../../core/ports/volumes.js';

const execFileP = promisify(execFile);

export async function run(cmd: string, args: string[], timeoutMs = 120_000): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  } catch (e) {
    const err = e as Error & { stderr?: string; code?: string | number };
    const detail = (err.stderr ?? '').trim() || err.message;
    throw new MvmError(ErrorCodes.INTERNAL, `${cmd} ${args.join(' ')}: ${detail}`, { cause: e, details: { command: cmd } });
  }
}

/** ext4 on a device or file; lazy init keeps a sparse file sparse. */
export async function mkfsExt4(path: string, label: string): Promise<void> {
  await run('mkfs.ext4', ['-q', '-F', '-m', '0', '-L', label.slice(0, 16), '-E', 'lazy_itable_init=1,lazy_journal_init=1', path]);
}

/** Grow the ext4 filesystem on `path` to fill it (after the file or device was grown). */
export async function growExt4(path: string): Promise<void> {
  try {
    await execFileP('e2fsck', ['-f', '-p', path], { timeout: 120_000 });
  } catch (e) {
    // 1 = errors corrected; anything above is a real failure.
    const code = (e as { code?: number }).code;
    if (typeof code !== 'number' || code > 1) throw new MvmError(ErrorCodes.INTERNAL, `e2fsck ${path}: ${(e as Error).message}`, { cause: e });
  }
  await run('resize2fs', [path]);
}

export interface FileBackendOptions {
  /** Backend name (`local`, `nfs`). */
  name: string;
  dir: string;
  /** Owner of volume files: the unprivileged user the VMM drops to. */
  owner?: { uid: number; gid: number };
  /** fsync files and directories after every create/rename (needed on NFS: close-to-open, server crash). */
  fsync?: boolean;
  shared?: boolean;
}

export class FileVolumeBackend implements VolumeBackend {
  readonly name: string;
  protected readonly volDir: string;
  protected readonly snapDir: string;
  private cow?: boolean;

  constructor(protected readonly opts: FileBackendOptions) {
    this.name = opts.name;
    this.volDir = join(opts.dir, 'volumes');
    this.snapDir = join(opts.dir, 'snapshots');
  }

  volumePath(id: string): string {
    return join(this.volDir, `${safe(id)}.img`);
  }

  snapshotPath(snapshotId: string): string {
    return join(this.snapDir, `${safe(snapshotId)}.img`);
  }

  /** Why this backend cannot serve (undefined when it can). */
  protected async unavailableReason(): Promise<string | undefined> {
    try {
      this.ensureDirs();
    } catch (e) {
      return `cannot create ${this.opts.dir}: ${(e as Error).message}`;
    }
    return undefined;
  }

  protected ensureDirs(): void {
    // Traversable (not listable) by the VMM user, which opens the files by path.
    for (const d of [this.opts.dir, this.volDir, this.snapDir]) if (!existsSync(d)) mkdirSync(d, { recursive: true, mode: 0o711 });
  }

  async capabilities(): Promise<VolumeBackendCapabilities> {
    const reason = await this.unavailableReason();
    if (reason) return { backend: this.name, available: false, reason, copyOnWrite: false, atomicSnapshots: false, shared: this.opts.shared === true };
    const cow = await this.probeReflink();
    return { backend: this.name, available: true, copyOnWrite: cow, atomicSnapshots: cow, shared: this.opts.shared === true };
  }

  /** Whether `cp --reflink=always` works in this directory (probed once). */
  private async probeReflink(): Promise<boolean> {
    if (this.cow !== undefined) return this.cow;
    const a = join(this.opts.dir, `.reflink-probe-${process.pid}`);
    const b = `${a}.clone`;
    try {
      closeSync(openSync(a, 'w'));
      await execFileP('cp', ['--reflink=always', a, b]);
      this.cow = true;
    } catch {
      this.cow = false;
    } finally {
      rmSync(a, { force: true });
      rmSync(b, { force: true });
    }
    return this.cow;
  }

  async create(id: string, sizeBytes: number): Promise<void> {
    this.ensureDirs();
    const path = this.volumePath(id);
    if (existsSync(path)) return;
    const tmp = `${path}.tmp`;
    rmSync(tmp, { force: true });
    try {
      const fd = openSync(tmp, 'wx', 0o600);
      try {
        try {
          ftruncateSync(fd, sizeBytes); // sparse: no blocks until written
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EFBIG') throw e;
          throw new MvmError(ErrorCodes.VALIDATION_FAILED, `size: ${sizeBytes} bytes is more than a file on the ${this.name} backend's filesystem can hold`, {
            violations: [{ field: 'size', message: 'too large for this backend' }],
          });
        }
      } finally {
        closeSync(fd);
      }
      await mkfsExt4(tmp, id);
      this.finish(tmp, path);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw e;
    }
  }

  /** chown, fsync, rename into place, fsync the directory. */
  protected finish(tmp: string, path: string): void {
    if (this.opts.owner) {
      try {
        chownSync(tmp, this.opts.owner.uid, this.opts.owner.gid);
      } catch (e) {
        throw new MvmError(ErrorCodes.UNAVAILABLE, `${this.name}: cannot give ${tmp} to uid ${this.opts.owner.uid}: ${(e as Error).message}` + (this.name === 'nfs' ? ' (an export with root_squash maps root to nobody: export it with no_root_squash)' : ''), { cause: e });
      }
    }
    if (this.opts.fsync) fsyncPath(tmp);
    renameSync(tmp, path);
    if (this.opts.fsync) fsyncPath(join(path, '..'));
  }

  async delete(id: string): Promise<void> {
    const path = this.volumePath(id);
    for (const p of [path, `${path}.tmp`, `${path}.lock`]) rmSync(p, { force: true });
    if (this.opts.fsync && existsSync(this.volDir)) fsyncPath(this.volDir);
  }

  /** Clone `src` to `dst` (reflink, else sparse copy) via `dst.tmp`; true when blocks are shared. */
  protected async clone(src: string, dst: string, growTo?: number): Promise<{ copyOnWrite: boolean }> {
    this.ensureDirs();
    if (!existsSync(src)) throw new MvmError(ErrorCodes.NOT_FOUND, `${this.name}: ${src} does not exist`);
    const tmp = `${dst}.tmp`;
    rmSync(tmp, { force: true });
    let copyOnWrite = false;
    try {
      if (await this.probeReflink()) {
        copyOnWrite = await execFileP('cp', ['--reflink=always', src, tmp]).then(
          () => true,
          () => false,
        );
      }
      if (!copyOnWrite) await run('cp', ['--sparse=always', src, tmp]);
      if (growTo !== undefined && growTo > statSync(tmp).size) {
        const fd = openSync(tmp, 'r+');
        try {
          ftruncateSync(fd, growTo);
        } finally {
          closeSync(fd);
        }
        await growExt4(tmp);
      }
      this.finish(tmp, dst);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw e;
    }
    return { copyOnWrite };
  }

  async snapshot(volumeId: string, snapshotId: string): Promise<{ copyOnWrite: boolean }> {
    const dst = this.snapshotPath(snapshotId);
    if (existsSync(dst)) return { copyOnWrite: this.cow === true };
    return this.clone(this.volumePath(volumeId), dst);
  }

  async deleteSnapshot(_volumeId: string, snapshotId: string): Promise<void> {
    const p = this.snapshotPath(snapshotId);
    rmSync(p, { force: true });
    rmSync(`${p}.tmp`, { force: true });
  }

  async cloneFromSnapshot(_volumeId: string, snapshotId: string, newId: string, sizeBytes: number): Promise<{ copyOnWrite: boolean }> {
    const dst = this.volumePath(newId);
    if (existsSync(dst)) return { copyOnWrite: this.cow === true };
    return this.clone(this.snapshotPath(snapshotId), dst, sizeBytes);
  }

  async attach(id: string, _node: string, _o: { readOnly: boolean; holder: string }): Promise<VolumeAttachInfo> {
    const path = this.volumePath(id);
    if (!existsSync(path)) throw new MvmError(ErrorCodes.NOT_FOUND, `${this.name}: volume ${id} has no file ${path}`);
    return { path, kind: 'file', format: 'raw' };
  }

  async detach(_id: string, _node: string, _o: { holder: string }): Promise<void> {
    /* a file needs no unmapping */
  }

  async list(): Promise<{ volumes: string[]; snapshots: Array<{ volumeId?: string; snapshotId: string }>; partial: string[] }> {
    const names = (d: string): string[] => (existsSync(d) ? readdirSync(d) : []);
    const vols = names(this.volDir);
    const snaps = names(this.snapDir);
    return {
      volumes: vols.filter((n) => n.endsWith('.img')).map((n) => n.slice(0, -4)),
      snapshots: snaps.filter((n) => n.endsWith('.img')).map((n) => ({ snapshotId: n.slice(0, -4) })),
      partial: [...vols.filter((n) => n.endsWith('.tmp')).map((n) => `volumes/${n}`), ...snaps.filter((n) => n.endsWith('.tmp')).map((n) => `snapshots/${n}`)],
    };
  }

  async removePartial(name: string): Promise<void> {
    if (!/^(volumes|snapshots)\/[A-Za-z0-9._-]+\.tmp$/.test(name)) return;
    rmSync(join(this.opts.dir, name), { force: true });
  }
}

/** Ids become file names: refuse anything that could leave the directory. */
function safe(id: string): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(id)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `bad volume id ${JSON.stringify(id)}`);
  return id;
}

export function fsyncPath(p: string): void {
  const fd = openSync(p, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** The `local` backend (default): a directory on this node. */
export class LocalVolumeBackend extends FileVolumeBackend {
  constructor(o: { dir: string; owner?: { uid: number; gid: number } }) {
    super({ name: 'local', dir: o.dir, ...(o.owner ? { owner: o.owner } : {}) });
  }

  protected override async unavailableReason(): Promise<string | undefined> {
    const r = await super.unavailableReason();
    if (r) return r;
    return (await commandExists('mkfs.ext4')) ? undefined : 'mkfs.ext4 is not installed (Debian package e2fsprogs)';
  }
}

export async function commandExists(cmd: string): Promise<boolean> {
  const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin']);
  return dirs.some((d) => d && existsSync(join(d, cmd)));
}
