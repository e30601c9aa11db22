/**
 * The default guest images: Debian's cloud kernel (as a PVH-bootable ELF
 * vmlinux), a tiny busybox initramfs that loads the virtio modules and
 * switch_roots to /dev/vda, and a busybox ext4 root filesystem whose /sbin/init
 * configures the network from the kernel command line and prints
 * `MVM-READY id=<mvm.id>` on the console.
 *
 * Layout: <cacheDir>/images/default-<kernelVersion>-<key>/{vmlinux,initrd.img,rootfs.ext4,manifest.json}
 * where <key> hashes the two guest init scripts and BUILDER_VERSION. An entry is
 * built in a temp dir next to it and renamed into place, so it is either
 * complete or absent.
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readdir, readFile, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { gzipSync } from 'node:zlib';

import { ErrorCodes, MvmError } from '../core/errors.js';
import type { ImageResolver, KernelImage, RootfsImage } from '../core/ports/images.js';
import { GUEST_AGENT_PATH, guestAgentBinary } from './guest-agent.js';
import { cleanStaleBuildDirs, defaultCacheDir, publishBuild, sha256File } from './digest-cache.js';
import { extractVmlinux } from './kernel/extract-vmlinux.js';

export { defaultCacheDir };

const execFileP = promisify(execFile);

/** Bump when the builder's output changes for the same init scripts. */
export const BUILDER_VERSION = '1';

export const DEFAULT_ROOTFS_SIZE_BYTES = 64 * 1024 * 1024;

/** Loaded in this order by the initramfs (it has no modprobe). */
export const REQUIRED_MODULES = [
  'virtio_ring',
  'virtio',
  'virtio_mmio',
  'virtio_blk',
  'failover',
  'net_failover',
  'virtio_net',
  'button', // ACPI power button (QMP system_powerdown via the microvm GED)
  'evdev', // /dev/input/event* for busybox acpid
] as const;
/** Loaded when the kernel has them: entropy, and the guest agent's channels (virtio-serial, vsock). */
const OPTIONAL_MODULES = ['virtio-rng', 'virtio_console', 'vsock', 'vmw_vsock_virtio_transport_common', 'vmw_vsock_virtio_transport'] as const;

export interface DefaultImagesManifest {
  kernelVersion: string;
  kernelPath: string;
  initrdPath: string;
  rootfsPath: string;
  /** `sha256:<hex>` of rootfs.ext4. */
  rootfsDigest: string;
  rootfsSizeBytes: number;
  /** The bzImage the vmlinux was extracted from. */
  sourceKernel: string;
  builderVersion: string;
  builtAt: string;
}

export interface DefaultImages extends DefaultImagesManifest {
  /** The cache entry directory holding the files. */
  dir: string;
}

export interface BuildDefaultImagesOptions {
  cacheDir?: string;
  log?: (msg: string) => void;
  /** Directory holding `initramfs-init` and `rootfs-init` (default: the repo's images/guest). */
  guestDir?: string;
  /** Directory with the kernels (default /boot). */
  bootDir?: string;
  /** Directory with the kernel modules (default /lib/modules). */
  modulesRoot?: string;
  /** Static busybox binary (default /bin/busybox). */
  busyboxPath?: string;
  /** The guest agent to put at /.mvm/mvm-agent (default: guestAgentBinary(); `null`: none). */
  guestAgent?: string | null;
}

const imageError = (message: string, cause?: unknown): MvmError =>
  new MvmError(ErrorCodes.IMAGE_ERROR, message, cause !== undefined ? { cause } : {});

// ---------------------------------------------------------------------------
// Locating the inputs

function findGuestDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'images', 'guest');
    if (existsSync(join(candidate, 'rootfs-init')) && existsSync(join(candidate, 'initramfs-init'))) return candidate;
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  throw imageError('cannot find images/guest/{initramfs-init,rootfs-init} above ' + fileURLToPath(import.meta.url));
}

function compareVersions(a: string, b: string): number {
  return a.localeCompare(b, 'en', { numeric: true });
}

export interface HostKernel {
  version: string;
  bzImagePath: string;
  modulesDir: string;
}

