/**
 * The standalone service with the real Firecracker (and jailer), as a user would run it:
 * MVM_DRIVER=firecracker, MVM_FIRECRACKER_BIN pointing at the binary (../shared/firecracker or
 * MVM_TEST_FIRECRACKER_DIR), MVM_ACCEL=kvm standing in for a KVM probe that boots guests.
 * On this nested-PVM host the guest never boots (its vCPU spins), so each VM is paused as soon as
 * its VMM runs, and what needs a guest that answers is left to the peer's tests.
 *
 * Issue 18's defects, through the API:
 *  - a failed restore (corrupt state file) is retried as a restore on the next start, never a
 *    silent cold boot of the snapshot's disk copy;
 *  - the boot deadline: a VM whose guest is not ready in lifecycle.bootTimeout goes Failed with
 *    reason BootTimeout and the console tail, and an event says so;
 *  - Firecracker's own lines never reach the console;
 *  - MVM_CGROUP_PARENT is where the VMs' cgroups are made;
 *  - an un-jailed snapshot restored by a jailed service is refused at admission (409).
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MicroVM } from '../../sdk/typescript/src/index.js';
import { listPids, readCmdline, sleep } from '../../src/vmm/proc.js';
import { realFirecracker, realJailer } from '../support/firecracker-harness.js';
import { apiCall, destroyDataDir, startService, type TestService } from '../support/service.js';

const fc = realFirecracker();
const jailer = realJailer();
const skip = !fc
  ? 'no real firecracker binary (set MVM_TEST_FIRECRACKER_DIR, or put it in ../shared/firecracker)'
  : !existsSync('/dev/kvm')
    ? 'no /dev/kvm'
    : process.getuid?.() !== 0
      ? 'needs root'
      : !jailer
        ? 'no real jailer next to firecracker'
        : undefined;

const CGROUP_PARENT = `mvm-e2e-fc-${process.pid}`;
const dataDir = mkdtempSync(join(tmpdir(), 'mvm-fc-real-'));
let svc: TestService | undefined;

/** Every Firecracker process whose command line names this test's data dir or binary (a safety net). */
function ourFirecrackers(): number[] {
  return listPids().filter((pid) => {
    const cmd = readCmdline(pid);
    return !!cmd && cmd.some((a) => a.includes(dataDir)) && cmd.some((a) => a.includes('firecracker'));
  });
}

async function start(env: Record<string, string> = {}): Promise<TestService> {
  return startService({
    dataDir,
    env: {
      MVM_DRIVER: 'firecracker',
      MVM_FIRECRACKER_BIN: fc!,
      MVM_ACCEL: 'kvm',
      MVM_NETWORK: 'none',
      MVM_CGROUP_PARENT: CGROUP_PARENT,
      ...env,
    },
  });
}

const api = (method: string, path: string, body?: unknown) => apiCall(svc!, method, path, body);

async function phase(id: string, want: (vm: MicroVM) => boolean, what: string, timeoutMs = 30_000): Promise<MicroVM> {
  const end = Date.now() + timeoutMs;
  let last: MicroVM | undefined;
  while (Date.now() < end) {
    const r = await api('GET', `/microvms/${id}`);
    last = r.json as MicroVM;
    if (r.status === 200 && want(last)) return last;
    await sleep(200);
  }
  throw new Error(`timed out waiting for ${what}; last: ${JSON.stringify(last?.status)}`);
}

async function events(id: string): Promise<Array<{ reason: string; message: string; type: string }>> {
  return ((await api('GET', `/microvms/${id}/events`)).json.items ?? []) as Array<{ reason: string; message: string; type: string }>;
}

after(async () => {
  await svc?.stop().catch(() => undefined);
  for (const pid of ourFirecrackers()) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await sleep(300);
  await destroyDataDir(dataDir);
  for (const ctl of ['cpu', 'cpuset', 'memory', 'pids', 'cpuacct', '']) {
    const parent = join('/sys/fs/cgroup', ctl, CGROUP_PARENT);
    if (!existsSync(parent)) continue;
    for (const d of readdirSync(parent, { withFileTypes: true }).filter((e) => e.isDirectory())) {
      try {
        rmdirSync(join(parent, d.name));
      } catch {
        /* busy */
      }
    }
    try {
      rmdirSync(parent);
    } catch {
      /* busy */
    }
  }
});

