/**
 * The volume storage backend port (issue 6, ADR 0018): where a persistent volume's bytes live
 * and how a node turns one into a block device for a VMM.
 *
 * A volume is always a raw block device holding an ext4 filesystem (formatted by `create`), so
 * every backend serves both VMM drivers (Firecracker attaches raw block devices only). Adapters:
 * `local` (sparse files in a directory), `nfs` (sparse files on an NFS mount, with lock files and
 * fsync), `ceph-rbd` (RBD images through the `rbd` CLI, `rbd map`ped to /dev/rbdN). A Kubernetes
 * PVC with `volumeMode: Block` fits the same port: create = a PVC, attach = the `volumeDevices`
 * path in the node's pod, snapshot = a VolumeSnapshot, cloneFromSnapshot = a PVC with a
 * `dataSource`.
 *
 * Every method is idempotent (the reconcile loop retries them), and `create`/`snapshot`/
 * `cloneFromSnapshot` leave either a complete object or nothing with that id.
 */

export interface VolumeBackendCapabilities {
  backend: string;
  /** False when the backend cannot serve here (no mount, no `rbd`, no cluster); `reason` says why. */
  available: boolean;
  reason?: string;
  /** Snapshots and restores share blocks (reflink, RBD snapshot/clone) instead of copying. */
  copyOnWrite: boolean;
  /** A snapshot of a volume a running VM writes to is crash-consistent (atomic). */
  atomicSnapshots: boolean;
  /** Reachable from every node (a volume may follow its VM to another node). */
  shared: boolean;
}

/** What a node's VMM opens for an attached volume. */
export interface VolumeAttachInfo {
  /** A regular file or a block device (/dev/rbd0, a PVC's volumeDevices path). */
  path: string;
  kind: 'file' | 'block';
  format: 'raw';
}

export interface VolumeBackend {
  readonly name: string;
  capabilities(): Promise<VolumeBackendCapabilities>;
  /** A new volume of `sizeBytes`, formatted ext4. Idempotent: an existing complete volume is kept. */
  create(id: string, sizeBytes: number): Promise<void>;
  /** Removes the volume (absent is fine). */
  delete(id: string): Promise<void>;
  /** A point-in-time copy of the volume; `copyOnWrite` tells whether blocks are shared. */
  snapshot(volumeId: string, snapshotId: string): Promise<{ copyOnWrite: boolean }>;
  deleteSnapshot(volumeId: string, snapshotId: string): Promise<void>;
  /** A new volume `newId` with the snapshot's content, grown to `sizeBytes` (≥ the snapshot's size). */
  cloneFromSnapshot(volumeId: string, snapshotId: string, newId: string, sizeBytes: number): Promise<{ copyOnWrite: boolean }>;
  /** Make the volume usable by a VMM on `node` (map it); idempotent. */
  attach(id: string, node: string, o: { readOnly: boolean; holder: string }): Promise<VolumeAttachInfo>;
  /** Undo `attach` for `holder` (unmap, release the lock); absent is fine. */
  detach(id: string, node: string, o: { holder: string }): Promise<void>;
  /** Ids present in the backend (complete ones and leftovers of interrupted work), for reconcile. */
  list(): Promise<{ volumes: string[]; snapshots: Array<{ volumeId?: string; snapshotId: string }>; partial: string[] }>;
  /** Remove a leftover reported in `list().partial`. */
  removePartial(name: string): Promise<void>;
}

/** A volume attached to a VM, as the node agent hands it to the VMM and the guest. */
export interface VmVolumeDrive {
  name: string;
  volumeId: string;
  path: string;
  readOnly: boolean;
  mountPath: string;
}

/** How the node agent gets (and gives back) the volumes of a VM it starts (and stops). */
export interface VolumeAttacher {
  attachForVm(vm: { id: string; tenant: string; spec: { volumes?: Array<{ name: string; mountPath: string; readOnly?: boolean }> } }, node: string): Promise<VmVolumeDrive[]>;
  detachForVm(vmId: string, node: string): Promise<void>;
}
