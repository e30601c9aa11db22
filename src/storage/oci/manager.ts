/**
 * The image cache as a managed resource (ImageCatalog): list cached OCI root
 * filesystems and kernels with their in-use counts, delete one (refused while
 * a microVM names it), and garbage-collect unused ones by idle age and a
 * total size budget, periodically and on demand.
 *
 * "In use" is decided from the microVM records (every phase, so a VM being
 * created or stopped keeps its image) plus in-process leases taken by every
 * resolve (a create resolves the image at admission, before its record
 * exists) and builds in flight. A tag reference counts against every entry it
 * ever resolved to (conservative: a re-pointed tag keeps the old digest too).
 */
import { readFileSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import { ErrorCodes, MvmError, notFound } from '../../core/errors.js';
import type { CachedImage, ImageCatalog, ImageGcResult } from '../../core/ports/images.js';
import type { KernelCacheEntry } from '../kernel/kernel-cache.js';
import { KernelImageCache } from '../kernel/kernel-cache.js';
import type { OciCacheEntry } from './cache.js';
import type { RegistryCredentials } from './pull.js';
import { isOciReference, parseImageReference } from './reference.js';
import type { OciImageResolver } from './resolver.js';

/** What a microVM names: its rootfs and kernel references. */
export interface ImageUser {
  id: string;
  rootfs?: string;
  kernel?: string;
}

export interface ImageGcPolicy {
  /** Run gc this often (0: never periodically). MVM_IMAGE_GC_INTERVAL, default 1h. */
  intervalMs: number;
  /** Remove unused images idle (not resolved) for longer. MVM_IMAGE_GC_MAX_IDLE, default 7 days (0: no age limit). */
  maxIdleMs: number;
  /** Keep the cache under this many bytes by removing the least recently used unused images. MVM_IMAGE_CACHE_MAX_BYTES, default 0 (no budget). */
  maxBytes: number;
}

export const DEFAULT_GC_POLICY: ImageGcPolicy = { intervalMs: 3600_000, maxIdleMs: 7 * 24 * 3600_000, maxBytes: 0 };

type Entry = { kind: 'rootfs'; e: OciCacheEntry } | { kind: 'kernel'; e: KernelCacheEntry };

/** Entries (a digest may have several rootfs sizes) grouped per kind + digest. */
interface Group {
  kind: 'rootfs' | 'kernel';
  digest: string;
  entries: Entry[];
  references: Set<string>;
  manifestDigests: Set<string>;
  sizeBytes: number;
  imageSizeBytes: number;
  createdAt: string;
  lastUsedAt: string;
}

/** The digest of a DELETE (`sha256:<hex>`, or `sha256-<hex>` as in a path), normalised; VALIDATION_FAILED otherwise. */
export function parseImageDigest(param: string): string {
  const digest = param.replace(/^([a-z0-9]+)-([0-9a-f]+)$/, '$1:$2');
  if (!/^(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})$/.test(digest)) {
    throw new MvmError(ErrorCodes.VALIDATION_FAILED, `digest: ${JSON.stringify(param)} is not sha256:<64 hex>`, { violations: [{ field: 'digest', message: 'must be sha256:<64 lower-case hex>' }] });
  }
  return digest;
}

export class ImageManager implements ImageCatalog {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<ImageGcResult> | undefined;

  constructor(
    private readonly images: OciImageResolver,
    private readonly users: () => Promise<ImageUser[]>,
    private readonly policy: ImageGcPolicy = DEFAULT_GC_POLICY,
    private readonly log: (msg: string, data?: Record<string, unknown>) => void = () => undefined,
  ) {}

