/**
 * What a MicroVMPool's members should become (ADR 0033), as a pure function of the pool and its
 * members as read: the pool controller (pool-controller.ts) measures, calls `planPool`, and
 * carries out the actions. Kept pure so the policy (who is deleted, suspended, resumed; how many a
 * rolling update may take down) is tested without a cluster.
 *
 * - members are the pool's MicroVMs (label microvm.service/pool, owner reference to the pool);
 *   one being deleted counts for nothing; a suspended one (label microvm.service/pool-suspended)
 *   is not a replica, its VMM is paused with its memory;
 * - too few active members: resume suspended members of the current template first (fast: their
 *   guests are booted), then create new ones;
 * - too many: the surplus goes, least useful first (outdated template, not ready, on the most
 *   crowded node, newest); with scaleDown: suspend, a Running member of the current template is
 *   suspended instead of deleted;
 * - a template change (the member spec's hash differs): outdated members are replaced, at most
 *   maxUnavailable below `replicas` Ready at any time (maxSurge 0: a replacement is created once
 *   an old member is gone); suspended members of an old template are deleted.
 */
import { createHash } from 'node:crypto';
import { ConditionTypes } from '../core/microvm.js';
import type { ConditionT, MicroVMPoolSpecT, MicroVMPoolStatusT, MicroVMSpecT } from '../core/schema.js';
import { HOSTNAME_TOPOLOGY_KEY } from '../core/placement.js';
import { ClusterConditions } from '../k8s/cluster.js';
import type { MicroVMObject, ObjectMeta } from '../k8s/microvm-object.js';

/** The pool a member belongs to (Kubernetes label, and a spec label its anti-affinity selects). */
export const LABEL_POOL = 'microvm.service/pool';
/** Hash of the member spec it was made from. */
export const LABEL_POOL_HASH = 'microvm.service/pool-template-hash';
/** "true" on a member suspended by a scale-down. */
export const LABEL_POOL_SUSPENDED = 'microvm.service/pool-suspended';
/** When it was suspended. */
export const ANN_POOL_SUSPENDED_AT = 'microvm.service/pool-suspended-at';
/** On a pool (a total) or a member (its share): the value of the autoscaling metric `<name>`. */
export const METRIC_ANNOTATION_PREFIX = 'metrics.microvm.service/';
/** Held by a pool until its members are gone (no kube-controller-manager garbage collector is assumed). */
export const POOL_FINALIZER = 'microvm.service/pool-finalizer';
/** Longest pool name: members are named <pool>-<5 chars> (a DNS label, at most 63). */
export const MAX_POOL_NAME = 57;

export interface MicroVMPoolObject {
  apiVersion: string;
  kind: 'MicroVMPool';
  metadata: ObjectMeta & { ownerReferences?: unknown[] };
  spec: MicroVMPoolSpecT;
  status?: MicroVMPoolStatusT;
}

export type MemberAction =
  | { kind: 'create'; count: number }
  | { kind: 'resume'; name: string }
  | { kind: 'suspend'; name: string }
  | { kind: 'delete'; name: string; why: string };

export interface PoolPlan {
  actions: MemberAction[];
  /** Counts as measured (before the actions). */
  status: Pick<MicroVMPoolStatusT, 'replicas' | 'readyReplicas' | 'updatedReplicas' | 'suspendedReplicas'>;
  /** Members that must be Ready at all times during a rolling update. */
  minAvailable: number;
  rolling: boolean;
}

/** The spec every member gets: the template's spec, its labels and the pool's anti-affinity. */
export function memberSpec(poolName: string, spec: MicroVMPoolSpecT): MicroVMSpecT {
  const t = spec.template;
  const s = structuredClone(t.spec);
  s.labels = { ...(s.labels ?? {}), ...(t.labels ?? {}), [LABEL_POOL]: poolName };
  const spread = spec.spread ?? {};
  const term = { labelSelector: { matchLabels: { [LABEL_POOL]: poolName } }, ...(spread.topologyKey && spread.topologyKey !== HOSTNAME_TOPOLOGY_KEY ? { topologyKey: spread.topologyKey } : {}) };
  const anti = { ...(s.affinity?.vmAntiAffinity ?? {}) };
  if (spread.mode === 'required') anti.required = [...(anti.required ?? []), term].slice(0, 16);
  else anti.preferred = [...(anti.preferred ?? []), { weight: spread.weight ?? 100, vmAffinityTerm: term }].slice(0, 16);
  s.affinity = { ...(s.affinity ?? {}), vmAntiAffinity: anti };
  return s;
}

