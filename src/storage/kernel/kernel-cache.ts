/**
 * Kernels from OCI images or host paths (`kernel.image`), with their own
 * content-addressed cache entries:
 *
 *   <cacheDir>/oci-kernels/<alg>-<hex>/{vmlinux,initrd.img?,metadata.json,last-used,references}
 *
 * An OCI image is pulled by digest (skopeo) and unpacked (umoci); the kernel
 * is the file named by the image label `io.mvm.kernel` or else the first of
 * /boot/vmlinuz*, /boot/vmlinux*, /vmlinuz, /vmlinux. An initrd comes from the
 * label `io.mvm.initrd` or /boot/initrd.img*. A bzImage is turned into the
 * ELF vmlinux both VMMs boot (extract-vmlinux.ts); an ELF is used as is.
 * A host path (allowed directories only, default /boot) is keyed by the
 * sha256 of its content. Built, published, deduplicated and tracked by the
 * digest cache (../digest-cache.ts), like the rootfs cache.
 */
import { execFile } from 'node:child_process';
import { copyFile, lstat, open, readdir, readlink, realpath, rm, stat } from 'node:fs/promises';
import { isAbsolute, join, posix, resolve } from 'node:path';
import { promisify } from 'node:util';

import { ErrorCodes, MvmError } from '../../core/errors.js';
import { DigestCache, defaultCacheDir, entryName, sha256File, type DigestCacheEntryFields } from '../digest-cache.js';
import { type PullOptions, pullImage, resolveDigest } from '../oci/pull.js';
import { type ImagePolicyGate, parseReferenceFor } from '../oci/policy.js';
import { verifyImageSignature } from '../oci/signature.js';
import { extractVmlinux } from './extract-vmlinux.js';

const execFileP = promisify(execFile);

export const KERNEL_LABEL = 'io.mvm.kernel';
export const INITRD_LABEL = 'io.mvm.initrd';
export const KERNEL_BUILDER_VERSION = '1';
export const DEFAULT_KERNEL_DIRS = ['/boot'];

export interface KernelCacheMetadata {
  kind: 'kernel';
  digest: string;
  reference: string;
  /** Where the kernel came from: the path inside the image, or the host path. */
  source: string;
  initrdSource?: string;
  /** From the bzImage header (absent for a bare ELF vmlinux). */
  version?: string;
  sizeBytes: number;
  builderVersion: string;
  builtAt: string;
  buildMs: number;
}

/** The files of an entry. */
interface KernelFiles {
  kernelPath: string;
  initrdPath?: string;
}

export interface KernelCacheEntry extends KernelCacheMetadata, KernelFiles, DigestCacheEntryFields {}

/** What extracting a kernel finds out; the rest of the metadata is the cache's. */
type KernelInfo = Omit<KernelCacheMetadata, 'kind' | 'digest' | 'reference' | 'builderVersion' | 'builtAt' | 'buildMs' | 'sizeBytes'>;

export interface KernelCacheOptions extends PullOptions {
  cacheDir?: string;
  /** Host directories a path `kernel.image` may point into (default /boot). */
  kernelDirs?: readonly string[];
  /** The admin's image policy, checked right before pulling a kernel image (as OciCacheOptions.policy). */
  policy?: ImagePolicyGate;
}

const kernelError = (message: string, cause?: unknown): MvmError => new MvmError(ErrorCodes.IMAGE_ERROR, message, cause !== undefined ? { cause } : {});

/** The kernel release from a bzImage setup header (`kernel_version` at 0x20e), e.g. `6.1.0-28-cloud-amd64`. */
export function bzImageVersion(image: Buffer): string | undefined {
  if (image.length < 0x210 || image.subarray(0x202, 0x206).toString('latin1') !== 'HdrS') return undefined;
  const off = image.readUInt16LE(0x20e);
  if (off === 0) return undefined;
  const start = off + 0x200;
  if (start >= image.length) return undefined;
  const end = image.indexOf(0, start);
  const text = image.subarray(start, end < 0 ? Math.min(image.length, start + 256) : end).toString('latin1');
  return text.split(' ')[0] || undefined;
}

const ELF = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

