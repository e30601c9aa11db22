/**
 * The volume backends of a node, from the environment:
 *   local (always):              <dataDir>/volumes
 *   MVM_VOLUME_NFS_DIR=<path>     nfs, on that NFS-mounted directory
 *   MVM_VOLUME_RBD_POOL=<pool>    ceph-rbd, with MVM_VOLUME_RBD_USER / MVM_VOLUME_RBD_CONF
 *   MVM_VOLUME_DEFAULT_BACKEND    the backend of volumes created without one (default local)
 */
import { join } from 'node:path';
import type { VolumeBackend } from '../../core/ports/volumes.js';
import { CephRbdVolumeBackend } from './ceph-rbd.js';
import { LocalVolumeBackend } from './file-backend.js';
import { NfsVolumeBackend } from './nfs.js';

export { CephRbdVolumeBackend } from './ceph-rbd.js';
export { FileVolumeBackend, LocalVolumeBackend } from './file-backend.js';
export { NfsVolumeBackend } from './nfs.js';

export function volumeBackendsFromEnv(
  env: NodeJS.ProcessEnv,
  o: { dataDir: string; owner?: { uid: number; gid: number }; node?: string },
): { backends: VolumeBackend[]; defaultBackend: string } {
  const owner = o.owner ? { owner: o.owner } : {};
  const backends: VolumeBackend[] = [new LocalVolumeBackend({ dir: join(o.dataDir, 'volumes'), ...owner })];
  if (env.MVM_VOLUME_NFS_DIR) backends.push(new NfsVolumeBackend({ dir: env.MVM_VOLUME_NFS_DIR, ...owner, ...(o.node ? { node: o.node } : {}) }));
  if (env.MVM_VOLUME_RBD_POOL) {
    backends.push(
      new CephRbdVolumeBackend({
        pool: env.MVM_VOLUME_RBD_POOL,
        ...(env.MVM_VOLUME_RBD_USER ? { user: env.MVM_VOLUME_RBD_USER } : {}),
        ...(env.MVM_VOLUME_RBD_CONF ? { conf: env.MVM_VOLUME_RBD_CONF } : {}),
        ...(o.node ? { node: o.node } : {}),
      }),
    );
  }
  return { backends, defaultBackend: env.MVM_VOLUME_DEFAULT_BACKEND ?? 'local' };
}
