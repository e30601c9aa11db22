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
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { ANN_AGENT_ENDPOINT } from '../src/agent/endpoint/server.js';
import { startClusterApi, type ClusterApi } from '../src/cluster-api.js';
import { loadConfig } from '../src/config.js';
import { REPO } from './support/k8s-control-plane.js';
import { apiCall } from './support/service.js';
import { startCluster, until, type TestCluster } from './support/k8s-operator-cluster.js';

const ADMIN = 'adm_cluster_e2e_token_0123456789';
let c: TestCluster;
let api: ClusterApi | undefined;
const tmp = mkdtempSync(join(tmpdir(), 'mvm-k8s-api-e2e-'));
let apiToken = '';

const call = (token: string, method: string, path: string, body?: unknown): ReturnType<typeof apiCall> => apiCall({ url: api!.url, token }, method, path, body);

before(async () => {
  // The node agents' endpoints on loopback (they inherit the environment).
  process.env.MVM_AGENT_LISTEN = '127.0.0.1:0';
  process.env.MVM_AGENT_TOKEN_AUDIENCES = 'microvm-agent';
  c = await startCluster();
  c.cp.kubectlOk(['apply', '-f', join(REPO, 'deploy/api/rbac.yaml')]);
  await c.startOperator('op-0');
  await c.startAgent('node-a');
  apiToken = c.cp.kubectlOk(['create', 'token', 'microvm-api', '-n', 'microvm-system', '--duration=2h']).trim();
  const cluster = c.cp.kubeConfig().getCurrentCluster()!;
  const kc = new KubeConfig();
  kc.loadFromOptions({ clusters: [cluster], users: [{ name: 'api', token: apiToken }], contexts: [{ name: 'api', cluster: cluster.name, user: 'api' }], currentContext: 'api' });
  const cfg = loadConfig({ MVM_STORE: 'kubernetes', MVM_LISTEN: '127.0.0.1:0', MVM_GRPC_LISTEN: '127.0.0.1:0', MVM_ADMIN_TOKEN: ADMIN, MVM_DATA_DIR: tmp, MVM_LOG_LEVEL: 'warn' });
  // As deploy/api does: a token of audience microvm-agent for the agents, the ordinary one for the API server.
  const agentToken = c.cp.kubectlOk(['create', 'token', 'microvm-api', '-n', 'microvm-system', '--audience', 'microvm-agent', '--duration=2h']).trim();
  api = await startClusterApi(cfg, { kubeConfig: kc, agentToken: () => agentToken });
});

after(async () => {
  delete process.env.MVM_AGENT_LISTEN;
  delete process.env.MVM_AGENT_TOKEN_AUDIENCES;
  if (process.env.MVM_TEST_DUMP) process.stderr.write(c?.dump() ?? '');
  await api?.close().catch(() => undefined);
  await c?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

test('REST create in cluster mode → real guest Running on the node → console and metrics proxied from its agent → REST delete', { timeout: 420_000 }, async () => {
  assert.equal((await call(ADMIN, 'POST', '/tenants', { id: 'acme' })).status, 201);
  const key = await call(ADMIN, 'POST', '/apikeys?tenant=acme', { name: 'e2e', role: 'member' });
  assert.equal(key.status, 201, key.text);
  const token = key.json.token as string;
  // The agent published its endpoint on its Node.
  const ep = await until(c, 'agent endpoint annotation', () => c.kubectlJson(['get', 'node', 'node-a']).metadata.annotations?.[ANN_AGENT_ENDPOINT]);
  assert.match(ep, /^http:\/\/127\.0\.0\.1:\d+$/);

  const created = await call(token, 'POST', '/microvms', { name: 'e2e', vcpu: 1, memory: '128Mi' });
  assert.equal(created.status, 201, created.text);
  const id = created.json.id as string;
  assert.equal(c.kubectlJson(['get', 'mvm', 'e2e', '-n', 'acme']).metadata.labels['microvm.service/id'], id);
  // Long-poll through the API, driven by the Kubernetes watch.
  let vm: any;
  for (let i = 0; i < 2 && !vm; i++) {
    const w = await call(token, 'GET', `/microvms/${id}/wait?phase=Running&ready=true&timeout=200s`);
    if (w.status === 200) vm = w.json;
    else assert.equal(w.status, 408, `${w.status} ${w.text}\n${c.dump()}`);
  }
  assert.ok(vm, `the guest did not become Running and ready\n${c.dump()}`);
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
  assert.equal((await call(ADMIN, 'POST', '/tenants', { id: 'globex' })).status, 201);
  const other = (await call(ADMIN, 'POST', '/apikeys?tenant=globex', { name: 'x', role: 'member' })).json.token as string;
  assert.equal((await call(other, 'GET', `/microvms/${id}/console`)).status, 404);

  // Delete through REST: the operator's finalizer holds the object until the node cleaned up.
  const d = await call(token, 'DELETE', `/microvms/${id}`);
  assert.equal(d.status, 202, d.text);
  await until(c, 'e2e object gone', () => c.cp.kubectl(['get', 'mvm', 'e2e', '-n', 'acme']).status !== 0, 120_000);
  assert.deepEqual(c.guests(id), []);
  await until(c, 'the API (informer cache) no longer has it', async () => (await call(token, 'GET', `/microvms/${id}`)).status === 404, 10_000);
});
