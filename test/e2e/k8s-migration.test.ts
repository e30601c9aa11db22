/**
 * Migration with memory in cluster mode (docs/adr/0034): the API in cluster mode, the operator and
 * two node agents as local processes on a real kube-apiserver, one real QEMU guest moved between
 * the nodes. A process started in the guest (its PID and its command line, which holds a secret),
 * a file in a tmpfs the test mounts and a file on the root disk must survive each move; the MAC
 * stays; the address is kept where both nodes share the subnet, and changes (said so, and the guest
 * uses the new one) on a node with another; the source keeps nothing.
 *
 * The source node's endpoint is reached through a TCP proxy of the test (its Node annotation points
 * there): cutting every migration connection fails the transfer step (the VM runs on at its
 * source, condition Migrated=False reason Transfer, nothing left on the target); cutting one
 * connection mid-file shows the target continuing the file where it stopped (Range). Then a move to
 * a third node with another subnet, and last a `kubectl cordon` (a drain) that moves the VM with its
 * memory (event MigratedLive).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { ANN_AGENT_ENDPOINT } from '../../src/agent/endpoint/server.js';
import { until } from '../support/k8s-operator-cluster.js';
import { startClusterApiHarness, type ClusterApiHarness } from '../support/k8s-cluster-api.js';

const ADMIN = 'adm_cluster_migrate_token_0123456789';
const SHARED_SUBNET = '10.213.0.0/24';
const OTHER_SUBNET = '10.214.0.0/24';
let k: ClusterApiHarness;
let proxy: Server | undefined;

before(async () => {
  // node-a and node-b share one guest subnet (a flat network: the address moves with the VM); node-c,
  // started later, has its own (the address changes there, and the guest is told).
  k = await startClusterApiHarness({ admin: ADMIN, nodes: ['node-a', 'node-b'], waitAgentEndpoints: true, agentEnv: () => ({ MVM_NET_SUBNET: SHARED_SUBNET }) });
});

after(async () => {
  proxy?.close();
  await k?.stop();
});

/**
 * A TCP proxy in front of an agent endpoint. Connections whose request is for a migration's
 * memory stream are cut after `cutAfter` response bytes while `cuts` lasts (Infinity: always); the Range
 * headers those requests carried are recorded. Everything else passes untouched.
 */
function startProxy(target: URL): Promise<{ url: string; mode: { cutAfter: number; cuts: number }; ranges: string[]; fileRequests: number }> {
  const state = { url: '', mode: { cutAfter: Infinity, cuts: 0 }, ranges: [] as string[], fileRequests: 0 };
  proxy = createServer((client: Socket) => {
    const upstream = createConnection({ host: target.hostname, port: Number(target.port) });
    let head = '';
    let decided = false;
    let cut = false;
    let sent = 0;
    client.on('data', (d: Buffer) => {
      if (!decided) {
        head += d.toString('latin1');
        if (head.includes('\r\n\r\n')) {
          decided = true;
          // The memory stream (the big file): one request per connection (the target asks for no keep-alive).
          if (/^GET \/v1\/migrations\/[^ ]+\/files\/vmstate/.test(head)) {
            state.fileRequests++;
            const range = /\r\nrange: ([^\r]+)/i.exec(head)?.[1];
            if (range) state.ranges.push(range);
            if (state.mode.cuts > 0) {
              cut = true;
              state.mode.cuts--;
            }
          }
        }
      }
      upstream.write(d);
    });
    upstream.on('data', (d: Buffer) => {
      if (cut && sent + d.length > state.mode.cutAfter) {
        client.write(d.subarray(0, Math.max(0, state.mode.cutAfter - sent)));
        client.destroy();
        upstream.destroy();
        return;
      }
      sent += d.length;
      client.write(d);
    });
    const kill = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', kill);
    upstream.on('error', kill);
    // A clean end passes on after what is buffered (destroy would drop the tail of a response).
    upstream.on('end', () => client.end());
    client.on('end', () => upstream.end());
  });
  return new Promise((resolve) =>
    proxy!.listen(0, '127.0.0.1', () => {
      state.url = `http://127.0.0.1:${(proxy!.address() as { port: number }).port}`;
      resolve(state);
    }),
  );
}

