/**
 * The protocol between the operator and the node agents in cluster mode (docs/adr/0017): names of
 * the finalizer, labels, conditions and Leases both sides agree on, and the node view the scheduler
 * gets from a Node object plus the node agent's heartbeat Lease.
 */
import type { V1Lease, V1Node } from '@kubernetes/client-node';
import type { NodeInfo, Taint } from '../core/ports/agent.js';

/** Held by every MicroVM the operator has seen; removed once its node cleaned up. */
export const FINALIZER = 'microvm.service/finalizer';
/** The binding, for people and label selectors (agents select by the field status.node). */
export const LABEL_NODE = 'microvm.service/node';
/**
 * On a Node, with the node cordoned (spec.unschedulable, as `kubectl cordon` and `kubectl drain`
 * leave it): `true` = move every MicroVM off it; `false` = keep them (cordon = no new VMs only).
 * Absent: the operator's default (MVM_DRAIN_ON_CORDON, on by default: a cordon drains).
 */
export const ANN_DRAIN = 'microvm.service/drain';
/** On the node agent's Lease: NodeInfo as JSON (capacity, drivers, accel). */
export const ANN_NODE_INFO = 'microvm.service/node-info';
/**
 * On a Node, set by an admin: `{"cpus":N,"memoryMiB":M}` caps what the scheduler may place there
 * (below what the agent reports: capacity kept for other uses).
 */
export const ANN_ALLOCATABLE = 'microvm.service/allocatable';

/** Condition types of the cluster protocol (beside the controller's Scheduled/VmmRunning/GuestReady). */
export const ClusterConditions = {
  /** Written by the node agent: everything of the VM is gone from its node (after deletion or eviction). */
  NodeCleanedUp: 'NodeCleanedUp',
  /** Written by the operator: the VM must leave its node (drain); the agent stops it there. */
  Evicting: 'Evicting',
  /**
   * Written by the operator: the VM fits its tenant's quota (checked once, before its first
   * placement; a `kubectl apply`d VM gets no other check). False (reason QuotaExceeded) = it waits.
   */
  Admitted: 'Admitted',
  /**
   * Written by the source node's agent when a migration with memory ends (docs/adr/0034): True
   * (reason Migrated) on the target, or False with the failed step as the reason, the VM resumed on
   * its source. The message starts with `migration <id>` so the operator knows which request it answers.
   */
  Migrated: 'Migrated',
} as const;

/**
 * On a MicroVM, written by the API (POST /microvms/{id}/migrate) or by hand (`kubectl annotate`):
 * a request to move the running VM with its memory. JSON `{"node"?: "<target>"}`; `{}` lets the
 * scheduler pick. The operator validates it, picks the target and replaces it with ANN_MIGRATION.
 */
export const ANN_MIGRATE = 'microvm.service/migrate';
/**
 * On a MicroVM, written by the operator: the migration under way (MigrationPlan as JSON). The
 * source node's agent carries it out and answers with the Migrated condition; the operator then
 * removes this annotation.
 */
export const ANN_MIGRATION = 'microvm.service/migration';

/** A migration the operator asked the source node's agent to carry out. */
export interface MigrationPlan {
  id: string;
  source: string;
  target: string;
  /** Why: `Request` (the API or kubectl) or the eviction's reason (NodeDrain, NoExecuteTaint): a failed eviction falls back to the cold move. */
  reason: string;
  startedAt: string;
}

export function parseMigrationPlan(v: string | undefined): MigrationPlan | undefined {
  if (!v) return undefined;
  try {
    const p = JSON.parse(v) as Partial<MigrationPlan>;
    return typeof p.id === 'string' && typeof p.source === 'string' && typeof p.target === 'string' ? { reason: 'Request', startedAt: '', ...p } as MigrationPlan : undefined;
  } catch {
    return undefined;
  }
}

/** The request of ANN_MIGRATE (an unreadable one is a request with no target). */
export function parseMigrateRequest(v: string | undefined): { node?: string } | undefined {
  if (v === undefined) return undefined;
  try {
    const r = JSON.parse(v || '{}') as { node?: unknown };
    return typeof r.node === 'string' && r.node ? { node: r.node } : {};
  } catch {
    // `kubectl annotate mvm x microvm.service/migrate=node-b` works too.
    return /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(v) ? { node: v } : {};
  }
}

/** The Migrated condition's message names the migration it answers. */
export const migrationMessage = (id: string, text: string): string => `migration ${id}: ${text}`;
export const migrationOf = (message: string | undefined): string | undefined => /^migration (\S+):/.exec(message ?? '')?.[1];

/**
 * Why a VM cannot move with its memory (undefined: it can). The files of a VM restored from a
 * snapshot or cloned from a template back its disk on its node; volumes are not carried yet.
 */
export function migrationRefusal(vm: { spec: { source?: unknown; volumes?: unknown[] }; status: { phase: string } }): string | undefined {
  if (vm.status.phase !== 'Running') return `the microVM is ${vm.status.phase}: only a Running microVM migrates`;
  if (vm.spec.source) return 'it was restored from a snapshot or cloned from a template whose files back its disk on its node';
  if (vm.spec.volumes?.length) return 'it has volumes: migration does not carry volumes yet (stop it and start it elsewhere)';
  return undefined;
}

