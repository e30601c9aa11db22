/**
 * The Firecracker driver against the test peer (a process speaking
 * Firecracker's API, spawned exactly like the real binary), and — where a real
 * Firecracker and a KVM that boots guests exist — against the real thing.
 */
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn as nodeSpawn, spawnSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import type { LaunchSpec, VmmInstance } from '../../src/core/ports/vmm.js';
import { pidAlive } from '../../src/vmm/proc.js';
import { FirecrackerDriver } from '../../src/vmm/firecracker/firecracker-driver.js';
import { fcFiles } from '../../src/vmm/firecracker/config.js';
import { hostCpuModel } from '../../src/vmm/firecracker/snapshot.js';
import { FC_FAULTS } from '../../src/vmm/firecracker/protocol.js';
import type { FirecrackerApiClient } from '../../src/vmm/firecracker/api-client.js';
import { memoryNonce, peerBinary, readPeerLog, realFirecracker, waitFor } from '../support/firecracker-harness.js';

const root = mkdtempSync(join(tmpdir(), 'fc-drv-'));
const vmsRoot = join(root, 'vms');
mkdirSync(vmsRoot);
const kernel = join(root, 'vmlinux');
writeFileSync(kernel, Buffer.alloc(8192));
const bin = peerBinary(root);
const live: VmmInstance[] = [];
let seq = 0;

after(async () => {
  for (const i of live) await i.kill().catch(() => undefined);
  rmSync(root, { recursive: true, force: true });
});

function mkSpec(over: Partial<LaunchSpec> = {}): LaunchSpec {
  const id = over.id ?? `vm-fc${++seq}`;
  const vmDir = over.vmDir ?? join(vmsRoot, id);
  mkdirSync(vmDir, { recursive: true });
  const disk = join(vmDir, 'root.raw');
  if (!existsSync(disk)) writeFileSync(disk, Buffer.alloc(2 * 1024 * 1024));
  return {
    id,
    name: id,
    vcpu: 2,
    memoryMiB: 256,
    kernelPath: kernel,
    cmdline: `console=ttyS0 reboot=k panic=1 root=/dev/vda rw mvm.id=${id}`,
    drives: [{ id: 'root', path: disk, format: 'raw', readOnly: false, root: true }],
    nics: [{ id: 'net-0', tap: `tap-${id}`.slice(0, 15), mac: '02:FC:00:00:00:01' }],
    vmDir,
    cgroupProcs: [],
    ...over,
  };
}

function mkDriver(log: string): FirecrackerDriver {
  return new FirecrackerDriver({ binary: bin, kvm: { kvmUsable: async () => true }, env: { FC_PEER_LOG: log } });
}

async function launch(d: FirecrackerDriver, spec: LaunchSpec): Promise<VmmInstance> {
  const inst = await d.launch(spec);
  live.push(inst);
  return inst;
}

const api = (i: VmmInstance): FirecrackerApiClient => (i as unknown as { api: FirecrackerApiClient }).api;
const ready = (spec: LaunchSpec): Promise<void> =>
  waitFor(() => existsSync(fcFiles(spec.vmDir).consoleLog) && readFileSync(fcFiles(spec.vmDir).consoleLog, 'utf8').includes(`MVM-READY id=${spec.id}`), 5000, 'guest readiness marker');

function leftovers(spec: LaunchSpec): string[] {
  const f = fcFiles(spec.vmDir);
  return [f.apiSock, f.logFifo, f.metricsFifo, f.vsockUds, f.consoleIn].filter((p) => existsSync(p));
}

