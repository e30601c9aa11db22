/**
 * The operator (cluster mode, docs/adr/0017): places MicroVMs on nodes and owns their lifecycle
 * around the node agents, which run them (src/agent/cluster-agent.ts).
 *
 * Informers (list + watch into a cache) on MicroVMs, Nodes and the node agents' heartbeat Leases
 * feed a rate-limited work queue keyed by namespace/name (src/operator/workqueue.ts); a periodic
 * resync re-queues everything; an informer that fails is restarted. Each key is reconciled from a
 * fresh read, one idempotent step after another:
 *
 *  1. deleted (deletionTimestamp): the finalizer is removed once the node reported NodeCleanedUp,
 *     or the VM was never bound, or its Node no longer exists;
 *  2. adopted: finalizer, id/tenant labels (a `kubectl apply`d object has none);
 *  3. the node label mirrors status.node;
 *  4. drain: on a cordoned Node annotated microvm.service/drain=true the VM gets Evicting=True; once
 *     its agent stopped it, it is unbound and placed again (stop there, start elsewhere);
 *  5. Pending → Scheduled: Scheduler.place over the nodes (Node + heartbeat) and the VMs placed;
 *     the binding (status.node, phase Scheduled, condition Scheduled) is one status write
 *     conditioned on the resourceVersion read, so two operators, or a retry after a crash, can
 *     never bind one VM twice.
 *
 * Every write goes through the status subresource (status) or the resource (metadata) with the
 * read resourceVersion; a 409 re-queues the key with backoff. Each transition is a Kubernetes Event.
 */
import { hostname } from 'node:os';
import { CoordinationV1Api, CoreV1Api, CustomObjectsApi, ListWatch, Watch, type KubeConfig, type KubernetesObject, type V1Lease, type V1Node } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { asMvmError } from '../core/errors.js';
import { ConditionTypes, newId, setCondition, type MicroVM } from '../core/microvm.js';
import { toleratesAll } from '../core/placement.js';
import type { NodeInfo } from '../core/ports/agent.js';
import type { ConditionT } from '../core/schema.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import { ANN_DRAIN, ClusterConditions, FINALIZER, LABEL_NODE, NODE_LEASE_LABEL, SYSTEM_NAMESPACE, nodeInfoOf, nodeLeaseName } from '../k8s/cluster.js';
import { MICROVM_RESOURCE } from '../k8s/crd.js';
import { httpStatus } from '../k8s/errors.js';
import { ANN_CREATED_AT, ANN_EVENT_TIME, ANN_UPDATED_AT, LABEL_ID, LABEL_MANAGED_BY, LABEL_TENANT, MANAGER, TenantNamespaces, fromObject, isLabelValue, type MicroVMObject } from '../k8s/microvm-object.js';
import { RateLimitingQueue, runWorkers } from './workqueue.js';

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
  /** Backoff of failed keys. */
  baseDelayMs?: number;
  maxDelayMs?: number;
}

const condTrue = (conds: ConditionT[] | undefined, type: string): boolean => !!conds?.some((c) => c.type === type && c.status === 'True');
const keyOf = (o: { metadata?: { namespace?: string; name?: string } }): string => `${o.metadata?.namespace}/${o.metadata?.name}`;

/** Thrown to re-queue a key with backoff without logging it as a failure. */
class Requeue extends Error {}

export class Operator {
  private readonly custom: CustomObjectsApi;
  private readonly core: CoreV1Api;
  private readonly tn: TenantNamespaces;
  readonly queue: RateLimitingQueue;
  private readonly vms: ListWatch<VmObj>;
  private readonly nodes: ListWatch<V1Node>;
  private readonly leases: ListWatch<V1Lease>;
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

