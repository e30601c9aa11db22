/**
 * The volume backend contract (test/contract/volume.contract.ts) against each adapter:
 * local (real files, mkfs.ext4), ceph-rbd driven through a fake `rbd` on PATH, and the real
 * nfs / ceph-rbd where a server exists (skipping with the reason otherwise).
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CephRbdVolumeBackend, LocalVolumeBackend, NfsVolumeBackend } from '../../src/storage/volumes/index.js';
import { volumeContract } from '../contract/volume.contract.js';
import { installFakeRbd } from '../support/fake-rbd.js';

volumeContract('local', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-vol-local-'));
  return { backend: new LocalVolumeBackend({ dir }), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
});

volumeContract('ceph-rbd (fake rbd CLI)', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-vol-fakerbd-'));
  const fake = installFakeRbd(dir);
  const undo = fake.activate();
  return {
    backend: new CephRbdVolumeBackend({ pool: 'mvm' }),
    cleanup: () => {
      undo();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});

volumeContract('nfs', async () => {
  const dir = process.env.MVM_TEST_NFS_DIR;
  if (!dir) return { backend: new NfsVolumeBackend({ dir: '/nonexistent' }), skip: 'no NFS server: set MVM_TEST_NFS_DIR to a directory on a mounted NFS export', cleanup: () => undefined };
  const sub = join(dir, `mvm-contract-${process.pid}`);
  const backend = new NfsVolumeBackend({ dir: sub });
  const caps = await backend.capabilities();
  if (!caps.available) return { backend, skip: `nfs backend unavailable: ${caps.reason}`, cleanup: () => undefined };
  return { backend, cleanup: () => rmSync(sub, { recursive: true, force: true }) };
});

volumeContract('ceph-rbd (real cluster)', async () => {
  const pool = process.env.MVM_TEST_RBD_POOL;
  const backend = new CephRbdVolumeBackend({ pool: pool ?? 'rbd', ...(process.env.MVM_TEST_RBD_USER ? { user: process.env.MVM_TEST_RBD_USER } : {}) });
  if (!pool) {
    let why = 'no Ceph cluster: set MVM_TEST_RBD_POOL (and MVM_TEST_RBD_USER) to run against one';
    try {
      execFileSync('rbd', ['--version'], { stdio: 'ignore' });
    } catch {
      why += '; the rbd CLI (ceph-common) is not installed either';
    }
    return { backend, skip: why, cleanup: () => undefined };
  }
  const caps = await backend.capabilities();
  return { backend, ...(caps.available ? {} : { skip: `ceph-rbd unavailable: ${caps.reason}` }), cleanup: () => undefined };
});
