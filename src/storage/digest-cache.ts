/**
 * A content-addressed cache directory, keyed by digest: the discipline the OCI root filesystem
 * cache (oci/cache.ts) and the kernel cache (kernel/kernel-cache.ts) share.
 *
 *   <root>/<alg>-<hex>[<suffix>]/{metadata.json,last-used,references,…the build's files}
 *
 * - An entry is built in `<root>/.<name>.tmp-<pid>-<rand>` and renamed into place (atomic
 *   publish), so it is complete or absent; temp dirs of dead builders are removed by the next
 *   build. Across processes the first rename wins and the others use it.
 * - Concurrent resolves of one entry in a process share one build (in-flight dedupe).
 * - Each resolve touches `last-used` and records the reference it came by; a resolve also leases
 *   the entry for a while, so gc and delete leave it to the microVM being created with it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

import { ErrorCodes, MvmError } from '../core/errors.js';

export function defaultCacheDir(): string {
  return process.env['MVM_CACHE_DIR'] ?? '/var/cache/mvm';
}

const randomSuffix = (): string => randomBytes(4).toString('hex');

/** What every entry's `metadata.json` holds besides the cache's own fields. */
export interface DigestCacheMetadata {
  /** The cache key. */
  digest: string;
  /** The reference it was first built for. */
  reference: string;
  builtAt: string;
  buildMs: number;
}

/** What the cache adds to the metadata when it reads an entry. */
export interface DigestCacheEntryFields {
  dir: string;
  lastUsedAt: string;
  /** Every reference that resolved to this entry (for in-use accounting of tag references). */
  references: string[];
  /** Blocks actually allocated on the host (files may be sparse). */
  allocatedBytes: number;
}

/** The sha256 of a file's content, hex. */
export async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  for await (const chunk of createReadStream(path)) h.update(chunk as Buffer);
  return h.digest('hex');
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** The entry directory name of a digest: `<alg>-<hex>` plus an optional suffix. */
export function entryName(digest: string, suffix = ''): string {
  const [alg, hex] = digest.split(':');
  if (!alg || !hex || !/^[a-z0-9]+$/.test(alg) || !/^[0-9a-f]+$/.test(hex)) throw new MvmError(ErrorCodes.IMAGE_ERROR, `bad digest ${JSON.stringify(digest)}`);
  return `${alg}-${hex}${suffix}`;
}

/** Entry dirs resolved recently in this process (a VM being created uses it before the store knows): gc and delete leave them. */
const leases = new Map<string, number>();
/** How long a resolve protects its entry from gc/delete (covers admission until the microVM record exists). */
let leaseMs = 60_000;

export function setResolveLeaseMs(ms: number): void {
  leaseMs = ms;
}

function leaseEntry(dir: string, ms = leaseMs): void {
  leases.set(dir, Date.now() + ms);
}

