/**
 * Boots an OCI-image root filesystem built by src/storage/oci in QEMU microvm
 * with the default kernel + initramfs and `init=/.mvm/init`: the guest must
 * print MVM-READY, run the image's Entrypoint+Cmd with its Env/WorkingDir,
 * print MVM-EXIT code=0 and power off. Skipped without QEMU or a cloud kernel.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, it } from 'node:test';

import { buildDefaultImages, findHostKernel } from '../../src/storage/default-images.js';
import { OciImageCache } from '../../src/storage/oci/cache.js';
import { OCI_INIT_PATH } from '../../src/storage/oci/init-script.js';
import { buildOciImage, pushImage, startRegistry, type TestRegistry } from '../support/registry.js';

const QEMU = '/usr/bin/qemu-system-x86_64';
let skip: string | false = false;
let work: string;
let reg: TestRegistry | undefined;

before(async () => {
  if (!existsSync(QEMU)) skip = 'no qemu-system-x86_64';
  else await findHostKernel().catch(() => (skip = 'no cloud kernel'));
  work = await mkdtemp(join(tmpdir(), 'mvm-oci-boot-'));
});

after(async () => {
  await reg?.stop();
  await rm(work, { recursive: true, force: true });
});

it('boots an OCI image with init=/.mvm/init and runs its process', { timeout: 120_000 }, async (t) => {
  if (skip) return t.skip(skip);
  const rootfs = join(work, 'rootfs');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await mkdir(join(rootfs, 'srv/app'), { recursive: true });
  await mkdir(join(rootfs, 'etc'), { recursive: true });
  await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
  await symlink('busybox', join(rootfs, 'bin/sh'));
  await writeFile(join(rootfs, 'etc/hello.txt'), 'hello-file\n');
  await writeFile(join(rootfs, 'srv/app/main.sh'), '#!/bin/sh\necho "APP foo=$FOO pwd=$(busybox pwd) args=$* path=$PATH"\nbusybox cat /etc/hello.txt\nexit 0\n');
  await chmod(join(rootfs, 'srv/app/main.sh'), 0o755);
  await buildOciImage({
    rootfsDir: rootfs,
    layoutDir: join(work, 'layout'),
    tag: 'boot',
    workDir: join(work, 'umoci'),
    spec: { entrypoint: ['/srv/app/main.sh'], cmd: ['one', 'two words'], env: ['FOO=from-image', 'PATH=/bin'], workingDir: '/srv/app' },
  });
  reg = await startRegistry();
  await pushImage(join(work, 'layout'), 'boot', reg.addr, 'boot/app:1');
  const entry = await new OciImageCache({ cacheDir: join(work, 'cache') }).resolve(`${reg.addr}/boot/app:1`);
  const def = await buildDefaultImages();

  const args = [
    '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=on', '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
    '-m', '128', '-smp', '1', '-accel', 'tcg,tb-size=32', '-icount', 'shift=3,sleep=on', '-cpu', 'max',
    '-kernel', def.kernelPath, '-initrd', def.initrdPath,
    '-append', `console=ttyS0 reboot=k panic=-1 root=/dev/vda rw mvm.id=oci-boot init=${OCI_INIT_PATH}`,
    '-drive', `id=d0,file=${entry.rootfsPath},format=raw,if=none,snapshot=on`, '-device', 'virtio-blk-device,drive=d0',
    '-serial', 'stdio',
  ];
  const t0 = Date.now();
  const qemu = spawn(QEMU, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  qemu.stdout.on('data', (d: Buffer) => (out += d.toString()));
  qemu.stderr.on('data', (d: Buffer) => (out += d.toString()));
  const timer = setTimeout(() => qemu.kill('SIGKILL'), 90_000);
  const code = await new Promise<number | null>((r) => qemu.once('exit', (c) => r(c)));
  clearTimeout(timer);
  const ms = Date.now() - t0;
  const tail = out.split('\n').slice(-25).join('\n');
  if (process.env['MVM_TEST_DEBUG']) console.log(out);
  assert.match(out, /MVM-READY id=oci-boot/, tail);
  assert.match(out, /APP foo=from-image pwd=\/srv\/app args=one two words path=\/bin/, tail);
  assert.match(out, /hello-file/, tail);
  assert.match(out, /MVM-EXIT code=0/, tail);
  assert.equal(code, 0, `qemu exit (guest should power off): ${tail}`);
  console.log(`booted, ran and powered off in ${ms} ms`);
});
