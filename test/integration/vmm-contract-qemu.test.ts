/**
 * The VMM contract against the QEMU driver with real guests (the default
 * images: Debian cloud kernel, busybox rootfs on a qcow2 overlay), plus the
 * QEMU-specific parts of snapshots: clones never share a writable disk, and an
 * incompatible restore is refused before anything starts.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import type { LaunchSpec, SnapshotFiles, VmmInstance } from '../../src/core/ports/vmm.js';
import { DefaultImageResolver, defaultCacheDir } from '../../src/storage/default-images.js';
import { createOverlay } from '../../src/storage/disks.js';
import { pidAlive } from '../../src/vmm/proc.js';
import { QemuDriver } from '../../src/vmm/qemu/qemu-driver.js';
import { prepareRestoreDisk, prepareRestoreDrives, readSnapshotRecord } from '../../src/vmm/qemu/snapshot.js';
import { guestRun } from '../support/console.js';
import { vmmContract } from '../contract/vmm.contract.js';

const execFileP = promisify(execFile);
const root = mkdtempSync(join(tmpdir(), 'vmm-ct-qemu-'));
const cacheDir = defaultCacheDir();
const resolver = new DefaultImageResolver({ cacheDir });
const haveQemu = spawnSync('qemu-system-x86_64', ['--version']).status === 0 && spawnSync('qemu-img', ['--version']).status === 0;

let images: { kernelPath: string; initrdPath?: string; rootfs: string } | undefined;
async function imgs(): Promise<{ kernelPath: string; initrdPath?: string; rootfs: string }> {
  if (!images) {
    const k = await resolver.resolveKernel(undefined);
    const r = await resolver.resolveRootfs(undefined);
    images = { kernelPath: k.kernelPath, ...(k.initrdPath ? { initrdPath: k.initrdPath } : {}), rootfs: r.path };
  }
  return images;
}

const makeDriver = async (): Promise<QemuDriver> => {
  const i = haveQemu ? await imgs() : undefined;
  return new QemuDriver({ cacheDir, ...(i ? { probeKernelPath: i.kernelPath } : {}), ...(process.env.MVM_ACCEL ? { accel: process.env.MVM_ACCEL } : {}) });
};

async function spec(id: string, vmDir: string): Promise<LaunchSpec> {
  const i = await imgs();
  mkdirSync(vmDir, { recursive: true });
  const overlay = join(vmDir, 'root.qcow2');
  await createOverlay({ base: i.rootfs, baseFormat: 'raw', path: overlay });
  return {
    id,
    name: id,
    vcpu: 1,
    memoryMiB: 128,
    kernelPath: i.kernelPath,
    ...(i.initrdPath ? { initrdPath: i.initrdPath } : {}),
    cmdline: `console=ttyS0 reboot=k panic=-1 root=/dev/vda rw mvm.id=${id} mvm.name=${id}`,
    drives: [{ id: 'root', path: overlay, format: 'qcow2', readOnly: false, root: true }],
    nics: [],
    vmDir,
    cgroupProcs: [],
  };
}

/** The agent's restore: same shape as the source, a new overlay over the snapshot's disk copy. */
async function restoreSpec(snap: SnapshotFiles, source: LaunchSpec, id: string, vmDir: string): Promise<LaunchSpec> {
  const drives = await prepareRestoreDrives(snap.dir, vmDir);
  return { ...source, id, name: id, vmDir, drives, restoreFrom: snap };
}

const countTicks = (vmDir: string): number => {
  try {
    return readFileSync(join(vmDir, 'console.log'), 'utf8').match(/^TICK\r?$/gm)?.length ?? 0;
  } catch {
    return 0;
  }
};

