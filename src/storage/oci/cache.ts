/**
 * Content-addressed cache of OCI root filesystems, keyed by the digest the
 * reference resolves to:
 *
 *   <cacheDir>/oci/<alg>-<hex>[-s<bytes>]/{rootfs.ext4,metadata.json,last-used}
 *
 * (`-s<bytes>` only for an explicitly requested size). An entry is built in
 * `<cacheDir>/oci/.<name>.tmp-<pid>-<rand>` and renamed into place, so it is
 * complete or absent; temp dirs of dead builders are removed by the next
 * build. Concurrent requests in one process share one build; across
 * processes the first rename wins and the others use it.
 */
import { mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { ErrorCodes, MvmError } from '../../core/errors.js';
import { buildRootfs, type GuestProcessSpec } from './build.js';
import { OCI_INIT_PATH } from './init-script.js';
import { type ImageProcessConfig, type PullOptions, pullImage, randomSuffix, resolveDigest } from './pull.js';
import { type ImageReference, parseImageReference } from './reference.js';

/** Bump when the builder's output changes for the same image. */
export const OCI_BUILDER_VERSION = '1';

export interface OciCacheMetadata {
  /** The digest the reference resolved to (cache key; an index digest for multi-platform images). */
  digest: string;
  manifestDigest: string;
  configDigest: string;
  /** The reference it was first built for. */
  reference: string;
  rootfsPath: string;
  sizeBytes: number;
  contentBytes: number;
  /** The image config as found in the image. */
  config: ImageProcessConfig;
  /** What /.mvm/init runs. */
  process: GuestProcessSpec;
  /** Kernel command line argument to boot it. */
  init: string;
  addedDirs: string[];
  architecture?: string;
  os?: string;
  builderVersion: string;
  builtAt: string;
  buildMs: number;
}

export interface OciCacheEntry extends OciCacheMetadata {
  dir: string;
  lastUsedAt: string;
  /** Every reference that resolved to this entry (for in-use accounting of tag references). */
  references: string[];
  /** Blocks actually allocated on the host (the rootfs is sparse). */
  allocatedBytes: number;
}

export interface ResolvedOciRootfs extends OciCacheEntry {
  /** True when the entry was already in the cache (no pull, no build). */
  cacheHit: boolean;
}

export interface OciCacheOptions extends PullOptions {
  cacheDir?: string;
  busyboxPath?: string;
}

export function defaultCacheDir(): string {
  return process.env['MVM_CACHE_DIR'] ?? '/var/cache/mvm';
}

const entryName = (digest: string, sizeBytes?: number): string => {
  const [alg, hex] = digest.split(':');
  if (!alg || !hex || !/^[a-z0-9]+$/.test(alg) || !/^[0-9a-f]+$/.test(hex)) throw new MvmError(ErrorCodes.IMAGE_ERROR, `bad digest ${JSON.stringify(digest)}`);
  return `${alg}-${hex}${sizeBytes !== undefined ? `-s${sizeBytes}` : ''}`;
};

export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const inflight = new Map<string, Promise<OciCacheEntry>>();
/** Entry dirs resolved recently in this process (a VM being created uses it before the store knows): gc and delete leave them. */
const leases = new Map<string, number>();
/** How long a resolve protects its entry from gc/delete (covers admission until the microVM record exists). */
let leaseMs = 60_000;

export function setResolveLeaseMs(ms: number): void {
  leaseMs = ms;
}

export function leaseEntry(dir: string, ms = leaseMs): void {
  leases.set(dir, Date.now() + ms);
}

export function isLeased(dir: string): boolean {
  const until = leases.get(dir);
  if (until === undefined) return false;
  if (until > Date.now()) return true;
  leases.delete(dir);
  return false;
}

/** Drop every lease (tests). */
export function clearLeases(): void {
  leases.clear();
}

/** Remove temp build dirs (`.<name>.tmp-<pid>-<hex>`) left by dead builders (or older than 6 h). */
export async function cleanStaleBuildDirs(root: string): Promise<string[]> {
  const removed: string[] = [];
  let names: string[];
  try {
    names = await readdir(root);
  } catch {
    return removed;
  }
  for (const n of names) {
    const m = /^\..*\.tmp-(\d+)-[0-9a-f]+$/.exec(n);
    if (!m) continue;
    const pid = Number(m[1]);
    let old = false;
    try {
      old = Date.now() - (await stat(join(root, n))).mtimeMs > 6 * 3600_000;
    } catch {
      continue;
    }
    if (old || (pid !== process.pid && !processAlive(pid))) {
      await rm(join(root, n), { recursive: true, force: true });
      removed.push(n);
    }
  }
  return removed;
}

/** Rename out of the way first, so a reader never sees half an entry. */
export async function removeEntryDir(root: string, dir: string): Promise<void> {
  const gone = join(root, `.deleting.tmp-${process.pid}-${randomSuffix()}`);
  await rename(dir, gone);
  await rm(gone, { recursive: true, force: true });
}

/** Sum of allocated blocks under a directory (what `du` reports). */
export async function allocatedDirBytes(dir: string): Promise<number> {
  let total = 0;
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    const st = await stat(p).catch(() => undefined);
    if (!st) continue;
    total += e.isDirectory() ? await allocatedDirBytes(p) : st.blocks * 512;
  }
  return total;
}

