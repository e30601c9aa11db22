/**
 * The Firecracker test peer refuses what Firecracker refuses: each case asserts
 * the 400 and Firecracker's fault_message (v1.17's wording; the answers
 * themselves are checked against the real binary by
 * test/integration/firecracker-differential.test.ts).
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FC_FAULTS } from '../../src/vmm/firecracker/protocol.js';
import { buildBootCalls, buildRestoreCalls } from '../../src/vmm/firecracker/config.js';
import { nodeJailFs } from '../../src/vmm/firecracker/jailer.js';
import type { ApiCall } from '../../src/vmm/firecracker/api-client.js';
import type { LaunchSpec } from '../../src/core/ports/vmm.js';
import { memoryNonce, raw, readPeerLog, startApiProcess, startPeer, stopApiProcess, waitFor, type RunningPeer } from '../support/firecracker-harness.js';

const root = mkdtempSync(join(tmpdir(), 'fc-peer-test-'));
const kernel = join(root, 'vmlinux');
const disk = join(root, 'root.raw');
writeFileSync(kernel, Buffer.alloc(4096));
writeFileSync(disk, Buffer.alloc(1024 * 1024));

const peers: RunningPeer[] = [];
let n = 0;
async function peer(): Promise<RunningPeer> {
  const dir = join(root, `p${n++}`);
  mkdirSync(dir);
  const p = await startPeer(dir, ['--id', `peer-${n}`]);
  peers.push(p);
  return p;
}

const fault = (r: { json: unknown }): string => (r.json as { fault_message: string }).fault_message;
const INVALID_VCPUS = 'Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.';
const INVALID_MEMORY = 'Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.';
const LOAD_NOT_ALLOWED = `Load snapshot error: ${FC_FAULTS.loadNotAllowed}`;

async function configure(sock: string, id = 'vm-test'): Promise<void> {
  for (const [path, body] of [
    ['/machine-config', { vcpu_count: 2, mem_size_mib: 256 }],
    ['/boot-source', { kernel_image_path: kernel, boot_args: `console=ttyS0 mvm.id=${id}` }],
    ['/drives/root', { drive_id: 'root', path_on_host: disk, is_root_device: true, is_read_only: false }],
  ] as const) {
    const r = await raw(sock, 'PUT', path, body);
    assert.equal(r.status, 204, `${path}: ${r.text}`);
  }
}

after(async () => {
  for (const p of peers) p.proc.kill('SIGKILL');
  await Promise.all(peers.map((p) => p.exited));
  rmSync(root, { recursive: true, force: true });
});

describe('firecracker peer: request validation', () => {
  let p: RunningPeer;
  before(async () => {
    p = await peer();
  });

  it('rejects a missing required field', async () => {
    const r = await raw(p.sock, 'PUT', '/machine-config', { vcpu_count: 2 });
    assert.equal(r.status, 400);
    assert.equal(fault(r), FC_FAULTS.serde('missing field `mem_size_mib`'));
  });

  it('rejects unknown fields, wrong types and out-of-range values', async () => {
    const unknown = await raw(p.sock, 'PUT', '/boot-source', { kernel_image_path: kernel, kernel_args: 'x' });
    assert.equal(unknown.status, 400);
    assert.match(fault(unknown), /^An error occurred when deserializing the json body of a request: unknown field `kernel_args`/);
    const type = await raw(p.sock, 'PUT', '/machine-config', { vcpu_count: '2', mem_size_mib: 128 });
    assert.equal(type.status, 400);
    assert.match(fault(type), /invalid type: string "2", expected u8/);
    const range = await raw(p.sock, 'PUT', '/machine-config', { vcpu_count: 33, mem_size_mib: 128 });
    assert.equal(range.status, 400);
    assert.equal(fault(range), INVALID_VCPUS);
    const smt = await raw(p.sock, 'PUT', '/machine-config', { vcpu_count: 3, mem_size_mib: 128, smt: true });
    assert.equal(fault(smt), INVALID_VCPUS);
    const mem = await raw(p.sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 0 });
    assert.equal(fault(mem), INVALID_MEMORY);
    const bad = await raw(p.sock, 'PUT', '/machine-config', '{"vcpu_count": 1,');
    assert.equal(bad.status, 400);
    assert.match(fault(bad), /^An error occurred when deserializing the json body of a request/);
  });

  it('rejects resource ids that are not Firecracker ids or do not match the body', async () => {
    const mismatch = await raw(p.sock, 'PUT', '/drives/root', { drive_id: 'other', path_on_host: disk, is_root_device: true, is_read_only: false });
    assert.equal(fault(mismatch), FC_FAULTS.idMismatch);
    const invalid = await raw(p.sock, 'PUT', '/drives/root-1', { drive_id: 'root-1', path_on_host: disk, is_root_device: true, is_read_only: false });
    assert.equal(fault(invalid), FC_FAULTS.invalidId);
  });

  it('rejects files that do not exist (but creates missing log and metrics files)', async () => {
    const k = await raw(p.sock, 'PUT', '/boot-source', { kernel_image_path: join(root, 'nope') });
    assert.equal(k.status, 400);
    assert.equal(fault(k), 'Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)');
    const d = await raw(p.sock, 'PUT', '/drives/data', { drive_id: 'data', path_on_host: join(root, 'missing.raw'), is_root_device: false, is_read_only: true });
    assert.equal(d.status, 400);
    assert.match(fault(d), /^Unable to create the block device: BackingFile\(Os \{ code: 2, kind: NotFound/);
    const m = await raw(p.sock, 'PUT', '/metrics', { metrics_path: join(root, 'no-dir', 'm.json') });
    assert.match(fault(m), /No such file or directory/);
    // Firecracker v1.17 creates a missing sink file; the logger may be set again, metrics only once.
    for (const f of ['created.log', 'created.log']) assert.equal((await raw(p.sock, 'PUT', '/logger', { log_path: join(root, f), level: 'warn' })).status, 204);
    assert.equal((await raw(p.sock, 'PUT', '/metrics', { metrics_path: join(root, 'created.metrics') })).status, 204);
    assert.ok(existsSync(join(root, 'created.log')) && existsSync(join(root, 'created.metrics')));
    assert.match(fault(await raw(p.sock, 'PUT', '/metrics', { metrics_path: join(root, 'created.metrics') })), /Reinitialization of metrics not allowed/);
  });

  it('rejects a second root device and unknown routes', async () => {
    assert.equal((await raw(p.sock, 'PUT', '/drives/root', { drive_id: 'root', path_on_host: disk, is_root_device: true, is_read_only: true })).status, 204);
    const second = await raw(p.sock, 'PUT', '/drives/root2', { drive_id: 'root2', path_on_host: disk, is_root_device: true, is_read_only: true });
    assert.equal(fault(second), `Drive config error: ${FC_FAULTS.rootExists}`);
    const route = await raw(p.sock, 'PUT', '/nothing', {});
    // Firecracker names the first path segment only.
    assert.equal(fault(route), FC_FAULTS.invalidPath('PUT', 'nothing'));
  });
});

describe('firecracker peer: phases', () => {
  it('refuses post-boot calls before boot and InstanceStart without a boot source', async () => {
    const p = await peer();
    const pause = await raw(p.sock, 'PATCH', '/vm', { state: 'Paused' });
    assert.equal(pause.status, 400);
    assert.equal(fault(pause), FC_FAULTS.notBeforeBoot);
    const cad = await raw(p.sock, 'PUT', '/actions', { action_type: 'SendCtrlAltDel' });
    assert.equal(fault(cad), FC_FAULTS.notBeforeBoot);
    const snap = await raw(p.sock, 'PUT', '/snapshot/create', { snapshot_path: join(root, 's'), mem_file_path: join(root, 'm') });
    assert.equal(fault(snap), FC_FAULTS.notBeforeBoot);
    const start = await raw(p.sock, 'PUT', '/actions', { action_type: 'InstanceStart' });
    assert.equal(start.status, 400);
    assert.equal(fault(start), `Start microvm error: ${FC_FAULTS.missingKernel}`);
    const info = await raw(p.sock, 'GET', '/');
    assert.equal((info.json as { state: string }).state, 'Not started');
  });

  it('boots once, then refuses pre-boot calls and a second InstanceStart', async () => {
    const p = await peer();
    await configure(p.sock, 'vm-phases');
    const start = await raw(p.sock, 'PUT', '/actions', { action_type: 'InstanceStart' });
    assert.equal(start.status, 204);
    await waitFor(() => p.stdout().includes('MVM-READY id=vm-phases'), 5000, 'readiness marker');
    const again = await raw(p.sock, 'PUT', '/actions', { action_type: 'InstanceStart' });
    assert.equal(again.status, 400);
    assert.equal(fault(again), FC_FAULTS.notAfterBoot);
    const machine = await raw(p.sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 128 });
    assert.equal(machine.status, 400);
    assert.equal(fault(machine), FC_FAULTS.notAfterBoot);
    const drive = await raw(p.sock, 'PUT', '/drives/root', { drive_id: 'root', path_on_host: disk, is_root_device: true, is_read_only: false });
    // After boot a drive would be hot-plugged, which needs PCI (Firecracker v1.17's answer).
    assert.equal(fault(drive), 'PCI is not enabled');
    const load = await raw(p.sock, 'PUT', '/snapshot/load', { snapshot_path: join(root, 's'), mem_backend: { backend_type: 'File', backend_path: join(root, 'm') } });
    assert.equal(fault(load), FC_FAULTS.notAfterBoot);
    assert.equal(((await raw(p.sock, 'GET', '/')).json as { state: string }).state, 'Running');
    // The log records each answer.
    const log = readPeerLog(p.log);
    assert.deepEqual(
      log.filter((e) => e.method === 'PUT').map((e) => `${e.path} ${e.status}`),
      ['/machine-config 204', '/boot-source 204', '/drives/root 204', '/actions 204', '/actions 400', '/machine-config 400', '/drives/root 400', '/snapshot/load 400'],
    );
  });

  it('snapshots only while paused; loads only on a fresh process; memory survives', async () => {
    const p = await peer();
    await configure(p.sock, 'vm-snap');
    assert.equal((await raw(p.sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    await waitFor(() => p.stdout().includes('MVM-READY id=vm-snap'), 5000, 'boot');
    const dir = join(root, 'snap1');
    mkdirSync(dir);
    const body = { snapshot_type: 'Full', snapshot_path: join(dir, 'vm.state'), mem_file_path: join(dir, 'memory') };
    const running = await raw(p.sock, 'PUT', '/snapshot/create', body);
    assert.equal(running.status, 400);
    assert.match(fault(running), /unavailable while running/);
    const diff = await raw(p.sock, 'PATCH', '/vm', { state: 'Paused' });
    assert.equal(diff.status, 204);
    // Firecracker v1.17 takes a Diff snapshot without dirty page tracking too.
    assert.equal((await raw(p.sock, 'PUT', '/snapshot/create', { ...body, snapshot_type: 'Diff' })).status, 204);
    assert.equal((await raw(p.sock, 'PUT', '/snapshot/create', body)).status, 204);
    assert.ok(existsSync(body.snapshot_path) && existsSync(body.mem_file_path));
    const nonce = memoryNonce(body.mem_file_path);
    assert.match(p.stdout(), new RegExp(`memory nonce=${nonce}`));

    // Not on a configured process.
    const configured = await peer();
    assert.equal((await raw(configured.sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 128 })).status, 204);
    const load = { snapshot_path: body.snapshot_path, mem_backend: { backend_type: 'File', backend_path: body.mem_file_path }, resume_vm: true };
    const refused = await raw(configured.sock, 'PUT', '/snapshot/load', load);
    assert.equal(refused.status, 400);
    assert.equal(fault(refused), LOAD_NOT_ALLOWED);

    // A fresh one (logger and metrics do not count as configuration) restores the memory.
    const fresh = await peer();
    const logFile = join(root, 'fresh.log');
    writeFileSync(logFile, '');
    assert.equal((await raw(fresh.sock, 'PUT', '/logger', { log_path: logFile, level: 'Info' })).status, 204);
    const both = await raw(fresh.sock, 'PUT', '/snapshot/load', { ...load, mem_file_path: body.mem_file_path });
    assert.match(fault(both), /either `mem_backend` or `mem_file_path`/);
    assert.equal((await raw(fresh.sock, 'PUT', '/snapshot/load', load)).status, 204);
    assert.equal(((await raw(fresh.sock, 'GET', '/')).json as { state: string }).state, 'Running');
    assert.equal(((await raw(fresh.sock, 'GET', '/machine-config')).json as { vcpu_count: number }).vcpu_count, 2);
    assert.equal(fault(await raw(fresh.sock, 'PUT', '/actions', { action_type: 'InstanceStart' })), FC_FAULTS.notAfterBoot);
    assert.equal((await raw(fresh.sock, 'PATCH', '/vm', { state: 'Paused' })).status, 204);
    const dir2 = join(root, 'snap2');
    mkdirSync(dir2);
    assert.equal((await raw(fresh.sock, 'PUT', '/snapshot/create', { snapshot_path: join(dir2, 'vm.state'), mem_file_path: join(dir2, 'memory') })).status, 204);
    assert.equal(memoryNonce(join(dir2, 'memory')), nonce, 'guest memory carried through snapshot + restore');
  });

  it('exits 0 after SendCtrlAltDel, and 1 after a failed snapshot load (refusing connections at once)', async () => {
    const p = await peer();
    await configure(p.sock, 'vm-cad');
    assert.equal((await raw(p.sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    assert.equal((await raw(p.sock, 'PUT', '/actions', { action_type: 'SendCtrlAltDel' })).status, 204);
    assert.equal(await p.exited, 0);

    const q = await peer();
    const r = await raw(q.sock, 'PUT', '/snapshot/load', { snapshot_path: join(root, 'none.state'), mem_backend: { backend_type: 'File', backend_path: join(root, 'none.mem') } });
    assert.equal(r.status, 400);
    assert.match(fault(r), /^Load snapshot error: Failed to restore from snapshot: /);
    await assert.rejects(raw(q.sock, 'GET', '/'), 'no request is answered after a failed load');
    assert.equal(await q.exited, 1);
  });
});

/**
 * The peer makes a wrong request fail a test: every request the driver
 * generates (config.ts, all optional devices on) is accepted as is, and each
 * mutant of it — one required field removed (the required fields listed here
 * from Firecracker's swagger, independently of the peer's own tables), or a
 * post-boot call sent before InstanceStart, or a pre-boot call after it, or a
 * snapshot load after boot-specific configuration — is answered 400.
 */
