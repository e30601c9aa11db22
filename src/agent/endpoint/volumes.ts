/**
 * Volumes in cluster mode (ADR 0018, "Cluster mode"): the bytes of a volume are on a node (a
 * `local` volume on the one node it was created on; `nfs`/`ceph-rbd` reachable from all, but
 * still formatted, snapshotted and mapped by a node's tools), while the API that owns the Volume
 * records is on no node. So the API's VolumeService reaches each backend through a node agent's
 * endpoint, the way console and snapshots go (TokenReview + SubjectAccessReview there):
 *
 *   node side  `volumeRoutes`: GET  /v1/volume-backends/{backend}              (SAR get volumes/storage)
 *                              POST /v1/volumes/{id}/{create|delete|snapshot|delete-snapshot|clone}?…
 *                                                                             (SAR update volumes/storage)
 *              A volume op runs only for a Volume object with that id whose node (if it has one) is this
 *              node: a caller cannot make an agent write bytes for a volume that is not placed here.
 *   API side   `RemoteVolumes`: one `RemoteVolumeBackend` per backend name (the VolumeBackend port),
 *              `.on(node)` for a node-local volume's node, any agent for a shared backend; and
 *              `placeVolume`, which picks the node of a new node-local volume.
 *
 * `storage` is not a served subresource: RBAC matches it as a string (like microvms/console).
 */
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { asMvmError, ErrorCodes, MvmError } from '../../core/errors.js';
import type { ResourceStore } from '../../core/ports/resources.js';
import type { VolumeAttachInfo, VolumeBackend, VolumeBackendCapabilities } from '../../core/ports/volumes.js';
import { VOLUME_KIND, type VolumeSpec } from '../../core/volumes.js';
import { fromK8sError } from '../../k8s/errors.js';
import { ANN_AGENT_ENDPOINT, agentResult, answerError, answerJson, type AgentCall, type EndpointRouteGroup } from './http.js';

const ID = '[a-z0-9][-a-z0-9]{0,62}';
const CAPS_ROUTE = new RegExp(`^/v1/volume-backends/(${ID})$`);
const OP_ROUTE = new RegExp(`^/v1/volumes/(${ID})/(create|delete|snapshot|delete-snapshot|clone)$`);
const ID_ONLY = new RegExp(`^${ID}$`);
const isId = (s: string | null): s is string => !!s && ID_ONLY.test(s);

/** What the endpoint's SubjectAccessReview checks on the node's volumes (resource `volumes/storage`). */
export type VolumeVerb = 'get' | 'update';

export interface VolumeRoutesOptions {
  nodeName: string;
  backends: VolumeBackend[];
  /** The Volume records (the agent reads them: a volume must be placed here before its bytes are). */
  resources: ResourceStore;
  log?: Logger;
}

