/**
 * Content-addressed cache of OCI root filesystems, keyed by the digest the
 * reference resolves to:
 *
 *   <cacheDir>/oci/<alg>-<hex>[-s<bytes>]/{rootfs.ext4,metadata.json,last-used,references}
 *
 * (`-s<bytes>` only for an explicitly requested size). Built, published,
 * deduplicated and tracked by the digest cache (../digest-cache.ts).
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { DigestCache, defaultCacheDir, entryName, type DigestCacheEntryFields } from '../digest-cache.js';
import { buildRootfs, type GuestProcessSpec } from './build.js';
import { OCI_INIT_PATH, OCI_INIT_SCRIPT } from './init-script.js';
import { guestAgentBinary } from '../guest-agent.js';
import { type ImageProcessConfig, type PullOptions, pullImage, resolveDigest } from './pull.js';
import { type ImagePolicyGate, parseReferenceFor } from './policy.js';
import type { ImageReference } from './reference.js';
import { verifyImageSignature } from './signature.js';

export { clearLeases, defaultCacheDir, setResolveLeaseMs } from '../digest-cache.js';

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

export interface OciCacheEntry extends OciCacheMetadata, DigestCacheEntryFields {}

export interface ResolvedOciRootfs extends OciCacheEntry {
  /** True when the entry was already in the cache (no pull, no build). */
  cacheHit: boolean;
}

export interface OciCacheOptions extends PullOptions {
  cacheDir?: string;
  busyboxPath?: string;
  /** The guest agent to put at /.mvm/mvm-agent (default: guestAgentBinary(); `null`: none). */
  guestAgent?: string | null;
  /**
   * The admin's image policy, checked right before every pull (registry allowed; signature
   * verified before any layer is fetched, on cache hits too). The service always sets it
   * (src/agent/node-runtime.ts); without one (library use) nothing is checked.
   */
  policy?: ImagePolicyGate;
}

/** A short hash of what a root filesystem build adds to an image: the builder version, the init, the guest agent. */
function builtInKey(agent: { digest: string } | undefined): string {
  return createHash('sha256').update(`${OCI_BUILDER_VERSION}\0${OCI_INIT_SCRIPT}\0${agent?.digest ?? 'no-agent'}`).digest('hex').slice(0, 8);
}

export class OciImageCache {
  readonly root: string;
  private readonly opts: OciCacheOptions;
  private readonly entries: DigestCache<OciCacheMetadata, { rootfsPath: string }>;

  constructor(opts: OciCacheOptions = {}) {
    this.opts = opts;
    this.root = join(resolve(opts.cacheDir ?? defaultCacheDir()), 'oci');
    this.entries = new DigestCache({ root: this.root, files: (dir) => ({ rootfsPath: join(dir, 'rootfs.ext4') }), ...(opts.log ? { log: opts.log } : {}) });
  }

  /**
   * Resolve a reference to a cached ext4 root filesystem, pulling and building
   * it when absent. A tag costs one manifest request when cached; a digest
   * reference none.
   */
  async resolve(reference: string | ImageReference, options: { sizeBytes?: number; tenant?: string; field?: string } = {}): Promise<ResolvedOciRootfs> {
    const field = options.field ?? 'rootfs.image';
    const ref = typeof reference === 'string' ? parseReferenceFor(reference, field) : reference;
    const signature = await this.opts.policy?.beforePull(ref, field, options.tenant);
    const digest = await resolveDigest(ref, this.opts);
    // Per resolve, cache hit or not: the entry may have been pulled for a tenant with another policy.
    if (signature) await verifyImageSignature(ref, digest, signature, field, this.opts);
    const agent = this.agent();
    return this.entries.resolve({
      // What is built in (the init, the guest agent) is part of the name: a new one builds anew.
      name: entryName(digest, `${options.sizeBytes !== undefined ? `-s${options.sizeBytes}` : ''}-b${builtInKey(agent)}`),
      reference: ref.canonical,
      failure: 'building the root filesystem',
      build: (tmp, finalDir) => this.build(ref, digest, tmp, finalDir, options.sizeBytes),
    });
  }

  private async build(ref: ImageReference, digest: string, tmp: string, finalDir: string, sizeBytes: number | undefined): Promise<Omit<OciCacheMetadata, 'builtAt' | 'buildMs'>> {
    const pulled = await pullImage(ref, join(tmp, 'layout'), { ...this.opts, digest });
    const built = await buildRootfs({
      pulled,
      workDir: tmp,
      outPath: join(tmp, 'rootfs.ext4'),
      ...(sizeBytes !== undefined ? { sizeBytes } : {}),
      ...(this.opts.busyboxPath ? { busyboxPath: this.opts.busyboxPath } : {}),
      ...(this.agent() ? { agentPath: this.agent()!.path } : {}),
      log: this.opts.log ?? (() => undefined),
    });
    await rm(join(tmp, 'layout'), { recursive: true, force: true });
    await rm(join(tmp, 'bundle'), { recursive: true, force: true });
    return {
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
    };
  }

  /** The guest agent put into every root filesystem built here (undefined: none could be built; logged once). */
  private agent(): { path: string; digest: string } | undefined {
    if (this.opts.guestAgent === null) return undefined;
    const a = this.opts.guestAgent ? { path: this.opts.guestAgent, digest: `sha256:${createHash('sha256').update(readFileSync(this.opts.guestAgent)).digest('hex')}` } : guestAgentBinary({ cacheDir: this.opts.cacheDir ?? defaultCacheDir() });
    if ('missing' in a) {
      if (!this.warnedNoAgent) this.opts.log?.(`warning: OCI root filesystems are built without the guest agent: ${a.missing}`);
      this.warnedNoAgent = true;
      return undefined;
    }
    return a;
  }
  private warnedNoAgent = false;

  /** Remove temp build dirs left by dead builders (or older than 6 h). */
  cleanStaleBuilds(): Promise<string[]> {
    return this.entries.cleanStaleBuilds();
  }

  /** Complete entries, most recently used first. */
  list(): Promise<OciCacheEntry[]> {
    return this.entries.list();
  }

  /** Delete every entry (all sizes) of a digest; returns the removed dirs. */
  async delete(digest: string): Promise<string[]> {
    const removed: string[] = [];
    for (const entry of await this.list()) {
      if (entry.digest === digest) {
        await this.entries.remove(entry.dir);
        removed.push(entry.dir);
      }
    }
    return removed;
  }

  /** Being built, or resolved recently for a microVM being created. */
  busy(entry: OciCacheEntry): boolean {
    return this.entries.busy(entry.dir);
  }

  /**
   * Remove entries not in use: `inUse` holds digests or rootfs paths (of VMs
   * whose disks are based on them); only entries unused for `minIdleMs`
   * (default 0) go. Also removes stale temp dirs.
   */
  async gc(options: { inUse?: Iterable<string>; minIdleMs?: number } = {}): Promise<{ removed: string[]; kept: string[] }> {
    await this.cleanStaleBuilds();
    const inUse = new Set(options.inUse ?? []);
    const removed: string[] = [];
    const kept: string[] = [];
    const now = Date.now();
    for (const entry of await this.list()) {
      const idle = now - Date.parse(entry.lastUsedAt);
      if (inUse.has(entry.digest) || inUse.has(entry.rootfsPath) || inUse.has(entry.dir) || idle < (options.minIdleMs ?? 0) || this.busy(entry)) {
        kept.push(entry.dir);
      } else {
        await this.entries.remove(entry.dir);
        removed.push(entry.dir);
      }
    }
    return { removed, kept };
  }
}
