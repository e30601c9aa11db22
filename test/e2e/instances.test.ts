/**
 * Two standalone services side by side on one host (issue 15 item 3, issue 17): different
 * instance names, data dirs and ports, both with their bridge and nftables tables in the same
 * network namespace (one this test makes, standing in for the host), each with a running guest.
 * Each keeps its own rules (anti-spoofing, security groups) while the other starts, works and
 * stops; neither touches the other's bridge, tables or cgroups; a name or subnet another live
 * instance holds is refused at start; a clean stop removes what the instance made.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { MicroVM } from '../../sdk/typescript/src/index.js';
import { instanceNames } from '../../src/instance.js';
import { CLAIM_DIR } from '../../src/network/instance-claim.js';
import { cidrContains, parseCidr, parseIp } from '../../src/network/ipv4.js';
import { nftNames } from '../../src/network/policy.js';
import { pidAlive } from '../../src/vmm/proc.js';
import { apiCall, cgroupDirsOf, destroyDataDir, qemuProcessesUnder, startService, subnetOf, type TestService } from '../support/service.js';

const tag = (process.pid % 0xffff).toString(16);
const shared = `mvmi-${tag}`;
const A = instanceNames(`ia-${tag}`);
const B = instanceNames(`ib-${tag}`);
const services: TestService[] = [];
const CGROUP_ROOTS = ['/sys/fs/cgroup', ...['cpu', 'memory', 'pids'].map((c) => `/sys/fs/cgroup/${c}`)].filter((r) => existsSync(r));

const inShared = (...args: string[]): { code: number | null; out: string } => {
  const r = spawnSync('ip', ['netns', 'exec', shared, ...args], { encoding: 'utf8' });
  return { code: r.status, out: r.stdout + r.stderr };
};
/** A table's rules without counters (`nft -s`), '' when it does not exist. */
const table = (family: string, name: string): string => {
  const r = inShared('nft', '-s', 'list', 'table', family, name);
  return r.code === 0 ? r.out : '';
};
const tables = (name: string): string => ['inet', 'bridge', 'ip'].map((f) => table(f, name)).join('\n');
const linkExists = (name: string): boolean => inShared('ip', 'link', 'show', 'dev', name).code === 0;
const cgroupParentDirs = (parent: string): string[] => CGROUP_ROOTS.map((r) => join(r, parent)).filter((d) => existsSync(d));

const dataDirs: string[] = [];

async function start(names: typeof A, extra: Record<string, string> = {}): Promise<TestService> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mvm-test-'));
  dataDirs.push(dataDir);
  const s = await startService({ dataDir, env: { MVM_INSTANCE: names.instance, MVM_NET_HOST_NETNS: shared, ...extra } });
  services.push(s);
  return s;
}

async function guestWithGroup(s: TestService, name: string): Promise<MicroVM & { sg: string }> {
  const sg = await apiCall(s, 'POST', '/securitygroups', { name: 'web', rules: [{ direction: 'ingress', protocol: 'tcp', ports: '8080', cidr: '198.51.100.0/24' }] });
  assert.equal(sg.status, 201, sg.text);
  const vm = await s.client.microvms.create({ name, securityGroups: ['web'] });
  return { ...(await s.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 150_000 })), sg: String(sg.json.id) };
}

/** The VM's rules in its instance's tables: the anti-spoofing guard of its port and its security group in its ingress chain. */
function assertRulesOf(names: typeof A, vm: MicroVM & { sg: string }): void {
  const guard = table('bridge', names.table);
  assert.match(guard, new RegExp(`chain ${nftNames.guardChain(vm.id, 0)} \\{[^{}]*(\\{[^{}]*\\}[^{}]*)*ip saddr != ${vm.status.ip!.replace(/\./g, '\\.')} (counter )?drop`), `anti-spoofing of ${vm.id} in bridge ${names.table}:\n${guard}`);
  const inet = table('inet', names.table);
  assert.match(inet, new RegExp(`chain ${nftNames.vmChain(vm.id, 'in')} \\{[^}]*tcp dport 8080 accept comment "sg ${vm.sg}"`), `security group of ${vm.id} in inet ${names.table}:\n${inet}`);
}

before(() => {
  execFileSync('ip', ['netns', 'add', shared]);
  execFileSync('ip', ['-n', shared, 'link', 'set', 'lo', 'up']);
});

after(async () => {
  for (const s of services) await s.stop().catch(() => undefined);
  for (const d of new Set([...dataDirs, ...services.map((s) => s.dataDir)])) await destroyDataDir(d);
  spawnSync('ip', ['netns', 'del', shared]);
  spawnSync('ip', ['netns', 'del', `mvmi-e-${tag}`]);
});