/** The node side. Returns false when the path is not a volume route. */
export function volumeRoutes(o: VolumeRoutesOptions): EndpointRouteGroup<VolumeVerb> {
  const backends = new Map(o.backends.map((b) => [b.name, b]));
  /** The volume must exist and, when placed, be placed here. */
  const placedHere = async (id: string): Promise<void> => {
    const v = await o.resources.get<VolumeSpec>(VOLUME_KIND, id);
    if (!v) throw new MvmError(ErrorCodes.NOT_FOUND, `volume ${id} does not exist`);
    if (v.spec.node && v.spec.node !== o.nodeName) throw new MvmError(ErrorCodes.CONFLICT, `volume ${id} lives on node ${v.spec.node}, not on ${o.nodeName}`);
  };
  return {
    resource: 'volumes',
    subresource: 'storage',
    handle: async (req, access, res) => {
      const caps = req.method === 'GET' ? CAPS_ROUTE.exec(req.path) : null;
      const op = req.method === 'POST' ? OP_ROUTE.exec(req.path) : null;
      if (!caps && !op) return false;
      if (!(await access(caps ? 'get' : 'update'))) {
        answerJson(res, 403, { status: 403, message: `may not ${caps ? 'get' : 'update'} volumes/storage` });
        return true;
      }
      try {
        const name = caps ? caps[1]! : (req.query.get('backend') ?? '');
        const b = backends.get(name);
        if (!b) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `node ${o.nodeName} has no volume backend ${JSON.stringify(name)} (has: ${[...backends.keys()].join(', ')})`);
        if (caps) {
          answerJson(res, 200, await b.capabilities());
          return true;
        }
        const id = op![1]!;
        const what = op![2]!;
        const q = (k: string): string => {
          const v = req.query.get(k);
          if (!isId(v)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `query parameter ${k} is missing or not an id`);
          return v;
        };
        const bytes = (): number => {
          const n = Number(req.query.get('sizeBytes'));
          if (!Number.isSafeInteger(n) || n <= 0) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'sizeBytes must be a positive integer');
          return n;
        };
        let out: unknown = {};
        if (what === 'create') {
          await placedHere(id);
          await b.create(id, bytes());
        } else if (what === 'delete') {
          await placedHere(id);
          await b.delete(id);
        } else if (what === 'snapshot') {
          await placedHere(id);
          out = await b.snapshot(id, q('snapshotId'));
        } else if (what === 'delete-snapshot') {
          await b.deleteSnapshot(id, q('snapshotId'));
        } else {
          const newId = q('newId');
          await placedHere(newId);
          out = await b.cloneFromSnapshot(id, q('snapshotId'), newId, bytes());
        }
        o.log?.info({ volume: id, op: what, backend: name }, 'volume operation done');
        answerJson(res, 200, out);
      } catch (e) {
        o.log?.warn({ err: (e as Error).message, path: req.path }, 'volume operation failed');
        answerError(res, e);
      }
      return true;
    },
  };
}

// ---- the API side ---------------------------------------------------------------------------

const apiOnly = (what: string): MvmError => new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `${what} is the node agent's work in cluster mode, not the API's`);

/** The VolumeBackend port over the node agents: on one node (`on(node)`), or any agent for a shared backend. */
export class RemoteVolumeBackend implements VolumeBackend {
  constructor(
    readonly name: string,
    private readonly remote: RemoteVolumes,
    private readonly node?: string,
  ) {}

  on(node: string): RemoteVolumeBackend {
    return new RemoteVolumeBackend(this.name, this.remote, node);
  }

  private async where(): Promise<string> {
    return this.node ?? (await this.remote.anyNode());
  }

  private async op<T>(id: string, what: string, params: Record<string, string | number> = {}): Promise<T> {
    const node = await this.where();
    const q = new URLSearchParams({ backend: this.name, ...Object.fromEntries(Object.entries(params).map(([k, v]) => [k, String(v)])) });
    const res = await this.remote.call(node, 'POST', `/v1/volumes/${encodeURIComponent(id)}/${what}?${q}`, 600_000);
    return agentResult<T>(node, res, `volume ${what} of ${id}`);
  }

  capabilities(): Promise<VolumeBackendCapabilities> {
    return this.remote.capabilities(this.name, this.node);
  }
  async create(id: string, sizeBytes: number): Promise<void> {
    await this.op(id, 'create', { sizeBytes });
  }
  async delete(id: string): Promise<void> {
    await this.op(id, 'delete');
  }
  snapshot(volumeId: string, snapshotId: string): Promise<{ copyOnWrite: boolean }> {
    return this.op(volumeId, 'snapshot', { snapshotId });
  }
  async deleteSnapshot(volumeId: string, snapshotId: string): Promise<void> {
    await this.op(volumeId, 'delete-snapshot', { snapshotId });
  }
  cloneFromSnapshot(volumeId: string, snapshotId: string, newId: string, sizeBytes: number): Promise<{ copyOnWrite: boolean }> {
    return this.op(volumeId, 'clone', { snapshotId, newId, sizeBytes });
  }
  attach(): Promise<VolumeAttachInfo> {
    return Promise.reject(apiOnly('attaching a volume'));
  }
  detach(): Promise<void> {
    return Promise.reject(apiOnly('detaching a volume'));
  }
  /** The API sweeps nothing: each node's bytes are its own (reconcile runs with sweepLocal false). */
  async list(): Promise<{ volumes: string[]; snapshots: Array<{ volumeId?: string; snapshotId: string }>; partial: string[] }> {
    return { volumes: [], snapshots: [], partial: [] };
  }
  async removePartial(): Promise<void> {}
}