describe("firecracker peer: the driver's own requests, mutated", () => {
  const REQUIRED: Record<string, string[]> = {
    '/machine-config': ['vcpu_count', 'mem_size_mib'],
    '/boot-source': ['kernel_image_path'],
    // is_read_only is optional (false) in Firecracker v1.17; path_on_host is optional to serde (a
    // vhost-user drive has a socket instead) and refused after parsing (MISSING_FAULT).
    '/drives/{id}': ['drive_id', 'is_root_device', 'path_on_host'],
    '/network-interfaces/{id}': ['iface_id', 'host_dev_name'],
    '/metrics': ['metrics_path'],
    '/vsock': ['guest_cid', 'uds_path'],
    '/mmds/config': ['network_interfaces'],
    '/balloon': ['amount_mib', 'deflate_on_oom'],
    '/actions': ['action_type'],
    '/vm': ['state'],
    '/snapshot/create': ['snapshot_path', 'mem_file_path'],
    '/snapshot/load': ['snapshot_path'],
  };
  const routeOf = (path: string): string => path.replace(/^\/(drives|network-interfaces)\/.*$/, '/$1/{id}');
  /** The fault of a missing field that serde does not report itself. */
  const MISSING_FAULT: Record<string, RegExp> = { '/drives/{id} path_on_host': /Unable to create the virtio block device: Invalid block config/ };
  let calls: ApiCall[];
  let restore: ApiCall[];
  let snapDir: string;

  /** Send `seq` to a fresh peer; returns the answers. */
  async function play(seq: ApiCall[]): Promise<Array<{ status: number; fault?: string }>> {
    const p = await peer();
    const out: Array<{ status: number; fault?: string }> = [];
    for (const c of seq) {
      const r = await raw(p.sock, c.method, c.path, c.body);
      out.push({ status: r.status, ...(r.status >= 400 ? { fault: fault(r) } : {}) });
      if (r.status >= 400) break;
    }
    p.proc.kill('SIGKILL');
    await p.exited;
    // Firecracker binds the vsock socket at PUT /vsock and refuses an existing file: clear it for the next peer.
    for (const f of [join(root, 'mut', 'vsock.sock'), join(root, 'mut', 'vsock2.sock')]) rmSync(f, { force: true });
    return out;
  }

  before(async () => {
    const dir = join(root, 'mut');
    mkdirSync(dir);
    const files = { logFifo: join(dir, 'log.fifo'), metricsFifo: join(dir, 'metrics.fifo'), vsockUds: join(dir, 'vsock.sock') };
    for (const f of [files.logFifo, files.metricsFifo]) nodeJailFs.mkfifo(f);
    const spec: LaunchSpec = {
      id: 'vm-mut',
      name: 'vm-mut',
      vcpu: 2,
      memoryMiB: 256,
      kernelPath: kernel,
      cmdline: 'console=ttyS0 mvm.id=vm-mut',
      drives: [
        { id: 'root', path: disk, format: 'raw', readOnly: false, root: true },
        { id: 'data', path: disk, format: 'raw', readOnly: true, root: false },
      ],
      nics: [{ id: 'net-0', tap: 'tap-mut0', mac: '02:fc:00:00:00:42' }],
      vmDir: dir,
      cgroupProcs: [],
    };
    const bucket = { size: 1000, refill_time: 100 };
    calls = buildBootCalls(spec, files, {
      vsock: { guestCid: 3 },
      mmds: { data: { latest: { 'meta-data': { 'instance-id': 'vm-mut' } } } },
      balloon: { amountMib: 64, deflateOnOom: true, statsPollingIntervalS: 1 },
      driveRateLimiter: { bandwidth: bucket },
      netRxRateLimiter: { ops: bucket },
      netTxRateLimiter: { bandwidth: bucket },
    });
    snapDir = join(dir, 'snap');
    mkdirSync(snapDir);
    // A real snapshot to load, taken by a peer the unmutated calls configured.
    const p = await peer();
    for (const c of calls) assert.equal((await raw(p.sock, c.method, c.path, c.body)).status, 204, `${c.method} ${c.path}`);
    assert.equal((await raw(p.sock, 'PATCH', '/vm', { state: 'Paused' })).status, 204);
    const snap = { snapshot_type: 'Full', snapshot_path: join(snapDir, 'vm.state'), mem_file_path: join(snapDir, 'memory') };
    assert.equal((await raw(p.sock, 'PUT', '/snapshot/create', snap)).status, 204);
    p.proc.kill('SIGKILL');
    await p.exited;
    rmSync(files.vsockUds, { force: true });
    restore = buildRestoreCalls({ ...spec, nics: [{ id: 'net-0', tap: 'tap-mut1', mac: '02:fc:00:00:00:43' }] }, { ...files, vsockUds: join(dir, 'vsock2.sock') }, { dir: snapDir, memoryFile: snap.mem_file_path, stateFile: snap.snapshot_path }, { vsock: { guestCid: 3 } });
  });

  it('accepts the unmutated boot and restore sequences', async () => {
    assert.deepEqual(
      calls.map((c) => `${c.method} ${c.path}`),
      ['PUT /machine-config', 'PUT /boot-source', 'PUT /drives/root', 'PUT /drives/data', 'PUT /network-interfaces/net_0', 'PUT /vsock', 'PUT /mmds/config', 'PUT /mmds', 'PUT /balloon', 'PUT /actions'],
    );
    const boot = await play(calls);
    assert.ok(boot.length === calls.length && boot.every((r) => r.status === 204), JSON.stringify(boot));
    const load = await play(restore);
    assert.ok(load.length === restore.length && load.every((r) => r.status === 204), JSON.stringify(load));
  });

  it('refuses each request with one required field removed', async () => {
    let mutants = 0;
    for (const [seqName, seq] of [['boot', calls], ['restore', restore]] as const) {
      for (let i = 0; i < seq.length; i++) {
        const c = seq[i]!;
        const req = REQUIRED[routeOf(c.path)] ?? [];
        for (const field of req) {
          const body = { ...(c.body as Record<string, unknown>) };
          assert.ok(field in body, `${seqName}: ${c.method} ${c.path} sends its required field ${field}`);
          delete body[field];
          const answers = await play([...seq.slice(0, i), { ...c, body }]);
          const last = answers[answers.length - 1]!;
          assert.equal(answers.length, i + 1, `${seqName}: the calls before ${c.path} pass`);
          assert.equal(last.status, 400, `${seqName}: ${c.method} ${c.path} without ${field} must fail`);
          assert.match(last.fault ?? '', MISSING_FAULT[`${routeOf(c.path)} ${field}`] ?? new RegExp(`missing field \`${field}\``), `${c.path} without ${field}: ${last.fault}`);
          mutants++;
        }
      }
    }
    assert.ok(mutants >= 16, `${mutants} mutants`);
  });

  it('refuses post-boot calls before InstanceStart, pre-boot calls after it, and a load after configuration', async () => {
    const start = calls.length - 1;
    assert.deepEqual(calls[start]!.body, { action_type: 'InstanceStart' });
    const postBoot: ApiCall[] = [
      { method: 'PATCH', path: '/vm', body: { state: 'Paused' } },
      { method: 'PATCH', path: '/vm', body: { state: 'Resumed' } },
      { method: 'PUT', path: '/actions', body: { action_type: 'SendCtrlAltDel' } },
      { method: 'PUT', path: '/actions', body: { action_type: 'FlushMetrics' } },
      { method: 'PUT', path: '/snapshot/create', body: { snapshot_type: 'Full', snapshot_path: join(snapDir, 'x.state'), mem_file_path: join(snapDir, 'x.mem') } },
      { method: 'PATCH', path: '/drives/root', body: { drive_id: 'root', path_on_host: disk } },
      { method: 'PATCH', path: '/balloon', body: { amount_mib: 32 } },
    ];
    for (const c of postBoot) {
      const answers = await play([...calls.slice(0, start), c]);
      assert.equal(answers.length, start + 1);
      assert.deepEqual(answers[start], { status: 400, fault: FC_FAULTS.notBeforeBoot }, `${c.method} ${c.path} ${JSON.stringify(c.body)} before boot`);
    }
    for (const c of calls.slice(2, start)) {
      if (c.path === '/mmds') continue; // the data store may be written in any phase
      const answers = await play([...calls, c]);
      // A drive or an interface after boot would be hot-plugged: Firecracker v1.17 says PCI is off.
      const expected = /^\/(drives|network-interfaces)\//.test(c.path) ? 'PCI is not enabled' : FC_FAULTS.notAfterBoot;
      assert.deepEqual(answers[calls.length], { status: 400, fault: expected }, `${c.method} ${c.path} after boot`);
    }
    const load = restore[restore.length - 1]!;
    for (let i = 2; i < start; i++) {
      const c = calls[i]!;
      if (c.path === '/mmds') continue;
      // The configuration up to this call (MMDS config needs its interface), then the load.
      const answers = await play([...calls.slice(0, i + 1), load]);
      assert.deepEqual(answers[i + 1], { status: 400, fault: LOAD_NOT_ALLOWED }, `snapshot/load after ${c.method} ${c.path}`);
    }
  });
});

