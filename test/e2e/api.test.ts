/**
 * The standalone service end to end, as a separate process with real QEMU
 * guests: every endpoint, bad input, lifecycle, crash of the service, crash of
 * a VMM, and no leftovers after delete.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { MvmApiError as ApiError, type MicroVM } from '../../sdk/typescript/src/index.js';
import { pidAlive, sleep } from '../../src/vmm/proc.js';
import { cgroupDirsOf, destroyDataDir, qemuProcessesUnder, startService, vmNetnsPrefixOf, type TestService } from '../support/service.js';
import { guestRun } from '../support/console.js';

const BOOT_TIMEOUT = 120_000;

let svc: TestService;

async function raw(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any; text: string; type: string }> {
  const res = await fetch(`${svc.url}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${svc.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text, type: res.headers.get('content-type') ?? '' };
}

function assertProblem(r: { status: number; json: any; type: string }, status: number, code: string, field?: string): void {
  assert.equal(r.status, status, JSON.stringify(r.json));
  assert.match(r.type, /application\/problem\+json/);
  assert.equal(r.json.code, code);
  assert.equal(typeof r.json.detail, 'string');
  if (field) assert.ok(r.json.errors?.some((e: { field: string }) => e.field === field), `expected a violation on ${field}: ${JSON.stringify(r.json)}`);
}

async function eventually(pred: () => boolean, what: string, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) assert.fail(`not within ${ms} ms: ${what}`);
    await sleep(100);
  }
}

const ready = (vm: MicroVM): boolean => vm.status.conditions.some((c) => c.type === 'GuestReady' && c.status === 'True');

async function bootReady(name: string, extra: Record<string, unknown> = {}): Promise<MicroVM> {
  const vm = await svc.client.microvms.create({ name, vcpu: 1, memory: '128Mi', ...extra });
  return svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: BOOT_TIMEOUT });
}

before(async () => {
  svc = await startService();
});

after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

describe('authentication', () => {
  test('missing, malformed and wrong tokens are 401 with a reason', async () => {
    const none = await fetch(`${svc.url}/api/v1/microvms`);
    assert.equal(none.status, 401);
    assert.match(((await none.json()) as { detail: string }).detail, /missing Authorization/);
    const bad = await raw('GET', '/microvms', undefined, { authorization: 'Basic abc' });
    assertProblem(bad, 401, 'UNAUTHENTICATED');
    assert.match(bad.json.detail, /malformed/);
    const wrong = await raw('GET', '/microvms', undefined, { authorization: 'Bearer nope' });
    assertProblem(wrong, 401, 'UNAUTHENTICATED');
    assert.ok(!wrong.text.includes(svc.token));
  });

  test('the admin token file is private', async () => {
    const { statSync } = await import('node:fs');
    assert.equal(statSync(join(svc.dataDir, 'admin.token')).mode & 0o777, 0o600);
  });

  test('OpenAPI document is served from the same schemas', async () => {
    const r = await fetch(`${svc.url}/api/v1/openapi.json`);
    assert.equal(r.status, 200);
    const doc = (await r.json()) as any;
    assert.equal(doc.openapi, '3.0.3');
    for (const p of ['/api/v1/microvms', '/api/v1/microvms/{id}', '/api/v1/microvms/{id}/start', '/api/v1/microvms/{id}/stop', '/api/v1/microvms/{id}/console', '/api/v1/microvms/{id}/metrics']) {
      assert.ok(doc.paths[p], `missing ${p}`);
    }
    const create = doc.paths['/api/v1/microvms'].post.requestBody.content['application/json'].schema;
    assert.equal(create.properties.vcpu.maximum, 8);
    assert.equal(create.additionalProperties, false);
  });
});

describe('bad input', () => {
  test('wrong types, ranges, unknown fields name the field', async () => {
    assertProblem(await raw('POST', '/microvms', { name: 'x', vcpu: '2' }), 400, 'VALIDATION_FAILED', 'vcpu');
    assertProblem(await raw('POST', '/microvms', { name: 'x', vcpu: 0 }), 400, 'VALIDATION_FAILED', 'vcpu');
    assertProblem(await raw('POST', '/microvms', { name: 'x', vcpu: 9 }), 400, 'VALIDATION_FAILED', 'vcpu');
    assertProblem(await raw('POST', '/microvms', { name: 'x', memory: '64Mi' }), 400, 'VALIDATION_FAILED', 'memory');
    assertProblem(await raw('POST', '/microvms', { name: 'x', memory: '9Gi' }), 400, 'VALIDATION_FAILED', 'memory');
    assertProblem(await raw('POST', '/microvms', { name: 'x', memory: '1GB' }), 400, 'VALIDATION_FAILED', 'memory');
    assertProblem(await raw('POST', '/microvms', { name: 'x', colour: 'red' }), 400, 'VALIDATION_FAILED', 'colour');
    assertProblem(await raw('POST', '/microvms', { name: 'x', rootfs: { size: '1Gi', bogus: 1 } }), 400, 'VALIDATION_FAILED', 'rootfs.bogus');
    assertProblem(await raw('POST', '/microvms', { name: 'Not_A_DNS_Name' }), 400, 'VALIDATION_FAILED', 'name');
    assertProblem(await raw('POST', '/microvms', { vcpu: 1 }), 400, 'VALIDATION_FAILED', 'name');
    assertProblem(await raw('POST', '/microvms', '{"name": '), 400, 'VALIDATION_FAILED', 'body');
    // An image from a registry the admin did not allow is refused before anything is fetched (ADR 0024).
    assertProblem(await raw('POST', '/microvms', { name: 'x', kernel: { image: 'nope:1' } }), 403, 'REGISTRY_NOT_ALLOWED', 'kernel.image');
    assertProblem(await raw('GET', '/microvms?limit=0'), 400, 'VALIDATION_FAILED', 'limit');
    assertProblem(await raw('GET', '/microvms?cursor=garbage'), 400, 'VALIDATION_FAILED', 'cursor');
    // Nothing was created by any of these.
    assert.equal((await svc.client.microvms.list()).items.length, 0);
  });

  test('memory accepts every seed-valid quantity and small guests', async () => {
    for (const memory of ['128Mi', '1Gi', '8Gi', '8192Mi']) {
      const vm = await svc.client.microvms.create({ name: `mem-${memory.toLowerCase()}`, memory, start: false });
      assert.equal(vm.spec.memory, memory);
      assert.equal(vm.desiredState, 'Stopped');
      await svc.client.microvms.delete(vm.id);
    }
  });

  test('unknown id is 404 on every endpoint', async () => {
    for (const [m, p] of [
      ['GET', '/microvms/vm-doesnotexist'],
      ['PUT', '/microvms/vm-doesnotexist'],
      ['DELETE', '/microvms/vm-doesnotexist'],
      ['POST', '/microvms/vm-doesnotexist/start'],
      ['POST', '/microvms/vm-doesnotexist/stop'],
      ['GET', '/microvms/vm-doesnotexist/console'],
      ['GET', '/microvms/vm-doesnotexist/metrics'],
      ['GET', '/microvms/vm-doesnotexist/wait?timeout=1s'],
      ['GET', '/microvms/vm-doesnotexist/events'],
    ] as const) {
      assertProblem(await raw(m, p, m === 'PUT' ? { vcpu: 2 } : undefined), 404, 'NOT_FOUND');
    }
  });

  test('duplicate names are refused', async () => {
    const a = await svc.client.microvms.create({ name: 'dup', start: false });
    assertProblem(await raw('POST', '/microvms', { name: 'dup' }), 409, 'ALREADY_EXISTS', 'name');
    await svc.client.microvms.delete(a.id);
  });
});

describe('lifecycle with real guests', () => {
  test('three guests boot at once; console, metrics, events; stop/start; update; delete leaves nothing', async (t) => {
    const vms = await Promise.all(['life-a', 'life-b', 'life-c'].map((n) => bootReady(n)));
    // On a failure the guests go anyway, so the tests after this one start from an empty host.
    t.after(async () => {
      await Promise.allSettled(vms.map(async (v) => {
        await svc.client.microvms.delete(v.id).catch(() => undefined);
        await svc.client.microvms.waitDeleted(v.id, { timeoutMs: 60_000 }).catch(() => undefined);
      }));
    });
    for (const vm of vms) {
      assert.equal(vm.status.phase, 'Running');
      assert.ok(ready(vm));
      assert.equal(vm.status.driver, 'qemu');
      assert.ok(['tcg', 'kvm'].includes(vm.status.accel!));
      assert.ok(vm.status.pid && pidAlive(vm.status.pid));
      assert.ok(vm.status.bootMs!.guestReady > 0);
    }
    const [a] = vms as [MicroVM, MicroVM, MicroVM];
    // The VMM carries the VM id on its command line.
    assert.ok(qemuProcessesUnder(svc.dataDir).some((p) => p.id === a.id));

    // Console: the boot log and the readiness marker.
    const con = await raw('GET', `/microvms/${a.id}/console`);
    assert.equal(con.status, 200);
    assert.match(con.type, /text\/plain/);
    assert.match(con.text, /Linux version/);
    assert.ok(con.text.includes(`MVM-READY id=${a.id}`));
    const tail = await raw('GET', `/microvms/${a.id}/console?tail=64`);
    assert.ok(tail.text.length <= 64);

    // Metrics: real figures from /proc and QMP.
    const m = await svc.client.microvms.metrics(a.id);
    assert.ok(m.cpuSeconds > 0);
    assert.ok(m.memoryRssBytes > 10 * 1024 * 1024);
    assert.equal(m.guestMemoryBytes, 128 * 1024 * 1024);
    // ...and it is the memory the guest has: its kernel sees MemTotal a little below it (reserved pages).
    // The marker `MT=<n>` is printed by awk; the echo of the typed line shows `"MT=" $2`, never digits.
    const memTotalOf = async (id: string): Promise<number> => {
      const meminfo = await guestRun(join(svc.dataDir, 'vms', id), `awk '/^MemTotal:/ { print "MT=" $2 }' /proc/meminfo`);
      const kib = Number(/MT=(\d+)/.exec(meminfo)?.[1] ?? NaN);
      assert.ok(kib > 0, meminfo);
      return kib * 1024;
    };
    // (the kernel keeps its image and reserved pages out of MemTotal: a fixed amount, checked below)
    const memTotal = await memTotalOf(a.id);
    assert.ok(memTotal > 0.6 * m.guestMemoryBytes && memTotal <= m.guestMemoryBytes, `guest MemTotal ${memTotal} vs guestMemoryBytes ${m.guestMemoryBytes}`);
    assert.ok(m.block.some((b) => b.readBytes > 0));
    assert.ok(m.uptimeSeconds > 0);

    // Get by name works too; the view=full shows the effective VMM configuration.
    const full = await raw('GET', `/microvms/life-a?view=full`);
    assert.equal(full.json.id, a.id);
    assert.ok(full.json.vmm.args.includes('-M'));

    // Illegal: start a running VM; change vcpu while running; change an immutable field.
    assertProblem(await raw('POST', `/microvms/${a.id}/start`), 409, 'ILLEGAL_TRANSITION');
    assertProblem(await raw('PUT', `/microvms/${a.id}`, { vcpu: 2 }), 409, 'ILLEGAL_TRANSITION', 'vcpu');
    assertProblem(await raw('PUT', `/microvms/${a.id}`, { rootfs: { readOnly: true } }), 422, 'FIELD_IMMUTABLE', 'rootfs');
    assertProblem(await raw('PUT', `/microvms/${a.id}`, {}), 400, 'VALIDATION_FAILED');
    // Labels can change any time.
    const labelled = await svc.client.microvms.update(a.id, { labels: { team: 'x' } });
    assert.deepEqual(labelled.spec.labels, { team: 'x' });
    const byLabel = await raw('GET', '/microvms?label=team=x');
    assert.deepEqual(byLabel.json.items.map((v: MicroVM) => v.id), [a.id]);

    // Stop (graceful), then stopping again is illegal.
    const pid = a.status.pid!;
    await svc.client.microvms.stop(a.id);
    const stopped = await svc.client.microvms.waitFor(a.id, { phase: 'Stopped', timeoutMs: 60_000 });
    assert.equal(stopped.status.phase, 'Stopped');
    assert.ok(!pidAlive(pid));
    assert.equal(cgroupDirsOf(a.id).length, 0);
    assert.equal(stopped.status.ip, undefined, 'a stopped VM holds no address');
    assertProblem(await raw('POST', `/microvms/${a.id}/stop`), 409, 'ILLEGAL_TRANSITION');

    // Update on a stopped VM, then start again with the new size; the disk survives stop/start.
    const upd = await svc.client.microvms.update(a.id, { vcpu: 2, memory: '256Mi' });
    assert.equal(upd.spec.vcpu, 2);
    assert.equal(upd.generation, labelled.generation + 1);
    await svc.client.microvms.start(a.id);
    const again = await svc.client.microvms.waitFor(a.id, { phase: 'Running', ready: true, timeoutMs: BOOT_TIMEOUT });
    assert.notEqual(again.status.pid, pid);
    const cfg = (await raw('GET', `/microvms/${a.id}?view=full`)).json.vmm.args as string[];
    assert.equal(cfg[cfg.indexOf('-smp') + 1], '2');
    assert.equal(cfg[cfg.indexOf('-m') + 1], '256');
    // the guest really got the extra 128 MiB: its MemTotal grew by that much (the kernel's share is fixed)
    const grown = (await memTotalOf(a.id)) - memTotal;
    assert.ok(Math.abs(grown - 128 * 1024 * 1024) < 8 * 1024 * 1024, `MemTotal grew by ${grown} bytes after 128Mi → 256Mi`);

    // Events record the transitions.
    const ev = await raw('GET', `/microvms/${a.id}/events`);
    const reasons = ev.json.items.map((e: { reason: string }) => e.reason);
    for (const r of ['Created', 'Scheduled', 'Starting', 'Started', 'GuestReady', 'Stopped']) assert.ok(reasons.includes(r), `missing event ${r} in ${reasons}`);

    // Delete every VM: no QEMU process, directory, socket or cgroup is left.
    await Promise.all(vms.map((v) => svc.client.microvms.delete(v.id)));
    for (const v of vms) await svc.client.microvms.waitDeleted(v.id, { timeoutMs: 60_000 });
    for (const v of vms) {
      assert.ok(!existsSync(join(svc.dataDir, 'vms', v.id)), `dir of ${v.id} left behind`);
      assert.equal(cgroupDirsOf(v.id).length, 0, `cgroup of ${v.id} left behind`);
    }
    assert.deepEqual(qemuProcessesUnder(svc.dataDir), []);
  });

  test('console follow streams live output and ends when the VM stops', async () => {
    const vm = await svc.client.microvms.create({ name: 'follow', vcpu: 1, memory: '128Mi' });
    const res = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/console?follow=true`, { headers: { authorization: `Bearer ${svc.token}` } });
    assert.equal(res.status, 200);
    const reader = res.body!.getReader();
    let text = '';
    const dec = new TextDecoder();
    const deadline = Date.now() + BOOT_TIMEOUT;
    while (!text.includes(`MVM-READY id=${vm.id}`) && Date.now() < deadline) {
      const { value, done } = await reader.read();
      if (done) break;
      text += dec.decode(value);
    }
    assert.ok(text.includes(`MVM-READY id=${vm.id}`), 'the marker arrived over the live stream');
    await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: BOOT_TIMEOUT });
    await svc.client.microvms.stop(vm.id);
    // The stream ends by itself once the VM is stopped.
    for (;;) {
      const { done } = await reader.read();
      if (done) break;
    }
    await svc.client.microvms.delete(vm.id);
    await svc.client.microvms.waitDeleted(vm.id, { timeoutMs: 60_000 });
  });

  test('a VMM killed from outside sends the VM to Failed with a reason; start recovers it', async () => {
    const vm = await bootReady('victim');
    process.kill(vm.status.pid!, 'SIGKILL');
    const failed = await svc.client.microvms.waitFor(vm.id, { phase: 'Failed', timeoutMs: 30_000 });
    assert.equal(failed.status.phase, 'Failed');
    assert.equal(failed.status.reason, 'VmmExited');
    assert.match(failed.status.message!, /SIGKILL/);
    // Waiting for Running on a failed VM is answered at once with VM_FAILED.
    await assert.rejects(svc.client.microvms.wait(vm.id, { phase: 'Running', timeoutMs: 5000 }), (e: unknown) => e instanceof ApiError && e.code === 'VM_FAILED');
    await eventually(() => cgroupDirsOf(vm.id).length === 0, 'cgroup released after the VMM died');
    await svc.client.microvms.start(vm.id);
    const back = await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: BOOT_TIMEOUT });
    assert.ok(pidAlive(back.status.pid!));
    await svc.client.microvms.delete(vm.id);
    await svc.client.microvms.waitDeleted(vm.id, { timeoutMs: 60_000 });
  });
});

describe('crashes of the service', () => {
  test('kill -9 of the service: running guests survive and are re-adopted; acknowledged writes survive', async () => {
    const a = await bootReady('survivor');
    const b = await svc.client.microvms.create({ name: 'acked-stopped', start: false });
    const pid = a.status.pid!;
    await svc.kill9();
    assert.ok(pidAlive(pid), 'the guest outlived the service');
    svc = await startService({ dataDir: svc.dataDir });
    const after = await svc.client.microvms.get(a.id);
    assert.equal(after.status.phase, 'Running');
    assert.equal(after.status.pid, pid, 're-adopted, not rebooted');
    assert.ok(ready(after));
    assert.equal((await svc.client.microvms.get(b.id)).desiredState, 'Stopped');
    // The adopted VM is fully controllable.
    const m = await svc.client.microvms.metrics(a.id);
    assert.ok(m.cpuSeconds > 0);
    await svc.client.microvms.stop(a.id);
    await svc.client.microvms.waitFor(a.id, { phase: 'Stopped', timeoutMs: 60_000 });
    assert.ok(!pidAlive(pid));
    await svc.client.microvms.delete(a.id);
    await svc.client.microvms.delete(b.id);
    await svc.client.microvms.waitDeleted(a.id, { timeoutMs: 60_000 });
    await svc.client.microvms.waitDeleted(b.id, { timeoutMs: 60_000 });
  });

  test('a VMM that died while the service was down is reported Failed (VmmLost)', async () => {
    const a = await bootReady('lost');
    await svc.kill9();
    process.kill(a.status.pid!, 'SIGKILL');
    await sleep(200);
    svc = await startService({ dataDir: svc.dataDir });
    const f = await svc.client.microvms.waitFor(a.id, { phase: 'Failed', timeoutMs: 30_000 });
    assert.equal(f.status.reason, 'VmmLost');
    await svc.client.microvms.delete(a.id);
    await svc.client.microvms.waitDeleted(a.id, { timeoutMs: 60_000 });
  });

  test('kill -9 mid-create and mid-delete: after restart nothing is orphaned', async () => {
    // Mid-create: the write is acknowledged, the boot is in flight.
    const c = await svc.client.microvms.create({ name: 'midcreate' });
    await sleep(300);
    await svc.kill9();
    svc = await startService({ dataDir: svc.dataDir });
    const up = await svc.client.microvms.waitFor(c.id, { phase: 'Running', ready: true, timeoutMs: BOOT_TIMEOUT });
    assert.equal(qemuProcessesUnder(svc.dataDir).filter((p) => p.id === c.id).length, 1, 'exactly one VMM for the VM');
    // Mid-delete: acknowledged delete, then the service dies.
    await svc.client.microvms.delete(up.id);
    await svc.kill9();
    svc = await startService({ dataDir: svc.dataDir });
    await svc.client.microvms.waitDeleted(up.id, { timeoutMs: 60_000 });
    const left = qemuProcessesUnder(svc.dataDir);
    assert.deepEqual(left, [], `left: ${JSON.stringify(await Promise.all(left.map(async (p) => ({ ...p, vm: await svc.client.microvms.get(p.id).then((v) => [v.name, v.status.phase], (e: Error) => e.message) }))))}`);
    assert.deepEqual(readdirSync(join(svc.dataDir, 'vms')), []);
    assert.equal(cgroupDirsOf(up.id).length, 0);
    // Network: no VM namespace, no IP allocation left.
    assert.deepEqual(readdirSync('/var/run/netns').filter((n) => n.startsWith(vmNetnsPrefixOf(svc.dataDir))), []);
    const ipam = join(svc.dataDir, 'network', 'ipam');
    assert.equal(existsSync(ipam) ? spawnSync('grep', ['-rl', up.id, ipam], { encoding: 'utf8' }).stdout.trim() : '', '');
  });
});
