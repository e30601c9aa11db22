/** Unit tests of the core: quantities, the phase machine, legal actions, error mapping. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ACTION_PHASES, PHASES, TRANSITIONS, assertAction, assertTransition, canTransition, parseQuantityMiB, validateSpec, type Action } from '../../src/core/microvm.js';
import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import { HTTP_STATUS, toProblem } from '../../src/gateway/problem.js';
import { parseDuration } from '../../src/core/service.js';
import { vmFixture } from '../contract/store.contract.js';

test('quantities', () => {
  assert.equal(parseQuantityMiB('128Mi', 'memory'), 128);
  assert.equal(parseQuantityMiB('8Gi', 'memory'), 8192);
  for (const bad of ['0Mi', '1GB', '1.5Gi', '', 'Gi', '-1Gi']) {
    assert.throws(() => parseQuantityMiB(bad, 'memory'), (e: unknown) => e instanceof MvmError && e.violations[0]?.field === 'memory');
  }
});

test('spec ranges the schema cannot express', () => {
  for (const memory of ['128Mi', '1Gi', '2Gi', '8Gi']) validateSpec({ vcpu: 1, memory });
  for (const memory of ['127Mi', '64Mi', '9Gi', '8193Mi']) {
    assert.throws(() => validateSpec({ vcpu: 1, memory }), (e: unknown) => e instanceof MvmError && e.code === 'VALIDATION_FAILED' && e.violations[0]?.field === 'memory');
  }
  assert.throws(
    () => validateSpec({ vcpu: 1, memory: '128Mi', networkInterfaces: [{ name: 'eth0' }, { name: 'eth0' }] }),
    (e: unknown) => e instanceof MvmError && e.violations[0]?.field === 'networkInterfaces[1].name',
  );
});

// The phase machine as specified (ADR 0002), written out independently of src/core/microvm.ts:
// from -> the phases it may move to (staying in the same phase is always allowed).
const EXPECTED_NEXT: Record<(typeof PHASES)[number], readonly string[]> = {
  Pending: ['Scheduled', 'Stopped', 'Failed', 'Deleting'],
  Scheduled: ['Starting', 'Stopped', 'Failed', 'Deleting', 'Pending'],
  Starting: ['Running', 'Stopping', 'Failed', 'Deleting', 'Stopped'],
  Running: ['Stopping', 'Paused', 'Suspending', 'Failed', 'Deleting', 'Stopped', 'Starting'],
  Paused: ['Running', 'Suspending', 'Stopping', 'Failed', 'Deleting', 'Stopped'],
  // Suspend to disk (ADR 0035): a resume cancels a suspend under way, restores a suspended VM.
  Suspending: ['Suspended', 'Running', 'Paused', 'Starting', 'Failed', 'Deleting', 'Stopping'],
  Suspended: ['Scheduled', 'Starting', 'Stopped', 'Failed', 'Deleting'],
  Stopping: ['Stopped', 'Failed', 'Deleting'],
  Stopped: ['Pending', 'Scheduled', 'Starting', 'Deleting', 'Failed'],
  Failed: ['Pending', 'Scheduled', 'Starting', 'Deleting', 'Stopped', 'Running'],
  Deleting: [],
};

const illegal = (details: Record<string, unknown>) => (e: unknown): boolean => {
  assert.ok(e instanceof MvmError, `an MvmError, got ${String(e)}`);
  assert.equal(e.code, ErrorCodes.ILLEGAL_TRANSITION);
  assert.deepEqual({ ...(e.details as Record<string, unknown>) }, details);
  return true;
};

test('phase machine: exactly the specified moves are legal, every other one is ILLEGAL_TRANSITION', () => {
  assert.deepEqual(Object.keys(TRANSITIONS).sort(), [...PHASES].sort(), 'one row per phase');
  for (const from of PHASES) {
    assert.deepEqual([...TRANSITIONS[from]].sort(), [...EXPECTED_NEXT[from]].sort(), `moves out of ${from}`);
    for (const to of PHASES) {
      const legal = from === to || EXPECTED_NEXT[from].includes(to);
      assert.equal(canTransition(from, to), legal, `${from} -> ${to}`);
      if (legal) assert.doesNotThrow(() => assertTransition(from, to), `${from} -> ${to}`);
      else assert.throws(() => assertTransition(from, to), illegal({ from, to }), `${from} -> ${to}`);
    }
  }
  // Deleting is terminal: nothing but itself.
  assert.deepEqual(PHASES.filter((to) => canTransition('Deleting', to)), ['Deleting']);
});

// The user actions and the phases each is legal in, as specified.
const EXPECTED_ACTION_PHASES: Record<Action, readonly string[]> = {
  start: ['Stopped', 'Failed', 'Suspended'],
  stop: ['Pending', 'Scheduled', 'Starting', 'Running', 'Paused', 'Suspended'],
  delete: PHASES,
  update: ['Stopped', 'Failed'],
  pause: ['Running'],
  resume: ['Paused', 'Suspending', 'Suspended'],
  snapshot: ['Running', 'Paused'],
  suspend: ['Running', 'Paused'],
  timeout: ['Pending', 'Scheduled', 'Starting', 'Running', 'Paused', 'Suspending', 'Suspended'],
};

test('actions are checked against the phase: legal exactly in the specified phases', () => {
  assert.deepEqual(Object.keys(ACTION_PHASES).sort(), Object.keys(EXPECTED_ACTION_PHASES).sort());
  for (const [action, phases] of Object.entries(EXPECTED_ACTION_PHASES) as Array<[Action, readonly string[]]>) {
    assert.deepEqual([...ACTION_PHASES[action]].sort(), [...phases].sort(), action);
    for (const phase of PHASES) {
      const vm = vmFixture({ status: { phase, conditions: [] } });
      if (phases.includes(phase)) assert.doesNotThrow(() => assertAction(vm, action), `${action} in ${phase}`);
      else {
        assert.throws(() => assertAction(vm, action), illegal({ id: vm.id, phase, action, allowedPhases: ACTION_PHASES[action] }), `${action} in ${phase}`);
        assert.throws(() => assertAction(vm, action), (e: unknown) => e instanceof MvmError && e.message.includes(`in phase ${phase}`));
      }
    }
  }
});

test('every error code maps to an HTTP status once; problem bodies carry code and fields', () => {
  for (const code of Object.values(ErrorCodes)) assert.ok(HTTP_STATUS[code] >= 400, code);
  assert.equal(HTTP_STATUS.NOT_FOUND, 404);
  const p = toProblem(new MvmError('VALIDATION_FAILED', 'vcpu: too big', { violations: [{ field: 'vcpu', message: 'too big' }] }), '/x');
  assert.equal(p.status, 400);
  assert.equal(p.code, 'VALIDATION_FAILED');
  assert.deepEqual(p.errors, [{ field: 'vcpu', message: 'too big' }]);
});

test('durations', () => {
  assert.equal(parseDuration('30s', 't'), 30000);
  assert.equal(parseDuration('500ms', 't'), 500);
  assert.equal(parseDuration('2m', 't'), 120000);
  assert.equal(parseDuration('5', 't'), 5000);
  assert.throws(() => parseDuration('soon', 'timeout'), (e: unknown) => e instanceof MvmError && e.violations[0]?.field === 'timeout');
});
