/**
 * The image port of the storage manager: resolves a kernel or rootfs reference
 * (or the default) to files on this node. Adapters: the default guest images
 * built by `make images` (src/storage/default-images.ts) and, later, OCI images.
 */
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

export interface ImageResolver {
  resolveKernel(ref: string | undefined): Promise<KernelImage>;
  resolveRootfs(ref: string | undefined): Promise<RootfsImage>;
}
