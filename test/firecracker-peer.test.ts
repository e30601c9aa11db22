/**
 * The Firecracker test peer refuses what Firecracker refuses: each case asserts
 * the 400 and Firecracker's fault_message.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FC_FAULTS } from '../src/vmm/firecracker/protocol.js';
import { memoryNonce, raw, readPeerLog, startPeer, waitFor, type RunningPeer } from './support/firecracker-harness.js';

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
    assert.equal(fault(range), FC_FAULTS.invalidVcpus);
    const smt = await raw(p.sock, 'PUT', '/machine-config', { vcpu_count: 3, mem_size_mib: 128, smt: true });
    assert.equal(fault(smt), FC_FAULTS.invalidVcpus);
    const mem = await raw(p.sock, 'PUT', '/machine-config', { vcpu_count: 1, mem_size_mib: 0 });
    assert.equal(fault(mem), FC_FAULTS.invalidMemory);
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

  it('rejects files that do not exist', async () => {
    const k = await raw(p.sock, 'PUT', '/boot-source', { kernel_image_path: join(root, 'nope') });
    assert.equal(k.status, 400);
    assert.equal(fault(k), 'The kernel file cannot be opened: No such file or directory (os error 2)');
    const d = await raw(p.sock, 'PUT', '/drives/data', { drive_id: 'data', path_on_host: join(root, 'missing.raw'), is_root_device: false, is_read_only: true });
    assert.equal(d.status, 400);
    assert.match(fault(d), /^Unable to create the block device: BackingFile\(Os \{ code: 2, kind: NotFound/);
    const m = await raw(p.sock, 'PUT', '/metrics', { metrics_path: join(root, 'no-such.fifo') });
    assert.match(fault(m), /No such file or directory/);
  });

  it('rejects a second root device and unknown routes', async () => {
    assert.equal((await raw(p.sock, 'PUT', '/drives/root', { drive_id: 'root', path_on_host: disk, is_root_device: true, is_read_only: true })).status, 204);
    const second = await raw(p.sock, 'PUT', '/drives/root2', { drive_id: 'root2', path_on_host: disk, is_root_device: true, is_read_only: true });
    assert.equal(fault(second), FC_FAULTS.rootExists);
    const route = await raw(p.sock, 'PUT', '/nothing', {});
    assert.equal(fault(route), FC_FAULTS.invalidPath('PUT', '/nothing'));
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
    assert.equal(fault(start), FC_FAULTS.missingKernel);
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
    assert.equal(fault(drive), FC_FAULTS.notAfterBoot);
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
    assert.match(fault(running), /paused/);
    const diff = await raw(p.sock, 'PATCH', '/vm', { state: 'Paused' });
    assert.equal(diff.status, 204);
    assert.equal(fault(await raw(p.sock, 'PUT', '/snapshot/create', { ...body, snapshot_type: 'Diff' })), FC_FAULTS.diffWithoutTracking);
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
    assert.equal(fault(refused), FC_FAULTS.loadNotAllowed);

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

  it('exits 0 after SendCtrlAltDel, and 152 after a failed snapshot load', async () => {
    const p = await peer();
    await configure(p.sock, 'vm-cad');
    assert.equal((await raw(p.sock, 'PUT', '/actions', { action_type: 'InstanceStart' })).status, 204);
    assert.equal((await raw(p.sock, 'PUT', '/actions', { action_type: 'SendCtrlAltDel' })).status, 204);
    assert.equal(await p.exited, 0);

    const q = await peer();
    const r = await raw(q.sock, 'PUT', '/snapshot/load', { snapshot_path: join(root, 'none.state'), mem_backend: { backend_type: 'File', backend_path: join(root, 'none.mem') } });
    assert.equal(r.status, 400);
    assert.match(fault(r), /^Load snapshot error: Failed to restore from snapshot: /);
    assert.equal(await q.exited, 152);
  });
});
