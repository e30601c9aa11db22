/**
 * The standalone controller's use of the scheduler: a VM whose constraints no node meets stays
 * Pending with Scheduled=False/Unschedulable and the summary message; otherwise it is bound.
 * Real SQLite store (in memory), a hand-written fake of the agent port (no VMM).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { Controller } from '../../src/controller/controller.js';
import type { ActualVm, NodeAgent, NodeInfo } from '../../src/core/ports/agent.js';
import { Scheduler } from '../../src/scheduler/scheduler.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { node, vm } from '../support/scheduler-fixtures.js';

function fakeAgent(info: NodeInfo): NodeAgent {
  const agent: Partial<NodeAgent> = {
    nodeName: info.name,
    info: async () => info,
    observe: (id: string): ActualVm => ({ id, state: 'absent', ready: false }),
    known: async () => [],
  };
  return agent as NodeAgent;
}

test('controller: unschedulable VMs get the summary condition; a fitting VM is bound to the node', async () => {
  const store = new SqliteStore(':memory:');
  const c = new Controller({ store, agent: fakeAgent(node('node-x', { labels: { zone: 'b' } })), scheduler: new Scheduler(), log: pino({ level: 'silent' }) });
  // Stopped before use: reconcile() runs only when called here, nothing is queued (no boot is attempted).
  await c.stop();
  try {
    const a = await store.createVm(vm('a', { labels: { app: 'web' } }));
    await c.reconcile(a.id);
    const placed = await store.getVm(a.id);
    assert.equal(placed!.status.phase, 'Scheduled');
    assert.equal(placed!.status.node, 'node-x');

    const b = await store.createVm(vm('b', { nodeSelector: { zone: 'a' } }));
    await c.reconcile(b.id);
    const cond = (await store.getVm(b.id))!.status.conditions.find((x) => x.type === 'Scheduled');
    assert.equal((await store.getVm(b.id))!.status.phase, 'Pending');
    assert.deepEqual([cond?.status, cond?.reason], ['False', 'Unschedulable']);
    assert.equal(cond?.message, "0/1 nodes available: 1 node(s) didn't match node selector (node-x: node label zone=b does not match nodeSelector zone=a)");

    const d = await store.createVm(vm('d', { labels: { app: 'web' }, affinity: { vmAntiAffinity: { required: [{ labelSelector: { matchLabels: { app: 'web' } } }] } } }));
    await c.reconcile(d.id);
    const dc = (await store.getVm(d.id))!.status.conditions.find((x) => x.type === 'Scheduled');
    assert.match(dc?.message ?? '', /^0\/1 nodes available: 1 node\(s\) didn't match VM anti-affinity rules \(node-x: 1 matching VM\(s\) in kubernetes\.io\/hostname=node-x/);
  } finally {
    await store.close();
  }
});
