/**
 * The contract of a VolumeBackend (src/core/ports/volumes.ts), run against every adapter:
 * create gives an ext4 device, every step is idempotent, a snapshot keeps the data as it was,
 * a restore gets it (grown when asked), snapshots and volumes are independent once made, and
 * delete leaves nothing. The data is written and read with debugfs (e2fsprogs) on the path
 * `attach` returns, as a VMM would open it.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { VolumeBackend } from '../../src/core/ports/volumes.js';

export interface VolumeContractSubject {
  backend: VolumeBackend;
  /** Set when the backend cannot run here: every test skips with this reason. */
  skip?: string;
  cleanup(): Promise<void> | void;
}

const MiB = 1024 * 1024;

const fsType = (path: string): string => execFileSync('blkid', ['-p', '-o', 'value', '-s', 'TYPE', path], { encoding: 'utf8' }).trim();

function writeFile(dev: string, name: string, content: string): void {
  const tmp = mkdtempSync(join(tmpdir(), 'mvm-volc-'));
  try {
    writeFileSync(join(tmp, 'f'), content);
    execFileSync('debugfs', ['-w', '-R', `rm /${name}`, dev], { stdio: 'ignore' });
    execFileSync('debugfs', ['-w', '-R', `write ${join(tmp, 'f')} /${name}`, dev], { stdio: 'ignore' });
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}

const readFile = (dev: string, name: string): string => execFileSync('debugfs', ['-R', `cat /${name}`, dev], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });

const blockCount = (dev: string): number => {
  const out = execFileSync('dumpe2fs', ['-h', dev], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  const bs = Number(/Block size:\s+(\d+)/.exec(out)?.[1]);
  return (Number(/Block count:\s+(\d+)/.exec(out)?.[1]) * bs) / MiB;
};

export function volumeContract(name: string, make: () => Promise<VolumeContractSubject>): void {
  describe(`volume backend contract: ${name}`, () => {
    let s: VolumeContractSubject | undefined;
    const tag = `${process.pid}${Date.now().toString(36)}`;
    const vol = `vol-c${tag}`;
    const snap = `vsnap-c${tag}`;
    const restored = `vol-r${tag}`;
    const node = 'contract-node';
    const subject = async (): Promise<VolumeContractSubject> => (s ??= await make());

    test('capabilities', async (t) => {
      const x = await subject();
      if (x.skip) return t.skip(x.skip);
      const caps = await x.backend.capabilities();
      assert.equal(caps.available, true, caps.reason);
      assert.equal(caps.backend, x.backend.name);
      assert.equal(typeof caps.copyOnWrite, 'boolean');
    });

    test('create gives an ext4 volume; create again is a no-op keeping the data', async (t) => {
      const x = await subject();
      if (x.skip) return t.skip(x.skip);
      await x.backend.create(vol, 32 * MiB);
      assert.ok((await x.backend.list()).volumes.includes(vol));
      const a = await x.backend.attach(vol, node, { readOnly: false, holder: 'vm-a' });
      assert.ok(existsSync(a.path), a.path);
      assert.equal(a.format, 'raw');
      assert.equal(fsType(a.path), 'ext4');
      writeFile(a.path, 'hello.txt', 'first');
      await x.backend.detach(vol, node, { holder: 'vm-a' });
      await x.backend.create(vol, 32 * MiB);
      const b = await x.backend.attach(vol, node, { readOnly: true, holder: 'vm-b' });
      assert.equal(readFile(b.path, 'hello.txt'), 'first');
      await x.backend.detach(vol, node, { holder: 'vm-b' });
    });

    test('a snapshot keeps the data as it was; a restore gets it, grown on request', async (t) => {
      const x = await subject();
      if (x.skip) return t.skip(x.skip);
      const r = await x.backend.snapshot(vol, snap);
      assert.equal(typeof r.copyOnWrite, 'boolean');
      await x.backend.snapshot(vol, snap); // idempotent
      const a = await x.backend.attach(vol, node, { readOnly: false, holder: 'vm-a' });
      writeFile(a.path, 'hello.txt', 'second');
      await x.backend.detach(vol, node, { holder: 'vm-a' });
      await x.backend.cloneFromSnapshot(vol, snap, restored, 64 * MiB);
      const c = await x.backend.attach(restored, node, { readOnly: true, holder: 'vm-c' });
      assert.equal(readFile(c.path, 'hello.txt'), 'first', 'the restore has the snapshot-time data');
      assert.ok(blockCount(c.path) >= 63, `the filesystem was grown (${blockCount(c.path)} MiB)`);
      await x.backend.detach(restored, node, { holder: 'vm-c' });
      const o = await x.backend.attach(vol, node, { readOnly: true, holder: 'vm-d' });
      assert.equal(readFile(o.path, 'hello.txt'), 'second', 'the origin keeps its own data');
      await x.backend.detach(vol, node, { holder: 'vm-d' });
    });

    test('deleting the snapshot leaves the restored volume intact; delete removes everything, twice is fine', async (t) => {
      const x = await subject();
      if (x.skip) return t.skip(x.skip);
      await x.backend.deleteSnapshot(vol, snap);
      await x.backend.deleteSnapshot(vol, snap);
      const c = await x.backend.attach(restored, node, { readOnly: true, holder: 'vm-c' });
      assert.equal(readFile(c.path, 'hello.txt'), 'first');
      await x.backend.detach(restored, node, { holder: 'vm-c' });
      for (const id of [vol, restored]) {
        await x.backend.delete(id);
        await x.backend.delete(id);
      }
      const l = await x.backend.list();
      assert.ok(!l.volumes.includes(vol) && !l.volumes.includes(restored));
      assert.ok(!l.snapshots.some((z) => z.snapshotId === snap));
      await assert.rejects(x.backend.attach(vol, node, { readOnly: true, holder: 'vm-e' }));
      await x.cleanup();
    });
  });
}