/** The newest Debian cloud kernel installed on this host. */
export async function findHostKernel(bootDir = '/boot', modulesRoot = '/lib/modules'): Promise<HostKernel> {
  let names: string[] = [];
  try {
    names = await readdir(bootDir);
  } catch {
    /* reported below */
  }
  const versions = names
    .filter((n) => n.startsWith('vmlinuz-') && n.endsWith('-cloud-amd64'))
    .map((n) => n.slice('vmlinuz-'.length))
    .sort(compareVersions);
  const version = versions.at(-1);
  if (!version) {
    throw imageError(`no ${bootDir}/vmlinuz-*-cloud-amd64 kernel found: install linux-image-cloud-amd64 (run \`make deps\`)`);
  }
  const modulesDir = join(modulesRoot, version);
  if (!existsSync(join(modulesDir, 'modules.dep'))) {
    throw imageError(`kernel ${version} has no modules in ${modulesDir}: reinstall linux-image-cloud-amd64 (run \`make deps\`)`);
  }
  return { version, bzImagePath: join(bootDir, `vmlinuz-${version}`), modulesDir };
}

/** Map module names to their .ko files (and report built-in ones). */
async function locateModules(modulesDir: string): Promise<{ files: Map<string, string>; builtin: Set<string> }> {
  const files = new Map<string, string>();
  const dep = await readFile(join(modulesDir, 'modules.dep'), 'utf8');
  for (const line of dep.split('\n')) {
    const rel = line.split(':')[0];
    if (!rel) continue;
    const name = basename(rel).replace(/\.ko(\.(xz|gz|zst))?$/, '');
    files.set(name, join(modulesDir, rel));
  }
  const builtin = new Set<string>();
  try {
    const text = await readFile(join(modulesDir, 'modules.builtin'), 'utf8');
    for (const line of text.split('\n')) if (line) builtin.add(basename(line).replace(/\.ko$/, ''));
  } catch {
    /* optional */
  }
  return { files, builtin };
}

// ---------------------------------------------------------------------------
// newc cpio writer (device nodes without needing root)

interface CpioEntry {
  name: string;
  mode: number; // including the S_IF* type bits
  data?: Buffer;
  rdevMajor?: number;
  rdevMinor?: number;
}

const S_IFDIR = 0o040000;
const S_IFREG = 0o100000;
const S_IFLNK = 0o120000;
const S_IFCHR = 0o020000;

function cpioNewc(entries: CpioEntry[]): Buffer {
  const chunks: Buffer[] = [];
  let size = 0;
  const push = (b: Buffer): void => {
    chunks.push(b);
    size += b.length;
  };
  const pad4 = (): void => {
    const p = (4 - (size % 4)) % 4;
    if (p) push(Buffer.alloc(p));
  };
  const hex = (n: number): string => n.toString(16).padStart(8, '0');
  let ino = 1;
  for (const e of [...entries, { name: 'TRAILER!!!', mode: 0 } as CpioEntry]) {
    const data = e.data ?? Buffer.alloc(0);
    const name = Buffer.from(e.name + '\0');
    const isDir = (e.mode & 0o170000) === S_IFDIR;
    const header =
      '070701' +
      hex(e.name === 'TRAILER!!!' ? 0 : ino++) +
      hex(e.mode) +
      hex(0) + // uid
      hex(0) + // gid
      hex(isDir ? 2 : 1) + // nlink
      hex(0) + // mtime (reproducible)
      hex(data.length) +
      hex(0) + // devmajor
      hex(0) + // devminor
      hex(e.rdevMajor ?? 0) +
      hex(e.rdevMinor ?? 0) +
      hex(name.length) +
      hex(0); // check
    push(Buffer.from(header, 'latin1'));
    push(name);
    pad4();
    if (data.length) {
      push(data);
      pad4();
    }
  }
  return Buffer.concat(chunks, size);
}

