/** Pure parts of the network manager: kernel args, IPv4 helpers, validation, the nftables compiler. */
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import { kernelIpArgs, prefixToNetmask, wrapInNetns, type NetworkPolicy, type NicAttachment } from '../../src/core/ports/network.js';
import { run, runOk } from '../../src/network/exec.js';
import { cidrsOverlap, parseCidr, parseIp } from '../../src/network/ipv4.js';
import { stableMac } from '../../src/network/manager.js';
import { NftApplier } from '../../src/network/nft.js';
import { compileRemoval, compileRuleset, nftNames, parsePortRange, validateNetworks, validatePolicy, type CompileInput } from '../../src/network/policy.js';
import { canRunNetns } from '../support/netns-world.js';

const violations = (fn: () => unknown): Array<{ field: string; message: string }> => {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof MvmError);
    assert.equal(e.code, ErrorCodes.VALIDATION_FAILED);
    return e.violations;
  }
  assert.fail('expected VALIDATION_FAILED');
};
const fields = (fn: () => unknown): string[] => violations(fn).map((v) => v.field);

const att = (over: Partial<NicAttachment>): NicAttachment => ({
  name: 'eth0',
  network: 'mvm',
  tap: 'tap0',
  mac: '02:00:00:00:00:01',
  ip: '10.100.0.2',
  prefix: 16,
  gateway: '10.100.0.1',
  dns: [],
  netns: 'mvm-vm-1',
  netnsPath: '/var/run/netns/mvm-vm-1',
  hostVeth: 'veth0',
  ...over,
});

describe('kernel command line and netns wrapping', () => {
  test('kernelIpArgs: first NIC as ip=, second as mvm.ip1=, DNS merged', () => {
    const a = [att({ dns: ['10.100.0.53'] }), att({ name: 'eth1', tap: 'tap1', ip: '192.168.7.9', prefix: 24, gateway: '192.168.7.1', dns: ['10.100.0.53', '10.100.0.54'] })];
    assert.equal(
      kernelIpArgs(a, { hostname: 'web-1' }),
      'ip=10.100.0.2::10.100.0.1:255.255.0.0:web-1:eth0:off mvm.ip1=192.168.7.9::192.168.7.1:255.255.255.0:web-1:eth1:off mvm.dns=10.100.0.53,10.100.0.54',
    );
    assert.equal(kernelIpArgs([att({})]), 'ip=10.100.0.2::10.100.0.1:255.255.0.0::eth0:off');
    assert.equal(kernelIpArgs([]), '');
  });
  test('prefixToNetmask', () => {
    assert.deepEqual([0, 8, 16, 23, 30, 32].map(prefixToNetmask), ['0.0.0.0', '255.0.0.0', '255.255.0.0', '255.255.254.0', '255.255.255.252', '255.255.255.255']);
  });
  test('wrapInNetns', () => {
    assert.deepEqual(wrapInNetns('/var/run/netns/mvm-vm-1', ['qemu-system-x86_64', '-M', 'microvm']), ['nsenter', '--net=/var/run/netns/mvm-vm-1', '--', 'qemu-system-x86_64', '-M', 'microvm']);
  });
  test('stableMac is stable, unicast and locally administered', () => {
    assert.equal(stableMac('vm-1', 'eth0'), stableMac('vm-1', 'eth0'));
    assert.notEqual(stableMac('vm-1', 'eth0'), stableMac('vm-1', 'eth1'));
    assert.match(stableMac('vm-1', 'eth0'), /^02(:[0-9a-f]{2}){5}$/);
  });
});

