/**
 * MicroVMPool scale-up 0 → N Ready (ADR 0033), cold vs from suspended members, on a real
 * kube-apiserver with the operator and two node agents as local processes and real guests (1 vCPU,
 * 128 MiB, QEMU TCG): a pool with scaleDown: suspend is scaled 0 → N (every member created and
 * cold-booted), then N → 0 (every member suspended: vCPUs paused, memory kept), then 0 → N again
 * (every member resumed), the suspend/resume round repeated. Times are from the scale write
 * (the scale subresource, as `kubectl scale`) to the pool's status saying N Ready, and to each
 * member's own Ready.
 * Usage: node dist/bench/pool.js [N, default 20] [resume rounds, default 3]
 */
import { CustomObjectsApi } from '@kubernetes/client-node';
import { sleep } from '../src/vmm/proc.js';
import { startCluster, until, type TestCluster } from '../test/support/k8s-operator-cluster.js';
import { percentile, printTable } from './stats.js';

const N = Number(process.argv[2] ?? process.env.BENCH_POOL_SIZE ?? 20);
const ROUNDS = Number(process.argv[3] ?? process.env.BENCH_POOL_ROUNDS ?? 3);
const group = 'microvm.service';
const version = 'v1alpha1';
const NS = 'bench';

const ready = (m: any): boolean =>
  !m.metadata.deletionTimestamp && m.metadata.labels?.['microvm.service/pool-suspended'] !== 'true' && m.status?.phase === 'Running' && m.status.conditions?.some((x: any) => x.type === 'GuestReady' && x.status === 'True');

interface Sample {
  total: number;
  first: number;
  p50: number;
  nodes: string;
}

async function scaleTo(c: TestCluster, api: CustomObjectsApi, n: number, suspended: number, timeoutMs: number): Promise<Sample> {
  const scale = (await api.getNamespacedCustomObjectScale({ group, version, plural: 'microvmpools', namespace: NS, name: 'bench' })) as any;
  const t0 = performance.now();
  await api.replaceNamespacedCustomObjectScale({ group, version, plural: 'microvmpools', namespace: NS, name: 'bench', body: { ...scale, spec: { replicas: n } } });
  const readyAt = new Map<string, number>();
  for (;;) {
    const ms = ((await api.listNamespacedCustomObject({ group, version, plural: 'microvms', namespace: NS, labelSelector: 'microvm.service/pool=bench' })) as any).items as any[];
    const now = performance.now() - t0;
    for (const m of ms) if (ready(m) && !readyAt.has(m.metadata.name)) readyAt.set(m.metadata.name, now);
    const p = (await api.getNamespacedCustomObject({ group, version, plural: 'microvmpools', namespace: NS, name: 'bench' })) as any;
    const s = p.status ?? {};
    if (s.readyReplicas === n && s.replicas === n && s.suspendedReplicas === suspended && ms.filter(ready).length === n) {
      const times = [...readyAt.values()];
      const perNode = new Map<string, number>();
      for (const m of ms.filter(ready)) perNode.set(m.status.node, (perNode.get(m.status.node) ?? 0) + 1);
      return { total: now, first: times.length ? Math.min(...times) : now, p50: times.length ? percentile(times, 50) : now, nodes: [...perNode].sort().map(([k, v]) => `${k}:${v}`).join(' ') };
    }
    if (now > timeoutMs) throw new Error(`pool not at ${n} ready / ${suspended} suspended after ${timeoutMs} ms: ${JSON.stringify(s)}`);
    await sleep(100);
  }
}

async function main(): Promise<void> {
  let c: TestCluster | undefined;
  let cold: Sample | undefined;
  const resumed: Sample[] = [];
  const suspendMs: number[] = [];
  try {
    c = await startCluster();
    await c.startOperator('op-bench', { MVM_LOG_LEVEL: 'warn' });
    await Promise.all([c.startAgent('node-a', { env: { MVM_LOG_LEVEL: 'warn' } }), c.startAgent('node-b', { env: { MVM_LOG_LEVEL: 'warn' } })]);
    c.cp.kubectlOk(['create', 'namespace', NS]);
    const api = c.cp.kubeConfig().makeApiClient(CustomObjectsApi);
    await api.createNamespacedCustomObject({
      group,
      version,
      plural: 'microvmpools',
      namespace: NS,
      body: {
        apiVersion: `${group}/${version}`,
        kind: 'MicroVMPool',
        metadata: { name: 'bench' },
        // N guests booting at once under TCG on a small machine: a generous boot timeout.
        spec: { replicas: 0, scaleDown: 'suspend', template: { spec: { vcpu: 1, memory: '128Mi', lifecycle: { bootTimeout: '15m' } } } },
      },
    });
    await until(c, 'pool status', async () => ((await api.getNamespacedCustomObject({ group, version, plural: 'microvmpools', namespace: NS, name: 'bench' })) as any).status?.selector, 30_000);
    process.stderr.write(`cold 0 → ${N}…\n`);
    cold = await scaleTo(c, api, N, 0, 20 * 60_000);
    process.stderr.write(`  ${(cold.total / 1000).toFixed(1)} s (${cold.nodes})\n`);
    for (let r = 0; r < ROUNDS; r++) {
      const t0 = performance.now();
      await scaleTo(c, api, 0, N, 5 * 60_000);
      // Suspended means paused on the node, not just marked.
      await until(c, 'all paused', async () => {
        const ms = ((await api.listNamespacedCustomObject({ group, version, plural: 'microvms', namespace: NS, labelSelector: 'microvm.service/pool=bench' })) as any).items as any[];
        return ms.length === N && ms.every((m) => m.status?.phase === 'Paused');
      }, 5 * 60_000);
      suspendMs.push(performance.now() - t0);
      process.stderr.write(`resume round ${r + 1}/${ROUNDS}: 0 → ${N}…\n`);
      const s = await scaleTo(c, api, N, 0, 5 * 60_000);
      process.stderr.write(`  ${s.total.toFixed(0)} ms\n`);
      resumed.push(s);
    }
  } finally {
    await c?.stop();
  }
  const p = (xs: number[]): number => percentile(xs, 50);
  console.log(`\nMicroVMPool scale-up 0 → ${N} Ready — 2 node agents, real guests (1 vCPU, 128 MiB, QEMU TCG), this machine\n`);
  printTable(
    ['scale-up 0 → N', 'runs', 'all Ready s', 'first Ready s', 'member p50 s', 'spread'],
    [
      [`cold (${N} created, booted)`, 1, cold.total / 1000, cold.first / 1000, cold.p50 / 1000, cold.nodes],
      [`suspended (${N} resumed), p50 of runs`, resumed.length, p(resumed.map((x) => x.total)) / 1000, p(resumed.map((x) => x.first)) / 1000, p(resumed.map((x) => x.p50)) / 1000, resumed[0]?.nodes ?? ''],
    ],
  );
  console.log(`\nscale-down ${N} → 0 with suspend (all Paused on their nodes) p50 ${(p(suspendMs) / 1000).toFixed(1)} s; resume runs: ${resumed.map((x) => (x.total / 1000).toFixed(2)).join(', ')} s`);
  console.log(`cold / resumed (all Ready): ${(cold.total / p(resumed.map((x) => x.total))).toFixed(1)}×`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
