/**
 * The API in cluster mode (src/cluster-api.ts, ADR 0015) on a real kube-apiserver, running as its
 * own ServiceAccount with deploy/api/rbac.yaml: REST writes and reads are MicroVM objects in the
 * tenant's namespace, tenants are namespaces, API keys Secrets holding hashes only, audit entries
 * Events, idempotency ConfigMaps; tenants are isolated (404). And the node agent's endpoint
 * (src/agent/endpoint, running as the node agent's ServiceAccount with deploy/firecracker/rbac.yaml):
 * it refuses callers without a token (401), with a bad token (401) or without the right (403, by
 * SubjectAccessReview), and serves console and metrics to the API's token, which the API proxies.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { CaBundle } from '../../src/tls/files.js';
import { TestPki } from '../support/tls.js';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as grpcStatus } from '@grpc/grpc-js';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { createGrpcClient, unaryCall } from '../../src/grpc/client.js';
import { RemoteNodeAgents } from '../../src/agent/endpoint/client.js';
import { startAgentEndpoint, type AgentEndpoint } from '../../src/agent/endpoint/server.js';
import { MvmError } from '../../src/core/errors.js';
import { ApiKubernetesStore, startClusterApi, type ClusterApi } from '../../src/cluster-api.js';
import { storeContract } from '../contract/store.contract.js';
import { loadConfig } from '../../src/config.js';
import type { MicroVM } from '../../src/core/microvm.js';
import type { ActualVm } from '../../src/core/ports/agent.js';
import type { VmMetricsT } from '../../src/core/schema.js';
import { KUBERNETES_STORE_CAPABILITIES, KubernetesStore } from '../../src/store/kubernetes/k8s-store.js';
import { REPO, installCrds, startControlPlane, type ControlPlane } from '../support/k8s-control-plane.js';
import { apiCall } from '../support/service.js';
import { parseApiKeyToken } from '../../src/core/tenancy.js';

const ADMIN = 'adm_cluster_test_token_0123456789';
let cp: ControlPlane;
let api: ClusterApi;
let agentStore: KubernetesStore | undefined;
let endpoint: AgentEndpoint | undefined;
const tmp = mkdtempSync(join(tmpdir(), 'mvm-k8s-api-'));
const tokens: Record<string, string> = {};

/** A kubeconfig for the control plane that authenticates with a service-account token. */
function tokenKubeConfig(token: string): KubeConfig {
  const cluster = cp.kubeConfig().getCurrentCluster()!;
  const kc = new KubeConfig();
  kc.loadFromOptions({ clusters: [cluster], users: [{ name: 'sa', token }], contexts: [{ name: 'sa', cluster: cluster.name, user: 'sa' }], currentContext: 'sa' });
  return kc;
}
const saToken = (ns: string, sa: string, audience?: string): string =>
  cp.kubectlOk(['create', 'token', sa, '-n', ns, '--duration=2h', ...(audience ? ['--audience', audience] : [])]).trim();

const call = (token: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): ReturnType<typeof apiCall> => apiCall({ url: api.url, token }, method, path, body, headers);

/** Reads come from the API's informer cache: another writer's change shows up within the watch latency. */
async function eventually<T>(what: string, fn: () => Promise<T | undefined | false>, ms = 10_000): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
const kget = (args: string[]): any => JSON.parse(cp.kubectlOk(['get', ...args, '-o', 'json']));
/** Write status fields as the operator / node agent would (status subresource; phase and conditions are required). */
function setStatus(ns: string, name: string, fields: Record<string, unknown>): void {
  const cur = kget(['microvm', name, '-n', ns]).status ?? {};
  const status = { phase: 'Pending', conditions: [], ...cur, ...fields };
  cp.kubectlOk(['patch', 'microvm', name, '-n', ns, '--subresource=status', '--type=merge', '-p', JSON.stringify({ status })]);
}

before(async () => {
  cp = await startControlPlane();
  installCrds(cp);
  cp.kubectlOk(['apply', '-f', join(REPO, 'deploy/operator/00-namespace.yaml')]);
  cp.kubectlOk(['apply', '-f', join(REPO, 'deploy/api/rbac.yaml')]);
  cp.kubectlOk(['apply', '-f', join(REPO, 'deploy/firecracker/rbac.yaml')]);
  tokens.api = saToken('microvm-system', 'microvm-api');
  // What deploy/api projects for the agents: the API's identity, audience microvm-agent only.
  tokens.apiAgent = cp.kubectlOk(['create', 'token', 'microvm-api', '-n', 'microvm-system', '--audience', 'microvm-agent', '--duration=2h']).trim();
  writeFileSync(join(tmp, 'agent-token'), tokens.apiAgent + '\n');
  tokens.agent = saToken('microvm-system', 'firecracker-runtime');
  cp.kubectlOk(['create', 'serviceaccount', 'nobody', '-n', 'default']);
  const cfg = loadConfig({ MVM_STORE: 'kubernetes', MVM_LISTEN: '127.0.0.1:0', MVM_GRPC_LISTEN: '127.0.0.1:0', MVM_ADMIN_TOKEN: ADMIN, MVM_DATA_DIR: tmp, MVM_LOG_LEVEL: 'warn', MVM_AGENT_TOKEN_FILE: join(tmp, 'agent-token') });
  // The API runs as its ServiceAccount: deploy/api/rbac.yaml must be enough for everything below.
  api = await startClusterApi(cfg, { kubeConfig: tokenKubeConfig(tokens.api) });
});

