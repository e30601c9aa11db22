/**
 * Defragmentation on request (docs/adr/0017), on a real kube-apiserver with two node agents: each
 * node is capped (annotation microvm.service/allocatable) so that one 128Mi VM on each leaves no
 * 256Mi slot anywhere; the ConfigMap microvm-system/microvm-defrag asks for one, first as a dry
 * run (a plan, nothing moves), then for real (the planned VM is stopped on its node and started on
 * the other; the waiting 256Mi VM then schedules on the freed node).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { microVMs, startCluster, until, type TestCluster } from '../support/k8s-operator-cluster.js';

let c: TestCluster;
before(async () => {
  c = await startCluster();
  await Promise.all([c.startAgent('node-a'), c.startAgent('node-b')]);
  c.cp.kubectlOk(['create', 'namespace', 'demo']);
  // 400 MiB per node: one 128Mi guest (+64 MiB VMM overhead) leaves 208 MiB, less than a 256Mi slot (320).
  for (const n of ['node-a', 'node-b']) c.cp.kubectlOk(['annotate', 'node', n, 'microvm.service/allocatable={"memoryMiB":400}']);
  await c.startOperator('op');
});
after(async () => {
  if (process.env.MVM_TEST_DUMP) process.stderr.write(c?.dump() ?? '');
  await c?.stop();
});

const apply = (name: string, spec: Record<string, unknown> = {}): void => microVMs(c).apply(name, spec);
const get = (name: string): any => microVMs(c).get(name);
const running = (name: string): any => microVMs(c).running(name);
const defrag = (data: Record<string, string>): void => {
  c.cp.kubectlOk(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'microvm-defrag', namespace: 'microvm-system' }, data }));
};
const defragState = (): Record<string, string> => c.kubectlJson(['get', 'configmap', 'microvm-defrag', '-n', 'microvm-system']).metadata.annotations ?? {};
/** The operator's answer to the request with these data (an earlier request's answer does not count). */
const answered = (data: Record<string, string>, ...phases: string[]) => (): Record<string, string> | undefined => {
  const a = defragState();
  const req = JSON.parse(a['microvm.service/defrag-request'] ?? '{}');
  if (req.memory !== data.memory || req.dryRun !== (data.dryRun === 'true')) return undefined;
  return phases.includes(a['microvm.service/defrag-phase']) ? a : undefined;
};
const requests = {
  bad: { vcpu: '1', memory: 'lots', dryRun: 'true' },
  dry: { vcpu: '1', memory: '256Mi', dryRun: 'true' },
  real: { vcpu: '1', memory: '256Mi', dryRun: 'false' },
};
const events = (name: string): string[] => microVMs(c).events(name);

test('defrag on request: dry run plans, then the planned VM moves and a 256Mi slot is free', { timeout: 600_000 }, async () => {
  apply('small-1');
  apply('small-2');
  const [s1, s2] = await until(c, 'small-1 and small-2 running', () => {
    const x = running('small-1');
    const y = running('small-2');
    return x && y ? [x, y] : undefined;
  }, 240_000);
  assert.notEqual(s1.status.node, s2.status.node, 'spread put one on each node');
  const where = new Map([['small-1', s1.status.node as string], ['small-2', s2.status.node as string]]);

  // A 256Mi VM fits nowhere: no slot of that size.
  apply('big', { memory: '256Mi' });
  const u = await until(c, 'big unschedulable', () => get('big')?.status?.conditions?.find((x: any) => x.type === 'Scheduled' && x.status === 'False'), 60_000);
  assert.match(u.message, /insufficient memory/);

  // A malformed request fails with a message.
  defrag(requests.bad);
  const bad = await until(c, 'invalid request refused', answered(requests.bad, 'Failed'), 60_000);
  assert.match(bad['microvm.service/defrag-message'], /invalid request/);

  // Dry run: a plan, and nothing moves.
  defrag(requests.dry);
  const planned = await until(c, 'dry-run plan', answered(requests.dry, 'Planned', 'Failed'), 60_000);
  assert.equal(planned['microvm.service/defrag-phase'], 'Planned', planned['microvm.service/defrag-message']);
  const plan = JSON.parse(planned['microvm.service/defrag-plan']);
  assert.equal(plan.moves.length, 1, planned['microvm.service/defrag-plan']);
  const [m] = plan.moves;
  assert.equal(m.from, plan.node);
  assert.equal(m.from, where.get(m.name));
  assert.notEqual(m.to, m.from);
  await new Promise((r) => setTimeout(r, 3000));
  for (const [n, node] of where) assert.equal(running(n)?.status.node, node, `${n} did not move in a dry run`);
  assert.ok(!get('big').status.node);

  // For real: the same plan is carried out.
  defrag(requests.real);
  const done = await until(c, 'defrag succeeded', answered(requests.real, 'Succeeded', 'Failed'), 300_000);
  assert.equal(done['microvm.service/defrag-phase'], 'Succeeded', done['microvm.service/defrag-message']);
  assert.equal(done['microvm.service/defrag-moves-done'], '1');
  assert.deepEqual(JSON.parse(done['microvm.service/defrag-plan']).moves.map((x: any) => [x.name, x.from, x.to]), [[m.name, m.from, m.to]]);
  const moved = await until(c, `${m.name} running on ${m.to}`, () => (running(m.name)?.status.node === m.to ? running(m.name) : undefined), 180_000);
  assert.equal(moved.metadata.labels['microvm.service/id'], m.vm, 'the same VM moved');
  assert.equal(moved.metadata.annotations?.['microvm.service/defrag-target'], undefined, 'the move mark is cleared');
  const agentOf = (node: string) => c.agents.find((a) => a.node === node)!;
  await until(c, 'one guest, on the target', () => {
    const g = c.guests(m.vm);
    return g.length === 1 && g[0]!.node === m.to;
  }, 60_000);
  await until(c, 'old node cleaned up', () => !existsSync(join(agentOf(m.from).dataDir, 'vms', m.vm)), 60_000);
  const ev = events(m.name);
  for (const r of ['Evicting', 'Evicted']) assert.ok(ev.includes(r), `missing ${r} in ${ev.join(',')}`);
  // The other small VM stayed.
  const other = [...where.keys()].find((n) => n !== m.name)!;
  assert.equal(running(other)?.status.node, where.get(other));

  // The slot is free: the waiting 256Mi VM is placed on the freed node.
  const big = await until(c, 'big placed', () => (get('big')?.status?.node ? get('big') : undefined), 120_000);
  assert.equal(big.status.node, plan.node);

  c.cp.kubectlOk(['delete', 'configmap', 'microvm-defrag', '-n', 'microvm-system']);
  for (const n of ['small-1', 'small-2', 'big']) c.cp.kubectl(['delete', 'mvm', n, '-n', 'demo', '--wait=false', '--ignore-not-found']);
  await until(c, 'all deleted', () => ['small-1', 'small-2', 'big'].every((n) => !get(n)), 180_000);
});