describe('firecracker driver: capabilities', () => {
  it('is available with a binary and a KVM that boots guests', async () => {
    const caps = await mkDriver(join(root, 'caps.jsonl')).capabilities();
    assert.equal(caps.driver, 'firecracker');
    assert.equal(caps.available, true);
    assert.equal(caps.accel, 'kvm');
    assert.equal(caps.version, 'v1.10.1');
    assert.deepEqual(caps.diskFormats, ['raw']);
    assert.equal(caps.snapshot, true);
    assert.equal(caps.pause, true);
  });

  it('says why it is not available', async () => {
    const noBin = await new FirecrackerDriver({ binary: join(root, 'nowhere', 'firecracker'), kvm: { kvmUsable: async () => true } }).capabilities();
    assert.equal(noBin.available, false);
    assert.match(noBin.unavailableReason ?? '', /no firecracker binary/);
    const noPath = await new FirecrackerDriver({ binary: 'firecracker-not-installed' }).capabilities();
    assert.match(noPath.unavailableReason ?? '', /not on PATH/);
    const noKvm = await new FirecrackerDriver({ binary: bin, kvm: { kvmUsable: async () => false } }).capabilities();
    assert.equal(noKvm.available, false);
    assert.match(noKvm.unavailableReason ?? '', /KVM cannot boot a guest/);
    if (!process.env.MVM_KVM_USABLE) {
      const dflt = await new FirecrackerDriver({ binary: bin }).capabilities();
      assert.equal(dflt.available, false);
      assert.match(dflt.unavailableReason ?? '', existsSync('/dev/kvm') ? /not probed usable/ : /\/dev\/kvm does not exist/);
    }
  });
});

