/** Unit tests of the core: quantities, the phase machine, legal actions, error mapping. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ACTION_PHASES, TRANSITIONS, assertAction, assertTransition, canTransition, parseQuantityMiB, validateSpec } from '../../src/core/microvm.js';
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

test('phase machine: Deleting is terminal, illegal moves are ILLEGAL_TRANSITION', () => {
  assert.deepEqual(TRANSITIONS.Deleting, []);
  assert.ok(canTransition('Pending', 'Scheduled'));
  assert.ok(!canTransition('Stopped', 'Running'));
  assert.throws(() => assertTransition('Deleting', 'Running'), (e: unknown) => e instanceof MvmError && e.code === 'ILLEGAL_TRANSITION');
  // Every phase an action is legal in is reachable in the table.
  for (const phases of Object.values(ACTION_PHASES)) for (const p of phases) assert.ok(p in TRANSITIONS);
});

test('actions are checked against the phase', () => {
  const vm = vmFixture({ status: { phase: 'Stopped', conditions: [] } });
  assertAction(vm, 'start');
  assert.throws(() => assertAction(vm, 'stop'), (e: unknown) => e instanceof MvmError && e.code === 'ILLEGAL_TRANSITION' && /Stopped/.test(e.message));
  assert.throws(() => assertAction({ ...vm, status: { phase: 'Running', conditions: [] } }, 'update'));
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
