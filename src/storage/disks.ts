/**
 * Per-VM root disks over a shared base image, never a write to the base:
 * a qcow2 overlay (QEMU) or a reflink/sparse raw clone (raw-only VMMs).
 * With a size larger than the base, the disk and its ext4 filesystem are grown
 * on the host before the guest boots (ADR 0019): a raw clone is extended and
 * `resize2fs`ed directly; a qcow2 overlay is exported as a raw file through
 * `qemu-storage-daemon`'s FUSE export and `resize2fs`ed there (the resize
 * writes land in the overlay, the base stays untouched).
 */
import { execFile } from 'node:child_process';
import { chownSync, existsSync, readFileSync, renameSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { promisify } from 'node:util';
import { ErrorCodes, MvmError } from '../core/errors.js';

const run = promisify(execFile);

const diskError = (what: string, e: unknown): MvmError => {
  const err = e as Error & { stderr?: string };
  const detail = (err.stderr ?? '').trim().split('\n').filter(Boolean).slice(-2).join(' ') || err.message;
  return new MvmError(ErrorCodes.IMAGE_ERROR, `${what}: ${detail}`, { cause: e });
};

/** Byte size of an ext4 filesystem image (block count x block size), undefined when it is not ext2/3/4. */
export async function ext4Size(path: string): Promise<number | undefined> {
  try {
    const { stdout } = await run('dumpe2fs', ['-h', path], { maxBuffer: 4 << 20 });
    const blocks = /^Block count:\s+(\d+)/m.exec(stdout)?.[1];
    const bs = /^Block size:\s+(\d+)/m.exec(stdout)?.[1];
    return blocks && bs ? Number(blocks) * Number(bs) : undefined;
  } catch {
    return undefined;
  }
}

/** Check and grow the ext4 filesystem in `file` (a raw image or a FUSE export) to fill it. */
async function growExt4(file: string): Promise<void> {
  try {
    // -p: fix only what is safe; exit codes 0/1 are "clean"/"fixed".
    await run('e2fsck', ['-f', '-p', file]);
  } catch (e) {
    const code = (e as { code?: number }).code;
    if (code !== 1) throw diskError('the root filesystem needs repair before it can be grown (e2fsck)', e);
  }
  try {
    await run('resize2fs', [file]);
  } catch (e) {
    throw diskError('cannot grow the root filesystem (resize2fs)', e);
  }
}

/** Run `fn` on a writable raw view of a qcow2 image, exported over FUSE by qemu-storage-daemon. */
export async function withFuseExport<T>(qcow2: string, fn: (rawView: string) => Promise<T>): Promise<T> {
  if (!existsSync('/dev/fuse')) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'growing a qcow2 root disk needs /dev/fuse (qemu-storage-daemon FUSE export)');
  const mnt = `${qcow2}.fuse`;
  const pidFile = `${qcow2}.qsd.pid`;
  await reapStaleExport(qcow2, mnt, pidFile);
  writeFileSync(mnt, '');
  const args = [
    '--blockdev', `driver=file,node-name=file0,filename=${qcow2}`,
    '--blockdev', 'driver=qcow2,node-name=disk0,file=file0',
    '--export', `type=fuse,id=exp0,node-name=disk0,mountpoint=${mnt},writable=on`,
    '--pidfile', pidFile,
    '--daemonize',
  ];
  try {
    await run('qemu-storage-daemon', args);
  } catch (e) {
    rmSync(mnt, { force: true });
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'qemu-storage-daemon not found: install qemu-system-x86 / qemu-utils (run `make deps`)');
    throw diskError('cannot export the root disk over FUSE (qemu-storage-daemon)', e);
  }
  const pid = Number(readFileSync(pidFile, 'utf8').trim());
  try {
    return await fn(mnt);
  } finally {
    // SIGTERM: the daemon flushes the qcow2 and unmounts the export; wait until it is gone.
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      /* already gone */
    }
    const deadline = Date.now() + 15_000;
    while (Date.now() < deadline && alive(pid)) await new Promise((r) => setTimeout(r, 20));
    if (alive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        /* gone */
      }
      await run('umount', ['-l', mnt]).catch(() => undefined);
    }
    rmSync(mnt, { force: true });
    rmSync(pidFile, { force: true });
  }
}

