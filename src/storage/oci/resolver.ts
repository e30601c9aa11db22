/**
 * ImageResolver adapter for OCI images: `rootfs.image` references other than
 * `default` are pulled, built and cached by OciImageCache; `kernel.image`
 * references (an OCI image holding a kernel, or a host path under an allowed
 * directory) by KernelImageCache. `default`/omitted come from the fallback
 * resolver (the default images). Boot an OCI rootfs with `init=/.mvm/init`.
 */
import type { ImageContext, ImageResolver, KernelImage, RootfsImage } from '../../core/ports/images.js';
import { KernelImageCache, type KernelCacheOptions } from '../kernel/kernel-cache.js';
import { OciImageCache, type OciCacheOptions, type ResolvedOciRootfs } from './cache.js';
import { OCI_INIT_PATH } from './init-script.js';
import { isOciReference } from './reference.js';

export class OciImageResolver implements ImageResolver {
  readonly cache: OciImageCache;
  readonly kernels: KernelImageCache;
  private readonly fallback: ImageResolver;

  constructor(fallback: ImageResolver, opts: OciCacheOptions & Pick<KernelCacheOptions, 'kernelDirs'> = {}) {
    this.fallback = fallback;
    this.cache = new OciImageCache(opts);
    this.kernels = new KernelImageCache(opts);
  }

  async resolveKernel(ref: string | undefined, ctx: ImageContext = {}): Promise<KernelImage> {
    if (!isOciReference(ref)) return this.fallback.resolveKernel(ref);
    const k = await this.kernels.resolve(ref, ctx.tenant !== undefined ? { tenant: ctx.tenant } : {});
    let initrdPath = k.initrdPath;
    if (!initrdPath && k.version) {
      // No initrd in the image: the default boot initrd carries the default kernel's virtio modules,
      // so it fits a kernel of exactly that release (e.g. the same kernel shipped as an image).
      const def = await this.fallback.resolveKernel(undefined).catch(() => undefined);
      if (def?.initrdPath && def.version === k.version) initrdPath = def.initrdPath;
    }
    return { kernelPath: k.kernelPath, ...(initrdPath ? { initrdPath } : {}), version: k.version ?? `image ${k.digest.slice(0, 19)}` };
  }

  async resolveRootfs(ref: string | undefined, ctx: ImageContext = {}): Promise<RootfsImage> {
    if (!isOciReference(ref)) return this.fallback.resolveRootfs(ref);
    const e = await this.cache.resolve(ref, ctx.tenant !== undefined ? { tenant: ctx.tenant } : {});
    return { path: e.rootfsPath, format: 'raw', sizeBytes: e.sizeBytes, digest: e.digest, init: OCI_INIT_PATH };
  }

  /** Full entry (process spec, config, cache hit) for an OCI reference. */
  resolveOci(ref: string, o: { sizeBytes?: number; tenant?: string } = {}): Promise<ResolvedOciRootfs> {
    return this.cache.resolve(ref, o);
  }

  /** The `init=` value for a rootfs reference (undefined: keep the default /sbin/init). */
  static initFor(ref: string | undefined): string | undefined {
    return isOciReference(ref) ? OCI_INIT_PATH : undefined;
  }
}
