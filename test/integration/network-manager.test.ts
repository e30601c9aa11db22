/**
 * CniNetworkManager with real CNI plugins, real taps, tc redirects and nftables,
 * all inside namespaces this test creates (see support/netns-world.ts); guests are
 * stood in for by QEMU hubs run in each VM's namespace with wrapInNetns.
 */
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import { kernelIpArgs, type NetworkPolicy, type NicAttachment } from '../../src/core/ports/network.js';
import { run } from '../../src/network/exec.js';
import { CniNetworkManager, stableMac } from '../../src/network/manager.js';
import { nftNames } from '../../src/network/policy.js';
import { NetnsWorld, canRunNetns, hasQemu, type Guest } from '../support/netns-world.js';

const env = canRunNetns();
const skip = !env.ok ? env.why : !hasQemu() ? 'qemu-system-x86_64 missing (guest stand-in)' : false;

const isErr = (code: string, field?: string) => (e: unknown) => {
  assert.ok(e instanceof MvmError, `expected MvmError, got ${String(e)}`);
  assert.equal(e.code, code, e.message);
  if (field) assert.ok(e.violations.some((v) => v.field === field), `no violation on ${field}: ${JSON.stringify(e.violations)}`);
  return true;
};

describe('network manager (real CNI, taps, nftables in private namespaces)', { skip, concurrency: false }, () => {
  const w = new NetnsWorld('m');
  let m: CniNetworkManager;
  const vm: Record<string, NicAttachment[]> = {};
  const g: Record<string, Guest> = {};
  const OUT_PORT = 7100;

  const mk = () => new CniNetworkManager({ dataDir: w.dataDir, networks: [w.networkConfig()], hostNetns: w.hostNs, netnsPrefix: w.netnsPrefix });
  const hostNft = async () => (await w.exec(w.hostNs, ['nft', 'list', 'ruleset'])).stdout;

  before(async () => {
    await w.start();
    m = mk();
    await w.serve(w.outsideNs, OUT_PORT, 'outside');
  });
  after(() => w.cleanup());

  test('setup: netns, CNI veth, tap with tc redirect; guest traffic flows through the tap', async () => {
    vm.a = await m.setup({ id: 'vm-a', tenant: 't1', hostname: 'alpha', nics: [{ name: 'eth0' }] });
    vm.b = await m.setup({ id: 'vm-b', tenant: 't1', nics: [{ name: 'eth0' }] });
    vm.c = await m.setup({ id: 'vm-c', tenant: 't2', nics: [{ name: 'eth0' }] });
    const a = vm.a[0]!;
    assert.equal(a.tap, 'tap0');
    assert.equal(a.gateway, w.gateway);
    assert.equal(a.prefix, 24);
    assert.match(a.ip, /^10\.123\.0\.\d+$/);
    assert.equal(a.mac, stableMac('vm-a', 'eth0'));
    assert.ok(existsSync(a.netnsPath));
    assert.equal(new Set([vm.a, vm.b, vm.c].map((x) => x[0]!.ip)).size, 3);
    assert.equal(kernelIpArgs(vm.a, { hostname: 'alpha' }), `ip=${a.ip}::${w.gateway}:255.255.255.0:alpha:eth0:off`);
    // The CNI interface carries the guest MAC; the tap and both tc redirects exist.
    const links = JSON.parse((await run('ip', ['-n', a.netns, '-j', 'link', 'show'])).stdout) as Array<{ ifname: string; address: string }>;
    assert.equal(links.find((l) => l.ifname === 'eth0')?.address, a.mac);
    assert.ok(links.some((l) => l.ifname === 'tap0'));
    for (const dev of ['eth0', 'tap0']) {
      const f = (await run('tc', ['-n', a.netns, 'filter', 'show', 'dev', dev, 'parent', 'ffff:'])).stdout;
      assert.match(f, /mirred \(Egress Redirect to device (tap0|eth0)\)/);
    }
    for (const [k, atts] of Object.entries(vm)) {
      g[k] = await w.guest(k, atts);
      await w.serve(g[k]!.ns, 7000, k);
    }
    const st = await m.stats('vm-a');
    assert.equal(st[0]?.device, 'tap0');
  });

  test('same tenant reaches, other tenants and the outside are dropped', async () => {
    assert.equal(await w.tcp(g.a!.ns, g.b!.ip, 7000), 'OK:b');
    assert.equal(await w.tcp(g.b!.ns, g.a!.ip, 7000), 'OK:a');
    assert.equal(await w.tcp(g.c!.ns, g.a!.ip, 7000), 'TIMEOUT');
    assert.equal(await w.tcp(g.a!.ns, g.c!.ip, 7000), 'TIMEOUT');
    assert.equal(await w.tcp(w.outsideNs, g.a!.ip, 7000), 'TIMEOUT');
    assert.equal(await w.tcp(w.hostNs, g.a!.ip, 7000), 'TIMEOUT');
    // Egress is open by default (replies come back through conntrack).
    assert.equal(await w.tcp(g.a!.ns, w.outsideIp, OUT_PORT), 'OK:outside');
    const st = await m.stats('vm-a');
    assert.ok(st[0]!.rxBytes > 0 && st[0]!.txBytes > 0, JSON.stringify(st));
  });

  test('a spoofed source address from a guest is dropped at its bridge port', async () => {
    const guardDrops = async (): Promise<number> => {
      const t = (await w.exec(w.hostNs, ['nft', 'list', 'chain', 'bridge', 'mvm', nftNames.guardChain('vm-c', 0)])).stdout;
      return [...t.matchAll(/counter packets (\d+)/g)].reduce((s, x) => s + Number(x[1]), 0);
    };
    const before = await guardDrops();
    // vm-c sends from an address that is not its own.
    await run('ip', ['-n', g.c!.ns, 'addr', 'add', '10.123.0.250/24', 'dev', 'eth0']);
    const r = await run(process.execPath, ['-e', `require('net').connect({host:'${g.b!.ip}',port:7000,localAddress:'10.123.0.250'}).on('data',d=>{console.log('OK:'+d);process.exit(0)}).on('error',e=>{console.log(e.code);process.exit(0)});setTimeout(()=>{console.log('TIMEOUT');process.exit(0)},1200)`], { netns: g.c!.ns });
    await run('ip', ['-n', g.c!.ns, 'addr', 'del', '10.123.0.250/24', 'dev', 'eth0']);
    assert.equal(r.stdout.trim(), 'TIMEOUT');
    assert.ok((await guardDrops()) > before, 'the port guard dropped the spoofed frames');
    assert.equal(await w.tcp(g.c!.ns, w.gateway, 1), 'ERR:ECONNREFUSED', 'its genuine address still gets through (a RST from the host)');
  });

  test('a security group opens and closes a port on the live setup', async () => {
    const web = (cidr: string): NetworkPolicy => ({
      securityGroups: [{ id: 'web', tenant: 't2', rules: [{ direction: 'ingress', protocol: 'tcp', ports: '7000', cidr }] }],
    });
    await m.applyPolicy(web('10.250.0.0/24'));
    await m.update('vm-c', { securityGroups: ['web'] });
    assert.equal(await w.tcp(w.outsideNs, g.c!.ip, 7000), 'OK:c');
    assert.equal(await w.tcp(g.a!.ns, g.c!.ip, 7000), 'TIMEOUT', 'the rule only opens 10.250.0.0/24');
    // Change the group itself: applies to the running VM at once.
    await m.applyPolicy(web('0.0.0.0/0'));
    assert.equal(await w.tcp(g.a!.ns, g.c!.ip, 7000), 'OK:c');
    await m.applyPolicy({ securityGroups: [{ id: 'web', tenant: 't2', rules: [] }] });
    assert.equal(await w.tcp(w.outsideNs, g.c!.ip, 7000), 'TIMEOUT');
    assert.equal(await w.tcp(g.a!.ns, g.c!.ip, 7000), 'TIMEOUT');
    // A drop rule beats the same-tenant default.
    await m.applyPolicy({
      securityGroups: [
        { id: 'web', tenant: 't2', rules: [] },
        { id: 'locked', tenant: 't1', rules: [{ direction: 'ingress', protocol: 'any', group: 'locked', action: 'drop' }] },
      ],
    });
    await m.update('vm-b', { securityGroups: ['locked'] });
    await m.update('vm-a', { securityGroups: ['locked'] });
    assert.equal(await w.tcp(g.a!.ns, g.b!.ip, 7000), 'TIMEOUT');
    await m.update('vm-a', { securityGroups: [] });
    await m.update('vm-b', { securityGroups: [] });
    assert.equal(await w.tcp(g.a!.ns, g.b!.ip, 7000), 'OK:b');
  });

  test('egress policy: deny a CIDR, deny all, tenant default', async () => {
    await m.update('vm-a', { egress: { deny: ['10.250.0.0/24'] } });
    assert.equal(await w.tcp(g.a!.ns, w.outsideIp, OUT_PORT), 'TIMEOUT');
    assert.equal(await w.tcp(g.b!.ns, w.outsideIp, OUT_PORT), 'OK:outside', 'only vm-a is restricted');
    await m.update('vm-a', { egress: { default: 'deny' } });
    assert.equal(await w.tcp(g.a!.ns, w.outsideIp, OUT_PORT), 'TIMEOUT');
    assert.equal(await w.tcp(g.a!.ns, g.b!.ip, 7000), 'OK:b', 'same tenant stays reachable under deny-all');
    await m.update('vm-a', { egress: { default: 'deny', allow: ['10.250.0.2/32'] } });
    assert.equal(await w.tcp(g.a!.ns, w.outsideIp, OUT_PORT), 'OK:outside');
    await m.update('vm-a', { egress: null });
    const pol = await m.getPolicy();
    await m.applyPolicy({ ...pol, tenantEgress: { t1: { default: 'deny' } } });
    assert.equal(await w.tcp(g.b!.ns, w.outsideIp, OUT_PORT), 'TIMEOUT');
    await m.applyPolicy({ ...pol, tenantEgress: {} });
    assert.equal(await w.tcp(g.b!.ns, w.outsideIp, OUT_PORT), 'OK:outside');
  });

  test('published port: DNAT from the host and from outside, removed again', async () => {
    await m.update('vm-b', { ports: [{ hostPort: 18080, guestPort: 7000 }] });
    assert.equal(await w.tcp(w.hostNs, w.gateway, 18080), 'OK:b', 'from the host itself');
    assert.equal(await w.tcp(w.outsideNs, w.uplinkHostIp, 18080), 'OK:b', 'from outside through the host');
    assert.equal(await w.tcp(w.outsideNs, g.b!.ip, 7000), 'TIMEOUT', 'publishing does not open the guest address');
    await assert.rejects(m.setup({ id: 'vm-d', tenant: 't2', nics: [{ name: 'eth0' }], ports: [{ hostPort: 18080, guestPort: 80 }] }), isErr(ErrorCodes.CONFLICT, 'ports[0].hostPort'));
    assert.ok(!(await m.list()).includes('vm-d'));
    await m.update('vm-b', { ports: [] });
    assert.notEqual(await w.tcp(w.outsideNs, w.uplinkHostIp, 18080), 'OK:b');
    assert.notEqual(await w.tcp(w.hostNs, w.gateway, 18080), 'OK:b');
  });

  test('invalid input is VALIDATION_FAILED (or UNPROCESSABLE for what the schema cannot state) naming the field, and nothing is half-applied', async () => {
    const before = await hostNft();
    const nsBefore = w.namespaces();
    const policy = await m.getPolicy();
    await assert.rejects(m.setup({ id: 'vm-x', tenant: 't1', nics: [{ name: 'eth0' }], securityGroups: ['nope'] }), isErr(ErrorCodes.VALIDATION_FAILED, 'securityGroups[0]'));
    await assert.rejects(m.setup({ id: 'vm-x', tenant: 't1', nics: [{ name: 'eth0', ip: '10.9.9.9' }] }), isErr(ErrorCodes.UNPROCESSABLE, 'nics[0].ip'));
    await assert.rejects(m.setup({ id: 'vm-x', tenant: 't1', nics: [{ name: 'eth0', ip: vm.a![0]!.ip }] }), isErr(ErrorCodes.CONFLICT, 'nics[0].ip'));
    await assert.rejects(m.setup({ id: 'vm-x', tenant: 't1', nics: [{ name: 'eth0' }], ports: [{ hostPort: 70000, guestPort: 80 }] }), isErr(ErrorCodes.VALIDATION_FAILED, 'ports[0].hostPort'));
    await assert.rejects(m.setup({ id: 'vm-x', tenant: 't1', nics: [{ name: 'eth0' }], egress: { deny: ['10.0.0.0/33'] } }), isErr(ErrorCodes.VALIDATION_FAILED, 'egress.deny[0]'));
    await assert.rejects(
      m.applyPolicy({ securityGroups: [...policy.securityGroups, { id: 'bad', tenant: 't1', rules: [{ direction: 'ingress', protocol: 'tcp', ports: '0-80', cidr: '10.0.0.0/8' }] }] }),
      isErr(ErrorCodes.VALIDATION_FAILED, 'securityGroups[2].rules[0].ports'),
    );
    await assert.rejects(
      m.applyPolicy({ securityGroups: [...policy.securityGroups, { id: 'bad', tenant: 't1', rules: [{ direction: 'ingress', protocol: 'sctp' as 'tcp' }] }] }),
      isErr(ErrorCodes.VALIDATION_FAILED, 'securityGroups[2].rules[0].protocol'),
    );
    await assert.rejects(
      m.applyPolicy({ securityGroups: [...policy.securityGroups, { id: 'bad', tenant: 't1', rules: [{ direction: 'egress', protocol: 'any', group: 'ghost' }] }] }),
      isErr(ErrorCodes.UNPROCESSABLE, 'securityGroups[2].rules[0].group'),
    );
    await assert.rejects(
      m.applyPolicy({ securityGroups: [...policy.securityGroups, { id: 'bad', tenant: 't1', rules: [{ direction: 'egress', protocol: 'any', cidr: '300.1.1.0/24' }] }] }),
      isErr(ErrorCodes.VALIDATION_FAILED, 'securityGroups[2].rules[0].cidr'),
    );
    await assert.rejects(
      m.update('vm-a', { securityGroups: ['web'] }), // web belongs to t2
      isErr(ErrorCodes.VALIDATION_FAILED, 'securityGroups[0]'),
    );
    assert.throws(
      () => new CniNetworkManager({ dataDir: w.dataDir, networks: [w.networkConfig(), { name: 'two', bridge: 'tbr1', subnet: '10.123.0.128/25', gateway: '10.123.0.129' }] }),
      isErr(ErrorCodes.VALIDATION_FAILED, 'networks[1].subnet'),
    );
    assert.deepEqual(await m.getPolicy(), policy);
    assert.equal(await hostNft(), before);
    assert.deepEqual(w.namespaces(), nsBefore);
    assert.ok(!(await m.list()).includes('vm-x'));
  });

  test('IPAM survives a new manager instance: no double allocation, setup is idempotent', async () => {
    const m2 = mk();
    assert.deepEqual((await m2.list()).filter((x) => x.startsWith('vm-')), ['vm-a', 'vm-b', 'vm-c']);
    assert.deepEqual(await m2.get('vm-a'), vm.a);
    const again = await m2.setup({ id: 'vm-a', tenant: 't1', hostname: 'alpha', nics: [{ name: 'eth0' }] });
    assert.deepEqual(again, vm.a);
    const e = await m2.setup({ id: 'vm-e', tenant: 't1', nics: [{ name: 'eth0' }] });
    assert.ok(![vm.a, vm.b, vm.c].some((x) => x![0]!.ip === e[0]!.ip), `${e[0]!.ip} handed out twice`);
    await m2.teardown('vm-e');
    // The ruleset survives a flush of nftables (e.g. a host firewall reload) via resync.
    await w.exec(w.hostNs, ['nft', 'flush', 'ruleset']);
    await m2.resync();
    assert.equal(await w.tcp(g.a!.ns, g.b!.ip, 7000), 'OK:b');
    assert.equal(await w.tcp(g.c!.ns, g.a!.ip, 7000), 'TIMEOUT');
    m = m2;
  });

  test('a broken VM network (namespace lost, e.g. reboot) is rebuilt with the same IP and MAC', async () => {
    await w.stopGuest(g.b!);
    await run('ip', ['netns', 'del', vm.b![0]!.netns]);
    const b = await m.setup({ id: 'vm-b', tenant: 't1', nics: [{ name: 'eth0' }] });
    assert.equal(b[0]!.ip, vm.b![0]!.ip);
    assert.equal(b[0]!.mac, vm.b![0]!.mac);
    g.b = await w.guest('b2', b);
    await w.serve(g.b.ns, 7000, 'b2');
    assert.equal(await w.tcp(g.a!.ns, g.b.ip, 7000), 'OK:b2');
  });

  test('a failing step rolls back everything it created (IPAM exhausted at CNI ADD)', async () => {
    const dataDir = join(w.dataDir, 'tiny');
    const tiny = new CniNetworkManager({
      dataDir,
      networks: [{ name: 'tiny', bridge: 'tbr9', subnet: '10.99.0.0/30', gateway: '10.99.0.1' }],
      hostNetns: w.hostNs,
      netnsPrefix: `${w.tag}-tiny-`,
      table: 'mvmtiny',
    });
    const one = await tiny.setup({ id: 'vm-t1', tenant: 't', nics: [{ name: 'eth0' }] });
    assert.equal(one[0]!.ip, '10.99.0.2');
    const rulesBefore = await hostNft();
    await assert.rejects(tiny.setup({ id: 'vm-t2', tenant: 't', nics: [{ name: 'eth0' }] }), (e: unknown) => {
      assert.ok(e instanceof MvmError);
      assert.equal(e.details.step, 'cni-add eth0');
      assert.match(e.message, /no IP addresses available/);
      return true;
    });
    assert.deepEqual(await tiny.list(), ['vm-t1']);
    assert.ok(!existsSync(`/var/run/netns/${w.tag}-tiny-vm-t2`));
    assert.equal(await hostNft(), rulesBefore);
    await tiny.teardown('vm-t1');
    assert.deepEqual(await tiny.list(), []);
  });

  test('teardown is idempotent and leaves no tap, netns, veth, chain or IP allocation; list() finds orphans', async () => {
    const a = vm.a![0]!;
    await w.stopGuest(g.a!);
    await m.teardown('vm-a');
    await m.teardown('vm-a');
    assert.ok(!existsSync(a.netnsPath));
    assert.ok(!(await m.list()).includes('vm-a'));
    const hostLinks = (await w.exec(w.hostNs, ['ip', '-o', 'link', 'show'])).stdout;
    assert.ok(!hostLinks.includes(a.hostVeth), 'host veth left');
    const rules = await hostNft();
    assert.ok(!rules.includes(nftNames.vmChain('vm-a', 'in')) && !rules.includes(a.ip) && !rules.includes(a.hostVeth), 'rules left');
    const ipam = join(w.dataDir, 'network', 'ipam', 'test');
    for (const f of readdirSync(ipam)) if (/^\d/.test(f)) assert.notEqual(readFileSync(join(ipam, f), 'utf8').split(/\r?\n/)[0], 'vm-a');
    // An orphan (crash after `ip netns add`, before the record): found and removed.
    await run('ip', ['netns', 'add', `${w.netnsPrefix}vm-orphan`]);
    assert.ok((await m.list()).includes('vm-orphan'));
    await m.teardown('vm-orphan');
    assert.ok(!(await m.list()).includes('vm-orphan'));
    // Everything else goes too.
    for (const id of await m.list()) await m.teardown(id);
    assert.deepEqual(await m.list(), []);
    assert.deepEqual(w.namespaces().filter((n) => n.startsWith(w.netnsPrefix)), []);
    assert.ok(!(await hostNft()).includes('jump v_'));
  });

  test('concurrent teardowns leave no VM in the ruleset (each one compiled the others\' stale state before: chaos seed 20)', async () => {
    const ids = ['vm-p', 'vm-q', 'vm-r'];
    for (const id of ids) await m.setup({ id, tenant: 't1', nics: [{ name: 'eth0' }] });
    assert.equal((await hostNft()).match(/chain v_\S+_in \{/g)?.length, 3);
    await Promise.all(ids.map((id) => m.teardown(id)));
    const rules = await hostNft();
    assert.deepEqual(rules.match(/chain v_\S+_in \{/g) ?? [], [], 'VM chains left');
    assert.ok(!rules.includes('jump v_'), rules);
    assert.deepEqual(await m.list(), []);
  });
});