export const SYSTEM_NAMESPACE = 'microvm-system';
export const OPERATOR_LEASE = 'microvm-operator';
/** The node agent's heartbeat Lease in the system namespace. */
export const nodeLeaseName = (node: string): string => `mvm-node-${node}`;
export const NODE_LEASE_LABEL = 'microvm.service/node-heartbeat';

/**
 * The taints Kubernetes derives from a Ready condition that is not True (the admission plugin
 * TaintNodesByCondition on a new Node, the node lifecycle controller later).
 */
export const NOT_READY_TAINTS: readonly string[] = ['node.kubernetes.io/not-ready', 'node.kubernetes.io/unreachable'];

/**
 * What the scheduler knows of a node: the agent's report (Lease annotation) for capacity and
 * drivers, the Node object for labels, cordon and taints. Ready = a fresh heartbeat (renewed
 * within the Lease's duration) and no kubelet saying NotReady. The NoSchedule taints of
 * NOT_READY_TAINTS are not read: they restate readiness for pods, which `ready` already decides
 * from the heartbeat and the Ready condition, and on a cluster with no kubelet and no node
 * lifecycle controller (a bare control plane) nobody would ever remove the one every new Node gets.
 */
export function nodeInfoOf(node: V1Node, lease: V1Lease | undefined, now = Date.now()): NodeInfo {
  const name = node.metadata?.name ?? '';
  let reported: Partial<NodeInfo> = {};
  try {
    reported = JSON.parse(lease?.metadata?.annotations?.[ANN_NODE_INFO] ?? '{}') as Partial<NodeInfo>;
  } catch {
    reported = {};
  }
  const renew = lease?.spec?.renewTime ? new Date(lease.spec.renewTime).getTime() : 0;
  const fresh = renew + (lease?.spec?.leaseDurationSeconds ?? 40) * 1000 > now;
  let cap: { cpus?: unknown; memoryMiB?: unknown } = {};
  try {
    cap = JSON.parse(node.metadata?.annotations?.[ANN_ALLOCATABLE] ?? '{}') as typeof cap;
  } catch {
    cap = {};
  }
  const base = reported.allocatable ?? (reported.cpus !== undefined || reported.memoryMiB !== undefined ? { cpus: reported.cpus ?? 0, memoryMiB: reported.memoryMiB ?? 0 } : undefined);
  const num = (v: unknown): number | undefined => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined);
  const capCpus = num(cap.cpus);
  const capMem = num(cap.memoryMiB);
  const allocatable =
    capCpus !== undefined || capMem !== undefined
      ? { cpus: Math.min(base?.cpus ?? 0, capCpus ?? Infinity), memoryMiB: Math.min(base?.memoryMiB ?? 0, capMem ?? Infinity) }
      : reported.allocatable;
  const kubeletReady = node.status?.conditions?.find((c) => c.type === 'Ready');
  const taints: Taint[] = (node.spec?.taints ?? [])
    .filter((t) => !(t.effect === 'NoSchedule' && NOT_READY_TAINTS.includes(t.key)))
    .map((t) => ({ key: t.key, ...(t.value !== undefined ? { value: t.value } : {}), effect: t.effect as Taint['effect'] }));
  return {
    name,
    cpus: reported.cpus ?? 0,
    memoryMiB: reported.memoryMiB ?? 0,
    drivers: reported.drivers ?? [],
    accel: reported.accel ?? 'none',
    labels: { ...(reported.labels ?? {}), ...(node.metadata?.labels ?? {}) },
    ready: !!lease && fresh && reported.ready !== false && (!kubeletReady || kubeletReady.status === 'True'),
    unschedulable: node.spec?.unschedulable === true,
    ...(taints.length ? { taints } : {}),
    ...(allocatable ? { allocatable } : {}),
  };
}

/**
 * A Date that serializes as a Kubernetes MicroTime (6 fractional digits). @kubernetes/client-node
 * 1.4 sends Lease times with `toISOString()` (milliseconds), which the API server refuses.
 */
export function microTime(d: Date = new Date()): Date {
  const t = new Date(d.getTime());
  const iso = (): string => d.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z');
  Object.defineProperty(t, 'toISOString', { value: iso });
  Object.defineProperty(t, 'toJSON', { value: iso });
  return t;
}

/** Why a VM bound to `node` must leave it, or undefined (docs/adr/0017, "Drain"). */
export function evictionReason(
  node: Pick<V1Node, 'spec' | 'metadata'> | undefined,
  tolerates: (t: Taint) => boolean,
  drainOnCordon: boolean,
): { reason: 'NodeDrain' | 'NoExecuteTaint'; message: string } | undefined {
  if (!node) return undefined;
  const name = node.metadata?.name ?? '';
  const noExecute = (node.spec?.taints ?? []).find((t) => t.effect === 'NoExecute' && !tolerates({ key: t.key, ...(t.value !== undefined ? { value: t.value } : {}), effect: 'NoExecute' }));
  if (noExecute) return { reason: 'NoExecuteTaint', message: `node ${name} has the taint ${noExecute.key}${noExecute.value ? `=${noExecute.value}` : ''}:NoExecute` };
  if (node.spec?.unschedulable !== true) return undefined;
  const ann = node.metadata?.annotations?.[ANN_DRAIN];
  if (ann === 'true' || (ann !== 'false' && drainOnCordon)) return { reason: 'NodeDrain', message: `node ${name} is being drained` };
  return undefined;
}
