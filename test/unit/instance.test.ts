/**
 * Instance names (ADR 0027): validation, derivation from the data dir and the role, the names of
 * every host-global object, the configuration defaults that follow, and the host register's
 * refusals (src/network/instance-claim.ts, with a register directory and address list of its own).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadConfig } from '../../src/config.js';
import { MvmError } from '../../src/core/errors.js';
import { INSTANCE_PATTERN, instanceForDataDir, instanceNames, subnetCandidates, validateInstanceName } from '../../src/instance.js';
import { claimInstance, type InstanceClaim } from '../../src/network/instance-claim.js';
import { cidrsOverlap, parseCidr } from '../../src/network/ipv4.js';
import { procUsage } from '../../src/vmm/proc.js';

const namesField = (field: string, value?: string) => (e: Error) => e.message.includes(field) && (value === undefined || e.message.includes(JSON.stringify(value)));

test('MVM_INSTANCE: 1-11 characters of a-z, 0-9 and inner dashes; anything else an error naming the variable and the value', () => {
  for (const ok of ['mvm', 'a', 'node-a', 'x1', 'abcdefghijk', '0']) assert.equal(validateInstanceName(ok), ok);
  for (const bad of ['', 'A', 'node_a', '-a', 'a-', 'abcdefghijkl', 'a.b', 'a b', 'ä']) {
    assert.throws(() => validateInstanceName(bad), namesField('MVM_INSTANCE', bad), bad);
    assert.throws(() => loadConfig({ MVM_INSTANCE: bad === '' ? '-' : bad }), namesField('MVM_INSTANCE'), bad);
  }
});

test('every object name of the longest instance is valid where it goes: bridge ≤ 15 characters, nft table identifier, unambiguous namespace prefix', () => {
  for (const inst of ['abcdefghijk', 'a-b', 'mvm', 'agent', '9z']) {
    const n = instanceNames(inst);
    assert.ok(n.bridge.length <= 15 && /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/.test(n.bridge), n.bridge);
    assert.match(n.table, /^[A-Za-z][A-Za-z0-9_]{0,30}$/);
    assert.ok(n.netnsPrefix.endsWith('.'), n.netnsPrefix);
  }
  // The default instance keeps the names the service always had.
  assert.deepEqual(instanceNames('mvm'), {
    instance: 'mvm',
    table: 'mvm',
    bridge: 'fc-br0',
    netnsPrefix: 'mvm.',
    cgroupParent: 'mvm',
    dataDir: '/var/lib/mvm',
    subnet: { subnet: '10.100.0.0/16', gateway: '10.100.0.1' },
  });
  assert.deepEqual(
    { ...instanceNames('node-a') },
    { instance: 'node-a', table: 'mvm_node_a', bridge: 'mvm-node-a', netnsPrefix: 'mvm-node-a.', cgroupParent: 'mvm-node-a', dataDir: '/var/lib/mvm-node-a' },
  );
  // No instance's prefix is a prefix of another's namespaces ('.' cannot occur in a name).
  assert.ok(!`${instanceNames('a-b').netnsPrefix}vm`.startsWith(instanceNames('a').netnsPrefix));
  // Distinct names, distinct objects (the '-' → '_' of table names cannot merge two names: '_' is not allowed).
  const all = ['a', 'a-b', 'ab', 'b-a', 'mvm', 'agent'].map(instanceNames);
  for (const k of ['table', 'bridge', 'netnsPrefix', 'cgroupParent', 'dataDir'] as const) assert.equal(new Set(all.map((n) => n[k])).size, all.length, k);
});

test('without MVM_INSTANCE the data dir names the instance, and without either the role does', () => {
  assert.equal(instanceForDataDir('/var/lib/mvm'), 'mvm');
  assert.equal(instanceForDataDir('/var/lib/mvm/'), 'mvm');
  assert.equal(instanceForDataDir('/var/lib/mvm-b2'), 'b2');
  const d = instanceForDataDir('/tmp/mvm-test-xyz');
  assert.match(d, /^d[0-9a-f]{6}$/);
  assert.ok(INSTANCE_PATTERN.test(d));
  assert.equal(instanceForDataDir('/tmp/mvm-test-xyz'), d, 'stable');
  assert.notEqual(instanceForDataDir('/tmp/mvm-test-xyz2'), d);
  assert.match(instanceForDataDir('/var/lib/mvm-Bad_Name'), /^d[0-9a-f]{6}$/);

  const standalone = loadConfig({});
  assert.equal(standalone.instance, 'mvm');
  assert.equal(standalone.dataDir, '/var/lib/mvm');
  assert.deepEqual([standalone.network.bridge, standalone.network.subnet, standalone.network.gateway, standalone.network.table, standalone.cgroupParent], ['fc-br0', '10.100.0.0/16', '10.100.0.1', 'mvm', 'mvm']);
  assert.deepEqual(standalone.listen, { host: '127.0.0.1', port: 8080 });
  assert.deepEqual(standalone.gateway?.grpcListen, { host: '127.0.0.1', port: 9090 });

  const agent = loadConfig({}, { role: 'agent' });
  assert.equal(agent.instance, 'agent');
  assert.equal(agent.dataDir, '/var/lib/mvm-agent');
  assert.deepEqual([agent.network.bridge, agent.network.table, agent.cgroupParent, agent.network.netnsPrefix], ['mvm-agent', 'mvm_agent', 'mvm-agent', 'mvm-agent.']);
  assert.equal(agent.network.subnet, undefined, 'picked from the pool at start');

  // The API in cluster mode does not take the standalone's ports (issue 17: EADDRINUSE on 127.0.0.1:9090).
  const api = loadConfig({ MVM_STORE: 'kubernetes' });
  assert.equal(api.instance, 'api');
  assert.deepEqual(api.listen, { host: '127.0.0.1', port: 8180 });
  assert.deepEqual(api.gateway?.grpcListen, { host: '127.0.0.1', port: 9190 });

  // Another standalone instance: its own data dir and free ports.
  const b = loadConfig({ MVM_INSTANCE: 'b' });
  assert.equal(b.dataDir, '/var/lib/mvm-b');
  assert.equal(b.listen.port, 0);
  assert.equal(b.gateway?.grpcListen?.port, 0);
  assert.equal(loadConfig({ MVM_DATA_DIR: '/var/lib/mvm-b' }).instance, 'b');
  assert.equal(loadConfig({ MVM_DATA_DIR: '/tmp/mvm-test-xyz' }).instance, d);
  assert.equal(loadConfig({ MVM_DATA_DIR: '/tmp/mvm-test-xyz' }).cgroupParent, `mvm-${d}`);
});

test('explicit settings override what the instance derives; MVM_NET_GATEWAY defaults to the subnet first host', () => {
  const c = loadConfig({ MVM_INSTANCE: 'b', MVM_NET_BRIDGE: 'br-x', MVM_CGROUP_PARENT: 'custom/b', MVM_NET_SUBNET: '10.77.0.0/24', MVM_DATA_DIR: '/srv/b', MVM_NET_HOST_NETNS: 'hostb', MVM_LISTEN: '127.0.0.1:7000', MVM_GRPC_LISTEN: 'off' });
  assert.deepEqual([c.instance, c.network.bridge, c.cgroupParent, c.network.subnet, c.network.gateway, c.dataDir, c.network.hostNetns, c.listen.port, c.gateway?.grpcListen], ['b', 'br-x', 'custom/b', '10.77.0.0/24', '10.77.0.1', '/srv/b', 'hostb', 7000, undefined]);
  assert.equal(loadConfig({ MVM_NET_SUBNET: '10.200.0.0/16' }).network.gateway, '10.200.0.1', 'not the default network gateway 10.100.0.1');
  assert.equal(loadConfig({ MVM_NET_SUBNET: '10.200.0.0/16', MVM_NET_GATEWAY: '10.200.9.9' }).network.gateway, '10.200.9.9');
  assert.throws(() => loadConfig({ MVM_INSTANCE: 'b', MVM_NET_GATEWAY: '10.1.0.1' }), namesField('MVM_NET_GATEWAY'));
  assert.throws(() => loadConfig({ MVM_NET_SUBNET: '10.1.0.1/16' }), namesField('MVM_NET_SUBNET', '10.1.0.1/16'));
  assert.throws(() => loadConfig({ MVM_NET_BRIDGE: 'a-bridge-name-too-long' }), namesField('MVM_NET_BRIDGE', 'a-bridge-name-too-long'));
  assert.throws(() => loadConfig({ MVM_NET_HOST_NETNS: '../x' }), namesField('MVM_NET_HOST_NETNS', '../x'));
});

test('the subnet pool: 256 distinct /20s of 10.112.0.0/12, in an order fixed by the name', () => {
  const a = subnetCandidates('a');
  assert.equal(a.length, 256);
  assert.equal(new Set(a).size, 256);
  const pool = parseCidr('10.112.0.0/12')!;
  for (const s of a) {
    const c = parseCidr(s, { strict: true })!;
    assert.equal(c.prefix, 20);
    assert.ok(cidrsOverlap(pool, c));
    assert.ok(!cidrsOverlap(parseCidr('10.100.0.0/16')!, c), 'never the default instance subnet');
  }
  assert.deepEqual(subnetCandidates('a'), a);
  assert.notEqual(subnetCandidates('b')[0], a[0]);
});

// ---------------------------------------------------------------------------
// The host register

function tmp(): string {
  return mkdtempSync(join(tmpdir(), 'mvm-claim-'));
}

/** A claim of another live process (our parent), as a second service would leave it. */
function foreignClaim(dir: string, c: Partial<InstanceClaim> & { instance: string }): void {
  mkdirSync(dir, { recursive: true });
  const pid = process.ppid;
  writeFileSync(join(dir, `${c.instance}.json`), JSON.stringify({ pid, pidStart: procUsage(pid)?.startTicks, dataDir: '/srv/other', hostNetns: '', startedAt: '', ...c }));
}

