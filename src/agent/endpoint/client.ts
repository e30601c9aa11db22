/**
 * The API's side of the node agents' endpoint in cluster mode (ADR 0015): a NodeAgent whose
 * console and metrics come from the agent of the VM's node (status.node → the Node's
 * `microvm.service/agent-endpoint` annotation, written by that agent), authenticated with the
 * API's service-account token. Everything else a NodeAgent does (boot, stop, snapshot) is the
 * operator's and the node agents' work through the MicroVM resources, never the API's:
 * those methods refuse with CAPABILITY_UNSUPPORTED.
 */
import { readFileSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import { memoryMiB, type MicroVM } from '../../core/microvm.js';
import type { ActualVm, AgentEvent, NodeAgent, NodeInfo } from '../../core/ports/agent.js';
import type { VmMetricsT } from '../../core/schema.js';
import { fromK8sError, httpStatus } from '../../k8s/errors.js';
import { ANN_AGENT_ENDPOINT } from './server.js';

export const SERVICE_ACCOUNT_TOKEN_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/token';

export interface RemoteAgentsOptions {
  kubeConfig: KubeConfig;
  /** The bearer token for the agents (default: `tokenFile`, re-read every minute). */
  token?: () => Promise<string> | string;
  /** Default: the pod's service-account token; better a projected token of the agents' audience (ADR 0015). */
  tokenFile?: string;
  /** CA bundle (PEM) trusted for agents serving HTTPS. */
  ca?: string;
  /** How long a Node's endpoint address is remembered (default 30 s). */
  endpointCacheMs?: number;
  timeoutMs?: number;
}

const unsupported = (what: string): MvmError =>
  new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `${what} is done by the operator and the node agents in cluster mode, not by the API`);

export class RemoteNodeAgents implements NodeAgent {
  readonly nodeName = '(cluster)';
  private readonly core: CoreV1Api;
  private readonly endpoints = new Map<string, { url: string; until: number }>();
  private fileToken?: { value: string; until: number };

  constructor(private readonly o: RemoteAgentsOptions) {
    this.core = o.kubeConfig.makeApiClient(CoreV1Api);
  }

  private async token(): Promise<string> {
    if (this.o.token) return this.o.token();
    if (!this.fileToken || this.fileToken.until < Date.now()) {
      this.fileToken = { value: readFileSync(this.o.tokenFile ?? SERVICE_ACCOUNT_TOKEN_FILE, 'utf8').trim(), until: Date.now() + 60_000 };
    }
    return this.fileToken.value;
  }

  /** The endpoint URL of a node's agent. */
  async endpointOf(node: string): Promise<string> {
    const hit = this.endpoints.get(node);
    if (hit && hit.until > Date.now()) return hit.url;
    let url: string | undefined;
    try {
      url = (await this.core.readNode({ name: node })).metadata?.annotations?.[ANN_AGENT_ENDPOINT];
    } catch (e) {
      if (httpStatus(e) === 404) throw new MvmError(ErrorCodes.UNAVAILABLE, `node ${node} of the microVM no longer exists`);
      throw fromK8sError(e, `read node ${node}`);
    }
    if (!url) throw new MvmError(ErrorCodes.UNAVAILABLE, `the agent of node ${node} has not published its endpoint (annotation ${ANN_AGENT_ENDPOINT})`);
    this.endpoints.set(node, { url, until: Date.now() + (this.o.endpointCacheMs ?? 30_000) });
    return url;
  }