async function head(path: string, n: number): Promise<Buffer> {
  const fh = await open(path, 'r');
  try {
    const b = Buffer.alloc(n);
    const { bytesRead } = await fh.read(b, 0, n, 0);
    return b.subarray(0, bytesRead);
  } finally {
    await fh.close();
  }
}

/** Turn a bzImage or ELF kernel at `src` into `<dir>/vmlinux`; returns the version when known. */
async function installKernel(src: string, out: string, what: string): Promise<{ version?: string }> {
  const h = await head(src, 0x10000);
  if (h.subarray(0, 4).equals(ELF)) {
    await copyFile(src, out);
    return {};
  }
  const version = bzImageVersion(h);
  try {
    await extractVmlinux(src, out);
  } catch (e) {
    throw kernelError(`${what} is not a bootable x86 kernel (neither ELF vmlinux nor bzImage): ${(e as Error).message}`, e);
  }
  return version ? { version } : {};
}

/** Resolve `rel` inside `root` following symlinks the way the guest would (no escape above root). */
async function inRoot(root: string, rel: string): Promise<string | undefined> {
  let p = posix.normalize('/' + rel);
  for (let hops = 0; hops < 16; hops++) {
    const parts = p.split('/').filter(Boolean);
    let cur = '/';
    let redirected = false;
    for (let i = 0; i < parts.length; i++) {
      const next = posix.join(cur, parts[i]!);
      let st;
      try {
        st = await lstat(join(root, next));
      } catch {
        return undefined;
      }
      if (st.isSymbolicLink()) {
        const link = await readlink(join(root, next));
        p = posix.normalize(posix.isAbsolute(link) ? link : posix.join(cur, link)) + (i + 1 < parts.length ? '/' + parts.slice(i + 1).join('/') : '');
        p = posix.normalize('/' + p);
        redirected = true;
        break;
      }
      cur = next;
    }
    if (!redirected) {
      const full = join(root, cur);
      return (await stat(full)).isFile() ? full : undefined;
    }
  }
  return undefined;
}

async function findIn(root: string, explicit: string | undefined, dirs: string[], prefixes: string[]): Promise<{ path: string; rel: string } | undefined> {
  if (explicit) {
    const p = await inRoot(root, explicit);
    return p ? { path: p, rel: posix.normalize('/' + explicit) } : undefined;
  }
  for (const d of dirs) {
    let names: string[];
    try {
      names = (await readdir(join(root, d))).sort().reverse();
    } catch {
      continue;
    }
    for (const n of names) {
      if (!prefixes.some((pre) => n === pre || n.startsWith(`${pre}-`) || n.startsWith(`${pre}.`))) continue;
      const rel = posix.join('/', d, n);
      const p = await inRoot(root, rel);
      if (p) return { path: p, rel };
    }
  }
  return undefined;
}

async function kernelFiles(dir: string): Promise<KernelFiles> {
  const initrd = join(dir, 'initrd.img');
  const hasInitrd = await stat(initrd).then(() => true, () => false);
  return { kernelPath: join(dir, 'vmlinux'), ...(hasInitrd ? { initrdPath: initrd } : {}) };
}

export class KernelImageCache {
  readonly root: string;
  private readonly opts: KernelCacheOptions;
  private readonly entries: DigestCache<KernelCacheMetadata, KernelFiles>;

  constructor(opts: KernelCacheOptions = {}) {
    this.opts = opts;
    this.root = join(resolve(opts.cacheDir ?? defaultCacheDir()), 'oci-kernels');
    this.entries = new DigestCache({ root: this.root, files: kernelFiles, ...(opts.log ? { log: opts.log } : {}) });
  }

  /** `kernel.image` is a host path (absolute) rather than an OCI reference. */
  static isPath(ref: string): boolean {
    return isAbsolute(ref);
  }