/** Applet paths (e.g. `usr/bin/wget`) of a busybox binary. */
async function busyboxApplets(busybox: string): Promise<string[]> {
  const { stdout } = await execFileP(busybox, ['--list-full'], { maxBuffer: 1 << 20 });
  return stdout
    .split('\n')
    .map((l) => l.trim().replace(/^\/+/, ''))
    .filter((l) => l && !l.includes('..') && l !== 'bin/busybox');
}

async function assertStatic(busybox: string): Promise<void> {
  const head = await readFile(busybox).catch((e: unknown) => {
    throw imageError(`cannot read ${busybox}: install busybox-static (run \`make deps\`)`, e);
  });
  // A dynamically linked ELF has a PT_INTERP program header.
  if (head.subarray(0, 4).toString('latin1') !== '\x7fELF') throw imageError(`${busybox} is not an ELF binary`);
  const phoff = Number(head.readBigUInt64LE(0x20));
  const phentsize = head.readUInt16LE(0x36);
  const phnum = head.readUInt16LE(0x38);
  for (let i = 0; i < phnum; i++) {
    if (head.readUInt32LE(phoff + i * phentsize) === 3) {
      throw imageError(`${busybox} is dynamically linked: install busybox-static (run \`make deps\`)`);
    }
  }
}

// ---------------------------------------------------------------------------
// Builders

async function buildInitrd(opts: {
  out: string;
  initScript: Buffer;
  busybox: string;
  applets: string[];
  modules: { name: string; file: string }[];
}): Promise<void> {
  const entries: CpioEntry[] = [];
  const dirs = new Set<string>();
  const addDir = (d: string): void => {
    const parts = d.split('/').filter(Boolean);
    for (let i = 1; i <= parts.length; i++) {
      const p = parts.slice(0, i).join('/');
      if (!dirs.has(p)) {
        dirs.add(p);
        entries.push({ name: p, mode: S_IFDIR | 0o755 });
      }
    }
  };
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin', 'dev', 'proc', 'sys', 'newroot', 'lib/modules', 'etc', 'run', 'tmp']) addDir(d);
  entries.push({ name: 'dev/console', mode: S_IFCHR | 0o600, rdevMajor: 5, rdevMinor: 1 });
  entries.push({ name: 'dev/null', mode: S_IFCHR | 0o666, rdevMajor: 1, rdevMinor: 3 });
  entries.push({ name: 'init', mode: S_IFREG | 0o755, data: opts.initScript });
  entries.push({ name: 'bin/busybox', mode: S_IFREG | 0o755, data: await readFile(opts.busybox) });
  for (const a of opts.applets) {
    if (a === 'init' || a === 'linuxrc' || a === 'sbin/init') continue;
    addDir(dirname(a));
    entries.push({ name: a, mode: S_IFLNK | 0o777, data: Buffer.from('/bin/busybox') });
  }
  for (const m of opts.modules) {
    entries.push({ name: `lib/modules/${m.name}.ko`, mode: S_IFREG | 0o644, data: await readFile(m.file) });
  }
  await writeFile(opts.out, gzipSync(cpioNewc(entries), { level: 6 }));
}

