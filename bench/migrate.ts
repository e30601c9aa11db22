/**
 * Moving a running 128 MiB guest between two nodes in cluster mode (docs/adr/0034): migration with
 * memory (annotation microvm.service/migrate → operator plan → pause, snapshot, transfer, restore,
 * resume on the other node) against today's cold move (a drain: stop there, cold boot elsewhere →
 * guest ready), interleaved, on the real control plane with the operator and two node agents as
 * local processes (everything on this machine: the "network" between the nodes is loopback).
 *
 *   migration downtime = pause on the source → VMM resumed on the target (the source's Migrated condition)
 *   migration total    = request written → Migrated=True seen
 *   cold move          = `kubectl cordon` → guest ready on the other node (the guest stops within
 *                        the first second, so its downtime is about the same)
 *
 * Usage: node dist/bench/migrate.js [samples per mode, default 5]
 */
import { CustomObjectsApi } from '@kubernetes/client-node';
import { sleep } from '../src/vmm/proc.js';
import { startCluster, until, type TestCluster } from '../test/support/k8s-operator-cluster.js';
import { percentile, printTable } from './stats.js';

const N = Number(process.argv[2] ?? process.env.BENCH_SAMPLES ?? 5);
const group = 'microvm.service';
const version = 'v1alpha1';
const plural = 'microvms';
const NS = 'bench';
const NAME = 'mover';

const ready = (o: any): boolean => o?.status?.phase === 'Running' && o.status.conditions?.some((x: any) => x.type === 'GuestReady' && x.status === 'True');

async function main(): Promise<void> {
  let c: TestCluster | undefined;
  const mig: Array<{ downtime: number; total: number; ready: number }> = [];
  const cold: number[] = [];
  try {
    c = await startCluster();
    const cl = c;
    // Drains move cold here (the baseline); migrations are asked for with the annotation.
    await cl.startOperator('op-bench', { MVM_LOG_LEVEL: 'warn', MVM_DRAIN_MODE: 'cold' });
    await cl.startAgent('node-a', { env: { MVM_LOG_LEVEL: 'warn' } });
    await cl.startAgent('node-b', { env: { MVM_LOG_LEVEL: 'warn' } });
    cl.cp.kubectlOk(['create', 'namespace', NS]);
    const api = cl.cp.kubeConfig().makeApiClient(CustomObjectsApi);
    const get = async (): Promise<any> => api.getNamespacedCustomObject({ group, version, plural, namespace: NS, name: NAME });
    await api.createNamespacedCustomObject({ group, version, plural, namespace: NS, body: { apiVersion: `${group}/${version}`, kind: 'MicroVM', metadata: { name: NAME }, spec: { vcpu: 1, memory: '128Mi' } } });
    await until(cl, 'the guest ready', async () => ready(await get()), 180_000);

    const migrateOnce = async (): Promise<{ downtime: number; total: number; ready: number }> => {
      const o = await get();
      const from = o.status.node as string;
      const before = (o.status.conditions ?? []).find((x: any) => x.type === 'Migrated')?.message;
      const t0 = performance.now();
      await api.replaceNamespacedCustomObject({ group, version, plural, namespace: NS, name: NAME, body: { ...o, metadata: { ...o.metadata, annotations: { ...(o.metadata.annotations ?? {}), 'microvm.service/migrate': '{}' } } } });
      let total = 0;
      let cond: any;
      for (;;) {
        const x = await get();
        cond = (x.status?.conditions ?? []).find((y: any) => y.type === 'Migrated');
        if (cond && cond.message !== before) {
          total ||= performance.now() - t0;
          if (cond.status !== 'True') throw new Error(`migration failed: ${cond.message}\n${cl.dump()}`);
          if (x.status.node !== from && ready(x)) break;
        }
        if (performance.now() - t0 > 180_000) throw new Error(`no migration in 180 s\n${cl.dump()}`);
        await sleep(20);
      }
      const rdy = performance.now() - t0;
      // Let the source remove its leftovers and the operator drop the plan before the next move.
      await until(cl, 'the plan gone', async () => !(await get()).metadata.annotations?.['microvm.service/migration'], 60_000);
      return { downtime: Number(/downtime (\d+) ms/.exec(cond.message)?.[1] ?? NaN), total, ready: rdy };
    };

    const coldOnce = async (): Promise<number> => {
      const from = (await get()).status.node as string;
      const t0 = performance.now();
      cl.cp.kubectlOk(['cordon', from]);
      try {
        for (;;) {
          const x = await get();
          if (x.status?.node && x.status.node !== from && ready(x)) break;
          if (performance.now() - t0 > 240_000) throw new Error(`no cold move in 240 s\n${cl.dump()}`);
          await sleep(50);
        }
        return performance.now() - t0;
      } finally {
        cl.cp.kubectlOk(['uncordon', from]);
      }
    };

    // One warm-up of each (first restore/boot paths on each node), not counted.
    for (let i = -1; i < N; i++) {
      const m = await migrateOnce();
      const k = await coldOnce();
      if (i >= 0) {
        mig.push(m);
        cold.push(k);
      }
      process.stderr.write(`  sample ${i + 1}/${N}: migration downtime ${m.downtime} ms, total ${m.total.toFixed(0)} ms (ready on the target after ${m.ready.toFixed(0)} ms); cold move ${k.toFixed(0)} ms\n`);
    }
  } finally {
    await c?.stop();
  }
  const p = (xs: number[]): number => percentile(xs, 50);
  const row = (what: string, xs: number[]): Array<string | number> => [what, xs.length, p(xs), Math.min(...xs), Math.max(...xs)];
  console.log(`\nMoving a running guest between two nodes — ${N} samples each (interleaved), 1 vCPU, 128 MiB, QEMU TCG, real control plane, two node agents\n`);
  printTable(
    ['move', 'n', 'p50 ms', 'min ms', 'max ms'],
    [
      row('migration: downtime (pause → resumed on the target)', mig.map((x) => x.downtime)),
      row('migration: total (request → Migrated)', mig.map((x) => x.total)),
      row('cold move: cordon → guest ready elsewhere (= downtime)', cold),
    ],
  );
  console.log(`\ncold move / migration downtime (p50): ${(p(cold) / p(mig.map((x) => x.downtime))).toFixed(1)}×; the migration keeps memory, processes and root-disk writes, the cold move loses them`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