test('cluster mode: migrate a running guest with its memory, processes, tmpfs, disk and MAC; a cut transfer fails cleanly or resumes; a drain migrates', { timeout: 600_000 }, async () => {
  const { c, call, waitPhase } = k;
  await k.tenant('acme');
  const token = await k.apiKey('acme', 'member');
  const created = await call(token, 'POST', '/microvms', { name: 'mover', vcpu: 1, memory: '128Mi' });
  assert.equal(created.status, 201, created.text);
  const id = created.json.id as string;
  const first = await waitPhase(token, id, 'Running', true);
  const secret = `s${process.pid}x${Date.now()}`;
  const exec = async (cmd: string): Promise<string> => {
    const r = await call(token, 'POST', `/microvms/${id}/exec`, { cmd: ['sh', '-c', cmd] });
    assert.equal(r.status, 200, r.text);
    return `${r.json.stdout}${r.json.stderr}`;
  };
  // Memory: a process whose command line holds the secret, and a file in a tmpfs (RAM only). Disk: a file on the root disk.
  const pid = (await exec(`mkdir -p /mnt/mem && mount -t tmpfs none /mnt/mem && echo mem-${secret} > /mnt/mem/marker && echo disk-${secret} > /root/disk-marker && sync && setsid sh -c 'while :; do sleep 1; done # holder-${secret}' </dev/null >/dev/null 2>&1 & echo $!`)).trim();
  assert.match(pid, /^\d+$/);
  const state = async (): Promise<{ cmdline: string; mem: string; disk: string; mac: string }> => {
    const out = await exec(`tr '\\0' ' ' < /proc/${pid}/cmdline; echo; cat /mnt/mem/marker; cat /root/disk-marker; cat /sys/class/net/eth0/address`);
    const [cmdline = '', mem = '', disk = '', mac = ''] = out.split('\n');
    return { cmdline, mem, disk, mac };
  };
  const before0 = await state();
  assert.match(before0.cmdline, new RegExp(`holder-${secret}`));
  assert.equal(before0.mem, `mem-${secret}`);
  assert.equal(before0.disk, `disk-${secret}`);
  const mac = first.status.interfaces?.[0]?.mac as string;
  assert.equal(before0.mac, mac);

  const migratedCond = (o: any, mig?: string): any => (o.status?.conditions ?? []).find((x: any) => x.type === 'Migrated' && (!mig || x.message.startsWith(`migration ${mig}`)));
  const obj = (): any => c.kubectlJson(['get', 'mvm', 'mover', '-n', 'acme']);
  const dirOf = (node: string): string => c.agents.find((a) => a.node === node)!.dataDir;
  const events = (): any[] => c.kubectlJson(['get', 'events', '-n', 'acme', '--field-selector', 'involvedObject.name=mover']).items;
  /** Ask for a migration; wait until the condition answers it; returns the condition. */
  const migrate = async (body: Record<string, unknown>): Promise<any> => {
    const before = migratedCond(obj())?.message;
    const r = await call(token, 'POST', `/microvms/${id}/migrate`, body);
    assert.equal(r.status, 202, r.text);
    return until(c, 'the migration answered', () => {
      const cond = migratedCond(obj());
      return cond && cond.message !== before && !obj().metadata.annotations?.['microvm.service/migration'] ? cond : undefined;
    }, 180_000);
  };
  /** Nothing of the VM on `node`: no VMM, no directory, no network record, no migration files. */
  const nothingOn = async (node: string): Promise<void> => {
    await until(c, `nothing of ${id} left on ${node}`, () => !c.guests(id).some((g) => g.node === node) && !existsSync(join(dirOf(node), 'vms', id)) && !existsSync(join(dirOf(node), 'network', 'vms', `${id}.json`)), 60_000);
    const mig = join(dirOf(node), 'migrations');
    assert.deepEqual(existsSync(mig) ? readdirSync(mig) : [], [], `no migration files left on ${node}`);
  };

  // Validation: the current node, an unknown node, a bad body.
  const src = first.status.node as string;
  const dst = src === 'node-a' ? 'node-b' : 'node-a';
  assert.equal((await call(token, 'POST', `/microvms/${id}/migrate`, { node: src })).json.code, 'ILLEGAL_TRANSITION');
  const unknown = await call(token, 'POST', `/microvms/${id}/migrate`, { node: 'node-zz' });
  assert.equal(unknown.status, 422, unknown.text);
  assert.equal((await call(token, 'POST', `/microvms/${id}/migrate`, { nodes: 'x' })).status, 400);

  // 1. A migration: same process, tmpfs, disk, MAC, on the other node; nothing left on the source.
  const t0 = Date.now();
  const ok = await migrate({ node: dst });
  assert.equal(ok.status, 'True', ok.message);
  assert.equal(obj().status.node, dst);
  const moved = await waitPhase(token, id, 'Running', true);
  assert.equal(moved.status.node, dst);
  const after1 = await state();
  assert.deepEqual(after1, before0, 'the same process (PID, command line), tmpfs file, disk file and MAC after the move');
  assert.equal(moved.status.interfaces?.[0]?.mac, mac);
  assert.match(ok.message, new RegExp(`address ${first.status.ip.replace(/\./g, '\\.')} kept`), 'the same subnet on both nodes: the address moves with the VM');
  assert.equal(moved.status.ip, first.status.ip);
  assert.match(ok.message, /downtime \d+ ms/);
  await nothingOn(src);
  assert.deepEqual(c.guests(id).map((g) => g.node), [dst]);
  const reasons = events().map((e) => e.reason);
  for (const r of ['Migrating', 'Migrated', 'MigratedLive']) assert.ok(reasons.includes(r), `event ${r} in ${reasons.join(',')}`);
  process.stdout.write(`# migration ${src} → ${dst}: ${ok.message} (request to answer ${Date.now() - t0} ms)\n`);

  // 2. The transfer cut for good: the VM runs on at its source (dst now), nothing left on the target.
  const endpoint = new URL(c.kubectlJson(['get', 'node', dst]).metadata.annotations[ANN_AGENT_ENDPOINT] as string);
  const px = await startProxy(endpoint);
  c.cp.kubectlOk(['annotate', 'node', dst, '--overwrite', `${ANN_AGENT_ENDPOINT}=${px.url}`]);
  px.mode.cutAfter = 0;
  px.mode.cuts = Infinity;
  const failed = await migrate({});
  assert.equal(failed.status, 'False', failed.message);
  assert.equal(failed.reason, 'Transfer', failed.message);
  assert.match(failed.message, /failed at step transfer/);
  assert.ok(px.fileRequests >= 6, `the target tried again before giving up (${px.fileRequests} requests)`);
  const stayed = obj();
  assert.equal(stayed.status.node, dst, 'still on its source');
  assert.equal(stayed.status.phase, 'Running');
  assert.deepEqual(await state(), before0, 'resumed on its source with everything');
  assert.ok(events().some((e) => e.reason === 'MigrationFailed'));
  await nothingOn(src);
  assert.deepEqual(c.guests(id).map((g) => g.node), [dst]);

  // 3. One cut mid-file: the target continues from where it stopped and the migration succeeds.
  px.ranges.length = 0;
  px.mode.cutAfter = 8 * 1024 * 1024;
  px.mode.cuts = 1;
  const resumed = await migrate({});
  assert.equal(resumed.status, 'True', resumed.message);
  assert.match(resumed.message, /transfer resumed 1 time/);
  assert.ok(px.ranges.some((r) => /^bytes=\d+-$/.test(r) && Number(/\d+/.exec(r)![0]) > 0), `a Range request continued the file (${px.ranges.join(', ')})`);
  assert.equal(obj().status.node, src);
  await waitPhase(token, id, 'Running', true);
  assert.deepEqual(await state(), before0);
  await nothingOn(dst);
  c.cp.kubectlOk(['annotate', 'node', dst, '--overwrite', `${ANN_AGENT_ENDPOINT}=${endpoint.href.replace(/\/$/, '')}`]);

  // 4. To a node whose network cannot give the address: a new one, said so, and the guest uses it.
  await c.startAgent('node-c', { env: { MVM_NET_SUBNET: OTHER_SUBNET } });
  await until(c, 'agent endpoint of node-c', () => c.kubectlJson(['get', 'node', 'node-c']).metadata.annotations?.[ANN_AGENT_ENDPOINT]);
  const changed = await migrate({ node: 'node-c' });
  assert.equal(changed.status, 'True', changed.message);
  assert.match(changed.message, /address changed .*10\.213\.0\.\d+ → 10\.214\.0\.\d+/);
  const onC = await waitPhase(token, id, 'Running', true);
  assert.equal(onC.status.node, 'node-c');
  assert.match(onC.status.ip, /^10\.214\.0\./);
  assert.equal(onC.status.interfaces?.[0]?.mac, mac, 'the MAC stays');
  assert.match(await exec('ip -4 -o addr show dev eth0'), new RegExp(`inet ${onC.status.ip.replace(/\./g, '\\.')}/`), 'the guest has its new address');
  assert.deepEqual(await state(), before0);
  assert.ok(events().some((e) => e.reason === 'AddressChanged'));
  await nothingOn(src);

  // 5. A drain (kubectl cordon) moves it with its memory by default.
  const cNode = 'node-c';
  c.cp.kubectlOk(['cordon', cNode]);
  try {
    const drained = await until(c, 'the drain moved the VM with its memory', () => {
      const o = obj();
      return o.status?.node && o.status.node !== cNode && !o.metadata.annotations?.['microvm.service/migration'] ? o : undefined;
    }, 180_000);
    assert.equal(migratedCond(drained).status, 'True');
    const live = events().filter((e) => e.reason === 'MigratedLive').map((e) => e.message);
    assert.ok(live.some((m) => /^NodeDrain: /.test(m)), live.join('\n'));
    assert.ok(!events().some((e) => e.reason === 'ColdMoved'), 'no cold move');
    await waitPhase(token, id, 'Running', true);
    assert.deepEqual(await state(), before0);
    await nothingOn(cNode);
  } finally {
    c.cp.kubectlOk(['uncordon', cNode]);
  }
});
