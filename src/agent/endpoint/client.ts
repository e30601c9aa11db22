/**
 * The API's side of the node agents' endpoint in cluster mode (ADR 0015): a NodeAgent whose
 * console and metrics come from the agent of the VM's node (status.node → the Node's
 * `microvm.service/agent-endpoint` annotation, written by that agent), authenticated with the
 * API's service-account token. Snapshots (ADR 0009) are taken and deleted by the agent of the
 * node that runs the VM / holds the files (the VM's `status.node`, the Snapshot's `spec.node`), for
 * the API's SnapshotService. Inside the guest (exec, files, port forwarding), a GuestAgentClient
 * speaks the guest agent protocol over a WebSocket to the agent of the VM's node, which relays it
 * onto its own connection to the guest (src/guest/relay.ts); one such client per VM is kept while
 * it is used. Everything else a NodeAgent does (boot, stop, pause) is the
 * operator's and the node agents' work through the MicroVM resources, never the API's:
 * those methods refuse with CAPABILITY_UNSUPPORTED.
 */
import { readFileSync } from 'node:fs';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { WebSocket, createWebSocketStream } from 'ws';
import { ErrorCodes, MvmError, notFound } from '../../core/errors.js';
import { memoryMiB, type MicroVM } from '../../core/microvm.js';
import type { ActualVm, AgentEvent, NodeAgent, NodeInfo } from '../../core/ports/agent.js';
import type { GuestSession } from '../../core/ports/guest.js';
import { GuestAgentClient } from '../../guest/index.js';
import type { VmMetricsT } from '../../core/schema.js';
import { fromK8sError, httpStatus } from '../../k8s/errors.js';
import { ANN_AGENT_ENDPOINT, agentError, agentResult, readText, type AgentCall } from './http.js';

export { agentError, agentResult, type AgentCall } from './http.js';

/** A request to a node's agent with headers and a JSON body; any answer is returned. */
export type AgentSend = (node: string, method: string, path: string, o?: { headers?: Record<string, string>; body?: unknown; timeoutMs?: number; signal?: AbortSignal }) => Promise<IncomingMessage>;

export const SERVICE_ACCOUNT_TOKEN_FILE = '/var/run/secrets/kubernetes.io/serviceaccount/token';

export interface RemoteAgentsOptions {
  kubeConfig: KubeConfig;
  /** The bearer token for the agents (default: `tokenFile`, re-read every minute). */
  token?: () => Promise<string> | string;
  /** Default: the pod's service-account token; better a projected token of the agents' audience (ADR 0015). */
  tokenFile?: string;
  /** CA bundle (PEM) trusted for agents serving HTTPS; a function is asked on each connection (a reloaded file, ADR 0026). */
  ca?: string | Buffer | (() => string | Buffer);
  /**
   * The name an agent's certificate must carry, given its node (checked instead of the address
   * of its URL): deploy/ issues `<node>.agent.microvm.service`. Undefined: the URL's host.
   */
  serverName?: (node: string) => string | undefined;
  /** How long a Node's endpoint address is remembered (default 30 s). */
  endpointCacheMs?: number;
  timeoutMs?: number;
  /** A VM by id (snapshots: its `status.node` runs it). */
  vmOf?: (id: string) => Promise<MicroVM | undefined>;
  /** The node holding a snapshot's files (the Snapshot's `spec.node`); undefined when unknown. */
  snapshotNodeOf?: (snapshotId: string) => Promise<string | undefined>;
  /** Timeout of a snapshot request (memory is written to disk meanwhile; default 10 min). */
  snapshotTimeoutMs?: number;
  /** A VM's guest agent connection with no open stream is closed after this long unused (default 60 s). */
  guestIdleMs?: number;
}

/** A guest agent client over a node agent's relay: one per VM (and node), kept while used. */
interface GuestEntry {
  client?: GuestAgentClient;
  connecting?: Promise<GuestAgentClient>;
  used: number;
}

const unsupported = (what: string): MvmError =>
  new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `${what} is done by the operator and the node agents in cluster mode, not by the API`);

