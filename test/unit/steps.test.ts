/** The step runner (src/core/steps.ts): order, skips, early end, undo in reverse, errors naming their step, swaps. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import { DONE, failedStep, insertAfter, runSteps, swapSteps, type Step } from '../../src/core/steps.js';

interface Ctx {
  log: string[];
}

const step = (name: string, extra: Partial<Step<Ctx>> = {}): Step<Ctx> => ({
  name,
  run: (c) => {
    c.log.push(`run ${name}`);
  },
  undo: (c) => {
    c.log.push(`undo ${name}`);
  },
  ...extra,
});

test('runs steps in order, skips those whose `when` is false, and times each', async () => {
  const c: Ctx = { log: [] };
  const r = await runSteps('p', [step('a'), step('b', { when: () => false }), step('c')], c);
  assert.deepEqual(c.log, ['run a', 'run c']);
  assert.deepEqual(
    r.timings.map((t) => [t.name, t.skipped === true]),
    [
      ['a', false],
      ['b', true],
      ['c', false],
    ],
  );
  assert.ok(r.timings.every((t) => t.ms >= 0));
  assert.equal(r.doneAt, undefined);
});

test('a step returning DONE ends the pipeline with success; nothing is undone', async () => {
  const c: Ctx = { log: [] };
  const r = await runSteps('p', [step('a'), step('b', { run: (x) => (x.log.push('run b'), DONE) }), step('c')], c);
  assert.deepEqual(c.log, ['run a', 'run b']);
  assert.equal(r.doneAt, 'b');
});

test('a failure undoes the failing step and every completed one in reverse, and names the step', async () => {
  const c: Ctx = { log: [] };
  const boom = step('c', {
    run: (x) => {
      x.log.push('run c');
      throw new MvmError(ErrorCodes.VMM_ERROR, 'no tap', { details: { tap: 'tap0' } });
    },
  });
  const skipped = step('b', { when: () => false });
  await assert.rejects(runSteps('start of vm-1', [step('a'), skipped, boom, step('d')], c), (e: unknown) => {
    assert.ok(e instanceof MvmError);
    assert.equal(e.code, ErrorCodes.VMM_ERROR);
    assert.equal(e.message, 'start of vm-1 failed at step "c": no tap');
    assert.equal(e.details.step, 'c');
    assert.equal(e.details.tap, 'tap0', 'details of the cause are kept');
    assert.equal(failedStep(e), 'c');
    return true;
  });
  assert.deepEqual(c.log, ['run a', 'run c', 'undo c', 'undo a']);
});

test('an undo that fails is reported and the others still run; the original error is raised', async () => {
  const c: Ctx = { log: [] };
  const undoErrors: string[] = [];
  const badUndo = step('b', {
    undo: () => {
      throw new Error('cannot remove cgroup');
    },
  });
  const fail = step('c', {
    run: () => {
      throw new Error('spawn failed');
    },
  });
  await assert.rejects(
    runSteps('p', [step('a'), badUndo, fail], c, { onUndoError: (s, e) => undoErrors.push(`${s}: ${e.message}`) }),
    (e: unknown) => e instanceof MvmError && e.code === ErrorCodes.INTERNAL && e.message === 'p failed at step "c": spawn failed',
  );
  assert.deepEqual(undoErrors, ['b: cannot remove cgroup']);
  assert.deepEqual(c.log, ['run a', 'run b', 'undo c', 'undo a']);
});

test('a nested pipeline keeps its inner step: outer.inner', async () => {
  const inner = [step('x'), step('y', { run: () => Promise.reject(new MvmError(ErrorCodes.TIMEOUT, 'slow')) })];
  const outer = [step('launch', { run: (c) => runSteps('inner', inner, c).then(() => undefined) })];
  await assert.rejects(runSteps('outer', outer, { log: [] }), (e: unknown) => {
    assert.ok(e instanceof MvmError);
    assert.equal(e.code, ErrorCodes.TIMEOUT);
    assert.equal(e.details.step, 'launch.y');
    assert.equal(e.message, 'outer failed at step "launch": inner failed at step "y": slow');
    return true;
  });
});

test('passThrough errors are raised untouched (after undo)', async () => {
  class Requeue extends Error {}
  const c: Ctx = { log: [] };
  const requeue = new Requeue('conflict');
  const s = step('b', {
    run: () => {
      throw requeue;
    },
  });
  await assert.rejects(runSteps('p', [step('a'), s], c, { passThrough: (e) => e instanceof Requeue }), (e: unknown) => e === requeue);
  assert.deepEqual(c.log, ['run a', 'undo b', 'undo a']);
});

test('swapSteps replaces and drops by name; insertAfter inserts; unknown or duplicate names are refused', async () => {
  const base = [step('a'), step('b'), step('c')];
  assert.deepEqual(
    swapSteps(base, { b: step('B') }).map((s) => s.name),
    ['a', 'B', 'c'],
  );
  assert.deepEqual(
    swapSteps(base, { a: undefined }).map((s) => s.name),
    ['b', 'c'],
  );
  assert.deepEqual(
    insertAfter(base, 'b', step('b2'), step('b3')).map((s) => s.name),
    ['a', 'b', 'b2', 'b3', 'c'],
  );
  assert.throws(() => swapSteps(base, { z: step('z') }), /no step named z to swap \(steps: a, b, c\)/);
  assert.throws(() => insertAfter(base, 'z', step('q')), /no step named z to insert after/);
  await assert.rejects(runSteps('p', [step('a'), step('a')], { log: [] }), /pipeline p has two steps named a/);
});