/** A daemon left by a service killed mid-grow still serves the old export: stop it and unmount before reuse. */
async function reapStaleExport(qcow2: string, mnt: string, pidFile: string): Promise<void> {
  if (existsSync(pidFile)) {
    const pid = Number(readFileSync(pidFile, 'utf8').trim());
    let ours = false;
    try {
      ours = pid > 1 && readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(qcow2);
    } catch {
      /* gone */
    }
    if (ours) {
      process.kill(pid, 'SIGKILL');
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline && alive(pid)) await new Promise((r) => setTimeout(r, 20));
    }
    rmSync(pidFile, { force: true });
  }
  // A mount whose daemon died answers ENOTCONN (existsSync says false): look in the mount table.
  const mounted = readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .some((l) => l.split(' ')[1] === mnt.replace(/ /g, '\\040'));
  if (mounted) await run('umount', ['-l', mnt]).catch(() => undefined);
  rmSync(mnt, { force: true });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * A qcow2 overlay over `base`. With `sizeBytes` above the base's size the
 * overlay gets that virtual size and its ext4 filesystem is grown to fill it.
 * Idempotent: an existing disk is kept (it survives stop/start).
 */
export async function createOverlay(opts: { base: string; baseFormat: 'raw' | 'qcow2'; path: string; sizeBytes?: number; owner?: { uid: number; gid: number } }): Promise<void> {
  if (existsSync(opts.path)) return;
  const tmp = `${opts.path}.tmp`;
  await reapStaleExport(tmp, `${tmp}.fuse`, `${tmp}.qsd.pid`);
  rmSync(tmp, { force: true });
  const baseSize = opts.sizeBytes ? (await diskInfo(opts.base)).virtualSize : 0;
  const grow = opts.sizeBytes !== undefined && opts.sizeBytes > baseSize;
  const args = ['create', '-q', '-f', 'qcow2', '-F', opts.baseFormat, '-b', opts.base, tmp];
  if (grow) args.push(String(opts.sizeBytes));
  try {
    await run('qemu-img', args);
    if (grow) await withFuseExport(tmp, growExt4);
  } catch (e) {
    rmSync(tmp, { force: true });
    if (e instanceof MvmError) throw e;
    throw diskError('cannot create the copy-on-write disk', e);
  }
  // QEMU re-opens the disk read-write after a migration, as the unprivileged VMM user.
  if (opts.owner) chownSync(tmp, opts.owner.uid, opts.owner.gid);
  renameSync(tmp, opts.path);
}

export async function diskInfo(path: string): Promise<{ virtualSize: number; actualSize: number; format: string }> {
  const { stdout } = await run('qemu-img', ['info', '--output=json', '-U', path]);
  const j = JSON.parse(stdout) as { 'virtual-size': number; 'actual-size': number; format: string };
  return { virtualSize: j['virtual-size'], actualSize: j['actual-size'], format: j.format };
}

/**
 * A private raw copy of a raw base for VMMs without qcow2: reflink where the
 * filesystem can, else a sparse copy. With `sizeBytes` above the base's size
 * the file is extended (sparse) and its ext4 filesystem grown. Idempotent.
 */
export async function createRawClone(opts: { base: string; path: string; sizeBytes?: number; owner?: { uid: number; gid: number } }): Promise<void> {
  if (existsSync(opts.path)) return;
  const tmp = `${opts.path}.tmp`;
  rmSync(tmp, { force: true });
  try {
    await run('cp', ['--reflink=auto', '--sparse=always', opts.base, tmp]);
    if (opts.sizeBytes !== undefined && opts.sizeBytes > statSync(tmp).size) {
      truncateSync(tmp, opts.sizeBytes);
      await growExt4(tmp);
    }
  } catch (e) {
    rmSync(tmp, { force: true });
    if (e instanceof MvmError) throw e;
    throw diskError('cannot clone the root disk', e);
  }
  if (opts.owner) chownSync(tmp, opts.owner.uid, opts.owner.gid);
  renameSync(tmp, opts.path);
}

/** Blocks actually allocated to a file, in bytes (what `du` reports). */
export function allocatedBytes(path: string): number {
  return statSync(path).blocks * 512;
}
