/**
 * Networking end to end with real guests: CNI bridge + host-local IPAM, taps in
 * per-VM namespaces, nftables policy. The service's "host" side lives in a
 * namespace this test owns (no route off the machine); an outside client is a
 * second namespace linked to it with TEST-NET addresses.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import type { MicroVM } from '../../sdk/typescript/src/index.js';
import { sleep } from '../../src/vmm/proc.js';
import { cidrContains, parseCidr, parseIp } from '../../src/network/ipv4.js';
import { destroyDataDir, hostNetnsOf, apiCall, startService, subnetOf, vmNetnsPrefixOf, type TestService } from '../support/service.js';
import { guestRun } from '../support/console.js';

let svc: TestService;
let hostNs: string;
const client = `mvmc-${process.pid}`;

const ip = (...a: string[]): string => execFileSync('ip', a, { encoding: 'utf8' });

const api = (method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> => apiCall(svc, method, path, body);

/** HTTP GET from a namespace with busybox wget; true when the page came back. */
// busybox-static's wget crashes in static glibc's service lookup: speak HTTP/1.0 with nc instead.
function fetchFrom(ns: string, url: string): boolean {
  const u = new URL(url);
  const r = spawnSync('ip', ['netns', 'exec', ns, 'busybox', 'nc', '-w', '2', u.hostname, u.port], { input: 'GET / HTTP/1.0\r\n\r\n', encoding: 'utf8', timeout: 10_000 });
  return r.stdout.includes('hello from');
}

async function boot(name: string, extra: Record<string, unknown> = {}): Promise<MicroVM> {
  const vm = await svc.client.microvms.create({ name, ...extra });
  return svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 150_000 });
}

async function serveHttp(vm: MicroVM): Promise<void> {
  const out = await guestRun(join(svc.dataDir, 'vms', vm.id), `mkdir -p /tmp/www && echo "hello from ${vm.name}" > /tmp/www/index.html && httpd -p 8080 -h /tmp/www && echo STARTED-$((6*7))`);
  assert.match(out, /STARTED-42/, out);
}

let lastOut = '';
async function guestGet(vm: MicroVM, url: string): Promise<boolean> {
  const u = new URL(url);
  // FETCH-FAILED-42 is computed by the shell, so only a failed nc prints it (the echoed command shows $((6*7))).
  const out = await guestRun(join(svc.dataDir, 'vms', vm.id), `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 ${u.hostname} ${u.port} || echo FETCH-FAILED-$((6*7))`, 20_000);
  lastOut = out;
  const answered = out.includes('hello from');
  const failed = out.includes('FETCH-FAILED-42');
  assert.notEqual(answered, failed, `the fetch either answered or failed, not both or neither: ${out}`);
  return answered;
}

before(async () => {
  // Published ports bind to the address the client namespace reaches (ADR 0025), not to every host address.
  svc = await startService({ env: { MVM_HOST_PORT_ADDRESS: '198.51.100.1' } });
  hostNs = hostNetnsOf(svc.dataDir);
  // An outside client linked to the stand-in host namespace (TEST-NET-2), no other routes.
  ip('netns', 'add', client);
  ip('-n', client, 'link', 'set', 'lo', 'up');
  ip('link', 'add', 'mvmc0', 'netns', client, 'type', 'veth', 'peer', 'name', 'mvmh0', 'netns', hostNs);
  ip('-n', client, 'addr', 'add', '198.51.100.2/24', 'dev', 'mvmc0');
  ip('-n', hostNs, 'addr', 'add', '198.51.100.1/24', 'dev', 'mvmh0');
  ip('-n', client, 'link', 'set', 'mvmc0', 'up');
  ip('-n', hostNs, 'link', 'set', 'mvmh0', 'up');
  ip('-n', client, 'route', 'add', subnetOf(svc.dataDir), 'via', '198.51.100.1');
  execFileSync('ip', ['netns', 'exec', hostNs, 'sysctl', '-qw', 'net.ipv4.ip_forward=1']);
});

after(async () => {
  await svc?.stop().catch(() => undefined);
  try {
    ip('netns', 'del', client);
  } catch {
    /* gone */
  }
  if (svc) await destroyDataDir(svc.dataDir);
});

