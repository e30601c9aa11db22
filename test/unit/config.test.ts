import assert from 'node:assert/strict';
import { test } from 'node:test';
import { loadConfig } from '../../src/config.js';

test('MVM_CPU_OVERCOMMIT: default 16, a positive number, anything else a clear error naming the variable', () => {
  assert.equal(loadConfig({}).cpuOvercommit, 16);
  assert.equal(loadConfig({ MVM_CPU_OVERCOMMIT: '32' }).cpuOvercommit, 32);
  assert.equal(loadConfig({ MVM_CPU_OVERCOMMIT: '1.5' }).cpuOvercommit, 1.5);
  for (const bad of ['0', '-2', 'lots', 'NaN']) {
    assert.throws(() => loadConfig({ MVM_CPU_OVERCOMMIT: bad }), (e: Error) => e.message.includes('MVM_CPU_OVERCOMMIT') && e.message.includes(JSON.stringify(bad)));
  }
});
