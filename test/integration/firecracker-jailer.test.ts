/**
 * Jailer support: argument building, uid/gid allocation, path rewriting,
 * chroot layout (hard links, EXDEV fallback to copies, FIFOs, ownership),
 * cleanup; the driver's jailed pipeline through a jailer stand-in; and the real
 * jailer where the host has one.
 */
import { after, describe, it } from 'node:test';
import { spawnSync } from 'node:child_process';
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, realpathSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import type { LaunchSpec, VmmInstance } from '../../src/core/ports/vmm.js';
import { pidAlive } from '../../src/vmm/proc.js';
import type { ApiCall } from '../../src/vmm/firecracker/api-client.js';
import { buildBootCalls, buildRestoreCalls, fcFiles, pruneRestoreOverrides, type FcSnapshotMeta } from '../../src/vmm/firecracker/config.js';
import { FirecrackerDriver } from '../../src/vmm/firecracker/firecracker-driver.js';
import {
  JAIL_API_SOCK,
  allocateUid,
  buildJailerArgs,
  cgroupSettings,
  cleanupJail,
  jailCalls,
  jailCgroupDirs,
  jailPaths,
  jailSinks,
  nodeJailFs,
  prepareChroot,
  releaseUid,
  uidCandidates,
  type JailFs,
} from '../../src/vmm/firecracker/jailer.js';
import { fakeJailer, memoryNonce, peerBinary, readPeerLog, realFirecracker, realJailer, waitFor } from '../support/firecracker-harness.js';

const root = mkdtempSync(join(tmpdir(), 'fc-jail-'));
const live: VmmInstance[] = [];
const netnses: string[] = [];

/** A network namespace of this test (`ip netns add`), or undefined when it cannot make one. */
function testNetns(tag: string): string | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const name = `fcjt-${process.pid}-${tag}`;
  const r = spawnSync('ip', ['netns', 'add', name], { encoding: 'utf8' });
  if (r.status !== 0) return undefined;
  netnses.push(name);
  return `/var/run/netns/${name}`;
}
after(async () => {
  for (const i of live) await i.kill().catch(() => undefined);
  for (const n of netnses) spawnSync('ip', ['netns', 'del', n]);
  rmSync(root, { recursive: true, force: true });
});

function spec(over: Partial<LaunchSpec> = {}): LaunchSpec {
  const id = over.id ?? 'vm-jail1';
  const vmDir = over.vmDir ?? join(root, 'vms', id);
  mkdirSync(vmDir, { recursive: true });
  const kernel = join(root, 'vmlinux');
  if (!existsSync(kernel)) writeFileSync(kernel, Buffer.alloc(4096));
  const initrd = join(root, 'initrd.img');
  if (!existsSync(initrd)) writeFileSync(initrd, Buffer.alloc(1024));
  const disk = join(vmDir, 'root.raw');
  if (!existsSync(disk)) writeFileSync(disk, Buffer.alloc(1024 * 1024));
  const base = join(root, 'base.raw');
  if (!existsSync(base)) writeFileSync(base, Buffer.alloc(1024 * 1024));
  return {
    id,
    name: id,
    vcpu: 2,
    memoryMiB: 256,
    kernelPath: kernel,
    initrdPath: initrd,
    cmdline: `console=ttyS0 mvm.id=${id}`,
    drives: [
      { id: 'root', path: disk, format: 'raw', readOnly: false, root: true },
      { id: 'base-img', path: base, format: 'raw', readOnly: true, root: false },
    ],
    nics: [{ id: 'eth0', tap: 'tap-j1', mac: '02:00:00:00:00:01' }],
    vmDir,
    cgroupProcs: [],
    ...over,
  };
}