  private async groups(): Promise<Group[]> {
    const all: Entry[] = [
      ...(await this.images.cache.list()).map((e) => ({ kind: 'rootfs' as const, e })),
      ...(await this.images.kernels.list()).map((e) => ({ kind: 'kernel' as const, e })),
    ];
    const by = new Map<string, Group>();
    for (const x of all) {
      const key = `${x.kind} ${x.e.digest}`;
      let g = by.get(key);
      if (!g) {
        g = { kind: x.kind, digest: x.e.digest, entries: [], references: new Set(), manifestDigests: new Set(), sizeBytes: 0, imageSizeBytes: 0, createdAt: x.e.builtAt, lastUsedAt: x.e.lastUsedAt };
        by.set(key, g);
      }
      g.entries.push(x);
      for (const r of x.e.references) g.references.add(r);
      if (x.kind === 'rootfs') g.manifestDigests.add(x.e.manifestDigest);
      g.sizeBytes += x.e.allocatedBytes;
      g.imageSizeBytes = Math.max(g.imageSizeBytes, x.e.sizeBytes);
      if (x.e.builtAt < g.createdAt) g.createdAt = x.e.builtAt;
      if (x.e.lastUsedAt > g.lastUsedAt) g.lastUsedAt = x.e.lastUsedAt;
    }
    return [...by.values()].sort((a, b) => b.lastUsedAt.localeCompare(a.lastUsedAt));
  }

  /** How many VMs name each group (key `kind digest`). */
  private async usage(groups: Group[]): Promise<Map<Group, string[]>> {
    const out = new Map<Group, string[]>(groups.map((g) => [g, []]));
    const matches = async (g: Group, ref: string | undefined): Promise<boolean> => {
      if (!isOciReference(ref)) return false;
      if (g.kind === 'kernel' && KernelImageCache.isPath(ref)) {
        const real = await realpath(ref).catch(() => ref);
        return g.references.has(real) || g.references.has(ref);
      }
      let parsed;
      try {
        parsed = parseImageReference(ref);
      } catch {
        return false;
      }
      if (parsed.digest) return g.digest === parsed.digest || g.manifestDigests.has(parsed.digest);
      return g.references.has(parsed.canonical);
    };
    for (const u of await this.users()) {
      for (const g of groups) {
        if (await matches(g, g.kind === 'rootfs' ? u.rootfs : u.kernel)) out.get(g)!.push(u.id);
      }
    }
    return out;
  }

  private busy(g: Group): boolean {
    return g.entries.some((x) => (x.kind === 'kernel' ? this.images.kernels.busy(x.e) : this.images.cache.busy(x.e)));
  }

  private view(g: Group, users: string[]): CachedImage {
    return {
      kind: g.kind,
      digest: g.digest,
      references: [...g.references],
      sizeBytes: g.sizeBytes,
      imageSizeBytes: g.imageSizeBytes,
      createdAt: g.createdAt,
      lastUsedAt: g.lastUsedAt,
      inUse: users.length,
    };
  }

  async list(): Promise<CachedImage[]> {
    const groups = await this.groups();
    const use = await this.usage(groups);
    return groups.map((g) => this.view(g, use.get(g)!));
  }

  private async removeGroup(g: Group): Promise<void> {
    for (const x of g.entries) {
      if (x.kind === 'kernel') await this.images.kernels.remove(x.e);
      else await this.images.cache.delete(x.e.digest);
    }
  }

  /** Delete every cached image with this digest (rootfs and/or kernel); refused while a microVM names it. */
  async delete(digestParam: string): Promise<CachedImage[]> {
    const digest = parseImageDigest(digestParam);
    const groups = (await this.groups()).filter((g) => g.digest === digest);
    if (groups.length === 0) throw notFound('image', digest);
    const use = await this.usage(groups);
    const users = groups.flatMap((g) => use.get(g)!);
    if (users.length > 0) {
      throw new MvmError(ErrorCodes.CONFLICT, `image ${digest} is in use by ${users.length} microVM(s) (${users.slice(0, 5).join(', ')}${users.length > 5 ? ', …' : ''}); delete them first`, {
        details: { digest, usedBy: users },
      });
    }
    if (groups.some((g) => this.busy(g))) {
      throw new MvmError(ErrorCodes.CONFLICT, `image ${digest} is being used by a microVM being created (or is being built); retry later`, { details: { digest } });
    }
    for (const g of groups) await this.removeGroup(g);
    this.log('image deleted', { digest });
    return groups.map((g) => this.view(g, []));
  }

