/**
 * The Firecracker driver against the real Firecracker and jailer (MVM_TEST_FIRECRACKER_DIR, else
 * <repo>/../shared/firecracker), un-jailed and jailed, for everything that does not need a guest
 * that answers. On this nested-PVM host the whole API is real (pre-boot calls, InstanceStart,
 * pause/resume, snapshot create/load, metrics, Ctrl-Alt-Del) and the jailer really chroots,
 * changes uid and makes cgroups, but the guest never boots (its vCPU spins): so every VM is paused
 * as soon as it runs, and readiness is left to the protocol-enforcing peer's tests.
 *
 * Also the failure paths of issue 18: a corrupt snapshot state file, a `firecracker` that is a
 * versioned symlink (the jail is named after the real file), a binary older than v1.8.
 */
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync, rmdirSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import type { LaunchSpec, SnapshotFiles, VmmInstance } from '../../src/core/ports/vmm.js';
import { fcFiles } from '../../src/vmm/firecracker/config.js';
import { FirecrackerDriver } from '../../src/vmm/firecracker/firecracker-driver.js';
import { jailCgroupDirs, jailPaths } from '../../src/vmm/firecracker/jailer.js';
import { readFcSnapshotMeta } from '../../src/vmm/firecracker/snapshot.js';
import { pidAlive, sleep } from '../../src/vmm/proc.js';
import { realFirecracker, realJailer } from '../support/firecracker-harness.js';

const fc = realFirecracker();
const jailerBin = realJailer();
const skip = !fc
  ? 'no real firecracker binary (set MVM_TEST_FIRECRACKER_DIR, or put it in ../shared/firecracker)'
  : !existsSync('/dev/kvm')
    ? 'no /dev/kvm (Firecracker needs it to create a VM, even one that never boots)'
    : process.getuid?.() !== 0
      ? 'needs root (the jailer, cgroups)'
      : undefined;

const root = mkdtempSync(join(tmpdir(), 'fc-real-'));
const kernel = join(root, 'vmlinux');
// Firecracker checks only that the kernel is an ELF it can load at InstanceStart; the guest never
// gets far on this host, so the image's default vmlinux is not needed: build a minimal one lazily.
const live: VmmInstance[] = [];
const CGROUP_PARENT = `mvm-test-${process.pid}`;

after(async () => {
  for (const i of live) await i.kill().catch(() => undefined);
  rmSync(root, { recursive: true, force: true });
  for (const ctl of ['cpu', 'cpuset', 'memory', 'pids', 'cpuacct', '']) {
    const d = join('/sys/fs/cgroup', ctl, CGROUP_PARENT);
    try {
      if (existsSync(d)) rmdirSync(d); // cgroupfs: rmdir removes an empty cgroup
    } catch {
      /* still in use: left for the next run's view */
    }
  }
});

function guestKernel(): string {
  if (existsSync(kernel)) return kernel;
  // The default guest image's vmlinux (built by `make images`) if present, else any vmlinux we can find.
  const images = '/var/cache/mvm/images';
  const dir = existsSync(images) ? readdirSync(images).find((d) => d.startsWith('default-') && existsSync(join(images, d, 'vmlinux'))) : undefined;
  if (!dir) throw new Error('no vmlinux: run make images');
  copyFileSync(join(images, dir, 'vmlinux'), kernel);
  return kernel;
}

function spec(id: string, group: string): LaunchSpec {
  const vmDir = join(root, group, 'vms', id);
  mkdirSync(vmDir, { recursive: true });
  const disk = join(vmDir, 'root.raw');
  if (!existsSync(disk)) writeFileSync(disk, Buffer.alloc(4 * 1024 * 1024));
  return {
    id,
    name: id,
    vcpu: 1,
    memoryMiB: 128,
    kernelPath: guestKernel(),
    cmdline: 'console=ttyS0 reboot=k panic=1',
    drives: [{ id: 'root', path: disk, format: 'raw', readOnly: false, root: true }],
    nics: [],
    vmDir,
    cgroupProcs: [],
  };
}