describe('IPv4 helpers', () => {
  test('strict parsing', () => {
    assert.equal(parseIp('10.0.0.1'), 167772161);
    for (const bad of ['010.0.0.1', '1.2.3', '256.0.0.1', '1.2.3.4.5', ' 1.2.3.4', '1.2.3.-1', '']) assert.equal(parseIp(bad), undefined, bad);
    assert.equal(parseCidr('10.1.2.3/8')?.text, '10.0.0.0/8');
    assert.equal(parseCidr('10.1.2.3/8', { strict: true }), undefined);
    assert.equal(parseCidr('10.0.0.0/33'), undefined);
    assert.equal(parseCidr('10.0.0.7')?.text, '10.0.0.7/32');
    assert.ok(cidrsOverlap(parseCidr('10.0.0.0/8')!, parseCidr('10.200.0.0/16')!));
    assert.ok(!cidrsOverlap(parseCidr('10.0.0.0/24')!, parseCidr('10.0.1.0/24')!));
  });
  test('port ranges', () => {
    assert.deepEqual(parsePortRange('80'), { from: 80, to: 80 });
    assert.deepEqual(parsePortRange(443), { from: 443, to: 443 });
    assert.deepEqual(parsePortRange('8000-8100'), { from: 8000, to: 8100 });
    for (const bad of ['0', 65536, '90-80', '1-70000', 'http', '80,81', 1.5]) assert.equal(parsePortRange(bad), undefined, String(bad));
  });
});

describe('validation', () => {
  test('network config: overlap, gateway, bridge name, duplicates, ranges', () => {
    const base = { name: 'a', bridge: 'br-a', subnet: '10.100.0.0/16', gateway: '10.100.0.1' };
    validateNetworks([base]);
    assert.deepEqual(fields(() => validateNetworks([base, { name: 'b', bridge: 'br-b', subnet: '10.100.128.0/17', gateway: '10.100.128.1' }])), ['networks[1].subnet']);
    assert.deepEqual(fields(() => validateNetworks([{ ...base, gateway: '10.101.0.1' }])), ['networks[0].gateway']);
    assert.deepEqual(fields(() => validateNetworks([{ ...base, gateway: '10.100.0.0' }])), ['networks[0].gateway']);
    assert.deepEqual(fields(() => validateNetworks([{ ...base, bridge: 'a-very-long-bridge-name' }])), ['networks[0].bridge']);
    assert.deepEqual(fields(() => validateNetworks([{ ...base, subnet: '10.100.0.1/16' }])), ['networks[0].subnet']);
    assert.deepEqual(fields(() => validateNetworks([base, { ...base, subnet: '10.200.0.0/16', gateway: '10.200.0.1' }])), ['networks[1].name', 'networks[1].bridge']);
    assert.deepEqual(fields(() => validateNetworks([{ ...base, rangeStart: '10.100.9.0', rangeEnd: '10.100.1.0', dns: ['x'] }])), ['networks[0].rangeEnd', 'networks[0].dns[0]']);
    assert.deepEqual(fields(() => validateNetworks([])), ['networks']);
  });

  test('security groups: every bad field reported, with its path', () => {
    const p: NetworkPolicy = {
      securityGroups: [
        {
          id: 'web',
          tenant: 't1',
          rules: [
            { direction: 'ingress', protocol: 'tcp', ports: '80-70000' },
            { direction: 'ingress', protocol: 'icmp', ports: 80 },
            { direction: 'ingress', protocol: 'gre' as 'tcp' },
            { direction: 'sideways' as 'ingress', protocol: 'any' },
            { direction: 'egress', protocol: 'any', cidr: '10.0.0.0/40' },
            { direction: 'egress', protocol: 'any', cidr: 'fd00::/8' },
            { direction: 'egress', protocol: 'any', group: 'missing' },
            { direction: 'egress', protocol: 'any', group: 'db' },
            { direction: 'egress', protocol: 'any', group: 'web', cidr: '10.0.0.0/8' },
            { direction: 'egress', protocol: 'udp', action: 'reject' as 'drop' },
          ],
        },
        { id: 'db', tenant: 't2', rules: [] },
        { id: 'db', tenant: 't2', rules: [] },
        { id: 'Bad Id', tenant: '', rules: [] },
      ],
      tenantEgress: { t1: { default: 'maybe' as 'deny', deny: ['1.2.3.4/99'] } },
    };
    const v = violations(() => validatePolicy(p));
    assert.deepEqual(
      v.map((x) => x.field),
      [
        'securityGroups[2].id',
        'securityGroups[3].id',
        'securityGroups[3].tenant',
        'securityGroups[0].rules[0].ports',
        'securityGroups[0].rules[1].ports',
        'securityGroups[0].rules[2].protocol',
        'securityGroups[0].rules[3].direction',
        'securityGroups[0].rules[4].cidr',
        'securityGroups[0].rules[5].cidr',
        'securityGroups[0].rules[6].group',
        'securityGroups[0].rules[7].group',
        'securityGroups[0].rules[8].group',
        'securityGroups[0].rules[9].action',
        'tenantEgress.t1.default',
        'tenantEgress.t1.deny[0]',
      ],
    );
    assert.match(v.find((x) => x.field === 'securityGroups[0].rules[5].cidr')!.message, /IPv6/);
    assert.match(v.find((x) => x.field === 'securityGroups[0].rules[7].group')!.message, /another tenant/);
    validatePolicy({ securityGroups: [{ id: 'ok', tenant: 't', rules: [{ direction: 'ingress', protocol: 'udp', ports: '53', group: 'ok', action: 'drop' }] }] });
  });
});

