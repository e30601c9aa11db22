/**
 * The node agent's endpoint for the API in cluster mode (ADR 0015): console (stream) and live
 * metrics of the VMs on this node, the way the kubelet serves `kubectl logs`.
 *
 * Every request is authenticated and authorised by the Kubernetes API server:
 * - `Authorization: Bearer <service-account token>` → TokenReview; none or not authenticated → 401.
 * - SubjectAccessReview of `get microvms/console` or `get microvms/metrics` (group
 *   microvm.service) on the VM's namespace and name, for the reviewed user and groups; denied → 403.
 *   (RBAC matches subresource names as strings, like `nodes/proxy`; the API's ClusterRole grants them.)
 * Only then is a VM looked up; one that is not bound to this node is 404.
 * Reviews are cached for `cacheMs` (default 10 s) by token hash and attributes.
 *
 * Routes: GET /v1/microvms/{id}/console?tail=<bytes>&follow=1 (text, chunked while following),
 *         GET /v1/microvms/{id}/metrics (JSON), GET /healthz (unauthenticated liveness only).
 * Snapshots (ADR 0009; the files live on this node, the API's SnapshotService drives them):
 *         POST /v1/microvms/{id}/snapshots/{snapshotId} — SAR `create microvms/snapshot` on the VM;
 *         DELETE /v1/snapshots/{snapshotId} — SAR `delete snapshots/files` (cluster-wide: the files
 *         are named by the id alone; this agent reads no Snapshot objects).
 *         Errors of the node's agent are answered as {status, code, message} with the error's code.
 * Inside the guest (exec, files, port forwarding; docs/guest-agent-protocol.md, "Cluster mode"):
 *         GET /v1/microvms/{id}/guest, a WebSocket upgrade — SAR `create microvms/guest` on the VM;
 *         the socket then carries the guest agent protocol, relayed onto this node's one
 *         connection to the VM's guest agent (src/guest/relay.ts). A VM that does not run, or whose
 *         guest has no agent, is refused before the upgrade with its error's code (x-mvm-code).
 * Volumes (src/agent/endpoint/volumes.ts, SAR on `volumes/storage`) and the image cache
 * (src/agent/endpoint/images.ts, SAR `get`/`delete` on `images/cache`) plug in as route handlers.
 */
