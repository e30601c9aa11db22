/**
 * The `ceph-rbd` volume backend: each volume is an RBD image `<pool>/<volume id>` driven through
 * the `rbd` CLI (Debian `ceph-common`), mapped to /dev/rbdN by the kernel client on the node
 * that runs the VM. Snapshots are RBD snapshots (protected, so they can be cloned); restore is an
 * `rbd clone` (copy-on-write layering), grown with `rbd resize` + resize2fs when asked for more.
 * An image is complete once it carries the image-meta `mvm.state=ready`; one without it is the
 * leftover of an interrupted create and is replaced.
 */
import { hostname } from 'node:os';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { VolumeAttachInfo, VolumeBackend, VolumeBackendCapabilities } from '../../core/ports/volumes.js';
import { growExt4, mkfsExt4, run } from './file-backend.js';

export interface CephRbdOptions {
  pool?: string;
  /** Ceph user (`--id`), e.g. `mvm` for client.mvm. */
  user?: string;
  /** ceph.conf path (`--conf`). */
  conf?: string;
  /** The rbd executable (default `rbd` on PATH). */
  rbd?: string;
  node?: string;
  /** Timeout of one rbd call. */
  timeoutMs?: number;
}

const MiB = 1024 * 1024;

export class CephRbdVolumeBackend implements VolumeBackend {
  readonly name = 'ceph-rbd';
  private readonly pool: string;
  private caps?: { at: number; value: VolumeBackendCapabilities };

  constructor(private readonly o: CephRbdOptions = {}) {
    this.pool = o.pool ?? 'rbd';
  }

  /** Arguments common to every call (exported for the unit test through `args`). */
  args(...rest: string[]): string[] {
    return [...(this.o.conf ? ['--conf', this.o.conf] : []), ...(this.o.user ? ['--id', this.o.user] : []), ...rest];
  }

  private image(id: string): string {
    if (!/^[A-Za-z0-9][A-Za-z0-9_-]*$/.test(id)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `bad volume id ${JSON.stringify(id)}`);
    return `${this.pool}/${id}`;
  }

  private rbd(...rest: string[]): Promise<string> {
    return run(this.o.rbd ?? 'rbd', this.args(...rest), this.o.timeoutMs ?? 60_000);
  }

  async capabilities(): Promise<VolumeBackendCapabilities> {
    if (this.caps && Date.now() - this.caps.at < 30_000) return this.caps.value;
    const base = { backend: this.name, copyOnWrite: true, atomicSnapshots: true, shared: true };
    let value: VolumeBackendCapabilities;
    try {
      await run(this.o.rbd ?? 'rbd', ['--version'], 10_000);
      try {
        await this.rbd('ls', '--pool', this.pool, '--format', 'json');
        value = { ...base, available: true };
      } catch (e) {
        value = { ...base, available: false, reason: `cannot reach the Ceph cluster (pool ${this.pool}): ${(e as Error).message}` };
      }
    } catch {
      value = { ...base, available: false, reason: 'the rbd CLI is not installed (Debian package ceph-common)' };
    }
    this.caps = { at: Date.now(), value };
    return value;
  }

  private async ready(id: string): Promise<boolean | undefined> {
    try {
      const v = (await this.rbd('image-meta', 'get', this.image(id), 'mvm.state')).trim();
      return v === 'ready';
    } catch (e) {
      if (isNoEnt(e)) {
        // The image exists without the key (interrupted create), or does not exist at all.
        return (await this.exists(id)) ? false : undefined;
      }
      throw e;
    }
  }

  private async exists(id: string): Promise<boolean> {
    try {
      await this.rbd('info', this.image(id), '--format', 'json');
      return true;
    } catch (e) {
      if (isNoEnt(e)) return false;
      throw e;
    }
  }

  async create(id: string, sizeBytes: number): Promise<void> {
    const state = await this.ready(id);
    if (state === true) return;
    if (state === false) await this.delete(id);
    await this.rbd('create', '--size', `${Math.ceil(sizeBytes / MiB)}M`, '--image-feature', 'layering', this.image(id));
    try {
      const dev = await this.map(id, false);
      try {
        await mkfsExt4(dev, id);
      } finally {
        await this.unmap(id);
      }
      await this.rbd('image-meta', 'set', this.image(id), 'mvm.state', 'ready');
    } catch (e) {
      await this.delete(id).catch(() => undefined);
      throw e;
    }
  }

  async delete(id: string): Promise<void> {
    await this.unmap(id);
    try {
      await this.rbd('rm', '--no-progress', this.image(id));
    } catch (e) {
      if (!isNoEnt(e)) throw e;
    }
  }