export interface RemoteVolumesOptions {
  kubeConfig: KubeConfig;
  call: AgentCall;
  /** The Volume records (to spread new volumes over the nodes). */
  resources: ResourceStore;
  /** How long a backend's capabilities are remembered (default 30 s). */
  capsCacheMs?: number;
}

/** The API's access to the nodes' volume backends, and the placement of new node-local volumes. */
export class RemoteVolumes {
  private readonly core: CoreV1Api;
  private readonly caps = new Map<string, { until: number; caps: VolumeBackendCapabilities }>();

  constructor(private readonly o: RemoteVolumesOptions) {
    this.core = o.kubeConfig.makeApiClient(CoreV1Api);
  }

  backends(names: string[]): RemoteVolumeBackend[] {
    return [...new Set(names)].map((n) => new RemoteVolumeBackend(n, this));
  }

  call: AgentCall = (node, method, path, timeoutMs) => this.o.call(node, method, path, timeoutMs);

  /** Nodes whose agent serves (endpoint published) and that take new work (not cordoned, not NotReady). */
  async nodes(): Promise<string[]> {
    let items;
    try {
      items = (await this.core.listNode()).items;
    } catch (e) {
      throw fromK8sError(e, 'list nodes');
    }
    return items
      .filter((n) => n.metadata?.annotations?.[ANN_AGENT_ENDPOINT] && n.spec?.unschedulable !== true)
      .filter((n) => !(n.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status !== 'True'))
      .map((n) => n.metadata!.name!)
      .sort();
  }

  async anyNode(): Promise<string> {
    const all = await this.nodes();
    if (!all.length) throw new MvmError(ErrorCodes.UNAVAILABLE, 'no node agent serves volumes (no schedulable Node has a published agent endpoint)');
    return all[Math.floor(Math.random() * all.length)]!;
  }

  async capabilities(backend: string, node?: string): Promise<VolumeBackendCapabilities> {
    const key = `${backend}@${node ?? ''}`;
    const hit = this.caps.get(key);
    if (hit && hit.until > Date.now()) return hit.caps;
    let caps: VolumeBackendCapabilities;
    try {
      const n = node ?? (await this.anyNode());
      caps = await agentResult<VolumeBackendCapabilities>(n, await this.o.call(n, 'GET', `/v1/volume-backends/${encodeURIComponent(backend)}`), `capabilities of volume backend ${backend}`);
    } catch (e) {
      const err = asMvmError(e);
      return { backend, available: false, reason: err.message, copyOnWrite: false, atomicSnapshots: false, shared: false };
    }
    this.caps.set(key, { until: Date.now() + (this.o.capsCacheMs ?? 30_000), caps });
    return caps;
  }

  /**
   * The node of a new node-local volume: among the schedulable nodes whose agent has the backend,
   * the one holding the fewest volumes (ties by name), so volumes (and the VMs pinned to them) spread.
   */
  async placeVolume(o: { backend: string }): Promise<string> {
    const nodes = await this.nodes();
    const held = new Map<string, number>();
    for (const v of await this.o.resources.list<VolumeSpec>(VOLUME_KIND)) if (v.spec.node) held.set(v.spec.node, (held.get(v.spec.node) ?? 0) + 1);
    const reasons: string[] = [];
    for (const n of [...nodes].sort((a, b) => (held.get(a) ?? 0) - (held.get(b) ?? 0) || a.localeCompare(b))) {
      const c = await this.capabilities(o.backend, n);
      if (c.available) return n;
      reasons.push(`${n}: ${c.reason ?? 'unavailable'}`);
    }
    throw new MvmError(ErrorCodes.UNAVAILABLE, `no node can hold a new ${o.backend} volume${reasons.length ? ` (${reasons.join('; ')})` : ' (no schedulable node with a node agent)'}`);
  }

  /** VolumeService's `backendOn`. */
  backendOn = (b: VolumeBackend, node: string): VolumeBackend => (b instanceof RemoteVolumeBackend ? b.on(node) : b);
}