/** Stable JSON (keys sorted) so the hash does not depend on key order. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .filter((k) => (v as Record<string, unknown>)[k] !== undefined)
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v);
}

/** The template hash: of the member spec, so a change of template or spread rolls the members. */
export const templateHash = (s: MicroVMSpecT): string => createHash('sha256').update(canonical(s)).digest('hex').slice(0, 10);

/** maxUnavailable as a count: a number, or a percentage of replicas rounded down; at least 1. */
export function resolveMaxUnavailable(v: number | string | undefined, replicas: number): number {
  if (v === undefined) return 1;
  if (typeof v === 'number') return Math.max(1, Math.floor(v));
  const pct = Number(v.replace(/%$/, ''));
  return Math.max(1, Math.floor((replicas * pct) / 100));
}

const condTrue = (conds: ConditionT[] | undefined, type: string): boolean => !!conds?.some((c) => c.type === type && c.status === 'True');

export const isTerminating = (m: MicroVMObject): boolean => !!m.metadata.deletionTimestamp || m.status?.phase === 'Deleting';
export const isSuspended = (m: MicroVMObject): boolean => m.metadata.labels?.[LABEL_POOL_SUSPENDED] === 'true';
/** Serving: Running, the guest ready, not being moved off its node. */
export const isReady = (m: MicroVMObject): boolean =>
  m.status?.phase === 'Running' && condTrue(m.status.conditions, ConditionTypes.GuestReady) && !condTrue(m.status.conditions, ClusterConditions.Evicting) && m.spec.desiredState !== 'Paused';

const created = (m: MicroVMObject): number => (m.metadata.creationTimestamp ? new Date(m.metadata.creationTimestamp).getTime() : 0);

