/**
 * The operator (cluster mode, docs/adr/0017): places MicroVMs on nodes and owns their lifecycle
 * around the node agents, which run them (src/agent/cluster-agent.ts).
 *
 * Informers (list + watch into a cache) on MicroVMs, Nodes and the node agents' heartbeat Leases
 * feed a rate-limited work queue keyed by namespace/name (src/operator/workqueue.ts); a periodic
 * resync re-queues everything; an informer that fails is restarted. Each key is reconciled from a
 * fresh read by the named, idempotent steps of reconcile-steps.ts (finalize, adopt, delete-request,
 * restart, drain, unplaced, admit, stay-stopped, place); a step that fails is named in a
 * ReconcileFailed event on the MicroVM (once per distinct failure) and the key is retried with
 * backoff. The binding is one status write conditioned on the resourceVersion read, so two
 * operators, or a retry after a crash, can never bind one VM twice.
 *
 * A defrag request (ConfigMap microvm-system/microvm-defrag) is planned with planDefrag and, unless
 * a dry run, carried out one move at a time through the eviction path (reconcileDefrag).
 *
 * Every write goes through the status subresource (status) or the resource (metadata) with the
 * read resourceVersion; a 409 re-queues the key with backoff. Each transition is a Kubernetes Event.
 */
import { CoordinationV1Api, CoreV1Api, CustomObjectsApi, ListWatch, Watch, type KubeConfig, type KubernetesObject, type V1ConfigMap, type V1Lease, type V1Node } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { asMvmError } from '../core/errors.js';
import { checkQuota, emptyUsage, vmResources, type Quotas, type VmResources } from '../core/quota.js';
import type { Tenant } from '../core/ports/tenants.js';
import { limitsOf } from '../core/tenancy.js';
import { ConditionTypes, parseQuantityMiB, setCondition, type MicroVM } from '../core/microvm.js';
import type { NodeInfo } from '../core/ports/agent.js';
import { planDefrag, type DefragMove } from '../scheduler/defrag.js';
import type { Placement, Scheduler } from '../scheduler/scheduler.js';
import { ClusterState, holdsPlacement } from '../scheduler/state.js';
import { ClusterConditions, NODE_LEASE_LABEL, SYSTEM_NAMESPACE, nodeInfoOf, nodeLeaseName } from '../k8s/cluster.js';
import { MICROVM_RESOURCE, SNAPSHOT_RESOURCE, VOLUME_RESOURCE } from '../k8s/crd.js';
import { httpStatus } from '../k8s/errors.js';
import { LABEL_ID, TenantNamespaces, fromObject, isLabelValue, resourcesOfObject, type MicroVMObject } from '../k8s/microvm-object.js';
import { ANN_TENANT, LABEL_TENANT_RECORD } from '../store/kubernetes/tenant-store.js';
import { RateLimitingQueue, runWorkers } from './workqueue.js';
import { ANN_DEFRAG_TARGET, condTrue, reconcileSteps, type Reconcile } from './reconcile-steps.js';
import { operatorEvent } from './events.js';
import { failedStep, runSteps, type Step } from '../core/steps.js';

export { ANN_DEFRAG_TARGET } from './reconcile-steps.js';

const { group, version, plural } = MICROVM_RESOURCE;
type VmObj = MicroVMObject & KubernetesObject;

export interface OperatorOptions {
  kubeConfig: KubeConfig;
  scheduler: Scheduler;
  log: Logger;
  partition?: string;
  systemNamespace?: string;
  resyncMs?: number;
  workers?: number;
  /**
   * A cordoned node (spec.unschedulable: `kubectl cordon`, `kubectl drain`) is drained: its VMs
   * move elsewhere. Default true; a Node annotated microvm.service/drain=false opts out (and
   * =true drains even when this is false).
   */
  drainOnCordon?: boolean;
  /** A drain or NoExecute taint moves running VMs with their memory first (default true; MVM_DRAIN_MODE=cold: stop + cold start only). */
  drainMigrates?: boolean;
  /** Backoff of failed keys. */
  baseDelayMs?: number;
  maxDelayMs?: number;
}

