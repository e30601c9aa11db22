/**
 * The node agent in cluster mode (docs/adr/0017). It runs the standalone Controller unchanged over
 * a *node view* of the Kubernetes store (NodeScopedStore) and the same LocalAgent:
 *
 * - the view watches only the MicroVMs bound to this node (field selector status.node=<node>) and
 *   shows nothing else, so the controller boots what is bound here and removes whatever is not
 *   (its "resources of a VM that does not exist" path: unbound, moved, or deleted meanwhile);
 * - a MicroVM being deleted (deletionTimestamp, or phase Deleting from the API) is shown in phase
 *   Deleting; the controller's `deleteVm` after its node-side cleanup becomes the condition
 *   NodeCleanedUp=True, on which the operator removes the finalizer;
 * - a MicroVM with Evicting=True (a drain) is shown with desiredState Stopped, so the controller
 *   stops it here; the operator then binds it elsewhere and this node removes its files;
 * - writes never touch a VM that is no longer bound here (checked inside the optimistic-concurrency
 *   read-modify-write, so a rebinding by the operator always wins);
 * - a heartbeat Lease (microvm-system/mvm-node-<node>) carries the node's capacity and capabilities.
 */
import { hostname } from 'node:os';
import { CoordinationV1Api, CustomObjectsApi, ListWatch, Watch, type KubeConfig, type KubernetesObject, type V1Lease } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { setCondition, type MicroVM } from '../core/microvm.js';
import type { NodeAgent } from '../core/ports/agent.js';
import type { ListOptions, Page, Store, StoreChange, VmEvent, WriteOptions } from '../core/ports/store.js';
import { ANN_NODE_INFO, ClusterConditions, NODE_LEASE_LABEL, microTime, nodeLeaseName } from '../k8s/cluster.js';
import { MICROVM_RESOURCE } from '../k8s/crd.js';
import { httpStatus } from '../k8s/errors.js';
import { LABEL_ID, fromObject, type MicroVMObject } from '../k8s/microvm-object.js';
import type { KubernetesStore } from '../store/kubernetes/k8s-store.js';

const { group, version, plural } = MICROVM_RESOURCE;
type VmObj = MicroVMObject & KubernetesObject;

const condTrue = (vm: MicroVM, type: string): boolean => vm.status.conditions.some((c) => c.type === type && c.status === 'True');

export class NodeScopedStore implements Store {
  private readonly informer: ListWatch<VmObj>;
  private readonly subs = new Set<(c: StoreChange) => void>();
  /** id → object last seen by the informer (bound to this node). */
  private readonly seen = new Map<string, MicroVMObject>();
  private restartTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly k8s: KubernetesStore,
    kc: KubeConfig,
    readonly nodeName: string,
    private readonly log?: Logger,
  ) {
    const custom = kc.makeApiClient(CustomObjectsApi);
    const fieldSelector = `status.node=${nodeName}`;
    const path = `/apis/${group}/${version}/${plural}`;
    const sel = k8s.tn.selector().join(',');
    this.informer = new ListWatch<VmObj>(
      path,
      new Watch(kc),
      async () => (await custom.listClusterCustomObject({ group, version, plural, fieldSelector, ...(sel ? { labelSelector: sel } : {}) })) as never,
      false,
      sel || undefined,
      fieldSelector,
    );
    const upd = (o: MicroVMObject): void => {
      const id = o.metadata.labels?.[LABEL_ID];
      if (!id) return;
      this.seen.set(id, o);
      this.emit(id, false);
    };
    this.informer.on('add', upd);
    this.informer.on('update', upd);
    this.informer.on('delete', (o) => {
      const id = o.metadata.labels?.[LABEL_ID];
      if (!id) return;
      this.seen.delete(id);
      // Unbound from this node (moved, or gone): the controller removes what is left here.
      this.emit(id, true);
    });
    this.informer.on('error', (e: unknown) => {
      if (this.closed) return;
      this.log?.warn({ err: (e as Error)?.message }, 'MicroVM informer failed; restarting');
      clearTimeout(this.restartTimer);
      this.restartTimer = setTimeout(() => void this.informer.start().catch(() => undefined), 1000);
      this.restartTimer.unref();
    });
  }

  async start(): Promise<void> {
    await this.informer.start();
  }

  private emit(id: string, deleted: boolean): void {
    for (const cb of [...this.subs]) {
      try {
        cb({ kind: 'vm', id, deleted });
      } catch {
        /* subscriber's own */
      }
    }
  }

  private deleting(id: string, vm: MicroVM): boolean {
    return vm.status.phase === 'Deleting' || !!this.seen.get(id)?.metadata.deletionTimestamp;
  }

  /** The controller's view of a VM bound here. */
  private present(vm: MicroVM): MicroVM | undefined {
    if (vm.status.node !== this.nodeName) return undefined;
    if (this.deleting(vm.id, vm)) {
      if (condTrue(vm, ClusterConditions.NodeCleanedUp)) return undefined;
      return { ...vm, status: { ...vm.status, phase: 'Deleting' } };
    }
    if (condTrue(vm, ClusterConditions.Evicting)) return { ...vm, desiredState: 'Stopped' };
    return vm;
  }

  /** The object last seen of a VM bound here (its annotations: a migration plan). */
  objectOf(id: string): MicroVMObject | undefined {
    return this.seen.get(id);
  }

  /** Ids of the VMs bound here. */
  boundIds(): string[] {
    return [...this.seen.keys()];
  }

  async getVm(id: string): Promise<MicroVM | undefined> {
    const cached = this.seen.get(id);
    if (!cached) return undefined;
    // Always a fresh read (the controller measures before it acts).
    const vm = await this.k8s.getVm(id);
    if (!vm) return undefined;
    return this.present(vm);
  }

  async listVms(opts: ListOptions = {}): Promise<Page<MicroVM>> {
    const items: MicroVM[] = [];
    for (const o of this.informer.list()) {
      const vm = this.present(fromObject(o, this.k8s.tn));
      if (!vm || !vm.id) continue;
      if (opts.tenant !== undefined && vm.tenant !== opts.tenant) continue;
      if (opts.phase !== undefined && vm.status.phase !== opts.phase) continue;
      items.push(vm);
    }
    return { items };
  }

  async updateVm(id: string, mutate: (vm: MicroVM) => MicroVM, expectedVersion?: string, opts?: WriteOptions): Promise<MicroVM> {
    let shown: MicroVM | undefined;
    const out = await this.k8s.updateVm(
      id,
      (cur) => {
        shown = this.present(cur);
        if (!shown) return cur; // no longer ours: write nothing
        const next = mutate(structuredClone(shown));
        // The view's changes are not written back: intent (spec, desiredState) is the user's.
        next.spec = cur.spec;
        next.desiredState = cur.desiredState;
        if (next.status.phase === 'Deleting') next.status.phase = cur.status.phase;
        return next;
      },
      expectedVersion,
      opts,
    );
    return this.present(out) ?? out;
  }

  /** Node-side cleanup is done: tell the operator (it removes the finalizer). */
  async deleteVm(id: string): Promise<void> {
    const now = new Date().toISOString();
    await this.k8s.updateVm(id, (cur) => {
      if (cur.status.node !== this.nodeName || condTrue(cur, ClusterConditions.NodeCleanedUp)) return cur;
      cur.status.conditions = setCondition(cur.status.conditions, { type: ClusterConditions.NodeCleanedUp, status: 'True', reason: 'Removed', message: `VM resources removed from node ${this.nodeName}` }, now);
      return cur;
    }).catch((e: { code?: string }) => {
      if (e.code !== 'NOT_FOUND') throw e;
    });
  }

  appendEvent(e: VmEvent): Promise<void> {
    return this.k8s.appendEvent(e);
  }

  /** The node writes Events but does not read them (its RBAC has no list on events; the API does). */
  async listEvents(): Promise<VmEvent[]> {
    return [];
  }

  createVm(): Promise<MicroVM> {
    return Promise.reject(new Error('the node agent does not create microVMs'));
  }

  watch(cb: (c: StoreChange) => void): () => void {
    this.subs.add(cb);
    return () => this.subs.delete(cb);
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.restartTimer);
    this.subs.clear();
    await this.informer.stop();
  }
}

