/**
 * The images API in cluster mode (ADR 0019, "Cluster mode"): the image caches are the node agents'
 * own (each pulls, builds and caches what its VMs boot), so the API's images routes reach every
 * node's `ImageManager` through its endpoint, the way volumes and snapshots go (TokenReview +
 * SubjectAccessReview there):
 *
 *   node side  `imageRoutes`: GET    /v1/images                              (SAR get images/cache)
 *                             DELETE /v1/images/{digest}                     (SAR delete images/cache)
 *                             POST   /v1/images/gc?maxIdleMs=&maxBytes=      (SAR delete images/cache)
 *   API side   `RemoteImages`: the ImageCatalog port over every node agent with a fresh heartbeat;
 *              lists with each image's `node`, deletes from every node holding it, gc per node; a node
 *              not asked (stale heartbeat, no endpoint) or not answering is a `warnings` entry.
 *
 * `images/cache` is not a served resource: RBAC matches it as a string (like microvms/console).
 */
import { CoordinationV1Api, CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { asMvmError, ErrorCodes, MvmError, notFound } from '../../core/errors.js';
import type { CachedImage, ImageCatalog, ImageGcResult, ImageList, NodeWarning } from '../../core/ports/images.js';
import { NODE_LEASE_LABEL } from '../../k8s/cluster.js';
import { fromK8sError } from '../../k8s/errors.js';
import { parseImageDigest } from '../../storage/oci/manager.js';
import { ANN_AGENT_ENDPOINT, agentResult, answerError, answerJson, type AgentCall, type EndpointRouteGroup } from './http.js';

const DIGEST_ROUTE = /^\/v1\/images\/([a-z0-9][-:a-z0-9]{0,199})$/;

/** What the endpoint's SubjectAccessReview checks on the node's image cache (resource `images/cache`). */
export type ImageVerb = 'get' | 'delete';

/** The node side. Returns false when the path is not an image route. */
export function imageRoutes(o: { nodeName: string; images: ImageCatalog; log?: Logger }): EndpointRouteGroup<ImageVerb> {
  return {
    resource: 'images',
    subresource: 'cache',
    handle: async (req, access, res) => {
      const list = req.method === 'GET' && req.path === '/v1/images';
      const gc = req.method === 'POST' && req.path === '/v1/images/gc';
      const del = req.method === 'DELETE' ? DIGEST_ROUTE.exec(req.path) : null; // the endpoint decoded sha256%3A…
      if (!list && !gc && !del) return false;
      const verb = list ? 'get' : 'delete';
      if (!(await access(verb))) {
        answerJson(res, 403, { status: 403, message: `may not ${verb} images/cache` });
        return true;
      }
      try {
        if (list) answerJson(res, 200, { items: await o.images.list() });
        else if (del) {
          const removed = await o.images.delete(del[1]!);
          o.log?.info({ digest: del[1], node: o.nodeName }, 'image deleted for the API');
          answerJson(res, 200, { removed });
        } else {
          const n = (k: string): number | undefined => {
            const v = req.query.get(k);
            if (v === null) return undefined;
            const x = Number(v);
            if (!Number.isSafeInteger(x) || x < 0) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `${k} must be a non-negative integer`);
            return x;
          };
          const maxIdleMs = n('maxIdleMs');
          const maxBytes = n('maxBytes');
          answerJson(res, 200, await o.images.gc({ ...(maxIdleMs !== undefined ? { maxIdleMs } : {}), ...(maxBytes !== undefined ? { maxBytes } : {}) }));
        }
      } catch (e) {
        answerError(res, e);
      }
      return true;
    },
  };
}

// ---- the API side ---------------------------------------------------------------------------

export interface RemoteImagesOptions {
  kubeConfig: KubeConfig;
  call: AgentCall;
  /** Where the node agents' heartbeat Leases are (microvm-system). */
  systemNamespace: string;
  /** Timeout of a node's list (default 15 s); delete and gc get 2 min. */
  timeoutMs?: number;
}

type NodeResult<T> = { node: string; ok: true; value: T } | { node: string; ok: false; error: MvmError };