/** The defrag request (docs/adr/0017): a ConfigMap in the system namespace. */
export const DEFRAG_CONFIGMAP = 'microvm-defrag';
/** What the operator writes back on it. */
export const DefragAnnotations = {
  /** The request handled (its data, canonical): a changed request is planned anew. */
  request: 'microvm.service/defrag-request',
  /** Planned (dry run) | Moving | Succeeded | Failed */
  phase: 'microvm.service/defrag-phase',
  /** JSON {node, moves: [{vm, name, namespace, from, to, vcpu, memoryMiB}]} */
  plan: 'microvm.service/defrag-plan',
  /** Moves done. */
  done: 'microvm.service/defrag-moves-done',
  /** The index of the move under way. */
  started: 'microvm.service/defrag-move-started',
  message: 'microvm.service/defrag-message',
} as const;
const DEFRAG_KEY = '@defrag';

type PlannedMove = DefragMove & { namespace: string };

const keyOf = (o: { metadata?: { namespace?: string; name?: string } }): string => `${o.metadata?.namespace}/${o.metadata?.name}`;

/** Thrown to re-queue a key with backoff without logging it as a failure. */
class Requeue extends Error {}

export class Operator {
  private readonly custom: CustomObjectsApi;
  private readonly core: CoreV1Api;
  private readonly namespaces: TenantNamespaces;
  readonly queue: RateLimitingQueue;
  private readonly vms: ListWatch<VmObj>;
  private readonly nodes: ListWatch<V1Node>;
  private readonly leases: ListWatch<V1Lease>;
  private readonly defragCms: ListWatch<V1ConfigMap>;
  /** The scheduler's view, kept by the informers: nodes (Node + heartbeat) and the VMs holding resources. */
  readonly state = new ClusterState();
  private readonly systemNs: string;
  /** Bindings written but perhaps not yet in the informer's cache (kube-scheduler's "assume"). */
  private readonly assumed = new Map<string, { node: string; until: number }>();
  private resyncTimer: NodeJS.Timeout | undefined;
  private workers: Promise<unknown> | undefined;
  private stopped = false;
  private readonly restartTimers = new Set<NodeJS.Timeout>();
  /** The Node informer has listed once (a Node missing from it is really gone). */
  private nodesSynced = false;
  /** Reconciles done (tests, metrics). */
  reconciles = 0;
  /** The last failure said per key (ReconcileFailed events are written once per distinct failure). */
  private readonly failedSteps = new Map<string, string>();
  private readonly steps: Array<Step<Reconcile>>;