const sample = (): CompileInput => ({
  bridges: ['fc-br0'],
  policy: {
    securityGroups: [
      {
        id: 'web',
        tenant: 't1',
        rules: [
          { direction: 'ingress', protocol: 'tcp', ports: '80-90', cidr: '10.250.0.0/24' },
          { direction: 'ingress', protocol: 'icmp' },
          { direction: 'ingress', protocol: 'udp', ports: 53, group: 'db', action: 'drop' },
          { direction: 'egress', protocol: 'tcp', ports: 5432, group: 'db' },
        ],
      },
      { id: 'db', tenant: 't1', rules: [] },
    ],
    tenantEgress: { t2: { default: 'deny', allow: ['10.250.0.2'] } },
  },
  vms: [
    { id: 'vm-1', tenant: 't1', nics: [{ name: 'eth0', ip: '10.100.0.2', mac: '02:00:00:00:00:02', hostVeth: 'veth1' }], securityGroups: ['web'], egress: { deny: ['10.250.0.0/24'] }, ports: [{ hostPort: 8080, guestPort: 80 }] },
    { id: 'vm-2', tenant: 't1', nics: [{ name: 'eth0', ip: '10.100.0.3', mac: '02:00:00:00:00:03', hostVeth: 'veth2' }], securityGroups: ['db'], ports: [] },
    {
      id: 'vm-3',
      tenant: 't2',
      nics: [
        { name: 'eth0', ip: '10.100.0.4', mac: '02:00:00:00:00:04', hostVeth: 'veth3' },
        { name: 'net1', ip: '10.100.0.5', mac: '02:00:00:00:00:05', hostVeth: 'veth4' },
      ],
      securityGroups: [],
      ports: [{ hostPort: 5353, guestPort: 53, protocol: 'udp', hostIp: '10.250.0.1', nic: 'net1' }],
    },
  ],
});

