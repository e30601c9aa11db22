/** The CNI client: config building, prevResult chaining, typed errors; then real plugins in private namespaces. */
import assert from 'node:assert/strict';
import { chmodSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ErrorCodes } from '../../src/core/errors.js';
import { CniClient, CniError, type CniNetworkConfList } from '../../src/network/cni.js';
import { run, runOk } from '../../src/network/exec.js';
import { canRunNetns } from '../support/netns-world.js';

const rt = { containerId: 'c1', netns: '/var/run/netns/none', ifName: 'eth0' };

test('pluginConfig: name and version from the list, capabilities filtered into runtimeConfig, prevResult', () => {
  const list: CniNetworkConfList = { cniVersion: '1.0.0', name: 'n1', plugins: [{ type: 'bridge', capabilities: { mac: true, ips: false } }] };
  const c = CniClient.pluginConfig(list, list.plugins[0]!, { ...rt, capabilityArgs: { mac: '02:00:00:00:00:01', ips: ['10.0.0.2/24'], portMappings: [] } }, { cniVersion: '1.0.0', ips: [] });
  assert.equal(c.name, 'n1');
  assert.equal(c.cniVersion, '1.0.0');
  assert.deepEqual(c.runtimeConfig, { mac: '02:00:00:00:00:01' });
  assert.deepEqual(c.prevResult, { cniVersion: '1.0.0', ips: [] });
  const bare = CniClient.pluginConfig(list, list.plugins[0]!, rt);
  assert.ok(!('runtimeConfig' in bare) && !('prevResult' in bare));
});