  constructor(private readonly options: OperatorOptions) {
    const kc = options.kubeConfig;
    this.custom = kc.makeApiClient(CustomObjectsApi);
    this.core = kc.makeApiClient(CoreV1Api);
    const coord = kc.makeApiClient(CoordinationV1Api);
    this.namespaces = new TenantNamespaces(options.partition);
    this.systemNs = options.systemNamespace ?? SYSTEM_NAMESPACE;
    this.queue = new RateLimitingQueue({ baseDelayMs: options.baseDelayMs ?? 250, maxDelayMs: options.maxDelayMs ?? 30_000 });
    const sel = this.namespaces.selector().join(',');
    this.vms = new ListWatch<VmObj>(
      `/apis/${group}/${version}/${plural}`,
      new Watch(kc),
      async () => (await this.custom.listClusterCustomObject({ group, version, plural, ...(sel ? { labelSelector: sel } : {}) })) as never,
      false,
      sel || undefined,
    );
    this.nodes = new ListWatch<V1Node>('/api/v1/nodes', new Watch(kc), () => this.core.listNode(), false);
    this.leases = new ListWatch<V1Lease>(
      `/apis/coordination.k8s.io/v1/namespaces/${this.systemNs}/leases`,
      new Watch(kc),
      () => coord.listNamespacedLease({ namespace: this.systemNs, labelSelector: NODE_LEASE_LABEL }),
      false,
      NODE_LEASE_LABEL,
    );
    this.defragCms = new ListWatch<V1ConfigMap>(
      `/api/v1/namespaces/${this.systemNs}/configmaps`,
      new Watch(kc),
      () => this.core.listNamespacedConfigMap({ namespace: this.systemNs, fieldSelector: `metadata.name=${DEFRAG_CONFIGMAP}` }),
      false,
      undefined,
      `metadata.name=${DEFRAG_CONFIGMAP}`,
    );
    for (const verb of ['add', 'update'] as const) this.vms.on(verb, (obj) => this.syncVm(obj));
    this.vms.on('delete', (obj) => {
      this.assumed.delete(fromObject(obj, this.namespaces).id);
      this.state.forget(fromObject(obj, this.namespaces).id);
      // Room in the tenant's quota: the VMs waiting for it look again.
      for (const o of this.vms.list(obj.metadata?.namespace)) {
        if (o.status?.conditions?.some((x) => x.type === ClusterConditions.Admitted && x.status === 'False')) this.queue.add(keyOf(o));
      }
    });
    for (const verb of ['add', 'update', 'delete'] as const) {
      this.defragCms.on(verb, () => this.queue.add(DEFRAG_KEY));
      this.vms.on(verb, (obj) => this.queue.add(keyOf(obj)));
      // A node change (cordon, drain, labels) or heartbeat may unblock VMs: requeue the ones it concerns.
      this.nodes.on(verb, (n) => this.nodeChanged(n.metadata?.name ?? ''));
      this.leases.on(verb, (l) => this.nodeChanged(l.metadata?.labels?.[NODE_LEASE_LABEL] ?? ''));
    }
    for (const [what, inf] of [['microvms', this.vms], ['nodes', this.nodes], ['leases', this.leases], ['defrag', this.defragCms]] as const) {
      inf.on('error', (e: unknown) => this.restart(what, inf as ListWatch<KubernetesObject>, e));
    }
    this.steps = reconcileSteps({
      namespaces: this.namespaces,
      drainOnCordon: options.drainOnCordon ?? true,
      drainMigrates: options.drainMigrates ?? true,
      nodesSynced: () => this.nodesSynced,
      node: (name) => this.nodes.get(name),
      replace: (obj) => this.replace(obj),
      replaceStatus: (obj) => this.replaceStatus(obj),
      deleteObject: async (namespace, name) => {
        try {
          await this.custom.deleteNamespacedCustomObject({ group, version, plural, namespace, name });
        } catch (e) {
          if (httpStatus(e) !== 404) throw e;
        }
      },
      event: (obj, type, reason, message) => this.event(obj, type, reason, message),
      unbind: (obj, vm, now, why) => this.unbind(obj, vm, now, why),
      quotaRefusal: (namespace, vm) => this.quotaRefusal(namespace, vm),
      pinnedPlacement: (namespace, vm) => this.pinnedPlacement(namespace, vm),
      refreshNodes: () => this.refreshNodes(),
      schedule: (vm, only) => this.options.scheduler.schedule(vm, this.state, only ? { only } : undefined),
      scheduleAway: (vm, from) => this.options.scheduler.schedule(vm, this.state, { exclude: new Set([from]) }),
      assume: (vm, node) => {
        this.assumed.set(vm.id, { node, until: Date.now() + 30_000 });
        this.state.assume(vm, node);
      },
      release: (id) => {
        this.assumed.delete(id);
        this.state.forget(id);
      },
      requeueAfter: (key, ms) => this.queue.addAfter(key, ms),
    });
  }