after(async () => {
  await endpoint?.close().catch(() => undefined);
  await agentStore?.close().catch(() => undefined);
  await api?.close().catch(() => undefined);
  await cp?.stop();
  rmSync(tmp, { recursive: true, force: true });
});

// The store contract against the API's informer-cache store (reads from memory, writes to the API server).
let partitions = 0;
storeContract('kubernetes, API informer cache', async () => {
  const s = new ApiKubernetesStore({ kubeConfig: cp.kubeConfig(), partition: `cc${partitions++}` });
  await eventually('cache synced', async () => s.cacheReady);
  return s;
}, KUBERNETES_STORE_CAPABILITIES);

const keys: Record<string, { id: string; token: string }> = {};
let webId = '';

test('cluster API: tenants are namespaces; API keys are Secrets holding only the hash', async () => {
  for (const t of ['acme', 'globex']) {
    const r = await call(ADMIN, 'POST', '/tenants', { id: t, displayName: t.toUpperCase(), quotas: { vms: 2 } });
    assert.equal(r.status, 201, r.text);
    const ns = kget(['namespace', t]);
    assert.equal(ns.metadata.labels['microvm.service/tenant-record'], 'true');
    assert.equal(JSON.parse(ns.metadata.annotations['microvm.service/tenant']).displayName, t.toUpperCase());
    const k = await call(ADMIN, 'POST', `/apikeys?tenant=${t}`, { name: 'ci', role: 'member' });
    assert.equal(k.status, 201, k.text);
    keys[t] = { id: k.json.id, token: k.json.token };
  }
  assert.equal((await call(ADMIN, 'POST', '/tenants', { id: 'acme' })).status, 409);
  const list = await call(ADMIN, 'GET', '/tenants');
  assert.deepEqual(list.json.items.map((t: { id: string }) => t.id).sort(), ['acme', 'default', 'globex']);
  const secret = kget(['secret', keys.acme!.id, '-n', 'microvm-system']);
  assert.equal(secret.type, 'microvm.service/api-key');
  assert.equal(secret.metadata.labels['microvm.service/tenant'], 'acme');
  const stored = Buffer.from(secret.data.record, 'base64').toString();
  const secretPart = parseApiKeyToken(keys.acme!.token)!.secret;
  assert.ok(!stored.includes(secretPart), 'the Secret must not hold the key secret');
  assert.match(JSON.parse(stored).secretHash, /^[0-9a-f]{64}$/);
  const who = await call(keys.acme!.token, 'GET', '/whoami');
  assert.equal(who.status, 200, who.text);
  assert.equal(who.json.tenant, 'acme');
});