  constructor(private readonly o: OperatorOptions) {
    const kc = o.kubeConfig;
    this.custom = kc.makeApiClient(CustomObjectsApi);
    this.core = kc.makeApiClient(CoreV1Api);
    const coord = kc.makeApiClient(CoordinationV1Api);
    this.tn = new TenantNamespaces(o.partition);
    this.systemNs = o.systemNamespace ?? SYSTEM_NAMESPACE;
    this.queue = new RateLimitingQueue({ baseDelayMs: o.baseDelayMs ?? 250, maxDelayMs: o.maxDelayMs ?? 30_000 });
    const sel = this.tn.selector().join(',');
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
    for (const verb of ['add', 'update', 'delete'] as const) {
      this.vms.on(verb, (obj) => this.queue.add(keyOf(obj)));
      // A node change (cordon, drain, labels) or heartbeat may unblock VMs: requeue the ones it concerns.
      this.nodes.on(verb, (n) => this.nodeChanged(n.metadata?.name ?? ''));
      this.leases.on(verb, (l) => this.nodeChanged(l.metadata?.labels?.[NODE_LEASE_LABEL] ?? ''));
    }
    for (const [what, inf] of [['microvms', this.vms], ['nodes', this.nodes], ['leases', this.leases]] as const) {
      inf.on('error', (e: unknown) => this.restart(what, inf as ListWatch<KubernetesObject>, e));
    }
  }