describe('the service with the real Firecracker', () => {
  let source: MicroVM | undefined;
  let snapshotId: string | undefined;

  before(async () => {
    if (!skip) svc = await start();
  });

  test('create: the VMM runs (InstanceStart accepted), in the configured cgroup parent; no Firecracker line on the console', async (t) => {
    if (skip) return t.skip(skip);
    const t0 = Date.now();
    const created = await api('POST', '/microvms', { name: 'fc-real', lifecycle: { bootTimeout: '10m' } });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    source = await phase(created.json.id, (v) => v.status.phase === 'Running', 'Running');
    t.diagnostic(`create -> Running (VMM up) with the real Firecracker: ${Date.now() - t0} ms`);
    assert.equal(source.status.driver, 'firecracker');
    assert.equal(source.status.conditions.find((c) => c.type === 'GuestReady')?.reason, 'Booting');
    const paused = await api('POST', `/microvms/${source.id}/pause`);
    assert.ok(paused.status === 200 || paused.status === 202, JSON.stringify(paused.json));
    await phase(source.id, (v) => v.status.phase === 'Paused', 'Paused');
    // The VM's cgroup is under MVM_CGROUP_PARENT, not under `mvm`.
    const v1 = existsSync('/sys/fs/cgroup/cpu');
    const mine = v1 ? join('/sys/fs/cgroup/cpu', CGROUP_PARENT, source.id) : join('/sys/fs/cgroup', CGROUP_PARENT, source.id);
    assert.ok(existsSync(mine), `${mine} exists`);
    assert.ok(!existsSync(v1 ? join('/sys/fs/cgroup/cpu/mvm', source.id) : join('/sys/fs/cgroup/mvm', source.id)), 'nothing under the default parent');
    const consoleLog = readFileSync(join(dataDir, 'vms', source.id, 'console.log'), 'utf8');
    assert.doesNotMatch(consoleLog, /Running Firecracker|API server|fc_api/);
    const console = await api('GET', `/microvms/${source.id}/console`);
    assert.equal(console.status, 200);
    assert.doesNotMatch(console.text, /Running Firecracker|fc_api/);
  });

  test('snapshot, then a restore from it runs; a corrupt state file fails the restore, and the next start restores again', async (t) => {
    if (skip || !source) return t.skip(skip ?? 'no VM');
    const t0 = Date.now();
    const snap = await api('POST', `/microvms/${source.id}/snapshots`, { name: 'fc-snap' });
    assert.ok(snap.status === 201 || snap.status === 200, JSON.stringify(snap.json));
    snapshotId = snap.json.id as string;
    t.diagnostic(`snapshot of a 128 MiB guest through the API: ${Date.now() - t0} ms (${snap.json.durationMs ?? '?'} ms in the agent)`);
    const t1 = Date.now();
    const clone = await api('POST', '/microvms', { name: 'fc-clone', snapshot: 'fc-snap' });
    assert.equal(clone.status, 201, JSON.stringify(clone.json));
    const c = await phase(clone.json.id, (v) => v.status.phase === 'Running', 'clone Running');
    t.diagnostic(`restore (create from snapshot) -> Running: ${Date.now() - t1} ms`);
    const launch = JSON.parse(readFileSync(join(dataDir, 'vms', c.id, 'launch.json'), 'utf8')) as { mode: string };
    assert.equal(launch.mode, 'restore');
    assert.ok(!existsSync(join(dataDir, 'vms', c.id, 'restore.pending')), 'a restore that succeeded is done');
    await api('POST', `/microvms/${c.id}/pause`);
    await api('DELETE', `/microvms/${c.id}`);

    // Corrupt the snapshot's state file: a restore from it fails at the load, and says why.
    const state = join(dataDir, 'snapshots', snapshotId, 'vm.state');
    const good = readFileSync(state);
    writeFileSync(state, Buffer.alloc(good.length, 7));
    try {
      const bad = await api('POST', '/microvms', { name: 'fc-bad', snapshot: 'fc-snap' });
      assert.equal(bad.status, 201, JSON.stringify(bad.json));
      const failed = await phase(bad.json.id, (v) => v.status.phase === 'Failed', 'Failed');
      assert.match(failed.status.message ?? '', /step vmm-start: .*failed at step "PUT \/snapshot\/load"/);
      // Start again: still a restore (failing the same way), never a cold boot of the disk copy.
      const again = await api('POST', `/microvms/${bad.json.id}/start`);
      assert.ok(again.status < 300, JSON.stringify(again.json));
      await sleep(500);
      const failedAgain = await phase(bad.json.id, (v) => v.status.phase === 'Failed' && (v.status.message ?? '').includes('snapshot/load'), 'Failed again');
      assert.match(failedAgain.status.message ?? '', /PUT \/snapshot\/load/);
      const rec = JSON.parse(readFileSync(join(dataDir, 'vms', bad.json.id, 'launch.json'), 'utf8')) as { mode: string };
      assert.equal(rec.mode, 'restore', 'the second start restored again');
      assert.ok(existsSync(join(dataDir, 'vms', bad.json.id, 'restore.pending')));
      await api('DELETE', `/microvms/${bad.json.id}`);
    } finally {
      writeFileSync(state, good);
    }
  });

  test('boot deadline: a guest not ready in lifecycle.bootTimeout fails the VM with the reason, the console tail and an event', async (t) => {
    if (skip) return t.skip(skip);
    const created = await api('POST', '/microvms', { name: 'fc-late', lifecycle: { bootTimeout: '3s' } });
    assert.equal(created.status, 201, JSON.stringify(created.json));
    const failed = await phase(created.json.id, (v) => v.status.phase === 'Failed', 'Failed by the boot deadline', 30_000);
    assert.equal(failed.status.reason, 'BootTimeout');
    assert.match(failed.status.message ?? '', /guest not ready 3 s after its VMM started \(boot deadline\)/);
    const ev = await events(failed.id);
    assert.ok(ev.some((e) => e.reason === 'BootTimeout' && e.type === 'Warning'), JSON.stringify(ev));
    assert.equal(ourFirecrackers().filter((pid) => readCmdline(pid)?.includes(failed.id)).length, 0, 'its VMM is gone');
    await api('DELETE', `/microvms/${failed.id}`);
  });

  test('a jailed service refuses to restore an un-jailed snapshot at admission (409), and deletes leave nothing', async (t) => {
    if (skip || !source || !snapshotId) return t.skip(skip ?? 'no snapshot');
    await svc!.stop();
    svc = await start({ MVM_FIRECRACKER_JAILER: jailer! });
    const r = await api('POST', '/microvms', { name: 'fc-jailed-clone', snapshot: 'fc-snap' });
    assert.equal(r.status, 409, JSON.stringify(r.json));
    assert.match(r.json.detail ?? r.json.message ?? JSON.stringify(r.json), /cannot be restored here: it was taken without the jailer/);
    const all = (await api('GET', '/microvms')).json.items as MicroVM[];
    assert.ok(!all.some((v) => v.name === 'fc-jailed-clone'), 'no VM was created');
    // The source VM (re-adopted by the jailed service's un-jailed process) is deleted cleanly.
    assert.equal((await api('DELETE', `/microvms/${source.id}`)).status < 300, true);
    await phase(source.id, () => false, 'gone', 1).catch(() => undefined);
    const end = Date.now() + 20_000;
    while (existsSync(join(dataDir, 'vms', source.id)) && Date.now() < end) await sleep(200);
    assert.ok(!existsSync(join(dataDir, 'vms', source.id)), 'the VM directory is gone');
    assert.deepEqual(ourFirecrackers(), [], 'no Firecracker left');
  });
});