describe('jailer: arguments and cgroups', () => {
  it('builds the jailer command line', () => {
    const args = buildJailerArgs({
      id: 'vm-abc',
      uid: 100123,
      gid: 100123,
      execFile: '/usr/bin/firecracker',
      chrootBaseDir: '/srv/jailer',
      cgroupVersion: 2,
      cgroups: cgroupSettings(2, 2, 320 * 1024 * 1024),
      parentCgroup: 'mvm',
      netns: '/var/run/netns/mvm-vm-abc',
      resourceLimits: { 'no-file': 1024 },
    });
    assert.deepEqual(args, [
      '--id', 'vm-abc',
      '--exec-file', '/usr/bin/firecracker',
      '--uid', '100123',
      '--gid', '100123',
      '--chroot-base-dir', '/srv/jailer',
      '--cgroup-version', '2',
      '--parent-cgroup', 'mvm',
      '--cgroup', 'cpu.max=200000 100000',
      '--cgroup', `memory.max=${320 * 1024 * 1024}`,
      '--netns', '/var/run/netns/mvm-vm-abc',
      '--resource-limit', 'no-file=1024',
      '--', '--api-sock', '/run/firecracker.socket',
    ]);
    assert.ok(!args.includes('--daemonize'), 'the jailer must exec in place so we keep the pid and the console');
    assert.throws(() => buildJailerArgs({ id: 'bad id', uid: 1, gid: 1, execFile: 'x', chrootBaseDir: '/', cgroupVersion: 2, cgroups: [] }), MvmError);
  });

  it('sets v1 and v2 limits and knows the cgroup directories it creates', () => {
    const v1 = cgroupSettings(1, 3, 1000);
    assert.deepEqual(v1, ['cpu.cfs_period_us=100000', 'cpu.cfs_quota_us=300000', 'memory.limit_in_bytes=1000']);
    assert.deepEqual(jailCgroupDirs({ cgroupVersion: 1, cgroupRoot: '/sys/fs/cgroup', parentCgroup: 'mvm' }, 'vm-a', v1), ['/sys/fs/cgroup/cpu/mvm/vm-a', '/sys/fs/cgroup/memory/mvm/vm-a']);
    assert.deepEqual(jailCgroupDirs({ cgroupVersion: 2, cgroupRoot: '/sys/fs/cgroup', parentCgroup: 'mvm' }, 'vm-a', cgroupSettings(2, 1, 1)), ['/sys/fs/cgroup/mvm/vm-a']);
  });
});

describe('jailer: uid/gid allocation', () => {
  const range = { start: 100_000, size: 64 };

  it('derives a deterministic start from the id and probes the whole range', () => {
    const a = uidCandidates('vm-one', range);
    assert.deepEqual(a, uidCandidates('vm-one', range));
    assert.equal(new Set(a).size, 64);
    assert.ok(a.every((u) => u >= 100_000 && u < 100_064));
  });

  it('never hands one uid to two live VMs, reuses its own lease, takes over stale ones', () => {
    const leases = join(root, 'leases');
    const liveIds = new Set<string>();
    const isLive = (id: string): boolean => liveIds.has(id);
    const got = new Map<string, number>();
    for (let i = 0; i < 64; i++) {
      const id = `vm-u${i}`;
      liveIds.add(id);
      got.set(id, allocateUid(id, range, leases, isLive));
    }
    assert.equal(new Set(got.values()).size, 64, 'all distinct');
    assert.equal(allocateUid('vm-u7', range, leases, isLive), got.get('vm-u7'), 'idempotent');
    assert.throws(() => allocateUid('vm-extra', range, leases, isLive), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.NO_CAPACITY);
    // vm-u3 died without cleanup: its lease is stale and can be taken over.
    liveIds.delete('vm-u3');
    assert.equal(allocateUid('vm-extra', range, leases, isLive), got.get('vm-u3'));
    releaseUid('vm-extra', leases);
    assert.ok(!readdirSync(leases).includes(String(got.get('vm-u3'))));
  });
});