/** Files a Firecracker process leaves when its driver forgot them. */
function leftovers(s: LaunchSpec): string[] {
  const f = fcFiles(s.vmDir);
  return [f.apiSock, f.logFifo, f.metricsFifo, f.vsockUds, f.consoleIn].filter((p) => existsSync(p));
}

/** Inodes of the regular files the process has open. */
function openInodes(pid: number): Set<number> {
  const out = new Set<number>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const st = statSync(`/proc/${pid}/fd/${fd}`);
      if (st.isFile()) out.add(st.ino);
    } catch {
      /* closed meanwhile */
    }
  }
  return out;
}

for (const mode of ['un-jailed', 'jailed'] as const) {
  describe(`firecracker driver, real binary (${mode})`, () => {
    const group = mode;
    const base = join(root, group, 'srv');
    const make = (binary = fc!): FirecrackerDriver =>
      new FirecrackerDriver({
        binary,
        // The API works without a guest that boots; the probe that would refuse is the service's.
        kvm: { kvmUsable: async () => true },
        ...(mode === 'jailed' ? { jailer: { binary: jailerBin!, chrootBaseDir: base, cgroupVersion: existsSync('/sys/fs/cgroup/cpu') ? 1 : 2, parentCgroup: CGROUP_PARENT, uidRange: { start: 310_000, size: 100 } } } : {}),
      });
    const pre = (): string | undefined => skip ?? (mode === 'jailed' && !jailerBin ? 'no real jailer binary next to firecracker' : undefined);
    let a: VmmInstance | undefined;
    let specA: LaunchSpec | undefined;
    let snap: SnapshotFiles | undefined;

    it('capabilities: available, with the version the binary prints', async (t) => {
      if (pre()) return t.skip(pre());
      const caps = await make().capabilities();
      assert.equal(caps.available, true, caps.unavailableReason);
      assert.match(caps.version, /^v1\.\d+\.\d+/);
    });

    it('launch: every pre-boot call and InstanceStart accepted; Firecracker logs to its logger, not the console', async (t) => {
      if (pre()) return t.skip(pre());
      specA = spec('vm-real-a', group);
      const t0 = Date.now();
      a = await make().launch(specA);
      live.push(a);
      const ms = Date.now() - t0;
      assert.equal(await a.state(), 'running');
      await a.pause!(); // the guest cannot boot here: its vCPU would spin a core
      assert.equal(await a.state(), 'paused');
      t.diagnostic(`launch to InstanceStart accepted: ${ms} ms`);
      const cfg = a.config as { args: string[]; calls: Array<{ method: string; path: string }>; mode: string };
      assert.equal(cfg.mode, 'boot');
      assert.deepEqual(cfg.calls.map((c) => `${c.method} ${c.path}`), ['PUT /machine-config', 'PUT /boot-source', 'PUT /drives/root', 'PUT /actions']);
      assert.ok(cfg.args.includes('--log-path') && cfg.args.includes('--metrics-path'), cfg.args.join(' '));
      const f = fcFiles(specA.vmDir);
      await sleep(200);
      assert.doesNotMatch(readFileSync(a.consolePath, 'utf8'), /Running Firecracker|API server|fc_api/, 'none of Firecracker\'s own lines on the guest console');
      assert.match(readFileSync(f.fcLog, 'utf8'), /Running Firecracker v1\./);
      if (mode === 'jailed') {
        const jail = (a.config as { jail: { uid: number; chrootDir: string } }).jail;
        assert.equal(statSync(`/proc/${a.pid}`).uid, jail.uid, 'the VMM runs as its own uid');
        assert.equal(readlinkSync(`/proc/${a.pid}/root`), '/', 'pivoted into its chroot');
        assert.ok(jail.chrootDir.startsWith(base));
      }
    });

    it('stats: RSS, CPU time and block counters through FlushMetrics', async (t) => {
      if (pre() || !a) return t.skip(pre() ?? 'no VM');
      const st = await a.stats();
      assert.ok(st.memoryRssBytes > 1024 * 1024, `rss ${st.memoryRssBytes}`);
      assert.ok(st.cpuSeconds >= 0);
      assert.deepEqual(st.block.map((b) => b.device), ['root'], 'the root drive is reported by the metrics FIFO');
    });

    it('pause and resume, then a 128 MiB snapshot: memory, state and the disk copy', async (t) => {
      if (pre() || !a || !specA) return t.skip(pre() ?? 'no VM');
      await a.resume!();
      assert.equal(await a.state(), 'running');
      await a.pause!();
      const t0 = Date.now();
      snap = await a.snapshot!(join(root, group, 'snap'));
      t.diagnostic(`snapshot of a 128 MiB guest: ${Date.now() - t0} ms`);
      assert.equal(statSync(snap.memoryFile).size, 128 * 1024 * 1024);
      assert.ok(statSync(snap.stateFile!).size > 0);
      const meta = readFcSnapshotMeta(snap.dir);
      assert.equal(meta.jailed, mode === 'jailed');
      assert.match(meta.vmmVersion ?? '', /^v1\./);
      assert.equal(await a.state(), 'paused', 'left paused');
    });

    it('two clones restore from the snapshot, each on its own disk', async (t) => {
      if (pre() || !snap) return t.skip(pre() ?? 'no snapshot');
      const d = make();
      for (const id of ['vm-real-c1', 'vm-real-c2']) {
        const s = spec(id, group);
        const disk = await d.prepareRestoreDisk(snap.dir, s.vmDir);
        const t0 = Date.now();
        const c = await d.launch({ ...s, drives: [disk], restoreFrom: d.snapshotFiles(snap.dir) });
        live.push(c);
        t.diagnostic(`${id}: /snapshot/load to running ${Date.now() - t0} ms`);
        assert.equal((c.config as { mode: string }).mode, 'restore');
        assert.equal(await c.state(), 'running');
        await c.pause!();
        // Firecracker reopened the drive at the recorded path: for a clone that is its own disk.
        assert.ok(openInodes(c.pid).has(statSync(disk.path).ino), `${id} has its own ${disk.path} open`);
        assert.ok(!openInodes(c.pid).has(statSync(specA!.drives[0]!.path).ino), `${id} does not hold the source's disk`);
        await c.kill();
        assert.deepEqual(leftovers(s), []);
      }
    });

    it('a corrupt state file: the load is refused with Firecracker\'s fault message, nothing is left', async (t) => {
      if (pre() || !snap) return t.skip(pre() ?? 'no snapshot');
      const bad = join(root, group, 'snap-corrupt');
      mkdirSync(bad, { recursive: true });
      for (const f of readdirSync(snap.dir)) copyFileSync(join(snap.dir, f), join(bad, f));
      writeFileSync(join(bad, 'vm.state'), Buffer.alloc(4096, 7));
      const d = make();
      const s = spec('vm-real-bad', group);
      const disk = await d.prepareRestoreDisk(bad, s.vmDir);
      await assert.rejects(d.launch({ ...s, drives: [disk], restoreFrom: d.snapshotFiles(bad) }), (e: unknown) => {
        assert.ok(e instanceof MvmError);
        assert.equal(e.details.step, 'PUT /snapshot/load');
        assert.equal(typeof e.details.faultMessage, 'string', 'Firecracker said why');
        assert.match(e.message, /failed at step "PUT \/snapshot\/load"/);
        return true;
      });
      assert.deepEqual(leftovers(s), []);
      if (mode === 'jailed') assert.ok(!existsSync(jailPaths(base, 'firecracker', s.id).jailDir), 'the failed start left no jail');
    });

    it('stop: Ctrl-Alt-Del, then a kill once the timeout passes (the guest cannot react); nothing is left', async (t) => {
      if (pre() || !a || !specA) return t.skip(pre() ?? 'no VM');
      const jail = (a.config as { jail?: { chrootDir: string } }).jail;
      const t0 = Date.now();
      await a.stop(1500);
      const exit = await a.exited;
      const ms = Date.now() - t0;
      assert.equal(exit.signal, 'SIGKILL', exit.reason);
      assert.ok(ms >= 1400 && ms < 8000, `stop took ${ms} ms`);
      assert.ok(!pidAlive(a.pid));
      assert.deepEqual(leftovers(specA), []);
      if (jail) {
        assert.ok(!existsSync(jail.chrootDir), 'the chroot is gone');
        const dirs = jailCgroupDirs({ cgroupVersion: existsSync('/sys/fs/cgroup/cpu') ? 1 : 2, cgroupRoot: '/sys/fs/cgroup', parentCgroup: CGROUP_PARENT }, specA.id, ['cpu.shares=1']);
        assert.deepEqual(dirs.filter((x) => existsSync(x)), [], 'its cgroups are gone');
      }
    });
  });
}

