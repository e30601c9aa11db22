/**
 * Image storage through the REST API, in one run against a local registry:
 *  1. cold create (pull + unpack + mkfs of an image not in the cache) vs warm
 *     create (cached image) → guest ready, alternating N times (the cached
 *     entry is deleted through DELETE /api/v1/images before each cold run);
 *  2. disk space actually allocated (stat blocks, what `du` shows) by the root
 *     disks of M running VMs from one image (qcow2 overlays over the one cached
 *     ext4) vs M full copies of that image (`cp`, sparse).
 * Usage: node dist/bench/storage.js [N=3] [M=20]
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, mkdtemp, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { apiCall, destroyDataDir, startService, type TestService } from '../test/support/service.js';
import { buildOciImage, pushImage, startRegistry, type TestRegistry } from '../test/support/registry.js';
import { percentile, printTable } from './stats.js';

const run = promisify(execFile);
const N = Number(process.argv[2] ?? process.env.BENCH_N ?? 3);
const M = Number(process.argv[3] ?? process.env.BENCH_VMS ?? 20);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const mib = (b: number): string => (b / 1048576).toFixed(1);

async function allocated(path: string): Promise<number> {
  return (await stat(path)).blocks * 512;
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'mvm-bench-storage-'));
  let reg: TestRegistry | undefined;
  let svc: TestService | undefined;
  const cold: number[] = [];
  const warm: number[] = [];
  let disks: { overlays: number; imageAlloc: number; imageApparent: number; copies: number; perVm: number[] } | undefined;
  try {
    // An app image of realistic weight: busybox + 24 MiB of incompressible data.
    const rootfs = join(work, 'rootfs');
    await mkdir(join(rootfs, 'bin'), { recursive: true });
    await mkdir(join(rootfs, 'app'), { recursive: true });
    await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
    await symlink('busybox', join(rootfs, 'bin/sh'));
    await writeFile(join(rootfs, 'app/data.bin'), randomBytes(24 * 1024 * 1024));
    await writeFile(join(rootfs, 'app/main.sh'), '#!/bin/sh\necho APP-UP\nexec busybox sleep 100000\n');
    await chmod(join(rootfs, 'app/main.sh'), 0o755);
    await buildOciImage({ rootfsDir: rootfs, layoutDir: join(work, 'layout'), tag: 'app', workDir: join(work, 'umoci'), spec: { entrypoint: ['/app/main.sh'], env: ['PATH=/bin'] } });
    reg = await startRegistry();
    await pushImage(join(work, 'layout'), 'app', reg.addr, 'bench/app:1');
    const image = `${reg.addr}/bench/app:1`;
    svc = await startService({ env: { MVM_NETWORK: 'none', MVM_IMAGE_CACHE_DIR: join(work, 'image-cache'), MVM_IMAGE_LEASE: '1s', MVM_IMAGE_GC_INTERVAL: '0s', MVM_REGISTRIES_ALLOWED: reg.addr } });
    const s = svc;
    const api = (method: string, path: string, body?: unknown) => apiCall(s, method, path, body);
    const createReady = async (name: string): Promise<{ id: string; ms: number }> => {
      const t0 = performance.now();
      const vm = await s.client.microvms.create({ name, rootfs: { image } });
      await s.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 300_000, pollMs: 60_000 });
      return { id: vm.id, ms: performance.now() - t0 };
    };
    const remove = async (id: string): Promise<void> => {
      await s.client.microvms.delete(id);
      await s.client.microvms.waitDeleted(id, { timeoutMs: 60_000, intervalMs: 100 });
    };

    for (let i = 0; i < N; i++) {
      // cold: the image is not in the cache
      const items = (await api('GET', '/images')).json.items as Array<{ digest: string }>;
      for (const it of items) {
        await sleep(1100); // past the resolve lease
        const d = await api('DELETE', `/images/${it.digest}`);
        if (d.status !== 204) throw new Error(`DELETE /images/${it.digest}: ${d.status} ${JSON.stringify(d.json)}`);
      }
      const c = await createReady(`cold-${i}`);
      cold.push(c.ms);
      await remove(c.id);
      const w = await createReady(`warm-${i}`);
      warm.push(w.ms);
      await remove(w.id);
      process.stderr.write(`  run ${i + 1}/${N}: cold ${cold.at(-1)!.toFixed(0)} ms, warm ${warm.at(-1)!.toFixed(0)} ms\n`);
    }

    // M VMs from one image, all running at once (created in batches of 5 to keep TCG boots sane).
    const ids: string[] = [];
    for (let b = 0; b < M; b += 5) {
      const batch = await Promise.all(Array.from({ length: Math.min(5, M - b) }, (_, j) => s.client.microvms.create({ name: `many-${b + j}`, rootfs: { image } })));
      for (const v of batch) await s.client.microvms.waitFor(v.id, { phase: 'Running', ready: true, timeoutMs: 600_000, pollMs: 60_000 });
      ids.push(...batch.map((v) => v.id));
      process.stderr.write(`  ${ids.length}/${M} VMs running\n`);
    }
    const img = ((await api('GET', '/images')).json.items as Array<{ kind: string; sizeBytes: number; imageSizeBytes: number }>).find((i) => i.kind === 'rootfs')!;
    const perVm: number[] = [];
    for (const id of ids) {
      const dir = join(s.dataDir, 'vms', id);
      const root = (await readdir(dir)).find((n) => n === 'root.qcow2' || n === 'root.raw')!;
      perVm.push(await allocated(join(dir, root)));
    }
    // Baseline: M full copies of the cached image (sparse, as `cp` makes them).
    const entryDir = join(work, 'image-cache', 'oci');
    const entry = (await readdir(entryDir)).find((n) => !n.startsWith('.'))!;
    const base = join(entryDir, entry, 'rootfs.ext4');
    const copies = join(work, 'copies');
    await mkdir(copies);
    let copyTotal = 0;
    for (let i = 0; i < M; i++) {
      const p = join(copies, `vm-${i}.ext4`);
      await run('cp', ['--reflink=never', '--sparse=auto', base, p]);
      copyTotal += await allocated(p);
    }
    await run('sync');
    disks = { overlays: perVm.reduce((a, b) => a + b, 0), imageAlloc: img.sizeBytes, imageApparent: img.imageSizeBytes, copies: copyTotal, perVm };
    for (const id of ids) await s.client.microvms.delete(id);
    for (const id of ids) await s.client.microvms.waitDeleted(id, { timeoutMs: 120_000 });
  } finally {
    await svc?.stop();
    if (svc) await destroyDataDir(svc.dataDir);
    await reg?.stop();
    await rm(work, { recursive: true, force: true });
  }
  console.log(`\nCreate → guest ready through the REST API from a local-registry image (busybox + 24 MiB), ${N} runs each, alternating\n`);
  printTable(
    ['path', 'n', 'p50 ms', 'p95 ms', 'min ms', 'max ms'],
    [
      ['cold: pull + build + boot', cold.length, percentile(cold, 50), percentile(cold, 95), Math.min(...cold), Math.max(...cold)],
      ['warm: cached image + boot', warm.length, percentile(warm, 50), percentile(warm, 95), Math.min(...warm), Math.max(...warm)],
    ],
  );
  console.log(`\npull + build cost (p50 cold − p50 warm): ${(percentile(cold, 50) - percentile(warm, 50)).toFixed(0)} ms`);
  if (disks) {
    console.log(`\nRoot disks of ${M} running VMs from one image (allocated blocks, as du shows; image apparent size ${mib(disks.imageApparent)} MiB)\n`);
    printTable(
      ['layout', 'per VM MiB (p50)', `total for ${M} MiB`],
      [
        [`qcow2 overlays + the one cached image`, mib(percentile(disks.perVm, 50)), mib(disks.overlays + disks.imageAlloc)],
        [`${M} full copies (cp, sparse)`, mib(disks.copies / M), mib(disks.copies)],
      ],
    );
    console.log(`\nshared / copies: ${((100 * (disks.overlays + disks.imageAlloc)) / disks.copies).toFixed(1)}%`);
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exit(1);
});