/** The ImageCatalog port over every node agent (cluster mode). */
export class RemoteImages implements ImageCatalog {
  private readonly core: CoreV1Api;
  private readonly leases: CoordinationV1Api;

  constructor(private readonly o: RemoteImagesOptions) {
    this.core = o.kubeConfig.makeApiClient(CoreV1Api);
    this.leases = o.kubeConfig.makeApiClient(CoordinationV1Api);
  }

  /**
   * The nodes to ask: those with a node agent (heartbeat Lease or published endpoint) whose
   * heartbeat is fresh and whose endpoint is published. The others are warnings, never omitted
   * silently. Cordoned nodes are asked: their caches are still there.
   */
  async nodes(now = Date.now()): Promise<{ nodes: string[]; warnings: NodeWarning[] }> {
    let nodeItems;
    let leaseItems;
    try {
      [nodeItems, leaseItems] = await Promise.all([
        this.core.listNode().then((l) => l.items),
        this.leases.listNamespacedLease({ namespace: this.o.systemNamespace, labelSelector: NODE_LEASE_LABEL }).then((l) => l.items),
      ]);
    } catch (e) {
      throw fromK8sError(e, 'list nodes and their heartbeats');
    }
    const leaseOf = new Map(leaseItems.map((l) => [l.metadata?.labels?.[NODE_LEASE_LABEL] ?? '', l]));
    const nodes: string[] = [];
    const warnings: NodeWarning[] = [];
    for (const n of nodeItems) {
      const name = n.metadata?.name ?? '';
      const endpoint = n.metadata?.annotations?.[ANN_AGENT_ENDPOINT];
      const lease = leaseOf.get(name);
      if (!endpoint && !lease) continue; // not a node with a microVM agent
      const renew = lease?.spec?.renewTime ? new Date(lease.spec.renewTime).getTime() : 0;
      const fresh = renew + (lease?.spec?.leaseDurationSeconds ?? 40) * 1000 > now;
      if (!fresh) warnings.push({ node: name, message: `not asked: no fresh heartbeat from its agent${renew ? ` since ${new Date(renew).toISOString()}` : ''}` });
      else if (!endpoint) warnings.push({ node: name, message: `not asked: its agent has not published its endpoint (annotation ${ANN_AGENT_ENDPOINT})` });
      else nodes.push(name);
    }
    return { nodes: nodes.sort(), warnings };
  }

  /** Ask one node; its failure is returned, not raised. */
  private async ask<T>(node: string, method: string, path: string, timeoutMs: number, what: string): Promise<NodeResult<T>> {
    try {
      return { node, ok: true, value: await agentResult<T>(node, await this.o.call(node, method, path, timeoutMs), `${what} on node ${node}`) };
    } catch (e) {
      return { node, ok: false, error: asMvmError(e) };
    }
  }

  /** Ask every node; failures are returned per node (the caller decides which become warnings). */
  private async fanOut<T>(method: string, path: string, timeoutMs: number, what: string): Promise<{ results: Array<NodeResult<T>>; warnings: NodeWarning[] }> {
    const { nodes, warnings } = await this.nodes();
    return { results: await Promise.all(nodes.map((node) => this.ask<T>(node, method, path, timeoutMs, what))), warnings };
  }

  private static unanswered(r: { node: string; error: MvmError }): NodeWarning {
    return { node: r.node, message: `did not answer: ${r.error.message}` };
  }

  private static withWarnings(items: CachedImage[], warnings: NodeWarning[]): ImageList {
    return warnings.length ? Object.assign(items, { warnings }) : items;
  }

  /** Every node's cached images, each with its `node` (an image cached on two nodes is listed twice). */
  async list(): Promise<ImageList> {
    const { results, warnings } = await this.fanOut<{ items: CachedImage[] }>('GET', '/v1/images', this.o.timeoutMs ?? 15_000, 'listing images');
    const items: CachedImage[] = [];
    for (const r of results) {
      if (r.ok) items.push(...r.value.items.map((i) => ({ ...i, node: r.node })));
      else warnings.push(RemoteImages.unanswered(r));
    }
    return RemoteImages.withWarnings(items, warnings);
  }