if (!haveQemu) {
  it('QEMU VMM contract', { skip: 'qemu-system-x86_64 / qemu-img not installed (run make deps)' }, () => undefined);
} else {
  vmmContract('qemu', makeDriver, {
    root,
    spec,
    restoreSpec,
    memory: {
      write: async (_i, s) => {
        const mark = `mem-${Math.random().toString(16).slice(2, 10)}`;
        await guestRun(s.vmDir, `echo ${mark} > /tmp/mvm-mark`);
        return mark;
      },
      read: async (_i, s) => /mem-[0-9a-f]+/.exec(await guestRun(s.vmDir, 'cat /tmp/mvm-mark'))?.[0] ?? '',
    },
    consoleRun: (s, cmd) => guestRun(s.vmDir, cmd),
    progress: {
      // A guest loop printing a line every 0.2 s; the tty echo of the typed command reads `TI""CK`, not `TICK`.
      start: async (_i, s) => void (await guestRun(s.vmDir, '(while :; do echo TI""CK; sleep 0.2; done) & echo $! > /tmp/ticker.pid')),
      read: (_i, s) => countTicks(s.vmDir),
      stop: async (_i, s) => void (await guestRun(s.vmDir, 'kill $(cat /tmp/ticker.pid)')),
    },
    readyTimeoutMs: 45_000,
    stopTimeoutMs: 15_000,
  });

  describe('qemu snapshots: clones and compatibility', () => {
    const live: VmmInstance[] = [];
    let driver: QemuDriver;
    let source: LaunchSpec;
    let snap: SnapshotFiles;
    let coldMs = 0;
    let snapMs = 0;
    const launch = async (s: LaunchSpec): Promise<VmmInstance> => {
      const i = await driver.launch(s);
      live.push(i);
      return i;
    };

    before(async () => {
      driver = await makeDriver();
      const vmDir = join(root, 'src-c');
      source = await spec('src-c', vmDir);
      const t0 = Date.now();
      const c = await launch(source);
      while (!readFileSync(c.consolePath, 'utf8').includes('MVM-READY id=src-c')) {
        if (!pidAlive(c.pid) || Date.now() - t0 > 45_000) throw new Error(`source VM did not boot: ${readFileSync(c.consolePath, 'utf8').slice(-1000)}`);
        await new Promise((r) => setTimeout(r, 25));
      }
      coldMs = Date.now() - t0;
      await guestRun(vmDir, 'echo base > /root/shared; sync');
      const t1 = Date.now();
      snap = await c.snapshot!(join(root, 'snap-c'));
      snapMs = Date.now() - t1;
      await c.kill();
    });

    after(async () => {
      for (const i of live) if (pidAlive(i.pid)) await i.kill().catch(() => undefined);
      rmSync(root, { recursive: true, force: true });
    });

    it('records what a restore needs in snapshot.json', () => {
      const rec = readSnapshotRecord(snap.dir);
      assert.equal(rec.driver, 'qemu');
      assert.match(rec.qemuVersion, /^\d+\.\d+\.\d+$/);
      assert.equal(rec.sourceId, 'src-c');
      assert.equal(rec.machine.vcpu, 1);
      assert.equal(rec.machine.memoryMiB, 128);
      assert.ok(rec.machine.machine.startsWith('microvm'));
      assert.ok(['tcg', 'kvm'].includes(rec.machine.accel));
      assert.equal(rec.machine.kernel.path, source.kernelPath);
      assert.ok(rec.machine.kernel.sizeBytes > 0);
      assert.deepEqual(rec.machine.devices, [{ type: 'virtio-blk-device', id: 'root' }]);
      assert.deepEqual(rec.disks.map((d) => d.id), ['root']);
      assert.ok(existsSync(join(snap.dir, rec.disks[0]!.file)), 'disk copy in the snapshot');
      assert.equal(readFileSync(snap.memoryFile).subarray(0, 4).toString('latin1'), 'QEVM', 'a QEMU migration stream');
      console.log(`# qemu: snapshot ${snapMs} ms (${(rec.stateBytes / 1048576).toFixed(1)} MiB state; pause ${rec.timingsMs.pause} / migrate ${rec.timingsMs.migrate} / disk copy ${rec.timingsMs.diskCopy} ms)`);
    });

    it('two clones of one snapshot each get their own writable disk', async () => {
      const x = { id: 'clone-x', vmDir: join(root, 'clone-x') };
      const y = { id: 'clone-y', vmDir: join(root, 'clone-y') };
      const diskX = await prepareRestoreDisk(snap.dir, x.vmDir);
      const sx = await restoreSpec(snap, source, x.id, x.vmDir);
      const sy = await restoreSpec(snap, source, y.id, y.vmDir);
      assert.equal(sx.drives[0]!.path, diskX);
      assert.notEqual(sx.drives[0]!.path, sy.drives[0]!.path);
      const info = JSON.parse((await execFileP('qemu-img', ['info', '--output=json', '-U', sx.drives[0]!.path])).stdout) as { 'backing-filename': string };
      assert.equal(info['backing-filename'], join(snap.dir, 'disk-root.qcow2'), 'overlay backed by the snapshot copy');
      const t0 = Date.now();
      const cx = await launch(sx);
      const restoreMs = Date.now() - t0;
      const cy = await launch(sy);
      const t1 = Date.now();
      assert.match(await guestRun(x.vmDir, 'cat /root/shared'), /^base\r?$/m);
      const answerMs = Date.now() - t1;
      assert.match(await guestRun(y.vmDir, 'cat /root/shared'), /^base\r?$/m);
      await guestRun(x.vmDir, 'echo only-x > /root/x-only; sync; echo 3 > /proc/sys/vm/drop_caches');
      await guestRun(y.vmDir, 'echo only-y > /root/y-only; sync; echo 3 > /proc/sys/vm/drop_caches');
      assert.match(await guestRun(y.vmDir, 'ls /root'), /y-only/);
      assert.doesNotMatch(await guestRun(y.vmDir, 'ls /root'), /x-only/, 'clone y sees nothing clone x wrote');
      assert.doesNotMatch(await guestRun(x.vmDir, 'ls /root'), /y-only/, 'clone x sees nothing clone y wrote');
      // The writes went to each clone's own overlay, never to the snapshot's copy.
      await cx.kill();
      await cy.kill();
      const rec = readSnapshotRecord(snap.dir);
      const { stdout } = await execFileP('qemu-img', ['check', '--output=json', join(snap.dir, rec.disks[0]!.file)]);
      assert.equal((JSON.parse(stdout) as { 'check-errors': number })['check-errors'], 0);
      console.log(`# qemu: restore ${restoreMs} ms to running, +${answerMs} ms to the first console answer; cold boot ${coldMs} ms to MVM-READY`);
    });

    it('a restore onto the source VM own disk is refused', async () => {
      await assert.rejects(driver.launch({ ...source, id: 'same-disk', vmDir: join(root, 'same-disk'), restoreFrom: snap }), (e: unknown) => {
        assert.ok(e instanceof MvmError);
        assert.equal(e.code, ErrorCodes.VALIDATION_FAILED);
        assert.match(e.message, /live disk/);
        return true;
      });
    });

    it('an incompatible restore is refused before anything starts', async () => {
      const tries: Array<{ what: string; change: (s: LaunchSpec) => LaunchSpec; code: string; field: string }> = [
        { what: 'vcpu', change: (s) => ({ ...s, vcpu: 2 }), code: ErrorCodes.VALIDATION_FAILED, field: 'vcpu' },
        { what: 'memory', change: (s) => ({ ...s, memoryMiB: 256 }), code: ErrorCodes.VALIDATION_FAILED, field: 'memoryMiB' },
        {
          what: 'devices',
          change: (s) => ({ ...s, drives: [...s.drives, { id: 'data', path: s.drives[0]!.path, format: 'qcow2', readOnly: true, root: false }] }),
          code: ErrorCodes.VALIDATION_FAILED,
          field: 'devices',
        },
        { what: 'kernel', change: (s) => ({ ...s, kernelPath: s.initrdPath! }), code: ErrorCodes.VALIDATION_FAILED, field: 'kernel' },
      ];
      let n = 0;
      for (const tr of tries) {
        const id = `bad-${++n}`;
        const vmDir = join(root, id);
        const s = tr.change(await restoreSpec(snap, source, id, vmDir));
        await assert.rejects(driver.launch(s), (e: unknown) => {
          assert.ok(e instanceof MvmError, String(e));
          assert.equal(e.code, tr.code, `${tr.what}: ${e.message}`);
          assert.ok(e.violations.some((v) => v.field === tr.field), `${tr.what}: ${JSON.stringify(e.violations)}`);
          return true;
        });
        assert.equal(existsSync(join(vmDir, 'launch.json')), false, `${tr.what}: nothing was started`);
      }
      // Another QEMU version (and another driver's snapshot): the host cannot take it.
      const rec = readSnapshotRecord(snap.dir);
      const other = join(root, 'snap-other-version');
      mkdirSync(other);
      writeFileSync(join(other, 'snapshot.json'), JSON.stringify({ ...rec, qemuVersion: '6.2.0' }));
      symlinkSync(snap.memoryFile, join(other, rec.stateFile));
      copyFileSync(join(snap.dir, rec.disks[0]!.file), join(other, rec.disks[0]!.file));
      const vmDir = join(root, 'bad-version');
      const s = await restoreSpec({ dir: other, memoryFile: join(other, rec.stateFile) }, source, 'bad-version', vmDir);
      await assert.rejects(driver.launch(s), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.CAPABILITY_UNSUPPORTED && /qemuVersion/.test(e.message));
      const fc = join(root, 'snap-fc');
      mkdirSync(fc);
      writeFileSync(join(fc, 'snapshot.json'), JSON.stringify({ driver: 'firecracker', vmmVersion: 'v1.10.1' }));
      await assert.rejects(driver.launch({ ...s, restoreFrom: { dir: fc, memoryFile: join(fc, 'memory') } }), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.CAPABILITY_UNSUPPORTED);
      assert.equal(existsSync(join(vmDir, 'launch.json')), false);
    });
  });
}