test('two instances in one network namespace keep their own bridge, tables, subnet and cgroups; collisions are refused; a clean stop removes only its own', async () => {
  const a = await start(A);
  const vmA = await guestWithGroup(a, 'guest-a');
  assertRulesOf(A, vmA);
  const aTables = tables(A.table);
  assert.ok(linkExists(A.bridge), `bridge ${A.bridge}`);

  // A second instance's name or subnet is refused while A runs, naming the setting.
  await assert.rejects(start(A), /MVM_INSTANCE: instance ia-[0-9a-f]+ is already running/);
  await assert.rejects(start(instanceNames(`ic-${tag}`), { MVM_NET_SUBNET: subnetOf(a.dataDir) }), /MVM_NET_SUBNET: subnet 10\.\S+ overlaps instance ia-/);

  const b = await start(B, { MVM_LISTEN: '127.0.0.1:0', MVM_GRPC_LISTEN: '127.0.0.1:0' });
  const vmB = await guestWithGroup(b, 'guest-b');
  assertRulesOf(B, vmB);

  // Nothing shared: subnets, addresses, bridges, tables, VM namespaces, cgroup parents.
  const [netA, netB] = [parseCidr(subnetOf(a.dataDir))!, parseCidr(subnetOf(b.dataDir))!];
  assert.notEqual(netA.text, netB.text);
  assert.ok(cidrContains(netA, parseIp(vmA.status.ip!)!) && cidrContains(netB, parseIp(vmB.status.ip!)!), `${vmA.status.ip} in ${netA.text}, ${vmB.status.ip} in ${netB.text}`);
  assert.ok(linkExists(A.bridge) && linkExists(B.bridge));
  assert.equal(tables(A.table), aTables, "A's rules did not change while B started and booted a guest");
  assert.ok(!tables(A.table).includes(vmB.id) && !tables(B.table).includes(vmA.id));
  assert.ok(existsSync(`/var/run/netns/${A.netnsPrefix}${vmA.id}`) && existsSync(`/var/run/netns/${B.netnsPrefix}${vmB.id}`));
  assert.ok(cgroupDirsOf(vmA.id).every((d) => d.includes(`/${A.cgroupParent}/`)) && cgroupDirsOf(vmA.id).length > 0, JSON.stringify(cgroupDirsOf(vmA.id)));
  assert.ok(cgroupDirsOf(vmB.id).every((d) => d.includes(`/${B.cgroupParent}/`)) && cgroupDirsOf(vmB.id).length > 0, JSON.stringify(cgroupDirsOf(vmB.id)));

  // B deletes its guest and stops cleanly: its tables, bridge, cgroup parent and claim go; A's stay as they were.
  await b.client.microvms.delete(vmB.id);
  await b.client.microvms.waitDeleted(vmB.id, { timeoutMs: 60_000 });
  await b.stop();
  assert.equal(tables(B.table).trim(), '', `B's tables are gone:\n${tables(B.table)}`);
  assert.ok(!linkExists(B.bridge), `bridge ${B.bridge} is gone`);
  assert.deepEqual(cgroupParentDirs(B.cgroupParent), [], "B's cgroup parent is gone");
  assert.ok(!existsSync(join(CLAIM_DIR, `${B.instance}.json`)), "B's claim is gone");
  assert.equal(tables(A.table), aTables, "A's rules are untouched by B's stop");
  assert.ok(linkExists(A.bridge));
  assert.equal((await a.client.microvms.get(vmA.id)).status.phase, 'Running');
  assert.ok(qemuProcessesUnder(a.dataDir).some((p) => p.id === vmA.id && pidAlive(p.pid)), "A's guest runs");
  assert.ok(cgroupParentDirs(A.cgroupParent).length > 0);

  // A stops with its guest running (MVM_SHUTDOWN_POLICY=leave): everything the guest needs stays for the next start.
  await a.stop();
  assert.equal(tables(A.table), aTables);
  assert.ok(linkExists(A.bridge) && cgroupDirsOf(vmA.id).length > 0);
  assert.ok(qemuProcessesUnder(a.dataDir).some((p) => p.id === vmA.id));
});

test('a host network namespace the service made is removed at its clean stop; one it found stays', async () => {
  const ns = `mvmi-e-${tag}`;
  const e = await startService({ env: { MVM_INSTANCE: `ie-${tag}`, MVM_NET_HOST_NETNS: ns }, makeHostNetns: false });
  services.push(e);
  assert.ok(existsSync(`/var/run/netns/${ns}`), 'made at start');
  assert.ok(readdirSync(CLAIM_DIR).includes(`ie-${tag}.json`));
  await e.stop();
  assert.ok(!existsSync(`/var/run/netns/${ns}`), 'removed at the clean stop');
  assert.ok(!readdirSync(CLAIM_DIR).includes(`ie-${tag}.json`));
  // The shared namespace was the test's: A and B never removed it.
  assert.ok(existsSync(`/var/run/netns/${shared}`));
});