export function planPool(pool: MicroVMPoolObject, members: MicroVMObject[], hash: string): PoolPlan {
  const replicas = pool.spec.replicas ?? 1;
  const maxUnavailable = resolveMaxUnavailable(pool.spec.strategy?.rollingUpdate?.maxUnavailable, replicas);
  const minAvailable = Math.max(0, replicas - maxUnavailable);
  const suspendOnScaleDown = pool.spec.scaleDown === 'suspend';
  const live = members.filter((m) => !isTerminating(m));
  const active = live.filter((m) => !isSuspended(m));
  const suspended = live.filter(isSuspended);
  const updated = (m: MicroVMObject): boolean => m.metadata.labels?.[LABEL_POOL_HASH] === hash;
  const actions: MemberAction[] = [];
  const status = {
    replicas: active.length,
    readyReplicas: active.filter(isReady).length,
    updatedReplicas: active.filter(updated).length,
    suspendedReplicas: suspended.length,
  };

  // Suspended members that can never serve again as they are: an old template, or a pool that deletes on scale-down.
  const resumable: MicroVMObject[] = [];
  for (const m of suspended) {
    if (!updated(m)) actions.push({ kind: 'delete', name: m.metadata.name!, why: 'suspended member of an old template' });
    else if (!suspendOnScaleDown) actions.push({ kind: 'delete', name: m.metadata.name!, why: 'scaleDown is delete: suspended members are not kept' });
    else resumable.push(m);
  }

  // Members per node (active), for the spread: the surplus goes from the most crowded node.
  const perNode = new Map<string, number>();
  for (const m of active) if (m.status?.node) perNode.set(m.status.node, (perNode.get(m.status.node) ?? 0) + 1);
  const crowd = (m: MicroVMObject): number => (m.status?.node ? (perNode.get(m.status.node) ?? 0) : 0);
  /** Least useful first: outdated, not ready, most crowded node, newest. */
  const leastUseful = (a: MicroVMObject, b: MicroVMObject): number =>
    Number(updated(a)) - Number(updated(b)) || Number(isReady(a)) - Number(isReady(b)) || crowd(b) - crowd(a) || created(b) - created(a);
  /** Resume first what is paused already, on the least crowded node, suspended longest ago. */
  resumable.sort((a, b) => Number(b.status?.phase === 'Paused') - Number(a.status?.phase === 'Paused') || crowd(a) - crowd(b) || created(a) - created(b));
  const grow = (n: number): void => {
    let left = n;
    while (left > 0 && resumable.length) {
      actions.push({ kind: 'resume', name: resumable.shift()!.metadata.name! });
      left--;
    }
    if (left > 0) actions.push({ kind: 'create', count: left });
  };

  let rolling = false;
  if (active.length > replicas) {
    // Greedy, so the spread holds: each pick lowers its node's count before the next.
    const left = [...active];
    const victims: MicroVMObject[] = [];
    while (victims.length < active.length - replicas) {
      const m = left.sort(leastUseful).shift()!;
      victims.push(m);
      if (m.status?.node) perNode.set(m.status.node, (perNode.get(m.status.node) ?? 1) - 1);
    }
    for (const m of victims) {
      if (suspendOnScaleDown && updated(m) && m.status?.phase === 'Running') actions.push({ kind: 'suspend', name: m.metadata.name! });
      else actions.push({ kind: 'delete', name: m.metadata.name!, why: `scale down to ${replicas}` });
    }
  } else {
    const old = active.filter((m) => !updated(m)).sort(leastUseful);
    rolling = old.length > 0;
    let replaced = 0;
    // Outdated members that are not ready cost no availability: they go first, at once.
    for (const m of old.filter((x) => !isReady(x))) {
      actions.push({ kind: 'delete', name: m.metadata.name!, why: 'rolling update: outdated and not ready' });
      replaced++;
    }
    // Ready outdated members: only as many as keep minAvailable Ready (maxSurge 0).
    let budget = status.readyReplicas - minAvailable;
    for (const m of old.filter(isReady)) {
      if (budget <= 0) break;
      actions.push({ kind: 'delete', name: m.metadata.name!, why: `rolling update: replaced by the new template (maxUnavailable ${maxUnavailable})` });
      replaced++;
      budget--;
    }
    grow(replicas - active.length + replaced);
  }
  return { actions, status, minAvailable, rolling };
}

/**
 * The autoscaling recommendation (the HorizontalPodAutoscaler's rule): replicas = ceil(total /
 * target), unchanged while the ratio total / (current · target) is within the tolerance of 1,
 * clamped to [minReplicas, maxReplicas]. `total` undefined (no value reported yet): the current
 * count, clamped.
 */
export function recommendReplicas(a: NonNullable<MicroVMPoolSpecT['autoscaling']>, current: number, total: number | undefined): number {
  const lo = Math.min(a.minReplicas, a.maxReplicas);
  const clamp = (n: number): number => Math.min(a.maxReplicas, Math.max(lo, n));
  if (total === undefined) return clamp(current);
  const tolerance = a.tolerance ?? 0.1;
  if (current > 0 && Math.abs(total / (current * a.metric.target) - 1) <= tolerance) return clamp(current);
  return clamp(Math.ceil(total / a.metric.target - 1e-9));
}

/**
 * The metric total: the pool's own annotation (a total, e.g. a queue length), else the sum of its
 * active members' annotations (their load); undefined when nobody reports it.
 */
export function metricTotal(pool: MicroVMPoolObject, members: MicroVMObject[], name: string): number | undefined {
  const key = `${METRIC_ANNOTATION_PREFIX}${name}`;
  const num = (v: string | undefined): number | undefined => (v !== undefined && v.trim() !== '' && Number.isFinite(Number(v)) ? Number(v) : undefined);
  const own = num(pool.metadata.annotations?.[key]);
  if (own !== undefined) return own;
  let sum: number | undefined;
  for (const m of members) {
    if (isTerminating(m) || isSuspended(m)) continue;
    const v = num(m.metadata.annotations?.[key]);
    if (v !== undefined) sum = (sum ?? 0) + v;
  }
  return sum;
}