  /** Start informers and workers (call when leading). */
  async start(): Promise<void> {
    await Promise.all([this.nodes.start(), this.leases.start()]);
    this.nodesSynced = true;
    await this.vms.start();
    await this.defragCms.start();
    this.workers = runWorkers(this.queue, this.options.workers ?? 4, (k) => this.reconcileKey(k), (k, e, retry) => {
      if (!(e instanceof Requeue)) this.options.log.warn({ key: k, err: asMvmError(e).message, retryInMs: retry }, 'reconcile failed');
    });
    const tick = (): void => {
      if (this.stopped) return;
      this.resyncState();
      for (const o of this.vms.list()) this.queue.add(keyOf(o));
      this.queue.add(DEFRAG_KEY);
      this.resyncTimer = setTimeout(tick, this.options.resyncMs ?? 30_000);
      this.resyncTimer.unref();
    };
    tick();
    this.options.log.info('operator started');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.resyncTimer);
    for (const t of this.restartTimers) clearTimeout(t);
    this.queue.shutDown();
    await Promise.allSettled([this.vms.stop(), this.nodes.stop(), this.leases.stop(), this.defragCms.stop()]);
    await this.workers;
  }

  private restart(what: string, inf: ListWatch<KubernetesObject>, e: unknown): void {
    if (this.stopped) return;
    this.options.log.warn({ informer: what, err: (e as Error)?.message }, 'informer failed; restarting');
    const t = setTimeout(() => {
      this.restartTimers.delete(t);
      if (!this.stopped) void inf.start().catch(() => undefined);
    }, 1000);
    t.unref();
    this.restartTimers.add(t);
  }

  private nodeChanged(node: string): void {
    if (node) this.syncNode(node, Date.now());
    for (const o of this.vms.list()) {
      const n = o.status?.node;
      if (!n || n === node) this.queue.add(keyOf(o));
    }
  }

  // ---- reconcile ------------------------------------------------------------------------------

  private async get(namespace: string, name: string): Promise<MicroVMObject | undefined> {
    try {
      return (await this.custom.getNamespacedCustomObject({ group, version, plural, namespace, name })) as MicroVMObject;
    } catch (e) {
      if (httpStatus(e) === 404) return undefined;
      throw e;
    }
  }

  private async replace(obj: MicroVMObject): Promise<MicroVMObject> {
    try {
      return (await this.custom.replaceNamespacedCustomObject({
        group, version, plural, namespace: obj.metadata.namespace!, name: obj.metadata.name!, body: obj, fieldManager: 'microvm-operator',
      })) as MicroVMObject;
    } catch (e) {
      if (httpStatus(e) === 409 || httpStatus(e) === 404) throw new Requeue(`conflict on ${keyOf(obj)}`);
      throw e;
    }
  }

  /** Status write conditioned on obj.metadata.resourceVersion (the binding, conditions, phases). */
  private async replaceStatus(obj: MicroVMObject): Promise<MicroVMObject> {
    try {
      return (await this.custom.replaceNamespacedCustomObjectStatus({
        group, version, plural, namespace: obj.metadata.namespace!, name: obj.metadata.name!,
        body: { ...obj, status: { ...obj.status!, updatedAt: new Date().toISOString() } }, fieldManager: 'microvm-operator',
      })) as MicroVMObject;
    } catch (e) {
      if (httpStatus(e) === 409 || httpStatus(e) === 404) throw new Requeue(`conflict on ${keyOf(obj)}`);
      throw e;
    }
  }

  private async event(obj: MicroVMObject, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void> {
    const namespace = obj.metadata.namespace!;
    const id = obj.metadata.labels?.[LABEL_ID];
    try {
      const labels = { ...this.namespaces.systemLabels(this.namespaces.tenantOf(namespace)), ...(id && isLabelValue(id) ? { [LABEL_ID]: id } : {}) };
      await this.core.createNamespacedEvent({ namespace, body: operatorEvent(obj, { apiVersion: `${group}/${version}`, kind: 'MicroVM' }, labels, type, reason, message) });
    } catch (e) {
      this.options.log.warn({ key: keyOf(obj), reason, err: (e as Error).message }, 'could not record event');
    }
    this.options.log.info({ key: keyOf(obj), reason, type }, message);
  }

  /** The scheduler's view: ready = fresh heartbeat; capacity from the agent's report. */
  nodeInfos(): NodeInfo[] {
    const now = Date.now();
    return this.nodes.list().map((n) => nodeInfoOf(n, this.leases.get(nodeLeaseName(n.metadata!.name!), this.systemNs), now));
  }

  private syncNode(name: string, now: number): void {
    const n = this.nodes.get(name);
    if (n) this.state.setNode(nodeInfoOf(n, this.leases.get(nodeLeaseName(name), this.systemNs), now));
    else this.state.removeNode(name);
  }

  /** Readiness is heartbeat freshness, which changes with no event: re-derive the nodes before a decision. */
  private refreshNodes(): void {
    const now = Date.now();
    const names = new Set(this.nodes.list().map((n) => n.metadata!.name!));
    for (const e of [...this.state.nodes()]) if (!names.has(e.info.name)) this.state.removeNode(e.info.name);
    for (const name of names) this.syncNode(name, now);
  }

  /** A MicroVM as the informer sees it: holds resources on its node, or not (stopped, unbound). */
  private syncVm(o: MicroVMObject): void {
    const vm = fromObject(o, this.namespaces);
    const a = this.assumed.get(vm.id);
    if (holdsPlacement(vm)) {
      this.state.assume(vm, vm.status.node!);
      if (a && a.node === vm.status.node) this.assumed.delete(vm.id);
      return;
    }
    // A binding written but not yet seen by the informer (kube-scheduler's "assume"): keep it.
    if (a && a.until > Date.now() && !vm.status.node) return;
    if (a) this.assumed.delete(vm.id);
    this.state.forget(vm.id);
  }

  /** Periodic: the state agrees with the caches again (a missed delete, an expired assumption). */
  private resyncState(): void {
    const seen = new Set<string>();
    for (const o of this.vms.list()) {
      this.syncVm(o);
      seen.add(fromObject(o, this.namespaces).id);
    }
    for (const p of [...this.state.placed()]) if (!seen.has(p.id) && !this.assumed.has(p.id)) this.state.forget(p.id);
    this.refreshNodes();
  }

  /** One pass over one key: a fresh read, then the reconcile steps (reconcile-steps.ts). */
  async reconcileKey(key: string): Promise<void> {
    this.reconciles++;
    if (key === DEFRAG_KEY) return this.reconcileDefrag();
    const [namespace, name] = key.split('/') as [string, string];
    const obj = await this.get(namespace, name);
    if (!obj) return;
    const pass: Reconcile = { key, namespace, name, obj, vm: fromObject(obj, this.namespaces), now: new Date().toISOString() };
    try {
      await runSteps(`reconcile of ${key}`, this.steps, pass, { passThrough: (e) => e instanceof Requeue });
      this.failedSteps.delete(key);
    } catch (e) {
      if (e instanceof Requeue) throw e;
      // Say which step failed on the MicroVM, once per distinct failure (retries back off quietly).
      const err = asMvmError(e);
      const said = `step ${failedStep(err) ?? 'unknown'}: ${asMvmError(err.cause ?? err).message}`;
      if (this.failedSteps.get(key) !== said) {
        this.failedSteps.set(key, said);
        await this.event(pass.obj, 'Warning', 'ReconcileFailed', said);
      }
      throw e;
    }
  }

  /**
   * Why `vm` does not fit its tenant's quota (the namespace's tenant record), or undefined.
   * Counted, from the informer's cache: every other VM of the namespace already admitted (or bound,
   * or made before this check existed), then the not-yet-admitted ones older than `vm` that fit, in
   * creation order (greedy), so concurrent workers and operator restarts reach the same verdict
   * and the oldest waiting VMs go first. API-created VMs were admitted atomically by the API
   * (src/store/kubernetes/admission.ts) and pass here by the same arithmetic.
   */
  private async quotaRefusal(namespace: string, vm: MicroVM): Promise<string | undefined> {
    let ns;
    try {
      ns = await this.core.readNamespace({ name: namespace });
    } catch (e) {
      if (httpStatus(e) === 404) return undefined;
      throw e;
    }
    if (ns.metadata?.labels?.[LABEL_TENANT_RECORD] !== 'true') return undefined; // not a tenant: no quotas
    let limits: Quotas;
    try {
      limits = limitsOf(JSON.parse(ns.metadata.annotations?.[ANN_TENANT] ?? '{}') as Pick<Tenant, 'quotas'>);
    } catch {
      return undefined;
    }
    if (limits.vms === undefined && limits.vcpu === undefined && limits.memoryMiB === undefined && limits.diskMiB === undefined && limits.hostPorts === undefined) return undefined;
    const tenant = this.namespaces.tenantOf(namespace);
    const used = emptyUsage();
    const add = (r: VmResources): void => {
      used.vms += 1;
      used.vcpu += r.vcpu;
      used.memoryMiB += r.memoryMiB;
      used.diskMiB += r.diskMiB;
      used.hostPorts += r.hostPorts;
    };
    const ageOf = (o: VmObj): string => `${o.metadata?.creationTimestamp ? new Date(o.metadata.creationTimestamp).toISOString() : ''}/${o.metadata?.name}`;
    const me = this.vms.get(vm.name, namespace);
    const myAge = me ? ageOf(me) : `${new Date().toISOString()}/${vm.name}`;
    const waiting: VmObj[] = [];
    for (const o of this.vms.list(namespace)) {
      const other = fromObject(o, this.namespaces);
      if (other.id === vm.id || o.metadata?.name === vm.name) continue;
      const conds = other.status.conditions;
      const held = condTrue(conds, ClusterConditions.Admitted) || !!other.status.node || (!conds.some((c) => c.type === ClusterConditions.Admitted) && other.status.phase !== 'Pending');
      if (held) add(resourcesOfObject(o));
      else if (ageOf(o) < myAge) waiting.push(o);
    }
    for (const o of waiting.sort((a, b) => (ageOf(a) < ageOf(b) ? -1 : 1))) {
      try {
        checkQuota(tenant, limits, used, { vms: 1, ...resourcesOfObject(o) });
        add(resourcesOfObject(o));
      } catch {
        // it waits too; it does not count ahead of this one
      }
    }
    try {
      checkQuota(tenant, limits, used, { vms: 1, ...(me ? resourcesOfObject(me) : vmResources(vm.spec)) });
      return undefined;
    } catch (e) {
      return asMvmError(e).message;
    }
  }

  /**
   * Where a VM must run because node-local data it needs lives there: the Snapshot it is restored
   * from (`spec.node`) and its Volumes with a `spec.node`. Only that node (a placement, or a
   * refusal saying why); undefined when nothing pins it (no snapshot, shared or no volumes).
   */
  private async pinnedPlacement(namespace: string, vm: MicroVM): Promise<Placement | undefined> {
    const refuse = (message: string): Placement => ({ reasons: {}, message });
    /** What pins the VM, by node: the reason shown for each. */
    const pins: Array<{ node: string; why: string; what: string }> = [];
    const snap = vm.spec.source?.snapshot;
    if (snap !== undefined) {
      if (!isLabelValue(snap)) return refuse(`restored from snapshot ${JSON.stringify(snap)}, which is not a snapshot id`);
      const r = SNAPSHOT_RESOURCE;
      const list = (await this.custom.listNamespacedCustomObject({ group: r.group, version: r.version, plural: r.plural, namespace, labelSelector: `${LABEL_ID}=${snap}` })) as {
        items: Array<{ spec?: { node?: string; phase?: string } }>;
      };
      const s = list.items[0]?.spec;
      if (!s) return refuse(`restored from snapshot ${snap}, which does not exist in namespace ${namespace}`);
      if (!s.node) return refuse(`restored from snapshot ${snap}, which has no node`);
      if (s.phase !== 'Ready') return refuse(`restored from snapshot ${snap}, which is ${s.phase ?? 'not Ready'}`);
      pins.push({ node: s.node, what: `snapshot ${snap}`, why: `restored from snapshot ${snap}: only node ${s.node} (which holds its files) can run it` });
    }
    const vols: Array<{ name: string; node: string }> = [];
    for (const v of vm.spec.volumes ?? []) {
      const r = VOLUME_RESOURCE;
      try {
        const o = (await this.custom.getNamespacedCustomObject({ group: r.group, version: r.version, plural: r.plural, namespace, name: v.name })) as { spec?: { node?: string } };
        if (o.spec?.node) vols.push({ name: v.name, node: o.spec.node });
      } catch (e) {
        if (httpStatus(e) !== 404) throw e; // a missing volume fails the node's attach, with that message
      }
    }
    for (const node of new Set(vols.map((v) => v.node))) {
      const names = vols.filter((v) => v.node === node).map((v) => v.name).join(', ');
      pins.push({ node, what: `volume ${names}`, why: `volume ${names} lives on node ${node}: only that node can run it` });
    }
    if (pins.length === 0) return undefined;
    const nodes = new Set(pins.map((p) => p.node));
    if (nodes.size > 1) {
      const on = pins.map((p) => `${p.what} on ${p.node}`).join(', ');
      return refuse(snap === undefined ? `its volumes live on different nodes (${vols.map((v) => `${v.name} on ${v.node}`).join(', ')}); no node can attach them all` : `what it needs lives on different nodes (${on}); no node has it all`);
    }
    const node = pins[0]!.node;
    const why = pins.map((p) => p.why).join('; ');
    if (!this.state.node(node)) return refuse(`${why}, and it has no ready node agent (no heartbeat) or is not in the cluster`);
    const p = this.options.scheduler.schedule(vm, this.state, { only: node });
    return p.node ? p : { ...p, message: `${why}: ${p.message}` };
  }

  /** Clear the binding of a VM stopped (or never run) on its node; Pending again if it should run. */
  private async unbind(obj: MicroVMObject, vm: MicroVM, now: string, why: string): Promise<MicroVMObject> {
    const { node: _n, pid: _p, ip: _i, interfaces: _f, ...rest } = vm.status;
    const conds = setCondition(
      setCondition(vm.status.conditions, { type: ClusterConditions.Evicting, status: 'False', reason: 'Moved', message: why }, now),
      { type: ConditionTypes.Scheduled, status: 'False', reason: 'Evicted', message: why },
      now,
    ).filter((c) => c.type !== ClusterConditions.NodeCleanedUp);
    const out = await this.replaceStatus({
      ...obj,
      status: { ...rest, phase: vm.desiredState === 'Running' ? 'Pending' : 'Stopped', conditions: conds, observedGeneration: vm.generation },
    });
    this.assumed.delete(vm.id);
    await this.event(out, 'Normal', 'Evicted', why);
    return out;
  }

  // ---- defragmentation on request ----------------------------------------------------------

  /**
   * The ConfigMap microvm-defrag (data: vcpu, memory, dryRun) asks for a slot of that size. A new
   * request is planned (planDefrag over the operator's state; only Running VMs not being evicted
   * move) and the plan written back as annotations. Unless dryRun, the moves are then done one at a
   * time through the eviction path: the VM gets the annotation defrag-target and Evicting=True, its
   * node stops it, it is unbound and placed on the target (step 5).
   */
  private async reconcileDefrag(): Promise<void> {
    let cm: V1ConfigMap;
    try {
      cm = await this.core.readNamespacedConfigMap({ name: DEFRAG_CONFIGMAP, namespace: this.systemNs });
    } catch (e) {
      if (httpStatus(e) === 404) return;
      throw e;
    }
    const d = cm.data ?? {};
    const ann = cm.metadata?.annotations ?? {};
    const request = JSON.stringify({ vcpu: d.vcpu ?? '1', memory: d.memory ?? '', dryRun: d.dryRun === 'true' });
    const write = async (upd: Record<string, string>): Promise<void> => {
      try {
        await this.core.replaceNamespacedConfigMap({
          name: DEFRAG_CONFIGMAP,
          namespace: this.systemNs,
          body: { ...cm, metadata: { ...cm.metadata, annotations: { ...ann, ...upd } } },
          fieldManager: 'microvm-operator',
        });
      } catch (e) {
        if (httpStatus(e) === 409 || httpStatus(e) === 404) throw new Requeue('conflict on the defrag ConfigMap');
        throw e;
      }
      if (upd[DefragAnnotations.phase]) this.options.log.info({ defrag: upd[DefragAnnotations.phase], done: upd[DefragAnnotations.done] }, upd[DefragAnnotations.message] ?? 'defrag');
    };

    if (ann[DefragAnnotations.request] !== request) {
      const dryRun = d.dryRun === 'true';
      let slot: { vcpu: number; memoryMiB: number };
      try {
        const vcpu = Number(d.vcpu ?? '1');
        if (!Number.isInteger(vcpu) || vcpu < 1) throw new Error(`vcpu must be a positive integer, got ${JSON.stringify(d.vcpu)}`);
        slot = { vcpu, memoryMiB: parseQuantityMiB(d.memory ?? '', 'memory') };
      } catch (e) {
        await write({ [DefragAnnotations.request]: request, [DefragAnnotations.phase]: 'Failed', [DefragAnnotations.plan]: '', [DefragAnnotations.done]: '0', [DefragAnnotations.message]: `invalid request: ${(e as Error).message}` });
        return;
      }
      this.refreshNodes();
      const plan = planDefrag(this.state, {
        targetSlot: slot,
        scheduler: this.options.scheduler,
        movable: (p) => p.vm.status.phase === 'Running' && !condTrue(p.vm.status.conditions, ClusterConditions.Evicting),
      });
      const nsOf = new Map(this.vms.list().map((o) => [fromObject(o, this.namespaces).id, o.metadata!.namespace!]));
      const moves: PlannedMove[] = plan.moves.map((m) => ({ ...m, namespace: nsOf.get(m.vm) ?? this.namespaces.namespaceOf(m.tenant) }));
      const phase = !plan.node ? 'Failed' : dryRun ? 'Planned' : moves.length ? 'Moving' : 'Succeeded';
      await write({
        [DefragAnnotations.request]: request,
        [DefragAnnotations.phase]: phase,
        [DefragAnnotations.plan]: JSON.stringify({ node: plan.node ?? null, moves }),
        [DefragAnnotations.done]: '0',
        [DefragAnnotations.message]: `${dryRun ? 'dry run: ' : ''}${plan.message}`,
      });
      return; // the ConfigMap's watch event brings us back for the moves
    }
    if (ann[DefragAnnotations.phase] !== 'Moving') return;

    const plan = JSON.parse(ann[DefragAnnotations.plan] ?? '{}') as { node?: string; moves?: PlannedMove[] };
    const moves = plan.moves ?? [];
    const done = Number(ann[DefragAnnotations.done] ?? '0');
    const fail = async (why: string, m?: PlannedMove): Promise<void> => {
      if (m) await this.clearDefragTarget(m);
      await write({ [DefragAnnotations.phase]: 'Failed', [DefragAnnotations.message]: `move ${done + 1}/${moves.length} failed: ${why}` });
    };
    const m = moves[done];
    if (!m) {
      await write({ [DefragAnnotations.phase]: 'Succeeded', [DefragAnnotations.message]: `${moves.length} move(s) done: a slot is free on ${plan.node}` });
      return;
    }
    const obj = await this.get(m.namespace, m.name);
    if (!obj || obj.metadata.deletionTimestamp || fromObject(obj, this.namespaces).id !== m.vm) {
      await fail(`microVM ${m.namespace}/${m.name} is gone`);
      return;
    }
    const vm = fromObject(obj, this.namespaces);
    const evicting = condTrue(vm.status.conditions, ClusterConditions.Evicting);
    const targeted = obj.metadata.annotations?.[ANN_DEFRAG_TARGET] === m.to;
    const started = ann[DefragAnnotations.started] === String(done);
    if (vm.status.node === m.to && !evicting) {
      const next = done + 1;
      await write({
        [DefragAnnotations.done]: String(next),
        [DefragAnnotations.message]: `moved ${m.namespace}/${m.name} from ${m.from} to ${m.to} (${next}/${moves.length})`,
        ...(next === moves.length ? { [DefragAnnotations.phase]: 'Succeeded', [DefragAnnotations.message]: `${moves.length} move(s) done: a slot is free on ${plan.node}` } : {}),
      });
      return;
    }
    if (vm.status.node === m.from && !evicting) {
      // Started, yet back on its node without the target: the target refused it (step 5).
      if (started && !targeted) return fail(`${m.namespace}/${m.name} came back to ${m.from}`);
      if (vm.status.phase !== 'Running') return fail(`${m.namespace}/${m.name} is ${vm.status.phase}, not Running`, m);
      // Start the move: the target (VM metadata), the mark (here), then the eviction (VM status).
      let cur = obj;
      if (!targeted) cur = await this.replace({ ...cur, metadata: { ...cur.metadata, annotations: { ...(cur.metadata.annotations ?? {}), [ANN_DEFRAG_TARGET]: m.to } } });
      if (!started) await write({ [DefragAnnotations.started]: String(done) });
      const now = new Date().toISOString();
      const why = `defragmentation: moving to ${m.to} to free a slot on ${m.from}`;
      cur = await this.replaceStatus({
        ...cur,
        status: { ...cur.status!, conditions: setCondition(vm.status.conditions, { type: ClusterConditions.Evicting, status: 'True', reason: 'Defrag', message: why }, now), observedGeneration: vm.generation },
      });
      await this.event(cur, 'Normal', 'Evicting', `${why}: stopping the microVM there`);
    } else if (vm.status.node && vm.status.node !== m.from && vm.status.node !== m.to && !evicting) {
      return fail(`${m.namespace}/${m.name} was placed on ${vm.status.node}, not ${m.to}`, m);
    } else if (!started && !evicting) {
      return fail(`${m.namespace}/${m.name} is not on ${m.from} any more`, m);
    }
    // In flight (stopping, unbound, placing): look again shortly (its events requeue us too).
    this.queue.addAfter(DEFRAG_KEY, 1000);
  }

  private async clearDefragTarget(m: PlannedMove): Promise<void> {
    const obj = await this.get(m.namespace, m.name);
    if (!obj?.metadata.annotations?.[ANN_DEFRAG_TARGET]) return;
    const { [ANN_DEFRAG_TARGET]: _t, ...rest } = obj.metadata.annotations;
    await this.replace({ ...obj, metadata: { ...obj.metadata, annotations: rest } }).catch(() => undefined);
  }

  /** True when the queue has nothing to do (tests). */
  idle(): boolean {
    return this.queue.idle();
  }
}
