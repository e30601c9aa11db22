/** Lifetime arithmetic (src/core/lifetimes.ts): the timeout and idle clocks as the reconcile step sees them. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { evaluateLifetime, extendedClock } from '../../src/core/lifetimes.js';
import { requestResume, requestStop, requestSuspend, type MicroVM } from '../../src/core/microvm.js';

const T0 = Date.parse('2026-12-07T12:00:00.000Z');
const iso = (ms: number) => new Date(ms).toISOString();

function vm(phase: MicroVM['status']['phase'], lifecycle: NonNullable<MicroVM['spec']['lifecycle']>, lifetime?: MicroVM['status']['lifetime']): MicroVM {
  return {
    id: 'vm-1',
    name: 'a',
    tenant: 't',
    spec: { vcpu: 1, memory: '128Mi', lifecycle },
    desiredState: 'Running',
    status: { phase, conditions: [{ type: 'GuestReady', status: 'True', lastTransitionTime: iso(T0) }], node: 'n1', ...(lifetime ? { lifetime } : {}) },
    generation: 1,
    resourceVersion: '1',
    createdAt: iso(T0),
    updatedAt: iso(T0),
  };
}

/** Apply a decision's clock as the controller writes it. */
const apply = (v: MicroVM, d: ReturnType<typeof evaluateLifetime>): MicroVM => {
  if (d.clock === null) delete v.status.lifetime;
  else if (d.clock) v.status.lifetime = d.clock;
  return v;
};

test('timeout: the clock starts when Running, fires after the whole budget, with the configured action', () => {
  const v = vm('Running', { timeout: '10s', onTimeout: 'suspend' });
  const d0 = evaluateLifetime(v, T0);
  assert.deepEqual(d0.clock, { remainingMs: 10_000, countingSince: iso(T0), expiresAt: iso(T0 + 10_000) });
  assert.equal(d0.wakeInMs, 10_000);
  apply(v, d0);
  // Unchanged a moment later: no write, a wake at the deadline.
  const d1 = evaluateLifetime(v, T0 + 4000);
  assert.equal(d1.clock, undefined);
  assert.equal(d1.wakeInMs, 6000);
  const d2 = evaluateLifetime(v, T0 + 10_000);
  assert.deepEqual(d2.action, { reason: 'Timeout', action: 'suspend', message: 'lifecycle.timeout 10s reached' });
  // Default action: stop.
  assert.equal(evaluateLifetime(apply(vm('Running', { timeout: '10s' }), evaluateLifetime(vm('Running', { timeout: '10s' }), T0)), T0 + 10_001).action?.action, 'stop');
});

test('suspended (and any non-running) time does not count; the clock goes on where it stood', () => {
  const v = apply(vm('Running', { timeout: '10s' }), evaluateLifetime(vm('Running', { timeout: '10s' }), T0));
  // Suspended after 4 s: 6 s left, the clock stands.
  v.status.phase = 'Suspended';
  const stop = evaluateLifetime(v, T0 + 4000);
  assert.deepEqual(stop.clock, { remainingMs: 6000 });
  assert.equal(stop.action, undefined);
  apply(v, stop);
  // An hour suspended changes nothing.
  assert.deepEqual(evaluateLifetime(v, T0 + 3_600_000), {});
  // Resumed an hour later: 6 s from then.
  v.status.phase = 'Running';
  const resumed = evaluateLifetime(v, T0 + 3_600_000);
  assert.deepEqual(resumed.clock, { remainingMs: 6000, countingSince: iso(T0 + 3_600_000), expiresAt: iso(T0 + 3_606_000) });
  apply(v, resumed);
  assert.equal(evaluateLifetime(v, T0 + 3_605_999).action, undefined);
  assert.equal(evaluateLifetime(v, T0 + 3_606_000).action?.reason, 'Timeout');
});

test('a stopped or failed VM loses its clocks: its next start is a new lifetime', () => {
  const v = apply(vm('Running', { timeout: '10s' }), evaluateLifetime(vm('Running', { timeout: '10s' }), T0));
  v.status.phase = 'Stopped';
  assert.deepEqual(evaluateLifetime(v, T0 + 1000), { clock: null });
  delete v.status.lifetime;
  v.status.phase = 'Running';
  assert.equal(evaluateLifetime(v, T0 + 5000).clock?.remainingMs, 10_000);
  // No lifecycle timers: nothing (and a stale clock goes).
  assert.deepEqual(evaluateLifetime(vm('Running', {}), T0), {});
  assert.deepEqual(evaluateLifetime(vm('Running', {}, { remainingMs: 5 }), T0), { clock: null });
});

