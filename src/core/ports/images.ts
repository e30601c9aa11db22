/**
 * The image port of the storage manager: resolves a kernel or rootfs reference
 * (or the default) to files on this node. Adapters: the default guest images
 * built by `make images` (src/storage/default-images.ts) and, later, OCI images.
 */
import type { ImagePolicy } from '../image-policy.js';

export interface KernelImage {
  /** Uncompressed ELF vmlinux (PVH-bootable by QEMU microvm and Firecracker). */
  kernelPath: string;
  /** Boot initramfs that loads the virtio modules and switch_roots to /dev/vda. */
  initrdPath?: string;
  version: string;
}

export interface RootfsImage {
  path: string;
  format: 'raw' | 'qcow2';
  sizeBytes: number;
  /** Content digest of the image (cache key). */
  digest: string;
  /** The guest init to boot with (`init=` on the kernel command line); absent: the image's /sbin/init. */
  init?: string;
}

/** Who an image is resolved for: the tenant's image policy applies (ADR 0024). */
export interface ImageContext {
  tenant?: string;
}

export interface ImageResolver {
  resolveKernel(ref: string | undefined, ctx?: ImageContext): Promise<KernelImage>;
  resolveRootfs(ref: string | undefined, ctx?: ImageContext): Promise<RootfsImage>;
}

/**
 * Admission of image references by the admin's image policy (registries allowed), without any
 * network access: REGISTRY_NOT_ALLOWED naming `field`. `default`, an omitted reference and a
 * kernel host path pass. The tenant as an id (looked up) or as its record.
 */
export interface ImageAdmission {
  admit(ref: string | undefined, field: string, tenant: string | { id: string; imagePolicy?: ImagePolicy | undefined }): Promise<void>;
}

/** A cached image on this node (an OCI root filesystem or an extracted kernel). */
export interface CachedImage {
  kind: 'rootfs' | 'kernel';
  /** Cache key: the digest the reference resolved to (content sha256 for a kernel file). */
  digest: string;
  /** Every reference that resolved to it. */
  references: string[];
  /** Host disk space actually used (allocated blocks of all its files). */
  sizeBytes: number;
  /** Apparent size of the root filesystem / kernel. */
  imageSizeBytes: number;
  createdAt: string;
  lastUsedAt: string;
  /** MicroVMs whose spec names it (any phase, so a VM being created counts). */
  inUse: number;
  /** Cluster mode: the node whose cache holds it (an image cached on several nodes is listed once per node). */
  node?: string;
}

/** Cluster mode: a node whose agent was not asked or did not answer, so the result is partial. */
export interface NodeWarning {
  node: string;
  message: string;
}

/** A list or delete result; cluster mode adds `warnings` when some node did not answer. */
export type ImageList = CachedImage[] & { warnings?: NodeWarning[] };

export interface ImageGcResult {
  removed: Array<{ kind: 'rootfs' | 'kernel'; digest: string; sizeBytes: number; node?: string }>;
  freedBytes: number;
  keptInUse: number;
  remainingBytes: number;
  /** Cluster mode: each node's own result (the totals above are their sums). */
  nodes?: Array<{ node: string; removed: ImageGcResult['removed']; freedBytes: number; keptInUse: number; remainingBytes: number }>;
  warnings?: NodeWarning[];
}

/** The image cache as an administrator sees it: list, delete (refused while used), garbage-collect. */
export interface ImageCatalog {
  list(): Promise<ImageList>;
  delete(digest: string): Promise<ImageList>;
  gc(o?: { maxIdleMs?: number; maxBytes?: number }): Promise<ImageGcResult>;
}
