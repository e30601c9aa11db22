/** Per-VM copy-on-write disks: a qcow2 overlay over a shared base image, never a write to the base. */
import { execFile } from 'node:child_process';
import { chownSync, existsSync, renameSync, rmSync } from 'node:fs';
import { promisify } from 'node:util';
import { ErrorCodes, MvmError } from '../core/errors.js';

const run = promisify(execFile);

export async function createOverlay(opts: { base: string; baseFormat: 'raw' | 'qcow2'; path: string; sizeBytes?: number; owner?: { uid: number; gid: number } }): Promise<void> {
  if (existsSync(opts.path)) return; // idempotent: the disk survives stop/start
  const tmp = `${opts.path}.tmp`;
  rmSync(tmp, { force: true });
  const args = ['create', '-q', '-f', 'qcow2', '-F', opts.baseFormat, '-b', opts.base, tmp];
  if (opts.sizeBytes) args.push(String(opts.sizeBytes));
  try {
    await run('qemu-img', args);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new MvmError(ErrorCodes.IMAGE_ERROR, `cannot create the copy-on-write disk: ${(e as Error).message}`, { cause: e });
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

/** A private raw copy of a raw base for VMMs without qcow2: reflink where the filesystem can, else a sparse copy. Idempotent. */
export async function createRawClone(opts: { base: string; path: string; owner?: { uid: number; gid: number } }): Promise<void> {
  if (existsSync(opts.path)) return;
  const tmp = `${opts.path}.tmp`;
  rmSync(tmp, { force: true });
  try {
    await run('cp', ['--reflink=auto', '--sparse=always', opts.base, tmp]);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw new MvmError(ErrorCodes.IMAGE_ERROR, `cannot clone the root disk: ${(e as Error).message}`, { cause: e });
  }
  if (opts.owner) chownSync(tmp, opts.owner.uid, opts.owner.gid);
  renameSync(tmp, opts.path);
}