test('same-tenant reach, security group opens and closes a port live, published port, egress deny; nothing leaks', async () => {
  // Bad input first: nothing is created.
  let r = await api('POST', '/securitygroups', { name: 'bad', rules: [{ direction: 'ingress', protocol: 'tcp', ports: '70000', cidr: '198.51.100.0/24' }] });
  assert.equal(r.status, 400);
  assert.ok(r.json.errors.some((e: { field: string }) => e.field === 'rules[0].ports'), JSON.stringify(r.json));
  r = await api('POST', '/securitygroups', { name: 'bad', rules: [{ direction: 'ingress', protocol: 'tcp', cidr: '10.0.0.0/33' }] });
  assert.equal(r.status, 400);
  assert.ok(r.json.errors.some((e: { field: string }) => e.field === 'rules[0].cidr'));
  r = await api('POST', '/securitygroups', { name: 'bad', rules: [{ direction: 'ingress', protocol: 'tcp', group: 'missing' }] });
  assert.equal(r.status, 404);
  assert.ok(r.json.errors.some((e: { field: string }) => e.field === 'rules[0].group'));
  r = await api('POST', '/microvms', { name: 'bad', securityGroups: ['missing'] });
  assert.equal(r.status, 404);
  assert.ok(r.json.errors.some((e: { field: string }) => e.field === 'securityGroups[0]'));
  r = await api('POST', '/microvms', { name: 'bad', egress: { deny: ['300.1.1.1/32'] } });
  assert.equal(r.status, 400);
  assert.ok(r.json.errors.some((e: { field: string }) => e.field === 'egress.deny[0]'));
  assert.equal((await api('GET', '/securitygroups')).json.items.length, 0);
  // Host ports: outside MVM_HOST_PORT_RANGE (22, 18080) or on another host address is refused.
  for (const [port, field] of [[{ hostPort: 22, guestPort: 22 }, 'ports[0].hostPort'], [{ hostPort: 18080, guestPort: 8080 }, 'ports[0].hostPort'], [{ hostPort: 30080, guestPort: 8080, hostIp: '10.100.0.1' }, 'ports[0].hostIp']] as const) {
    r = await api('POST', '/microvms', { name: 'bad', ports: [port] });
    assert.equal(r.status, 400, JSON.stringify(r.json));
    assert.ok(r.json.errors.some((e: { field: string }) => e.field === field), JSON.stringify(r.json));
  }
  assert.equal((await svc.client.microvms.list()).items.length, 0);

  const web = await api('POST', '/securitygroups', { name: 'web', rules: [] });
  assert.equal(web.status, 201);
  // A second tenant with a VM of its own (admins may act in any tenant).
  assert.equal((await api('POST', '/tenants', { id: 'other' })).status, 201);
  const oc = await api('POST', '/microvms?tenant=other', { name: 'net-x' });
  assert.equal(oc.status, 201, JSON.stringify(oc.json));
  const [a, b, x] = await Promise.all([
    boot('net-a', { securityGroups: ['web'], ports: [{ hostPort: 30080, guestPort: 8080 }] }),
    boot('net-b'),
    svc.client.microvms.waitFor(oc.json.id, { phase: 'Running', ready: true, timeoutMs: 150_000 }),
  ]);
  assert.equal(x.tenant, 'other');
  assert.ok(cidrContains(parseCidr(subnetOf(svc.dataDir))!, parseIp(a.status.ip!)!), `${a.status.ip} in the instance's subnet ${subnetOf(svc.dataDir)}`);
  assert.notEqual(a.status.ip, b.status.ip);
  assert.equal(a.status.interfaces?.[0]?.name, 'eth0');
  await serveHttp(a);

  // Same tenant: b reaches a.
  assert.ok(await guestGet(b, `http://${a.status.ip}:8080/`), `same-tenant VMs reach each other: ${lastOut}`);
  // Another tenant: dropped.
  assert.ok(!(await guestGet(x, `http://${a.status.ip}:8080/`)), 'a VM of another tenant cannot reach it');
  // From outside (the client namespace): closed by default.
  assert.ok(!fetchFrom(client, `http://${a.status.ip}:8080/`), 'inbound from outside is closed by default');
  // A rule opens it on the running VM...
  r = await api('PUT', '/securitygroups/web', { rules: [{ direction: 'ingress', protocol: 'tcp', ports: '8080', cidr: '198.51.100.0/24' }] });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  await sleep(300);
  assert.ok(fetchFrom(client, `http://${a.status.ip}:8080/`), 'the security group rule opened the port');
  // ...and the published host port answers too (DNAT on the host side).
  assert.ok(fetchFrom(client, `http://198.51.100.1:30080/`), 'the published port answers from the outside');
  // Only on the configured address: the bridge's address (also routed to the client) does not publish it.
  assert.ok(!fetchFrom(client, `http://10.100.0.1:30080/`), 'the published port is bound to MVM_HOST_PORT_ADDRESS only');
  // Closing the rule blocks it again, without a restart.
  r = await api('PUT', '/securitygroups/web', { rules: [] });
  assert.equal(r.status, 200);
  await sleep(300);
  assert.ok(!fetchFrom(client, `http://${a.status.ip}:8080/`), 'closing the rule blocks the port again');
  // The group cannot be deleted while a VM uses it.
  assert.equal((await api('DELETE', '/securitygroups/web')).status, 409);

  // Egress deny of one address on the running VM b.
  r = await api('PUT', `/microvms/${b.id}`, { egress: { default: 'allow', deny: [`${a.status.ip}/32`] } });
  assert.equal(r.status, 200, JSON.stringify(r.json));
  await sleep(300);
  assert.ok(!(await guestGet(b, `http://${a.status.ip}:8080/`)), 'egress deny blocks the address');

  // Metrics carry the tap's counters.
  const m = await svc.client.microvms.metrics(b.id);
  assert.ok(m.net.some((n) => n.rxBytes > 0 && n.txBytes > 0), JSON.stringify(m.net));

  // Delete: no namespace, tap or IP allocation of these VMs is left.
  for (const v of [a, b, x]) await svc.client.microvms.delete(v.id);
  for (const v of [a, b, x]) await svc.client.microvms.waitDeleted(v.id, { timeoutMs: 60_000 });
  const netns = readdirSync('/var/run/netns').filter((n) => n.startsWith(vmNetnsPrefixOf(svc.dataDir)));
  assert.deepEqual(netns, [], 'no VM namespace left');
  const ipam = join(svc.dataDir, 'network', 'ipam');
  if (existsSync(ipam)) {
    const held = spawnSync('grep', ['-rl', '-e', a.id, '-e', b.id, ipam], { encoding: 'utf8' }).stdout.trim();
    assert.equal(held, '', 'no IP allocation left');
  }
  assert.equal(spawnSync('ip', ['-n', hostNs, 'link', 'show', 'type', 'veth'], { encoding: 'utf8' }).stdout.split('\n').filter((l) => /veth/.test(l) && !/mvmh0/.test(l)).length, 0, 'no veth left');
  assert.equal((await api('DELETE', '/securitygroups/web')).status, 204);
});