const refusedFor = (field: string) => (e: unknown) => e instanceof MvmError && e.code === 'CONFLICT' && e.violations[0]?.field === field && e.message.startsWith(`${field}:`);

test('claim: a free subnet from the pool (skipping networks in use), recorded in the data dir and kept on restart; release drops the claim', async () => {
  const dir = tmp();
  const data = tmp();
  try {
    const first = subnetCandidates('node-a')[0]!;
    const held = await claimInstance({ instance: 'node-a', dataDir: data, dir, network: { bridge: 'mvm-node-a' }, usedNetworks: async () => [{ cidr: first.replace('.0/20', '.7/24'), kind: 'address' }, { cidr: '10.0.0.0/8', kind: 'route' }] });
    assert.equal(held.subnet, subnetCandidates('node-a')[1], 'the first candidate overlaps an address in use; a broader route (a VPN) is no collision');
    assert.equal(held.gateway, held.subnet!.replace('.0/20', '.1'));
    assert.deepEqual(JSON.parse(readFileSync(join(data, 'instance.json'), 'utf8')), { instance: 'node-a', subnet: held.subnet, gateway: held.gateway });
    assert.ok(existsSync(join(dir, 'node-a.json')));
    held.release();
    assert.ok(!existsSync(join(dir, 'node-a.json')));
    // A restart keeps the recorded subnet although the first candidate is free now (the VMs keep their addresses).
    const again = await claimInstance({ instance: 'node-a', dataDir: data, dir, network: { bridge: 'mvm-node-a' }, usedNetworks: async () => [] });
    assert.equal(again.subnet, held.subnet);
    again.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(data, { recursive: true, force: true });
  }
});

