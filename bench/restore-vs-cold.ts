/**
 * Restore vs cold boot through the API: time from the create request to guest
 * readiness, for a cold boot and for a restore from a snapshot of the same guest,
 * alternating in one run. Usage: node dist/bench/restore-vs-cold.js [N]
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { destroyDataDir, startService } from '../test/support/service.js';
import { percentile, printTable } from './stats.js';

const N = Number(process.argv[2] ?? process.env.BENCH_N ?? 5);

async function main(): Promise<void> {
  const svc = await startService({ dataDir: mkdtempSync(join(tmpdir(), 'mvm-bench-restore-')) });
  const post = async (path: string, body: unknown): Promise<{ id: string }> => {
    const r = await fetch(`${svc.url}/api/v1${path}`, { method: 'POST', headers: { authorization: `Bearer ${svc.token}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    if (r.status >= 300) throw new Error(`${path}: ${r.status} ${await r.text()}`);
    return (await r.json()) as { id: string };
  };
  const cold: number[] = [];
  const restore: number[] = [];
  let snapMs = 0;
  try {
    const base = await svc.client.microvms.create({ name: 'bench-base' });
    await svc.client.microvms.waitFor(base.id, { phase: 'Running', ready: true, timeoutMs: 120000 });
    const t = performance.now();
    const snap = await post(`/microvms/${base.id}/snapshots`, { name: 'bench-snap' });
    snapMs = performance.now() - t;
    await svc.client.microvms.delete(base.id);
    await svc.client.microvms.waitDeleted(base.id, { timeoutMs: 60000 });
    for (let i = 0; i < N; i++) {
      let t0 = performance.now();
      const c = await svc.client.microvms.create({ name: `cold-${i}` });
      await svc.client.microvms.waitFor(c.id, { phase: 'Running', ready: true, timeoutMs: 120000, pollMs: 60000 });
      cold.push(performance.now() - t0);
      await svc.client.microvms.delete(c.id);
      await svc.client.microvms.waitDeleted(c.id, { timeoutMs: 60000, intervalMs: 100 });
      t0 = performance.now();
      const r = await post(`/snapshots/${snap.id}/restore`, { name: `restored-${i}` });
      await svc.client.microvms.waitFor(r.id, { phase: 'Running', ready: true, timeoutMs: 120000, pollMs: 60000 });
      restore.push(performance.now() - t0);
      await svc.client.microvms.delete(r.id);
      await svc.client.microvms.waitDeleted(r.id, { timeoutMs: 60000, intervalMs: 100 });
      process.stderr.write(`  run ${i + 1}/${N}: cold ${cold.at(-1)!.toFixed(0)} ms, restore ${restore.at(-1)!.toFixed(0)} ms\n`);
    }
  } finally {
    await svc.stop();
    await destroyDataDir(svc.dataDir);
  }
  console.log(`\nCreate → guest ready through the REST API, ${N} runs each (1 vCPU, 128 MiB, network on); snapshot took ${snapMs.toFixed(0)} ms\n`);
  printTable(
    ['path', 'n', 'p50 ms', 'p95 ms', 'min ms', 'max ms'],
    [
      ['cold boot', cold.length, percentile(cold, 50), percentile(cold, 95), Math.min(...cold), Math.max(...cold)],
      ['restore from snapshot', restore.length, percentile(restore, 50), percentile(restore, 95), Math.min(...restore), Math.max(...restore)],
    ],
  );
  console.log(`\nrestore / cold boot (p50): ${((100 * percentile(restore, 50)) / percentile(cold, 50)).toFixed(1)}%   (target ≤ 15%)`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