  /** Resolve an OCI reference or an allowed host path to a cached kernel, building it when absent. */
  async resolve(ref: string, o: { tenant?: string } = {}): Promise<KernelCacheEntry & { cacheHit: boolean }> {
    let digest: string;
    let reference: string;
    let extract: (tmp: string) => Promise<KernelInfo>;
    if (KernelImageCache.isPath(ref)) {
      const real = await realpath(ref).catch(() => undefined);
      const dirs = await Promise.all((this.opts.kernelDirs ?? DEFAULT_KERNEL_DIRS).map((d) => realpath(d).catch(() => resolve(d))));
      if (!real || !dirs.some((d) => real === d || real.startsWith(d.endsWith('/') ? d : `${d}/`))) {
        throw kernelError(`kernel ${JSON.stringify(ref)} is not a file in an allowed kernel directory (${(this.opts.kernelDirs ?? DEFAULT_KERNEL_DIRS).join(', ')})`);
      }
      if (!(await stat(real)).isFile()) throw kernelError(`kernel ${JSON.stringify(ref)} is not a regular file`);
      digest = `sha256:${await sha256File(real)}`;
      reference = real;
      extract = async (tmp) => ({ source: real, ...(await installKernel(real, join(tmp, 'vmlinux'), `kernel file ${real}`)) });
    } else {
      const parsed = parseReferenceFor(ref, 'kernel.image');
      const signature = await this.opts.policy?.beforePull(parsed, 'kernel.image', o.tenant);
      digest = await resolveDigest(parsed, this.opts);
      if (signature) await verifyImageSignature(parsed, digest, signature, 'kernel.image', this.opts);
      reference = parsed.canonical;
      extract = async (tmp) => {
        const pulled = await pullImage(parsed, join(tmp, 'layout'), { ...this.opts, digest });
        const bundle = join(tmp, 'bundle');
        try {
          await execFileP('umoci', ['unpack', ...(process.getuid?.() === 0 ? [] : ['--rootless']), '--image', `${pulled.layoutDir}:${pulled.layoutTag}`, bundle], { maxBuffer: 16 << 20 });
        } catch (e) {
          throw kernelError(`umoci unpack of ${parsed.canonical} failed: ${((e as { stderr?: string }).stderr ?? (e as Error).message).trim().slice(-300)}`, e);
        }
        const rootfs = join(bundle, 'rootfs');
        const kernel = await findIn(rootfs, pulled.labels[KERNEL_LABEL], ['boot', '.'], ['vmlinuz', 'vmlinux', 'bzImage']);
        if (!kernel) {
          throw kernelError(
            pulled.labels[KERNEL_LABEL]
              ? `image ${parsed.canonical} has no file ${pulled.labels[KERNEL_LABEL]} (named by its ${KERNEL_LABEL} label)`
              : `image ${parsed.canonical} holds no kernel: looked for /boot/vmlinuz*, /boot/vmlinux*, /vmlinuz, /vmlinux (or name one with the ${KERNEL_LABEL} label)`,
          );
        }
        const info = await installKernel(kernel.path, join(tmp, 'vmlinux'), `${kernel.rel} in ${parsed.canonical}`);
        const initrd = await findIn(rootfs, pulled.labels[INITRD_LABEL], ['boot', '.'], ['initrd.img', 'initrd', 'initramfs']);
        if (pulled.labels[INITRD_LABEL] && !initrd) throw kernelError(`image ${parsed.canonical} has no file ${pulled.labels[INITRD_LABEL]} (named by its ${INITRD_LABEL} label)`);
        if (initrd) await copyFile(initrd.path, join(tmp, 'initrd.img'));
        await rm(join(tmp, 'layout'), { recursive: true, force: true });
        await rm(bundle, { recursive: true, force: true });
        return { source: kernel.rel, ...(initrd ? { initrdSource: initrd.rel } : {}), ...info };
      };
    }
    return this.entries.resolve({
      name: entryName(digest),
      reference,
      failure: 'extracting the kernel',
      build: async (tmp) => {
        const info = await extract(tmp);
        const sizeBytes = (await stat(join(tmp, 'vmlinux'))).size;
        return { kind: 'kernel', digest, reference, ...info, sizeBytes, builderVersion: KERNEL_BUILDER_VERSION };
      },
    });
  }

  /** Complete entries, most recently used first. */
  list(): Promise<KernelCacheEntry[]> {
    return this.entries.list();
  }

  async remove(entry: KernelCacheEntry): Promise<void> {
    await this.entries.remove(entry.dir);
  }

  /** Being built, or resolved recently for a microVM being created. */
  busy(entry: KernelCacheEntry): boolean {
    return this.entries.busy(entry.dir);
  }

  cleanStaleBuilds(): Promise<string[]> {
    return this.entries.cleanStaleBuilds();
  }
}
