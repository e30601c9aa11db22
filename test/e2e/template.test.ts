/**
 * Templates (issue 19) with real QEMU guests: a build boots, runs the command and keeps the guest's
 * RAM as a tmpfs file; clones map it privately, get a fresh identity through the guest agent and
 * are ready in a fraction of a cold boot; a readiness that never holds fails the build naming its
 * step; a template in use cannot be deleted; a clone whose template files are gone fails clearly.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { apiCall, destroyDataDir, startService, type TestService } from '../support/service.js';

let svc: TestService;
const api = (method: string, path: string, body?: unknown) => apiCall(svc, method, path, body);
const exec = async (id: string, script: string): Promise<{ exitCode: number; stdout: string; stderr: string }> => {
  const r = await api('POST', `/microvms/${id}/exec`, { cmd: ['sh', '-c', script] });
  assert.equal(r.status, 200, r.text);
  return r.json;
};

async function waitTemplate(id: string, version: number, timeoutMs = 240_000): Promise<any> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const t = await api('GET', `/templates/${id}`);
    const v = t.json.versions.find((x: { version: number }) => x.version === version);
    if (v && v.phase !== 'Building') return { template: t.json, version: v };
    if (Date.now() > until) throw new Error(`template ${id} v${version} still building: ${t.text}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

before(async () => {
  svc = await startService();
});
after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

test('build a template, clone it: warm state, fresh identity, a fraction of a cold boot', async () => {
  const created = await api('POST', '/templates', { name: 'base', env: { ROLE: 'tpl' }, command: ['sh', '-c', 'echo warmed-$((20+22)) > /root/warm.txt && sync'] });
  assert.equal(created.status, 202, created.text);
  assert.equal(created.json.phase, 'Building');
  const { template, version } = await waitTemplate(created.json.id, 1);
  assert.equal(version.phase, 'Ready', JSON.stringify(version));
  assert.equal(template.readyVersion, 1);
  assert.ok(version.memoryBytes > 0 && version.diskBytes > 0, JSON.stringify(version));

  // Cold boot, for the ratio (same machine shape).
  const c0 = Date.now();
  const cold = await api('POST', '/microvms', { name: 'cold' });
  assert.equal(cold.status, 201, cold.text);
  await svc.client.microvms.waitFor(cold.json.id, { phase: 'Running', ready: true, timeoutMs: 180_000 });
  const coldMs = Date.now() - c0;

  const t0 = Date.now();
  const [a, b] = await Promise.all(['clone-a', 'clone-b'].map((name) => api('POST', '/microvms', { name, template: 'base', env: { OWN: name } })));
  assert.equal(a!.status, 201, a!.text);
  assert.equal(b!.status, 201, b!.text);
  assert.deepEqual(a!.json.spec.source.template, { id: created.json.id, version: 1 });
  const [ra, rb] = await Promise.all([a!, b!].map((r) => svc.client.microvms.waitFor(r.json.id, { phase: 'Running', ready: true, timeoutMs: 60_000 })));
  const cloneMs = Date.now() - t0;
  console.log(`cold boot -> ready ${coldMs} ms; two template clones -> ready ${cloneMs} ms`);
  assert.ok(cloneMs < coldMs, `clones (${cloneMs} ms) faster than a cold boot (${coldMs} ms)`);

  for (const vm of [ra!, rb!]) {
    const r = await exec(vm.id, 'cat /root/warm.txt; hostname; ip -4 addr show eth0 | grep -o "inet [0-9.]*"; cat /etc/machine-id; . /run/mvm-env; echo "own=$OWN"');
    assert.equal(r.exitCode, 0, r.stderr);
    const [warm, host, inet, machineId, own] = r.stdout.trim().split('\n');
    assert.equal(warm, 'warmed-42', 'the template command ran before the snapshot');
    assert.equal(host, vm.name);
    assert.equal(inet, `inet ${vm.status.ip}`);
    assert.match(machineId ?? '', /^[0-9a-f]{32}$/);
    assert.equal(own, `own=${vm.name}`, 'the clone got its own env');
  }
  assert.notEqual(ra!.status.ip, rb!.status.ip);
  assert.notEqual((await exec(ra!.id, 'cat /etc/machine-id')).stdout, (await exec(rb!.id, 'cat /etc/machine-id')).stdout);
  // Own disks: a write in one clone is not seen by the other.
  await exec(ra!.id, 'echo only-a > /root/own.txt && sync');
  assert.equal((await exec(rb!.id, 'cat /root/own.txt 2>/dev/null || echo none-$((1+1))')).stdout, 'none-2\n');

  // In use: refused, naming who uses it.
  const del = await api('DELETE', `/templates/${created.json.id}`);
  assert.equal(del.status, 409, del.text);
  assert.match(del.json.detail ?? del.json.message ?? del.text, new RegExp(ra!.id));

  for (const vm of [ra!, rb!, cold.json]) await svc.client.microvms.delete(vm.id);
  for (const vm of [ra!, rb!, cold.json]) await svc.client.microvms.waitDeleted(vm.id, { timeoutMs: 60_000 });
  assert.equal((await api('DELETE', `/templates/${created.json.id}`)).status, 204);
  assert.equal((await api('GET', `/templates/${created.json.id}`)).status, 404);
  const snaps = join(svc.dataDir, 'snapshots');
  assert.deepEqual(existsSync(snaps) ? readdirSync(snaps).filter((n) => n.startsWith(created.json.id)) : [], [], 'the template files are gone');
  assert.deepEqual(readdirSync(join(svc.dataDir, 'vms')).filter((n) => n.startsWith('build-')), [], 'no build VM left');
});

test('bad template input names the field; a warm pool is refused, not ignored', async () => {
  for (const [body, field] of [
    [{ name: 'p1', pool: { size: 2 } }, 'pool.size'],
    [{ name: 'p2', memory: '64Mi' }, 'memory'],
    [{ name: 'p3', rootfs: { readOnly: true } }, 'rootfs.readOnly'],
  ] as const) {
    const r = await api('POST', '/templates', body);
    assert.equal(r.status, 400, r.text);
    assert.ok(r.json.errors.some((e: { field: string }) => e.field === field), r.text);
  }
  assert.equal((await api('GET', '/templates')).json.items.filter((t: { name: string }) => /^p\d$/.test(t.name)).length, 0, 'nothing refused was stored');
});

test('a readiness that never holds fails the build with its step and the console tail, leaving nothing', async () => {
  const created = await api('POST', '/templates', { name: 'never', readiness: { command: ['sh', '-c', 'test -e /nonexistent'], timeout: '3s' } });
  assert.equal(created.status, 202, created.text);
  const { template, version } = await waitTemplate(created.json.id, 1);
  assert.equal(template.phase, 'Failed');
  assert.equal(version.step, 'readiness', JSON.stringify(version));
  assert.match(version.message, /never exited 0/);
  assert.ok((version.consoleTail ?? '').length > 0, 'the console tail is kept');
  assert.deepEqual(readdirSync(join(svc.dataDir, 'vms')).filter((n) => n.startsWith('build-')), []);
  const bad = await api('POST', '/microvms', { name: 'from-failed', template: 'never' });
  assert.equal(bad.status, 409, bad.text);
  assert.equal((await api('DELETE', `/templates/${created.json.id}`)).status, 204);
});

test('a clone whose template files are gone fails clearly and leaks nothing', async () => {
  const created = await api('POST', '/templates', { name: 'gone' });
  assert.equal(created.status, 202, created.text);
  assert.equal((await waitTemplate(created.json.id, 1)).version.phase, 'Ready');
  rmSync(join(svc.dataDir, 'snapshots', `${created.json.id}-v1`), { recursive: true, force: true });
  const c = await api('POST', '/microvms', { name: 'orphan-clone', template: 'gone' });
  assert.equal(c.status, 201, c.text);
  const failed = await svc.client.microvms.waitFor(c.json.id, { phase: 'Failed', timeoutMs: 60_000 });
  assert.match(JSON.stringify(failed.status.conditions), /has no files on node/);
  await svc.client.microvms.delete(c.json.id);
  await svc.client.microvms.waitDeleted(c.json.id, { timeoutMs: 60_000 });
  assert.ok(!existsSync(join(svc.dataDir, 'vms', c.json.id)), 'no VM directory left');
  assert.equal((await api('DELETE', `/templates/${created.json.id}`)).status, 204);
});

test('a live fork: children carry the parent memory and disk, with fresh identity; the parent runs on', async () => {
  const c = await api('POST', '/microvms', { name: 'parent' });
  assert.equal(c.status, 201, c.text);
  const parent = await svc.client.microvms.waitFor(c.json.id, { phase: 'Running', ready: true, timeoutMs: 180_000 });
  // /run is tmpfs: the value lives in guest memory only; /root/disk.txt on the disk.
  assert.equal((await exec(parent.id, 'echo mem-$((3*14)) > /run/mem.txt && echo disk-$((2*21)) > /root/disk.txt && sync && echo ok-$((1+1))')).stdout, 'ok-2\n');
  const bad = await api('POST', `/microvms/${parent.id}/fork`, { count: 2, names: ['only-one'] });
  assert.equal(bad.status, 422, bad.text);
  assert.ok(bad.json.errors.some((e: { field: string }) => e.field === 'names'), bad.text);

  const t0 = Date.now();
  const f = await api('POST', `/microvms/${parent.id}/fork`, { count: 2 });
  assert.equal(f.status, 201, f.text);
  assert.equal(f.json.children.length, 2);
  const kids = await Promise.all(f.json.children.map((k: { id: string }) => svc.client.microvms.waitFor(k.id, { phase: 'Running', ready: true, timeoutMs: 120_000 })));
  console.log(`fork -> 2 children ready in ${Date.now() - t0} ms`);
  for (const k of kids) {
    const r = await exec(k.id, 'cat /run/mem.txt /root/disk.txt; hostname; cat /etc/machine-id');
    const [mem, disk, host] = r.stdout.trim().split('\n');
    assert.equal(mem, 'mem-42', 'memory state carried');
    assert.equal(disk, 'disk-42', 'disk state carried');
    assert.equal(host, k.name);
    assert.notEqual(k.status.ip, parent.status.ip);
  }
  const p = await api('GET', `/microvms/${parent.id}`);
  assert.equal(p.json.status.phase, 'Running', 'the parent keeps running');
  assert.equal((await exec(parent.id, 'cat /run/mem.txt; hostname')).stdout, 'mem-42\nparent\n');
  for (const k of kids) await svc.client.microvms.delete(k.id);
  for (const k of kids) await svc.client.microvms.waitDeleted(k.id, { timeoutMs: 60_000 });
  assert.equal((await api('DELETE', `/snapshots/${f.json.snapshot.id}`)).status, 204);
  await svc.client.microvms.delete(parent.id);
  await svc.client.microvms.waitDeleted(parent.id, { timeoutMs: 60_000 });
});