import { createHash } from 'node:crypto';
import { STATUS_CODES, createServer as createHttpServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import { ServerKeyPair } from '../../tls/files.js';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { AuthenticationV1Api, AuthorizationV1Api, CoreV1Api, KubeConfig, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { WebSocketServer, createWebSocketStream, type WebSocket } from 'ws';
import { followConsole, readConsoleTail, writeWithBackpressure } from '../../gateway/console-stream.js';
import { HTTP_STATUS } from '../../gateway/problem.js';
import { asMvmError } from '../../core/errors.js';
import type { MicroVM } from '../../core/microvm.js';
import type { NodeAgent } from '../../core/ports/agent.js';
import { relayGuestConnection, type AgentConnection } from '../../guest/index.js';
import { ANN_AGENT_ENDPOINT, type EndpointRequest, type EndpointRouteGroup } from './http.js';

export { ANN_AGENT_ENDPOINT } from './http.js';

export const AGENT_RESOURCE = { group: 'microvm.service', resource: 'microvms' } as const;





/** The path decoded once; kept as it is when not validly encoded or when an escape would add a segment (%2F). */
function decodePath(raw: string): string {
  try {
    const path = decodeURIComponent(raw);
    return path.split('/').length === raw.split('/').length ? path : raw;
  } catch {
    return raw;
  }
}

export interface AgentEndpointOptions {
  agent: Pick<NodeAgent, 'consolePath' | 'metrics' | 'observe'> & Partial<Pick<NodeAgent, 'snapshot' | 'deleteSnapshot'>>;
  nodeName: string;
  /**
   * The connection to the guest agent of a VM running here (LocalAgent.guest(vm).connection), for
   * the upgrade route `/v1/microvms/{id}/guest`; without it that route is 404. Its errors
   * (ILLEGAL_TRANSITION, AGENT_UNAVAILABLE) are answered with their codes.
   */
  guest?: (vm: MicroVM) => Promise<AgentConnection>;
  /** The VM by id (the agent's store); undefined when unknown. */
  lookup: (id: string) => Promise<MicroVM | undefined>;
  /** Namespace of a tenant (TenantNamespaces.namespaceOf). */
  namespaceOf: (tenant: string) => string;
  kubeConfig: KubeConfig;
  host?: string;
  port?: number;
  /**
   * Serve HTTPS with this certificate (PEM files, reloaded when they change: ADR 0026); plain HTTP
   * otherwise (the token still travels: use TLS off-host).
   */
  tls?: { certFile: string; keyFile: string; reloadMs?: number };
  /**
   * Publish this URL (true: the listening URL; a function: given the bound port) as the Node's
   * `microvm.service/agent-endpoint` annotation; retried every 10 s until the Node accepts it.
   */
  advertise?: boolean | string | ((port: number) => string);
  /** Audiences the token must carry (TokenReview spec.audiences); default: the API server's. */
  audiences?: string[];
  cacheMs?: number;
  log?: Logger;
  /**
   * Route groups plugged in after the token review, each authorised by a SubjectAccessReview of its
   * cluster-wide resource: volume operations of this node's backends (volumes.ts, `volumes/storage`),
   * this node's image cache (images.ts, `images/cache`).
   */
  routes?: EndpointRouteGroup[];
}

export interface AgentEndpoint {
  url: string;
  close(): Promise<void>;
}

interface Reviewed {
  user: string;
  uid?: string;
  groups: string[];
  extra?: Record<string, string[]>;
}

const ROUTE = /^\/v1\/microvms\/([a-z0-9][-a-z0-9]{0,62})\/(console|metrics)$/;
const SNAPSHOT_ROUTE = /^\/v1\/microvms\/([a-z0-9][-a-z0-9]{0,62})\/snapshots\/([a-z0-9][-a-z0-9]{0,62})$/;
const SNAPSHOT_FILES_ROUTE = /^\/v1\/snapshots\/([a-z0-9][-a-z0-9]{0,62})$/;
const GUEST_ROUTE = /^\/v1\/microvms\/([a-z0-9][-a-z0-9]{0,62})\/guest$/;

interface Refusal {
  status: number;
  message: string;
  headers?: Record<string, string>;
}

export async function startAgentEndpoint(o: AgentEndpointOptions): Promise<AgentEndpoint> {
  const authn = o.kubeConfig.makeApiClient(AuthenticationV1Api);
  const authz = o.kubeConfig.makeApiClient(AuthorizationV1Api);
  const cacheMs = o.cacheMs ?? 10_000;
  const tokens = new Map<string, { until: number; who: Reviewed | undefined }>();
  const decisions = new Map<string, { until: number; allowed: boolean }>();
  const closing = new AbortController();

  const review = async (token: string): Promise<Reviewed | undefined> => {
    const key = createHash('sha256').update(token).digest('hex');
    const hit = tokens.get(key);
    if (hit && hit.until > Date.now()) return hit.who;
    const r = await authn.createTokenReview({ body: { spec: { token, ...(o.audiences ? { audiences: o.audiences } : {}) } } });
    const st = r.status;
    const who = st?.authenticated && st.user?.username ? { user: st.user.username, ...(st.user.uid ? { uid: st.user.uid } : {}), groups: st.user.groups ?? [], ...(st.user.extra ? { extra: st.user.extra } : {}) } : undefined;
    if (tokens.size > 10_000) tokens.clear();
    tokens.set(key, { until: Date.now() + cacheMs, who });
    return who;
  };

  const allowed = async (who: Reviewed, sub: string, vm: { namespace: string; name: string } | undefined, verb = 'get', resource: string = AGENT_RESOURCE.resource): Promise<boolean> => {
    const key = JSON.stringify([who.user, who.groups, verb, resource, sub, vm?.namespace, vm?.name]);
    const hit = decisions.get(key);
    if (hit && hit.until > Date.now()) return hit.allowed;
    const r = await authz.createSubjectAccessReview({
      body: {
        spec: {
          user: who.user,
          groups: who.groups,
          ...(who.uid ? { uid: who.uid } : {}),
          ...(who.extra ? { extra: who.extra } : {}),
          resourceAttributes: { group: AGENT_RESOURCE.group, resource, subresource: sub, verb, ...(vm ? { namespace: vm.namespace, name: vm.name } : {}) },
        },
      },
    });
    const ok = r.status?.allowed === true;
    if (decisions.size > 10_000) decisions.clear();
    decisions.set(key, { until: Date.now() + cacheMs, allowed: ok });
    return ok;
  };

  const fail = (res: ServerResponse, status: number, message: string, headers: Record<string, string> = {}): void => {
    if (res.headersSent) {
      res.destroy();
      return;
    }
    res.writeHead(status, { 'content-type': 'application/json', ...headers });
    res.end(JSON.stringify({ status, message }));
  };

  /** The caller behind the bearer token (TokenReview), or why not. */
  const authenticate = async (req: IncomingMessage): Promise<Reviewed | Refusal> => {
    const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
    if (!m) return { status: 401, message: 'a bearer token (Kubernetes service account) is required', headers: { 'www-authenticate': 'Bearer' } };
    let who: Reviewed | undefined;
    try {
      who = await review(m[1]!);
    } catch (e) {
      o.log?.warn({ err: (e as Error).message }, 'TokenReview failed');
      return { status: 503, message: 'cannot review the token with the API server' };
    }
    return who ?? { status: 401, message: 'the token is not valid', headers: { 'www-authenticate': 'Bearer error="invalid_token"' } };
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://agent');
    const path = decodePath(url.pathname);
    if (path === '/healthz' && req.method === 'GET') {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok\n');
      return;
    }
    const who = await authenticate(req);
    if ('status' in who) return fail(res, who.status, who.message, who.headers);
    const snapRoute = req.method === 'POST' ? SNAPSHOT_ROUTE.exec(path) : req.method === 'DELETE' ? SNAPSHOT_FILES_ROUTE.exec(path) : null;
    if (snapRoute) return handleSnapshot(req.method === 'POST' ? { vmId: snapRoute[1]!, snapshotId: snapRoute[2]! } : { snapshotId: snapRoute[1]! }, who, res);
    // Plugged-in groups (volumes: ADR 0018, the image cache: ADR 0019), each behind its cluster-wide right.
    const r: EndpointRequest = { method: req.method ?? 'GET', path, query: url.searchParams, raw: req };
    for (const g of o.routes ?? []) {
      if (await g.handle(r, (verb) => allowed(who, g.subresource, undefined, verb, g.resource), res)) return;
    }
    const route = ROUTE.exec(path);
    if (!route || req.method !== 'GET') return fail(res, 404, 'no such route');
    const [, id, what] = route as unknown as [string, string, 'console' | 'metrics'];
    let vm: MicroVM | undefined;
    let target: { namespace: string; name: string } | undefined;
    try {
      vm = await o.lookup(id);
      if (vm) target = { namespace: o.namespaceOf(vm.tenant), name: vm.name };
      // Without a VM the check is cluster-wide: a caller with no right learns nothing about ids.
      if (!(await allowed(who, what, target))) {
        o.log?.info({ user: who.user, what, vm: id }, 'agent endpoint: access denied');
        return fail(res, 403, `${who.user} may not get microvms/${what}${target ? ` of ${target.namespace}/${target.name}` : ''}`);
      }
    } catch (e) {
      o.log?.warn({ err: (e as Error).message }, 'agent endpoint: authorisation failed');
      return fail(res, 503, 'cannot authorise the request with the API server');
    }
    if (!vm || vm.status.node !== o.nodeName) return fail(res, 404, `microVM ${id} is not on node ${o.nodeName}`);
    if (what === 'metrics') {
      const m = await o.agent.metrics(vm);
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(m));
      return;
    }
    const tail = Math.min(Math.max(Number(url.searchParams.get('tail') ?? 1024 * 1024) || 0, 0), 16 * 1024 * 1024);
    const follow = ['1', 'true'].includes(url.searchParams.get('follow') ?? '');
    if (!follow) {
      const path = o.agent.consolePath(vm.id);
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(path ? readConsoleTail(path, tail) : '');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' });
    res.flushHeaders();
    const ac = new AbortController();
    const abort = (): void => ac.abort();
    res.on('close', abort);
    closing.signal.addEventListener('abort', abort);
    try {
      for await (const chunk of followConsole({
        tail,
        signal: ac.signal,
        path: async () => o.agent.consolePath(vm.id),
        alive: async () => ['starting', 'running', 'paused'].includes(o.agent.observe(vm.id).state),
      })) {
        if (!(await writeWithBackpressure(res, chunk, ac.signal))) break;
      }
    } finally {
      closing.signal.removeEventListener('abort', abort);
    }
    res.end();
  };

  /** Take a snapshot of a VM bound here, or delete a snapshot's files (the node's LocalAgent does both). */
  const handleSnapshot = async (r: { vmId?: string; snapshotId: string }, who: Reviewed, res: ServerResponse): Promise<void> => {
    let vm: MicroVM | undefined;
    try {
      if (r.vmId) {
        vm = await o.lookup(r.vmId);
        const target = vm ? { namespace: o.namespaceOf(vm.tenant), name: vm.name } : undefined;
        if (!(await allowed(who, 'snapshot', target, 'create'))) return fail(res, 403, `${who.user} may not create microvms/snapshot${target ? ` of ${target.namespace}/${target.name}` : ''}`);
      } else if (!(await allowed(who, 'files', undefined, 'delete', 'snapshots'))) {
        return fail(res, 403, `${who.user} may not delete snapshots/files`);
      }
    } catch (e) {
      o.log?.warn({ err: (e as Error).message }, 'agent endpoint: authorisation failed');
      return fail(res, 503, 'cannot authorise the request with the API server');
    }
    if (!o.agent.snapshot || !o.agent.deleteSnapshot) return fail(res, 501, 'this agent does not serve snapshots');
    try {
      if (r.vmId) {
        if (!vm || vm.status.node !== o.nodeName) return fail(res, 404, `microVM ${r.vmId} is not on node ${o.nodeName}`);
        const out = await o.agent.snapshot(vm.id, r.snapshotId);
        o.log?.info({ vm: vm.id, snapshot: r.snapshotId, user: who.user, ...out }, 'snapshot taken');
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(out));
        return;
      }
      await o.agent.deleteSnapshot(r.snapshotId);
      o.log?.info({ snapshot: r.snapshotId, user: who.user }, 'snapshot files deleted');
      res.writeHead(204);
      res.end();
    } catch (e) {
      // The agent's typed error travels with its code (the API raises it again as it is).
      const err = asMvmError(e);
      return fail(res, HTTP_STATUS[err.code] ?? 500, err.message, { 'x-mvm-code': err.code });
    }
  };

  // Inside the guest: the guest agent protocol over a WebSocket, relayed onto this node's connection.
  const wss = new WebSocketServer({ noServer: true, maxPayload: 1024 * 1024, perMessageDeflate: false });
  const relays = new Set<WebSocket>();
  /** An HTTP answer on a socket that asked to upgrade (nothing was upgraded). */
  const refuseUpgrade = (socket: Duplex, r: Refusal): void => {
    const body = JSON.stringify({ status: r.status, ...(r.headers?.['x-mvm-code'] ? { code: r.headers['x-mvm-code'] } : {}), message: r.message });
    const headers = { connection: 'close', 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)), ...r.headers };
    socket.end(`HTTP/1.1 ${r.status} ${STATUS_CODES[r.status] ?? ''}\r\n${Object.entries(headers).map(([k, v]) => `${k}: ${v}\r\n`).join('')}\r\n${body}`);
  };
  const upgrade = async (req: IncomingMessage, socket: Duplex, head: Buffer): Promise<void> => {
    const route = GUEST_ROUTE.exec(decodePath(new URL(req.url ?? '/', 'http://agent').pathname));
    if (!route || req.method !== 'GET' || !o.guest) return refuseUpgrade(socket, { status: 404, message: 'no such route' });
    const who = await authenticate(req);
    if ('status' in who) return refuseUpgrade(socket, who);
    const id = route[1]!;
    let vm: MicroVM | undefined;
    try {
      vm = await o.lookup(id);
      const target = vm ? { namespace: o.namespaceOf(vm.tenant), name: vm.name } : undefined;
      if (!(await allowed(who, 'guest', target, 'create'))) {
        o.log?.info({ user: who.user, vm: id }, 'agent endpoint: guest access denied');
        return refuseUpgrade(socket, { status: 403, message: `${who.user} may not create microvms/guest${target ? ` of ${target.namespace}/${target.name}` : ''}` });
      }
    } catch (e) {
      o.log?.warn({ err: (e as Error).message }, 'agent endpoint: authorisation failed');
      return refuseUpgrade(socket, { status: 503, message: 'cannot authorise the request with the API server' });
    }
    if (!vm || vm.status.node !== o.nodeName) return refuseUpgrade(socket, { status: 404, message: `microVM ${id} is not on node ${o.nodeName}` });
    let conn: AgentConnection;
    try {
      conn = await o.guest(vm);
    } catch (e) {
      const err = asMvmError(e);
      return refuseUpgrade(socket, { status: HTTP_STATUS[err.code] ?? 500, message: err.message, headers: { 'x-mvm-code': err.code } });
    }
    if (closing.signal.aborted) return refuseUpgrade(socket, { status: 503, message: 'the agent endpoint is closing' });
    wss.handleUpgrade(req, socket, head, (ws) => {
      relays.add(ws);
      o.log?.info({ vm: id, user: who.user }, 'guest relay opened');
      void relayGuestConnection(createWebSocketStream(ws), conn).then((stats) => {
        relays.delete(ws);
        ws.terminate();
        o.log?.info({ vm: id, user: who.user, ...stats }, 'guest relay closed');
      });
    });
  };

  const listener = (req: IncomingMessage, res: ServerResponse): void => {
    handle(req, res).catch((e: Error) => {
      o.log?.error({ err: e.message }, 'agent endpoint: request failed');
      fail(res, 500, 'internal error');
    });
  };
  const keyPair = o.tls ? new ServerKeyPair(o.tls.certFile, o.tls.keyFile, { pollMs: o.tls.reloadMs ?? 5000, ...(o.log ? { log: o.log } : {}) }) : undefined;
  const server: Server = keyPair ? createHttpsServer({ ...keyPair.current, minVersion: 'TLSv1.2' }, listener) : createHttpServer(listener);
  keyPair?.onChange((p) => (server as HttpsServer).setSecureContext({ ...p, minVersion: 'TLSv1.2' }));
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => undefined);
    upgrade(req, socket, head).catch((e: Error) => {
      o.log?.error({ err: e.message }, 'agent endpoint: upgrade failed');
      if (!socket.destroyed) refuseUpgrade(socket, { status: 500, message: 'internal error' });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port ?? 0, o.host ?? '127.0.0.1', () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  const url = `${o.tls ? 'https' : 'http'}://${host}:${addr.port}`;
  let retry: NodeJS.Timeout | undefined;
  if (o.advertise) {
    const advertised = typeof o.advertise === 'string' ? o.advertise : typeof o.advertise === 'function' ? o.advertise(addr.port) : url;
    const core = o.kubeConfig.makeApiClient(CoreV1Api);
    // A merge patch of this one annotation: nothing else of the Node is touched.
    const publish = (): Promise<unknown> =>
      core.patchNode({ name: o.nodeName, body: { metadata: { annotations: { [ANN_AGENT_ENDPOINT]: advertised } } } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));
    try {
      await publish();
    } catch (e) {
      // The Node may not exist yet (or RBAC is missing): keep serving, keep trying.
      o.log?.warn({ err: (e as Error).message, node: o.nodeName }, 'cannot publish the agent endpoint on the Node; retrying');
      const again = (): void => {
        retry = setTimeout(() => {
          publish().then(() => o.log?.info({ node: o.nodeName, url: advertised }, 'agent endpoint published'), again);
        }, 10_000);
        retry.unref();
      };
      again();
    }
  }
  o.log?.info({ url, node: o.nodeName }, 'agent endpoint listening');
  return {
    url,
    async close() {
      closing.abort();
      clearTimeout(retry);
      for (const ws of relays) ws.terminate();
      wss.close();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections?.();
      keyPair?.close();
    },
  };
}
