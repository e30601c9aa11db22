/**
 * Turn a pulled OCI image into a bootable ext4 root filesystem:
 * `umoci unpack` (layers applied in order, whiteouts handled by umoci), then
 * add what the guest needs under /.mvm only (the image's own files are not
 * changed): a static busybox, its applet links, our init, the generated
 * process launcher and the process spec; missing mount points (/dev, /proc,
 * /sys, /run, /tmp) are created as empty directories. Then `mkfs.ext4 -d`.
 */
import { execFile } from 'node:child_process';
import { chmod, copyFile, lstat, mkdir, readdir, readFile, truncate, writeFile, symlink } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { ErrorCodes, MvmError, validationError } from '../../core/errors.js';
import { ACPI_POWER_SCRIPT, OCI_INIT_PATH, OCI_INIT_SCRIPT, UDHCPC_SCRIPT } from './init-script.js';
import type { ImageProcessConfig, PulledImage } from './pull.js';

const execFileP = promisify(execFile);

export const MVM_DIR = '.mvm';
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Free space added to the content when no size is requested. */
export const DEFAULT_HEADROOM_BYTES = 64 * 1024 * 1024;
export const MIN_ROOTFS_BYTES = 16 * 1024 * 1024;
const MOUNT_POINTS = ['dev', 'proc', 'sys', 'run', 'tmp'] as const;

const imageError = (message: string, cause?: unknown): MvmError =>
  new MvmError(ErrorCodes.IMAGE_ERROR, message, cause !== undefined ? { cause } : {});

/** What /.mvm/init runs (also written to /.mvm/config.json). */
export interface GuestProcessSpec {
  args: string[];
  env: string[];
  cwd: string;
  uid: number;
  gid: number;
  /** User name from the image's /etc/passwd (when the uid is not 0). */
  userName?: string;
  /** The image config it came from. */
  image: ImageProcessConfig;
}

export interface BuildRootfsResult {
  rootfsPath: string;
  sizeBytes: number;
  contentBytes: number;
  process: GuestProcessSpec;
  /** Mount points we had to create (absent from the image). */
  addedDirs: string[];
}

async function run(cmd: string, args: string[], what: string, pkg: string): Promise<string> {
  try {
    const { stdout } = await execFileP(cmd, args, { maxBuffer: 16 << 20 });
    return stdout;
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw imageError(`${cmd} not found: install ${pkg} (run \`make deps\`)`, e);
    throw imageError(`${what} failed: ${(err.stderr ?? '').trim().split('\n').slice(-3).join(' ') || err.message}`, e);
  }
}

/** Bytes the tree needs on ext4 (4 KiB blocks + one inode each), without following links. */
export async function treeBytes(dir: string): Promise<{ bytes: number; entries: number }> {
  let bytes = 0;
  let entries = 0;
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      entries++;
      const p = join(d, e.name);
      const st = await lstat(p);
      bytes += Math.ceil(st.size / 4096) * 4096 + 256;
      if (e.isDirectory()) await walk(p);
    }
  };
  await walk(dir);
  return { bytes, entries };
}

const shq = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;

async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch {
    return false;
  }
}

/** Process spec from the image config (+ the uid/gid umoci resolved from the image's /etc/passwd). */
export async function processSpec(image: ImageProcessConfig, bundleDir: string, rootfs: string): Promise<GuestProcessSpec> {
  let args = [...image.entrypoint, ...image.cmd];
  if (args.length === 0) args = ['/.mvm/busybox', 'sh'];
  const env = [...image.env];
  if (!env.some((e) => e.startsWith('PATH='))) env.unshift(`PATH=${DEFAULT_PATH}`);
  let uid = 0;
  let gid = 0;
  try {
    const spec = JSON.parse(await readFile(join(bundleDir, 'config.json'), 'utf8')) as { process?: { user?: { uid?: number; gid?: number } } };
    uid = spec.process?.user?.uid ?? 0;
    gid = spec.process?.user?.gid ?? 0;
  } catch {
    /* no runtime spec: root */
  }
  let userName: string | undefined;
  let home = uid === 0 ? '/root' : '/';
  try {
    for (const line of (await readFile(join(rootfs, 'etc/passwd'), 'utf8')).split('\n')) {
      const f = line.split(':');
      if (f.length >= 7 && Number(f[2]) === uid) {
        if (uid !== 0) userName = f[0];
        home = f[5] || home;
        break;
      }
    }
  } catch {
    /* no passwd */
  }
  if (!env.some((e) => e.startsWith('HOME='))) env.push(`HOME=${home}`);
  return { args, env, cwd: image.workingDir || '/', uid, gid, ...(userName ? { userName } : {}), image };
}

/** /.mvm/run: enter the working dir, set exactly the image's env, exec the process (as its user). */
export function runScript(p: GuestProcessSpec): string {
  const lines = ['#!/.mvm/busybox sh', '# generated from the image config; see /.mvm/config.json'];
  lines.push(`cd ${shq(p.cwd)} || { echo "mvm-init: cannot enter working dir ${p.cwd.replace(/["$`\\]/g, '')}"; exit 126; }`);
  const env = p.env.map(shq).join(' ');
  if (p.uid !== 0 && p.userName) {
    // busybox su keeps the environment with -p; $0/$@ carry the argv unchanged
    lines.push(`exec /.mvm/busybox env -i ${env} /.mvm/busybox su -p -s /.mvm/bin/sh ${shq(p.userName)} -c '[ -r /run/mvm-env ] && . /run/mvm-env; exec "$0" "$@"' ${p.args.map(shq).join(' ')}`);
  } else {
    if (p.uid !== 0) lines.push(`echo "mvm-init: warning: uid ${p.uid} has no /etc/passwd entry; running as root"`);
    // The VM's own env (written by the guest agent at first boot) over the image's.
    lines.push(`exec /.mvm/busybox env -i ${env} /.mvm/busybox sh -c '[ -r /run/mvm-env ] && . /run/mvm-env; exec "$0" "$@"' ${p.args.map(shq).join(' ')}`);
  }
  return lines.join('\n') + '\n';
}