describe('jailer: path rewriting', () => {
  const s = spec({ id: 'vm-rw' });
  const f = fcFiles(s.vmDir);
  const boot = buildBootCalls(s, { logFifo: f.logFifo, metricsFifo: f.metricsFifo, vsockUds: f.vsockUds }, { vsock: { guestCid: 3 } });

  it('rewrites every path in the calls relative to the chroot', () => {
    const { calls, files } = jailCalls(boot);
    const paths: string[] = [];
    const walk = (v: unknown, key = ''): void => {
      if (typeof v === 'string' && /path|uds/.test(key)) paths.push(v);
      else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) walk(x, k);
    };
    for (const c of calls) walk(c.body);
    assert.deepEqual(paths.sort(), ['/boot/initrd', '/boot/kernel', '/drives/base_img', '/drives/root', '/vsock.sock'].sort());
    assert.ok(!JSON.stringify(calls).includes(root), 'no host path left');
    assert.deepEqual(
      files.map((x) => `${x.kind} ${x.jail} ${x.writable ? 'rw' : 'ro'}`),
      ['input /boot/kernel ro', 'input /boot/initrd ro', 'input /drives/root rw', 'input /drives/base_img ro', 'socket /vsock.sock rw'],
    );
    assert.equal(files.find((x) => x.jail === '/drives/root')!.host, s.drives[0]!.path);
    // The non-path bodies are untouched.
    assert.deepEqual(calls.find((c) => c.path === '/machine-config'), boot.find((c) => c.path === '/machine-config'));
  });

  it('rewrites snapshot loads and drops overrides that match the snapshot', () => {
    const snap = { dir: join(root, 'snapdir'), memoryFile: join(root, 'snapdir', 'memory'), stateFile: join(root, 'snapdir', 'vm.state') };
    const { calls, files } = jailCalls(buildRestoreCalls(s, { logFifo: f.logFifo, metricsFifo: f.metricsFifo, vsockUds: f.vsockUds }, snap, { vsock: { guestCid: 3 } }));
    const load = calls.find((c) => c.path === '/snapshot/load')!.body as Record<string, unknown>;
    assert.deepEqual(load.mem_backend, { backend_type: 'File', backend_path: '/snapshot/memory' });
    assert.equal(load.snapshot_path, '/snapshot/vm.state');
    assert.deepEqual(load.vsock_override, { uds_path: '/vsock.sock' });
    assert.ok(files.some((x) => x.kind === 'input' && x.host === snap.memoryFile && !x.writable));
    const meta: FcSnapshotMeta = {
      driver: 'firecracker', vmmVersion: '1', sourceId: 'vm-src', createdAt: '', vcpu: 2, memoryMiB: 256, jailed: true,
      drives: [], nics: [{ iface_id: 'eth0', host_dev_name: 'tap-j1' }], vsockUds: '/vsock.sock',
    };
    const pruned = pruneRestoreOverrides(calls, meta).find((c) => c.path === '/snapshot/load')!.body as Record<string, unknown>;
    assert.equal(pruned.network_overrides, undefined, 'same tap: no override needed');
    assert.equal(pruned.vsock_override, undefined, 'same jail-relative socket: no override needed');
  });

  it('refuses calls whose path fields it does not know', () => {
    const odd: ApiCall[] = [{ method: 'PUT', path: '/serial', body: { serial_out_path: '/tmp/x' } }];
    assert.throws(() => jailCalls(odd), MvmError);
  });
});