function isLeased(dir: string): boolean {
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

/** Builds in flight in this process, by final entry dir (absolute, so one map serves every cache). */
const inflight = new Map<string, Promise<unknown>>();

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

/** Sum of allocated blocks under a directory (what `du` reports). */
async function allocatedDirBytes(dir: string): Promise<number> {
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
async function recordReference(dir: string, reference: string): Promise<void> {
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

async function readReferences(dir: string, fallback: string): Promise<string[]> {
  try {
    const r = JSON.parse(await readFile(join(dir, 'references'), 'utf8')) as string[];
    return r.includes(fallback) ? r : [fallback, ...r];
  } catch {
    return [fallback];
  }
}

/** When a cache entry was last used: the mtime of its `last-used` file, else its build time. */
async function lastUsedOf(dir: string, builtAt: string): Promise<string> {
  return (await stat(join(dir, 'last-used')).then((s) => s.mtime, () => new Date(builtAt))).toISOString();
}

async function touch(dir: string): Promise<void> {
  const now = new Date();
  await utimes(join(dir, 'last-used'), now, now).catch(() => writeFile(join(dir, 'last-used'), '').catch(() => undefined));
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

/** How to build an entry that is not in the cache. */
export interface DigestCacheBuild<M extends DigestCacheMetadata> {
  /** The entry directory name (see `entryName`). */
  name: string;
  /** The reference being resolved (recorded in the entry's `references`). */
  reference: string;
  /** Fills `tmp` with the entry's files and returns its metadata; the cache adds the build time. */
  build: (tmp: string, finalDir: string) => Promise<Omit<M, 'builtAt' | 'buildMs'>>;
  /** What failed, for an error that is not an MvmError: `<failure> of <reference> failed: …`. */
  failure: string;
}

export interface DigestCacheOptions<M extends DigestCacheMetadata, F> {
  root: string;
  /** The entry's file paths (and other fields read from its directory) beside its metadata. */
  files: (dir: string, meta: M) => Promise<F> | F;
  log?: (msg: string) => void;
}

export type DigestCacheEntry<M extends DigestCacheMetadata, F> = M & F & DigestCacheEntryFields;

export class DigestCache<M extends DigestCacheMetadata, F> {
  readonly root: string;

  constructor(private readonly options: DigestCacheOptions<M, F>) {
    this.root = options.root;
  }

  /** The complete entry in `dir`, or undefined (absent, half-written or unreadable). */
  async read(dir: string): Promise<DigestCacheEntry<M, F> | undefined> {
    try {
      const meta = JSON.parse(await readFile(join(dir, 'metadata.json'), 'utf8')) as M;
      return {
        ...meta,
        dir,
        ...(await this.options.files(dir, meta)),
        lastUsedAt: await lastUsedOf(dir, meta.builtAt),
        references: await readReferences(dir, meta.reference),
        allocatedBytes: await allocatedDirBytes(dir),
      };
    } catch {
      return undefined;
    }
  }

  /** The entry `request.name`, built when absent; concurrent calls in this process share one build. */
  async resolve(request: DigestCacheBuild<M>): Promise<DigestCacheEntry<M, F> & { cacheHit: boolean }> {
    const finalDir = join(this.root, request.name);
    leaseEntry(finalDir);
    const existing = await this.read(finalDir);
    if (existing) {
      await touch(finalDir);
      await recordReference(finalDir, request.reference).catch(() => undefined);
      return { ...existing, cacheHit: true };
    }
    let building = inflight.get(finalDir) as Promise<DigestCacheEntry<M, F>> | undefined;
    if (!building) {
      building = this.build(request, finalDir).finally(() => inflight.delete(finalDir));
      inflight.set(finalDir, building);
    }
    const built = await building;
    leaseEntry(finalDir);
    await recordReference(finalDir, request.reference).catch(() => undefined);
    return { ...built, references: built.references.includes(request.reference) ? built.references : [...built.references, request.reference], cacheHit: false };
  }

  private async build(request: DigestCacheBuild<M>, finalDir: string): Promise<DigestCacheEntry<M, F>> {
    await mkdir(this.root, { recursive: true });
    await this.cleanStaleBuilds();
    const tmp = join(this.root, `.${request.name}.tmp-${process.pid}-${randomSuffix()}`);
    await mkdir(tmp);
    const started = Date.now();
    try {
      const meta = { ...(await request.build(tmp, finalDir)), builtAt: new Date().toISOString(), buildMs: Date.now() - started };
      await writeFile(join(tmp, 'metadata.json'), JSON.stringify(meta, null, 2) + '\n');
      await writeFile(join(tmp, 'last-used'), '');
      const theirs = await publishBuild(tmp, finalDir, (d) => this.read(d));
      if (theirs) return theirs;
      this.options.log?.(`built ${finalDir} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
      const entry = await this.read(finalDir);
      if (!entry) throw new MvmError(ErrorCodes.IMAGE_ERROR, `cache entry ${finalDir} vanished after its build`);
      return entry;
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      if (e instanceof MvmError) throw e;
      throw new MvmError(ErrorCodes.IMAGE_ERROR, `${request.failure} of ${request.reference} failed: ${(e as Error).message}`, { cause: e });
    }
  }

  /** Complete entries, most recently used first. */
  async list(): Promise<DigestCacheEntry<M, F>[]> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch {
      return [];
    }
    const out: DigestCacheEntry<M, F>[] = [];
    for (const n of names) {
      if (n.startsWith('.')) continue;
      const entry = await this.read(join(this.root, n));
      if (entry) out.push(entry);
    }
    return out.sort((a, b) => b.lastUsedAt.localeCompare(a.lastUsedAt));
  }

  /** Remove an entry: renamed out of the way first, so a reader never sees half an entry. */
  async remove(dir: string): Promise<void> {
    const gone = join(this.root, `.deleting.tmp-${process.pid}-${randomSuffix()}`);
    await rename(dir, gone);
    await rm(gone, { recursive: true, force: true });
  }

  /** Being built, or resolved recently for a microVM being created: not to be removed. */
  busy(dir: string): boolean {
    return inflight.has(dir) || isLeased(dir);
  }

  /** Remove temp build dirs left by dead builders (or older than 6 h). */
  cleanStaleBuilds(): Promise<string[]> {
    return cleanStaleBuildDirs(this.root);
  }
}
