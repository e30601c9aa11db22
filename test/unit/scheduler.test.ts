/** The scheduler's filters, scores and reasons (src/scheduler, ADR 0016). Pure: no agents, no store. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateSpec, type MicroVM } from '../../src/core/microvm.js';
import { MvmError } from '../../src/core/errors.js';
import type { NodeInfo } from '../../src/core/ports/agent.js';
import { ClusterState } from '../../src/scheduler/state.js';
import { Scheduler, unschedulableMessage, type SchedulerOptions } from '../../src/scheduler/scheduler.js';
import { node, vm } from '../support/scheduler-fixtures.js';

const decide = (v: MicroVM, nodes: NodeInfo[], placed: MicroVM[] = [], o: SchedulerOptions = {}) => new Scheduler(o).place(v, nodes, placed);

test('readiness and VMM drivers: a not-ready node and a node without a driver are refused, with their reason', () => {
  const p = decide(vm('a'), [node('n1', { ready: false }), node('n2', { drivers: [] }), node('n3')]);
  assert.equal(p.node, 'n3');
  assert.deepEqual(p.reasons, { n1: 'node not ready', n2: 'no usable VMM driver on node' });
  assert.equal(decide(vm('a'), [node('n1', { ready: false })]).node, undefined);
});

test('cordon: an unschedulable node takes no new VM unless the VM tolerates node.kubernetes.io/unschedulable', () => {
  const nodes = [node('n1', { unschedulable: true })];
  const p = decide(vm('a'), nodes);
  assert.equal(p.node, undefined);
  assert.equal(p.reasons.n1, 'node is cordoned (unschedulable)');
  assert.equal(p.message, '0/1 nodes available: 1 node(s) were cordoned');
  assert.equal(decide(vm('a', { tolerations: [{ key: 'node.kubernetes.io/unschedulable', operator: 'Exists', effect: 'NoSchedule' }] }), nodes).node, 'n1');
});

test('taints: NoSchedule and NoExecute keep untolerating VMs off; Equal/Exists/effect rules of tolerations', () => {
  const gpu = node('gpu', { taints: [{ key: 'gpu', value: 'yes', effect: 'NoSchedule' }] });
  const drain = node('drain', { taints: [{ key: 'maintenance', effect: 'NoExecute' }] });
  const p = decide(vm('a'), [gpu, drain]);
  assert.equal(p.node, undefined);
  assert.equal(p.reasons.gpu, 'untolerated taint gpu=yes:NoSchedule');
  assert.equal(p.reasons.drain, 'untolerated taint maintenance:NoExecute');
  assert.equal(decide(vm('a', { tolerations: [{ key: 'gpu', operator: 'Equal', value: 'yes', effect: 'NoSchedule' }] }), [gpu]).node, 'gpu');
  assert.equal(decide(vm('a', { tolerations: [{ key: 'gpu', value: 'no' }] }), [gpu]).node, undefined, 'value differs');
  assert.equal(decide(vm('a', { tolerations: [{ key: 'gpu', operator: 'Exists', effect: 'NoExecute' }] }), [gpu]).node, undefined, 'effect differs');
  assert.equal(decide(vm('a', { tolerations: [{ key: 'gpu', operator: 'Exists' }] }), [gpu]).node, 'gpu', 'no effect: every effect');
  assert.equal(decide(vm('a', { tolerations: [{ operator: 'Exists' }] }), [drain]).node, 'drain', 'empty key + Exists: every taint');
});

test('PreferNoSchedule: avoided when another node fits, used when it is the only one', () => {
  // Spread alone would pick "soft" (it is emptier).
  const soft = node('soft', { memoryMiB: 32768, taints: [{ key: 'spot', effect: 'PreferNoSchedule' }] });
  const plain = node('plain');
  assert.equal(decide(vm('a'), [soft, plain], [], { weights: { taints: 0 } }).node, 'soft');
  assert.equal(decide(vm('a'), [soft, plain]).node, 'plain');
  assert.equal(decide(vm('a', { tolerations: [{ key: 'spot', operator: 'Exists' }] }), [soft, plain]).node, 'soft');
  assert.equal(decide(vm('a'), [soft]).node, 'soft');
});

test('nodeSelector: every pair must match a node label; the reason names the label', () => {
  const nodes = [node('n1', { labels: { zone: 'b' } }), node('n2'), node('n3', { labels: { zone: 'a', disk: 'ssd' } })];
  const p = decide(vm('a', { nodeSelector: { zone: 'a', disk: 'ssd' } }), nodes);
  assert.equal(p.node, 'n3');
  assert.equal(p.reasons.n1, 'node label zone=b does not match nodeSelector zone=a');
  assert.equal(p.reasons.n2, 'node has no label zone (nodeSelector zone=a)');
  assert.equal(decide(vm('a', { nodeSelector: { zone: 'a', disk: 'hdd' } }), nodes).reasons.n3, 'node label disk=ssd does not match nodeSelector disk=hdd');
  assert.equal(decide(vm('a', { nodeSelector: { 'kubernetes.io/hostname': 'n2' } }), nodes).node, 'n2', 'hostname label is implicit');
});

test('capability: driver and KVM requests are checked against what the node reports, not its free-form labels', () => {
  const q = node('q', { drivers: ['qemu'], labels: { 'microvm.service/driver': 'firecracker', 'microvm.service/kvm': 'true' } });
  const fc = node('fc', { drivers: ['qemu', 'firecracker'], accel: 'kvm' });
  const p = decide(vm('a', { nodeSelector: { 'microvm.service/driver': 'firecracker' } }), [q, fc]);
  assert.equal(p.node, 'fc');
  assert.equal(p.reasons.q, 'VMM driver firecracker not available (node has qemu)');
  const k = decide(vm('a', { nodeSelector: { 'microvm.service/kvm': 'true' } }), [q]);
  assert.equal(k.reasons.q, 'node has no working KVM');
  assert.equal(k.message, '0/1 nodes available: 1 node(s) lacked a required capability');
  assert.equal(decide(vm('a', { nodeSelector: { 'microvm.service/kvm': 'true' } }), [q, fc]).node, 'fc');
});

test('capacity: allocatable × overcommit minus placed requests and VMM overhead', () => {
  const s = new Scheduler({ cpuOvercommit: 1, vmmOverheadMiB: 64 });
  const n = node('n1', { cpus: 8, memoryMiB: 16384, allocatable: { cpus: 3, memoryMiB: 2200 } });
  const one = vm('x', { node: 'n1', memory: '1Gi' });
  // 1088 used, 1088 more fits in 2200; a third does not.
  assert.equal(s.place(vm('a'), [n], [one]).node, 'n1');
  const p = s.place(vm('a'), [n], [one, vm('y', { node: 'n1', memory: '128Mi' })]);
  assert.equal(p.node, undefined);
  assert.equal(p.reasons.n1, 'insufficient memory (1280+1088 MiB > 2200 MiB)');
  const c = s.place(vm('a', { vcpu: 3, memory: '128Mi' }), [n], [one]);
  assert.equal(c.reasons.n1, 'insufficient cpu (1+3 > 3 vCPU)');
  // Overcommit multiplies allocatable.
  assert.equal(new Scheduler({ cpuOvercommit: 4 }).place(vm('a', { vcpu: 3, memory: '128Mi' }), [n], [one]).node, 'n1');
  assert.equal(new Scheduler({ memoryOvercommit: 2 }).place(vm('a', { memory: '2Gi' }), [n], [one]).node, 'n1');
});

test('the unschedulable message summarises rejections by kind, most frequent first', () => {
  const nodes = [node('n1', { memoryMiB: 1000 }), node('n2', { memoryMiB: 1000 }), node('n3', { taints: [{ key: 'k', effect: 'NoSchedule' }] })];
  const p = decide(vm('a'), nodes);
  assert.equal(p.node, undefined);
  assert.equal(p.message, '0/3 nodes available: 2 insufficient memory, 1 node(s) had untolerated taint');
  assert.equal(unschedulableMessage(p, 2), '0/3 nodes available: 2 insufficient memory, 1 node(s) had untolerated taint (n1: insufficient memory (0+1088 MiB > 1000 MiB); n2: insufficient memory (0+1088 MiB > 1000 MiB); +1 more)');
  assert.equal(decide(vm('a'), []).message, '0/0 nodes available: no nodes registered');
  const ok = decide(vm('a'), [...nodes, node('n4')]);
  assert.equal(ok.node, 'n4');
  assert.equal(ok.message, '1/4 nodes available: 2 insufficient memory, 1 node(s) had untolerated taint');
});

test('spread puts the VM on the emptiest node, binpack on the fullest that fits', () => {
  const nodes = [node('n1'), node('n2')];
  const placed = [vm('x', { node: 'n1', memory: '4Gi' })];
  assert.equal(decide(vm('a'), nodes, placed, { strategy: 'spread' }).node, 'n2');
  assert.equal(decide(vm('a'), nodes, placed, { strategy: 'binpack' }).node, 'n1');
  // binpack still refuses a full node.
  assert.equal(decide(vm('a', { memory: '8Gi' }), nodes, [...placed, vm('y', { node: 'n1', memory: '8Gi' })], { strategy: 'binpack' }).node, 'n2');
});

test('fragmentation: a small VM goes where it does not break a free large slot, even against spread', () => {
  const o: SchedulerOptions = { largeSlot: { vcpu: 4, memoryMiB: 4096 } }; // 4160 MiB with overhead
  const nodes = [node('a', { memoryMiB: 8320 }), node('b', { memoryMiB: 5248 })]; // a: 2 slots; b: 1 slot + 1088
  assert.equal(decide(vm('v'), nodes, [], { ...o, weights: { fragmentation: 0 } }).node, 'a', 'spread alone: the emptier node');
  assert.equal(decide(vm('v'), nodes, [], o).node, 'b', 'fragmentation keeps both of a\'s slots');
  // When every placement costs a slot, the strategy decides.
  assert.equal(decide(vm('v'), [node('a', { memoryMiB: 8320 }), node('c', { memoryMiB: 4160 })], [], o).node, 'a');
  assert.equal(new Scheduler(o).slots({ vcpu: 64, memoryMiB: 8320 }), 2);
});

const web = { app: 'web' };
const antiWeb = (topologyKey?: string) => ({ vmAntiAffinity: { required: [{ labelSelector: { matchLabels: web }, ...(topologyKey ? { topologyKey } : {}) }] } });

test('required anti-affinity: not on a node (default topology) with a matching VM of the same tenant', () => {
  const nodes = [node('n1'), node('n2')];
  const first = vm('w1', { labels: web, affinity: antiWeb(), node: 'n2' });
  const p = decide(vm('w2', { labels: web, affinity: antiWeb() }), nodes, [first]);
  assert.equal(p.node, 'n1');
  assert.equal(p.reasons.n2, '1 matching VM(s) in kubernetes.io/hostname=n2 (vmAntiAffinity.required[0])');
  const none = decide(vm('w3', { labels: web, affinity: antiWeb() }), nodes, [first, vm('w2', { labels: web, node: 'n1' })]);
  assert.equal(none.node, undefined);
  assert.equal(none.message, "0/2 nodes available: 2 node(s) didn't match VM anti-affinity rules");
  // Another tenant's web VM does not count.
  assert.equal(decide(vm('w2', { labels: web, affinity: antiWeb() }), [node('n2')], [vm('o', { tenant: 't2', labels: web, node: 'n2' })]).node, 'n2');
});

test('topology key: anti-affinity per zone; a node without the label is its own domain for anti-affinity, refused for affinity', () => {
  const nodes = [node('n1', { labels: { zone: 'a' } }), node('n2', { labels: { zone: 'a' } }), node('n3', { labels: { zone: 'b' } }), node('bare')];
  const placed = [vm('w1', { labels: web, node: 'n1' })];
  const p = decide(vm('w2', { labels: web, affinity: antiWeb('zone') }), nodes, placed, { weights: { fragmentation: 0 } });
  assert.equal(p.reasons.n2, '1 matching VM(s) in zone=a (vmAntiAffinity.required[0])');
  assert.ok(p.node === 'n3' || p.node === 'bare', p.node);
  const aff = decide(vm('c', { affinity: { vmAffinity: { required: [{ labelSelector: { matchLabels: web }, topologyKey: 'zone' }] } } }), nodes, placed);
  assert.equal(aff.node, 'n2', 'same zone as the web VM, spread away from n1');
  assert.equal(aff.reasons.bare, 'node has no topology label zone (vmAffinity.required[0])');
  assert.equal(aff.reasons.n3, 'no matching VM in zone=b (vmAffinity.required[0])');
});

test('required affinity: next to a matching VM; the first of a self-matching group may go anywhere', () => {
  const nodes = [node('n1'), node('n2')];
  const db = vm('db', { labels: { app: 'db' }, node: 'n1' });
  const nearDb = { vmAffinity: { required: [{ labelSelector: { matchExpressions: [{ key: 'app', operator: 'In' as const, values: ['db', 'cache'] }] } }] } };
  assert.equal(decide(vm('api', { affinity: nearDb }), nodes, [db]).node, 'n1');
  const lonely = decide(vm('api', { affinity: nearDb }), nodes, []);
  assert.equal(lonely.node, undefined);
  assert.match(lonely.message, /2 node\(s\) didn't match VM affinity rules/);
  const group = { vmAffinity: { required: [{ labelSelector: { matchLabels: { app: 'db' } } }] } };
  assert.ok(decide(vm('db1', { labels: { app: 'db' }, affinity: group }), nodes, []).node, 'first member');
  assert.equal(decide(vm('db2', { labels: { app: 'db' }, affinity: group }), nodes, [db]).node, 'n1', 'then next to it');
});

test("symmetry: a placed VM's required anti-affinity keeps matching newcomers off its node", () => {
  const guard = vm('guard', { labels: { role: 'guard' }, affinity: { vmAntiAffinity: { required: [{ labelSelector: { matchLabels: { app: 'noisy' } } }] } }, node: 'n1' });
  const nodes = [node('n1', { memoryMiB: 65536 }), node('n2')];
  const p = decide(vm('x', { labels: { app: 'noisy' } }), nodes, [guard]);
  assert.equal(p.node, 'n2');
  assert.equal(p.reasons.n1, "a VM in kubernetes.io/hostname=n1 has required anti-affinity against this VM's labels");
  assert.equal(decide(vm('y', { labels: { app: 'quiet' } }), nodes, [guard]).node, 'n1');
});

test('label selector operators: NotIn, Exists, DoesNotExist', () => {
  const nodes = [node('n1'), node('n2'), node('n3')];
  const placed = [vm('a', { labels: { tier: 'gold' }, node: 'n1' }), vm('b', { labels: { tier: 'bronze' }, node: 'n2' }), vm('c', { labels: { other: 'x' }, node: 'n3' })];
  const only = (sel: object) => decide(vm('z', { affinity: { vmAffinity: { required: [{ labelSelector: sel }] } } }), nodes, placed).node;
  assert.equal(only({ matchExpressions: [{ key: 'tier', operator: 'Exists' }, { key: 'tier', operator: 'NotIn', values: ['gold'] }] }), 'n2');
  assert.equal(only({ matchExpressions: [{ key: 'tier', operator: 'DoesNotExist' }] }), 'n3');
  assert.equal(only({ matchLabels: { tier: 'gold' } }), 'n1');
  assert.equal(only({ matchLabels: { tier: 'platinum' } }), undefined);
});

test('preferred anti-affinity spreads a group; preferred affinity attracts, weighted', () => {
  const nodes = [node('n1', { memoryMiB: 65536 }), node('n2'), node('n3')];
  const prefAnti = { vmAntiAffinity: { preferred: [{ weight: 100, vmAffinityTerm: { labelSelector: { matchLabels: web } } }] } };
  const placed = [vm('w1', { labels: web, node: 'n1' }), vm('w2', { labels: web, node: 'n2' })];
  assert.equal(decide(vm('w3', { labels: web }), nodes, placed).node, 'n1', 'without the preference: the emptiest node');
  assert.equal(decide(vm('w3', { labels: web, affinity: prefAnti }), nodes, placed).node, 'n3');
  const prefNear = { vmAffinity: { preferred: [{ weight: 50, vmAffinityTerm: { labelSelector: { matchLabels: web } } }] } };
  assert.equal(decide(vm('c'), nodes, [vm('w', { labels: web, node: 'n3' })]).node, 'n1');
  assert.equal(decide(vm('c', { affinity: prefNear }), nodes, [vm('w', { labels: web, node: 'n3' })]).node, 'n3');
  // A preference never overrides a filter.
  assert.equal(decide(vm('c', { memory: '8Gi', affinity: prefNear }), [node('n1', { memoryMiB: 65536 }), node('n3', { memoryMiB: 4096 })], [vm('w', { labels: web, node: 'n3' })]).node, 'n1');
});

test('ClusterState: assume/forget keep usage and indexes; a VM already placed does not count against itself', () => {
  const s = new Scheduler({ vmmOverheadMiB: 64 });
  const st = new ClusterState();
  st.setNode(node('n1', { memoryMiB: 2200 }));
  const a = vm('a', { labels: web });
  assert.equal(s.schedule(a, st).node, 'n1');
  st.assume(a, 'n1');
  assert.deepEqual([st.usage('n1').vcpu, st.usage('n1').memoryMiB, st.usage('n1').count], [1, 1024, 1]);
  assert.equal(s.schedule(vm('b', { memory: '2Gi' }), st).node, undefined);
  assert.equal(s.schedule(a, st).node, 'n1', 're-placing a VM: its own request is set aside');
  assert.equal(st.usage('n1').count, 1, 'and put back');
  assert.equal([...st.matching('t1', { matchLabels: web })].length, 1);
  st.assume(a, 'n1'); // idempotent
  assert.equal(st.usage('n1').memoryMiB, 1024);
  st.forget(a.id);
  st.forget(a.id);
  assert.equal(st.usage('n1').count, 0);
  assert.equal([...st.matching('t1', { matchLabels: web })].length, 0);
  assert.equal(s.schedule(vm('b', { memory: '2Gi' }), st).node, 'n1');
  st.removeNode('n1');
  assert.equal(s.schedule(vm('b'), st).message, '0/0 nodes available: no nodes registered');
});

test('validateSpec names the field of a malformed toleration or selector', () => {
  const field = (spec: object): string => {
    try {
      validateSpec({ vcpu: 1, memory: '128Mi', ...spec });
    } catch (e) {
      return (e as MvmError).violations[0]!.field;
    }
    return 'ok';
  };
  assert.equal(field({ tolerations: [{ key: 'a', operator: 'Exists', value: 'x' }] }), 'tolerations[0].value');
  assert.equal(field({ tolerations: [{ value: 'x' }] }), 'tolerations[0].key');
  assert.equal(field({ affinity: { vmAntiAffinity: { preferred: [{ weight: 1, vmAffinityTerm: { labelSelector: { matchExpressions: [{ key: 'a', operator: 'In' }] } } }] } } }), 'affinity.vmAntiAffinity.preferred[0].vmAffinityTerm.labelSelector.matchExpressions[0].values');
  assert.equal(field({ affinity: { vmAffinity: { required: [{ labelSelector: { matchExpressions: [{ key: 'a', operator: 'Exists', values: ['x'] }] } }] } } }), 'affinity.vmAffinity.required[0].labelSelector.matchExpressions[0].values');
  assert.equal(field({ tolerations: [{ operator: 'Exists' }], affinity: { vmAffinity: { required: [{ labelSelector: {} }] } } }), 'ok');
});

test('the constraints are part of the one schema: REST request validation and the generated CRD', async () => {
  const { Value } = await import('@sinclair/typebox/value');
  const { CreateMicroVMRequest } = await import('../../src/core/schema.js');
  const { microVmCrd } = await import('../../src/k8s/crd.js');
  const ok = { name: 'a', nodeSelector: { zone: 'a' }, tolerations: [{ key: 'k', operator: 'Exists', effect: 'NoExecute' }], affinity: { vmAntiAffinity: { preferred: [{ weight: 100, vmAffinityTerm: { labelSelector: { matchLabels: { app: 'w' } }, topologyKey: 'zone' } }] } } };
  assert.ok(Value.Check(CreateMicroVMRequest, ok));
  assert.ok(!Value.Check(CreateMicroVMRequest, { ...ok, tolerations: [{ key: 'k', effect: 'Never' }] }), 'unknown effect');
  assert.ok(!Value.Check(CreateMicroVMRequest, { ...ok, affinity: { vmAffinity: { preferred: [{ weight: 101, vmAffinityTerm: { labelSelector: {} } }] } } }), 'weight over 100');
  assert.ok(!Value.Check(CreateMicroVMRequest, { ...ok, affinity: { podAffinity: {} } }), 'unknown field');
  const spec = (microVmCrd() as any).spec.versions[0].schema.openAPIV3Schema.properties.spec.properties;
  assert.deepEqual(spec.tolerations.items.properties.effect.enum, ['NoSchedule', 'PreferNoSchedule', 'NoExecute']);
  assert.deepEqual(spec.affinity.properties.vmAntiAffinity.properties.required.items.properties.labelSelector.properties.matchExpressions.items.properties.operator.enum, ['In', 'NotIn', 'Exists', 'DoesNotExist']);
  assert.deepEqual([spec.affinity.properties.vmAffinity.properties.preferred.items.properties.weight.minimum, spec.affinity.properties.vmAffinity.properties.preferred.items.properties.weight.maximum], [1, 100]);
  assert.equal(spec.nodeSelector.additionalProperties.type, 'string');
});

test('evictions: VMs on a node with a NoExecute taint they do not tolerate, and only those', () => {
  const s = new Scheduler();
  const st = ClusterState.from(
    [node('n1', { taints: [{ key: 'maintenance', effect: 'NoExecute' }, { key: 'x', effect: 'NoSchedule' }] }), node('n2')],
    [vm('a', { id: 'a', node: 'n1' }), vm('b', { id: 'b', node: 'n1', tolerations: [{ key: 'maintenance', operator: 'Exists', effect: 'NoExecute' }] }), vm('c', { id: 'c', node: 'n2' })],
  );
  assert.deepEqual(s.evictions(st), [{ vm: 'a', node: 'n1', reason: 'untolerated taint maintenance:NoExecute' }]);
});

test('a tie goes to the node first by name, whatever order the nodes registered in', () => {
  for (const order of [['n-b', 'n-a', 'n-c'], ['n-c', 'n-b', 'n-a'], ['n-a', 'n-c', 'n-b']]) {
    const p = decide(vm('v1', {}), order.map((n) => node(n)));
    assert.equal(p.node, 'n-a', `registered as ${order.join(', ')}: ${JSON.stringify(p)}`);
  }
});