describe('ruleset compiler', () => {
  const text = compileRuleset(sample());
  const chain = (name: string): string => {
    const i = text.indexOf(`\tchain ${name} {`);
    assert.ok(i >= 0, `chain ${name} missing`);
    return text.slice(i, text.indexOf('\t}', i));
  };

  test('is pure and deterministic; replaces the three tables in one file', () => {
    assert.equal(compileRuleset(sample()), text);
    for (const f of ['inet', 'bridge', 'ip']) assert.ok(text.includes(`table ${f} mvm\ndelete table ${f} mvm\ntable ${f} mvm {`), f);
    assert.ok(compileRuleset({ ...sample(), table: 'other' }).includes('table inet other {'));
  });

  test('tenant sets, group member sets, VM dispatch maps', () => {
    assert.match(text, new RegExp(`set ${nftNames.tenantSet('t1')} \\{\\n\\t\\ttype ipv4_addr\\n\\t\\telements = \\{ 10.100.0.2, 10.100.0.3 \\}`));
    assert.match(text, new RegExp(`set ${nftNames.groupSet('db')} \\{\\n\\t\\ttype ipv4_addr\\n\\t\\telements = \\{ 10.100.0.3 \\}`));
    assert.ok(!text.includes(`set ${nftNames.groupSet('web')}`), 'only referenced groups get a set');
    assert.ok(text.includes(`10.100.0.5 : jump ${nftNames.vmChain('vm-3', 'out')}`), 'every NIC address dispatches to its VM');
    assert.ok(text.includes('iifname "fc-br0" ip saddr vmap @vm_src') && text.includes('oifname "fc-br0" ip daddr vmap @vm_dst'));
  });

  test('ingress: rules in order, then same tenant, then published ports, then drop', () => {
    const c = chain(nftNames.vmChain('vm-1', 'in'));
    const lines = c.split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('chain'));
    assert.deepEqual(lines, [
      'ct state established,related accept',
      'ct state invalid drop',
      'ip saddr 10.250.0.0/24 tcp dport 80-90 accept comment "sg web"',
      'meta l4proto icmp accept comment "sg web"',
      `ip saddr @${nftNames.groupSet('db')} udp dport 53 counter drop comment "sg web"`,
      `ip saddr @${nftNames.tenantSet('t1')} accept comment "same tenant"`,
      'ct status dnat ip daddr 10.100.0.2 tcp dport 80 accept comment "published 8080"',
      'counter drop',
    ]);
  });

  test('egress: deny, allow, group rules, same tenant, default', () => {
    const l1 = chain(nftNames.vmChain('vm-1', 'out')).split('\n').map((l) => l.trim()).filter(Boolean).slice(1);
    assert.deepEqual(l1, [
      'ct state established,related return',
      'ct state invalid drop',
      'ip daddr 10.250.0.0/24 counter drop comment "egress deny"',
      `ip daddr @${nftNames.groupSet('db')} tcp dport 5432 return comment "sg web"`,
      `ip daddr @${nftNames.tenantSet('t1')} return comment "same tenant"`,
      'return',
    ]);
    const l3 = chain(nftNames.vmChain('vm-3', 'out'));
    assert.ok(l3.includes('ip daddr 10.250.0.2/32 return comment "egress allow"'), 'tenant egress applies to VMs without their own');
    assert.ok(l3.trimEnd().endsWith('counter drop comment "egress default deny"'));
  });

  test('anti-spoofing per bridge port and DNAT of published ports', () => {
    const g = chain(nftNames.guardChain('vm-3', 1));
    assert.ok(g.includes('ether saddr != 02:00:00:00:00:05 counter drop'));
    assert.ok(g.includes('ip saddr != 10.100.0.5 counter drop'));
    assert.ok(g.includes('arp saddr ip != { 0.0.0.0, 10.100.0.5 } counter drop'));
    assert.ok(text.includes(`"veth4" : jump ${nftNames.guardChain('vm-3', 1)}`));
    const pub = chain('published');
    assert.ok(pub.includes('tcp dport 8080 dnat to 10.100.0.2:80 comment "vm vm-1"'));
    assert.ok(pub.includes('ip daddr 10.250.0.1 udp dport 5353 dnat to 10.100.0.5:53 comment "vm vm-3"'));
  });

  test('no VMs: valid empty maps', () => {
    const t = compileRuleset({ bridges: ['a', 'b'], vms: [], policy: { securityGroups: [] } });
    assert.ok(t.includes('iifname { "a", "b" } ip saddr vmap @vm_src'));
    assert.ok(!t.includes('elements'));
  });

  const env = canRunNetns();
  test('nft accepts the compiled text (nft -c in a scratch namespace), also with 1,000 rules', { skip: env.ok ? false : env.why }, async () => {
    const ns = `mvmt${process.pid}p-scratch`;
    await runOk('ip', ['netns', 'add', ns]);
    try {
      const nft = new NftApplier({ netns: ns });
      await nft.check(text);
      const big = sample();
      big.policy.securityGroups[0]!.rules = Array.from({ length: 1000 }, (_, i) => ({ direction: 'ingress' as const, protocol: 'tcp' as const, ports: 1000 + i, cidr: `10.${i % 256}.0.0/16` }));
      await nft.apply(compileRuleset(big));
      assert.match(await nft.listTable('inet', 'mvm'), /tcp dport 1999 accept/);
      await nft.apply(compileRemoval());
      assert.equal(await nft.listTable('inet', 'mvm'), '');
      await assert.rejects(nft.apply('table inet mvm { chain x { tcp dport 99999 accept } }'), /nft transaction rejected/);
    } finally {
      await run('ip', ['netns', 'del', ns]);
    }
  });
});
