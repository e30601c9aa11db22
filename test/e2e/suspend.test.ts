/**
 * Suspend to disk (issue 19, ADR 0035) with real QEMU guests: a suspended VM has no VMM and its
 * memory on disk; its resume keeps IP, MAC, a background process (same PID) and the files it
 * holds open in tmpfs; it survives a restart of the service; delete removes its memory file; a
 * resume during the suspend of a 1 GiB guest cancels it; a kill -9 of the service mid-suspend
 * converges after the restart with nothing orphaned.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { apiCall, destroyDataDir, qemuProcessesUnder, startService, type TestService, waitForPhase } from '../support/service.js';
import { sleep } from '../../src/vmm/proc.js';

let svc: TestService;
const api = (method: string, path: string, body?: unknown) => apiCall(svc, method, path, body);

const exec = async (id: string, script: string): Promise<{ exitCode: number; stdout: string; stderr: string }> => {
  const r = await api('POST', `/microvms/${id}/exec`, { cmd: ['sh', '-c', script] });
  assert.equal(r.status, 200, r.text);
  return r.json;
};

const waitPhase = (id: string, phases: string[], timeoutMs?: number, ready?: boolean): Promise<any> => waitForPhase(svc, id, phases, timeoutMs, ready);

const vmDir = (id: string) => join(svc.dataDir, 'vms', id);
const suspendDir = (id: string) => join(vmDir(id), 'suspend');
const qemuOf = (id: string) => qemuProcessesUnder(svc.dataDir).filter((p) => p.id === id);
const reasons = async (id: string): Promise<string[]> => ((await api('GET', `/microvms/${id}/events`)).json.items as Array<{ reason: string }>).map((e) => e.reason);

before(async () => {
  svc = await startService();
});
after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

let vm: any;
let worker: { pid: number };

test('suspend: no VMM, phase Suspended, memory on disk; resume: same IP, MAC, process and open file', async () => {
  const created = await api('POST', '/microvms', { name: 'sleeper' });
  assert.equal(created.status, 201, created.text);
  vm = await waitPhase(created.json.id, ['Running'], 180_000, true);
  // A background process holding a value in memory and a tmpfs file open (fd 3).
  const started = await api('POST', `/microvms/${vm.id}/processes`, {
    cmd: ['sh', '-c', 'mkdir -p /run/held; v=held-$((6*7)); exec 3>/run/held/value; echo $v >&3; while true; do echo $v > /run/held/echo; sleep 1; done'],
  });
  assert.equal(started.status, 201, started.text);
  worker = { pid: started.json.pid };
  await exec(vm.id, 'for i in 1 2 3 4 5 6 7 8 9 10; do [ -s /run/held/echo ] && break; sleep 0.3; done');
  const mac = (await exec(vm.id, 'cat /sys/class/net/eth0/address')).stdout.trim();
  assert.equal(mac, vm.status.interfaces[0].mac);

  const s = await api('POST', `/microvms/${vm.id}/suspend`);
  assert.equal(s.status, 202, s.text);
  assert.equal(s.json.status.phase, 'Suspending');
  const susp = await waitPhase(vm.id, ['Suspended'], 60_000);
  assert.deepEqual(qemuOf(vm.id), [], 'no QEMU process of a suspended VM');
  assert.ok(existsSync(join(suspendDir(vm.id), 'vmstate.qemu')) && existsSync(join(suspendDir(vm.id), 'snapshot.json')), 'memory and device state on disk');
  assert.ok(susp.status.suspend.sizeBytes > 1024 * 1024, JSON.stringify(susp.status.suspend));
  assert.equal(susp.status.ip, vm.status.ip, 'the address stays reserved');
  assert.equal(susp.status.pid, undefined);
  console.log(`suspend of a 128 MiB guest: ${susp.status.suspend.durationMs} ms, ${(susp.status.suspend.sizeBytes / 1048576).toFixed(1)} MiB`);
  // Not Running: a plain pause is refused; a second suspend too.
  assert.equal((await api('POST', `/microvms/${vm.id}/pause`)).status, 409);

  const t0 = Date.now();
  const r = await api('POST', `/microvms/${vm.id}/resume`);
  assert.equal(r.status, 202, r.text);
  const back = await waitPhase(vm.id, ['Running'], 60_000, true);
  console.log(`resume from disk -> ready: ${Date.now() - t0} ms`);
  assert.equal(back.status.ip, vm.status.ip);
  assert.deepEqual(back.status.interfaces.map((i: { mac: string; ip: string }) => [i.mac, i.ip]), vm.status.interfaces.map((i: { mac: string; ip: string }) => [i.mac, i.ip]));
  assert.ok(!existsSync(suspendDir(vm.id)), 'the suspend files are removed after the resume');
  const inside = await exec(vm.id, `kill -0 ${worker.pid} && echo alive; cat /run/held/value; readlink /proc/${worker.pid}/fd/3; cat /sys/class/net/eth0/address; ip -4 addr show eth0 | grep -o "inet [0-9.]*"`);
  assert.equal(inside.exitCode, 0, inside.stderr);
  assert.deepEqual(inside.stdout.trim().split('\n'), ['alive', 'held-42', '/run/held/value', mac, `inet ${vm.status.ip}`]);
  const ev = await reasons(vm.id);
  assert.ok(ev.includes('Suspended'), ev.join(','));
});

test('a suspended VM stays suspended across a restart of the service, then resumes intact', async () => {
  assert.ok(vm, 'needs the VM of the first test');
  assert.equal((await api('POST', `/microvms/${vm.id}/suspend`)).status, 202);
  await waitPhase(vm.id, ['Suspended'], 60_000);
  await svc.stop();
  svc = await startService({ dataDir: svc.dataDir });
  await sleep(4000); // two resyncs (MVM_RESYNC_SECONDS=2)
  const still = await waitPhase(vm.id, ['Suspended'], 5000);
  assert.equal(still.desiredState, 'Suspended');
  assert.deepEqual(qemuOf(vm.id), []);
  assert.ok(existsSync(join(suspendDir(vm.id), 'snapshot.json')));
  // A call that needs the guest resumes it (exec auto-resume).
  const inside = await exec(vm.id, `kill -0 ${worker.pid} && cat /run/held/echo`);
  assert.equal(inside.stdout.trim(), 'held-42');
  const cur = (await api('GET', `/microvms/${vm.id}`)).json;
  assert.equal(cur.status.phase, 'Running');
  assert.equal(cur.status.ip, vm.status.ip);
});

test('stop of a suspended VM discards its memory; delete of a suspended VM removes its files', async () => {
  assert.ok(vm, 'needs the VM of the first test');
  assert.equal((await api('POST', `/microvms/${vm.id}/suspend`)).status, 202);
  await waitPhase(vm.id, ['Suspended'], 60_000);
  assert.ok(existsSync(join(suspendDir(vm.id), 'vmstate.qemu')));
  const d = await api('DELETE', `/microvms/${vm.id}`);
  assert.equal(d.status, 202, d.text);
  const until = Date.now() + 30_000;
  while ((await api('GET', `/microvms/${vm.id}`)).status !== 404) {
    if (Date.now() > until) throw new Error('not deleted');
    await sleep(100);
  }
  assert.ok(!existsSync(vmDir(vm.id)), 'its directory (with the memory file) is gone');
  assert.deepEqual(qemuOf(vm.id), []);
});

/** A 1 GiB guest with ~400 MB of its memory touched (non-zero pages: QEMU sends zero pages as markers). */
async function bigGuest(name: string): Promise<any> {
  const c = await api('POST', '/microvms', { name, memory: '1Gi' });
  assert.equal(c.status, 201, c.text);
  const v = await waitPhase(c.json.id, ['Running'], 180_000, true);
  const r = await exec(v.id, 'mkdir -p /mnt/fill && mount -t tmpfs -o size=500m tmpfs /mnt/fill && yes mvm-suspend-fill | head -c 400000000 > /mnt/fill/f && echo ok');
  assert.equal(r.stdout.trim(), 'ok', r.stderr);
  return v;
}