  async snapshot(volumeId: string, snapshotId: string): Promise<{ copyOnWrite: boolean }> {
    const snap = `${this.image(volumeId)}@${snapshotId}`;
    try {
      await this.rbd('snap', 'create', snap);
    } catch (e) {
      if (!/File exists/i.test((e as Error).message)) throw e;
    }
    try {
      await this.rbd('snap', 'protect', snap);
    } catch (e) {
      if (!/already protected|Device or resource busy/i.test((e as Error).message)) throw e;
    }
    return { copyOnWrite: true };
  }

  async deleteSnapshot(volumeId: string, snapshotId: string): Promise<void> {
    const snap = `${this.image(volumeId)}@${snapshotId}`;
    let children: Array<{ pool: string; image: string }>;
    try {
      children = JSON.parse((await this.rbd('children', snap, '--format', 'json')) || '[]') as Array<{ pool: string; image: string }>;
    } catch (e) {
      if (isNoEnt(e)) return;
      throw e;
    }
    // Volumes restored from it keep their data: copy the shared blocks into them first.
    for (const c of children) await this.rbd('flatten', '--no-progress', `${c.pool}/${c.image}`);
    try {
      await this.rbd('snap', 'unprotect', snap);
    } catch (e) {
      if (!/not protected/i.test((e as Error).message) && !isNoEnt(e)) throw e;
    }
    try {
      await this.rbd('snap', 'rm', '--no-progress', snap);
    } catch (e) {
      if (!isNoEnt(e)) throw e;
    }
  }

  async cloneFromSnapshot(volumeId: string, snapshotId: string, newId: string, sizeBytes: number): Promise<{ copyOnWrite: boolean }> {
    const state = await this.ready(newId);
    if (state === true) return { copyOnWrite: true };
    if (state === false) await this.delete(newId);
    await this.rbd('clone', `${this.image(volumeId)}@${snapshotId}`, this.image(newId));
    try {
      const info = JSON.parse(await this.rbd('info', this.image(newId), '--format', 'json')) as { size: number };
      if (sizeBytes > info.size) {
        await this.rbd('resize', '--no-progress', '--size', `${Math.ceil(sizeBytes / MiB)}M`, this.image(newId));
        const dev = await this.map(newId, false);
        try {
          await growExt4(dev);
        } finally {
          await this.unmap(newId);
        }
      }
      await this.rbd('image-meta', 'set', this.image(newId), 'mvm.state', 'ready');
    } catch (e) {
      await this.delete(newId).catch(() => undefined);
      throw e;
    }
    return { copyOnWrite: true };
  }

  /** Kernel mappings of this node: `rbd device list`. */
  async mappings(): Promise<Array<{ pool: string; name: string; device: string }>> {
    const out = await this.rbd('device', 'list', '--format', 'json');
    return (JSON.parse(out || '[]') as Array<{ pool: string; name: string; device: string }>).filter((m) => m.pool === this.pool);
  }

  private async map(id: string, readOnly: boolean): Promise<string> {
    const existing = (await this.mappings()).find((m) => m.name === id);
    if (existing) return existing.device;
    const dev = (await this.rbd('device', 'map', ...(readOnly ? ['--read-only'] : []), this.image(id))).trim();
    if (!dev.startsWith('/')) throw new MvmError(ErrorCodes.INTERNAL, `rbd map ${this.image(id)} printed ${JSON.stringify(dev)}, not a device`);
    return dev;
  }

  private async unmap(id: string): Promise<void> {
    for (const m of (await this.mappings()).filter((x) => x.name === id)) {
      try {
        await this.rbd('device', 'unmap', m.device);
      } catch (e) {
        // Still open by another VM on this node (a second reader): it keeps the mapping.
        if (!/busy/i.test((e as Error).message)) throw e;
      }
    }
  }

  async attach(id: string, _node: string, o: { readOnly: boolean; holder: string }): Promise<VolumeAttachInfo> {
    return { path: await this.map(id, o.readOnly), kind: 'block', format: 'raw' };
  }

  async detach(id: string, _node: string, _o: { holder: string }): Promise<void> {
    await this.unmap(id);
  }

  async list(): Promise<{ volumes: string[]; snapshots: Array<{ volumeId?: string; snapshotId: string }>; partial: string[] }> {
    const names = JSON.parse((await this.rbd('ls', '--pool', this.pool, '--format', 'json')) || '[]') as string[];
    return { volumes: names.filter((n) => n.startsWith('vol-')), snapshots: [], partial: [] };
  }

  async removePartial(_name: string): Promise<void> {
    /* an interrupted create leaves an image without mvm.state=ready, replaced by the next create */
  }

  get nodeName(): string {
    return this.o.node ?? hostname();
  }
}

const isNoEnt = (e: unknown): boolean => /No such file or directory|\(2\)|does not exist|not found/i.test((e as Error).message ?? '');