describe('firecracker driver: lifecycle against the peer', () => {
  it('launches: the exact calls in order, console, FIFOs, metrics', async () => {
    const log = join(root, 'launch.jsonl');
    const d = mkDriver(log);
    const spec = mkSpec();
    const inst = await launch(d, spec);
    assert.ok(pidAlive(inst.pid));
    assert.equal(inst.driver, 'firecracker');
    assert.equal(inst.consolePath, join(spec.vmDir, 'console.log'));
    const f = fcFiles(spec.vmDir);
    const calls = (inst.config.calls as Array<{ method: string; path: string; body: Record<string, unknown> }>);
    assert.deepEqual(
      calls.map((c) => `${c.method} ${c.path}`),
      ['PUT /machine-config', 'PUT /boot-source', 'PUT /drives/root', 'PUT /network-interfaces/net_0', 'PUT /actions'],
    );
    // The logger and metrics sinks are command-line flags: set before Firecracker prints anything.
    const args = inst.config.args as string[];
    assert.deepEqual(args.slice(args.indexOf('--log-path')), ['--log-path', f.logFifo, '--level', 'Info', '--show-level', '--metrics-path', f.metricsFifo]);
    assert.deepEqual(calls[0]!.body, { vcpu_count: 2, mem_size_mib: 256, smt: false, track_dirty_pages: false });
    // The VM's own disk by a path relative to the VM directory (Firecracker's cwd), so clones reopen their own disk.
    assert.deepEqual(calls[2]!.body, { drive_id: 'root', path_on_host: 'root.raw', is_root_device: true, is_read_only: false });
    assert.equal(join(spec.vmDir, 'root.raw'), spec.drives[0]!.path);
    assert.deepEqual(calls[3]!.body, { iface_id: 'net_0', host_dev_name: spec.nics[0]!.tap, guest_mac: '02:fc:00:00:00:01' });
    // What the peer received: the probe, then exactly the config calls, all accepted.
    const got = readPeerLog(log);
    assert.equal(`${got[0]!.method} ${got[0]!.path}`, 'GET /');
    const sent = got.filter((e) => e.method !== 'GET');
    assert.deepEqual(sent.map((e) => ({ method: e.method, path: e.path, body: e.body })), calls.map((c) => ({ method: c.method, path: c.path, body: c.body })));
    assert.ok(sent.every((e) => e.status === 204));
    await ready(spec);
    assert.equal(await inst.state(), 'running');
    // Firecracker's own lines went to its logger, none to the guest console (its stdout).
    assert.doesNotMatch(readFileSync(inst.consolePath, 'utf8'), /Running Firecracker|API server received/);
    assert.match(readFileSync(f.fcLog, 'utf8'), /Running Firecracker/);
    assert.ok(statSync(f.logFifo).isFIFO() && statSync(f.metricsFifo).isFIFO());
    const rec = JSON.parse(readFileSync(f.launch, 'utf8')) as { pid: number; apiSock: string };
    assert.equal(rec.pid, inst.pid);
    assert.equal(rec.apiSock, f.apiSock);
    // Metrics: block counters of the root drive, drained from the FIFO.
    const st = await inst.stats();
    const rootDev = st.block.find((b) => b.device === 'root');
    assert.ok(rootDev, JSON.stringify(st));
    assert.equal(rootDev.readBytes, 4 * 1024 * 1024);
    assert.equal(rootDev.readOps, 1024);
    assert.ok(st.memoryRssBytes > 0);
    const totals = JSON.parse(readFileSync(f.metricsTotals, 'utf8')) as { lines: number };
    assert.ok(totals.lines >= 1);
    await waitFor(() => existsSync(f.fcLog) && readFileSync(f.fcLog, 'utf8').includes('Put request on "/actions"'), 3000, 'logger FIFO drained');
    // Post-boot, the client refuses pre-boot calls before sending them.
    const before = readPeerLog(log).length;
    await assert.rejects(api(inst).putMachineConfig({ vcpu_count: 1, mem_size_mib: 128 }), (e: unknown) => {
      assert.ok(e instanceof MvmError);
      assert.equal(e.code, ErrorCodes.ILLEGAL_TRANSITION);
      assert.equal(e.details.faultMessage, FC_FAULTS.notAfterBoot);
      return true;
    });
    assert.equal(readPeerLog(log).length, before, 'nothing was sent');
    await inst.kill();
  });

  it('keeps the fault_message in a typed error that names the failed step, and cleans up', async () => {
    const d = mkDriver(join(root, 'fault.jsonl'));
    const spec = mkSpec();
    spec.drives.push({ id: 'data', path: join(spec.vmDir, 'missing.raw'), format: 'raw', readOnly: true, root: false });
    await assert.rejects(d.launch(spec), (e: unknown) => {
      assert.ok(e instanceof MvmError);
      assert.equal(e.code, ErrorCodes.VMM_ERROR);
      assert.equal(e.details.step, 'PUT /drives/data');
      assert.equal(e.details.status, 400);
      const fm = String(e.details.faultMessage);
      assert.match(fm, /^Unable to create the block device: BackingFile\(Os \{ code: 2, kind: NotFound/);
      assert.ok(e.message.includes(`Firecracker PUT /drives/data: ${fm}`), e.message);
      assert.ok(e.message.includes('failed at step "PUT /drives/data"'), e.message);
      return true;
    });
    const rec = JSON.parse(readFileSync(fcFiles(spec.vmDir).launch, 'utf8')) as { pid: number };
    await waitFor(() => !pidAlive(rec.pid), 3000, 'VMM killed');
    assert.deepEqual(leftovers(spec), []);

    const qcow = mkSpec();
    qcow.drives[0]!.format = 'qcow2';
    await assert.rejects(d.launch(qcow), (e: unknown) => {
      assert.ok(e instanceof MvmError);
      assert.equal(e.code, ErrorCodes.CAPABILITY_UNSUPPORTED);
      assert.equal(e.details.step, 'validate');
      return true;
    });
    assert.equal(existsSync(fcFiles(qcow.vmDir).launch), false, 'nothing spawned');
  });

  it('spawns through the injected spawn function, detached, with --api-sock and --id', async () => {
    const seen: Array<{ command: string; args: readonly string[]; detached: boolean | undefined }> = [];
    const d = new FirecrackerDriver({
      binary: bin,
      kvm: { kvmUsable: async () => true },
      spawn: (command, args, options) => {
        seen.push({ command, args, detached: options.detached });
        return nodeSpawn(command, args, options);
      },
    });
    const spec = mkSpec();
    const inst = await launch(d, spec);
    const call = seen.find((x) => x.command === '/bin/sh')!;
    assert.equal(call.detached, true);
    const f = fcFiles(spec.vmDir);
    assert.deepEqual(call.args.slice(3), [bin, '--api-sock', f.apiSock, '--id', spec.id, '--log-path', f.logFifo, '--level', 'Info', '--show-level', '--metrics-path', f.metricsFifo]);
    await inst.kill();
  });

  it('reports a VMM that dies during start-up, with its stderr', async () => {
    const dir = join(root, 'dying');
    mkdirSync(dir);
    const dying = join(dir, 'firecracker');
    writeFileSync(dying, '#!/bin/sh\n[ "$1" = --version ] && { echo "Firecracker v1.10.1"; exit 0; }\necho "Error creating the vmm: KVM is not usable here" >&2\nexit 1\n');
    chmodSync(dying, 0o755);
    const spec = mkSpec();
    await assert.rejects(new FirecrackerDriver({ binary: dying, kvm: { kvmUsable: async () => true } }).launch(spec), (e: unknown) => {
      assert.ok(e instanceof MvmError);
      assert.equal(e.code, ErrorCodes.VMM_ERROR);
      assert.equal(e.details.step, 'api-socket');
      assert.match(e.message, /exited during start-up: VMM process \d+ exited with code 1: Error creating the vmm: KVM is not usable here$/);
      return true;
    });
    assert.deepEqual(leftovers(spec), []);
  });

  it('adds vsock, MMDS and balloon devices in order, all accepted', async () => {
    const log = join(root, 'extras.jsonl');
    const d = new FirecrackerDriver({
      binary: bin,
      kvm: { kvmUsable: async () => true },
      env: { FC_PEER_LOG: log },
      extras: (sp) => ({
        vsock: { guestCid: 3 },
        mmds: { data: { 'mvm': { id: sp.id } } },
        balloon: { amountMib: 0, deflateOnOom: true, statsPollingIntervalS: 1 },
        driveRateLimiter: { bandwidth: { size: 10_000_000, refill_time: 100 } },
      }),
    });
    const spec = mkSpec();
    const inst = await launch(d, spec);
    const sent = readPeerLog(log).filter((e) => e.method !== 'GET');
    assert.deepEqual(
      sent.map((e) => `${e.path} ${e.status}`),
      ['/machine-config 204', '/boot-source 204', '/drives/root 204', '/network-interfaces/net_0 204', '/vsock 204', '/mmds/config 204', '/mmds 204', '/balloon 204', '/actions 204'],
    );
    assert.deepEqual(sent.find((e) => e.path === '/vsock')!.body, { guest_cid: 3, uds_path: fcFiles(spec.vmDir).vsockUds });
    assert.deepEqual(sent.find((e) => e.path === '/mmds/config')!.body, { network_interfaces: ['net_0'], version: 'V2' });
    assert.ok(statSync(fcFiles(spec.vmDir).vsockUds).isSocket());
    assert.deepEqual(await api(inst).getMmds(), { mvm: { id: spec.id } });
    await inst.kill();
    assert.deepEqual(leftovers(spec), [], 'the vsock socket goes too');
  });

  it('refuses specs Firecracker cannot run before spawning', async () => {
    const d = mkDriver(join(root, 'invalid.jsonl'));
    for (const [over, code, field] of [
      [{ vcpu: 33 }, ErrorCodes.VALIDATION_FAILED, /vcpu/],
      [{ memoryMiB: 0 }, ErrorCodes.VALIDATION_FAILED, /memoryMiB/],
      [{ id: 'vm_bad id' }, ErrorCodes.VALIDATION_FAILED, /id/],
    ] as const) {
      const sp = mkSpec({ ...over, ...(over.id ? { vmDir: join(vmsRoot, 'bad') } : {}) });
      await assert.rejects(d.launch(sp), (e: unknown) => e instanceof MvmError && e.code === code && field.test(e.message) && e.details.step === 'validate');
    }
  });

  it('pauses and resumes', async () => {
    const log = join(root, 'pause.jsonl');
    const spec = mkSpec();
    const inst = await launch(mkDriver(log), spec);
    await ready(spec);
    await inst.pause!();
    assert.equal(await inst.state(), 'paused');
    await inst.resume!();
    assert.equal(await inst.state(), 'running');
    assert.deepEqual(
      readPeerLog(log).filter((e) => e.path === '/vm').map((e) => `${String(e.body?.state)} ${e.status}`),
      ['Paused 204', 'Resumed 204'],
    );
    await inst.kill();
  });

  it('snapshots, then restores on a fresh process with the guest memory intact', async () => {
    const log = join(root, 'snap.jsonl');
    const d = mkDriver(log);
    const spec = mkSpec();
    const a = await launch(d, spec);
    await ready(spec);
    const snapDir = join(root, 'snap-a');
    const files = await a.snapshot!(snapDir);
    assert.equal(files.dir, snapDir);
    assert.ok(existsSync(files.memoryFile) && existsSync(files.stateFile!));
    assert.equal(await a.state(), 'paused', 'left paused');
    const meta = JSON.parse(readFileSync(join(snapDir, 'snapshot.json'), 'utf8')) as { driver: string; vmmVersion: string; nics: unknown[]; drives: Array<{ path_on_host: string }> };
    assert.equal(meta.driver, 'firecracker');
    assert.equal(meta.vmmVersion, 'v1.10.1');
    const nonce = memoryNonce(files.memoryFile);
    assert.ok(nonce.length > 0);
    const created = readPeerLog(log).filter((e) => e.path === '/snapshot/create');
    assert.deepEqual(created.map((e) => e.body), [{ snapshot_type: 'Full', snapshot_path: files.stateFile, mem_file_path: files.memoryFile }]);
    await a.kill();
    assert.deepEqual(leftovers(spec), []);

    // Restore into the same VM (its disks are where the snapshot expects them).
    const log2 = join(root, 'restore.jsonl');
    const b = await launch(mkDriver(log2), { ...spec, restoreFrom: files });
    assert.equal(b.config.mode, 'restore');
    const sent = readPeerLog(log2).filter((e) => e.method !== 'GET');
    assert.deepEqual(sent.map((e) => `${e.method} ${e.path} ${e.status}`), ['PUT /snapshot/load 204']);
    assert.deepEqual(sent[0]!.body, {
      snapshot_path: files.stateFile,
      mem_backend: { backend_type: 'File', backend_path: files.memoryFile },
      track_dirty_pages: false,
      resume_vm: true,
    });
    assert.equal(await b.state(), 'running');
    const again = await b.snapshot!(join(root, 'snap-b'));
    assert.equal(memoryNonce(again.memoryFile), nonce, 'guest memory survived snapshot + restore');
    await b.kill();

    // Restored on another tap: the load carries a network override.
    const log3 = join(root, 'retap.jsonl');
    const retap = await launch(mkDriver(log3), { ...spec, nics: [{ id: 'net-0', tap: 'tap-other', mac: '02:fc:00:00:00:09' }], restoreFrom: files });
    const load = readPeerLog(log3).find((e) => e.path === '/snapshot/load')!;
    assert.deepEqual(load.body?.network_overrides, [{ iface_id: 'net_0', host_dev_name: 'tap-other' }]);
    await retap.kill();

    // A clone in another VM directory, un-jailed: its own raw copy of the snapshot's disk at the same
    // relative path, which Firecracker reopens from its own working directory. The source's disk may be gone.
    assert.deepEqual(meta.drives.map((x) => x.path_on_host), ['root.raw']);
    rmSync(spec.drives[0]!.path);
    const d2 = mkDriver(join(root, 'clone.jsonl'));
    const clones: LaunchSpec[] = [];
    for (const i of [1, 2]) {
      const other = mkSpec({ nics: [{ id: 'net-0', tap: `tap-clone-${i}`, mac: `02:fc:00:00:01:0${i}` }] });
      const disk = await d2.prepareRestoreDisk(snapDir, other.vmDir);
      assert.deepEqual(disk, { id: 'root', path: join(other.vmDir, 'root.raw'), format: 'raw', readOnly: false, root: true });
      assert.notEqual(statSync(disk.path).ino, statSync(join(snapDir, 'disk-root.raw')).ino, 'the clone writes its own file');
      const c = await launch(d2, { ...other, drives: [disk], restoreFrom: d2.snapshotFiles(snapDir) });
      assert.equal(await c.state(), 'running');
      assert.equal(memoryNonce((await c.snapshot!(join(root, `snap-clone-${i}`))).memoryFile), nonce, `clone ${i} has the source's memory`);
      await c.kill();
      clones.push(other);
    }
    // A clone whose disk was not prepared: the snapshot's relative drive path opens nothing in its
    // directory; Firecracker (the peer) refuses the load, its fault reaches the caller, nothing is left.
    const bare = mkSpec();
    rmSync(bare.drives[0]!.path);
    await assert.rejects(launch(d2, { ...bare, restoreFrom: d2.snapshotFiles(snapDir) }), (e: unknown) => {
      assert.ok(e instanceof MvmError, String(e));
      assert.equal(e.code, ErrorCodes.VMM_ERROR);
      assert.equal(e.details.step, 'PUT /snapshot/load');
      assert.match(e.message, /Cannot open the block device backing file/);
      return true;
    });
    assert.deepEqual(leftovers(bare), []);
    const loads = readPeerLog(join(root, 'clone.jsonl')).filter((e) => e.path === '/snapshot/load' && e.status === 204);
    assert.deepEqual(loads.map((e) => [e.status, e.body?.network_overrides]), [
      [204, [{ iface_id: 'net_0', host_dev_name: 'tap-clone-1' }]],
      [204, [{ iface_id: 'net_0', host_dev_name: 'tap-clone-2' }]],
    ]);
  });

  it('refuses an incompatible restore before spawning, with the reason', async () => {
    const spec = mkSpec();
    const d = mkDriver(join(root, 'compat.jsonl'));
    const a = await launch(d, spec);
    await ready(spec);
    const snapDir = join(root, 'snap-compat');
    await a.snapshot!(snapDir);
    await a.kill();
    const meta = JSON.parse(readFileSync(join(snapDir, 'snapshot.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(meta.driver, 'firecracker');
    assert.equal(meta.vmmVersion, 'v1.10.1');
    assert.equal(meta.cpuModel, hostCpuModel());
    assert.deepEqual(meta.kernel, { path: spec.kernelPath, sizeBytes: statSync(spec.kernelPath).size });
    let n = 0;
    const refused = async (edit: Record<string, unknown>, over: Partial<LaunchSpec>, code: string, what: RegExp): Promise<void> => {
      const dir = join(root, `snap-compat-${++n}`);
      cpSync(snapDir, dir, { recursive: true });
      writeFileSync(join(dir, 'snapshot.json'), JSON.stringify({ ...meta, ...edit }));
      const target = mkSpec(over);
      const disk = await d.prepareRestoreDisk(snapDir, target.vmDir);
      await assert.rejects(d.launch({ ...target, drives: [disk], restoreFrom: d.snapshotFiles(dir) }), (e: unknown) => {
        assert.ok(e instanceof MvmError, String(e));
        assert.equal(e.code, code, e.message);
        assert.equal(e.details.step, 'restore-check');
        assert.match(e.message, what);
        return true;
      });
      assert.equal(existsSync(fcFiles(target.vmDir).launch), false, 'nothing was started');
    };
    await refused({ vmmVersion: 'v1.4.0' }, {}, ErrorCodes.CAPABILITY_UNSUPPORTED, /vmmVersion: snapshot has "v1.4.0", this VM has "v1.10.1"/);
    await refused({ cpuModel: 'GenuineIntel Some Other CPU' }, {}, ErrorCodes.CAPABILITY_UNSUPPORTED, /cpuModel: snapshot has "GenuineIntel Some Other CPU"/);
    await refused({ jailed: true }, {}, ErrorCodes.CAPABILITY_UNSUPPORTED, /jailed: the snapshot was taken under the jailer/);
    await refused({ driver: 'qemu' }, {}, ErrorCodes.CAPABILITY_UNSUPPORTED, /written by the qemu driver/);
    await refused({}, { vcpu: 1 }, ErrorCodes.VALIDATION_FAILED, /vcpu: snapshot has 2, this VM has 1/);
    await refused({ kernel: { path: '/boot/other-vmlinux', sizeBytes: 1 } }, {}, ErrorCodes.VALIDATION_FAILED, /kernel: snapshot has/);
    // Incomplete: the memory file is gone.
    const dir = join(root, 'snap-compat-nomem');
    cpSync(snapDir, dir, { recursive: true });
    rmSync(join(dir, 'memory'));
    const target = mkSpec();
    const disk = await d.prepareRestoreDisk(dir, target.vmDir);
    await assert.rejects(d.launch({ ...target, drives: [disk], restoreFrom: d.snapshotFiles(dir) }), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.VALIDATION_FAILED && /memory is missing/.test(e.message));
  });

  it('stops gracefully with SendCtrlAltDel (also from paused) and removes its files', async () => {
    const log = join(root, 'stop.jsonl');
    const spec = mkSpec();
    const inst = await launch(mkDriver(log), spec);
    await ready(spec);
    await inst.pause!();
    const t0 = Date.now();
    await inst.stop(5000);
    assert.ok(Date.now() - t0 < 4000, 'stopped by the guest, not by the timeout kill');
    const exit = await inst.exited;
    assert.equal(exit.code, 0);
    assert.equal(exit.signal, null);
    assert.match(exit.reason, /guest powered off/);
    assert.deepEqual(
      readPeerLog(log).filter((e) => e.method !== 'GET').slice(-2).map((e) => `${e.path} ${JSON.stringify(e.body)}`),
      ['/vm {"state":"Resumed"}', '/actions {"action_type":"SendCtrlAltDel"}'],
    );
    assert.match(readFileSync(inst.consolePath, 'utf8'), /reboot: Restarting system/);
    assert.deepEqual(leftovers(spec), []);
    assert.equal(await inst.state(), 'exited');
  });

  it('kills', async () => {
    const spec = mkSpec();
    const inst = await launch(mkDriver(join(root, 'kill.jsonl')), spec);
    await inst.kill();
    const exit = await inst.exited;
    assert.equal(exit.signal, 'SIGKILL');
    assert.ok(!pidAlive(inst.pid));
    assert.deepEqual(leftovers(spec), []);
  });

  it('re-adopts a VMM left by an earlier service process', async () => {
    const log = join(root, 'adopt.jsonl');
    const spec = mkSpec();
    const launcher = new URL('../support/firecracker-launcher.js', import.meta.url).pathname;
    const r = spawnSync(process.execPath, [launcher, JSON.stringify({ spec, binary: bin, env: { FC_PEER_LOG: log } })], { encoding: 'utf8', timeout: 20000 });
    assert.equal(r.status, 0, r.stderr);
    const { pid } = JSON.parse(r.stdout) as { pid: number };
    assert.ok(pidAlive(pid), 'the VMM outlived the service process that started it');
    await ready(spec);

    const d = mkDriver(log);
    const found = await d.findProcesses(vmsRoot);
    assert.ok(found.some((p) => p.pid === pid && p.id === spec.id && p.vmDir === spec.vmDir), JSON.stringify(found));
    assert.deepEqual(await d.findProcesses(join(root, 'elsewhere')), []);
    assert.equal(await d.adopt('vm-other', spec.vmDir), null);
    const inst = await d.adopt(spec.id, spec.vmDir);
    assert.ok(inst);
    live.push(inst);
    assert.equal(inst.pid, pid);
    assert.equal(await inst.state(), 'running');
    assert.equal((inst.config.calls as unknown[]).length, 5);
    const st = await inst.stats();
    assert.equal(st.block.find((b) => b.device === 'root')?.readBytes, 4 * 1024 * 1024);
    await inst.pause!();
    assert.equal(await inst.state(), 'paused');
    await inst.stop(5000);
    await inst.exited;
    assert.ok(!pidAlive(pid));
    assert.deepEqual(leftovers(spec), []);
    assert.equal(await d.adopt(spec.id, spec.vmDir), null, 'nothing to adopt once it is gone');
  });
});

describe('firecracker driver: real Firecracker', () => {
  it('boots a guest with the real binary and KVM', async (t) => {
    const real = realFirecracker();
    if (!real) return t.skip('no firecracker binary on this host (real Firecracker + KVM needed)');
    if (process.env.MVM_KVM_USABLE !== '1') return t.skip('KVM is not probed usable on this host (set MVM_KVM_USABLE=1 where it boots guests)');
    const kernelPath = process.env.MVM_FC_KERNEL;
    const rootfs = process.env.MVM_FC_ROOTFS;
    if (!kernelPath || !rootfs) return t.skip('set MVM_FC_KERNEL (vmlinux) and MVM_FC_ROOTFS (raw ext4 image printing MVM-READY) to run the real boot');
    const d = new FirecrackerDriver({ binary: real });
    const spec = mkSpec({ kernelPath, nics: [] });
    spec.drives = [{ id: 'root', path: rootfs, format: 'raw', readOnly: true, root: true }];
    const inst = await launch(d, spec);
    await waitFor(() => readFileSync(inst.consolePath, 'utf8').includes(`MVM-READY id=${spec.id}`), 30000, 'real guest readiness');
    await inst.stop(10000);
  });
});