export class RemoteNodeAgents implements NodeAgent {
  readonly nodeName = '(cluster)';
  private readonly core: CoreV1Api;
  private readonly endpoints = new Map<string, { url: string; until: number }>();
  private fileToken?: { value: string; until: number };
  private readonly guests = new Map<string, GuestEntry>();
  private guestSweep?: NodeJS.Timeout;

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
      if (httpStatus(e) === 404) throw new MvmError(ErrorCodes.UNAVAILABLE, `node ${node} of the microVM no longer exists`, { details: { nodeGone: true } });
      throw fromK8sError(e, `read node ${node}`);
    }
    if (!url) throw new MvmError(ErrorCodes.UNAVAILABLE, `the agent of node ${node} has not published its endpoint (annotation ${ANN_AGENT_ENDPOINT})`);
    this.endpoints.set(node, { url, until: Date.now() + (this.o.endpointCacheMs ?? 30_000) });
    return url;
  }

  /** The CA to trust and the name to verify for a node's agent (both only matter over https). */
  private tlsOptions(node: string): { ca?: string | Buffer; servername?: string } {
    const ca = typeof this.o.ca === 'function' ? this.o.ca() : this.o.ca;
    const servername = this.o.serverName?.(node);
    return { ...(ca ? { ca } : {}), ...(servername ? { servername } : {}) };
  }

  /** One request to a node's agent; any answer is returned (the caller maps the status). */
  private async request(node: string, method: string, path: string, signal?: AbortSignal, timeoutMs = this.o.timeoutMs ?? 10_000, extra: { headers?: Record<string, string>; body?: unknown } = {}, retried = false): Promise<IncomingMessage> {
    const cached = this.endpoints.get(node);
    const remembered = cached !== undefined && cached.until > Date.now();
    const base = await this.endpointOf(node);
    const url = new URL(path, base);
    const token = await this.token();
    const body = extra.body === undefined ? undefined : Buffer.from(JSON.stringify(extra.body));
    return new Promise<IncomingMessage>((resolve, reject) => {
      const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
        url,
        {
          method,
          headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json', 'content-length': String(body.length) } : {}), ...(extra.headers ?? {}) },
          ...this.tlsOptions(node),
          ...(signal ? { signal } : {}),
        },
        resolve,
      );
      req.setTimeout(timeoutMs, () => req.destroy(new Error('timed out talking to the node agent')));
      req.on('error', (e) => {
        this.endpoints.delete(node);
        // A remembered address that refuses: the agent restarted elsewhere (a new pod address or
        // port; chaos, cluster seed 221). Nothing reached it, so ask once more at a fresh address.
        const code = (e as NodeJS.ErrnoException).code;
        if (remembered && !retried && (code === 'ECONNREFUSED' || code === 'EHOSTUNREACH')) {
          resolve(this.request(node, method, path, signal, timeoutMs, extra, true));
          return;
        }
        reject(new MvmError(ErrorCodes.UNAVAILABLE, `the agent of node ${node} cannot be reached: ${e.message}`, { cause: e }));
      });
      req.end(body);
    });
  }

  /** A request with headers and a JSON body to a node's agent (node agent to node agent: migrations), any answer returned. */
  send: AgentSend = (node, method, path, o = {}) => this.request(node, method, path, o.signal, o.timeoutMs, o);

  /** One authenticated request to a node's agent, any answer returned (volumes.ts, images.ts: read it with agentResult). */
  call: AgentCall = (node, method, path, timeoutMs) => this.request(node, method, path, undefined, timeoutMs);

  private async get(vm: MicroVM, path: string, signal?: AbortSignal): Promise<IncomingMessage> {
    const node = vm.status.node!;
    const res = await this.request(node, 'GET', path, signal);
    if (res.statusCode === 200) {
      res.socket?.setTimeout(0);
      return res;
    }
    const body = await readText(res);
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
    return JSON.parse(await readText(res)) as VmMetricsT;
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

  /** Snapshot a VM on its node (the node's LocalAgent writes the files there). */
  async snapshot(id: string, snapshotId: string): Promise<{ sizeBytes: number; driver: string; durationMs: number }> {
    const vm = await this.o.vmOf?.(id);
    if (!vm) throw notFound('microVM', id);
    const node = vm.status.node;
    if (!node) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${id} is not running on a node`);
    const res = await this.request(node, 'POST', `/v1/microvms/${encodeURIComponent(id)}/snapshots/${encodeURIComponent(snapshotId)}`, undefined, this.o.snapshotTimeoutMs ?? 600_000);
    return agentResult(node, res, `snapshot of microVM ${id}`);
  }

  /** Remove a snapshot's files from the node holding them. Idempotent; nothing to do when no node holds them or that Node is gone. */
  async deleteSnapshot(snapshotId: string): Promise<void> {
    const node = await this.o.snapshotNodeOf?.(snapshotId);
    if (!node) return;
    let res: IncomingMessage;
    try {
      res = await this.request(node, 'DELETE', `/v1/snapshots/${encodeURIComponent(snapshotId)}`);
    } catch (e) {
      // A Node removed from the cluster took its disks (and the files) with it.
      if (e instanceof MvmError && (e.details as { nodeGone?: boolean } | undefined)?.nodeGone) return;
      throw e;
    }
    if (res.statusCode === 204 || res.statusCode === 200) {
      res.resume();
      return;
    }
    throw await agentError(node, res, `deleting snapshot ${snapshotId}`);
  }

  /**
   * The guest agent of a VM, through the agent of its node (a WebSocket relayed onto that agent's
   * connection to the guest). The node's refusals keep their codes: ILLEGAL_TRANSITION when the VM
   * does not run there, AGENT_UNAVAILABLE when its guest has no agent.
   */
  async guest(vm: MicroVM): Promise<GuestSession> {
    const node = vm.status.node;
    if (!node) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${vm.id} is not running on a node`, { details: { id: vm.id, reason: 'NotRunning' } });
    const key = `${node}/${vm.id}`;
    let e = this.guests.get(key);
    if (!e) this.guests.set(key, (e = { used: Date.now() }));
    const entry = e;
    entry.used = Date.now();
    if (entry.client && !entry.client.connection.isClosed) return entry.client;
    entry.connecting ??= this.connectGuest(node, vm.id)
      .then((c) => {
        entry.client = c;
        void c.closed.then(() => {
          if (this.guests.get(key)?.client === c) this.guests.delete(key);
        });
        this.sweepGuests();
        return c;
      })
      .finally(() => (entry.connecting = undefined));
    return entry.connecting;
  }

  private async connectGuest(node: string, id: string): Promise<GuestAgentClient> {
    const url = new URL(`/v1/microvms/${encodeURIComponent(id)}/guest`, await this.endpointOf(node));
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(url, {
      headers: { authorization: `Bearer ${await this.token()}` },
      handshakeTimeout: this.o.timeoutMs ?? 10_000,
      maxPayload: 1024 * 1024,
      perMessageDeflate: false,
      ...this.tlsOptions(node),
    });
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      // The node refused (before upgrading): its own typed error, or UNAVAILABLE.
      ws.once('unexpected-response', (_req, res) => {
        agentError(node, res, `the guest agent of microVM ${id}`)
          .then(reject, reject)
          .finally(() => ws.terminate());
      });
      ws.on('error', (e) => {
        this.endpoints.delete(node);
        reject(new MvmError(ErrorCodes.UNAVAILABLE, `the agent of node ${node} cannot be reached: ${e.message}`, { cause: e }));
      });
    });
    try {
      // A fresh connection (nothing of an earlier host can be on it): no resync preamble.
      return await GuestAgentClient.connect(createWebSocketStream(ws), { resync: false, helloTimeoutMs: this.o.timeoutMs ?? 10_000, client: 'mvm-api' });
    } catch (e) {
      ws.terminate();
      throw e;
    }
  }

  /** Close the guest connections nobody used for a while (timer while there are any). */
  private sweepGuests(): void {
    if (this.guestSweep) return;
    const idleMs = this.o.guestIdleMs ?? 60_000;
    this.guestSweep = setInterval(
      () => {
        for (const [key, e] of this.guests) {
          if (e.connecting || !e.client) continue;
          if (e.client.connection.openStreams === 0 && Date.now() - e.used > idleMs) {
            this.guests.delete(key);
            e.client.close();
          }
        }
        if (this.guests.size === 0) {
          clearInterval(this.guestSweep);
          this.guestSweep = undefined;
        }
      },
      Math.max(1000, idleMs / 2),
    );
    this.guestSweep.unref();
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
  onEvent(_cb: (e: AgentEvent) => void): () => void {
    return () => undefined;
  }
  async shutdown(): Promise<void> {
    clearInterval(this.guestSweep);
    this.guestSweep = undefined;
    for (const e of this.guests.values()) e.client?.close();
    this.guests.clear();
  }
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