const ROOTFS_FILES: Record<string, { mode: number; text: string }> = {
  'etc/passwd': {
    mode: 0o644,
    text: 'root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n',
  },
  'etc/shadow': { mode: 0o600, text: 'root::0:0:99999:7:::\ndaemon:*:0:0:99999:7:::\nnobody:*:0:0:99999:7:::\n' },
  'etc/group': { mode: 0o644, text: 'root:x:0:\ndaemon:x:1:\ntty:x:5:\nnogroup:x:65534:\n' },
  'etc/hostname': { mode: 0o644, text: 'mvm\n' },
  'etc/hosts': { mode: 0o644, text: '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n' },
  'etc/fstab': { mode: 0o644, text: '# mounted by /sbin/init\n' },
  'etc/shells': { mode: 0o644, text: '/bin/sh\n/bin/ash\n' },
  'etc/os-release': {
    mode: 0o644,
    text: 'NAME="MicroVM Service default guest"\nID=mvm-default\nPRETTY_NAME="MicroVM Service default guest (busybox)"\n',
  },
  'etc/profile': {
    mode: 0o644,
    text: 'export PATH=/usr/sbin:/usr/bin:/sbin:/bin\nexport HOME=/root\nexport PS1=\'\\h:\\w\\$ \'\nalias ll="ls -l"\n',
  },
  // busybox acpid's built-in tables map KEY_POWER to the handler PWRF/00000080 (relative to /etc/acpi)
  'etc/acpi/PWRF/00000080': { mode: 0o755, text: '#!/bin/sh\nexec kill -USR2 1\n' },
  'etc/acpi/PWRB/00000080': { mode: 0o755, text: '#!/bin/sh\nexec kill -USR2 1\n' },
  'usr/share/udhcpc/default.script': {
    mode: 0o755,
    text: [
      '#!/bin/sh',
      '# minimal udhcpc hook',
      'case "$1" in',
      '  deconfig) ip addr flush dev "$interface"; ip link set "$interface" up ;;',
      '  bound|renew)',
      '    ip addr flush dev "$interface"',
      '    ip addr add "$ip/${mask:-24}" dev "$interface"',
      '    for r in $router; do ip route add default via "$r" dev "$interface" && break; done',
      '    [ -n "$dns" ] && { : > /run/resolv.conf; for s in $dns; do echo "nameserver $s" >> /run/resolv.conf; done; }',
      '    ;;',
      'esac',
      '',
    ].join('\n'),
  },
  'var/www/index.html': { mode: 0o644, text: '<html><body>mvm default guest</body></html>\n' },
};

async function buildRootfs(opts: {
  out: string;
  staging: string;
  initScript: Buffer;
  busybox: string;
  applets: string[];
  sizeBytes: number;
  agentPath?: string;
}): Promise<void> {
  const s = opts.staging;
  const dirs: [string, number][] = [
    ['bin', 0o755], ['sbin', 0o755], ['usr/bin', 0o755], ['usr/sbin', 0o755], ['lib', 0o755],
    ['dev', 0o755], ['proc', 0o555], ['sys', 0o555], ['run', 0o755], ['tmp', 0o1777],
    ['root', 0o700], ['home', 0o755], ['mnt', 0o755], ['var', 0o755], ['var/log', 0o755],
    ['var/tmp', 0o1777], ['var/www', 0o755], ['etc', 0o755],
  ];
  for (const [d, mode] of dirs) {
    await mkdir(join(s, d), { recursive: true });
    await chmod(join(s, d), mode);
  }
  await copyFile(opts.busybox, join(s, 'bin/busybox'));
  await chmod(join(s, 'bin/busybox'), 0o755);
  for (const a of opts.applets) {
    if (a === 'init' || a === 'linuxrc' || a === 'sbin/init') continue;
    await mkdir(join(s, dirname(a)), { recursive: true });
    await symlink('/bin/busybox', join(s, a)).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e;
    });
  }
  await writeFile(join(s, 'sbin/init'), opts.initScript);
  await chmod(join(s, 'sbin/init'), 0o755);
  if (opts.agentPath) {
    await mkdir(join(s, dirname(GUEST_AGENT_PATH.slice(1))), { recursive: true });
    await copyFile(opts.agentPath, join(s, GUEST_AGENT_PATH.slice(1)));
    await chmod(join(s, GUEST_AGENT_PATH.slice(1)), 0o755);
  }
  for (const [rel, f] of Object.entries(ROOTFS_FILES)) {
    await mkdir(join(s, dirname(rel)), { recursive: true });
    await writeFile(join(s, rel), f.text);
    await chmod(join(s, rel), f.mode);
  }
  // written by /sbin/init at boot, so it works on a read-only root too
  await symlink('../run/resolv.conf', join(s, 'etc/resolv.conf'));

  await writeFile(opts.out, '');
  await truncate(opts.out, opts.sizeBytes);
  try {
    await execFileP('mkfs.ext4', ['-q', '-F', '-L', 'mvm-root', '-m', '0', '-E', 'root_owner=0:0', '-d', s, opts.out], {
      maxBuffer: 1 << 20,
    });
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string };
    if (err.code === 'ENOENT') throw imageError('mkfs.ext4 not found: install e2fsprogs (run `make deps`)', e);
    throw imageError(`mkfs.ext4 failed: ${err.stderr?.trim() || err.message}`, e);
  }
}