test('cluster API: REST create/list/get/delete map to MicroVM objects in the tenant namespace; tenants are isolated', async () => {
  const acme = keys.acme!.token;
  const globex = keys.globex!.token;
  const c = await call(acme, 'POST', '/microvms', { name: 'web', vcpu: 2, memory: '256Mi', labels: { app: 'web' } });
  assert.equal(c.status, 201, c.text);
  webId = c.json.id;
  const obj = kget(['microvm', 'web', '-n', 'acme']);
  assert.equal(obj.metadata.labels['microvm.service/id'], webId);
  assert.equal(obj.spec.vcpu, 2);
  assert.equal(obj.spec.desiredState, 'Running');
  // A write by someone else (kubectl, the operator) is what the API reads.
  setStatus('acme', 'web', { phase: 'Scheduled', node: 'node-x' });
  const got = await eventually('the API sees the status write', async () => {
    const r = await call(acme, 'GET', `/microvms/${webId}`);
    return r.json?.status?.node === 'node-x' && r;
  });
  assert.equal(got.status, 200);
  assert.equal(got.json.status.phase, 'Scheduled');
  assert.equal(got.json.status.node, 'node-x');
  assert.equal((await call(acme, 'GET', '/microvms/web')).json.id, webId);
  const l = await call(acme, 'GET', '/microvms?label=app%3Dweb');
  assert.equal(l.status, 200, l.text);
  assert.deepEqual(l.json.items.map((v: MicroVM) => v.id), [webId]);
  // Another tenant: the VM does not exist for it.
  assert.equal((await call(globex, 'GET', `/microvms/${webId}`)).status, 404);
  assert.equal((await call(globex, 'GET', '/microvms/web')).status, 404);
  assert.equal((await call(globex, 'DELETE', `/microvms/${webId}`)).status, 404);
  assert.equal((await call(globex, 'GET', `/microvms/${webId}/console`)).status, 404);
  assert.equal((await call(globex, 'GET', `/microvms/${webId}/metrics`)).status, 404);
  assert.deepEqual((await call(globex, 'GET', '/microvms')).json.items, []);
  assert.ok(kget(['microvm', 'web', '-n', 'acme']), 'still there after the foreign delete');
  // The same name in another tenant is another object in another namespace.
  const g = await call(globex, 'POST', '/microvms', { name: 'web', start: false });
  assert.equal(g.status, 201, g.text);
  assert.equal(kget(['microvm', 'web', '-n', 'globex']).spec.desiredState, 'Stopped');
  // Delete through REST deletes the object (no operator finalizer in this test: it is gone at once).
  const d = await call(globex, 'DELETE', `/microvms/${g.json.id}`);
  assert.equal(d.status, 202, d.text);
  assert.notEqual(cp.kubectl(['get', 'microvm', 'web', '-n', 'globex']).status, 0);
  await eventually('the deleted VM is gone for the API', async () => (await call(globex, 'GET', `/microvms/${g.json.id}`)).status === 404);
});

test('cluster API: wait is driven by the Kubernetes watch; quota, idempotency and audit live in the cluster', async () => {
  const acme = keys.acme!.token;
  const waiting = call(acme, 'GET', `/microvms/${webId}/wait?phase=Running&timeout=30s`);
  await new Promise((r) => setTimeout(r, 500));
  setStatus('acme', 'web', { phase: 'Running', ip: '10.100.0.5' });
  const w = await waiting;
  assert.equal(w.status, 200, w.text);
  assert.equal(w.json.status.ip, '10.100.0.5');
  // Idempotency-Key: the retry replays the first response (a ConfigMap claim), no second object.
  const a = await call(acme, 'POST', '/microvms', { name: 'idem', start: false }, { 'idempotency-key': 'create-idem-1' });
  const b = await call(acme, 'POST', '/microvms', { name: 'idem', start: false }, { 'idempotency-key': 'create-idem-1' });
  assert.equal(a.status, 201, a.text);
  assert.equal(b.status, 201, b.text);
  assert.equal(b.headers.get('idempotent-replayed'), 'true');
  assert.equal(b.json.id, a.json.id);
  assert.equal(kget(['configmaps', '-n', 'microvm-system', '-l', 'microvm.service/idempotency=true']).items.length, 1);
  // Quota vms: 2 — web and idem exist.
  const q = await call(acme, 'POST', '/microvms', { name: 'third', start: false });
  assert.equal(q.status, 403, q.text);
  assert.equal(q.json.code, 'QUOTA_EXCEEDED');
  // Concurrent creates never pass the quota together (pending admissions on the namespace, ADR 0015).
  assert.equal((await call(ADMIN, 'POST', '/tenants', { id: 'race', quotas: { vms: 3 } })).status, 201);
  const raceKey = (await call(ADMIN, 'POST', '/apikeys?tenant=race', { name: 'r', role: 'member' })).json.token as string;
  const results = await Promise.all(Array.from({ length: 8 }, (_, i) => call(raceKey, 'POST', '/microvms', { name: `r${i}`, start: false })));
  assert.deepEqual(results.map((r) => r.status).sort(), [201, 201, 201, 403, 403, 403, 403, 403], results.map((r) => r.text).join('\n'));
  assert.equal(kget(['microvms', '-n', 'race']).items.length, 3);
  // Lists come from the informer cache (its own cursors), paged in namespace/name order.
  assert.equal(api.store.constructor.name, 'ApiKubernetesStore');
  const p1 = await call(acme, 'GET', '/microvms?limit=1');
  assert.equal(p1.status, 200, p1.text);
  assert.ok(Buffer.from(p1.json.next_cursor, 'base64url').toString().startsWith('cache:'), 'served from the cache');
  const p2 = await call(acme, 'GET', `/microvms?limit=1&cursor=${p1.json.next_cursor}`);
  assert.deepEqual([...p1.json.items, ...p2.json.items].map((v: MicroVM) => v.name), ['idem', 'web']);
  assert.equal(p2.json.next_cursor, undefined);
  const u = await call(acme, 'GET', '/tenants/acme/usage');
  assert.equal(u.json.vms.used, 2);
  assert.equal(u.json.vms.limit, 2);
  // Audit: Events in microvm-system, queryable through the API.
  const ev = kget(['events', '-n', 'microvm-system', '-l', 'microvm.service/audit=true,microvm.service/tenant=acme']);
  assert.ok(ev.items.some((e: any) => JSON.parse(e.metadata.annotations['microvm.service/audit']).operation === 'microvms.create'));
  const audit = await call(ADMIN, 'GET', '/audit?tenant=globex&result=allowed');
  assert.equal(audit.status, 200, audit.text);
  assert.ok(audit.json.items.some((e: any) => e.operation === 'microvms.delete' && e.tenant === 'globex'));
  assert.ok(audit.json.items.every((e: any) => e.tenant === 'globex'));
  const seqs = audit.json.items.map((e: any) => e.seq);
  assert.deepEqual(seqs, [...seqs].sort((x: number, y: number) => x - y));
});

