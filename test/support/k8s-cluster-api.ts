/**
 * The cluster-mode API over a real kube-apiserver, for the tests that drive cluster mode through
 * the REST API (ADR 0015): the cluster of k8s-operator-cluster.ts (the operator and node agents as
 * local processes, the agents' endpoints on loopback accepting tokens of audience microvm-agent),
 * the RBAC of deploy/api, and the API in cluster mode in this process as its own ServiceAccount
 * `microvm-api` (as deploy/api does: the ordinary token for the API server, one of audience
 * microvm-agent for the agents). With the REST helpers the tests share (`call`, `waitPhase`,
 * tenants and API keys through the admin token). `stop()` closes and removes everything it
 * started, also when the set-up failed half-way (it then stops what it had started and rethrows).
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { KubeConfig } from '@kubernetes/client-node';
import { ANN_AGENT_ENDPOINT } from '../../src/agent/endpoint/server.js';
import { startClusterApi, type ClusterApi } from '../../src/cluster-api.js';
import { loadConfig } from '../../src/config.js';
import { REPO } from './k8s-control-plane.js';
import { startCluster, until, type TestCluster } from './k8s-operator-cluster.js';
import { apiCall } from './service.js';

export type ApiResult = Awaited<ReturnType<typeof apiCall>>;

export interface ClusterApiOptions {
  /** MVM_ADMIN_TOKEN of the API. */
  admin: string;
  /** Node agents to start, in order. */
  nodes: string[];
  /** Extra environment of a node's agent. */
  agentEnv?: (node: string) => Record<string, string>;
  /** Start an operator (op-0) before the agents; default true. */
  operator?: boolean;
  /** Also serve gRPC (MVM_GRPC_LISTEN on loopback). */
  grpc?: boolean;
  /** The API's data directory; default a temp directory removed by `stop()`. */
  dataDir?: string;
  /** Extra environment for the API's loadConfig. */
  config?: Record<string, string>;
  /** Wait until every node's agent published its endpoint on its Node object. */
  waitAgentEndpoints?: boolean;
}

export interface ClusterApiHarness {
  c: TestCluster;
  api: ClusterApi;
  /** A raw JSON call to the API with `token`. */
  call(token: string, method: string, path: string, body?: unknown): Promise<ApiResult>;
  /**
   * Long-poll `/microvms/:id/wait` (twice at most, each up to `timeout`) until the VM reaches `phase`
   * (and is ready); returns the VM. Fails on anything but 200 or 408, and when it never got there.
   */
  waitPhase(token: string, id: string, phase: string, ready?: boolean, timeout?: string): Promise<any>;
  /** Create a tenant through the admin token (201). */
  tenant(id: string, body?: Record<string, unknown>): Promise<void>;
  /** Create an API key of the tenant through the admin token (201); returns its token. */
  apiKey(tenant: string, role?: string, name?: string): Promise<string>;
  /** Another API replica over the same cluster (its own port and data dir), with extra config; closed by stop(). */
  startReplica(config?: Record<string, string>): Promise<ClusterApi>;
  stop(): Promise<void>;
}

