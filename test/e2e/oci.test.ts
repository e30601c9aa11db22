/**
 * microVMs from OCI images through the API: a real local registry (Debian's
 * docker-registry on loopback), an image built by the test with umoci, pushed
 * with skopeo; the guest runs the image's command; the second VM is a cache hit;
 * read-only root disks refuse writes; bad references are clear errors.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { destroyDataDir, apiCall, startService, type TestService } from '../support/service.js';
import { buildOciImage, pushImage, startRegistry, type TestRegistry } from '../support/registry.js';
import { guestRun } from '../support/console.js';

let svc: TestService;
let reg: TestRegistry;
let work: string;
let image: string;

const api = (method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> => apiCall(svc, method, path, body);

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'mvm-oci-e2e-'));
  const rootfs = join(work, 'rootfs');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await mkdir(join(rootfs, 'app'), { recursive: true });
  await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
  await symlink('busybox', join(rootfs, 'bin/sh'));
  await writeFile(join(rootfs, 'app/main.sh'), '#!/bin/sh\necho "APP-RAN foo=$FOO cwd=$(busybox pwd) args=$*"\nexec busybox sleep 100000\n');
  await chmod(join(rootfs, 'app/main.sh'), 0o755);
  await buildOciImage({
    rootfsDir: rootfs,
    layoutDir: join(work, 'layout'),
    tag: 'e2e',
    workDir: join(work, 'umoci'),
    spec: { entrypoint: ['/app/main.sh'], cmd: ['hello'], env: ['FOO=bar', 'PATH=/bin'], workingDir: '/app' },
  });
  reg = await startRegistry();
  await pushImage(join(work, 'layout'), 'e2e', reg.addr, 'e2e/app:1');
  image = `${reg.addr}/e2e/app:1`;
  // The image policy allows no registry unless configured (ADR 0024): allow the test registry.
  svc = await startService({ env: { MVM_NETWORK: 'none', MVM_REGISTRIES_ALLOWED: reg.addr } });
});

after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
  await reg?.stop();
  await rm(work, { recursive: true, force: true });
});

test('a VM boots from a pulled image and runs its command; the second VM is a cache hit', async (t) => {
  const made: string[] = [];
  // Its VMs go even when it fails, so the tests after it start from an empty list.
  t.after(async () => {
    for (const id of made) await svc.client.microvms.delete(id).catch(() => undefined);
    for (const id of made) await svc.client.microvms.waitDeleted(id, { timeoutMs: 60_000 }).catch(() => undefined);
  });
  let t0 = Date.now();
  const a = await svc.client.microvms.create({ name: 'oci-a', rootfs: { image } });
  made.push(a.id);
  const ua = await svc.client.microvms.waitFor(a.id, { phase: 'Running', ready: true, timeoutMs: 150_000 });
  const coldMs = Date.now() - t0;
  const deadline = Date.now() + 30_000;
  let con = '';
  while (!con.includes('APP-RAN') && Date.now() < deadline) {
    con = await svc.client.microvms.consoleText(ua.id);
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.match(con, /APP-RAN foo=bar cwd=\/app args=hello/);
  const cached = async (): Promise<Array<{ digest: string; createdAt: string; inUse: number }>> => {
    const r = await api('GET', '/images');
    assert.equal(r.status, 200, JSON.stringify(r.json));
    // (this run's registry address makes the reference unique: the cache is shared by earlier runs)
    return r.json.items.filter((i: { kind: string; references: string[] }) => i.kind === 'rootfs' && i.references.some((ref) => ref === image));
  };
  const afterA = await cached();
  assert.equal(afterA.length, 1, `one cached root filesystem for the image: ${JSON.stringify(afterA)}`);
  t0 = Date.now();
  const b = await svc.client.microvms.create({ name: 'oci-b', rootfs: { image } });
  made.push(b.id);
  await svc.client.microvms.waitFor(b.id, { phase: 'Running', ready: true, timeoutMs: 150_000 });
  const warmMs = Date.now() - t0;
  // A cache hit: still the one entry, not rebuilt (same createdAt), now named by both VMs.
  const afterB = await cached();
  assert.equal(afterB.length, 1, JSON.stringify(afterB));
  assert.equal(afterB[0]!.digest, afterA[0]!.digest);
  assert.equal(afterB[0]!.createdAt, afterA[0]!.createdAt, 'the second VM reused the built root filesystem');
  assert.equal(afterB[0]!.inUse, 2);
  console.log(`# create→ready from an OCI image: first ${coldMs} ms (pull+build), second ${warmMs} ms (cache)`);
  for (const v of [a, b]) await svc.client.microvms.delete(v.id);
  for (const v of [a, b]) await svc.client.microvms.waitDeleted(v.id, { timeoutMs: 60_000 });
});

test('read-only root disks refuse writes in the guest', async () => {
  const vm = await svc.client.microvms.create({ name: 'ro', rootfs: { readOnly: true } });
  await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 150_000 });
  // Both markers come from running the command: the echoed line shows `touch /should-fail`,
  // TOUCH-RC=$? and `ls /should-fail`, never the error text, a non-zero status or LS-RC=<n>.
  const out = await guestRun(join(svc.dataDir, 'vms', vm.id), 'touch /should-fail 2>&1; echo TOUCH-RC=$?; ls /should-fail >/dev/null 2>&1; echo LS-RC=$?');
  assert.match(out, /Read-only file system/, out);
  assert.match(out, /TOUCH-RC=[1-9]/, out);
  assert.match(out, /LS-RC=[1-9]/, `nothing was created: ${out}`);
  await svc.client.microvms.delete(vm.id);
  await svc.client.microvms.waitDeleted(vm.id, { timeoutMs: 60_000 });
});

test('bad image references are clear errors and create nothing', async () => {
  const syntax = await api('POST', '/microvms', { name: 'bad1', rootfs: { image: 'UPPER/Case::x' } });
  assert.equal(syntax.status, 400);
  assert.ok(syntax.json.errors.some((e: { field: string }) => e.field === 'rootfs.image'), JSON.stringify(syntax.json));
  const unknown = await api('POST', '/microvms', { name: 'bad2', rootfs: { image: `${reg.addr}/nope/nothing:1` } });
  assert.equal(unknown.status, 400);
  assert.ok(unknown.json.errors.some((e: { field: string }) => e.field === 'rootfs.image'));
  assert.match(unknown.json.detail, /not found|unknown|manifest/i);
  assert.equal((await svc.client.microvms.list()).items.length, 0);
});
