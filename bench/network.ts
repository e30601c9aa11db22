/**
 * Network manager costs, measured in a private namespace world (nothing touches
 * the host network): per-VM setup (netns -> CNI ADD -> tap + tc redirect ->
 * rules applied) and teardown, p50/p95 over N VMs, and the nftables update time
 * with 1,000 security-group rules on a live setup.
 *
 *   node dist/bench/network.js [vms=20]
 */
import { CniNetworkManager } from '../src/network/manager.js';
import type { NetworkPolicy, SecurityRule } from '../src/core/ports/network.js';
import { NetnsWorld, canRunNetns } from '../test/support/netns-world.js';

const N = Number(process.argv[2] ?? 20);
const RULES = 1000;

const pct = (xs: number[], p: number): number => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
};
const f = (ms: number): string => ms.toFixed(1).padStart(8);
const rows: Array<[string, number[]]> = [];
const row = (name: string, xs: number[]): void => void rows.push([name, xs]);

async function main(): Promise<void> {
  const env = canRunNetns();
  if (!env.ok) {
    console.error(`bench/network: skipped (${env.why})`);
    return;
  }
  const w = new NetnsWorld('b');
  try {
    await w.start();
    const steps = new Map<string, number[]>();
    const m = new CniNetworkManager({
      dataDir: w.dataDir,
      networks: [{ ...w.networkConfig(), subnet: '10.123.0.0/20' }],
      hostNetns: w.hostNs,
      netnsPrefix: w.netnsPrefix,
      onStep: (_vm, step, ms) => {
        const k = step.startsWith('cni-add') ? 'cni-add' : step;
        steps.set(k, [...(steps.get(k) ?? []), ms]);
      },
    });
    await m.init();
    // Warm-up (bridge creation, page cache) is not measured.
    await m.setup({ id: 'warm', tenant: 'w', nics: [{ name: 'eth0' }] });
    await m.teardown('warm');
    steps.clear();

    const setup: number[] = [];
    for (let i = 0; i < N; i++) {
      const t = performance.now();
      await m.setup({ id: `vm-${i}`, tenant: `t${i % 4}`, nics: [{ name: 'eth0' }] });
      setup.push(performance.now() - t);
    }
    row(`setup, sequential (${N} VMs)`, setup);
    for (const k of ['netns', 'cni-add', 'tap', 'tc-redirect', 'rules']) row(`  step ${k}`, steps.get(k) ?? []);

    // 1,000 rules: 20 groups x 50 rules, every VM in one group; then change one group live.
    const groups = (variant: number): NetworkPolicy => ({
      securityGroups: Array.from({ length: 20 }, (_, g) => ({
        id: `g${g}`,
        tenant: `t${g % 4}`,
        rules: Array.from({ length: RULES / 20 }, (_, r): SecurityRule => ({
          direction: r % 2 ? 'egress' : 'ingress',
          protocol: r % 3 ? 'tcp' : 'udp',
          ports: `${1000 + r}-${1000 + r + variant}`,
          cidr: `10.${(g * 50 + r) % 256}.0.0/16`,
        })),
      })),
    });
    await m.applyPolicy(groups(0));
    for (let i = 0; i < N; i++) await m.update(`vm-${i}`, { securityGroups: [`g${(i % 4) + 4 * (i % 5)}`] });
    const compile: number[] = [];
    for (let i = 0; i < 10; i++) {
      const t = performance.now();
      m.compile();
      compile.push(performance.now() - t);
    }
    const text = m.compile();
    const ruleLines = text.split('\n').filter((l) => /^\t\t(ip |ct |meta |tcp |udp |ether |arp |iifname |oifname |fib |counter|return)/.test(l)).length;
    const apply: number[] = [];
    for (let i = 1; i <= 10; i++) {
      const t = performance.now();
      await m.applyPolicy(groups(i));
      apply.push(performance.now() - t);
    }
    row(`compile ruleset (${RULES} group rules defined)`, compile);
    row(`applyPolicy live (${ruleLines} rules in ruleset)`, apply);

    const teardown: number[] = [];
    for (let i = 0; i < N; i++) {
      const t = performance.now();
      await m.teardown(`vm-${i}`);
      teardown.push(performance.now() - t);
    }
    row(`teardown (${N} VMs)`, teardown);

    const t0 = performance.now();
    await Promise.all(Array.from({ length: N }, (_, i) => m.setup({ id: `p-${i}`, tenant: 't', nics: [{ name: 'eth0' }] })));
    const wall = performance.now() - t0;
    for (let i = 0; i < N; i++) await m.teardown(`p-${i}`);

    console.log(`\nnetwork manager benchmark (${N} VMs, private namespaces, ${new Date().toISOString()})\n`);
    console.log(`${'operation'.padEnd(46)}${'p50 ms'.padStart(8)}${'p95 ms'.padStart(8)}${'max ms'.padStart(8)}`);
    for (const [name, xs] of rows) console.log(`${name.padEnd(46)}${f(pct(xs, 50))}${f(pct(xs, 95))}${f(Math.max(...xs))}`);
    console.log(`${`setup, ${N} VMs concurrently (wall)`.padEnd(46)}${f(wall)}`);
  } finally {
    await w.cleanup();
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
