/**
 * The MicroVMPool controller (ADR 0033), run by the operator beside its MicroVM reconcile (same
 * leader, its own informers and work queue). Per pool key (namespace/name), from a fresh read of
 * the pool and a fresh (consistent) list of its members:
 *
 *   finalize   the pool is being deleted: delete its members, then remove the finalizer (Kubernetes'
 *              garbage collector would follow the members' ownerReferences, but a bare control
 *              plane has no kube-controller-manager, so the controller does it itself)
 *   adopt      the finalizer
 *   autoscale  spec.autoscaling: the metric's total → a replica count (pool-plan.ts
 *              recommendReplicas), written through the scale subresource as an HPA would
 *   plan       planPool: create, resume, suspend, delete members (pool-plan.ts), one Event each
 *   status     replicas, readyReplicas, updatedReplicas, suspendedReplicas, selector, conditions,
 *              written through the status subresource conditioned on the resourceVersion read
 *
 * Members are ordinary MicroVMs: the operator admits (quota), places (the scheduler, with the
 * pool's anti-affinity spreading them) and the node agents run them. A suspended member is one
 * with spec.desiredState Paused: its agent pauses the vCPUs and the VMM keeps its memory.
 */
import { randomBytes } from 'node:crypto';
import { CoreV1Api, CustomObjectsApi, ListWatch, Watch, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { asMvmError } from '../core/errors.js';
import { newId, setCondition } from '../core/microvm.js';
import type { ConditionT, MicroVMPoolStatusT } from '../core/schema.js';
import { API_VERSION, MICROVM_RESOURCE, POOL_RESOURCE } from '../k8s/crd.js';
import { httpStatus } from '../k8s/errors.js';
import { ANN_CREATED_AT, ANN_UPDATED_AT, LABEL_ID, TenantNamespaces, mirrorLabels, type MicroVMObject } from '../k8s/microvm-object.js';
import { operatorEvent } from './events.js';
import {
  ANN_POOL_SUSPENDED_AT,
  LABEL_POOL,
  LABEL_POOL_HASH,
  LABEL_POOL_SUSPENDED,
  MAX_POOL_NAME,
  POOL_FINALIZER,
  memberSpec,
  metricTotal,
  planPool,
  recommendReplicas,
  templateHash,
  type MemberAction,
  type MicroVMPoolObject,
} from './pool-plan.js';
import { RateLimitingQueue, runWorkers } from './workqueue.js';

export const PoolConditions = {
  /** readyReplicas ≥ replicas − maxUnavailable */
  Available: 'Available',
  /** every wanted member exists, runs the current template and is Ready */
  Ready: 'Ready',
  /** a member could not be created (quota, validation): the message says why */
  ReplicaFailure: 'ReplicaFailure',
  /** the autoscaling rule: True while it has a metric to act on */
  ScalingActive: 'ScalingActive',
} as const;

export interface PoolControllerOptions {
  kubeConfig: KubeConfig;
  log: Logger;
  partition?: string;
  resyncMs?: number;
  workers?: number;
  baseDelayMs?: number;
  maxDelayMs?: number;
}

type PoolObj = MicroVMPoolObject & KubernetesObject;
type VmObj = MicroVMObject & KubernetesObject;

const keyOf = (namespace: string | undefined, name: string | undefined): string => `${namespace}/${name}`;

class Requeue extends Error {}

export class PoolController {
  private readonly custom: CustomObjectsApi;
  private readonly core: CoreV1Api;
  private readonly namespaces: TenantNamespaces;
  readonly queue: RateLimitingQueue;
  private readonly pools: ListWatch<PoolObj>;
  private readonly members: ListWatch<VmObj>;
  private workers: Promise<unknown> | undefined;
  private stopped = false;
  private resyncTimer: NodeJS.Timeout | undefined;
  private readonly timers = new Set<NodeJS.Timeout>();
  /** Autoscaling recommendations per pool key (time, replicas): a scale-down takes the window's highest. */
  private readonly recommendations = new Map<string, Array<{ at: number; replicas: number }>>();
  /** The last failure said per pool (a ReplicaFailure event once per distinct failure). */
  private readonly failures = new Map<string, string>();
  reconciles = 0;

  constructor(private readonly options: PoolControllerOptions) {
    const kc = options.kubeConfig;
    this.custom = kc.makeApiClient(CustomObjectsApi);
    this.core = kc.makeApiClient(CoreV1Api);
    this.namespaces = new TenantNamespaces(options.partition);
    this.queue = new RateLimitingQueue({ baseDelayMs: options.baseDelayMs ?? 250, maxDelayMs: options.maxDelayMs ?? 30_000 });
    const part = this.namespaces.selector();
    const poolSel = part.join(',');
    const p = POOL_RESOURCE;
    this.pools = new ListWatch<PoolObj>(
      `/apis/${p.group}/${p.version}/${p.plural}`,
      new Watch(kc),
      async () => (await this.custom.listClusterCustomObject({ group: p.group, version: p.version, plural: p.plural, ...(poolSel ? { labelSelector: poolSel } : {}) })) as never,
      false,
      poolSel || undefined,
    );
    const memberSel = [LABEL_POOL, ...part].join(',');
    const m = MICROVM_RESOURCE;
    this.members = new ListWatch<VmObj>(
      `/apis/${m.group}/${m.version}/${m.plural}`,
      new Watch(kc),
      async () => (await this.custom.listClusterCustomObject({ group: m.group, version: m.version, plural: m.plural, labelSelector: memberSel })) as never,
      false,
      memberSel,
    );
    for (const verb of ['add', 'update', 'delete'] as const) {
      this.pools.on(verb, (o) => this.queue.add(keyOf(o.metadata?.namespace, o.metadata?.name)));
      this.members.on(verb, (o) => {
        const pool = o.metadata?.labels?.[LABEL_POOL];
        if (pool) this.queue.add(keyOf(o.metadata?.namespace, pool));
      });
    }
    for (const [what, inf] of [['microvmpools', this.pools], ['pool members', this.members]] as const) {
      inf.on('error', (e: unknown) => this.restart(what, inf as ListWatch<KubernetesObject>, e));
    }
  }

  async start(): Promise<void> {
    await this.startInformer('microvmpools', this.pools as ListWatch<KubernetesObject>);
    await this.startInformer('pool members', this.members as ListWatch<KubernetesObject>);
    this.workers = runWorkers(this.queue, this.options.workers ?? 2, (k) => this.reconcileKey(k), (k, e, retry) => {
      if (!(e instanceof Requeue)) this.options.log.warn({ pool: k, err: asMvmError(e).message, retryInMs: retry }, 'pool reconcile failed');
    });
    const tick = (): void => {
      if (this.stopped) return;
      for (const o of this.pools.list()) this.queue.add(keyOf(o.metadata?.namespace, o.metadata?.name));
      this.resyncTimer = setTimeout(tick, this.options.resyncMs ?? 30_000);
      this.resyncTimer.unref();
    };
    tick();
    this.options.log.info('pool controller started');
  }

  /** An informer whose first list fails (the MicroVMPool CRD not installed yet) is retried, not fatal. */
  private async startInformer(what: string, inf: ListWatch<KubernetesObject>): Promise<void> {
    try {
      await inf.start();
    } catch (e) {
      this.options.log.warn({ informer: what, err: (e as Error)?.message }, 'pool controller: informer did not start (is the MicroVMPool CRD installed? kubectl apply -f deploy/crds); retrying in 10 s');
      this.later(() => void this.startInformer(what, inf), 10_000);
    }
  }

  private later(fn: () => void, ms: number): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.stopped) fn();
    }, ms);
    t.unref();
    this.timers.add(t);
  }

  private restart(what: string, inf: ListWatch<KubernetesObject>, e: unknown): void {
    if (this.stopped) return;
    this.options.log.warn({ informer: what, err: (e as Error)?.message }, 'informer failed; restarting');
    this.later(() => void inf.start().catch(() => undefined), 1000);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.resyncTimer);
    for (const t of this.timers) clearTimeout(t);
    this.queue.shutDown();
    await Promise.allSettled([this.pools.stop(), this.members.stop()]);
    await this.workers;
  }

  // ---- API ----------------------------------------------------------------------------------

  private async getPool(namespace: string, name: string): Promise<MicroVMPoolObject | undefined> {
    const p = POOL_RESOURCE;
    try {
      return (await this.custom.getNamespacedCustomObject({ group: p.group, version: p.version, plural: p.plural, namespace, name })) as MicroVMPoolObject;
    } catch (e) {
      if (httpStatus(e) === 404) return undefined;
      throw e;
    }
  }

  /** A consistent read of the pool's members (its owner reference, so a recreated pool of the same name starts afresh). */
  private async listMembers(pool: MicroVMPoolObject): Promise<MicroVMObject[]> {
    const m = MICROVM_RESOURCE;
    const sel = [`${LABEL_POOL}=${pool.metadata.name}`, ...this.namespaces.selector()].join(',');
    const list = (await this.custom.listNamespacedCustomObject({ group: m.group, version: m.version, plural: m.plural, namespace: pool.metadata.namespace!, labelSelector: sel })) as { items: MicroVMObject[] };
    return list.items.filter((o) => {
      const owners = (o.metadata as { ownerReferences?: Array<{ uid?: string; kind?: string }> }).ownerReferences ?? [];
      return owners.some((r) => r.kind === 'MicroVMPool' && r.uid === pool.metadata.uid);
    });
  }

  private conflict(e: unknown, what: string): never {
    if (httpStatus(e) === 409 || httpStatus(e) === 404) throw new Requeue(`conflict on ${what}`);
    throw e;
  }

  private async replacePool(pool: MicroVMPoolObject): Promise<MicroVMPoolObject> {
    const p = POOL_RESOURCE;
    try {
      return (await this.custom.replaceNamespacedCustomObject({ group: p.group, version: p.version, plural: p.plural, namespace: pool.metadata.namespace!, name: pool.metadata.name!, body: pool, fieldManager: 'microvm-operator' })) as MicroVMPoolObject;
    } catch (e) {
      return this.conflict(e, `pool ${pool.metadata.name}`);
    }
  }

  private async replaceMember(obj: MicroVMObject): Promise<void> {
    const m = MICROVM_RESOURCE;
    try {
      await this.custom.replaceNamespacedCustomObject({ group: m.group, version: m.version, plural: m.plural, namespace: obj.metadata.namespace!, name: obj.metadata.name!, body: obj, fieldManager: 'microvm-operator' });
    } catch (e) {
      this.conflict(e, `member ${obj.metadata.name}`);
    }
  }

  private async deleteMember(namespace: string, name: string): Promise<void> {
    const m = MICROVM_RESOURCE;
    try {
      await this.custom.deleteNamespacedCustomObject({ group: m.group, version: m.version, plural: m.plural, namespace, name });
    } catch (e) {
      if (httpStatus(e) !== 404) throw e;
    }
  }

  private async event(pool: MicroVMPoolObject, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void> {
    const namespace = pool.metadata.namespace!;
    try {
      const labels = this.namespaces.systemLabels(this.namespaces.tenantOf(namespace));
      await this.core.createNamespacedEvent({ namespace, body: operatorEvent(pool, { apiVersion: API_VERSION, kind: 'MicroVMPool' }, labels, type, reason, message) });
    } catch (e) {
      this.options.log.warn({ pool: keyOf(namespace, pool.metadata.name), reason, err: (e as Error).message }, 'could not record event');
    }
    this.options.log.info({ pool: keyOf(namespace, pool.metadata.name), reason, type }, message);
  }

  // ---- reconcile ----------------------------------------------------------------------------

  async reconcileKey(key: string): Promise<void> {
    this.reconciles++;
    const [namespace, name] = key.split('/') as [string, string];
    let pool = await this.getPool(namespace, name);
    if (!pool) {
      this.recommendations.delete(key);
      this.failures.delete(key);
      return;
    }
    if (pool.metadata.deletionTimestamp) return this.finalize(pool);
    if (!pool.metadata.finalizers?.includes(POOL_FINALIZER)) {
      pool = await this.replacePool({ ...pool, metadata: { ...pool.metadata, finalizers: [...(pool.metadata.finalizers ?? []), POOL_FINALIZER] } });
    }
    const now = new Date().toISOString();
    let conds: ConditionT[] = pool.status?.conditions ?? [];
    if (name.length > MAX_POOL_NAME) {
      conds = setCondition(conds, { type: PoolConditions.ReplicaFailure, status: 'True', reason: 'InvalidName', message: `the pool name must be at most ${MAX_POOL_NAME} characters (members are named <pool>-<5 characters>)` }, now);
      await this.writeStatus(pool, { ...this.emptyStatus(pool), conditions: conds });
      return;
    }
    let members = await this.listMembers(pool);
    const spec = memberSpec(name, pool.spec);
    const hash = templateHash(spec);
    let autoscaling: MicroVMPoolStatusT['autoscaling'];
    if (pool.spec.autoscaling) {
      const r = await this.autoscale(pool, members, key, now, conds);
      pool = r.pool;
      conds = r.conds;
      autoscaling = r.autoscaling;
    } else conds = conds.filter((c) => c.type !== PoolConditions.ScalingActive);

    const plan = planPool(pool, members, hash);
    let failure: string | undefined;
    for (const a of plan.actions) {
      try {
        await this.act(pool, members, a, spec, hash);
      } catch (e) {
        if (e instanceof Requeue) throw e;
        failure = `${a.kind}${'name' in a ? ` ${a.name}` : ''}: ${asMvmError(e).message}`;
        break;
      }
    }
    if (failure) {
      if (this.failures.get(key) !== failure) await this.event(pool, 'Warning', 'ReplicaFailure', failure);
      this.failures.set(key, failure);
      conds = setCondition(conds, { type: PoolConditions.ReplicaFailure, status: 'True', reason: 'ActionFailed', message: failure }, now);
    } else {
      this.failures.delete(key);
      conds = conds.filter((c) => c.type !== PoolConditions.ReplicaFailure);
    }
    if (plan.actions.length) members = await this.listMembers(pool);
    // Status from what is there after the actions (a create shows at once, its readiness later).
    const after = planPool(pool, members, hash);
    const replicas = pool.spec.replicas ?? 1;
    const st = after.status;
    conds = setCondition(
      conds,
      st.readyReplicas >= after.minAvailable
        ? { type: PoolConditions.Available, status: 'True', reason: 'MinimumReplicasAvailable', message: `${st.readyReplicas} of ${replicas} ready (at least ${after.minAvailable})` }
        : { type: PoolConditions.Available, status: 'False', reason: 'MinimumReplicasUnavailable', message: `${st.readyReplicas} of ${replicas} ready, fewer than ${after.minAvailable}` },
      now,
    );
    const done = st.replicas === replicas && st.readyReplicas === replicas && st.updatedReplicas === replicas;
    conds = setCondition(
      conds,
      done
        ? { type: PoolConditions.Ready, status: 'True', reason: 'AllReplicasReady', message: `${replicas} of ${replicas} ready on the current template` }
        : {
            type: PoolConditions.Ready,
            status: 'False',
            reason: after.rolling ? 'RollingUpdate' : st.replicas < replicas ? 'ScalingUp' : st.replicas > replicas ? 'ScalingDown' : 'WaitingForReady',
            message: `${st.readyReplicas} ready, ${st.updatedReplicas} updated, ${st.replicas} current of ${replicas} wanted`,
          },
      now,
    );
    await this.writeStatus(pool, { ...st, selector: this.selector(name), templateHash: hash, observedGeneration: pool.metadata.generation, conditions: conds, ...(autoscaling ? { autoscaling } : {}) });
  }

  private selector(name: string): string {
    return [`${LABEL_POOL}=${name}`, ...this.namespaces.selector()].join(',');
  }

  private emptyStatus(pool: MicroVMPoolObject): MicroVMPoolStatusT {
    return { replicas: 0, readyReplicas: 0, updatedReplicas: 0, suspendedReplicas: 0, selector: this.selector(pool.metadata.name!), templateHash: '', conditions: [], observedGeneration: pool.metadata.generation };
  }

  private async writeStatus(pool: MicroVMPoolObject, status: MicroVMPoolStatusT): Promise<void> {
    const same = JSON.stringify(pool.status ?? {}) === JSON.stringify(status);
    if (same) return;
    const p = POOL_RESOURCE;
    try {
      await this.custom.replaceNamespacedCustomObjectStatus({ group: p.group, version: p.version, plural: p.plural, namespace: pool.metadata.namespace!, name: pool.metadata.name!, body: { ...pool, status }, fieldManager: 'microvm-operator' });
    } catch (e) {
      this.conflict(e, `pool ${pool.metadata.name} status`);
    }
  }

  private async finalize(pool: MicroVMPoolObject): Promise<void> {
    if (!pool.metadata.finalizers?.includes(POOL_FINALIZER)) return;
    const members = await this.listMembers(pool);
    const live = members.filter((m) => !m.metadata.deletionTimestamp);
    for (const m of live) await this.deleteMember(m.metadata.namespace!, m.metadata.name!);
    if (live.length) await this.event(pool, 'Normal', 'DeletingMembers', `pool deleted: deleting its ${live.length} member(s) ${live.map((m) => m.metadata.name).join(', ')}`);
    if (members.length) return; // their deletions (finalizer: node cleanup) come back through the member informer
    await this.replacePool({ ...pool, metadata: { ...pool.metadata, finalizers: pool.metadata.finalizers.filter((f) => f !== POOL_FINALIZER) } });
    this.options.log.info({ pool: keyOf(pool.metadata.namespace, pool.metadata.name) }, 'pool deleted: members gone, finalizer removed');
  }

  private async act(pool: MicroVMPoolObject, members: MicroVMObject[], a: MemberAction, spec: ReturnType<typeof memberSpec>, hash: string): Promise<void> {
    const namespace = pool.metadata.namespace!;
    const find = (name: string): MicroVMObject => members.find((m) => m.metadata.name === name)!;
    switch (a.kind) {
      case 'create': {
        const names: string[] = [];
        for (let i = 0; i < a.count; i++) names.push(await this.createMember(pool, spec, hash));
        await this.event(pool, 'Normal', 'Created', `created ${names.length} member(s): ${names.join(', ')}`);
        return;
      }
      case 'delete':
        await this.deleteMember(namespace, a.name);
        await this.event(pool, 'Normal', 'Deleted', `deleted member ${a.name}: ${a.why}`);
        return;
      case 'suspend': {
        const m = find(a.name);
        await this.replaceMember({
          ...m,
          metadata: {
            ...m.metadata,
            labels: { ...(m.metadata.labels ?? {}), [LABEL_POOL_SUSPENDED]: 'true' },
            annotations: { ...(m.metadata.annotations ?? {}), [ANN_POOL_SUSPENDED_AT]: new Date().toISOString() },
          },
          spec: { ...m.spec, desiredState: 'Paused' },
        });
        await this.event(pool, 'Normal', 'Suspended', `suspended member ${a.name} on ${m.status?.node ?? 'its node'} (scale down to ${pool.spec.replicas ?? 1}; its VMM keeps its memory)`);
        return;
      }
      case 'resume': {
        const m = find(a.name);
        const { [LABEL_POOL_SUSPENDED]: _l, ...labels } = m.metadata.labels ?? {};
        const { [ANN_POOL_SUSPENDED_AT]: _a, ...annotations } = m.metadata.annotations ?? {};
        await this.replaceMember({ ...m, metadata: { ...m.metadata, labels, annotations }, spec: { ...m.spec, desiredState: 'Running' } });
        await this.event(pool, 'Normal', 'Resumed', `resumed suspended member ${a.name} on ${m.status?.node ?? 'its node'} (scale up to ${pool.spec.replicas ?? 1})`);
        return;
      }
    }
  }

  private async createMember(pool: MicroVMPoolObject, spec: ReturnType<typeof memberSpec>, hash: string): Promise<string> {
    const namespace = pool.metadata.namespace!;
    const tenant = this.namespaces.tenantOf(namespace);
    const now = new Date().toISOString();
    const m = MICROVM_RESOURCE;
    for (let attempt = 0; ; attempt++) {
      const name = `${pool.metadata.name}-${suffix()}`;
      const body: MicroVMObject & { metadata: { ownerReferences: unknown[] } } = {
        apiVersion: API_VERSION,
        kind: 'MicroVM',
        metadata: {
          name,
          namespace,
          labels: { ...mirrorLabels(spec.labels), ...this.namespaces.systemLabels(tenant), [LABEL_ID]: newId('vm'), [LABEL_POOL]: pool.metadata.name!, [LABEL_POOL_HASH]: hash },
          annotations: { [ANN_CREATED_AT]: now, [ANN_UPDATED_AT]: now },
          ownerReferences: [{ apiVersion: API_VERSION, kind: 'MicroVMPool', name: pool.metadata.name!, uid: pool.metadata.uid!, controller: true, blockOwnerDeletion: true }],
        },
        spec: { ...spec, desiredState: 'Running' },
      };
      try {
        await this.custom.createNamespacedCustomObject({ group: m.group, version: m.version, plural: m.plural, namespace, body, fieldManager: 'microvm-operator' });
        return name;
      } catch (e) {
        if (httpStatus(e) === 409 && attempt < 3) continue; // the random name was taken
        throw e;
      }
    }
  }

  /**
   * The autoscaling rule: the metric's total → the recommended replicas; a scale-down takes the
   * highest recommendation of the stabilization window (as the HPA's behavior.scaleDown). A change
   * is written through the scale subresource (what `kubectl scale` and an HPA write).
   */
  private async autoscale(
    pool: MicroVMPoolObject,
    members: MicroVMObject[],
    key: string,
    now: string,
    conds: ConditionT[],
  ): Promise<{ pool: MicroVMPoolObject; conds: ConditionT[]; autoscaling: MicroVMPoolStatusT['autoscaling'] }> {
    const a = pool.spec.autoscaling!;
    const current = pool.spec.replicas ?? 1;
    const total = metricTotal(pool, members, a.metric.name);
    const rec = recommendReplicas(a, current, total);
    const t = Date.now();
    const windowMs = (a.scaleDownStabilizationSeconds ?? 60) * 1000;
    const hist = (this.recommendations.get(key) ?? []).filter((r) => r.at > t - windowMs);
    hist.push({ at: t, replicas: rec });
    this.recommendations.set(key, hist);
    // A scale-down goes no lower than any recommendation of the window (none below current: no change).
    const desired = rec < current ? Math.min(current, Math.max(...hist.map((r) => r.replicas))) : rec;
    conds = setCondition(
      conds,
      total === undefined
        ? { type: PoolConditions.ScalingActive, status: 'False', reason: 'NoMetric', message: `no value of metric ${a.metric.name} yet (annotation metrics.microvm.service/${a.metric.name} on the pool or its members)` }
        : { type: PoolConditions.ScalingActive, status: 'True', reason: 'ValidMetricFound', message: `metric ${a.metric.name} = ${total}, target ${a.metric.target} per member → ${rec} replica(s) (${a.minReplicas}-${a.maxReplicas})` },
      now,
    );
    let autoscaling: MicroVMPoolStatusT['autoscaling'] = { ...(pool.status?.autoscaling ?? {}), ...(total !== undefined ? { currentValue: total } : {}), desiredReplicas: desired };
    if (desired === current) return { pool, conds, autoscaling };
    const p = POOL_RESOURCE;
    try {
      const scale = (await this.custom.getNamespacedCustomObjectScale({ group: p.group, version: p.version, plural: p.plural, namespace: pool.metadata.namespace!, name: pool.metadata.name! })) as {
        metadata: Record<string, unknown>;
        spec: { replicas?: number };
      };
      await this.custom.replaceNamespacedCustomObjectScale({
        group: p.group,
        version: p.version,
        plural: p.plural,
        namespace: pool.metadata.namespace!,
        name: pool.metadata.name!,
        body: { ...scale, spec: { ...scale.spec, replicas: desired } },
        fieldManager: 'microvm-operator',
      });
    } catch (e) {
      this.conflict(e, `pool ${pool.metadata.name} scale`);
    }
    autoscaling = { ...autoscaling, lastScaleTime: now };
    await this.event(pool, 'Normal', 'Autoscaled', `replicas ${current} → ${desired}: metric ${a.metric.name} = ${total ?? 'none'}, target ${a.metric.target} per member`);
    const fresh = await this.getPool(pool.metadata.namespace!, pool.metadata.name!);
    if (!fresh) throw new Requeue('pool gone');
    return { pool: fresh, conds, autoscaling };
  }
}

/** Five characters of a member name (as a ReplicaSet's pods: no vowels, so no words). */
function suffix(): string {
  const alphabet = 'bcdfghjklmnpqrstvwxz2456789';
  return [...randomBytes(5)].map((b) => alphabet[b % alphabet.length]).join('');
}
