/**
 * Inside the guest in cluster mode (issue 13; docs/guest-agent-protocol.md, "Cluster mode"): the
 * API in cluster mode, the operator and a node agent as local processes on a real kube-apiserver,
 * a real QEMU guest with the real guest agent. The API reaches the guest through the node agent's
 * endpoint (WebSocket upgrade, TokenReview + SubjectAccessReview `create microvms/guest`), which
 * relays onto its one connection to the guest: buffered exec, streaming exec with stdin over the
 * REST WebSocket, upload and download with a computed checksum, the HTTP proxy and the TCP tunnel
 * to a server in the guest, another tenant 404, the node's endpoint refusing a caller without a
 * token, a paused VM 409 ILLEGAL_TRANSITION (from the API, and from the node itself).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { WebSocket } from 'ws';
import { RemoteNodeAgents } from '../../src/agent/endpoint/client.js';
import { ANN_AGENT_ENDPOINT } from '../../src/agent/endpoint/server.js';
import type { MvmError } from '../../src/core/errors.js';
import { until } from '../support/k8s-operator-cluster.js';
import { startClusterApiHarness, type ClusterApiHarness } from '../support/k8s-cluster-api.js';

const ADMIN = 'adm_cluster_guest_token_0123456789';
let k: ClusterApiHarness | undefined;

before(async () => {
  k = await startClusterApiHarness({ admin: ADMIN, nodes: ['node-a'] });
});

after(async () => {
  await k?.stop();
});

/** One exec over the REST WebSocket: the request, then stdin; stdout/stderr and the exit message back. */
function wsExec(url: string, token: string, id: string, request: Record<string, unknown>, stdin: Buffer): Promise<{ exit: Record<string, unknown>; out: Buffer; err: Buffer }> {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/api/v1/microvms/${id}/exec`, ['mvm.v1', `bearer.${Buffer.from(token).toString('base64url')}`]);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  return new Promise((resolve, reject) => {
    ws.on('error', reject);
    ws.on('open', () => {
      ws.send(JSON.stringify(request));
      ws.send(Buffer.concat([Buffer.from([0]), stdin]));
      ws.send(JSON.stringify({ type: 'eof' }));
    });
    ws.on('message', (data, isBinary) => {
      const b = data as Buffer;
      if (isBinary) (b[0] === 1 ? out : err).push(b.subarray(1));
      else {
        const m = JSON.parse(b.toString()) as Record<string, unknown>;
        if (m.type === 'exit') resolve({ exit: m, out: Buffer.concat(out), err: Buffer.concat(err) });
        if (m.type === 'error') reject(new Error(JSON.stringify(m)));
      }
    });
  });
}

test('exec, files, ports and streaming in cluster mode, through the node agent’s relay to a real guest', { timeout: 480_000 }, async () => {
  const { c, call, waitPhase } = k!;
  const url = k!.api.url;
  await k!.tenant('acme');
  const token = await k!.apiKey('acme', 'member', 'e2e');
  const ep = await until(c, 'agent endpoint annotation', () => c.kubectlJson(['get', 'node', 'node-a']).metadata.annotations?.[ANN_AGENT_ENDPOINT]);

  const created = await call(token, 'POST', '/microvms', { name: 'inside', vcpu: 1, memory: '128Mi', env: { GREETING: 'hi-from-env' } });
  assert.equal(created.status, 201, created.text);
  const id = created.json.id as string;
  const vm = await waitPhase(token, id, 'Running', true);
  assert.equal(vm.status.node, 'node-a');
  assert.match(vm.status.guestAgent?.version ?? '', /^\d+\.\d+\.\d+/, JSON.stringify(vm.status));

  // Buffered exec: a marker computed in the guest.
  const ex = await call(token, 'POST', `/microvms/${id}/exec`, { cmd: ['sh', '-c', 'echo $((6*7)); . /run/mvm-env; echo "$GREETING" >&2; exit 3'] });
  assert.equal(ex.status, 200, ex.text);
  assert.deepEqual([ex.json.exitCode, ex.json.stdout, ex.json.stderr, ex.json.truncated], [3, '42\n', 'hi-from-env\n', false]);

  // Streaming exec over the REST WebSocket with stdin: 1 MiB in (more than a window), its checksum out.
  const input = randomBytes(1024 * 1024 + 5);
  const streamed = await wsExec(url, token, id, { cmd: ['sh', '-c', 'sha256sum | cut -d" " -f1; echo e-$((2+3)) >&2; exit 7'] }, input);
  assert.equal(streamed.exit.exitCode, 7, JSON.stringify(streamed.exit));
  assert.equal(streamed.out.toString().trim(), createHash('sha256').update(input).digest('hex'));
  assert.equal(streamed.err.toString(), 'e-5\n');

  // Several at once: each its own stream on the node's one connection to the guest.
  const many = await Promise.all([1, 2, 3, 4].map((i) => call(token, 'POST', `/microvms/${id}/exec`, { cmd: ['sh', '-c', `echo $((${i}*11))`] })));
  assert.deepEqual(
    many.map((r) => r.json.stdout),
    ['11\n', '22\n', '33\n', '44\n'],
  );

  // Upload, checksum in the guest, download the same bytes.
  const data = randomBytes(3 * 1024 * 1024 + 17);
  const put = await fetch(`${url}/api/v1/microvms/${id}/files?path=/data/deep/blob.bin&mode=640`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/octet-stream' },
    body: data,
  });
  assert.equal(put.status, 201, await put.clone().text());
  assert.equal(((await put.json()) as { size: number }).size, data.length);
  const sum = await call(token, 'POST', `/microvms/${id}/exec`, { cmd: ['sha256sum', '/data/deep/blob.bin'] });
  assert.equal(sum.json.stdout.split(' ')[0], createHash('sha256').update(data).digest('hex'));
  const got = await fetch(`${url}/api/v1/microvms/${id}/files?path=/data/deep/blob.bin`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(got.status, 200);
  assert.ok(Buffer.from(await got.arrayBuffer()).equals(data));
  const st = await call(token, 'GET', `/microvms/${id}/files/stat?path=/data/deep/blob.bin`);
  assert.deepEqual([st.json.type, st.json.size, st.json.mode & 0o777], ['file', data.length, 0o640]);
  // The guest's own error codes come through the relay.
  const missing = await call(token, 'GET', `/microvms/${id}/files/stat?path=/no/such/file`);
  assert.equal(missing.status, 404, missing.text);

  // Ports: the HTTP proxy and the TCP tunnel (tcp.connect streams through the relay) to a server in the guest.
  const httpd = await call(token, 'POST', `/microvms/${id}/exec`, { cmd: ['sh', '-c', 'mkdir -p /srv/www && echo "served-$((3*3))" > /srv/www/index.html && busybox httpd -p 8080 -h /srv/www && echo started'] });
  assert.equal(httpd.json.stdout, 'started\n', httpd.text);
  const proxied = await fetch(`${url}/api/v1/microvms/${id}/proxy/8080/index.html`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(proxied.status, 200);
  assert.equal(await proxied.text(), 'served-9\n');
  const tunnel = new WebSocket(`${url.replace(/^http/, 'ws')}/api/v1/microvms/${id}/ports/8080/connect`, ['mvm.v1', `bearer.${Buffer.from(token).toString('base64url')}`]);
  const raw: Buffer[] = [];
  await new Promise<void>((resolve, reject) => {
    tunnel.on('error', reject);
    tunnel.on('message', (d, isBinary) => {
      if (isBinary) return void raw.push(d as Buffer);
      const m = JSON.parse(String(d)) as { type: string };
      if (m.type === 'connected') tunnel.send(Buffer.from('GET /index.html HTTP/1.0\r\n\r\n'));
      if (m.type === 'error') reject(new Error(String(d)));
    });
    tunnel.on('close', () => resolve());
  });
  assert.match(Buffer.concat(raw).toString(), /^HTTP\/1\.[01] 200[\s\S]*served-9/);

  // Another tenant sees nothing.
  await k!.tenant('globex');
  const other = await k!.apiKey('globex', 'member', 'x');
  assert.equal((await call(other, 'POST', `/microvms/${id}/exec`, { cmd: ['true'] })).status, 404);
  assert.equal((await fetch(`${url}/api/v1/microvms/${id}/files?path=/data/deep/blob.bin`, { headers: { authorization: `Bearer ${other}` } })).status, 404);

  // The node agent's guest route refuses a caller without a token (before any upgrade).
  const bare = new WebSocket(`${ep.replace(/^http/, 'ws')}/v1/microvms/${id}/guest`);
  const refused = await new Promise<number>((resolve) => {
    bare.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
    bare.on('error', () => resolve(-1));
  });
  bare.terminate();
  assert.equal(refused, 401);

  // It all went through node-a's relay.
  assert.match(c.agents[0]!.logs(), /guest relay opened/);

  // A paused VM: the API answers 409 with its phase; the node itself refuses with the same code.
  const pause = await call(token, 'POST', `/microvms/${id}/pause`);
  assert.equal(pause.status, 202, pause.text);
  const paused = await waitPhase(token, id, 'Paused');
  const refusedExec = await call(token, 'POST', `/microvms/${id}/exec`, { cmd: ['true'] });
  assert.equal(refusedExec.status, 409, refusedExec.text);
  assert.equal(refusedExec.json.code, 'ILLEGAL_TRANSITION');
  const agentToken = c.cp.kubectlOk(['create', 'token', 'microvm-api', '-n', 'microvm-system', '--audience', 'microvm-agent', '--duration=10m']).trim();
  const direct = new RemoteNodeAgents({ kubeConfig: c.cp.kubeConfig(), token: () => agentToken });
  await assert.rejects(direct.guest({ ...paused, status: { ...paused.status, phase: 'Running' } }), (e: MvmError) => e.code === 'ILLEGAL_TRANSITION' && /paused/.test(e.message));
  await direct.shutdown();

  const d = await call(token, 'DELETE', `/microvms/${id}`);
  assert.equal(d.status, 202, d.text);
  await until(c, 'inside object gone', () => c.cp.kubectl(['get', 'mvm', 'inside', '-n', 'acme']).status !== 0, 120_000);
});
