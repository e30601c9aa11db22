/**
 * Create → Running (guest ready) of a real guest in cluster mode — `MicroVM` created on a real
 * kube-apiserver, placed by the operator, booted by a node agent, status written back — against the
 * standalone service's REST create → Running, side by side in one run (interleaved samples, same
 * guest: 1 vCPU, 128 MiB, CNI network in both). Everything runs on this machine as local processes
 * (control plane, operator, one node agent, the standalone service).
 * Usage: node dist/bench/k8s-latency.js [samples per mode, default 3]
 */
import { CustomObjectsApi } from '@kubernetes/client-node';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from '../src/vmm/proc.js';
import { startCluster, until, type TestCluster } from '../test/support/k8s-operator-cluster.js';
import { destroyDataDir, startService, type TestService } from '../test/support/service.js';
import { percentile, printTable } from './stats.js';

const N = Number(process.argv[2] ?? process.env.BENCH_SAMPLES ?? 3);
const group = 'microvm.service';
const version = 'v1alpha1';
const plural = 'microvms';

const readyObj = (o: any): boolean => o?.status?.phase === 'Running' && o.status.conditions?.some((x: any) => x.type === 'GuestReady' && x.status === 'True');

async function k8sSample(c: TestCluster, api: CustomObjectsApi, name: string): Promise<{ total: number; bound: number; guestReady: number }> {
  const t0 = performance.now();
  await api.createNamespacedCustomObject({ group, version, plural, namespace: 'bench', body: { apiVersion: `${group}/${version}`, kind: 'MicroVM', metadata: { name }, spec: { vcpu: 1, memory: '128Mi' } } });
  let bound = 0;
  let o: any;
  for (;;) {
    o = await api.getNamespacedCustomObject({ group, version, plural, namespace: 'bench', name });
    if (!bound && o.status?.node) bound = performance.now() - t0;
    if (readyObj(o)) break;
    if (performance.now() - t0 > 180_000) throw new Error(`${name} not ready in 180 s\n${c.dump()}`);
    await sleep(50);
  }
  const total = performance.now() - t0;
  await api.deleteNamespacedCustomObject({ group, version, plural, namespace: 'bench', name });
  await until(c, `${name} deleted`, async () => {
    try {
      await api.getNamespacedCustomObject({ group, version, plural, namespace: 'bench', name });
      return false;
    } catch {
      return true;
    }
  });
  return { total, bound, guestReady: o.status.bootMs?.guestReady ?? NaN };
}

async function standaloneSample(svc: TestService, name: string): Promise<{ total: number; guestReady: number }> {
  const t0 = performance.now();
  const vm = await svc.client.microvms.create({ name, vcpu: 1, memory: '128Mi' });
  const up = await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 180_000, pollMs: 60_000 });
  const total = performance.now() - t0;
  await svc.client.microvms.delete(vm.id);
  await svc.client.microvms.waitDeleted(vm.id, { timeoutMs: 60_000, intervalMs: 100 });
  return { total, guestReady: (up.status.bootMs as { guestReady?: number } | undefined)?.guestReady ?? NaN };
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mvm-bench-k8s-'));
  let svc: TestService | undefined;
  let c: TestCluster | undefined;
  const k8s: Array<{ total: number; bound: number; guestReady: number }> = [];
  const sa: Array<{ total: number; guestReady: number }> = [];
  try {
    svc = await startService({ dataDir });
    c = await startCluster();
    await c.startOperator('op-bench', { MVM_LOG_LEVEL: 'warn' });
    await c.startAgent('node-bench');
    c.cp.kubectlOk(['create', 'namespace', 'bench']);
    const api = c.cp.kubeConfig().makeApiClient(CustomObjectsApi);
    // One warm-up of each (image cache, first namespace/informer paths), not counted.
    for (let i = -1; i < N; i++) {
      const a = await standaloneSample(svc, `sa-${i + 1}`);
      const b = await k8sSample(c, api, `k8s-${i + 1}`);
      if (i >= 0) {
        sa.push(a);
        k8s.push(b);
      }
      process.stderr.write(`  sample ${i + 1}/${N}: standalone ${a.total.toFixed(0)} ms, cluster ${b.total.toFixed(0)} ms (bound after ${b.bound.toFixed(0)} ms)\n`);
    }
  } finally {
    await c?.stop();
    await svc?.stop();
    await destroyDataDir(dataDir);
  }
  const p = (xs: number[]): number => percentile(xs, 50);
  console.log(`\nCreate → Running with guest ready — ${N} samples each (interleaved), 1 vCPU, 128 MiB, QEMU TCG, CNI network\n`);
  printTable(
    ['path', 'n', 'p50 ms', 'min ms', 'max ms', 'guest boot p50 ms', 'overhead p50 ms'],
    [
      ['standalone: REST create → Running', sa.length, p(sa.map((x) => x.total)), Math.min(...sa.map((x) => x.total)), Math.max(...sa.map((x) => x.total)), p(sa.map((x) => x.guestReady)), p(sa.map((x) => x.total - x.guestReady))],
      ['cluster: MicroVM create → Running', k8s.length, p(k8s.map((x) => x.total)), Math.min(...k8s.map((x) => x.total)), Math.max(...k8s.map((x) => x.total)), p(k8s.map((x) => x.guestReady)), p(k8s.map((x) => x.total - x.guestReady))],
    ],
  );
  console.log('\n(guest boot = VMM start → readiness marker, as the node measured it; overhead = create → Running minus that: API, placement, watch/status round trips, disk and network set-up)');
  const d = p(k8s.map((x) => x.total)) - p(sa.map((x) => x.total));
  console.log(`\ncluster − standalone (p50): ${d.toFixed(0)} ms; create → bound (operator placement) p50 ${p(k8s.map((x) => x.bound)).toFixed(0)} ms`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