  /** Start informers and workers (call when leading). */
  async start(): Promise<void> {
    await Promise.all([this.nodes.start(), this.leases.start()]);
    this.nodesSynced = true;
    await this.vms.start();
    this.workers = runWorkers(this.queue, this.o.workers ?? 4, (k) => this.reconcileKey(k), (k, e, retry) => {
      if (!(e instanceof Requeue)) this.o.log.warn({ key: k, err: asMvmError(e).message, retryInMs: retry }, 'reconcile failed');
    });
    const tick = (): void => {
      if (this.stopped) return;
      for (const o of this.vms.list()) this.queue.add(keyOf(o));
      this.resyncTimer = setTimeout(tick, this.o.resyncMs ?? 30_000);
      this.resyncTimer.unref();
    };
    tick();
    this.o.log.info('operator started');
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.resyncTimer);
    for (const t of this.restartTimers) clearTimeout(t);
    this.queue.shutDown();
    await Promise.allSettled([this.vms.stop(), this.nodes.stop(), this.leases.stop()]);
    await this.workers;
  }

  private restart(what: string, inf: ListWatch<KubernetesObject>, e: unknown): void {
    if (this.stopped) return;
    this.o.log.warn({ informer: what, err: (e as Error)?.message }, 'informer failed; restarting');
    const t = setTimeout(() => {
      this.restartTimers.delete(t);
      if (!this.stopped) void inf.start().catch(() => undefined);
    }, 1000);
    t.unref();
    this.restartTimers.add(t);
  }

  private nodeChanged(node: string): void {
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
    const now = new Date();
    try {
      await this.core.createNamespacedEvent({
        namespace,
        body: {
          metadata: {
            generateName: `${obj.metadata.name!.slice(0, 200)}.`,
            namespace,
            labels: { ...this.tn.systemLabels(this.tn.tenantOf(namespace)), ...(id && isLabelValue(id) ? { [LABEL_ID]: id } : {}) },
            annotations: { [ANN_EVENT_TIME]: now.toISOString() },
          },
          involvedObject: { apiVersion: `${group}/${version}`, kind: 'MicroVM', name: obj.metadata.name!, namespace, uid: obj.metadata.uid!, resourceVersion: obj.metadata.resourceVersion! },
          type,
          reason,
          message,
          firstTimestamp: now,
          lastTimestamp: now,
          count: 1,
          source: { component: 'microvm-operator', host: hostname() },
        },
      });
    } catch (e) {
      this.o.log.warn({ key: keyOf(obj), reason, err: (e as Error).message }, 'could not record event');
    }
    this.o.log.info({ key: keyOf(obj), reason, type }, message);
  }

  /** The scheduler's view: ready = fresh heartbeat; capacity from the agent's report. */
  nodeInfos(): NodeInfo[] {
    const now = Date.now();
    return this.nodes.list().map((n) => nodeInfoOf(n, this.leases.get(nodeLeaseName(n.metadata!.name!), this.systemNs), now));
  }

  private placedVms(): MicroVM[] {
    const now = Date.now();
    const out: MicroVM[] = [];
    for (const o of this.vms.list()) {
      const vm = fromObject(o, this.tn);
      const a = this.assumed.get(vm.id);
      if (a && a.until > now && !vm.status.node) {
        vm.status = { ...vm.status, node: a.node, phase: 'Scheduled' };
      } else if (a) this.assumed.delete(vm.id);
      if (vm.status.node) out.push(vm);
    }
    return out;
  }

  async reconcileKey(key: string): Promise<void> {
    this.reconciles++;
    const [namespace, name] = key.split('/') as [string, string];
    let obj = await this.get(namespace, name);
    if (!obj) return;
    const st = obj.status;
    const node = st?.node;

    // 1. Deletion: the finalizer goes only when the node side is clean.
    if (obj.metadata.deletionTimestamp) {
      if (!obj.metadata.finalizers?.includes(FINALIZER)) return;
      const cleaned = condTrue(st?.conditions, ClusterConditions.NodeCleanedUp);
      const nodeGone = !!node && !this.nodes.get(node);
      if (!node || cleaned || nodeGone) {
        await this.replace({ ...obj, metadata: { ...obj.metadata, finalizers: obj.metadata.finalizers.filter((f) => f !== FINALIZER) } });
        await this.event(obj, 'Normal', 'Deleted', !node ? 'never placed: finalizer removed' : cleaned ? `node ${node} removed the microVM: finalizer removed` : `node ${node} no longer exists: finalizer removed`);
      }
      // Otherwise the agent's status write (NodeCleanedUp) re-queues us.
      return;
    }

    // 2. Adopt: finalizer, id and tenant labels.
    const labels = { ...(obj.metadata.labels ?? {}) };
    const annotations = { ...(obj.metadata.annotations ?? {}) };
    let adopt = false;
    if (!labels[LABEL_ID]) {
      labels[LABEL_ID] = newId('vm');
      adopt = true;
    }
    if (!labels[LABEL_TENANT]) {
      labels[LABEL_TENANT] = this.tn.tenantOf(namespace);
      adopt = true;
    }
    if (!labels[LABEL_MANAGED_BY]) labels[LABEL_MANAGED_BY] = MANAGER;
    const created = obj.metadata.creationTimestamp ? new Date(obj.metadata.creationTimestamp).toISOString() : new Date().toISOString();
    if (!annotations[ANN_CREATED_AT]) {
      annotations[ANN_CREATED_AT] = created;
      annotations[ANN_UPDATED_AT] = created;
    }
    // 3. The node label mirrors the binding.
    if (node && labels[LABEL_NODE] !== node) {
      labels[LABEL_NODE] = node;
      adopt = true;
    } else if (!node && labels[LABEL_NODE] !== undefined) {
      delete labels[LABEL_NODE];
      adopt = true;
    }
    const finalizers = obj.metadata.finalizers ?? [];
    if (!finalizers.includes(FINALIZER)) adopt = true;
    if (adopt) {
      const first = !finalizers.includes(FINALIZER);
      obj = await this.replace({ ...obj, metadata: { ...obj.metadata, labels, annotations, finalizers: first ? [...finalizers, FINALIZER] : finalizers } });
      if (first) await this.event(obj, 'Normal', 'Accepted', `microVM ${labels[LABEL_ID]} accepted (finalizer ${FINALIZER})`);
    }

    const vm = fromObject(obj, this.tn);
    const now = new Date().toISOString();

    // The API in cluster mode marks a delete as phase Deleting: turn it into a Kubernetes delete.
    if (vm.status.phase === 'Deleting') {
      try {
        await this.custom.deleteNamespacedCustomObject({ group, version, plural, namespace, name });
      } catch (e) {
        if (httpStatus(e) !== 404) throw e;
      }
      return;
    }

    // kubectl's "start": desiredState set back to Running on a Stopped VM (a spec change the node
    // has not observed yet; a guest that powered off or a stop set desiredState Stopped).
    if (vm.status.phase === 'Stopped' && vm.desiredState === 'Running' && (vm.status.observedGeneration ?? 0) < vm.generation) {
      const { reason: _r, message: _m, ...rest } = vm.status;
      obj = await this.replaceStatus({ ...obj, status: { ...rest, phase: vm.status.node ? 'Scheduled' : 'Pending', observedGeneration: vm.generation } });
      await this.event(obj, 'Normal', 'Restarting', 'desiredState is Running again: starting the microVM');
      if (vm.status.node) return; // its node starts it
    }

    // 4. Drain.
    if (vm.status.node) {
      const n = this.nodes.get(vm.status.node);
      // A drain (cordon + annotation), or a NoExecute taint the VM does not tolerate (as for pods).
      const noExecute = (n?.spec?.taints ?? []).find((t) => t.effect === 'NoExecute' && !toleratesAll(vm.spec.tolerations, { key: t.key, ...(t.value !== undefined ? { value: t.value } : {}), effect: 'NoExecute' }));
      const draining = (n?.spec?.unschedulable === true && n.metadata?.annotations?.[ANN_DRAIN] === 'true') || !!noExecute;
      const why = noExecute ? `node ${vm.status.node} has the taint ${noExecute.key}${noExecute.value ? `=${noExecute.value}` : ''}:NoExecute` : `node ${vm.status.node} is being drained`;
      const evicting = condTrue(vm.status.conditions, ClusterConditions.Evicting);
      if (!n && this.nodesSynced) {
        // The Node was removed from the cluster (as the pod GC does): place the VM anew. If that
        // machine still runs its agent, the agent sees the VM unbound and removes it there.
        obj = await this.unbind(obj, vm, now, `node ${vm.status.node} no longer exists`);
      } else if (draining && !evicting) {
        if (['Stopped', 'Failed', 'Pending'].includes(vm.status.phase) && !vm.status.pid) {
          // Nothing runs there: unbind at once (the node removes its files).
          obj = await this.unbind(obj, vm, now, `${why}: unbound`);
        } else {
          obj = await this.replaceStatus({
            ...obj,
            status: { ...obj.status!, conditions: setCondition(vm.status.conditions, { type: ClusterConditions.Evicting, status: 'True', reason: noExecute ? 'NoExecuteTaint' : 'NodeDrain', message: why }, now), observedGeneration: vm.generation },
          });
          await this.event(obj, 'Normal', 'Evicting', `${why}: stopping the microVM there`);
          return; // the agent stops it; its status write re-queues us
        }
      } else if (evicting) {
        if (!['Stopped', 'Failed'].includes(vm.status.phase)) return; // still stopping on the old node
        obj = await this.unbind(obj, vm, now, `moved off ${vm.status.node}`);
      } else return;
    }

    // 5. Place.
    const cur = fromObject(obj, this.tn);
    // Pending, or Scheduled without a node (a start of a VM that a drain left unbound).
    if (cur.status.node || (cur.status.phase !== 'Pending' && cur.status.phase !== 'Scheduled')) return;
    if (cur.desiredState === 'Stopped') {
      await this.replaceStatus({ ...obj, status: { ...obj.status!, phase: 'Stopped', stoppedAt: now, observedGeneration: cur.generation } });
      return;
    }
    const placement = this.o.scheduler.place(cur, this.nodeInfos(), this.placedVms());
    if (!placement.node) {
      const msg = Object.entries(placement.reasons).map(([n, r]) => `${n}: ${r}`).join('; ') || 'no nodes';
      const conds = setCondition(cur.status.conditions, { type: ConditionTypes.Scheduled, status: 'False', reason: 'Unschedulable', message: msg }, now);
      if (conds !== cur.status.conditions) {
        obj = await this.replaceStatus({ ...obj, status: { ...cur.status, conditions: conds, observedGeneration: cur.generation } });
        await this.event(obj, 'Warning', 'Unschedulable', msg);
      }
      this.queue.addAfter(key, 10_000); // nodes may come back or free up
      return;
    }
    // The binding: one status write conditioned on the resourceVersion just read.
    this.assumed.set(cur.id, { node: placement.node, until: Date.now() + 30_000 });
    try {
      obj = await this.replaceStatus({
        ...obj,
        status: {
          ...cur.status,
          phase: 'Scheduled',
          node: placement.node,
          conditions: setCondition(cur.status.conditions, { type: ConditionTypes.Scheduled, status: 'True', reason: 'Placed', message: `placed on ${placement.node}` }, now),
          observedGeneration: cur.generation,
        },
      });
    } catch (e) {
      this.assumed.delete(cur.id);
      throw e;
    }
    await this.event(obj, 'Normal', 'Scheduled', `placed on node ${placement.node}`);
    // The node label follows (step 3) on the requeue that this write's watch event brings.
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

  /** True when the queue has nothing to do (tests). */
  idle(): boolean {
    return this.queue.idle();
  }
}
