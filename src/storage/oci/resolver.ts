/**
 * ImageResolver adapter for OCI images: `rootfs.image` references other than
 * `default` are pulled, built and cached by OciImageCache; the kernel and the
 * `default` rootfs come from the fallback resolver (the default images).
 * Boot such a rootfs with `init=/.mvm/init` on the kernel command line.
 */
import type { ImageResolver, KernelImage, RootfsImage } from '../../core/ports/images.js';
import { OciImageCache, type OciCacheOptions, type ResolvedOciRootfs } from './cache.js';
import { OCI_INIT_PATH } from './init-script.js';
import { isOciReference } from './reference.js';

export class OciImageResolver implements ImageResolver {
  readonly cache: OciImageCache;
  private readonly fallback: ImageResolver;

  constructor(fallback: ImageResolver, opts: OciCacheOptions = {}) {
    this.fallback = fallback;
    this.cache = new OciImageCache(opts);
  }

  resolveKernel(ref: string | undefined): Promise<KernelImage> {
    return this.fallback.resolveKernel(ref);
  }

  async resolveRootfs(ref: string | undefined): Promise<RootfsImage> {
    if (!isOciReference(ref)) return this.fallback.resolveRootfs(ref);
    const e = await this.cache.resolve(ref);
    return { path: e.rootfsPath, format: 'raw', sizeBytes: e.sizeBytes, digest: e.digest, init: OCI_INIT_PATH };
  }

  /** Full entry (process spec, config, cache hit) for an OCI reference. */
  resolveOci(ref: string, o: { sizeBytes?: number } = {}): Promise<ResolvedOciRootfs> {
    return this.cache.resolve(ref, o);
  }

  /** The `init=` value for a rootfs reference (undefined: keep the default /sbin/init). */
  static initFor(ref: string | undefined): string | undefined {
    return isOciReference(ref) ? OCI_INIT_PATH : undefined;
  }
}