describe('jailer: chroot layout', () => {
  const uid = 100_777;
  it('hard-links inputs, creates FIFOs and owns what the jailed user needs', () => {
    const s = spec({ id: 'vm-lay' });
    const f = fcFiles(s.vmDir);
    const chroot = jailPaths(join(root, 'jail-a'), 'firecracker', s.id).chrootDir;
    const secret = join(root, 'secret.img');
    writeFileSync(secret, 'x');
    chmodSync(secret, 0o600);
    const calls = buildBootCalls({ ...s, initrdPath: secret }, { logFifo: f.logFifo, metricsFifo: f.metricsFifo });
    const { files } = jailCalls(calls);
    // The logger and metrics FIFOs are named on the command line; jailSinks makes them in the jail.
    const sinks = jailSinks({ logFifo: f.logFifo, metricsFifo: f.metricsFifo });
    assert.deepEqual(sinks.sinks, { logFifo: '/fc-log.fifo', metricsFifo: '/fc-metrics.fifo' });
    const done = prepareChroot(chroot, [...sinks.files, ...files], uid, uid);
    const how = Object.fromEntries(done.map((d) => [d.file.jail, d.how]));
    assert.equal(how['/boot/kernel'], 'linked');
    assert.equal(how['/drives/root'], 'linked');
    assert.equal(how['/boot/initrd'], 'copied', 'an input the jailed user cannot read gets its own copy, the shared file keeps its mode');
    assert.equal(statSync(secret).mode & 0o777, 0o600);
    assert.equal(statSync(join(chroot, 'drives/root')).ino, statSync(s.drives[0]!.path).ino, 'same inode: the guest writes the VM disk');
    assert.equal(statSync(join(chroot, 'drives/root')).uid, uid, 'read-write drive owned by the jailed user');
    assert.equal(statSync(join(chroot, 'boot/kernel')).ino, statSync(s.kernelPath).ino);
    assert.notEqual(statSync(s.kernelPath).uid, uid, 'shared read-only images are not chowned');
    assert.equal(statSync(join(chroot, 'boot/initrd')).uid, uid);
    for (const fifo of ['fc-log.fifo', 'fc-metrics.fifo']) {
      const st = statSync(join(chroot, fifo));
      assert.ok(st.isFIFO());
      assert.equal(st.uid, uid);
      assert.equal(st.mode & 0o777, 0o600);
    }
    assert.equal(statSync(join(chroot, 'run')).uid, uid, 'the jailed user creates its API socket in /run');
  });

  it('copies read-only inputs across filesystems (EXDEV) and refuses to copy a read-write drive', () => {
    const s = spec({ id: 'vm-xdev' });
    const f = fcFiles(s.vmDir);
    const { files } = jailCalls(buildBootCalls(s, { logFifo: f.logFifo, metricsFifo: f.metricsFifo }));
    const exdev: JailFs = {
      ...nodeJailFs,
      link: () => {
        throw Object.assign(new Error('EXDEV: cross-device link not permitted'), { code: 'EXDEV' });
      },
    };
    const chroot = jailPaths(join(root, 'jail-b'), 'firecracker', s.id).chrootDir;
    const ro = files.filter((x) => x.kind !== 'input' || !x.writable);
    const done = prepareChroot(chroot, ro, uid, uid, exdev);
    assert.ok(done.filter((d) => d.file.kind === 'input').every((d) => d.how === 'copied'));
    const k = statSync(join(chroot, 'boot/kernel'));
    assert.notEqual(k.ino, statSync(s.kernelPath).ino);
    assert.equal(k.size, statSync(s.kernelPath).size);
    assert.equal(k.uid, uid);
    assert.throws(
      () => prepareChroot(chroot, files, uid, uid, exdev),
      (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.VMM_ERROR && /read-write drive .* another filesystem/.test(e.message),
    );
  });

  it('falls back to a copy on a real cross-filesystem link when the host has one', (t) => {
    const shm = '/dev/shm';
    if (!existsSync(shm) || statSync(shm).dev === statSync(root).dev) return t.skip('no second filesystem (/dev/shm) on this host');
    const src = mkdtempSync(join(shm, 'fc-xdev-'));
    try {
      const kernel = join(src, 'vmlinux');
      writeFileSync(kernel, 'kernel');
      const chroot = jailPaths(join(root, 'jail-c'), 'firecracker', 'vm-shm').chrootDir;
      const done = prepareChroot(chroot, [{ kind: 'input', host: kernel, jail: '/boot/kernel', writable: false }], uid, uid);
      assert.equal(done[0]!.how, 'copied');
      assert.equal(readFileSync(join(chroot, 'boot/kernel'), 'utf8'), 'kernel');
    } finally {
      rmSync(src, { recursive: true, force: true });
    }
  });

  it('cleans up the jail, its cgroups and its uid lease', async () => {
    const base = join(root, 'jail-d');
    const jp = jailPaths(base, 'firecracker', 'vm-gone');
    mkdirSync(jp.chrootDir, { recursive: true });
    writeFileSync(join(jp.chrootDir, 'x'), '');
    const uidNo = allocateUid('vm-gone', { start: 300_000, size: 10 }, jp.leaseDir, () => true);
    const cg = [join(root, 'cg', 'cpu', 'mvm', 'vm-gone'), join(root, 'cg', 'memory', 'mvm', 'vm-gone')];
    for (const d of cg) mkdirSync(d, { recursive: true });
    await cleanupJail({ jailDir: jp.jailDir, leaseDir: jp.leaseDir, id: 'vm-gone', cgroupDirs: cg });
    assert.ok(!existsSync(jp.jailDir));
    assert.ok(cg.every((d) => !existsSync(d)));
    assert.ok(!existsSync(join(jp.leaseDir, String(uidNo))));
    await cleanupJail({ jailDir: jp.jailDir, leaseDir: jp.leaseDir, id: 'vm-gone', cgroupDirs: cg }); // idempotent
  });
});

describe('jailer: the driver, jailed', () => {
  it('launches through the jailer with jail paths, snapshots, restores, adopts and cleans up', async (t) => {
    const netns = testNetns('jd');
    if (!netns) return t.skip('needs root and `ip netns` (the jailer joins the VM network namespace)');
    const dir = join(root, 'jailed');
    const bin = peerBinary(dir);
    const jailer = fakeJailer(join(dir, 'jbin'));
    const base = join(dir, 'srv');
    const log = join(dir, 'peer.jsonl');
    const jlog = join(dir, 'jailer.log');
    const mk = (): FirecrackerDriver =>
      new FirecrackerDriver({
        binary: bin,
        kvm: { kvmUsable: async () => true },
        env: { FC_PEER_LOG: log, FAKE_JAILER_LOG: jlog },
        jailer: { binary: jailer, chrootBaseDir: base, cgroupRoot: join(dir, 'cg'), cgroupVersion: 2, uidRange: { start: 200_000, size: 100 }, resourceLimits: { 'no-file': 2048 } },
        netnsFor: (sp) => (sp.id === 'vm-jd' ? netns : undefined),
      });
    const d = mk();
    const s = spec({ id: 'vm-jd', vmDir: join(dir, 'vms', 'vm-jd') });
    const caps = await d.capabilities();
    assert.equal(caps.available, true, caps.unavailableReason);
    const inst = await d.launch(s);
    live.push(inst);
    // The jail is named after the binary the jailer really runs: here the peer behind the `firecracker` symlink.
    const jp = jailPaths(base, basename(realpathSync(bin)), s.id);
    const cfg = inst.config as { binary: string; args: string[]; jailed: boolean; jail: { uid: number; chrootDir: string }; calls: ApiCall[] };
    assert.equal(cfg.binary, jailer);
    assert.equal(cfg.jailed, true);
    assert.equal(cfg.jail.chrootDir, jp.chrootDir);
    assert.ok(cfg.jail.uid >= 200_000 && cfg.jail.uid < 200_100);
    assert.deepEqual(cfg.args.slice(cfg.args.indexOf('--')), ['--', '--api-sock', JAIL_API_SOCK, '--log-path', '/fc-log.fifo', '--level', 'Info', '--show-level', '--metrics-path', '/fc-metrics.fifo']);
    assert.match(readFileSync(jlog, 'utf8'), new RegExp(`--netns ${netns}\n`));
    assert.equal(statSync(`/proc/${inst.pid}/ns/net`).ino, statSync(netns).ino, 'the jailed VMM runs in the VM netns');
    assert.match(readFileSync(jlog, 'utf8'), /--cgroup memory\.max=/);
    // Firecracker only ever saw jail paths, and accepted them.
    const sent = readPeerLog(log).filter((e) => e.method !== 'GET');
    assert.ok(sent.every((e) => e.status === 204), JSON.stringify(sent.filter((e) => e.status !== 204)));
    assert.ok(!JSON.stringify(sent).includes(root), 'no host path reached Firecracker');
    assert.equal((sent.find((e) => e.path === '/boot-source')!.body as { kernel_image_path: string }).kernel_image_path, '/boot/kernel');
    assert.ok(existsSync(join(jp.chrootDir, 'run/firecracker.socket')));
    assert.equal(statSync(join(jp.chrootDir, 'drives/root')).ino, statSync(s.drives[0]!.path).ino);
    await waitFor(() => readFileSync(inst.consolePath, 'utf8').includes(`MVM-READY id=${s.id}`), 5000, 'console through the jailer');
    const st = await inst.stats();
    assert.equal(st.block.find((b) => b.device === 'root')?.readBytes, 4 * 1024 * 1024, 'metrics FIFO inside the chroot is drained');

    // Snapshot files land outside the jail, where they were asked for.
    const snapDir = join(dir, 'snap');
    const files = await inst.snapshot!(snapDir);
    assert.ok(existsSync(files.memoryFile) && existsSync(files.stateFile!));
    assert.ok(!existsSync(join(jp.chrootDir, 'snapshot/memory')));
    const nonce = memoryNonce(files.memoryFile);
    assert.equal((JSON.parse(readFileSync(join(snapDir, 'snapshot.json'), 'utf8')) as FcSnapshotMeta).drives[0]!.path_on_host, '/drives/root');

    // A restarted service finds the jailed process through the jail's mvm.json.
    const d2 = mk();
    assert.ok((await d2.findProcesses(join(dir, 'vms'))).some((p) => p.pid === inst.pid && p.vmDir === s.vmDir));
    const adopted = await d2.adopt(s.id, s.vmDir);
    assert.ok(adopted);
    assert.equal(await adopted.state(), 'paused');
    await adopted.kill();
    await inst.exited;
    assert.ok(!existsSync(jp.jailDir), 'jail removed');
    assert.ok(!existsSync(join(jp.leaseDir, String(cfg.jail.uid))), 'uid released');

    // Restore in a fresh jail: same jail-relative paths, no overrides needed.
    const r = await d2.launch({ ...s, restoreFrom: files });
    live.push(r);
    const load = readPeerLog(log).filter((e) => e.path === '/snapshot/load').pop()!;
    assert.equal(load.status, 204);
    assert.deepEqual(load.body, { snapshot_path: '/snapshot/vm.state', mem_backend: { backend_type: 'File', backend_path: '/snapshot/memory' }, track_dirty_pages: false, resume_vm: true });
    const again = await r.snapshot!(join(dir, 'snap2'));
    assert.equal(memoryNonce(again.memoryFile), nonce);
    await r.stop(5000);
    assert.ok(!pidAlive(r.pid));
    assert.ok(!existsSync(jp.jailDir));
    assert.deepEqual(readdirSync(jp.leaseDir), []);
  });

  it("runs the VMM in the VM's network namespace (spec.netnsPath), jailed and un-jailed; a missing one fails the start", async (t) => {
    const netns = testNetns('ns');
    if (!netns) return t.skip('needs root and `ip netns`');
    const dir = join(root, 'netns');
    const bin = peerBinary(dir);
    const jailer = fakeJailer(join(dir, 'jbin'));
    const jailCfg = { binary: jailer, chrootBaseDir: join(dir, 'srv'), cgroupRoot: join(dir, 'cg'), cgroupVersion: 2 as const, uidRange: { start: 210_000, size: 100 } };
    for (const [tag, d] of [
      ['plain', new FirecrackerDriver({ binary: bin, kvm: { kvmUsable: async () => true } })],
      ['jailed', new FirecrackerDriver({ binary: bin, kvm: { kvmUsable: async () => true }, jailer: jailCfg })],
    ] as const) {
      const s = { ...spec({ id: `vm-ns-${tag}`, vmDir: join(dir, 'vms', `vm-ns-${tag}`) }), netnsPath: netns };
      const inst = await d.launch(s);
      live.push(inst);
      assert.equal(statSync(`/proc/${inst.pid}/ns/net`).ino, statSync(netns).ino, `${tag}: the VMM runs in the VM netns`);
      assert.notEqual(statSync(`/proc/${inst.pid}/ns/net`).ino, statSync('/proc/self/ns/net').ino);
      await inst.kill();
      const missing = { ...s, id: `vm-ns-${tag}-x`, vmDir: join(dir, 'vms', `vm-ns-${tag}-x`), netnsPath: '/var/run/netns/mvm-no-such-netns' };
      await assert.rejects(d.launch(missing), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.VMM_ERROR && /exited during start-up/.test(e.message));
    }
  });

  it('runs the real jailer when the host has one', async (t) => {
    const jailer = realJailer();
    if (!jailer) return t.skip('no jailer binary on this host');
    const fc = realFirecracker();
    if (!fc) return t.skip('no firecracker binary on this host (the jailer needs the real one)');
    if (process.env.MVM_KVM_USABLE !== '1') return t.skip('KVM is not probed usable on this host (set MVM_KVM_USABLE=1 where it boots guests)');
    const kernelPath = process.env.MVM_FC_KERNEL;
    const rootfs = process.env.MVM_FC_ROOTFS;
    if (!kernelPath || !rootfs) return t.skip('set MVM_FC_KERNEL and MVM_FC_ROOTFS (raw image printing MVM-READY) to run the real jailed boot');
    const dir = join(root, 'real');
    const d = new FirecrackerDriver({ binary: fc, jailer: { binary: jailer, chrootBaseDir: join(dir, 'srv') } });
    const vmDir = join(dir, 'vms', 'vm-real');
    mkdirSync(vmDir, { recursive: true });
    const disk = join(vmDir, 'root.raw');
    writeFileSync(disk, readFileSync(rootfs));
    const inst = await d.launch({ ...spec({ id: 'vm-real', vmDir, kernelPath, nics: [] }), initrdPath: undefined, drives: [{ id: 'root', path: disk, format: 'raw', readOnly: false, root: true }] });
    live.push(inst);
    await waitFor(() => readFileSync(inst.consolePath, 'utf8').includes('MVM-READY id=vm-real'), 30000, 'real jailed guest readiness');
    await inst.stop(10000);
  });
});