describe('firecracker driver, real binary: what is refused', () => {
  it('a versioned symlink on PATH: the jail is named after the real file, and a failed start leaves no chroot', async (t) => {
    if (skip || !jailerBin) return t.skip(skip ?? 'no real jailer');
    const bin = join(root, 'vbin');
    mkdirSync(bin, { recursive: true });
    const real = join(bin, 'firecracker-v1.17.0-dev-x86_64');
    copyFileSync(fc!, real);
    chmodSync(real, 0o755);
    symlinkSync(real, join(bin, 'firecracker'));
    const base = join(root, 'vsym', 'srv');
    const d = new FirecrackerDriver({
      binary: join(bin, 'firecracker'),
      kvm: { kvmUsable: async () => true },
      jailer: { binary: jailerBin, chrootBaseDir: base, cgroupVersion: existsSync('/sys/fs/cgroup/cpu') ? 1 : 2, parentCgroup: CGROUP_PARENT, uidRange: { start: 311_000, size: 10 } },
    });
    const s = spec('vm-real-sym', 'vsym');
    const inst = await d.launch(s);
    live.push(inst);
    await inst.pause!();
    assert.equal((inst.config as { jail: { chrootDir: string } }).jail.chrootDir, jailPaths(base, 'firecracker-v1.17.0-dev-x86_64', s.id).chrootDir);
    await inst.kill();
    assert.deepEqual(readdirSync(join(base, 'firecracker-v1.17.0-dev-x86_64')).filter((x) => !x.startsWith('.')), [], 'no jail left after the kill');
    // A start that fails after the jail was made (a drive that does not exist) removes the jail too.
    const broken = spec('vm-real-sym2', 'vsym');
    await assert.rejects(d.launch({ ...broken, drives: [{ id: 'root', path: join(broken.vmDir, 'missing.raw'), format: 'raw', readOnly: false, root: true }] }), MvmError);
    assert.ok(!existsSync(jailPaths(base, 'firecracker-v1.17.0-dev-x86_64', broken.id).jailDir), 'the failed start left no chroot');
    assert.ok(!existsSync(jailPaths(base, 'firecracker', broken.id).jailDir));
  });

  it('a Firecracker older than v1.8 is refused with the reason, at capabilities and at launch', async (t) => {
    if (skip) return t.skip(skip);
    const old = join(root, 'old', 'firecracker');
    mkdirSync(join(root, 'old'), { recursive: true });
    writeFileSync(old, '#!/bin/sh\n[ "$1" = --version ] && { echo "Firecracker v1.5.0"; exit 0; }\nexec ' + fc + ' "$@"\n');
    chmodSync(old, 0o755);
    const d = new FirecrackerDriver({ binary: old, kvm: { kvmUsable: async () => true } });
    const caps = await d.capabilities();
    assert.equal(caps.available, false);
    assert.match(caps.unavailableReason ?? '', /Firecracker v1\.5\.0, older than v1\.8\.0: .*ACPI/);
    const s = spec('vm-real-old', 'old');
    await assert.rejects(d.launch(s), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.CAPABILITY_UNSUPPORTED && e.details.step === 'validate' && /older than v1\.8\.0/.test(e.message));
    assert.deepEqual(leftovers(s), [], 'refused before anything started');
  });
});