async function busyboxApplets(busybox: string): Promise<string[]> {
  const out = await run(busybox, ['--list'], 'busybox --list', 'busybox-static');
  return out.split('\n').map((l) => l.trim()).filter((l) => /^[A-Za-z0-9_.[-]+$/.test(l) && l !== 'busybox');
}

/**
 * Unpack the pulled image into `<workDir>/bundle`, inject /.mvm and build
 * `<outPath>` (raw ext4). `sizeBytes` defaults to content + headroom.
 */
export async function buildRootfs(opts: {
  pulled: PulledImage;
  workDir: string;
  outPath: string;
  sizeBytes?: number;
  busyboxPath?: string;
  /** The guest agent binary, put at /.mvm/mvm-agent (the init starts it). */
  agentPath?: string;
  log?: (msg: string) => void;
}): Promise<BuildRootfsResult> {
  const bundle = join(opts.workDir, 'bundle');
  const rootfs = join(bundle, 'rootfs');
  const busybox = opts.busyboxPath ?? '/bin/busybox';
  opts.log?.(`unpacking ${opts.pulled.manifestDigest}`);
  const umociArgs = ['unpack', ...(process.getuid?.() === 0 ? [] : ['--rootless']), '--image', `${opts.pulled.layoutDir}:${opts.pulled.layoutTag}`, bundle];
  await run('umoci', umociArgs, 'umoci unpack', 'umoci');

  let names: string[] = [];
  try {
    names = await readdir(rootfs);
  } catch {
    /* checked below */
  }
  if (names.length === 0) throw imageError(`image ${opts.pulled.manifestDigest} has no filesystem content (empty root after unpacking its layers)`);
  if (names.includes(MVM_DIR)) throw imageError(`image ${opts.pulled.manifestDigest} already contains /${MVM_DIR}, which is reserved for the MicroVM Service guest init`);
  const content = await treeBytes(rootfs);

  const spec = await processSpec(opts.pulled.config, bundle, rootfs);
  const addedDirs: string[] = [];
  for (const d of MOUNT_POINTS) {
    if (!(await exists(join(rootfs, d)))) {
      await mkdir(join(rootfs, d), { mode: d === 'tmp' ? 0o1777 : 0o755 });
      if (d === 'tmp') await chmod(join(rootfs, d), 0o1777);
      addedDirs.push('/' + d);
    }
  }
  const mvm = join(rootfs, MVM_DIR);
  await mkdir(join(mvm, 'bin'), { recursive: true });
  await copyFile(busybox, join(mvm, 'busybox'));
  await chmod(join(mvm, 'busybox'), 0o755);
  for (const a of await busyboxApplets(busybox)) await symlink('/.mvm/busybox', join(mvm, 'bin', a));
  if (opts.agentPath) {
    await copyFile(opts.agentPath, join(mvm, 'mvm-agent'));
    await chmod(join(mvm, 'mvm-agent'), 0o755);
  }
  const files: [string, string, number][] = [
    ['init', OCI_INIT_SCRIPT, 0o755],
    ['run', runScript(spec), 0o755],
    ['udhcpc.script', UDHCPC_SCRIPT, 0o755],
    ['acpi/PWRF/00000080', ACPI_POWER_SCRIPT, 0o755],
    ['acpi/PWRB/00000080', ACPI_POWER_SCRIPT, 0o755],
    [
      'config.json',
      JSON.stringify({ process: spec, manifestDigest: opts.pulled.manifestDigest, configDigest: opts.pulled.configDigest, init: OCI_INIT_PATH }, null, 2) + '\n',
      0o644,
    ],
  ];
  for (const [rel, text, mode] of files) {
    await mkdir(join(mvm, rel, '..'), { recursive: true });
    await writeFile(join(mvm, rel), text);
    await chmod(join(mvm, rel), mode);
  }

  const total = (await treeBytes(rootfs)).bytes;
  const needed = Math.ceil((total * 1.1 + 8 * 1024 * 1024) / 1048576) * 1048576;
  let sizeBytes: number;
  if (opts.sizeBytes !== undefined) {
    if (opts.sizeBytes < needed) {
      throw validationError('rootfs.size', `${opts.sizeBytes} bytes is too small for image ${opts.pulled.manifestDigest}: it needs at least ${needed}`);
    }
    sizeBytes = Math.ceil(opts.sizeBytes / 1048576) * 1048576;
  } else {
    sizeBytes = Math.max(MIN_ROOTFS_BYTES, Math.ceil((total + DEFAULT_HEADROOM_BYTES) / 1048576) * 1048576, needed);
  }
  opts.log?.(`mkfs.ext4 ${sizeBytes >> 20} MiB (content ${(content.bytes / 1048576).toFixed(1)} MiB)`);
  await writeFile(opts.outPath, '');
  await truncate(opts.outPath, sizeBytes);
  await run('mkfs.ext4', ['-q', '-F', '-L', 'mvm-root', '-m', '0', '-E', 'root_owner=0:0', '-d', rootfs, opts.outPath], 'mkfs.ext4', 'e2fsprogs');
  return { rootfsPath: opts.outPath, sizeBytes, contentBytes: content.bytes, process: spec, addedDirs };
}