describe('fake plugins', () => {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-cni-fake-'));
  const log = join(dir, 'log');
  const plugin = (name: string, body: string): void => {
    const p = join(dir, name);
    writeFileSync(
      p,
      `#!${process.execPath}
const fs = require('node:fs');
const input = fs.readFileSync(0, 'utf8');
fs.appendFileSync(${JSON.stringify(log)}, JSON.stringify({ plugin: ${JSON.stringify(name)}, cmd: process.env.CNI_COMMAND, env: { id: process.env.CNI_CONTAINERID, netns: process.env.CNI_NETNS, ifname: process.env.CNI_IFNAME, path: process.env.CNI_PATH, args: process.env.CNI_ARGS }, conf: input ? JSON.parse(input) : null }) + '\\n');
const conf = input ? JSON.parse(input) : {};
${body}
`,
    );
    chmodSync(p, 0o755);
  };
  before(() => {
    plugin('first', `process.stdout.write(JSON.stringify({ cniVersion: '1.0.0', interfaces: [{ name: 'eth0', sandbox: process.env.CNI_NETNS }], ips: [{ address: '10.0.0.5/24', interface: 0 }] }));`);
    plugin('second', `const r = conf.prevResult || { cniVersion: '1.0.0' }; r.touchedBy = 'second'; process.stdout.write(JSON.stringify(r));`);
    plugin('broken', `process.stdout.write(JSON.stringify({ cniVersion: '1.0.0', code: 7, msg: 'invalid network config', details: 'no bridge' })); process.exit(1);`);
    plugin('busy', `process.stdout.write(JSON.stringify({ cniVersion: '1.0.0', code: 11, msg: 'try again later' })); process.exit(1);`);
    plugin('garbage', `console.error('panic: something'); process.exit(2);`);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  const readLog = () => readFileSync(log, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { plugin: string; cmd: string; env: Record<string, string>; conf: Record<string, unknown> });

  test('ADD chains prevResult through the list; DEL runs in reverse with the cached result; CHECK in order', async () => {
    rmSync(log, { force: true });
    const cni = new CniClient({ pluginDirs: ['/nonexistent', dir] });
    const list: CniNetworkConfList = { cniVersion: '1.0.0', name: 'chain', plugins: [{ type: 'first' }, { type: 'second', extra: 1 }] };
    const res = await cni.add(list, { ...rt, args: [['K8S_POD_NAME', 'x'], ['IgnoreUnknown', '1']] });
    assert.equal(res.touchedBy, 'second');
    assert.equal(res.ips?.[0]?.address, '10.0.0.5/24');
    await cni.check(list, rt, res);
    await cni.del(list, rt, res);
    const l = readLog();
    assert.deepEqual(l.map((x) => `${x.cmd}:${x.plugin}`), ['ADD:first', 'ADD:second', 'CHECK:first', 'CHECK:second', 'DEL:second', 'DEL:first']);
    assert.equal(l[0]!.conf.prevResult, undefined);
    assert.deepEqual((l[1]!.conf.prevResult as { ips: unknown[] }).ips, [{ address: '10.0.0.5/24', interface: 0 }]);
    assert.equal(l[1]!.conf.extra, 1);
    assert.equal(l[0]!.env.args, 'K8S_POD_NAME=x;IgnoreUnknown=1');
    assert.equal(l[0]!.env.path, `/nonexistent:${dir}`);
    assert.equal(l[0]!.env.ifname, 'eth0');
    assert.equal((l[4]!.conf.prevResult as { touchedBy: string }).touchedBy, 'second');
  });

  test('plugin errors become typed CniErrors with the CNI code and message', async () => {
    const cni = new CniClient({ pluginDirs: [dir] });
    const one = (type: string): CniNetworkConfList => ({ cniVersion: '1.0.0', name: 'n', plugins: [{ type }] });
    await assert.rejects(cni.add(one('broken'), rt), (e: unknown) => {
      assert.ok(e instanceof CniError);
      assert.equal(e.cniCode, 7);
      assert.equal(e.cniMsg, 'invalid network config');
      assert.equal(e.cniDetails, 'no bridge');
      assert.equal(e.code, ErrorCodes.INTERNAL);
      assert.equal(e.details.plugin, 'broken');
      return true;
    });
    await assert.rejects(cni.del(one('busy'), rt), (e: unknown) => e instanceof CniError && e.cniCode === 11 && e.code === ErrorCodes.UNAVAILABLE);
    await assert.rejects(cni.add(one('garbage'), rt), (e: unknown) => e instanceof CniError && e.cniCode === 0 && /panic: something/.test(e.message));
    await assert.rejects(cni.add(one('missing'), rt), (e: unknown) => e instanceof CniError && /not found in/.test(e.message));
    await assert.rejects(cni.add(one('../first'), rt), (e: unknown) => e instanceof CniError && /invalid plugin type/.test(e.message));
  });
});

const env = canRunNetns();
describe('real bridge + host-local + tuning plugins', { skip: env.ok ? false : env.why }, () => {
  const tag = `mvmt${process.pid}c`;
  const host = `${tag}-host`;
  const box = `${tag}-box`;
  const ipam = mkdtempSync(join(tmpdir(), `${tag}-ipam-`));
  const list: CniNetworkConfList = {
    cniVersion: '1.0.0',
    name: 'cnitest',
    plugins: [
      { type: 'bridge', bridge: 'cbr0', isGateway: true, ipMasq: false, capabilities: { mac: true, ips: true }, ipam: { type: 'host-local', dataDir: ipam, ranges: [[{ subnet: '10.124.0.0/24', gateway: '10.124.0.1' }]] } },
      { type: 'tuning', mtu: 1400 },
    ],
  };
  const cni = new CniClient({ hostNetns: host });
  const r = { containerId: 'box-1', netns: `/var/run/netns/${box}`, ifName: 'eth0' };
  before(async () => {
    for (const ns of [host, box]) await runOk('ip', ['netns', 'add', ns]);
  });
  after(async () => {
    for (const ns of [host, box]) await run('ip', ['netns', 'del', ns]);
    rmSync(ipam, { recursive: true, force: true });
  });

  test('VERSION, ADD (with requested MAC and IP), CHECK, DEL twice', async () => {
    const v = await cni.version('bridge');
    assert.ok(v.supportedVersions.includes('1.0.0'));
    const res = await cni.add(list, { ...r, capabilityArgs: { mac: '02:00:00:00:aa:01', ips: ['10.124.0.77/24'] } });
    assert.equal(res.ips?.[0]?.address, '10.124.0.77/24');
    const inner = res.interfaces?.find((i) => i.sandbox);
    assert.equal(inner?.mac, '02:00:00:00:aa:01');
    const link = JSON.parse((await run('ip', ['-n', box, '-j', 'link', 'show', 'eth0'])).stdout) as Array<{ mtu: number }>;
    assert.equal(link[0]?.mtu, 1400, 'the chained tuning plugin ran on the bridge result');
    await cni.check(list, r, res);
    assert.deepEqual(readdirSync(join(ipam, 'cnitest')).filter((f) => f.startsWith('10.')), ['10.124.0.77']);
    await cni.del(list, r, res);
    await cni.del(list, r, res);
    await cni.del(list, { ...r, netns: '' });
    assert.deepEqual(readdirSync(join(ipam, 'cnitest')).filter((f) => f.startsWith('10.')), []);
    await assert.rejects(cni.check(list, r, res), (e: unknown) => e instanceof CniError && e.command === 'CHECK');
  });
});
