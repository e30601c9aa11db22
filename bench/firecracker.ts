/**
 * The real Firecracker through the service, beside QEMU through the same service in the same run
 * (issue 18): create → phase Running (the VMM is up: InstanceStart accepted / QEMU's QMP answers),
 * a snapshot of a 128 MiB guest, and a restore (create from that snapshot) → Running
 * (`/snapshot/load` for Firecracker, `-incoming` + `cont` for QEMU). N rounds, alternating the two
 * services so both see the same machine load; p50 and p95 per row.
 *
 * Firecracker's guest never boots on this nested-PVM host (it spins), so its VMs are paused as soon
 * as they run; QEMU's guest boots to its readiness marker before it is snapshotted.
 * Usage: node dist/bench/firecracker.js [N]   (needs ../shared/firecracker or MVM_TEST_FIRECRACKER_DIR)
 */
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from '../src/vmm/proc.js';
import { realFirecracker } from '../test/support/firecracker-harness.js';
import { apiCall, destroyDataDir, startService, type TestService } from '../test/support/service.js';
import { percentile, printTable } from './stats.js';

const N = Number(process.argv[2] ?? process.env.BENCH_N ?? 5);

type Api = (method: string, path: string, body?: unknown) => Promise<{ status: number; json: any }>;

async function until(api: Api, id: string, ok: (vm: any) => boolean, timeoutMs: number): Promise<any> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await api('GET', `/microvms/${id}`);
    if (r.status === 200 && ok(r.json)) return r.json;
    if (r.json?.status?.phase === 'Failed') throw new Error(`${id} failed: ${r.json.status.message}`);
    if (Date.now() > end) throw new Error(`timed out: ${JSON.stringify(r.json?.status)}`);
    await sleep(10);
  }
}

interface Round {
  createMs: number;
  snapshotMs: number;
  restoreMs: number;
}

async function round(svc: TestService, kind: 'qemu' | 'firecracker', i: number): Promise<Round> {
  const api: Api = (m, p, b) => apiCall(svc, m, p, b);
  const t0 = performance.now();
  const vm = (await api('POST', '/microvms', { name: `b-${kind}-${i}` })).json;
  await until(api, vm.id, (v) => v.status.phase === 'Running', 120_000);
  const createMs = performance.now() - t0;
  if (kind === 'firecracker') {
    await api('POST', `/microvms/${vm.id}/pause`);
    await until(api, vm.id, (v) => v.status.phase === 'Paused', 30_000);
  } else {
    await until(api, vm.id, (v) => v.status.conditions.some((c: any) => c.type === 'GuestReady' && c.status === 'True'), 120_000);
  }
  const t1 = performance.now();
  const snap = await api('POST', `/microvms/${vm.id}/snapshots`, { name: `s-${kind}-${i}` });
  if (snap.status !== 201) throw new Error(`snapshot: ${JSON.stringify(snap.json)}`);
  const snapshotMs = performance.now() - t1;
  const t2 = performance.now();
  const clone = (await api('POST', '/microvms', { name: `c-${kind}-${i}`, snapshot: `s-${kind}-${i}` })).json;
  await until(api, clone.id, (v) => v.status.phase === 'Running', 60_000);
  const restoreMs = performance.now() - t2;
  if (kind === 'firecracker') await api('POST', `/microvms/${clone.id}/pause`);
  for (const id of [clone.id, vm.id]) await api('DELETE', `/microvms/${id}`);
  await sleep(500);
  await api('DELETE', `/snapshots/${snap.json.id}`);
  return { createMs, snapshotMs, restoreMs };
}

async function main(): Promise<void> {
  const fc = realFirecracker();
  if (!fc || !existsSync('/dev/kvm')) {
    console.error('firecracker bench: needs the real firecracker (../shared/firecracker or MVM_TEST_FIRECRACKER_DIR) and /dev/kvm');
    process.exit(2);
  }
  const dirs = { qemu: mkdtempSync(join(tmpdir(), 'mvm-bench-q-')), firecracker: mkdtempSync(join(tmpdir(), 'mvm-bench-f-')) };
  const common = { MVM_NETWORK: 'none', MVM_RESYNC_SECONDS: '10' };
  const q = await startService({ dataDir: dirs.qemu, env: { ...common, MVM_CGROUP_PARENT: 'mvm-bench-q' } });
  const f = await startService({
    dataDir: dirs.firecracker,
    env: { ...common, MVM_DRIVER: 'firecracker', MVM_FIRECRACKER_BIN: fc, MVM_ACCEL: 'kvm', MVM_CGROUP_PARENT: 'mvm-bench-f' },
  });
  const rounds: Record<'qemu' | 'firecracker', Round[]> = { qemu: [], firecracker: [] };
  try {
    for (let i = 0; i < N; i++) {
      rounds.firecracker.push(await round(f, 'firecracker', i));
      rounds.qemu.push(await round(q, 'qemu', i));
      process.stderr.write(`round ${i + 1}/${N}\n`);
    }
  } finally {
    await f.stop();
    await q.stop();
    await destroyDataDir(dirs.qemu);
    await destroyDataDir(dirs.firecracker);
  }
  const row = (label: string, key: keyof Round): Array<string | number> => {
    const a = rounds.firecracker.map((r) => r[key]);
    const b = rounds.qemu.map((r) => r[key]);
    return [label, percentile(a, 50), percentile(a, 95), percentile(b, 50), percentile(b, 95), `${(percentile(a, 50) / percentile(b, 50)).toFixed(2)}x`];
  };
  console.log(`\nReal Firecracker vs QEMU (TCG) through the same service, ${N} rounds, ms\n`);
  printTable(
    ['step', 'firecracker p50', 'p95', 'qemu p50', 'p95', 'fc/qemu'],
    [row('create → Running (VMM up)', 'createMs'), row('snapshot, 128 MiB guest', 'snapshotMs'), row('restore → Running', 'restoreMs')],
  );
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
