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

test('host ports: MVM_HOST_PORT_RANGE default 30000-32767, MVM_HOST_PORT_ADDRESS default the network gateway; bad values name the variable', () => {
  assert.deepEqual(loadConfig({}).hostPorts, { min: 30000, max: 32767, addresses: ['10.100.0.1'], addressDefault: true });
  assert.deepEqual(loadConfig({ MVM_NET_GATEWAY: '10.7.0.1' }).hostPorts.addresses, ['10.7.0.1']);
  assert.deepEqual(loadConfig({ MVM_HOST_PORT_RANGE: '40000-40010', MVM_HOST_PORT_ADDRESS: '192.0.2.1, 0.0.0.0' }).hostPorts, { min: 40000, max: 40010, addresses: ['192.0.2.1', '0.0.0.0'], addressDefault: false });
  assert.deepEqual(loadConfig({ MVM_HOST_PORT_RANGE: '31000' }).hostPorts.max, 31000);
  for (const bad of ['0-10', '30000-70000', '32767-30000', 'high', '30000-']) {
    assert.throws(() => loadConfig({ MVM_HOST_PORT_RANGE: bad }), (e: Error) => e.message.includes('MVM_HOST_PORT_RANGE') && e.message.includes(JSON.stringify(bad)));
  }
  for (const bad of ['127.0.0.1', '::1', 'example.com', '10.0.0.256']) {
    assert.throws(() => loadConfig({ MVM_HOST_PORT_ADDRESS: bad }), (e: Error) => e.message.includes('MVM_HOST_PORT_ADDRESS') && e.message.includes(JSON.stringify(bad)));
  }
});

test('TLS: MVM_TLS_CERT and MVM_TLS_KEY go together; MVM_TLS_SELF_SIGNED alone; none = plain HTTP', () => {
  assert.equal(loadConfig({}).tls, undefined);
  assert.deepEqual(loadConfig({ MVM_TLS_CERT: '/c.pem', MVM_TLS_KEY: '/k.pem' }).tls, { certFile: '/c.pem', keyFile: '/k.pem', selfSigned: false, reloadMs: 5000 });
  assert.deepEqual(loadConfig({ MVM_TLS_SELF_SIGNED: '1', MVM_TLS_RELOAD_SECONDS: '0.5' }).tls, { selfSigned: true, reloadMs: 500 });
  assert.throws(() => loadConfig({ MVM_TLS_CERT: '/c.pem' }), /MVM_TLS_CERT and MVM_TLS_KEY/);
  assert.throws(() => loadConfig({ MVM_TLS_KEY: '/k.pem' }), /MVM_TLS_CERT and MVM_TLS_KEY/);
  assert.throws(() => loadConfig({ MVM_TLS_SELF_SIGNED: '1', MVM_TLS_RELOAD_SECONDS: 'often' }), /MVM_TLS_RELOAD_SECONDS/);
});