  /**
   * Delete an image from every node that caches it. Refused (409, naming the nodes) when a microVM
   * on any of them uses it — then nothing is removed anywhere; 404 when no node has it.
   */
  async delete(digestParam: string): Promise<ImageList> {
    const digest = parseImageDigest(digestParam);
    const listed = await this.list();
    const warnings = [...(listed.warnings ?? [])];
    const held = listed.filter((i) => i.digest === digest);
    const holders = [...new Set(held.map((i) => i.node!))];
    if (holders.length === 0) {
      if (warnings.length) {
        throw new MvmError(ErrorCodes.UNAVAILABLE, `image ${digest} is on none of the nodes that answered, but ${warnings.map((w) => `node ${w.node} (${w.message})`).join('; ')}`, { details: { digest, warnings } });
      }
      throw notFound('image', digest);
    }
    const used = holders.map((node) => ({ node, inUse: held.filter((i) => i.node === node).reduce((s, i) => s + i.inUse, 0) })).filter((u) => u.inUse > 0);
    if (used.length) {
      throw new MvmError(ErrorCodes.CONFLICT, `image ${digest} is in use on ${used.map((u) => `node ${u.node} by ${u.inUse} microVM(s)`).join(', ')}; delete them first`, {
        details: { digest, nodes: used },
      });
    }
    const results = await Promise.all(holders.map((node) => this.ask<{ removed: CachedImage[] }>(node, 'DELETE', `/v1/images/${encodeURIComponent(digest)}`, 120_000, `deleting image ${digest}`)));
    const removed: CachedImage[] = [];
    const conflicts: string[] = [];
    for (const r of results) {
      if (r.ok) removed.push(...r.value.removed.map((i) => ({ ...i, node: r.node })));
      else if (r.error.code === ErrorCodes.CONFLICT) conflicts.push(`node ${r.node}: ${r.error.message}`);
      else if (r.error.code !== ErrorCodes.NOT_FOUND) warnings.push(RemoteImages.unanswered(r)); // NOT_FOUND: removed meanwhile (a gc)
    }
    if (conflicts.length) {
      // Became used (or leased by a create) between the check and the delete.
      throw new MvmError(ErrorCodes.CONFLICT, `image ${digest} is in use on ${conflicts.join('; ')}${removed.length ? ` (removed from ${[...new Set(removed.map((i) => i.node))].join(', ')})` : ''}`, {
        details: { digest, removedFrom: [...new Set(removed.map((i) => i.node))] },
      });
    }
    return RemoteImages.withWarnings(removed, warnings);
  }

  /** gc on every node (each by its own protection rules); totals plus each node's result. */
  async gc(o: { maxIdleMs?: number; maxBytes?: number } = {}): Promise<ImageGcResult> {
    const q = new URLSearchParams({ ...(o.maxIdleMs !== undefined ? { maxIdleMs: String(o.maxIdleMs) } : {}), ...(o.maxBytes !== undefined ? { maxBytes: String(o.maxBytes) } : {}) });
    const { results, warnings } = await this.fanOut<ImageGcResult>('POST', `/v1/images/gc${q.size ? `?${q}` : ''}`, 120_000, 'image gc');
    const out: ImageGcResult & { nodes: NonNullable<ImageGcResult['nodes']> } = { removed: [], freedBytes: 0, keptInUse: 0, remainingBytes: 0, nodes: [] };
    for (const r of results) {
      if (!r.ok) {
        warnings.push(RemoteImages.unanswered(r));
        continue;
      }
      const removed = r.value.removed.map((x) => ({ ...x, node: r.node }));
      out.nodes.push({ node: r.node, removed, freedBytes: r.value.freedBytes, keptInUse: r.value.keptInUse, remainingBytes: r.value.remainingBytes });
      out.removed.push(...removed);
      out.freedBytes += r.value.freedBytes;
      out.keptInUse += r.value.keptInUse;
      out.remainingBytes += r.value.remainingBytes;
    }
    return warnings.length ? { ...out, warnings } : out;
  }
}