function entryFromManifest(dir: string, m: DefaultImagesManifest): DefaultImages {
  // paths are recomputed from the entry dir in case the cache moved
  return {
    ...m,
    dir,
    kernelPath: join(dir, 'vmlinux'),
    initrdPath: join(dir, 'initrd.img'),
    rootfsPath: join(dir, 'rootfs.ext4'),
  };
}

async function readEntry(dir: string): Promise<DefaultImages | undefined> {
  try {
    const m = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8')) as DefaultImagesManifest;
    return entryFromManifest(dir, m);
  } catch {
    return undefined;
  }
}

const inflight = new Map<string, Promise<DefaultImages>>();

/**
 * Build (or find in the cache) the default guest images. A second call with
 * the entry present returns at once; concurrent calls share one build.
 */
export async function buildDefaultImages(opts: BuildDefaultImagesOptions = {}): Promise<DefaultImages> {
  const log = opts.log ?? (() => undefined);
  const cacheDir = resolve(opts.cacheDir ?? defaultCacheDir());
  const guestDir = opts.guestDir ?? findGuestDir();
  const [initramfsInit, rootfsInit] = await Promise.all([
    readFile(join(guestDir, 'initramfs-init')),
    readFile(join(guestDir, 'rootfs-init')),
  ]).catch((e: unknown) => {
    throw imageError(`cannot read the guest init scripts in ${guestDir}`, e);
  });
  const kernel = await findHostKernel(opts.bootDir, opts.modulesRoot);
  const agent = opts.guestAgent === null ? undefined : opts.guestAgent ? { path: opts.guestAgent, digest: `sha256:${await sha256File(opts.guestAgent)}` } : guestAgentBinary({ cacheDir });
  if (agent && 'missing' in agent) log(`warning: no guest agent in the default images: ${agent.missing}`);
  const agentFile = agent && 'path' in agent ? agent : undefined;
  const key = createHash('sha256')
    .update(`mvm-default-images/${BUILDER_VERSION}\0`)
    .update(initramfsInit)
    .update('\0')
    .update(rootfsInit)
    .update(`\0${OPTIONAL_MODULES.join(',')}\0${agentFile?.digest ?? 'no-agent'}`)
    .digest('hex')
    .slice(0, 12);
  const imagesDir = join(cacheDir, 'images');
  const name = `default-${kernel.version}-${key}`;
  const finalDir = join(imagesDir, name);

  const existing = await readEntry(finalDir);
  if (existing) return existing;

  const running = inflight.get(finalDir);
  if (running) return running;
  const p = doBuild({ ...opts, log, imagesDir, name, finalDir, kernel, initramfsInit, rootfsInit, ...(agentFile ? { agentPath: agentFile.path } : {}) }).finally(() =>
    inflight.delete(finalDir),
  );
  inflight.set(finalDir, p);
  return p;
}

