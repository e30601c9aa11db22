/**
 * Cluster mode on a real kube-apiserver: a rolling restart of the node agents (the DaemonSet's
 * pods, one node at a time) and then of the operator (a new replica takes the Lease) keeps every
 * guest running — the same QEMU pid on the same node — and every MicroVM Running throughout, its
 * conditions as they were and its status converged (observedGeneration). Afterwards the restarted
 * processes really drive the adopted guests: a pause and resume through the new agent, a spec change
 * observed by the new operator.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { microVMs, startCluster, until, type NodeAgentProc, type TestCluster } from '../support/k8s-operator-cluster.js';

let c: TestCluster;
before(async () => {
  c = await startCluster();
  await c.startOperator('op-0');
  await Promise.all([c.startAgent('node-a'), c.startAgent('node-b')]);
  c.cp.kubectlOk(['create', 'namespace', 'demo']);
});
after(async () => {
  if (process.env.MVM_TEST_DUMP) process.stderr.write(c?.dump() ?? '');
  await c?.stop();
});

const NAMES = ['roll-a', 'roll-b'];
const get = (name: string): any => microVMs(c).get(name);
const ready = (o: any): boolean => o?.status?.phase === 'Running' && o.status.conditions?.some((x: any) => x.type === 'GuestReady' && x.status === 'True');
const conditions = (o: any): string[] => (o.status.conditions ?? []).map((x: any) => `${x.type}=${x.status}`).sort();
const holder = (): string => c.cp.kubectl(['get', 'lease', '-n', 'microvm-system', 'microvm-operator', '-o', 'jsonpath={.spec.holderIdentity}']).stdout;

test('rolling restart of the node agents and the operator: same QEMU pids, Running throughout, converged', { timeout: 300_000 }, async () => {
  microVMs(c).apply('roll-a', { nodeSelector: { 'kubernetes.io/hostname': 'node-a' } });
  microVMs(c).apply('roll-b', { nodeSelector: { 'kubernetes.io/hostname': 'node-b' } });
  const before = new Map<string, { id: string; node: string; pid: number; conditions: string[] }>();
  for (const n of NAMES) {
    const o = await until(c, `${n} Running and ready`, () => (ready(get(n)) ? get(n) : undefined), 180_000);
    const id = o.metadata.labels['microvm.service/id'];
    const g = c.guests(id);
    assert.equal(g.length, 1, JSON.stringify(g));
    before.set(n, { id, node: o.status.node, pid: g[0]!.pid, conditions: conditions(o) });
  }
  // Watch the phases the whole time.
  const seen = new Set<string>();
  const sampler = setInterval(() => {
    for (const n of NAMES) seen.add(`${n}:${get(n)?.status?.phase}`);
  }, 500);
  const t0 = Date.now();
  try {
    // 1. The agents, one node at a time: stop (the guests run on), start on the same data dir, re-adopt.
    for (const node of ['node-a', 'node-b']) {
      const old = c.agents.find((a) => a.node === node && a.alive())!;
      await old.stop();
      c.agents.splice(c.agents.indexOf(old), 1);
      const mine = [...before.values()].find((v) => v.node === node)!;
      assert.deepEqual(c.guests(mine.id).map((g) => g.pid), [], 'the stopped agent is out of the list');
      const fresh: NodeAgentProc = await c.startAgent(node, { dataDir: old.dataDir });
      await until(c, `${node}'s new agent re-adopted ${mine.id}`, () => fresh.logs().includes('re-adopted running VMM') && fresh.logs().includes(mine.id), 60_000);
      assert.deepEqual(c.guests(mine.id), [{ node, pid: mine.pid }], `${node}: the same QEMU process`);
    }
    // 2. The operator: a new replica takes the Lease once the old one has gone.
    const op0 = c.operators.find((p) => p.name === 'op-0')!;
    await op0.stop();
    await c.startOperator('op-1');
    await until(c, 'op-1 leads', () => holder() === 'op-1', 60_000);
  } finally {
    clearInterval(sampler);
  }
  for (const n of NAMES) seen.add(`${n}:${get(n)?.status?.phase}`);
  assert.deepEqual([...seen].sort(), NAMES.map((n) => `${n}:Running`), 'never anything but Running');
  const restartMs = Date.now() - t0;

  for (const [n, b] of before) {
    const o = get(n);
    assert.equal(o.status.node, b.node);
    assert.deepEqual(conditions(o), b.conditions, `${n}: conditions as before`);
    assert.equal(o.status.observedGeneration, o.metadata.generation);
    assert.deepEqual(c.guests(b.id), [{ node: b.node, pid: b.pid }]);
  }
  // The new operator observes a spec change; the new agent pauses and resumes the adopted guest.
  c.cp.kubectlOk(['patch', 'mvm', 'roll-a', '-n', 'demo', '--type=merge', '-p', '{"spec":{"desiredState":"Paused"}}']);
  await until(c, 'roll-a Paused', () => get('roll-a')?.status?.phase === 'Paused', 60_000);
  c.cp.kubectlOk(['patch', 'mvm', 'roll-a', '-n', 'demo', '--type=merge', '-p', '{"spec":{"desiredState":"Running"}}']);
  const back = await until(c, 'roll-a Running again, converged', () => {
    const o = get('roll-a');
    return o?.status?.phase === 'Running' && o.status.observedGeneration === o.metadata.generation ? o : undefined;
  }, 60_000);
  assert.deepEqual(c.guests(back.metadata.labels['microvm.service/id']), [{ node: 'node-a', pid: before.get('roll-a')!.pid }]);
  process.stderr.write(`# rolling restart of 2 agents + the operator: ${restartMs} ms, 2 guests kept (pids ${[...before.values()].map((b) => b.pid).join(', ')})\n`);
});