/**
 * Where the differential test (test/integration/firecracker-differential.test.ts) found the peer
 * answering differently from Firecracker v1.17, the real answer, kept here for hosts without the
 * real binary.
 */
describe('firecracker peer: as the real v1.17 answers', () => {
  it('HTTP layer: other methods, chunked and oversized bodies get an `error` body, not a fault', async () => {
    const p = await peer();
    for (const r of [
      await raw(p.sock, 'POST', '/actions', { action_type: 'InstanceStart' }),
      await raw(p.sock, 'PUT', '/mmds', { a: 1 }, { chunked: true }),
      await raw(p.sock, 'PUT', '/mmds', { blob: 'x'.repeat(51_300) }),
    ]) {
      assert.equal(r.status, 400);
      assert.match(r.text, /^\{ "error": ".*\nAll previous unanswered requests will be dropped\." \}$/s);
    }
    assert.equal((await raw(p.sock, 'DELETE', '/vm')).status, 400);
    assert.equal((await raw(p.sock, 'GET', '/')).status, 200, 'the connection-level errors leave the server up');
  });

  it('routing: the first path segment names the resource; ids are checked before the body', async () => {
    const p = await peer();
    assert.equal((await raw(p.sock, 'GET', '/version/x')).status, 200);
    assert.equal((await raw(p.sock, 'GET', '/machine-config/')).status, 200);
    assert.equal(fault(await raw(p.sock, 'GET', '/?x=1')), FC_FAULTS.invalidPath('GET', '?x=1'));
    assert.equal(fault(await raw(p.sock, 'GET', '/', '{}')), 'GET request cannot have a body.');
    assert.equal(fault(await raw(p.sock, 'PUT', '/drives', {})), 'The ID cannot be empty.');
    assert.equal(fault(await raw(p.sock, 'PUT', '/drives/a-b', {})), FC_FAULTS.invalidId);
    assert.equal(fault(await raw(p.sock, 'PUT', '/snapshot', {})), 'Missing snapshot operation type.');
    assert.equal(fault(await raw(p.sock, 'PATCH', '/machine-config', {})), FC_FAULTS.emptyPatch);
    // Parsed before the phase is looked at.
    assert.match(fault(await raw(p.sock, 'PATCH', '/vm', { state: 'Bogus' })), /unknown variant `Bogus`, expected `Paused` or `Resumed`/);
    assert.equal((await raw(p.sock, 'PUT', '/drives/a/b', { drive_id: 'a', path_on_host: disk, is_root_device: false })).status, 204, 'is_read_only is optional');
    assert.equal((await raw(p.sock, 'PUT', '/machine-config', '[2, 256]')).status, 204, 'a JSON array fills the struct in order');
    assert.deepEqual((await raw(p.sock, 'GET', '/machine-config')).json, { vcpu_count: 2, mem_size_mib: 256, smt: false, track_dirty_pages: false, huge_pages: 'None' });
    assert.equal((await raw(p.sock, 'PUT', '/metrics', { metrics_path: join(root, `m${n}.json`), extra: 1 })).status, 204, 'MetricsConfig takes unknown fields');
    assert.equal((await raw(p.sock, 'PUT', '/vsock', { guest_cid: 2, uds_path: join(root, `v${n}.sock`) })).status, 204);
    assert.equal((await raw(p.sock, 'PUT', '/vsock', { guest_cid: 3, uds_path: join(root, `v${n}.sock`) })).status, 204, 'a second vsock replaces the first, socket included');
    assert.equal((await raw(p.sock, 'PUT', '/network-interfaces/a', { iface_id: 'a', host_dev_name: '', guest_mac: '02:00:00:00:00:01' })).status, 204);
    assert.match(fault(await raw(p.sock, 'PUT', '/network-interfaces/b', { iface_id: 'b', host_dev_name: 'tap-b', guest_mac: '02:00:00:00:00:01' })), /MAC address is already in use/);
    assert.deepEqual(Object.keys((await raw(p.sock, 'GET', '/vm/config')).json as object).sort(), [
      'balloon', 'boot-source', 'cpu-config', 'drives', 'entropy', 'logger', 'machine-config', 'memory-hotplug', 'metrics', 'mmds-config', 'network-interfaces', 'pmem', 'vsock',
    ]);
  });

  it('MMDS: an empty store reads {} before boot; a PATCH needs data; after boot the store must exist; the size limit is 413', async () => {
    const p = await peer();
    assert.deepEqual((await raw(p.sock, 'GET', '/mmds')).json, {});
    assert.match(fault(await raw(p.sock, 'PATCH', '/mmds', { a: 1 })), /not initialized/);
    await configure(p.sock, 'vm-mmds');
    assert.equal((await raw(p.sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    const g = await raw(p.sock, 'GET', '/mmds');
    assert.equal(g.status, 400);
    assert.match(fault(g), /not initialized/);
    assert.equal((await raw(p.sock, 'PUT', '/mmds', { a: 1 })).status, 400);

    const dir = join(root, `small-${n}`);
    mkdirSync(dir);
    const q = await startApiProcess('peer', dir, ['--mmds-size-limit', '100']);
    try {
      assert.equal((await raw(q.sock, 'PUT', '/mmds', { a: 'x'.repeat(50) })).status, 204);
      const big = await raw(q.sock, 'PUT', '/mmds', { a: 'x'.repeat(200) });
      assert.equal(big.status, 413);
      assert.match(fault(big), /MMDS limit exceeded/);
    } finally {
      await stopApiProcess(q);
    }
  });

  it('InstanceStart needs a kernel that loads: a failed start leaves the process configurable', async () => {
    const p = await peer();
    const notElf = join(root, `not-elf-${n}`);
    writeFileSync(notElf, 'garbage');
    await configure(p.sock, 'vm-elf');
    assert.equal((await raw(p.sock, 'PUT', '/boot-source', { kernel_image_path: notElf })).status, 204);
    const start = await raw(p.sock, 'PUT', '/actions', { action_type: 'InstanceStart' });
    assert.match(fault(start), /^Start microvm error: .*Unable to read elf header/);
    assert.equal(((await raw(p.sock, 'GET', '/')).json as { state: string }).state, 'Not started');
    assert.equal((await raw(p.sock, 'PUT', '/boot-source', { kernel_image_path: kernel })).status, 204);
    assert.equal((await raw(p.sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204, 'the zero-filled test kernel boots');
  });

  it('a configuration call that reached the VMM forbids a load even when it failed', async () => {
    const p = await peer();
    assert.equal((await raw(p.sock, 'PUT', '/boot-source', {})).status, 400, 'refused by the parser: does not count');
    assert.equal((await raw(p.sock, 'PUT', '/boot-source', { kernel_image_path: join(root, 'nope') })).status, 400);
    const r = await raw(p.sock, 'PUT', '/snapshot/load', { snapshot_path: join(root, 's'), mem_backend: { backend_type: 'File', backend_path: join(root, 'm') } });
    assert.equal(fault(r), LOAD_NOT_ALLOWED);
  });

  it('command line: sinks are created, a bad --level exits 152, a bad --id aborts', async () => {
    const base = join(root, `cli-${n++}`);
    for (const [name, args, expect] of [
      ['sinks', ['--log-path', join(base, 'sinks', 'new.log'), '--level', 'warn', '--metrics-path', join(base, 'sinks', 'new.metrics')], undefined],
      ['level', ['--level', 'Loud'], 152],
      ['id', ['--id', 'bad_id'], 'SIGABRT'],
      ['nodir', ['--log-path', join(base, 'nodir', 'no', 'x.log')], 1],
    ] as const) {
      const dir = join(base, name);
      mkdirSync(dir, { recursive: true });
      const q = await startApiProcess('peer', dir, [...args]);
      try {
        assert.equal(q.startupExit, expect, `${name}: ${q.output()}`);
      } finally {
        await stopApiProcess(q);
      }
    }
    assert.ok(existsSync(join(base, 'sinks', 'new.log')) && existsSync(join(base, 'sinks', 'new.metrics')));
  });
});