/**
 * The node's heartbeat: a Lease renewed every `periodMs` with the agent's NodeInfo (capacity,
 * drivers, accel, labels) as an annotation. The operator treats a node whose Lease is older than
 * its duration as not ready.
 */
export class NodeHeartbeat {
  private readonly api: CoordinationV1Api;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    kc: KubeConfig,
    private readonly o: {
      namespace: string;
      agent: NodeAgent;
      periodMs?: number;
      durationSeconds?: number;
      log?: Logger;
      /** After each renewal (the agent's own Node kept Ready when it registered it: node-registration.ts). */
      alsoOnBeat?: () => Promise<void>;
    },
  ) {
    this.api = kc.makeApiClient(CoordinationV1Api);
  }

  async beat(): Promise<void> {
    const node = this.o.agent.nodeName;
    const name = nodeLeaseName(node);
    const namespace = this.o.namespace;
    const info = await this.o.agent.info();
    const now = new Date();
    const annotations = { [ANN_NODE_INFO]: JSON.stringify(info) };
    const spec = { holderIdentity: `${node}/${hostname()}/${process.pid}`, leaseDurationSeconds: this.o.durationSeconds ?? 40, renewTime: microTime(now) };
    let lease: V1Lease | undefined;
    try {
      lease = await this.api.readNamespacedLease({ name, namespace });
    } catch (e) {
      if (httpStatus(e) !== 404) throw e;
    }
    if (!lease) {
      await this.api.createNamespacedLease({ namespace, body: { metadata: { name, namespace, labels: { [NODE_LEASE_LABEL]: node }, annotations }, spec: { ...spec, acquireTime: microTime(now) } } });
      return;
    }
    await this.api.replaceNamespacedLease({
      name,
      namespace,
      body: { ...lease, metadata: { ...lease.metadata, annotations: { ...(lease.metadata?.annotations ?? {}), ...annotations } }, spec: { ...lease.spec, ...spec } },
    });
  }

  start(): Promise<void> {
    const tick = (): void => {
      void this.beat()
        .then(() => this.o.alsoOnBeat?.())
        .catch((e: Error) => this.o.log?.warn({ err: e.message }, 'node heartbeat failed'))
        .finally(() => {
          if (!this.stopped) this.timer = setTimeout(tick, this.o.periodMs ?? 10_000);
        });
    };
    return this.beat().then(() => {
      this.timer = setTimeout(tick, this.o.periodMs ?? 10_000);
    });
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }
}
