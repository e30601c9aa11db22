/**
 * Default guest images: vmlinux extraction, the cached builder, and a real
 * QEMU microvm (TCG) boot to the readiness marker + a graceful ACPI power-off.
 * Needs: linux-image-cloud-amd64, busybox-static, e2fsprogs, lz4, qemu-system-x86, qemu-utils.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readFile, readdir, rm, stat } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

import { extractVmlinux, parseBzImage } from '../../src/storage/kernel/extract-vmlinux.js';
import { buildDefaultImages, DefaultImageResolver, findHostKernel } from '../../src/storage/default-images.js';
import { ErrorCodes, MvmError } from '../../src/core/errors.js';

const execFileP = promisify(execFile);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

const haveKernel = await findHostKernel().then(
  () => true,
  () => false,
);
const haveQemu = existsSync('/usr/bin/qemu-system-x86_64') && existsSync('/usr/bin/qemu-img');
const skipNoKernel = haveKernel ? false : 'linux-image-cloud-amd64 not installed (make deps)';

test('extractVmlinux: Debian cloud bzImage -> ELF vmlinux', { skip: skipNoKernel, timeout: 60_000 }, async () => {
  const kernel = await findHostKernel();
  const dir = await mkdtemp(join(tmpdir(), 'mvm-vmlinux-'));
  try {
    const image = await readFile(kernel.bzImagePath);
    const payload = parseBzImage(image);
    assert.equal(payload.format, 'lz4-legacy');
    const out = join(dir, 'vmlinux');
    await extractVmlinux(kernel.bzImagePath, out);
    const fh = await open(out, 'r');
    const head = Buffer.alloc(64);
    await fh.read(head, 0, 64, 0);
    await fh.close();
    assert.deepEqual([...head.subarray(0, 4)], [0x7f, 0x45, 0x4c, 0x46], 'ELF magic');
    assert.equal(head[4], 2, 'ELFCLASS64');
    assert.equal(head.readUInt16LE(0x12), 0x3e, 'EM_X86_64');
    const size = (await stat(out)).size;
    assert.equal(size, payload.expectedSize);
    assert.ok(size > 20 * 1024 * 1024 && size > image.length, `vmlinux is ${size} bytes`);
    // not a bzImage at all
    await assert.rejects(extractVmlinux('/etc/hostname', join(dir, 'y')), /too small|setup header/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('default images: built once, cached, shared by concurrent callers', { skip: skipNoKernel, timeout: 60_000 }, async () => {
  const cacheDir = await mkdtemp(join(tmpdir(), 'mvm-cache-'));
  try {
    const logs: string[] = [];
    const [a, b] = await Promise.all([
      buildDefaultImages({ cacheDir, log: (m) => logs.push(m) }),
      buildDefaultImages({ cacheDir, log: (m) => logs.push(m) }),
    ]);
    assert.deepEqual(a, b);
    assert.equal(logs.filter((l) => l.startsWith('building default images')).length, 1, 'one build');
    const entries = await readdir(join(cacheDir, 'images'));
    assert.deepEqual(entries, [a.dir.split('/').at(-1)], 'no temp dirs left');
    assert.match(a.dir, /\/images\/default-\d[^/]*-cloud-amd64-[0-9a-f]{12}$/);
    for (const f of [a.kernelPath, a.initrdPath, a.rootfsPath, join(a.dir, 'manifest.json')]) assert.ok(existsSync(f), f);
    const rootfs = await readFile(a.rootfsPath);
    assert.equal(a.rootfsDigest, `sha256:${createHash('sha256').update(rootfs).digest('hex')}`);
    const manifest = JSON.parse(await readFile(join(a.dir, 'manifest.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(manifest['rootfsDigest'], a.rootfsDigest);
    assert.equal(manifest['kernelVersion'], a.kernelVersion);
    // initrd is a gzip'd newc cpio
    const initrd = await readFile(a.initrdPath);
    assert.deepEqual([...initrd.subarray(0, 2)], [0x1f, 0x8b]);

    const t0 = performance.now();
    const again = await buildDefaultImages({ cacheDir, log: (m) => logs.push(m) });
    const elapsed = performance.now() - t0;
    assert.equal(again.rootfsDigest, a.rootfsDigest);
    assert.equal(again.builtAt, a.builtAt, 'not rebuilt');
    assert.ok(elapsed < 500, `cached lookup took ${elapsed.toFixed(0)} ms`);

    const resolver = new DefaultImageResolver({ cacheDir });
    const k = await resolver.resolveKernel(undefined);
    assert.deepEqual(k, { kernelPath: a.kernelPath, initrdPath: a.initrdPath, version: a.kernelVersion });
    const r = await resolver.resolveRootfs('default');
    assert.deepEqual(r, { path: a.rootfsPath, format: 'raw', sizeBytes: rootfs.length, digest: a.rootfsDigest });
    await assert.rejects(resolver.resolveRootfs('docker.io/library/alpine:3'), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.IMAGE_ERROR);
    await assert.rejects(resolver.resolveKernel('vmlinux-6.9'), (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.IMAGE_ERROR);
  } finally {
    await rm(cacheDir, { recursive: true, force: true });
  }
});

// ---------------------------------------------------------------------------
// Real boot

async function waitFor<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined>): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(50);
  }
}

const readLog = (path: string): Promise<string> => readFile(path, 'utf8').catch(() => '');

function connectUnix(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(path);
    s.once('connect', () => resolve(s));
    s.once('error', reject);
  });
}

/** Minimal QMP client: capabilities handshake, then one command. */
async function qmp(path: string, execute: string): Promise<unknown> {
  const s = await connectUnix(path);
  try {
    let buf = '';
    const lines: unknown[] = [];
    s.setEncoding('utf8');
    s.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (line) lines.push(JSON.parse(line));
      }
    });
    const next = (key: string): Promise<Record<string, unknown>> =>
      waitFor(`QMP ${key}`, 5000, async () => {
        const idx = lines.findIndex((l) => typeof l === 'object' && l !== null && (key in l || 'error' in l));
        if (idx < 0) return undefined;
        const [l] = lines.splice(idx, 1) as [Record<string, unknown>];
        if ('error' in l) throw new Error(`QMP error: ${JSON.stringify(l['error'])}`);
        return l;
      });
    await next('QMP');
    s.write(JSON.stringify({ execute: 'qmp_capabilities' }) + '\n');
    await next('return');
    s.write(JSON.stringify({ execute }) + '\n');
    return (await next('return'))['return'];
  } finally {
    s.destroy();
  }
}

