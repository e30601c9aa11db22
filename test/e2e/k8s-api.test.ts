/**
 * Cluster mode end to end through the API (ADR 0015): the API in cluster mode (its own
 * ServiceAccount), the operator and a node agent (`mvm-agent`, which also serves the console and
 * metrics endpoint) as local processes on a real kube-apiserver, a real guest under QEMU.
 * REST create → MicroVM object → placed and booted → `wait` sees Running and ready → console and
 * metrics through the API, proxied from the node agent with the API's token → REST delete → the
 * guest stops, the finalizer goes, the object is gone.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { ANN_AGENT_ENDPOINT } from '../../src/agent/endpoint/server.js';
import { until } from '../support/k8s-operator-cluster.js';
import { startClusterApiHarness, type ClusterApiHarness } from '../support/k8s-cluster-api.js';

const ADMIN = 'adm_cluster_e2e_token_0123456789';
let k: ClusterApiHarness | undefined;

before(async () => {
  k = await startClusterApiHarness({ admin: ADMIN, nodes: ['node-a'], grpc: true });
});

after(async () => {
  await k?.stop();
});

test('REST create in cluster mode → real guest Running on the node → console and metrics proxied from its agent → REST delete', { timeout: 420_000 }, async () => {
  const { c, call, waitPhase } = k!;
  await k!.tenant('acme');
  const token = await k!.apiKey('acme', 'member', 'e2e');
  // The agent published its endpoint on its Node.
  const ep = await until(c, 'agent endpoint annotation', () => c.kubectlJson(['get', 'node', 'node-a']).metadata.annotations?.[ANN_AGENT_ENDPOINT]);
  assert.match(ep, /^http:\/\/127\.0\.0\.1:\d+$/);

  const created = await call(token, 'POST', '/microvms', { name: 'e2e', vcpu: 1, memory: '128Mi' });
  assert.equal(created.status, 201, created.text);
  const id = created.json.id as string;
  assert.equal(c.kubectlJson(['get', 'mvm', 'e2e', '-n', 'acme']).metadata.labels['microvm.service/id'], id);
  // Long-poll through the API, driven by the Kubernetes watch.
  const vm = await waitPhase(token, id, 'Running', true);
  assert.equal(vm.status.node, 'node-a');
  assert.match(vm.status.ip, /^\d+\.\d+\.\d+\.\d+$/);
  assert.deepEqual(c.guests(id).map((g) => g.node), ['node-a']);

  // Console and metrics: the API has no local file; they come from node-a's agent.
  const con = await call(token, 'GET', `/microvms/${id}/console`);
  assert.equal(con.status, 200, con.text);
  assert.match(con.text, /Linux version/);
  assert.ok(con.text.includes(`MVM-READY id=${id}`));
  const tail = await call(token, 'GET', `/microvms/${id}/console?tail=64`);
  assert.ok(tail.text.length > 0 && tail.text.length <= 64);
  const m = await call(token, 'GET', `/microvms/${id}/metrics`);
  assert.equal(m.status, 200, m.text);
  assert.ok(m.json.cpuSeconds > 0);
  assert.ok(m.json.memoryRssBytes > 10 * 1024 * 1024);
  assert.ok(m.json.uptimeSeconds > 0);
  // The agent refuses a caller without a token, whoever finds its address.
  assert.equal((await fetch(`${ep}/v1/microvms/${id}/console`)).status, 401);
  // Another tenant sees nothing.
  await k!.tenant('globex');
  const other = await k!.apiKey('globex', 'member', 'x');
  assert.equal((await call(other, 'GET', `/microvms/${id}/console`)).status, 404);

  // Delete through REST: the operator's finalizer holds the object until the node cleaned up.
  const d = await call(token, 'DELETE', `/microvms/${id}`);
  assert.equal(d.status, 202, d.text);
  await until(c, 'e2e object gone', () => c.cp.kubectl(['get', 'mvm', 'e2e', '-n', 'acme']).status !== 0, 120_000);
  assert.deepEqual(c.guests(id), []);
  await until(c, 'the API (informer cache) no longer has it', async () => (await call(token, 'GET', `/microvms/${id}`)).status === 404, 10_000);
});