test('claim: refused with an error naming the setting: a name, bridge or subnet of another live instance, a data dir of another instance', async () => {
  const dir = tmp();
  const data = tmp();
  try {
    foreignClaim(dir, { instance: 'x', bridge: 'mvm-x', subnet: '10.50.0.0/16' });
    await assert.rejects(claimInstance({ instance: 'x', dataDir: data, dir, usedNetworks: async () => [] }), refusedFor('MVM_INSTANCE'));
    await assert.rejects(claimInstance({ instance: 'y', dataDir: data, dir, network: { bridge: 'mvm-x' }, usedNetworks: async () => [] }), refusedFor('MVM_NET_BRIDGE'));
    await assert.rejects(claimInstance({ instance: 'y', dataDir: data, dir, network: { bridge: 'mvm-y', subnet: '10.50.128.0/20' }, usedNetworks: async () => [] }), refusedFor('MVM_NET_SUBNET'));
    // An address or route already in the namespace (a LAN, another bridge) refuses an explicit subnet too.
    await assert.rejects(claimInstance({ instance: 'y', dataDir: data, dir, network: { bridge: 'mvm-y', subnet: '192.168.0.0/16' }, usedNetworks: async () => [{ cidr: '192.168.1.10/24', kind: 'address' }] }), refusedFor('MVM_NET_SUBNET'));
    await assert.rejects(claimInstance({ instance: 'y', dataDir: data, dir, network: { bridge: 'mvm-y', subnet: '192.168.0.0/16' }, usedNetworks: async () => [{ cidr: '192.168.7.0/24', kind: 'route' }] }), refusedFor('MVM_NET_SUBNET'));
    // Another network namespace: the same bridge name and subnet are no collision there.
    const other = await claimInstance({ instance: 'y', dataDir: data, dir, hostNetns: 'elsewhere', network: { bridge: 'mvm-x', subnet: '10.50.0.0/16' }, usedNetworks: async () => [] });
    other.release();
    // The data dir now belongs to y.
    await assert.rejects(claimInstance({ instance: 'z', dataDir: data, dir, usedNetworks: async () => [] }), refusedFor('MVM_INSTANCE'));
    // A live process on the same data dir under another name.
    foreignClaim(dir, { instance: 'w', dataDir: data });
    await assert.rejects(claimInstance({ instance: 'y', dataDir: data, dir, usedNetworks: async () => [] }), refusedFor('MVM_DATA_DIR'));
    // Claims of processes that are gone (a kill -9, a reused pid) are void.
    foreignClaim(dir, { instance: 'w', dataDir: data, pidStart: 1 });
    foreignClaim(dir, { instance: 'x', bridge: 'mvm-x', subnet: '10.50.0.0/16', pid: 2 ** 22 + 1 });
    const ok = await claimInstance({ instance: 'y', dataDir: data, dir, network: { bridge: 'mvm-x', subnet: '10.50.0.0/16' }, usedNetworks: async () => [] });
    ok.release();
  } finally {
    rmSync(dir, { recursive: true, force: true });
    rmSync(data, { recursive: true, force: true });
  }
});
