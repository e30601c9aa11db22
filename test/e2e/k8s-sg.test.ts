/**
 * Security groups in cluster mode (ADR 0017): the node agent enforces the SecurityGroup objects
 * written through the cluster API, with the standalone NetworkController and nftables policy, and
 * applies a rule change to the running VM (list+watch, no restart). A real guest under QEMU serves
 * TCP 8080 and 8081; a peer namespace linked to the node's stand-in host namespace (TEST-NET-2)
 * reaches only the port the group opens, before and after the rule is changed through the API.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { cidrContains, parseCidr, parseIp } from '../../src/network/ipv4.js';
import { nftNames } from '../../src/network/policy.js';
import { sleep } from '../../src/vmm/proc.js';
import { guestRun } from '../support/console.js';
import { startClusterApiHarness, type ClusterApiHarness } from '../support/k8s-cluster-api.js';
import { until } from '../support/k8s-operator-cluster.js';
import { hostNetnsOf, nftTableOf, subnetOf } from '../support/service.js';

const ADMIN = 'adm_cluster_sg_token_0123456789ab';
let k: ClusterApiHarness | undefined;
const peer = `mvmsgp-${process.pid}`;
const tag = String(process.pid % 100000);
let hostNs = '';

const ip = (...a: string[]): string => execFileSync('ip', a, { encoding: 'utf8' });

/** TCP from the peer namespace (HTTP/1.0 with busybox nc); true when the guest's page came back. */
function reach(addr: string, port: number): boolean {
  const r = spawnSync('ip', ['netns', 'exec', peer, 'busybox', 'nc', '-w', '2', addr, String(port)], { input: 'GET / HTTP/1.0\r\n\r\n', encoding: 'utf8', timeout: 10_000 });
  return r.stdout.includes('hello from');
}

/** The VM's ingress chain in the node's nftables (inside the node's host namespace). */
function inChain(id: string): string {
  const r = spawnSync('ip', ['netns', 'exec', hostNs, 'nft', '-j', 'list', 'chain', 'inet', nftTableOf(k!.c.agents[0]!.dataDir), nftNames.vmChain(id, 'in')], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout : '';
}

/** tcp dports the VM's ingress chain accepts by a security-group rule. */
function sgPorts(id: string): number[] {
  const text = inChain(id);
  if (!text) return [];
  const out: number[] = [];
  for (const it of JSON.parse(text).nftables as any[]) {
    if (!it.rule || !String(it.rule.comment ?? '').startsWith('sg ')) continue;
    for (const e of it.rule.expr) if (e.match?.left?.payload?.field === 'dport' && typeof e.match.right === 'number') out.push(e.match.right);
  }
  return out.sort();
}

before(async () => {
  k = await startClusterApiHarness({ admin: ADMIN, nodes: ['node-a'] });
  hostNs = hostNetnsOf(k.c.agents[0]!.dataDir);
  // A peer outside the node, linked to its host namespace (TEST-NET-2), as test/network.e2e does.
  ip('netns', 'add', peer);
  ip('-n', peer, 'link', 'set', 'lo', 'up');
  ip('link', 'add', `sgp${tag}`, 'netns', peer, 'type', 'veth', 'peer', 'name', `sgh${tag}`, 'netns', hostNs);
  ip('-n', peer, 'addr', 'add', '198.51.100.2/24', 'dev', `sgp${tag}`);
  ip('-n', hostNs, 'addr', 'add', '198.51.100.1/24', 'dev', `sgh${tag}`);
  ip('-n', peer, 'link', 'set', `sgp${tag}`, 'up');
  ip('-n', hostNs, 'link', 'set', `sgh${tag}`, 'up');
  ip('-n', peer, 'route', 'add', subnetOf(k.c.agents[0]!.dataDir), 'via', '198.51.100.1');
  execFileSync('ip', ['netns', 'exec', hostNs, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
});

after(async () => {
  spawnSync('ip', ['netns', 'del', peer]);
  await k?.stop();
});

test('cluster mode: the node enforces a security group from the API and applies a rule change to the running VM', { timeout: 300_000 }, async () => {
  const { c: cl, call, waitPhase } = k!;
  await k!.tenant('acme');
  const token = await k!.apiKey('acme', 'tenant-admin', 'sg');
  const sg = await call(token, 'POST', '/securitygroups', { name: 'web', rules: [{ direction: 'ingress', protocol: 'tcp', ports: '8080', cidr: '198.51.100.0/24' }] });
  assert.equal(sg.status, 201, sg.text);
  const sgId = sg.json.id as string;
  assert.equal(cl.kubectlJson(['get', 'securitygroups.microvm.service', 'web', '-n', 'acme']).metadata.labels['microvm.service/id'], sgId);

  const created = await call(token, 'POST', '/microvms', { name: 'sg-a', vcpu: 1, memory: '128Mi', securityGroups: ['web'] });
  assert.equal(created.status, 201, created.text);
  const id = created.json.id as string;
  const vm = await waitPhase(token, id, 'Running', true, '150s');
  assert.ok(cidrContains(parseCidr(subnetOf(k!.c.agents[0]!.dataDir))!, parseIp(vm.status.ip)!), `${vm.status.ip} in the node's subnet`);
  const addr = vm.status.ip as string;
  const pids = cl.guests(id).map((g) => g.pid);
  assert.equal(pids.length, 1);

  // The node's nftables: the VM's ingress chain carries the group's rule.
  assert.deepEqual(await until(cl, 'the VM chain with the sg rule', () => (sgPorts(id).length ? sgPorts(id) : undefined), 30_000), [8080]);
  assert.match(inChain(id), new RegExp(`sg ${sgId}`));

  // The guest serves both ports; the peer reaches only the one the group opens.
  const vmDir = join(cl.agents[0]!.dataDir, 'vms', id);
  const out = await guestRun(vmDir, 'mkdir -p /tmp/www && echo "hello from sg-a" > /tmp/www/index.html && httpd -p 8080 -h /tmp/www && httpd -p 8081 -h /tmp/www && echo STARTED-$((6*7))', 30_000);
  assert.match(out, /STARTED-42/, out);
  assert.ok(await until(cl, 'port 8080 reachable from the peer', () => reach(addr, 8080), 20_000));
  assert.ok(!reach(addr, 8081), 'a port no rule opens is closed');

  // A rule change through the API (another process) reaches the running VM through the watch.
  const upd = await call(token, 'PUT', '/securitygroups/web', { rules: [{ direction: 'ingress', protocol: 'tcp', ports: '8081', cidr: '198.51.100.0/24' }] });
  assert.equal(upd.status, 200, upd.text);
  assert.deepEqual(await until(cl, 'the chain follows the rule change', () => (sgPorts(id)[0] === 8081 ? sgPorts(id) : undefined), 30_000), [8081]);
  await sleep(200);
  assert.ok(reach(addr, 8081), 'the changed rule opened 8081 on the running VM');
  assert.ok(!reach(addr, 8080), 'and closed 8080');
  assert.deepEqual(cl.guests(id).map((g) => g.pid), pids, 'the VM was not restarted');

  const d = await call(token, 'DELETE', `/microvms/${id}`);
  assert.equal(d.status, 202, d.text);
  await until(cl, 'sg-a gone', () => cl.cp.kubectl(['get', 'mvm', 'sg-a', '-n', 'acme']).status !== 0, 90_000);
  assert.equal(inChain(id), '', 'the VM chain left with the VM');
});