async function doBuild(o: {
  log: (msg: string) => void;
  busyboxPath?: string;
  imagesDir: string;
  name: string;
  finalDir: string;
  kernel: HostKernel;
  initramfsInit: Buffer;
  rootfsInit: Buffer;
  agentPath?: string;
}): Promise<DefaultImages> {
  const { log, kernel } = o;
  const busybox = o.busyboxPath ?? '/bin/busybox';
  await mkdir(o.imagesDir, { recursive: true });
  await cleanStaleBuildDirs(o.imagesDir);
  const tmp = join(o.imagesDir, `.${o.name}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`);
  await mkdir(tmp);
  const started = Date.now();
  try {
    log(`building default images ${o.name} (kernel ${kernel.version})`);
    await assertStatic(busybox);
    const applets = await busyboxApplets(busybox);

    log(`extracting vmlinux from ${kernel.bzImagePath}`);
    await extractVmlinux(kernel.bzImagePath, join(tmp, 'vmlinux')).catch((e: unknown) => {
      throw imageError(`cannot extract vmlinux from ${kernel.bzImagePath}: ${(e as Error).message}`, e);
    });

    const { files, builtin } = await locateModules(kernel.modulesDir);
    const modules: { name: string; file: string }[] = [];
    for (const m of REQUIRED_MODULES) {
      const file = files.get(m);
      if (file) modules.push({ name: m, file });
      else if (!builtin.has(m)) throw imageError(`kernel ${kernel.version} has no module ${m} in ${kernel.modulesDir}`);
    }
    for (const m of OPTIONAL_MODULES) {
      const file = files.get(m);
      if (file) modules.push({ name: m, file });
    }
    log(`building initrd.img (modules: ${modules.map((m) => m.name).join(' ')})`);
    await buildInitrd({ out: join(tmp, 'initrd.img'), initScript: o.initramfsInit, busybox, applets, modules });

    log(`building rootfs.ext4 (${DEFAULT_ROOTFS_SIZE_BYTES >> 20} MiB, busybox ${applets.length} applets)`);
    const staging = join(tmp, 'rootfs.d');
    await buildRootfs({
      out: join(tmp, 'rootfs.ext4'),
      staging,
      initScript: o.rootfsInit,
      busybox,
      applets,
      sizeBytes: DEFAULT_ROOTFS_SIZE_BYTES,
      ...(o.agentPath ? { agentPath: o.agentPath } : {}),
    });
    await rm(staging, { recursive: true, force: true });
    const digest = `sha256:${await sha256File(join(tmp, 'rootfs.ext4'))}`;

    const manifest: DefaultImagesManifest = {
      kernelVersion: kernel.version,
      kernelPath: join(o.finalDir, 'vmlinux'),
      initrdPath: join(o.finalDir, 'initrd.img'),
      rootfsPath: join(o.finalDir, 'rootfs.ext4'),
      rootfsDigest: digest,
      rootfsSizeBytes: DEFAULT_ROOTFS_SIZE_BYTES,
      sourceKernel: kernel.bzImagePath,
      builderVersion: BUILDER_VERSION,
      builtAt: new Date().toISOString(),
    };
    await writeFile(join(tmp, 'manifest.json'), JSON.stringify(manifest, null, 2) + '\n');
    // another process finished the same entry first: use theirs
    const theirs = await publishBuild(tmp, o.finalDir, readEntry);
    if (theirs) return theirs;
    log(`built ${o.finalDir} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return entryFromManifest(o.finalDir, manifest);
  } catch (e) {
    await rm(tmp, { recursive: true, force: true });
    if (e instanceof MvmError) throw e;
    throw imageError(`building the default images failed: ${(e as Error).message}`, e);
  }
}

// ---------------------------------------------------------------------------
// ImageResolver adapter

const isDefaultRef = (ref: string | undefined): boolean => ref === undefined || ref === 'default';

export class DefaultImageResolver implements ImageResolver {
  private readonly opts: BuildDefaultImagesOptions;

  constructor(opts: BuildDefaultImagesOptions = {}) {
    this.opts = opts;
  }

  /** Build (once) or find the default images. */
  images(): Promise<DefaultImages> {
    return buildDefaultImages(this.opts);
  }

  async resolveKernel(ref: string | undefined): Promise<KernelImage> {
    if (!isDefaultRef(ref)) {
      throw new MvmError(ErrorCodes.IMAGE_ERROR, `unsupported kernel image reference ${JSON.stringify(ref)}: only "default" is available`, {
        details: { ref },
      });
    }
    const img = await this.images();
    return { kernelPath: img.kernelPath, initrdPath: img.initrdPath, version: img.kernelVersion };
  }

  async resolveRootfs(ref: string | undefined): Promise<RootfsImage> {
    if (!isDefaultRef(ref)) {
      throw new MvmError(ErrorCodes.IMAGE_ERROR, `unsupported rootfs image reference ${JSON.stringify(ref)}: only "default" is available`, {
        details: { ref },
      });
    }
    const img = await this.images();
    return { path: img.rootfsPath, format: 'raw', sizeBytes: img.rootfsSizeBytes, digest: img.rootfsDigest };
  }
}
