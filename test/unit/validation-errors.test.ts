/**
 * Validation errors name the field, also for a value outside a union of literals (which Ajv
 * reports only as one `const` error per branch plus an `anyOf`).
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import AjvModule from 'ajv';
import { ajvToMvmError } from '../../src/gateway/problem.js';
import { CreateMicroVMRequest } from '../../src/core/schema.js';

const Ajv = AjvModule.default ?? AjvModule;
const ajv = new Ajv({ allErrors: true, strict: false });
const validate = ajv.compile(CreateMicroVMRequest);

function violations(body: unknown): Array<{ field: string; message: string }> {
  assert.equal(validate(body), false, 'the body must be invalid');
  const e = ajvToMvmError(validate.errors ?? [], 'body');
  assert.equal(e.code, 'VALIDATION_FAILED');
  return e.violations.map((x) => ({ field: x.field, message: x.message }));
}

test('a value outside a union of literals names the field and the allowed values', () => {
  const v = violations({ name: 'a', vcpu: 1, memory: '128Mi', tolerations: [{ key: 'k', operator: 'Sometimes' }] });
  assert.deepEqual(v, [{ field: 'tolerations[0].operator', message: 'must be one of "Equal", "Exists"' }]);
});

test('a specific branch error is kept and not doubled by the union summary', () => {
  const v = violations({ name: 'a', vcpu: 'two', memory: '128Mi' });
  assert.equal(v.length, 1, JSON.stringify(v));
  assert.equal(v[0]!.field, 'vcpu');
});

test('an unknown field is named', () => {
  const v = violations({ name: 'a', vcpu: 1, memory: '128Mi', colour: 'red' });
  assert.deepEqual(v, [{ field: 'colour', message: 'unknown field' }]);
});