test('idle: counts from the last activity or the start of the run, whichever is later; default action suspend', () => {
  const v = apply(vm('Running', { idleTimeout: '5s' }), evaluateLifetime(vm('Running', { idleTimeout: '5s' }), T0));
  assert.equal(evaluateLifetime(v, T0 + 3000).wakeInMs, 2000);
  // Activity at +3 s: the deadline moves to +8 s, and it is written (once per second at most).
  const act = evaluateLifetime(v, T0 + 3000, T0 + 3000);
  assert.equal(act.clock?.lastActivityAt, iso(T0 + 3000));
  assert.equal(act.wakeInMs, 5000);
  apply(v, act);
  assert.equal(evaluateLifetime(v, T0 + 3500, T0 + 3400).clock, undefined, 'activity within a second of the stored one is not written');
  assert.equal(evaluateLifetime(v, T0 + 7999).action, undefined);
  assert.deepEqual(evaluateLifetime(v, T0 + 8000).action, { reason: 'Idle', action: 'suspend', message: 'no activity for lifecycle.idleTimeout 5s' });
  // In-memory activity newer than the stored one counts even unwritten.
  assert.equal(evaluateLifetime(v, T0 + 8000, T0 + 7500).action, undefined);
  // Not idle while the guest is not ready (booting), nor before its readyAt.
  const booting = apply(vm('Running', { idleTimeout: '5s' }), evaluateLifetime(vm('Running', { idleTimeout: '5s' }), T0));
  booting.status.conditions = [];
  assert.equal(evaluateLifetime(booting, T0 + 60_000).action, undefined);
  booting.status.conditions = [{ type: 'GuestReady', status: 'True', lastTransitionTime: iso(T0 + 50_000) }];
  booting.status.readyAt = iso(T0 + 50_000);
  assert.equal(evaluateLifetime(booting, T0 + 54_999).action, undefined);
  assert.equal(evaluateLifetime(booting, T0 + 55_000).action?.reason, 'Idle');
  const stopIdle = apply(vm('Running', { idleTimeout: '5s', onIdle: 'stop' }), evaluateLifetime(vm('Running', { idleTimeout: '5s', onIdle: 'stop' }), T0));
  assert.equal(evaluateLifetime(stopIdle, T0 + 5000).action?.action, 'stop');
});

test('extend: the timeout ends N from now while running; while suspended, N of running time is left', () => {
  const v = apply(vm('Running', { timeout: '10s' }), evaluateLifetime(vm('Running', { timeout: '10s' }), T0));
  const ext = extendedClock(v, T0 + 9000, 60_000);
  assert.deepEqual(ext, { remainingMs: 60_000, countingSince: iso(T0 + 9000), expiresAt: iso(T0 + 69_000) });
  v.status.lifetime = ext;
  assert.equal(evaluateLifetime(v, T0 + 12_000).action, undefined);
  assert.equal(evaluateLifetime(v, T0 + 69_000).action?.reason, 'Timeout');
  v.status.phase = 'Suspended';
  assert.deepEqual(extendedClock(v, T0 + 20_000, 30_000), { remainingMs: 30_000 });
});

test('stop, suspend and resume intents: the phases and desired states the reconcile then drives', () => {
  const r = vm('Running', {});
  assert.deepEqual([requestSuspend(r).desiredState, r.status.phase], ['Suspended', 'Suspending']);
  const s = vm('Suspended', {});
  s.desiredState = 'Suspended';
  assert.deepEqual([requestResume(s).desiredState, s.status.phase], ['Running', 'Scheduled'], 'a suspended VM is placed on its node again');
  const c = vm('Suspending', {});
  c.desiredState = 'Suspended';
  assert.deepEqual([requestResume(c).desiredState, c.status.phase], ['Running', 'Suspending'], 'a cancel: the reconcile moves it back to Running');
  const s2 = vm('Suspended', {});
  assert.deepEqual([requestStop(s2).desiredState, s2.status.phase], ['Stopped', 'Suspended'], 'the reconcile discards the memory, then Stopped');
  const run = vm('Running', {});
  assert.equal(requestStop(run).status.phase, 'Stopping');
});
