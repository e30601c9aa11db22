/**
 * Images through the real service and guests: rootfs.size grows the guest
 * filesystem (df in the guest), a kernel from an OCI image boots, read-only
 * root disks are shared by several running VMs and refuse writes, the images
 * API (list with in-use counts, delete refused while used, gc, admin only), and
 * bad input (size below the image or above the node maximum, registry auth
 * failure, image without a filesystem, image without a kernel) is a clear 400
 * that creates nothing. Local registries only (Debian docker-registry).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { findHostKernel } from '../../src/storage/default-images.js';
import { apiCall, destroyDataDir, qemuProcessesUnder, startService, type TestService } from '../support/service.js';
import { buildOciImage, execFileP, pushImage, startRegistry, type TestRegistry } from '../support/registry.js';

const hostKernel = await findHostKernel().catch(() => undefined);
const skip = hostKernel ? false : 'linux-image-cloud-amd64 not installed (make deps)';

let svc: TestService;
let reg: TestRegistry;
let authReg: TestRegistry;
let work: string;
let imageCache: string;
let app: string;
let kernelRef: string;

const api = (method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> => apiCall(svc, method, path, body);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function consoleUntil(id: string, re: RegExp, timeoutMs = 60_000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  let con = '';
  while (Date.now() < deadline) {
    con = await svc.client.microvms.consoleText(id);
    if (re.test(con)) return con;
    await sleep(250);
  }
  throw new Error(`console of ${id} never matched ${re}:\n${con.slice(-3000)}`);
}

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'mvm-img-api-'));
  imageCache = join(work, 'image-cache');
  // The app: probes whether / is writable and how big it is, then stays up.
  const rootfs = join(work, 'rootfs');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await mkdir(join(rootfs, 'app'), { recursive: true });
  await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
  await symlink('busybox', join(rootfs, 'bin/sh'));
  await writeFile(
    join(rootfs, 'app/probe.sh'),
    [
      '#!/bin/sh',
      'if busybox touch /probe-write 2>/dev/null; then echo "PROBE write=ok"; else echo "PROBE write=refused"; fi',
      'busybox df -k / | busybox tail -n 1 | busybox awk \'{print "PROBE-DF blocks=" $2 " end"}\'',
      'exec busybox sleep 100000',
      '',
    ].join('\n'),
  );
  await chmod(join(rootfs, 'app/probe.sh'), 0o755);
  await buildOciImage({ rootfsDir: rootfs, layoutDir: join(work, 'l-app'), tag: 'app', workDir: join(work, 'u-app'), spec: { entrypoint: ['/app/probe.sh'], env: ['PATH=/bin'] } });
  // A kernel image: the default kernel's own bzImage as /boot/vmlinuz-<release>.
  const kroot = join(work, 'kroot');
  await mkdir(join(kroot, 'boot'), { recursive: true });
  await copyFile(hostKernel!.bzImagePath, join(kroot, 'boot', `vmlinuz-${hostKernel!.version}`));
  await buildOciImage({ rootfsDir: kroot, layoutDir: join(work, 'l-k'), tag: 'k', workDir: join(work, 'u-k'), spec: {} });
  await execFileP('umoci', ['new', '--image', `${join(work, 'l-app')}:empty`]);
  const AUTH = { username: 'mvm', password: 'right-pass' };
  [reg, authReg] = await Promise.all([startRegistry(), startRegistry({ auth: AUTH })]);
  await Promise.all([
    pushImage(join(work, 'l-app'), 'app', reg.addr, 'e2e/probe:1'),
    pushImage(join(work, 'l-app'), 'empty', reg.addr, 'e2e/empty:1'),
    pushImage(join(work, 'l-k'), 'k', reg.addr, 'kernels/cloud:1'),
    pushImage(join(work, 'l-app'), 'app', authReg.addr, 'private/probe:1', AUTH),
  ]);
  app = `${reg.addr}/e2e/probe:1`;
  kernelRef = `${reg.addr}/kernels/cloud:1`;
  // The service holds wrong credentials for the private registry.
  const authFile = join(work, 'auth.json');
  await writeFile(authFile, JSON.stringify({ auths: { [authReg.addr]: { auth: Buffer.from('mvm:wrong-pass').toString('base64') } } }));
  svc = await startService({
    env: {
      MVM_NETWORK: 'none',
      MVM_IMAGE_CACHE_DIR: imageCache,
      MVM_ROOTFS_MAX_SIZE: '2Gi',
      MVM_IMAGE_LEASE: '1s',
      MVM_REGISTRY_AUTH_FILE: authFile,
      MVM_REGISTRIES_ALLOWED: `${reg.addr},${authReg.addr}`,
    },
  });
});

after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
  await Promise.all([reg?.stop(), authReg?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

test('rootfs.size grows the guest filesystem; a kernel from an OCI image boots; images lists both in use and refuses deleting them', { skip, timeout: 300_000 }, async () => {
  const big = await svc.client.microvms.create({ name: 'big', rootfs: { image: app, size: '512Mi' }, kernel: { image: kernelRef } });
  const plain = await svc.client.microvms.create({ name: 'plain', rootfs: { image: app } });
  for (const v of [big, plain]) await svc.client.microvms.waitFor(v.id, { phase: 'Running', ready: true, timeoutMs: 200_000 });
  const bigCon = await consoleUntil(big.id, /PROBE-DF blocks=\d+ end/);
  const plainCon = await consoleUntil(plain.id, /PROBE-DF blocks=\d+ end/);
  const blocks = (con: string): number => Number(/PROBE-DF blocks=(\d+) end/.exec(con)![1]);
  assert.match(bigCon, /PROBE write=ok/);
  assert.ok(blocks(bigCon) > 450 * 1024 && blocks(bigCon) <= 512 * 1024, `the guest sees ~512 MiB: ${blocks(bigCon)} KiB`);
  assert.ok(blocks(plainCon) < 128 * 1024, `without a size the image's own size: ${blocks(plainCon)} KiB`);
  console.log(`# guest df: rootfs.size=512Mi -> ${blocks(bigCon)} KiB; image default -> ${blocks(plainCon)} KiB`);
  // The VM booted the kernel extracted from the image, not the default one.
  const q = qemuProcessesUnder(svc.dataDir).find((p) => p.id === big.id);
  assert.ok(q, 'qemu of the big VM');
  const cmdline = readFileSync(`/proc/${q.pid}/cmdline`, 'utf8').split('\0');
  assert.ok(cmdline.some((a) => a.startsWith(join(imageCache, 'oci-kernels'))), cmdline.join(' '));

  const list = await api('GET', '/images');
  assert.equal(list.status, 200);
  const rootfs = list.json.items.find((i: any) => i.kind === 'rootfs' && i.references.includes(app));
  const kernel = list.json.items.find((i: any) => i.kind === 'kernel' && i.references.includes(kernelRef));
  assert.ok(rootfs && kernel, JSON.stringify(list.json));
  assert.equal(rootfs.inUse, 2);
  assert.equal(kernel.inUse, 1);
  assert.ok(rootfs.sizeBytes > 0 && rootfs.sizeBytes < rootfs.imageSizeBytes, 'allocated size of a sparse image');
  for (const k of ['digest', 'createdAt', 'lastUsedAt']) assert.ok(rootfs[k], k);
  const refused = await api('DELETE', `/images/${rootfs.digest}`);
  assert.equal(refused.status, 409);
  assert.match(refused.json.detail, /in use by 2 microVM/);
  assert.equal((await api('DELETE', `/images/${kernel.digest}`)).status, 409);
  const gc = await api('POST', '/images/gc', { maxIdle: '0s' });
  assert.equal(gc.status, 200);
  assert.equal(gc.json.removed.length, 0, 'gc never removes an image a VM uses');

  // Not for tenants: the cache is node-wide.
  assert.equal((await api('POST', '/tenants', { id: 'imgt' })).status, 201);
  const key = await api('POST', '/apikeys?tenant=imgt', { name: 'ta', role: 'tenant-admin' });
  assert.equal(key.status, 201, JSON.stringify(key.json));
  const asTenant = { url: svc.url, token: key.json.token as string };
  assert.equal((await apiCall(asTenant, 'GET', '/images')).status, 403);
  assert.equal((await apiCall(asTenant, 'DELETE', `/images/${rootfs.digest}`)).status, 403);
  assert.equal((await apiCall(asTenant, 'POST', '/images/gc', {})).status, 403);

  for (const v of [big, plain]) await svc.client.microvms.delete(v.id);
  for (const v of [big, plain]) await svc.client.microvms.waitDeleted(v.id, { timeoutMs: 60_000 });
  await sleep(1200); // past the resolve lease
  assert.equal((await api('DELETE', `/images/${rootfs.digest}`)).status, 204);
  const after1 = await api('GET', '/images');
  assert.ok(!after1.json.items.some((i: any) => i.digest === rootfs.digest));
  assert.equal((await api('DELETE', `/images/${rootfs.digest}`)).status, 404);
  const gc2 = await api('POST', '/images/gc', { maxIdle: '0s' });
  assert.ok(gc2.json.removed.some((r: any) => r.digest === kernel.digest), JSON.stringify(gc2.json));
  assert.deepEqual((await api('GET', '/images')).json.items, []);
  assert.deepEqual(await readdir(join(imageCache, 'oci')), []);
});

test('read-only root disks: several VMs share the cached image at once and refuse writes', { skip, timeout: 300_000 }, async () => {
  const vms = await Promise.all(['ro-1', 'ro-2', 'ro-3'].map((name) => svc.client.microvms.create({ name, rootfs: { image: app, readOnly: true } })));
  for (const v of vms) await svc.client.microvms.waitFor(v.id, { phase: 'Running', ready: true, timeoutMs: 200_000 });
  const running = (await svc.client.microvms.list()).items.filter((v) => v.status.phase === 'Running');
  assert.equal(running.length, 3, 'all three run at the same time');
  for (const v of vms) assert.match(await consoleUntil(v.id, /PROBE write=\w+/), /PROBE write=refused/);
  const img = (await api('GET', '/images')).json.items.find((i: any) => i.kind === 'rootfs' && i.references.includes(app));
  assert.equal(img.inUse, 3);
  // They all use the one cache file: no per-VM root disk exists.
  for (const v of vms) assert.deepEqual((await readdir(join(svc.dataDir, 'vms', v.id))).filter((n) => n.startsWith('root.')), []);
  const resized = await api('POST', '/microvms', { name: 'ro-big', rootfs: { image: app, readOnly: true, size: '1Gi' } });
  assert.equal(resized.status, 422);
  assert.ok(resized.json.errors.some((e: any) => e.field === 'rootfs.size'));
  for (const v of vms) await svc.client.microvms.delete(v.id);
  for (const v of vms) await svc.client.microvms.waitDeleted(v.id, { timeoutMs: 60_000 });
});

test('bad input is a clear 400 (or 422 where the schema cannot know: the image, the node) naming the field, and creates nothing', { skip, timeout: 120_000 }, async () => {
  const before = (await api('GET', '/images')).json.items.length;
  const cases: Array<{ body: any; field: string; detail: RegExp; status?: number }> = [
    { body: { name: 'small', rootfs: { image: app, size: '16Mi' } }, field: 'rootfs.size', detail: /smaller than the image/, status: 422 },
    { body: { name: 'huge', rootfs: { image: app, size: '4Gi' } }, field: 'rootfs.size', detail: /maximum root disk size of 2048Mi/, status: 422 },
    { body: { name: 'huge-default', rootfs: { size: '3Gi' } }, field: 'rootfs.size', detail: /maximum/, status: 422 },
    { body: { name: 'auth', rootfs: { image: `${authReg.addr}/private/probe:1` } }, field: 'rootfs.image', detail: /refused access|authentication/ },
    { body: { name: 'empty', rootfs: { image: `${reg.addr}/e2e/empty:1` } }, field: 'rootfs.image', detail: /no filesystem content/ },
    { body: { name: 'unknown', rootfs: { image: `${reg.addr}/e2e/nothing:1` } }, field: 'rootfs.image', detail: /not found/ },
    { body: { name: 'syntax', rootfs: { image: 'Bad//Ref::x' } }, field: 'rootfs.image', detail: /invalid image reference/ },
    { body: { name: 'nokernel', kernel: { image: app } }, field: 'kernel.image', detail: /holds no kernel/ },
    { body: { name: 'kpath', kernel: { image: '/etc/passwd' } }, field: 'kernel.image', detail: /allowed kernel directory/ },
  ];
  for (const c of cases) {
    const r = await api('POST', '/microvms', c.body);
    assert.equal(r.status, c.status ?? 400, `${c.body.name}: ${JSON.stringify(r.json)}`);
    assert.ok(r.json.errors?.some((e: any) => e.field === c.field), `${c.body.name}: ${JSON.stringify(r.json)}`);
    assert.match(r.json.detail, c.detail, c.body.name);
  }
  // Within the node maximum but over the tenant's disk quota: refused at admission too.
  assert.equal((await api('POST', '/tenants', { id: 'imgq', quotas: { disk: '1Gi' } })).status, 201);
  const q = await api('POST', '/microvms?tenant=imgq', { name: 'over-quota', rootfs: { image: app, size: '2Gi' } });
  assert.equal(q.status, 403, JSON.stringify(q.json));
  assert.equal(q.json.code, 'QUOTA_EXCEEDED');
  assert.match(q.json.detail, /disk/i);
  assert.equal((await svc.client.microvms.list()).items.length, 0, 'no microVM record');
  const items = (await api('GET', '/images')).json.items;
  // Only the valid app image (resolved for the size checks) and no kernel entry from the failures.
  assert.ok(items.length <= before + 1, JSON.stringify(items));
  assert.ok(!items.some((i: any) => i.kind === 'kernel'));
  for (const sub of ['oci', 'oci-kernels']) {
    const left = (await readdir(join(imageCache, sub)).catch(() => [] as string[])).filter((n) => n.startsWith('.'));
    assert.deepEqual(left, [], `no temp build dirs in ${sub}`);
  }
});

test('kill -9 of the service mid image build: no cache entry, and the next build succeeds and sweeps the leftovers', { skip, timeout: 240_000 }, async () => {
  // A heavier image so the build lasts long enough to be caught.
  const rootfs = join(work, 'big-rootfs');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
  await writeFile(join(rootfs, 'data.bin'), (await import('node:crypto')).randomBytes(96 * 1024 * 1024));
  await buildOciImage({ rootfsDir: rootfs, layoutDir: join(work, 'l-big'), tag: 'big', workDir: join(work, 'u-big'), spec: { cmd: ['/bin/busybox', 'sleep', '1000'] } });
  await pushImage(join(work, 'l-big'), 'big', reg.addr, 'e2e/big:1');
  const big = `${reg.addr}/e2e/big:1`;
  const cache2 = join(work, 'cache-kill');
  const env = { MVM_NETWORK: 'none', MVM_IMAGE_CACHE_DIR: cache2, MVM_REGISTRIES_ALLOWED: reg.addr };
  let s2 = await startService({ env });
  const ociDir = join(cache2, 'oci');
  try {
    const pending = apiCall(s2, 'POST', '/microvms', { name: 'big', rootfs: { image: big }, start: false }).catch((e: unknown) => e);
    let tmpName: string | undefined;
    const deadline = Date.now() + 60_000;
    while (!tmpName && Date.now() < deadline) {
      for (const n of (await readdir(ociDir).catch(() => [] as string[])).filter((x) => x.includes('.tmp-'))) {
        const inside = await readdir(join(ociDir, n)).catch(() => [] as string[]);
        if (inside.includes('layout') || inside.includes('bundle')) tmpName = n;
      }
      if (!tmpName) await sleep(20);
    }
    assert.ok(tmpName, 'the build never started');
    await s2.kill9();
    await pending;
    const names = await readdir(ociDir);
    assert.deepEqual(names.filter((n) => !n.startsWith('.')), [], 'no (half) entry after the kill');
    s2 = await startService({ dataDir: s2.dataDir, env });
    assert.equal((await apiCall(s2, 'GET', '/microvms')).json.items.length, 0, 'the killed create left no record');
    const r = await apiCall(s2, 'POST', '/microvms', { name: 'big', rootfs: { image: big }, start: false });
    assert.equal(r.status, 201, JSON.stringify(r.json));
    const after2 = await readdir(ociDir);
    assert.equal(after2.filter((n) => !n.startsWith('.')).length, 1, 'one complete entry');
    assert.deepEqual(after2.filter((n) => n.startsWith('.')), [], 'the dead build’s temp dir was swept');
    await apiCall(s2, 'DELETE', `/microvms/${r.json.id}`);
    await s2.client.microvms.waitDeleted(r.json.id, { timeoutMs: 60_000 });
  } finally {
    await s2.stop().catch(() => undefined);
    await destroyDataDir(s2.dataDir);
  }
});