  /**
   * Remove unused images: those idle longer than `maxIdleMs`, then the least
   * recently used ones until the cache fits `maxBytes`. Never an image a
   * microVM names, one resolved for a create in progress, or one being built.
   */
  gc(o: { maxIdleMs?: number; maxBytes?: number } = {}): Promise<ImageGcResult> {
    // One gc at a time; a concurrent caller waits for the running one and then runs its own policy.
    const prev = this.running ?? Promise.resolve(undefined);
    const p = prev.catch(() => undefined).then(() => this.gcOnce(o));
    this.running = p;
    return p.finally(() => {
      if (this.running === p) this.running = undefined;
    });
  }

  private async gcOnce(o: { maxIdleMs?: number; maxBytes?: number }): Promise<ImageGcResult> {
    // An explicit maxIdleMs is literal (0: every unused image); the policy's 0 means "no age limit".
    const maxIdleMs = o.maxIdleMs ?? (this.policy.maxIdleMs > 0 ? this.policy.maxIdleMs : Infinity);
    const maxBytes = o.maxBytes ?? this.policy.maxBytes;
    await this.images.cache.cleanStaleBuilds();
    await this.images.kernels.cleanStaleBuilds();
    const groups = await this.groups();
    const use = await this.usage(groups);
    const removed: ImageGcResult['removed'] = [];
    let total = groups.reduce((s, g) => s + g.sizeBytes, 0);
    let keptInUse = 0;
    const now = Date.now();
    const candidates: Group[] = [];
    for (const g of groups) {
      if (use.get(g)!.length > 0 || this.busy(g)) keptInUse++;
      else candidates.push(g);
    }
    // Oldest use first.
    candidates.sort((a, b) => a.lastUsedAt.localeCompare(b.lastUsedAt));
    for (const g of candidates) {
      const idle = now - Date.parse(g.lastUsedAt);
      const tooOld = idle >= maxIdleMs;
      const overBudget = maxBytes > 0 && total > maxBytes;
      if (!tooOld && !overBudget) continue;
      await this.removeGroup(g);
      total -= g.sizeBytes;
      removed.push({ kind: g.kind, digest: g.digest, sizeBytes: g.sizeBytes });
    }
    const freedBytes = removed.reduce((s, r) => s + r.sizeBytes, 0);
    if (removed.length) this.log('image gc', { removed: removed.length, freedBytes, remainingBytes: total });
    return { removed, freedBytes, keptInUse, remainingBytes: total };
  }