  private async get(vm: MicroVM, path: string, signal?: AbortSignal): Promise<IncomingMessage> {
    const node = vm.status.node!;
    const base = await this.endpointOf(node);
    const url = new URL(path, base);
    const token = await this.token();
    const res = await new Promise<IncomingMessage>((resolve, reject) => {
      const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
        url,
        { method: 'GET', headers: { authorization: `Bearer ${token}` }, ...(this.o.ca ? { ca: this.o.ca } : {}), ...(signal ? { signal } : {}) },
        resolve,
      );
      req.setTimeout(this.o.timeoutMs ?? 10_000, () => req.destroy(new Error('timed out connecting to the node agent')));
      req.on('error', (e) => {
        this.endpoints.delete(node);
        reject(new MvmError(ErrorCodes.UNAVAILABLE, `the agent of node ${node} cannot be reached: ${e.message}`, { cause: e }));
      });
      req.end();
    });
    if (res.statusCode === 200) {
      res.socket?.setTimeout(0);
      return res;
    }
    const body = await text(res);
    let msg = body;
    try {
      msg = (JSON.parse(body) as { message?: string }).message ?? body;
    } catch {
      // plain text
    }
    // 401/403 mean this installation's RBAC or tokens are wrong: the operator's problem, not the caller's.
    if (res.statusCode === 404) throw new MvmError(ErrorCodes.UNAVAILABLE, `the agent of node ${node} does not run microVM ${vm.id} (yet): ${msg}`);
    throw new MvmError(ErrorCodes.UNAVAILABLE, `the agent of node ${node} answered ${res.statusCode}: ${msg}`, { details: { agentStatus: res.statusCode } });
  }

  async metrics(vm: MicroVM): Promise<VmMetricsT> {
    if (!vm.status.node) return idleMetrics(vm);
    const res = await this.get(vm, `/v1/microvms/${encodeURIComponent(vm.id)}/metrics`);
    return JSON.parse(await text(res)) as VmMetricsT;
  }

  /** The console from the VM's node: `tail` bytes, then (follow) every new byte until the VM stops or `signal` aborts. */
  async *streamConsole(vm: MicroVM, o: { tail: number; follow: boolean; signal?: AbortSignal }): AsyncGenerator<Buffer, void, undefined> {
    if (!vm.status.node) return;
    let res: IncomingMessage;
    try {
      res = await this.get(vm, `/v1/microvms/${encodeURIComponent(vm.id)}/console?tail=${o.tail}${o.follow ? '&follow=1' : ''}`, o.signal);
    } catch (e) {
      if (o.signal?.aborted) return;
      throw e;
    }
    try {
      for await (const chunk of res) yield chunk as Buffer;
    } catch (e) {
      if (!o.signal?.aborted) throw new MvmError(ErrorCodes.UNAVAILABLE, `console stream from node ${vm.status.node} broke: ${(e as Error).message}`);
    } finally {
      res.destroy();
    }
  }

  // ---- what the API never does in cluster mode --------------------------------------------

  async info(): Promise<NodeInfo> {
    throw unsupported('node info');
  }
  async start(): Promise<void> {}
  observe(id: string): ActualVm {
    return { id, state: 'absent', ready: false };
  }
  async known(): Promise<string[]> {
    return [];
  }
  async ensureRunning(): Promise<ActualVm> {
    throw unsupported('booting a microVM');
  }
  async ensureStopped(): Promise<void> {
    throw unsupported('stopping a microVM');
  }
  async ensureAbsent(): Promise<void> {
    throw unsupported('removing a microVM');
  }
  consolePath(): string | undefined {
    return undefined;
  }
  async pause(): Promise<void> {
    throw unsupported('pausing a microVM');
  }
  async resume(): Promise<void> {
    throw unsupported('resuming a microVM');
  }
  async snapshot(): Promise<{ sizeBytes: number; driver: string; durationMs: number }> {
    throw unsupported('snapshots');
  }
  async deleteSnapshot(): Promise<void> {
    throw unsupported('snapshots');
  }
  onEvent(_cb: (e: AgentEvent) => void): () => void {
    return () => undefined;
  }
  async shutdown(): Promise<void> {}
}

const idleMetrics = (vm: MicroVM): VmMetricsT => ({
  id: vm.id,
  phase: vm.status.phase,
  timestamp: new Date().toISOString(),
  cpuSeconds: 0,
  memoryRssBytes: 0,
  guestMemoryBytes: memoryMiB(vm.spec) * 1024 * 1024,
  uptimeSeconds: 0,
  block: [],
  net: [],
});

async function text(res: IncomingMessage): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of res) parts.push(c as Buffer);
  return Buffer.concat(parts).toString('utf8');
}