/** Remember that `reference` resolved to the entry in `dir`. */
export async function recordReference(dir: string, reference: string): Promise<void> {
  const file = join(dir, 'references');
  let refs: string[] = [];
  try {
    refs = JSON.parse(await readFile(file, 'utf8')) as string[];
  } catch {
    /* first one */
  }
  if (refs.includes(reference)) return;
  refs.push(reference);
  const tmp = `${file}.tmp-${process.pid}-${randomSuffix()}`;
  await writeFile(tmp, JSON.stringify(refs) + '\n');
  await rename(tmp, file);
}

export async function readReferences(dir: string, fallback: string): Promise<string[]> {
  try {
    const r = JSON.parse(await readFile(join(dir, 'references'), 'utf8')) as string[];
    return r.includes(fallback) ? r : [fallback, ...r];
  } catch {
    return [fallback];
  }
}

/** When a cache entry was last used: the mtime of its `last-used` file, else its build time. */
export async function lastUsedOf(dir: string, builtAt: string): Promise<string> {
  return (await stat(join(dir, 'last-used')).then((s) => s.mtime, () => new Date(builtAt))).toISOString();
}

/**
 * Moves a finished build directory into place. When another process published the same entry
 * first, its entry is returned and ours removed; undefined means ours is now the entry.
 */
export async function publishBuild<E>(tmp: string, finalDir: string, readEntry: (dir: string) => Promise<E | undefined>): Promise<E | undefined> {
  try {
    await rename(tmp, finalDir);
    return undefined;
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    const theirs = code === 'ENOTEMPTY' || code === 'EEXIST' ? await readEntry(finalDir) : undefined;
    if (!theirs) throw e;
    await rm(tmp, { recursive: true, force: true });
    return theirs;
  }
}

export class OciImageCache {
  readonly root: string;
  private readonly opts: OciCacheOptions;

  constructor(opts: OciCacheOptions = {}) {
    this.opts = opts;
    this.root = join(resolve(opts.cacheDir ?? defaultCacheDir()), 'oci');
  }

  private async readEntry(dir: string): Promise<OciCacheEntry | undefined> {
    try {
      const m = JSON.parse(await readFile(join(dir, 'metadata.json'), 'utf8')) as OciCacheMetadata;
      return {
        ...m,
        dir,
        rootfsPath: join(dir, 'rootfs.ext4'),
        lastUsedAt: await lastUsedOf(dir, m.builtAt),
        references: await readReferences(dir, m.reference),
        allocatedBytes: await allocatedDirBytes(dir),
      };
    } catch {
      return undefined;
    }
  }

  private async touch(dir: string): Promise<void> {
    const now = new Date();
    await utimes(join(dir, 'last-used'), now, now).catch(() => writeFile(join(dir, 'last-used'), '').catch(() => undefined));
  }

  /**
   * Resolve a reference to a cached ext4 root filesystem, pulling and building
   * it when absent. A tag costs one manifest request when cached; a digest
   * reference none.
   */
  async resolve(reference: string | ImageReference, o: { sizeBytes?: number } = {}): Promise<ResolvedOciRootfs> {
    const ref = typeof reference === 'string' ? parseImageReference(reference) : reference;
    const digest = await resolveDigest(ref, this.opts);
    const name = entryName(digest, o.sizeBytes);
    const finalDir = join(this.root, name);
    leaseEntry(finalDir);
    const existing = await this.readEntry(finalDir);
    if (existing) {
      await this.touch(finalDir);
      await recordReference(finalDir, ref.canonical).catch(() => undefined);
      return { ...existing, cacheHit: true };
    }
    let p = inflight.get(finalDir);
    if (!p) {
      p = this.build(ref, digest, name, finalDir, o.sizeBytes).finally(() => inflight.delete(finalDir));
      inflight.set(finalDir, p);
    }
    const built = await p;
    leaseEntry(finalDir);
    await recordReference(finalDir, ref.canonical).catch(() => undefined);
    return { ...built, references: built.references.includes(ref.canonical) ? built.references : [...built.references, ref.canonical], cacheHit: false };
  }

