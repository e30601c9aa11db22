/**
 * Boot overhead: the same guest booted N times by the raw QEMU command line our
 * driver builds, and N times through the REST API (create -> guest readiness
 * marker), alternating so both see the same machine load. Prints p50/p95 and
 * the ratio. Usage: node dist/bench/boot-overhead.js [N]
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DefaultImageResolver } from '../src/storage/default-images.js';
import { createOverlay } from '../src/storage/disks.js';
import { QemuDriver } from '../src/vmm/qemu/qemu-driver.js';
import { sleep } from '../src/vmm/proc.js';
import { destroyDataDir, startService } from '../test/support/service.js';
import { percentile, printTable } from './stats.js';

const N = Number(process.argv[2] ?? process.env.BENCH_N ?? 5);
const cacheDir = process.env.MVM_CACHE_DIR ?? '/var/cache/mvm';

async function rawBoot(driver: QemuDriver, images: DefaultImageResolver, i: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-bench-raw-'));
  try {
    const kernel = await images.resolveKernel(undefined);
    const rootfs = await images.resolveRootfs(undefined);
    const id = `raw-${i}`;
    const overlay = join(dir, 'root.qcow2');
    await createOverlay({ base: rootfs.path, baseFormat: rootfs.format, path: overlay });
    const { binary, args } = await driver.commandFor({
      id,
      name: id,
      vcpu: 1,
      memoryMiB: 128,
      kernelPath: kernel.kernelPath,
      ...(kernel.initrdPath ? { initrdPath: kernel.initrdPath } : {}),
      cmdline: `console=ttyS0 reboot=k panic=-1 root=/dev/vda rw mvm.id=${id} mvm.name=${id}`,
      drives: [{ id: 'root', path: overlay, format: 'qcow2', readOnly: false, root: true }],
      nics: [],
      vmDir: dir,
      cgroupProcs: [],
    });
    const marker = `MVM-READY id=${id}`;
    const log = join(dir, 'console.log');
    const t0 = performance.now();
    const p = spawn(binary, args, { stdio: 'ignore', detached: true });
    try {
      for (;;) {
        if (existsSync(log) && readFileSync(log, 'utf8').includes(marker)) return performance.now() - t0;
        if (performance.now() - t0 > 120000) throw new Error('raw boot timed out');
        await sleep(25);
      }
    } finally {
      p.kill('SIGKILL');
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const images = new DefaultImageResolver({ cacheDir });
  const kernel = await images.resolveKernel(undefined);
  const driver = new QemuDriver({ cacheDir, probeKernelPath: kernel.kernelPath, runAs: 'mvm-vmm' });
  const caps = await driver.capabilities();
  const dataDir = mkdtempSync(join(tmpdir(), 'mvm-bench-'));
  mkdirSync(dataDir, { recursive: true });
  // The raw command line has no NIC; compare like with like unless asked (BENCH_NETWORK=cni adds the NIC and reports its share).
  const network = process.env.BENCH_NETWORK ?? 'none';
  const svc = await startService({ dataDir, env: { MVM_NETWORK: network } });
  const raw: number[] = [];
  const api: number[] = [];
  const net: number[] = [];
  try {
    // One warm-up of each path (page cache, image cache, probe) that is not counted.
    await rawBoot(driver, images, -1);
    for (let i = -1; i < N; i++) {
      if (i >= 0) raw.push(await rawBoot(driver, images, i));
      const t0 = performance.now();
      const vm = await svc.client.microvms.create({ name: `bench-${i + 1}`, vcpu: 1, memory: '128Mi' });
      const up = await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 120000, pollMs: 60000 });
      if (i >= 0) api.push(performance.now() - t0);
      const netMs = (up.status.bootMs as { network?: number } | undefined)?.network;
      if (i >= 0 && netMs !== undefined) net.push(netMs);
      await svc.client.microvms.delete(vm.id);
      await svc.client.microvms.waitDeleted(vm.id, { timeoutMs: 60000, intervalMs: 100 });
      process.stderr.write(`  run ${i + 1}/${N}: raw ${raw.at(-1)?.toFixed(0) ?? '-'} ms, api ${api.at(-1)?.toFixed(0) ?? '-'} ms\n`);
    }
  } finally {
    await svc.stop();
    await destroyDataDir(dataDir);
  }
  const r50 = percentile(raw, 50);
  const a50 = percentile(api, 50);
  console.log(`\nBoot to guest readiness marker — ${N} runs each, accel=${caps.accel}, 1 vCPU, 128 MiB, QEMU ${caps.version}, API network=${network}\n`);
  printTable(
    ['path', 'n', 'p50 ms', 'p95 ms', 'min ms', 'max ms'],
    [
      ['raw QEMU (driver argv)', raw.length, r50, percentile(raw, 95), Math.min(...raw), Math.max(...raw)],
      ['REST API create → ready', api.length, a50, percentile(api, 95), Math.min(...api), Math.max(...api)],
    ],
  );
  console.log(`\nratio API/raw (p50): ${(a50 / r50).toFixed(3)}x   (target ≤ 1.10x)`);
  if (net.length) {
    const n50 = percentile(net, 50);
    console.log(`network set-up (CNI ADD → tap ready → rules), API path: p50 ${n50.toFixed(0)} ms, p95 ${percentile(net, 95).toFixed(0)} ms = ${((100 * n50) / a50).toFixed(1)}% of create → ready (p50)`);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