export async function startClusterApiHarness(opts: ClusterApiOptions): Promise<ClusterApiHarness> {
  const ownDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'mvm-k8s-api-'));
  let c: TestCluster | undefined;
  let api: ClusterApi | undefined;
  const replicas: ClusterApi[] = [];
  let startApi: ((extra: Record<string, string>, dir: string) => Promise<ClusterApi>) | undefined;
  let stopped = false;
  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    delete process.env.MVM_AGENT_LISTEN;
    delete process.env.MVM_AGENT_TOKEN_AUDIENCES;
    if (process.env.MVM_TEST_DUMP) process.stderr.write(c?.dump() ?? '');
    for (const r of replicas) await r.close().catch(() => undefined);
    await api?.close().catch(() => undefined);
    await c?.stop();
    if (ownDir) rmSync(dataDir, { recursive: true, force: true });
  };
  try {
    // The node agents' endpoints on loopback (they inherit the environment).
    process.env.MVM_AGENT_LISTEN = '127.0.0.1:0';
    process.env.MVM_AGENT_TOKEN_AUDIENCES = 'microvm-agent';
    c = await startCluster();
    const cl = c;
    cl.cp.kubectlOk(['apply', '-f', join(REPO, 'deploy/api/rbac.yaml')]);
    if (opts.operator ?? true) await cl.startOperator('op-0');
    for (const node of opts.nodes) await cl.startAgent(node, opts.agentEnv ? { env: opts.agentEnv(node) } : {});
    const apiToken = cl.cp.kubectlOk(['create', 'token', 'microvm-api', '-n', 'microvm-system', '--duration=2h']).trim();
    const cluster = cl.cp.kubeConfig().getCurrentCluster()!;
    const kc = new KubeConfig();
    kc.loadFromOptions({ clusters: [cluster], users: [{ name: 'api', token: apiToken }], contexts: [{ name: 'api', cluster: cluster.name, user: 'api' }], currentContext: 'api' });
    // As deploy/api does: a token of audience microvm-agent for the agents, the ordinary one for the API server.
    const agentToken = cl.cp.kubectlOk(['create', 'token', 'microvm-api', '-n', 'microvm-system', '--audience', 'microvm-agent', '--duration=2h']).trim();
    startApi = (extra, dir) => {
      const cfg = loadConfig({
        MVM_STORE: 'kubernetes',
        MVM_LISTEN: '127.0.0.1:0',
        ...(opts.grpc ? { MVM_GRPC_LISTEN: '127.0.0.1:0' } : {}),
        MVM_ADMIN_TOKEN: opts.admin,
        MVM_DATA_DIR: dir,
        MVM_LOG_LEVEL: 'warn',
        ...extra,
      });
      return startClusterApi(cfg, { kubeConfig: kc, agentToken: () => agentToken });
    };
    api = await startApi(opts.config ?? {}, dataDir);
    if (opts.waitAgentEndpoints) {
      for (const n of opts.nodes) await until(cl, `agent endpoint of ${n}`, () => cl.kubectlJson(['get', 'node', n]).metadata.annotations?.[ANN_AGENT_ENDPOINT]);
    }
  } catch (e) {
    await stop().catch(() => undefined);
    throw e;
  }
  const cl = c;
  const url = api.url;
  const call = (token: string, method: string, path: string, body?: unknown): Promise<ApiResult> => apiCall({ url, token }, method, path, body);
  return {
    c: cl,
    api,
    call,
    async waitPhase(token, id, phase, ready = false, timeout = '200s') {
      for (let i = 0; i < 2; i++) {
        const w = await call(token, 'GET', `/microvms/${id}/wait?phase=${phase}${ready ? '&ready=true' : ''}&timeout=${timeout}`);
        if (w.status === 200) return w.json;
        assert.equal(w.status, 408, `${w.status} ${w.text}\n${cl.dump()}`);
      }
      assert.fail(`microVM ${id} did not reach ${phase}${ready ? ' (ready)' : ''}\n${cl.dump()}`);
    },
    async tenant(id, body = {}) {
      const r = await call(opts.admin, 'POST', '/tenants', { id, ...body });
      assert.equal(r.status, 201, r.text);
    },
    async apiKey(tenant, role = 'member', name = 'k') {
      const k = await call(opts.admin, 'POST', `/apikeys?tenant=${tenant}`, { name, role });
      assert.equal(k.status, 201, k.text);
      return k.json.token as string;
    },
    async startReplica(config = {}) {
      const r = await startApi!({ ...(opts.config ?? {}), MVM_GRPC_LISTEN: 'off', ...config }, join(dataDir, `replica-${replicas.length + 1}`));
      replicas.push(r);
      return r;
    },
    stop,
  };
}
