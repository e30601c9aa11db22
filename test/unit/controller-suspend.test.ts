/**
 * The controller's suspend and lifetime steps (ADR 0035) against a real SQLite store and a
 * hand-written fake of the agent port: suspend, a cancel by a resume, a failed suspend, a restart
 * that finds a VM suspended, a suspend that completed although a resume came, a stop that discards
 * the memory, and a timeout that stops the VM with a Timeout event.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { Controller } from '../../src/controller/controller.js';
import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import { requestResume, type MicroVM } from '../../src/core/microvm.js';
import type { ActualState, ActualVm, NodeAgent } from '../../src/core/ports/agent.js';
import { Scheduler } from '../../src/scheduler/scheduler.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { vmFixture } from '../contract/store.contract.js';

interface World {
  state: ActualState;
  calls: string[];
  onSuspend?: (store: SqliteStore, id: string) => Promise<void>;
}

function fakeAgent(w: World, store: SqliteStore): NodeAgent {
  const agent: Partial<NodeAgent> = {
    nodeName: 'n1',
    observe: (id: string): ActualVm => ({ id, state: w.state, ready: w.state === 'running', ...(w.state === 'running' || w.state === 'paused' ? { pid: 42 } : {}), driver: 'qemu', accel: 'tcg' }),
    known: async () => [],
    suspend: async (id: string) => {
      w.calls.push('suspend');
      await w.onSuspend?.(store, id);
      w.state = 'suspended';
      return { sizeBytes: 64 << 20, durationMs: 250 };
    },
    cancelSuspend: () => void w.calls.push('cancelSuspend'),
    discardSuspend: async () => {
      w.calls.push('discardSuspend');
      w.state = 'stopped';
    },
    ensureStopped: async () => {
      w.calls.push('ensureStopped');
      if (w.state !== 'suspended') w.state = 'stopped';
    },
    ensureRunning: async (vm: MicroVM) => {
      w.calls.push('ensureRunning');
      w.state = 'running';
      return { id: vm.id, state: 'running', ready: true, pid: 43, driver: 'qemu', accel: 'tcg' };
    },
  };
  return agent as NodeAgent;
}

async function run(vm: Partial<MicroVM>, w: World): Promise<{ vm: MicroVM; reasons: string[] }> {
  const store = new SqliteStore(':memory:');
  const c = new Controller({ store, agent: fakeAgent(w, store), scheduler: new Scheduler(), log: pino({ level: 'silent' }) });
  await c.stop(); // reconcile() runs only when called here
  try {
    const created = await store.createVm(vmFixture(vm));
    // Until nothing changes (each step writes once and re-queues).
    let rv = '';
    for (let i = 0; i < 8; i++) {
      await c.reconcile(created.id);
      const cur = (await store.getVm(created.id))!;
      if (cur.resourceVersion === rv) break;
      rv = cur.resourceVersion;
    }
    const events = await store.listEvents({ vmId: created.id });
    return { vm: (await store.getVm(created.id))!, reasons: events.map((e) => e.reason) };
  } finally {
    await store.close();
  }
}

const running = (extra: Partial<MicroVM['status']> = {}): MicroVM['status'] => ({ phase: 'Running', conditions: [], node: 'n1', pid: 42, ...extra });

test('desired Suspended: Suspending -> the agent suspends -> Suspended, with the size and a Suspended event', async () => {
  const w: World = { state: 'running', calls: [] };
  const r = await run({ desiredState: 'Suspended', status: running({ phase: 'Suspending' }) }, w);
  assert.equal(r.vm.status.phase, 'Suspended');
  assert.deepEqual(r.vm.status.suspend, { sizeBytes: 64 << 20, durationMs: 250 });
  assert.equal(r.vm.status.pid, undefined);
  assert.ok(r.vm.status.suspendedAt);
  assert.deepEqual(w.calls, ['suspend']);
  assert.ok(r.reasons.includes('Suspended'), r.reasons.join(','));
});

test('a resume during the suspend cancels it: SuspendCancelled, then Running on the same VMM', async () => {
  const w: World = {
    state: 'running',
    calls: [],
    onSuspend: async (store, id) => {
      await store.updateVm(id, (cur) => requestResume(cur));
      throw new MvmError(ErrorCodes.CONFLICT, 'cancelled', { details: { cancelled: true } });
    },
  };
  const r = await run({ desiredState: 'Suspended', status: running({ phase: 'Suspending' }) }, w);
  assert.deepEqual([r.vm.status.phase, r.vm.desiredState], ['Running', 'Running']);
  assert.ok(r.reasons.includes('SuspendCancelled'), r.reasons.join(','));
  assert.ok(!r.reasons.includes('Suspended'));
  assert.deepEqual(w.calls, ['suspend']);
});

test('a failed suspend leaves the VM as it was (Running), with a SuspendFailed event', async () => {
  const w: World = {
    state: 'running',
    calls: [],
    onSuspend: async () => {
      throw new MvmError(ErrorCodes.VMM_ERROR, 'disk full');
    },
  };
  const r = await run({ desiredState: 'Suspended', status: running({ phase: 'Suspending' }) }, w);
  assert.deepEqual([r.vm.status.phase, r.vm.desiredState], ['Running', 'Running']);
  assert.ok(r.reasons.includes('SuspendFailed'), r.reasons.join(','));
});

test('after a restart a Suspended VM found suspended is left alone; one whose phase write was lost becomes Suspended', async () => {
  const w: World = { state: 'suspended', calls: [] };
  const r = await run({ desiredState: 'Suspended', status: { phase: 'Suspended', conditions: [], node: 'n1' } }, w);
  assert.equal(r.vm.status.phase, 'Suspended');
  assert.deepEqual(w.calls, []);
  const w2: World = { state: 'suspended', calls: [] };
  const r2 = await run({ desiredState: 'Suspended', status: running({ phase: 'Suspending' }) }, w2);
  assert.equal(r2.vm.status.phase, 'Suspended');
});

test('a suspend that completed although a resume came: the VM is resumed from disk', async () => {
  const w: World = { state: 'suspended', calls: [] };
  const r = await run({ desiredState: 'Running', status: running({ phase: 'Suspending' }) }, w);
  assert.equal(r.vm.status.phase, 'Running');
  assert.deepEqual(w.calls, ['ensureRunning']);
});

test('a stop of a Suspended VM discards its memory: Stopped', async () => {
  const w: World = { state: 'suspended', calls: [] };
  const r = await run({ desiredState: 'Stopped', status: { phase: 'Suspended', conditions: [], node: 'n1', ip: '10.0.0.2' } }, w);
  assert.equal(r.vm.status.phase, 'Stopped');
  assert.equal(r.vm.status.ip, undefined);
  assert.deepEqual(w.calls.slice(0, 2), ['discardSuspend', 'ensureStopped']);
});

test('lifetime: an expired timeout stops the VM with a Timeout event; a clock is started for a running VM', async () => {
  const w: World = { state: 'running', calls: [] };
  const past = new Date(Date.now() - 3_600_000).toISOString();
  const r = await run({ desiredState: 'Running', spec: { vcpu: 1, memory: '128Mi', lifecycle: { timeout: '10s' } }, status: running({ lifetime: { remainingMs: 10_000, countingSince: past } }) }, w);
  assert.deepEqual([r.vm.desiredState, r.vm.status.phase], ['Stopped', 'Stopped']);
  assert.equal(r.vm.status.lifetime, undefined, 'a stopped VM has no clock');
  assert.ok(r.reasons.includes('Timeout'), r.reasons.join(','));
  const w2: World = { state: 'running', calls: [] };
  const r2 = await run({ desiredState: 'Running', spec: { vcpu: 1, memory: '128Mi', lifecycle: { timeout: '1h', onTimeout: 'suspend' } }, status: running() }, w2);
  assert.equal(r2.vm.status.phase, 'Running');
  assert.equal(r2.vm.status.lifetime?.remainingMs, 3_600_000);
  assert.ok(r2.vm.status.lifetime?.countingSince);
});
