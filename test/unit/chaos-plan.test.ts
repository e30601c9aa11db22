/**
 * The chaos harness's replay promise (test/chaos/plan.ts): a seed names one iteration exactly.
 * The PRNG's sequence is pinned (a change would silently re-map every recorded failing seed),
 * plans are pure functions of the seed, legal in the planner's own model, and the inventory diff
 * reports what was left behind.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { rng } from '../chaos/rng.js';
import { describePlan, planIteration, type OpKind } from '../chaos/plan.js';
import { diffInventory, type Inventory } from '../chaos/inventory.js';

test('the PRNG sequence of a seed is pinned', () => {
  const r = rng(1);
  assert.deepEqual([r.next(), r.next(), r.next()], [0.6270739405881613, 0.002735721180215478, 0.5274470399599522]);
  assert.equal(rng(4294967295).int(0, 1_000_000), 896423);
});

test('a seed gives the same plan every time; seeds differ', () => {
  const seen = new Set<string>();
  for (let s = 0; s < 300; s++) {
    const a = planIteration(s);
    assert.deepEqual(planIteration(s), a);
    seen.add(describePlan(a));
  }
  assert.ok(seen.size > 280, `only ${seen.size} distinct plans of 300`);
});

test('plans are legal: each operation acts on what exists then; the kill hits an operation', () => {
  const victims = new Map<string, number>();
  const hit = new Map<OpKind, number>();
  for (let s = 0; s < 2000; s++) {
    const p = planIteration(s);
    const vms = new Map<string, string>();
    const snaps = new Set<string>();
    const vols = new Set<string>();
    for (const op of p.ops) {
      const msg = `seed ${s}: ${describePlan(p)}`;
      switch (op.kind) {
        case 'create':
        case 'restore':
          assert.ok(!vms.has(op.vm!), msg);
          if (op.kind === 'restore') assert.ok(snaps.has(op.snapshot!), msg);
          assert.ok(vms.size < (op.kind === 'restore' ? 3 : 2), msg);
          if (op.volume) {
            if (op.volumeSize) vols.add(op.volume);
            assert.ok(vols.has(op.volume), msg);
          }
          vms.set(op.vm!, 'Running');
          break;
        case 'stop':
          assert.notEqual(vms.get(op.vm!) ?? 'Stopped', 'Stopped', msg);
          vms.set(op.vm!, 'Stopped');
          break;
        case 'start':
          assert.equal(vms.get(op.vm!), 'Stopped', msg);
          vms.set(op.vm!, 'Running');
          break;
        case 'pause':
          assert.equal(vms.get(op.vm!), 'Running', msg);
          vms.set(op.vm!, 'Paused');
          break;
        case 'resume':
          assert.equal(vms.get(op.vm!), 'Paused', msg);
          vms.set(op.vm!, 'Running');
          break;
        case 'snapshot':
          assert.ok(['Running', 'Paused'].includes(vms.get(op.vm!)!), msg);
          snaps.add(op.snapshot!);
          break;
        case 'delete':
        case 'update':
          assert.ok(vms.has(op.vm!), msg);
          if (op.kind === 'delete') vms.delete(op.vm!);
          break;
        case 'volume-create':
          vols.add(op.volume!);
          break;
        case 'volume-delete':
          assert.ok(vols.delete(op.volume!), msg);
          break;
        case 'snapshot-delete':
          assert.ok(snaps.delete(op.snapshot!), msg);
          break;
      }
    }
    assert.ok(p.kill.at >= 0 && p.kill.at < p.ops.length);
    assert.ok(p.kill.delayMs >= 0 && p.kill.delayMs <= 2500);
    assert.match(p.prefix, /^c[0-9a-z]+$/);
    victims.set(p.kill.victim, (victims.get(p.kill.victim) ?? 0) + 1);
    hit.set(p.ops[p.kill.at]!.kind, (hit.get(p.ops[p.kill.at]!.kind) ?? 0) + 1);
  }
  assert.deepEqual([...victims.keys()].sort(), ['service', 'vmm']);
  // Every operation the issue names is hit by some kill.
  for (const k of ['create', 'stop', 'pause', 'snapshot', 'restore', 'delete', 'volume-create', 'volume-delete'] as const) assert.ok((hit.get(k) ?? 0) > 10, `${k} hit ${hit.get(k) ?? 0} times`);
});

test('cluster plans: the same operations as standalone but no grown root disk; the agent, the operator or a VMM dies, each during pause, snapshot, restore and volume operations', () => {
  const hit = new Set<string>();
  for (let s = 0; s < 500; s++) {
    const p = planIteration(s, 'cluster');
    for (const op of p.ops) assert.equal(op.rootfsSize, undefined, describePlan(p));
    assert.ok(['agent', 'operator', 'vmm'].includes(p.kill.victim));
    hit.add(`${p.kill.victim} ${p.ops[p.kill.at]!.kind}`);
  }
  for (const v of ['agent', 'operator']) for (const k of ['create', 'stop', 'pause', 'snapshot', 'restore', 'delete', 'volume-create', 'volume-delete']) assert.ok(hit.has(`${v} ${k}`), `${v} never hits ${k}`);
  for (const k of ['create', 'stop', 'pause', 'snapshot', 'restore', 'delete']) assert.ok(hit.has(`vmm ${k}`), `a VMM kill never hits ${k}`);
});

test('the first 100 seeds (a `make chaos` run) kill the service and a VMM inside restores, pauses, snapshots, and the service inside volume operations', () => {
  const n = new Map<string, number>();
  for (let s = 1; s <= 100; s++) {
    const p = planIteration(s);
    const key = `${p.kill.victim} ${p.ops[p.kill.at]!.kind}`;
    n.set(key, (n.get(key) ?? 0) + 1);
  }
  for (const k of ['restore', 'pause', 'snapshot', 'create', 'stop', 'delete']) {
    assert.ok((n.get(`service ${k}`) ?? 0) >= 2, `service kills in ${k}: ${n.get(`service ${k}`) ?? 0}`);
    assert.ok((n.get(`vmm ${k}`) ?? 0) >= 2, `VMM kills in ${k}: ${n.get(`vmm ${k}`) ?? 0}`);
  }
  for (const k of ['volume-create', 'volume-delete']) assert.ok((n.get(`service ${k}`) ?? 0) >= 2, `service kills in ${k}: ${n.get(`service ${k}`) ?? 0}`);
});

test('the inventory diff names what was left behind and ignores the kept bridge', () => {
  const empty: Inventory = {
    processes: [],
    qemu: [],
    storageDaemons: 0,
    netns: [],
    links: { veth: [], tap: [], other: [] },
    nft: { text: 'table inet mvm {}', vmChains: 0, addresses: [] },
    cgroups: [],
    ipam: [],
    mounts: [],
    loops: [],
    uidLeases: [],
    vmDirs: [],
    snapshotDirs: [],
    volumeFiles: [],
    volumeSnapshotFiles: [],
    files: [],
  };
  assert.deepEqual(diffInventory(empty, { ...empty, links: { veth: [], tap: [], other: ['fc-br0(bridge)'] } }), []);
  const leaked = diffInventory(empty, {
    ...empty,
    processes: [{ pid: 7, comm: 'qemu-storage-d' }],
    netns: ['vm-1'],
    cgroups: ['vm-1'],
    ipam: [{ ip: '10.100.0.2', holder: 'vm-1' }],
    uidLeases: [{ uid: '200001', id: 'vm-1' }],
    files: ['vms/vm-1/root.qcow2'],
    nft: { text: 'table inet mvm { chain v_vm_1_ab_in {} }', vmChains: 1, addresses: [] },
  });
  for (const what of ['processes', 'VM netns', 'cgroups', 'IPAM leases', 'uid leases', 'files under the data dir', 'nftables']) {
    assert.ok(leaked.some((l) => l.startsWith(what)), `${what} not reported: ${leaked.join(' | ')}`);
  }
});
