/**
 * Suspend to disk (ADR 0035) through the REST API, baselines in the same run:
 * - resume from suspend → guest ready vs cold create → guest ready (p50 over N, 128 MiB guests);
 * - suspend of a 1 GiB guest with ~600 MB of its memory touched (non-zero pages): seconds per GiB
 *   (target ≤ 1 s/GiB), next to a snapshot of the same guest (pause + migrate + disk copy, ADR 9).
 * Usage: node dist/bench/suspend.js [N]
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { destroyDataDir, startService } from '../test/support/service.js';
import { percentile, printTable } from './stats.js';

const N = Number(process.argv[2] ?? process.env.BENCH_N ?? 5);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function main(): Promise<void> {
  const svc = await startService({ dataDir: mkdtempSync(join(tmpdir(), 'mvm-bench-suspend-')) });
  const call = async (method: string, path: string, body?: unknown): Promise<any> => {
    const r = await fetch(`${svc.url}/api/v1${path}`, { method, headers: { authorization: `Bearer ${svc.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
    return r.status === 204 ? undefined : r.json();
  };
  const waitPhase = async (id: string, phase: string, timeoutMs = 180_000): Promise<any> => {
    const until = Date.now() + timeoutMs;
    for (;;) {
      const vm = await call('GET', `/microvms/${id}`);
      if (vm.status.phase === phase) return vm;
      if (vm.status.phase === 'Failed' || Date.now() > until) throw new Error(`${id}: ${vm.status.phase} ${vm.status.message ?? ''}`);
      await sleep(25);
    }
  };
  const cold: number[] = [];
  const resume: number[] = [];
  const suspend128: number[] = [];
  const suspendBig: Array<{ ms: number; bytes: number; wallMs: number }> = [];
  let snapshotBig: { ms: number; bytes: number } | undefined;
  try {
    for (let i = 0; i < N; i++) {
      const t0 = performance.now();
      const c = await svc.client.microvms.create({ name: `cold-${i}` });
      await svc.client.microvms.waitFor(c.id, { phase: 'Running', ready: true, timeoutMs: 180_000, pollMs: 60_000 });
      cold.push(performance.now() - t0);
      await svc.client.microvms.delete(c.id);
      await svc.client.microvms.waitDeleted(c.id, { timeoutMs: 60_000, intervalMs: 100 });
      process.stderr.write(`  cold ${i + 1}/${N}: ${cold.at(-1)!.toFixed(0)} ms\n`);
    }
    const vm = await svc.client.microvms.create({ name: 'sleeper' });
    await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 180_000 });
    for (let i = 0; i < N; i++) {
      await call('POST', `/microvms/${vm.id}/suspend`);
      const s = await waitPhase(vm.id, 'Suspended');
      suspend128.push(s.status.suspend.durationMs);
      const t0 = performance.now();
      await call('POST', `/microvms/${vm.id}/resume`);
      await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 120_000, pollMs: 60_000 });
      resume.push(performance.now() - t0);
      process.stderr.write(`  suspend/resume ${i + 1}/${N}: suspend ${suspend128.at(-1)} ms, resume → ready ${resume.at(-1)!.toFixed(0)} ms\n`);
    }
    await svc.client.microvms.delete(vm.id);

    const big = await svc.client.microvms.create({ name: 'big', memory: '1Gi' });
    await svc.client.microvms.waitFor(big.id, { phase: 'Running', ready: true, timeoutMs: 180_000 });
    const fill = await call('POST', `/microvms/${big.id}/exec`, { cmd: ['sh', '-c', 'mkdir -p /mnt/fill && mount -t tmpfs -o size=700m tmpfs /mnt/fill && yes mvm-suspend-fill | head -c 600000000 > /mnt/fill/f && echo ok'], timeout: '5m' });
    if (fill.stdout.trim() !== 'ok') throw new Error(`filling the guest's memory failed: ${fill.stderr}`);
    const snap = await call('POST', `/microvms/${big.id}/snapshots`, { name: 'big-snap' });
    snapshotBig = { ms: snap.durationMs, bytes: snap.sizeBytes };
    await call('DELETE', `/snapshots/${snap.id}`);
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now();
      await call('POST', `/microvms/${big.id}/suspend`);
      const s = await waitPhase(big.id, 'Suspended');
      suspendBig.push({ ms: s.status.suspend.durationMs, bytes: s.status.suspend.sizeBytes, wallMs: performance.now() - t0 });
      process.stderr.write(`  1 GiB suspend ${i + 1}/3: ${s.status.suspend.durationMs} ms, ${(s.status.suspend.sizeBytes / 2 ** 20).toFixed(0)} MiB\n`);
      await call('POST', `/microvms/${big.id}/resume`);
      await svc.client.microvms.waitFor(big.id, { phase: 'Running', ready: true, timeoutMs: 120_000 });
    }
    await svc.client.microvms.delete(big.id);
  } finally {
    await svc.stop();
    await destroyDataDir(svc.dataDir);
  }
  console.log(`\nThrough the REST API, 1 vCPU, TCG; ${N} runs each (128 MiB guests)\n`);
  printTable(
    ['path → guest ready', 'n', 'p50 ms', 'min ms', 'max ms', 'vs cold (p50)'],
    [
      ['cold create (baseline)', cold.length, percentile(cold, 50), Math.min(...cold), Math.max(...cold), '100%'],
      ['resume from suspend', resume.length, percentile(resume, 50), Math.min(...resume), Math.max(...resume), `${((100 * percentile(resume, 50)) / percentile(cold, 50)).toFixed(1)}%`],
    ],
  );
  const p50 = (xs: number[]): number => percentile(xs, 50);
  const bigMs = p50(suspendBig.map((s) => s.ms));
  const bigBytes = p50(suspendBig.map((s) => s.bytes));
  console.log('\nSuspend (memory + devices to disk, VMM gone) vs a snapshot of the same guest (ADR 9: pause + migrate + disk copy)\n');
  printTable(
    ['operation', 'guest', 'n', 'p50 ms', 'written MiB', 's per GiB of guest', 's per GiB written'],
    [
      ['suspend', '128 MiB', suspend128.length, p50(suspend128), '', (p50(suspend128) / 1000) * 8, ''],
      ['suspend', '1 GiB, 600 MB touched', suspendBig.length, bigMs, bigBytes / 2 ** 20, bigMs / 1000, bigMs / 1000 / (bigBytes / 2 ** 30)],
      ['snapshot (baseline)', '1 GiB, 600 MB touched', 1, snapshotBig?.ms ?? NaN, (snapshotBig?.bytes ?? NaN) / 2 ** 20, (snapshotBig?.ms ?? NaN) / 1000, ''],
    ],
  );
  console.log(`\nsuspend of a 1 GiB guest: ${(bigMs / 1000).toFixed(2)} s/GiB (target ≤ 1 s/GiB); request → Suspended p50 ${p50(suspendBig.map((s) => s.wallMs)).toFixed(0)} ms`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