test('agent endpoint: 401 without or with a bad token, 403 without the right, console and metrics for the API (directly and proxied)', async () => {
  cp.kubectlOk(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-a', labels: { 'microvm.service/kvm': 'true' } } }));
  const consoleFile = join(tmp, 'console.log');
  writeFileSync(consoleFile, 'boot line 1\nlogin: \n');
  const metricsOf = (vm: MicroVM): VmMetricsT => ({
    id: vm.id, phase: vm.status.phase, timestamp: new Date().toISOString(), cpuSeconds: 1.5, memoryRssBytes: 12345678,
    guestMemoryBytes: 256 * 1024 * 1024, uptimeSeconds: 42, block: [], net: [],
  });
  let state: ActualVm['state'] = 'running';
  const agentKc = tokenKubeConfig(tokens.agent!);
  // The node agent's own view: its store, as its ServiceAccount (deploy/firecracker/rbac.yaml).
  agentStore = new KubernetesStore({ kubeConfig: agentKc, component: 'microvm-node-agent' });
  const store = agentStore;
  endpoint = await startAgentEndpoint({
    agent: { consolePath: (id) => (id === webId ? consoleFile : undefined), metrics: async (vm) => metricsOf(vm), observe: (id) => ({ id, state, ready: true }) },
    nodeName: 'node-a',
    lookup: (id) => store.getVm(id),
    namespaceOf: (t) => store.tn.namespaceOf(t),
    kubeConfig: agentKc,
    audiences: ['microvm-agent'],
    advertise: true,
  });
  assert.equal(kget(['node', 'node-a']).metadata.annotations['microvm.service/agent-endpoint'], endpoint.url);
  // Bind the VM to this node, as the operator would.
  setStatus('acme', 'web', { node: 'node-a' });
  await eventually('the API sees the binding', async () => (await call(keys.acme!.token, 'GET', `/microvms/${webId}`)).json?.status?.node === 'node-a');
  const url = `${endpoint.url}/v1/microvms/${webId}`;
  const get = async (path: string, token?: string): Promise<{ status: number; text: string }> => {
    const r = await fetch(`${url}${path}`, token === undefined ? {} : { headers: { authorization: `Bearer ${token}` } });
    return { status: r.status, text: await r.text() };
  };
  assert.equal((await get('/console')).status, 401);
  assert.equal((await get('/metrics')).status, 401);
  assert.equal((await get('/console', 'not-a-token')).status, 401);
  // A token signed by someone else (a well-formed JWT the API server did not issue).
  const forged = `${Buffer.from('{"alg":"RS256","kid":"x"}').toString('base64url')}.${Buffer.from(JSON.stringify({ iss: 'https://kubernetes.default.svc.cluster.local', sub: 'system:serviceaccount:microvm-system:microvm-api', aud: ['https://kubernetes.default.svc.cluster.local'], exp: Math.floor(Date.now() / 1000) + 600 })).toString('base64url')}.c2ln`;
  assert.equal((await get('/console', forged)).status, 401);
  // Authenticated but without the right.
  const nobodyAud = saToken('default', 'nobody', 'microvm-agent');
  const nobody = await get('/console', nobodyAud);
  assert.equal(nobody.status, 403, nobody.text);
  assert.ok(!nobody.text.includes('boot line'));
  assert.equal((await get('/metrics', nobodyAud)).status, 403);
  // The node agent's own account may not read consoles either.
  assert.equal((await get('/console', saToken('microvm-system', 'firecracker-runtime', 'microvm-agent'))).status, 403);
  // A ServiceAccount allowed only in namespace globex may not read acme's VM.
  cp.kubectlOk(['create', 'serviceaccount', 'globex-reader', '-n', 'globex']);
  cp.kubectlOk(['create', 'role', 'console-reader', '-n', 'globex', '--verb=get', '--resource=microvms.microvm.service/console']);
  cp.kubectlOk(['create', 'rolebinding', 'console-reader', '-n', 'globex', '--role=console-reader', '--serviceaccount=globex:globex-reader']);
  assert.equal((await get('/console', saToken('globex', 'globex-reader', 'microvm-agent'))).status, 403);
  // An unknown id: 403 for those without the cluster-wide right, 404 for the API.
  assert.equal((await fetch(`${endpoint.url}/v1/microvms/vm-nope/console`, { headers: { authorization: `Bearer ${nobodyAud}` } })).status, 403);
  assert.equal((await fetch(`${endpoint.url}/v1/microvms/vm-nope/console`, { headers: { authorization: `Bearer ${tokens.apiAgent}` } })).status, 404);
  // The API's ordinary token (audience: the API server) is refused: agents take only microvm-agent tokens…
  assert.equal((await get('/console', tokens.api)).status, 401);
  // …and such a token is useless against the API server, so an agent cannot replay it there.
  await assert.rejects(tokenKubeConfig(tokens.apiAgent!).makeApiClient(CoreV1Api).listNamespace(), (e: { code?: number }) => e.code === 401);
  // The API's agent token: served.
  const con = await get('/console', tokens.apiAgent);
  assert.equal(con.status, 200, con.text);
  assert.equal(con.text, 'boot line 1\nlogin: \n');
  assert.equal((await get('/console?tail=8', tokens.apiAgent)).text, 'login: \n');
  const m = await get('/metrics', tokens.apiAgent);
  assert.equal(m.status, 200);
  assert.equal(JSON.parse(m.text).memoryRssBytes, 12345678);

  // Through the API: the tenant's REST call is proxied from the VM's node agent.
  const acme = keys.acme!.token;
  const pc = await call(acme, 'GET', `/microvms/${webId}/console`);
  assert.equal(pc.status, 200, pc.text);
  assert.equal(pc.text, 'boot line 1\nlogin: \n');
  const pm = await call(acme, 'GET', `/microvms/${webId}/metrics`);
  assert.equal(pm.status, 200, pm.text);
  assert.equal(pm.json.cpuSeconds, 1.5);
  assert.equal(pm.json.uptimeSeconds, 42);
  // gRPC: the same proxied console and metrics; another tenant gets NOT_FOUND.
  const g = createGrpcClient(api.grpcAddress!, acme);
  const chunks: string[] = [];
  for await (const c of g.GetConsole({ id: webId, follow: false })) chunks.push((c as { data: Buffer }).data.toString());
  assert.equal(chunks.join(''), 'boot line 1\nlogin: \n');
  assert.equal((await unaryCall(g.GetMetrics.bind(g), { id: webId })).memoryRssBytes?.toString(), '12345678');
  const og = createGrpcClient(api.grpcAddress!, keys.globex!.token);
  await assert.rejects(unaryCall(og.GetMetrics.bind(og), { id: webId }), (e: { code?: number }) => e.code === grpcStatus.NOT_FOUND);
  g.close();
  og.close();
  // Following: new output arrives through both hops; the stream ends when the VM stops.
  const ac = new AbortController();
  const r = await fetch(`${api.url}/api/v1/microvms/${webId}/console?follow=true&tail=0`, { headers: { authorization: `Bearer ${acme}` }, signal: ac.signal });
  assert.equal(r.status, 200);
  const reader = r.body!.getReader();
  let seen = '';
  setTimeout(() => appendFileSync(consoleFile, 'hello from the guest\n'), 300);
  const deadline = Date.now() + 15_000;
  while (!seen.includes('hello from the guest') && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    seen += Buffer.from(value).toString();
  }
  assert.equal(seen, 'hello from the guest\n');
  state = 'stopped';
  let ended = false;
  const endBy = Date.now() + 15_000;
  while (Date.now() < endBy) {
    const { done } = await reader.read();
    if (done) {
      ended = true;
      break;
    }
  }
  assert.ok(ended, 'the stream ends once the VM cannot produce more output');
  state = 'running';
  // A VM bound to another node is not this agent's.
  setStatus('acme', 'web', { node: 'node-b' });
  assert.equal((await get('/console', tokens.apiAgent)).status, 404);
});

test('cluster API: security groups are SecurityGroup objects in the tenant namespace; admission checks references; tenants are isolated', async () => {
  const ta = await call(ADMIN, 'POST', '/apikeys?tenant=acme', { name: 'netadmin', role: 'tenant-admin' });
  assert.equal(ta.status, 201, ta.text);
  const acme = ta.json.token as string;
  const sg = await call(acme, 'POST', '/securitygroups', { name: 'web-sg', description: 'http', rules: [{ direction: 'ingress', protocol: 'tcp', ports: '80', cidr: '0.0.0.0/0' }] });
  assert.equal(sg.status, 201, sg.text);
  const obj = kget(['securitygroup', 'web-sg', '-n', 'acme']);
  assert.equal(obj.metadata.labels['microvm.service/id'], sg.json.id);
  assert.equal(obj.spec.rules[0].ports, '80');
  assert.equal((await call(keys.globex!.token, 'GET', `/securitygroups/${sg.json.id}`)).status, 404);
  assert.deepEqual((await call(keys.globex!.token, 'GET', '/securitygroups')).json.items, []);
  const up = await call(acme, 'PUT', `/securitygroups/${sg.json.id}`, { description: 'http only' });
  assert.equal(up.status, 200, up.text);
  assert.equal(kget(['securitygroup', 'web-sg', '-n', 'acme']).spec.description, 'http only');
  // A microVM may reference only groups that exist in its tenant.
  const bad = await call(acme, 'PUT', `/microvms/${webId}`, { securityGroups: ['nope'] });
  assert.ok(bad.status === 400 || bad.status === 404 || bad.status === 422, bad.text);
  const ok = await call(acme, 'PUT', `/microvms/${webId}`, { securityGroups: ['web-sg'] });
  assert.equal(ok.status, 200, ok.text);
  assert.deepEqual(kget(['microvm', 'web', '-n', 'acme']).spec.securityGroups, ['web-sg']);
  // In use: not deleted.
  assert.equal((await call(acme, 'DELETE', `/securitygroups/${sg.json.id}`)).status, 409);
});

test('cluster API: pools — GET /pools, GET /pools/{name}, POST /pools/{name}/scale writes spec.replicas through the scale subresource; tenants are isolated', async () => {
  cp.kubectlOk(['apply', '-f', '-'], JSON.stringify({
    apiVersion: 'microvm.service/v1alpha1',
    kind: 'MicroVMPool',
    metadata: { name: 'workers', namespace: 'acme' },
    spec: { replicas: 1, template: { spec: { vcpu: 1, memory: '128Mi' } }, scaleDown: 'suspend' },
  }));
  const acme = keys.acme!.token;
  const l = await call(acme, 'GET', '/pools');
  assert.equal(l.status, 200, l.text);
  assert.deepEqual(l.json.items.map((p: { name: string; tenant: string }) => `${p.tenant}/${p.name}`), ['acme/workers']);
  const g = await call(acme, 'GET', '/pools/workers');
  assert.equal(g.status, 200, g.text);
  assert.deepEqual([g.json.spec.replicas, g.json.spec.scaleDown, g.json.spec.template.spec.memory], [1, 'suspend', '128Mi']);
  const s = await call(acme, 'POST', '/pools/workers/scale', { replicas: 4 });
  assert.equal(s.status, 200, s.text);
  assert.equal(s.json.spec.replicas, 4);
  assert.equal(kget(['mvmpool', 'workers', '-n', 'acme']).spec.replicas, 4, 'written in the cluster');
  // Validation names the field; another tenant sees no such pool; an admin lists every tenant.
  const bad = await call(acme, 'POST', '/pools/workers/scale', { replicas: -1 });
  assert.equal(bad.status, 400, bad.text);
  assert.ok(JSON.stringify(bad.json).includes('replicas'), bad.text);
  assert.equal((await call(acme, 'GET', '/pools/nope')).status, 404);
  const globex = keys.globex!.token;
  assert.equal((await call(globex, 'GET', '/pools/workers')).status, 404);
  assert.equal((await call(globex, 'POST', '/pools/workers/scale', { replicas: 0 })).status, 404);
  assert.deepEqual((await call(globex, 'GET', '/pools')).json.items, []);
  assert.equal(kget(['mvmpool', 'workers', '-n', 'acme']).spec.replicas, 4, 'untouched by the foreign scale');
  assert.deepEqual((await call(ADMIN, 'GET', '/pools')).json.items.map((p: { name: string }) => p.name), ['workers']);
  cp.kubectlOk(['delete', 'mvmpool', 'workers', '-n', 'acme']);
});

test('cluster API: tenant update is conditional on the namespace resourceVersion; delete refuses while VMs exist, cascade deletes the namespace', async () => {
  const t = await call(ADMIN, 'GET', '/tenants/globex');
  assert.equal(t.status, 200);
  assert.equal(t.json.resourceVersion, kget(['namespace', 'globex']).metadata.resourceVersion);
  const up = await call(ADMIN, 'PUT', '/tenants/globex', { quotas: { vms: 5 } }, { 'if-match': `"${t.json.resourceVersion}"` });
  assert.equal(up.status, 200, up.text);
  assert.equal(JSON.parse(kget(['namespace', 'globex']).metadata.annotations['microvm.service/tenant']).quotas.vms, 5);
  const stale = await call(ADMIN, 'PUT', '/tenants/globex', { quotas: { vms: 6 } }, { 'if-match': `"${t.json.resourceVersion}"` });
  assert.equal(stale.status, 409, stale.text);
  assert.equal(stale.json.code, 'CONFLICT');
  const vm = await call(keys.globex!.token, 'POST', '/microvms', { name: 'left', start: false });
  assert.equal(vm.status, 201, vm.text);
  const refused = await call(ADMIN, 'DELETE', '/tenants/globex');
  assert.equal(refused.status, 409, refused.text);
  const del = await call(ADMIN, 'DELETE', '/tenants/globex?cascade=true');
  assert.equal(del.status, 200, del.text);
  assert.equal(del.json.apiKeys, 1);
  // The namespace is being deleted (no namespace controller here: it stays Terminating); the tenant is gone.
  const ns = cp.kubectl(['get', 'namespace', 'globex', '-o', 'json']);
  assert.ok(ns.status !== 0 || JSON.parse(ns.stdout).metadata.deletionTimestamp, 'namespace deleted');
  assert.equal((await call(ADMIN, 'GET', '/tenants/globex')).status, 404);
  assert.equal(kget(['secrets', '-n', 'microvm-system', '-l', 'microvm.service/apikey=true,microvm.service/tenant=globex']).items.length, 0);
  assert.equal((await call(keys.globex!.token, 'GET', '/whoami')).status, 401);
});

test('mvm-server with MVM_STORE=kubernetes serves the API in cluster mode and stops on SIGTERM', { timeout: 60_000 }, async () => {
  const { spawn } = await import('node:child_process');
  const p = spawn(process.execPath, [join(REPO, 'dist/src/cmd/mvm-server.js')], {
    env: { ...process.env, MVM_STORE: 'kubernetes', KUBECONFIG: cp.kubeconfig, MVM_LISTEN: '127.0.0.1:0', MVM_GRPC_LISTEN: '127.0.0.1:0', MVM_ADMIN_TOKEN: ADMIN, MVM_DATA_DIR: join(tmp, 'srv'), MVM_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  p.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => p.once('exit', (code) => r(code)));
  try {
    const deadline = Date.now() + 30_000;
    let url: string | undefined;
    while (!(url = /cluster mode\) listening on (http:\/\/[0-9.]+:\d+)/.exec(out)?.[1]) && Date.now() < deadline && p.exitCode === null) await new Promise((r) => setTimeout(r, 100));
    assert.ok(url, `no listening line:\n${out}`);
    const r = await fetch(`${url}/api/v1/microvms/${webId}`, { headers: { authorization: `Bearer ${keys.acme!.token}` } });
    assert.equal(r.status, 200);
    assert.equal(((await r.json()) as MicroVM).name, 'web');
    p.kill('SIGTERM');
    assert.equal(await exited, 0, out);
  } finally {
    if (p.exitCode === null) p.kill('SIGKILL');
  }
});

test('host ports in cluster mode: out of range 400, taken by another tenant 409, past the hostPorts quota 403 (ADR 0025)', async () => {
  for (const [id, quotas] of [['ports-a', { hostPorts: 2 }], ['ports-b', {}]] as const) {
    assert.equal((await call(ADMIN, 'POST', '/tenants', { id, quotas })).status, 201);
  }
  const a = (await call(ADMIN, 'POST', '/apikeys?tenant=ports-a', { name: 'k', role: 'member' })).json.token as string;
  const b = (await call(ADMIN, 'POST', '/apikeys?tenant=ports-b', { name: 'k', role: 'member' })).json.token as string;
  const create = (token: string, name: string, ports: unknown[]) => call(token, 'POST', '/microvms', { name, start: false, ports });
  const field = (r: Awaited<ReturnType<typeof call>>) => (r.json.errors as Array<{ field: string }> | undefined)?.map((e) => e.field);
  const ssh = await create(a, 'ssh', [{ hostPort: 22, guestPort: 22 }]);
  assert.equal(ssh.status, 400, ssh.text);
  assert.deepEqual(field(ssh), ['ports[0].hostPort']);
  const held = await create(a, 'holder', [{ hostPort: 30500, guestPort: 80 }]);
  assert.equal(held.status, 201, held.text);
  const theft = await create(b, 'thief', [{ hostPort: 30500, guestPort: 80 }]);
  assert.equal(theft.status, 409, theft.text);
  assert.deepEqual(field(theft), ['ports[0].hostPort']);
  const over = await create(a, 'more', [{ hostPort: 30501, guestPort: 80 }, { hostPort: 30502, guestPort: 81 }]);
  assert.equal(over.status, 403, over.text);
  assert.equal(over.json.resource, 'hostPorts');
  assert.deepEqual((await call(a, 'GET', '/tenants/ports-a/usage')).json.hostPorts, { used: 1, limit: 2 });
  assert.equal(kget(['microvms', '-n', 'ports-b']).items.length, 0, 'nothing of the refused creates was written');
});

test('agent endpoint over HTTPS: the API trusts only the configured CA and the node\'s name; certificate and CA rotate without a restart', async () => {
  const pki = new TestPki();
  const ca = pki.ca('agent-ca');
  const name = (node: string): string => `${node}.agent.microvm.service`;
  // As deploy/tls/gen-agent-certs.sh issues them: the node's name, and the address of no one.
  const issued = pki.issue(ca, 'node-tls', [`DNS:${name('node-tls')}`]);
  const created = await call(ADMIN, 'POST', '/microvms', { name: 'tlsvm', start: false });
  assert.equal(created.status, 201, created.text);
  cp.kubectlOk(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-tls' } }));
  setStatus('default', 'tlsvm', { node: 'node-tls' });
  const agentKc = tokenKubeConfig(tokens.agent!);
  const store = new KubernetesStore({ kubeConfig: agentKc, component: 'microvm-node-agent' });
  const tlsEndpoint = await startAgentEndpoint({
    agent: { consolePath: () => undefined, metrics: async (vm) => ({ id: vm.id, phase: vm.status.phase, timestamp: new Date().toISOString(), cpuSeconds: 7, memoryRssBytes: 1, guestMemoryBytes: 1, uptimeSeconds: 1, block: [], net: [] }), observe: (id) => ({ id, state: 'running', ready: true }) },
    nodeName: 'node-tls',
    lookup: (id) => store.getVm(id),
    namespaceOf: (t) => store.tn.namespaceOf(t),
    kubeConfig: agentKc,
    tls: { certFile: issued.cert, keyFile: issued.key, reloadMs: 100 },
    advertise: true,
  });
  const bundle = new CaBundle(ca.cert, { pollMs: 100 });
  try {
    assert.match(tlsEndpoint.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const vm = (await store.getVm(created.json.id))!;
    const apiKc = tokenKubeConfig(tokens.api!);
    const trusting = new RemoteNodeAgents({ kubeConfig: apiKc, token: () => tokens.api!, ca: () => bundle.current, serverName: name, endpointCacheMs: 0 });
    assert.equal((await trusting.metrics(vm)).cpuSeconds, 7);
    const untrusting = new RemoteNodeAgents({ kubeConfig: apiKc, token: () => tokens.api!, serverName: name, endpointCacheMs: 0 });
    await assert.rejects(untrusting.metrics(vm), (e: unknown) => e instanceof MvmError && e.code === 'UNAVAILABLE' && /certificate/.test(e.message));
    // The right CA but another node's certificate: refused (a node cannot stand in for another).
    const wrongName = new RemoteNodeAgents({ kubeConfig: apiKc, token: () => tokens.api!, ca: () => bundle.current, serverName: (n) => name(`${n}-other`), endpointCacheMs: 0 });
    await assert.rejects(wrongName.metrics(vm), (e: unknown) => e instanceof MvmError && e.code === 'UNAVAILABLE' && /altnames|does not match|Hostname/i.test(e.message));
    // Rotation to a new CA: the agent's files and the API's CA file are replaced; neither restarts.
    const oldCa = readFileSync(ca.cert);
    const ca2 = pki.ca('agent-ca-2');
    const next = pki.issue(ca2, 'node-tls', [`DNS:${name('node-tls')}`]);
    TestPki.replace(ca2.cert, ca.cert);
    TestPki.replace(next.key, issued.key);
    TestPki.replace(next.cert, issued.cert);
    // Until the agent serves the new certificate, the old CA still verifies it; then only the new one does.
    const withOldCa = new RemoteNodeAgents({ kubeConfig: apiKc, token: () => tokens.api!, ca: oldCa, serverName: name, endpointCacheMs: 0 });
    const deadline = Date.now() + 10_000;
    for (;;) {
      const r = await withOldCa.metrics(vm).then(
        () => 'still the old certificate',
        (e: Error) => e.message,
      );
      if (/certificate|issuer/i.test(r)) break;
      if (Date.now() > deadline) assert.fail(`the agent never served the rotated certificate: ${r}`);
      await new Promise((res) => setTimeout(res, 100));
    }
    // The API's reloaded CA bundle trusts it: no restart of either side.
    assert.equal((await trusting.metrics(vm)).cpuSeconds, 7);
  } finally {
    bundle.close();
    await tlsEndpoint.close();
    await store.close();
    pki.cleanup();
  }
});
