/**
 * Image storage without a VM: growing root disks on the host (raw clone +
 * resize2fs; qcow2 overlay through a qemu-storage-daemon FUSE export), kernels
 * from OCI images and host paths with their own cache entries, and the image
 * manager (in-use counts, refused delete, gc by age and size budget, leases).
 * Needs: e2fsprogs, qemu-utils, qemu-system-x86 (qemu-storage-daemon), /dev/fuse,
 * skopeo, umoci, docker-registry, linux-image-cloud-amd64.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, open, readdir, readFile, rm, stat, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';

import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import { findHostKernel, type DefaultImageResolver } from '../../src/storage/default-images.js';
import { allocatedBytes, createOverlay, createRawClone, diskInfo, ext4Size } from '../../src/storage/disks.js';
import { bzImageVersion } from '../../src/storage/kernel/kernel-cache.js';
import { clearLeases } from '../../src/storage/oci/cache.js';
import { ImageManager, loadImageConfig, readAuthFile, type ImageUser } from '../../src/storage/oci/manager.js';
import { OciImageResolver } from '../../src/storage/oci/resolver.js';
import { buildOciImage, pushImage, startRegistry, type TestRegistry } from '../support/registry.js';

const execFileP = promisify(execFile);
const sha = async (p: string): Promise<string> => createHash('sha256').update(await readFile(p)).digest('hex');
const hostKernel = await findHostKernel().catch(() => undefined);
const haveFuse = existsSync('/dev/fuse') && existsSync('/usr/bin/qemu-storage-daemon');

let work: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'mvm-img-storage-'));
});
after(async () => {
  if (!work) return;
  // A failed grow test could leave a FUSE export mounted under work: unmount before removing.
  for (const line of (await readFile('/proc/mounts', 'utf8')).split('\n')) {
    const m = line.split(' ')[1];
    if (m?.startsWith(work)) await execFileP('umount', ['-l', m]).catch(() => undefined);
  }
  await rm(work, { recursive: true, force: true });
});

async function ext4Base(name: string, mib: number): Promise<string> {
  const content = join(work, `${name}.d`);
  await mkdir(content, { recursive: true });
  await writeFile(join(content, 'hello.txt'), 'hello\n');
  const p = join(work, `${name}.ext4`);
  await writeFile(p, '');
  await truncate(p, mib * 1024 * 1024);
  await execFileP('mkfs.ext4', ['-q', '-F', '-m', '0', '-d', content, p]);
  return p;
}

describe('growing root disks on the host', () => {
  it('raw clone: extended sparse and resize2fs-ed; the base is untouched', async () => {
    const base = await ext4Base('raw-base', 32);
    const before = await sha(base);
    const disk = join(work, 'raw-vm.raw');
    await createRawClone({ base, path: disk, sizeBytes: 512 * 1024 * 1024 });
    assert.equal((await stat(disk)).size, 512 * 1024 * 1024);
    assert.equal(await ext4Size(disk), 512 * 1024 * 1024, 'the filesystem fills the disk');
    await execFileP('e2fsck', ['-fn', disk]); // consistent (throws on errors)
    const { stdout } = await execFileP('debugfs', ['-R', 'cat /hello.txt', disk]);
    assert.equal(stdout, 'hello\n', 'content kept');
    assert.ok(allocatedBytes(disk) < 64 * 1024 * 1024, `sparse: ${allocatedBytes(disk)} bytes allocated`);
    assert.equal(await sha(base), before, 'base unchanged');
    assert.deepEqual((await readdir(work)).filter((n) => n.includes('.tmp')), []);
  });

  it('raw clone without a size keeps the base size', async () => {
    const base = await ext4Base('raw-base2', 32);
    const disk = join(work, 'raw-vm2.raw');
    await createRawClone({ base, path: disk });
    assert.equal(await ext4Size(disk), 32 * 1024 * 1024);
  });

  it('qcow2 overlay: virtual size and ext4 grown through a FUSE export; the base is untouched', { skip: haveFuse ? false : 'needs /dev/fuse and qemu-storage-daemon' }, async () => {
    const base = await ext4Base('q-base', 32);
    const before = await sha(base);
    const disk = join(work, 'q-vm.qcow2');
    const t0 = Date.now();
    await createOverlay({ base, baseFormat: 'raw', path: disk, sizeBytes: 1024 * 1024 * 1024 });
    const ms = Date.now() - t0;
    const info = await diskInfo(disk);
    assert.equal(info.virtualSize, 1024 * 1024 * 1024);
    assert.equal(info.format, 'qcow2');
    assert.ok(info.actualSize < 16 * 1024 * 1024, `overlay stays small: ${info.actualSize}`);
    // Read the grown filesystem back through a raw conversion.
    const flat = join(work, 'q-flat.raw');
    await execFileP('qemu-img', ['convert', '-O', 'raw', disk, flat]);
    assert.equal(await ext4Size(flat), 1024 * 1024 * 1024);
    await execFileP('e2fsck', ['-fn', flat]);
    assert.equal(await sha(base), before, 'base unchanged');
    assert.deepEqual((await readdir(work)).filter((n) => n.startsWith('q-vm.qcow2.')), [], 'no export file, pid file or temp left');
    console.log(`# qcow2 overlay grown 32 MiB -> 1 GiB in ${ms} ms`);
  });

  it('a grow interrupted by a killed service (daemon and FUSE export left behind) is cleaned up by the retry', { skip: haveFuse ? false : 'needs /dev/fuse and qemu-storage-daemon' }, async () => {
    const base = await ext4Base('k-base', 32);
    const disk = join(work, 'k-vm.qcow2');
    const tmp = `${disk}.tmp`;
    // What a service killed mid-grow leaves: the temp overlay, exported by a still-running daemon.
    await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base, tmp, String(256 * 1024 * 1024)]);
    await writeFile(`${tmp}.fuse`, '');
    await execFileP('qemu-storage-daemon', [
      '--blockdev', `driver=file,node-name=f,filename=${tmp}`,
      '--blockdev', 'driver=qcow2,node-name=q,file=f',
      '--export', `type=fuse,id=e,node-name=q,mountpoint=${tmp}.fuse,writable=on`,
      '--pidfile', `${tmp}.qsd.pid`, '--daemonize',
    ]);
    const stalePid = Number(await readFile(`${tmp}.qsd.pid`, 'utf8'));
    await createOverlay({ base, baseFormat: 'raw', path: disk, sizeBytes: 512 * 1024 * 1024 });
    assert.throws(() => process.kill(stalePid, 0), 'the stale daemon is gone');
    const flat = join(work, 'k-flat.raw');
    await execFileP('qemu-img', ['convert', '-O', 'raw', disk, flat]);
    assert.equal(await ext4Size(flat), 512 * 1024 * 1024);
    assert.deepEqual((await readdir(work)).filter((n) => n.startsWith('k-vm.qcow2.')), []);
    const mounts = await readFile('/proc/mounts', 'utf8');
    assert.ok(!mounts.includes(disk), 'no FUSE mount left');
  });

  it('a failed grow leaves no disk behind', async () => {
    const base = join(work, 'not-ext4.raw');
    await writeFile(base, Buffer.alloc(4 * 1024 * 1024));
    const disk = join(work, 'bad-vm.raw');
    await assert.rejects(createRawClone({ base, path: disk, sizeBytes: 64 * 1024 * 1024 }), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.IMAGE_ERROR);
    assert.equal(existsSync(disk), false);
    assert.equal(existsSync(`${disk}.tmp`), false);
  });
});

describe('kernels from images and paths; the image manager', { skip: hostKernel ? false : 'linux-image-cloud-amd64 not installed (make deps)' }, () => {
  let reg: TestRegistry;
  let resolver: OciImageResolver;
  let cacheDir: string;
  const fakeDefault = (version: string) =>
    ({
      resolveKernel: async () => ({ kernelPath: '/nonexistent/vmlinux', initrdPath: '/nonexistent/initrd.img', version }),
      resolveRootfs: async () => {
        throw new Error('no default rootfs here');
      },
    }) as unknown as DefaultImageResolver;

  before(async () => {
    reg = await startRegistry();
    // kernel image: the host kernel as /boot/vmlinuz-<version>
    const kroot = join(work, 'kroot');
    await mkdir(join(kroot, 'boot'), { recursive: true });
    await copyFile(hostKernel!.bzImagePath, join(kroot, 'boot', `vmlinuz-${hostKernel!.version}`));
    await buildOciImage({ rootfsDir: kroot, layoutDir: join(work, 'klayout-k'), tag: 'k', workDir: join(work, 'kumoci'), spec: {} });
    // kernel named by a label, through a symlink
    const lroot = join(work, 'lroot');
    await mkdir(join(lroot, 'kernels'), { recursive: true });
    await copyFile(hostKernel!.bzImagePath, join(lroot, 'kernels', 'my-kernel'));
    await symlink('my-kernel', join(lroot, 'kernels', 'current'));
    await writeFile(join(lroot, 'kernels', 'my-initrd'), 'not really an initrd');
    await buildOciImage({
      rootfsDir: lroot,
      layoutDir: join(work, 'klayout-l'),
      tag: 'labelled',
      workDir: join(work, 'lumoci'),
      spec: { labels: { 'io.mvm.kernel': '/kernels/current', 'io.mvm.initrd': '/kernels/my-initrd' } },
    });
    // no kernel at all; and a rootfs image
    const nroot = join(work, 'nroot');
    await mkdir(join(nroot, 'bin'), { recursive: true });
    await copyFile('/bin/busybox', join(nroot, 'bin/busybox'));
    await buildOciImage({ rootfsDir: nroot, layoutDir: join(work, 'klayout-n'), tag: 'nokernel', workDir: join(work, 'numoci'), spec: { cmd: ['/bin/busybox', 'true'] } });
    await pushImage(join(work, 'klayout-k'), 'k', reg.addr, 'kernels/cloud:1');
    await pushImage(join(work, 'klayout-l'), 'labelled', reg.addr, 'kernels/labelled:1');
    await pushImage(join(work, 'klayout-n'), 'nokernel', reg.addr, 'apps/tiny:1');
        cacheDir = await mkdtemp(join(work, 'cache-'));
    resolver = new OciImageResolver(fakeDefault(hostKernel!.version), { cacheDir });
  });
  after(async () => {
    await reg?.stop();
  });

  it('bzImageVersion reads the release from the setup header', async () => {
    const fh = await open(hostKernel!.bzImagePath, 'r');
    const b = Buffer.alloc(0x10000);
    await fh.read(b, 0, b.length, 0);
    await fh.close();
    assert.equal(bzImageVersion(b), hostKernel!.version);
  });

  it('a kernel image is pulled, extracted to an ELF vmlinux, cached by digest; the default initrd fits the same release', async () => {
    const k = await resolver.resolveKernel(`${reg.addr}/kernels/cloud:1`);
    assert.equal(k.version, hostKernel!.version);
    assert.equal(k.initrdPath, '/nonexistent/initrd.img', 'same release as the default kernel: its initrd');
    const head = (await readFile(k.kernelPath)).subarray(0, 4);
    assert.deepEqual([...head], [0x7f, 0x45, 0x4c, 0x46]);
    assert.match(k.kernelPath, new RegExp(`^${cacheDir}/oci-kernels/sha256-[0-9a-f]{64}/vmlinux$`));
    const again = await resolver.kernels.resolve(`${reg.addr}/kernels/cloud:1`);
    assert.equal(again.cacheHit, true);
    assert.equal(again.kernelPath, k.kernelPath);
    // a different release: no default initrd
    const other = new OciImageResolver(fakeDefault('0.0.0-other'), { cacheDir });
    assert.equal((await other.resolveKernel(`${reg.addr}/kernels/cloud:1`)).initrdPath, undefined);
  });

  it('labels name the kernel (through a symlink) and the initrd', async () => {
    const k = await resolver.kernels.resolve(`${reg.addr}/kernels/labelled:1`);
    assert.equal(k.source, '/kernels/current');
    assert.equal(k.initrdSource, '/kernels/my-initrd');
    assert.equal(await readFile(k.initrdPath!, 'utf8'), 'not really an initrd');
  });

  it('a host path in an allowed directory works; outside them it is refused', async () => {
    const r = new OciImageResolver(fakeDefault(hostKernel!.version), { cacheDir, kernelDirs: ['/boot'] });
    const k = await r.kernels.resolve(hostKernel!.bzImagePath);
    assert.equal(k.version, hostKernel!.version);
    assert.equal(k.reference, hostKernel!.bzImagePath);
    await assert.rejects(r.kernels.resolve('/etc/passwd'), (e: unknown) => e instanceof MvmError && /allowed kernel directory/.test(e.message));
  });

  it('an image without a kernel is a clear error and leaves no cache entry', async () => {
    const before = (await resolver.kernels.list()).length;
    await assert.rejects(resolver.resolveKernel(`${reg.addr}/apps/tiny:1`), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.IMAGE_ERROR && /holds no kernel/.test(e.message));
    assert.equal((await resolver.kernels.list()).length, before);
    assert.deepEqual((await readdir(resolver.kernels.root)).filter((n) => n.startsWith('.')), []);
  });

  it('manager: lists rootfs and kernel images with in-use counts, refuses deleting a used one, deletes an unused one', async () => {
    const users: ImageUser[] = [];
    const m = new ImageManager(resolver, async () => users);
    const app = await resolver.resolveRootfs(`${reg.addr}/apps/tiny:1`);
    users.push({ id: 'vm-a', rootfs: `${reg.addr}/apps/tiny:1`, kernel: `${reg.addr}/kernels/cloud:1` });
    users.push({ id: 'vm-b', rootfs: `${reg.addr}/apps/tiny@${app.digest}` });
    const list = await m.list();
    const rootfs = list.find((i) => i.kind === 'rootfs' && i.digest === app.digest)!;
    assert.ok(rootfs, JSON.stringify(list));
    assert.equal(rootfs.inUse, 2);
    assert.ok(rootfs.references.includes(`${reg.addr}/apps/tiny:1`));
    assert.ok(rootfs.sizeBytes > 0 && rootfs.sizeBytes < rootfs.imageSizeBytes, 'allocated < apparent (sparse)');
    const kernel = list.find((i) => i.kind === 'kernel' && i.references.includes(`${reg.addr}/kernels/cloud:1`))!;
    assert.equal(kernel.inUse, 1);
    await assert.rejects(m.delete(app.digest), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.CONFLICT && /in use by 2/.test(e.message));
    // Just resolved (a create in progress): protected by the lease even with no VM naming it.
    users.length = 0;
    await assert.rejects(m.delete(app.digest), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.CONFLICT && /being created/.test(e.message));
    clearLeases();
    await m.delete(app.digest.replace(':', '-'));
    assert.equal((await m.list()).some((i) => i.digest === app.digest), false);
    await assert.rejects(m.delete(app.digest), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.NOT_FOUND);
    await assert.rejects(m.delete('nonsense'), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.VALIDATION_FAILED);
  });

  it('manager gc: by idle age and size budget, least recently used first, never a used or leased image', async () => {
    const users: ImageUser[] = [];
    const m = new ImageManager(resolver, async () => users);
    const a = await resolver.resolveRootfs(`${reg.addr}/apps/tiny:1`);
    await new Promise((r) => setTimeout(r, 20));
    const kernel = await resolver.kernels.resolve(`${reg.addr}/kernels/cloud:1`);
    users.push({ id: 'vm-k', kernel: `${reg.addr}/kernels/cloud:1` });
    // leased: nothing goes
    let r = await m.gc({ maxIdleMs: 0 });
    assert.ok(!r.removed.some((x) => x.digest === a.digest || x.digest === kernel.digest), JSON.stringify(r));
    clearLeases();
    // no age limit, a budget the cache already fits: nothing goes
    const total = (await m.list()).reduce((s, i) => s + i.sizeBytes, 0);
    r = await m.gc({ maxIdleMs: Number.POSITIVE_INFINITY, maxBytes: total });
    assert.equal(r.removed.length, 0);
    // a budget of 1 byte: every unused image goes, the used kernel stays
    r = await m.gc({ maxIdleMs: Number.POSITIVE_INFINITY, maxBytes: 1 });
    assert.ok(r.removed.some((x) => x.digest === a.digest), JSON.stringify(r));
    assert.ok(!r.removed.some((x) => x.digest === kernel.digest));
    assert.ok(r.keptInUse >= 1);
    assert.ok(r.freedBytes > 0);
    const left = await m.list();
    assert.ok(left.every((i) => i.inUse > 0), JSON.stringify(left));
    // idle age: once unused, a 0 max idle removes it
    users.length = 0;
    r = await m.gc({ maxIdleMs: 0 });
    assert.ok(r.removed.some((x) => x.digest === kernel.digest));
    assert.deepEqual(await m.list(), []);
  });

  it('manager: the periodic gc removes idle unused images on its own', async () => {
    const r = await resolver.resolveRootfs(`${reg.addr}/apps/tiny:1`);
    clearLeases();
    const logs: string[] = [];
    const m = new ImageManager(resolver, async () => [], { intervalMs: 50, maxIdleMs: 1, maxBytes: 0 }, (msg) => logs.push(msg));
    m.start();
    try {
      const deadline = Date.now() + 10_000;
      // The gc logs once its whole pass is done, after the removal the list shows: wait for both.
      while (Date.now() < deadline && ((await m.list()).some((i) => i.digest === r.digest) || !logs.includes('image gc'))) await new Promise((res) => setTimeout(res, 50));
    } finally {
      m.stop();
    }
    assert.equal((await m.list()).some((i) => i.digest === r.digest), false, 'removed by the timer');
    assert.ok(logs.includes('image gc'), logs.join(','));
  });

  it('config: durations, sizes and the auth file', async () => {
    const authFile = join(work, 'auth.json');
    await writeFile(authFile, JSON.stringify({ auths: { 'reg.example:5000': { auth: Buffer.from('u:p:w').toString('base64') } } }));
    const c = loadImageConfig({ MVM_IMAGE_GC_INTERVAL: '10m', MVM_IMAGE_GC_MAX_IDLE: '2d', MVM_IMAGE_CACHE_MAX_BYTES: '20Gi', MVM_ROOTFS_MAX_SIZE: '8Gi', MVM_REGISTRY_AUTH_FILE: authFile });
    assert.deepEqual(c.gc, { intervalMs: 600_000, maxIdleMs: 2 * 86_400_000, maxBytes: 20 * 1024 ** 3 });
    assert.equal(c.maxRootfsBytes, 8 * 1024 ** 3);
    assert.deepEqual(c.credentials, { 'reg.example:5000': { username: 'u', password: 'p:w' } });
    assert.deepEqual(readAuthFile(authFile), c.credentials);
    assert.throws(() => loadImageConfig({ MVM_IMAGE_CACHE_MAX_BYTES: 'lots' }), /MVM_IMAGE_CACHE_MAX_BYTES/);
  });
});