async function waitWriting(id: string, minBytes: number, timeoutMs = 30_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const f = join(suspendDir(id), 'vmstate.qemu.tmp');
    if (existsSync(f) && statSync(f).size >= minBytes) return;
    if (Date.now() > until) throw new Error(`no suspend of ${id} under way`);
    await sleep(10);
  }
}

let big: any;

test('a resume during the suspend of a 1 GiB guest cancels it: the VM runs on, no files', async () => {
  big = await bigGuest('big');
  const pid = qemuOf(big.id)[0]?.pid;
  assert.ok(pid);
  assert.equal((await api('POST', `/microvms/${big.id}/suspend`)).status, 202);
  await waitWriting(big.id, 16 * 1024 * 1024);
  const r = await api('POST', `/microvms/${big.id}/resume`);
  assert.equal(r.status, 202, r.text);
  const back = await waitPhase(big.id, ['Running'], 60_000);
  assert.equal(back.desiredState, 'Running');
  assert.equal(qemuOf(big.id)[0]?.pid, pid, 'the same VMM runs on');
  assert.ok(!existsSync(suspendDir(big.id)), 'no suspend files are left');
  assert.equal((await exec(big.id, 'head -c 16 /mnt/fill/f')).stdout, 'mvm-suspend-fill');
  const ev = await reasons(big.id);
  assert.ok(ev.includes('SuspendCancelled'), ev.join(','));
  assert.ok(!ev.includes('Suspended'), ev.join(','));
});

test('kill -9 of the service mid-suspend: after the restart the VM is Suspended or Running, nothing orphaned', async () => {
  assert.ok(big, 'needs the VM of the previous test');
  assert.equal((await api('POST', `/microvms/${big.id}/suspend`)).status, 202);
  await waitWriting(big.id, 16 * 1024 * 1024);
  await svc.kill9();
  svc = await startService({ dataDir: svc.dataDir });
  const v = await waitPhase(big.id, ['Suspended', 'Running'], 120_000);
  const files = existsSync(suspendDir(big.id)) ? readdirSync(suspendDir(big.id)) : [];
  if (v.status.phase === 'Suspended') {
    assert.deepEqual(qemuOf(big.id), [], 'a suspended VM has no VMM');
    assert.ok(files.includes('snapshot.json') && files.includes('vmstate.qemu'), files.join(','));
    assert.ok(!files.some((f) => f.endsWith('.tmp')), files.join(','));
    console.log(`suspend of a 1 GiB guest (400 MB touched): ${v.status.suspend.durationMs} ms, ${(v.status.suspend.sizeBytes / 1048576).toFixed(0)} MiB`);
  } else {
    assert.equal(qemuOf(big.id).length, 1, 'one VMM');
    assert.deepEqual(files, []);
  }
  console.log(`after kill -9 mid-suspend and a restart: ${v.status.phase}`);
  // Either way it comes back whole.
  const r = await api('POST', `/microvms/${big.id}/resume`);
  assert.ok(r.status === 202 || r.status === 409, r.text);
  await waitPhase(big.id, ['Running'], 120_000, true);
  assert.equal((await exec(big.id, 'head -c 16 /mnt/fill/f')).stdout, 'mvm-suspend-fill');
  assert.equal(qemuOf(big.id).length, 1);
  assert.ok(!existsSync(suspendDir(big.id)));
  assert.equal((await api('DELETE', `/microvms/${big.id}`)).status, 202);
});