  /** Run gc every `intervalMs` (and once soon after start). */
  start(): void {
    if (this.policy.intervalMs <= 0 || this.timer) return;
    const tick = (): void => {
      this.gc().catch((e: Error) => this.log('image gc failed', { err: e.message }));
    };
    this.timer = setInterval(tick, this.policy.intervalMs);
    this.timer.unref();
    setTimeout(tick, Math.min(60_000, this.policy.intervalMs)).unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

const DURATION = /^(\d+)(ms|s|m|h|d)?$/;

function parseDurationMs(name: string, v: string): number {
  const m = DURATION.exec(v.trim());
  if (!m) throw new Error(`${name} must be a duration like 30s, 10m, 1h or 7d, got ${JSON.stringify(v)}`);
  const n = Number(m[1]);
  return n * ({ ms: 1, s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 }[m[2] ?? 's'] ?? 1000);
}

/** Parse a byte size: plain bytes or with Ki/Mi/Gi/Ti suffix. */
export function parseBytes(name: string, v: string): number {
  const m = /^(\d+)(Ki|Mi|Gi|Ti)?$/.exec(v.trim());
  if (!m) throw new Error(`${name} must be bytes or a quantity like 512Mi or 20Gi, got ${JSON.stringify(v)}`);
  return Number(m[1]) * ({ Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4 }[m[2] ?? ''] ?? 1);
}

export interface ImageConfig {
  /** MVM_IMAGE_CACHE_DIR: where OCI root filesystems and kernels are cached (default: MVM_CACHE_DIR). Instances that share it must not gc it aggressively: each sees only its own microVMs. */
  cacheDir?: string;
  gc: ImageGcPolicy;
  /** MVM_ROOTFS_MAX_SIZE: largest rootfs.size (default 64Gi). */
  maxRootfsBytes: number;
  /** MVM_KERNEL_DIRS: host directories `kernel.image` paths may point into (colon-separated, default /boot). */
  kernelDirs: string[];
  /** MVM_IMAGE_LEASE: how long resolving an image protects it from gc/delete before a microVM record names it (default 60s). */
  leaseMs: number;
  /** MVM_REGISTRY_AUTH_FILE: registry credentials, a containers/docker auth.json (`{"auths": {"host:port": {"auth": base64(user:pass)}}}`). */
  credentials?: Record<string, RegistryCredentials>;
  /** MVM_INSECURE_REGISTRIES: comma-separated host[:port] reached without TLS verification (loopback ones always are). */
  insecureRegistries: string[];
}

/** Credentials per registry from an auth.json file. */
export function readAuthFile(path: string): Record<string, RegistryCredentials> {
  const j = JSON.parse(readFileSync(path, 'utf8')) as { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  const out: Record<string, RegistryCredentials> = {};
  for (const [host, a] of Object.entries(j.auths ?? {})) {
    if (a.username !== undefined && a.password !== undefined) out[host] = { username: a.username, password: a.password };
    else if (a.auth) {
      const text = Buffer.from(a.auth, 'base64').toString('utf8');
      const i = text.indexOf(':');
      if (i > 0) out[host] = { username: text.slice(0, i), password: text.slice(i + 1) };
    }
  }
  return out;
}

/** Image settings from the environment (README "Images"). */
export function loadImageConfig(env: NodeJS.ProcessEnv = process.env): ImageConfig {
  return {
    ...(env.MVM_IMAGE_CACHE_DIR ? { cacheDir: env.MVM_IMAGE_CACHE_DIR } : {}),
    gc: {
      intervalMs: env.MVM_IMAGE_GC_INTERVAL !== undefined ? parseDurationMs('MVM_IMAGE_GC_INTERVAL', env.MVM_IMAGE_GC_INTERVAL) : DEFAULT_GC_POLICY.intervalMs,
      maxIdleMs: env.MVM_IMAGE_GC_MAX_IDLE !== undefined ? parseDurationMs('MVM_IMAGE_GC_MAX_IDLE', env.MVM_IMAGE_GC_MAX_IDLE) : DEFAULT_GC_POLICY.maxIdleMs,
      maxBytes: env.MVM_IMAGE_CACHE_MAX_BYTES !== undefined ? parseBytes('MVM_IMAGE_CACHE_MAX_BYTES', env.MVM_IMAGE_CACHE_MAX_BYTES) : DEFAULT_GC_POLICY.maxBytes,
    },
    maxRootfsBytes: env.MVM_ROOTFS_MAX_SIZE !== undefined ? parseBytes('MVM_ROOTFS_MAX_SIZE', env.MVM_ROOTFS_MAX_SIZE) : 64 * 1024 ** 3,
    kernelDirs: (env.MVM_KERNEL_DIRS ?? '/boot').split(':').filter(Boolean),
    leaseMs: env.MVM_IMAGE_LEASE !== undefined ? parseDurationMs('MVM_IMAGE_LEASE', env.MVM_IMAGE_LEASE) : 60_000,
    ...(env.MVM_REGISTRY_AUTH_FILE ? { credentials: readAuthFile(env.MVM_REGISTRY_AUTH_FILE) } : {}),
    insecureRegistries: (env.MVM_INSECURE_REGISTRIES ?? '').split(',').map((x) => x.trim()).filter(Boolean),
  };
}