test(
  'default images boot on QEMU microvm (TCG) to MVM-READY; serial console in/out; graceful system_powerdown',
  { skip: !haveKernel ? skipNoKernel : !haveQemu ? 'qemu-system-x86 / qemu-utils not installed' : false, timeout: 90_000 },
  async () => {
    const cacheDir = await mkdtemp(join(tmpdir(), 'mvm-cache-'));
    const dir = await mkdtemp(join(tmpdir(), 'mvm-boot-'));
    let qemu: ChildProcess | undefined;
    let stderr = '';
    try {
      const img = await buildDefaultImages({ cacheDir });
      const overlay = join(dir, 'root.qcow2');
      await execFileP('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', img.rootfsPath, overlay]);
      const consoleLog = join(dir, 'console.log');
      const consoleSock = join(dir, 'console.sock');
      const qmpSock = join(dir, 'qmp.sock');
      const args = [
        '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=on',
        '-accel', 'tcg,tb-size=32',
        // fixed shift: with shift=auto,sleep=on an idle guest's timers fire ~1 s late (QEMU 7.2)
        '-icount', 'shift=3,sleep=on',
        '-cpu', 'max', '-m', '128', '-smp', '1',
        '-nodefaults', '-no-user-config', '-nographic', '-no-reboot',
        '-kernel', img.kernelPath, '-initrd', img.initrdPath,
        '-append', 'console=ttyS0 root=/dev/vda rw quiet mvm.id=test1 mvm.name=imgtest',
        '-drive', `id=root,file=${overlay},format=qcow2,if=none`,
        '-device', 'virtio-blk-device,drive=root',
        '-chardev', `socket,id=ser0,path=${consoleSock},server=on,wait=off,logfile=${consoleLog}`,
        '-serial', 'chardev:ser0',
        '-qmp', `unix:${qmpSock},server=on,wait=off`,
      ];
      const started = Date.now();
      qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'ignore', 'pipe'] });
      qemu.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
      const exited = new Promise<number | null>((resolve) => qemu?.once('exit', (code) => resolve(code)));
      let exitCode: number | null | undefined;
      void exited.then((c) => (exitCode = c));

      // 1. readiness marker reaches the log file with no client on the console socket
      const ready = await waitFor('MVM-READY', 45_000, async () => {
        if (exitCode !== undefined) throw new Error(`qemu exited (${exitCode}): ${stderr}\n${await readLog(consoleLog)}`);
        const log = await readLog(consoleLog);
        return /^MVM-READY id=test1\r?$/m.test(log) ? log : undefined;
      });
      const bootMs = Date.now() - started;
      assert.equal(ready.match(/MVM-READY/g)?.length, 1, 'exactly one marker line');

      // 2. typing into the console socket reaches the guest shell
      await waitFor('shell prompt', 15_000, async () => ((await readLog(consoleLog)).split('MVM-READY')[1]?.includes('# ') ? true : undefined));
      const sock = await connectUnix(consoleSock);
      let seen = '';
      sock.setEncoding('utf8');
      sock.on('data', (d: string) => (seen += d));
      try {
        const cmd = 'echo hi-$((40+2)) > /tmp/x; cat /tmp/x; hostname\n';
        sock.write(cmd);
        await waitFor('command output on the console socket', 15_000, async () => {
          if (/hi-42\r?\n/.test(seen) && /^imgtest\r?$/m.test(seen)) return true;
          return undefined;
        });
        assert.match(seen, /^imgtest\r?$/m);
        // output produced after the client disconnects still reaches the log
        sock.write('(sleep 1; echo late-$((6*7))) &\n');
        await sleep(300);
      } finally {
        sock.destroy();
      }
      await waitFor('output after disconnect in console.log', 15_000, async () =>
        /late-42\r?\n/.test(await readLog(consoleLog)) ? true : undefined,
      );
      assert.match(await readLog(consoleLog), /hi-42\r?\n/, 'console.log also holds the interactive output');

      // 3. graceful power-off via the ACPI power button
      const t0 = Date.now();
      await qmp(qmpSock, 'system_powerdown');
      const code = await Promise.race([exited, sleep(15_000).then(() => 'timeout' as const)]);
      const stopMs = Date.now() - t0;
      assert.notEqual(code, 'timeout', `QEMU did not exit after system_powerdown:\n${(await readLog(consoleLog)).slice(-2000)}`);
      assert.equal(code, 0);
      const finalLog = await readLog(consoleLog);
      assert.match(finalLog, /mvm-init: poweroff/);
      console.log(`# boot to MVM-READY ${bootMs} ms, system_powerdown to QEMU exit ${stopMs} ms`);
    } finally {
      if (qemu && qemu.exitCode === null && qemu.signalCode === null) qemu.kill('SIGKILL');
      await rm(dir, { recursive: true, force: true });
      await rm(cacheDir, { recursive: true, force: true });
    }
  },
);