  private async build(ref: ImageReference, digest: string, name: string, finalDir: string, sizeBytes: number | undefined): Promise<OciCacheEntry> {
    const log = this.opts.log ?? (() => undefined);
    await mkdir(this.root, { recursive: true });
    await this.cleanStaleBuilds();
    const tmp = join(this.root, `.${name}.tmp-${process.pid}-${randomSuffix()}`);
    await mkdir(tmp);
    const started = Date.now();
    try {
      const pulled = await pullImage(ref, join(tmp, 'layout'), { ...this.opts, digest });
      const built = await buildRootfs({
        pulled,
        workDir: tmp,
        outPath: join(tmp, 'rootfs.ext4'),
        ...(sizeBytes !== undefined ? { sizeBytes } : {}),
        ...(this.opts.busyboxPath ? { busyboxPath: this.opts.busyboxPath } : {}),
        log,
      });
      await rm(join(tmp, 'layout'), { recursive: true, force: true });
      await rm(join(tmp, 'bundle'), { recursive: true, force: true });
      const meta: OciCacheMetadata = {
        digest,
        manifestDigest: pulled.manifestDigest,
        configDigest: pulled.configDigest,
        reference: ref.canonical,
        rootfsPath: join(finalDir, 'rootfs.ext4'),
        sizeBytes: built.sizeBytes,
        contentBytes: built.contentBytes,
        config: pulled.config,
        process: built.process,
        init: OCI_INIT_PATH,
        addedDirs: built.addedDirs,
        ...(pulled.architecture ? { architecture: pulled.architecture } : {}),
        ...(pulled.os ? { os: pulled.os } : {}),
        builderVersion: OCI_BUILDER_VERSION,
        builtAt: new Date().toISOString(),
        buildMs: Date.now() - started,
      };
      await writeFile(join(tmp, 'metadata.json'), JSON.stringify(meta, null, 2) + '\n');
      await writeFile(join(tmp, 'last-used'), '');
      const theirs = await publishBuild(tmp, finalDir, (d) => this.readEntry(d));
      if (theirs) return theirs;
      log(`built ${finalDir} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      return (await this.readEntry(finalDir)) ?? { ...meta, dir: finalDir, lastUsedAt: meta.builtAt, references: [meta.reference], allocatedBytes: 0 };
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      if (e instanceof MvmError) throw e;
      throw new MvmError(ErrorCodes.IMAGE_ERROR, `building the root filesystem of ${ref.canonical} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Remove temp build dirs left by dead builders (or older than 6 h). */
  cleanStaleBuilds(): Promise<string[]> {
    return cleanStaleBuildDirs(this.root);
  }

  /** Complete entries, most recently used first. */
  async list(): Promise<OciCacheEntry[]> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch {
      return [];
    }
    const out: OciCacheEntry[] = [];
    for (const n of names) {
      if (n.startsWith('.')) continue;
      const e = await this.readEntry(join(this.root, n));
      if (e) out.push(e);
    }
    return out.sort((a, b) => b.lastUsedAt.localeCompare(a.lastUsedAt));
  }

  /** Delete every entry (all sizes) of a digest; returns the removed dirs. */
  async delete(digest: string): Promise<string[]> {
    const removed: string[] = [];
    for (const e of await this.list()) {
      if (e.digest === digest) {
        await this.removeDir(e.dir);
        removed.push(e.dir);
      }
    }
    return removed;
  }

  private removeDir(dir: string): Promise<void> {
    return removeEntryDir(this.root, dir);
  }

  /**
   * Remove entries not in use: `inUse` holds digests or rootfs paths (of VMs
   * whose disks are based on them); only entries unused for `minIdleMs`
   * (default 0) go. Also removes stale temp dirs.
   */
  async gc(o: { inUse?: Iterable<string>; minIdleMs?: number } = {}): Promise<{ removed: string[]; kept: string[] }> {
    await this.cleanStaleBuilds();
    const inUse = new Set(o.inUse ?? []);
    const removed: string[] = [];
    const kept: string[] = [];
    const now = Date.now();
    for (const e of await this.list()) {
      const idle = now - Date.parse(e.lastUsedAt);
      if (inUse.has(e.digest) || inUse.has(e.rootfsPath) || inUse.has(e.dir) || idle < (o.minIdleMs ?? 0) || inflight.has(e.dir) || isLeased(e.dir)) {
        kept.push(e.dir);
      } else {
        await this.removeDir(e.dir);
        removed.push(e.dir);
      }
    }
    return { removed, kept };
  }
}
