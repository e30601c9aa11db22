/**
 * Domain model of a microVM: quantities, defaults, the phase state machine.
 * The dashboard imports this module too: no Node-only imports here (src/web's typecheck has no Node types).
 */
import { ErrorCodes, MvmError, validationError, unprocessable } from './errors.js';
import { validatePlacement } from './placement.js';
import { PHASES, type ConditionT, type MicroVMSpecT, type MicroVMT, type PhaseT } from './schema.js';

export { PHASES };
export type Phase = PhaseT;
export type MicroVM = MicroVMT;
export type MicroVMSpec = MicroVMSpecT;
export type DesiredState = MicroVM['desiredState'];

export const MIN_MEMORY_MIB = 128;
export const MAX_MEMORY_MIB = 8 * 1024;
export const DEFAULT_SPEC = { vcpu: 1, memory: '128Mi' } as const;

/** Parse a `<n>Mi|<n>Gi` quantity into MiB. */
export function parseQuantityMiB(q: string, field: string): number {
  const m = /^([1-9][0-9]*)(Mi|Gi)$/.exec(q);
  if (!m) throw validationError(field, `must be a quantity like 128Mi or 1Gi, got ${JSON.stringify(q)}`);
  const n = Number(m[1]);
  return m[2] === 'Gi' ? n * 1024 : n;
}

/** Checks the schema cannot express (ranges of quantities, cross-field rules). */
export function validateSpec(spec: MicroVMSpec, prefix = ''): void {
  const mem = parseQuantityMiB(spec.memory, `${prefix}memory`);
  if (mem < MIN_MEMORY_MIB || mem > MAX_MEMORY_MIB) {
    throw validationError(`${prefix}memory`, `must be between 128Mi and 8Gi, got ${spec.memory}`);
  }
  if (spec.rootfs?.size !== undefined) {
    const size = parseQuantityMiB(spec.rootfs.size, `${prefix}rootfs.size`);
    if (size > 256 * 1024) throw validationError(`${prefix}rootfs.size`, 'must be at most 256Gi');
  }
  const names = new Set<string>();
  for (const [i, nic] of (spec.networkInterfaces ?? []).entries()) {
    if (names.has(nic.name)) throw unprocessable(`${prefix}networkInterfaces[${i}].name`, `duplicate interface name ${nic.name}`);
    names.add(nic.name);
  }
  const vols = new Set<string>();
  for (const [i, v] of (spec.volumes ?? []).entries()) {
    if (vols.has(v.name)) throw unprocessable(`${prefix}volumes[${i}].name`, `duplicate volume ${v.name}`);
    vols.add(v.name);
  }
  validatePlacement(spec, prefix);
}

/** Parse a `<n>s|m|h` duration (DURATION_PATTERN) into milliseconds. */
export function parseDurationMs(d: string, field: string): number {
  const m = /^([1-9][0-9]*)(s|m|h)$/.exec(d);
  if (!m || Number(m[1]) * { s: 1, m: 60, h: 3600 }[m[2] as 's' | 'm' | 'h'] > 86_400) throw validationError(field, `must be a duration like 90s, 5m or 1h, at most 24h, got ${JSON.stringify(d)}`);
  return Number(m[1]) * { s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 's' | 'm' | 'h'];
}

export function memoryMiB(spec: MicroVMSpec): number {
  return parseQuantityMiB(spec.memory, 'memory');
}

const ID_ALPHABET = '0123456789abcdefghjkmnpqrstvwxyz';
/** A short, sortable-enough, URL-safe id: `vm-` + 14 base32 chars. */
export function newId(prefix = 'vm'): string {
  const bytes = crypto.getRandomValues(new Uint8Array(14));
  let s = '';
  for (const b of bytes) s += ID_ALPHABET[b & 31];
  return `${prefix}-${s}`;
}

/**
 * The phase state machine. `from -> allowed next phases`. The controller is the
 * only writer of phases; every write goes through `transition`, so an illegal
 * move is a bug that surfaces as ILLEGAL_TRANSITION instead of silent corruption.
 */
export const TRANSITIONS: Record<Phase, readonly Phase[]> = {
  Pending: ['Scheduled', 'Stopped', 'Failed', 'Deleting'],
  Scheduled: ['Starting', 'Stopped', 'Failed', 'Deleting', 'Pending'],
  Starting: ['Running', 'Stopping', 'Failed', 'Deleting', 'Stopped'],
  Running: ['Stopping', 'Paused', 'Suspending', 'Failed', 'Deleting', 'Stopped', 'Starting'],
  Paused: ['Running', 'Suspending', 'Stopping', 'Failed', 'Deleting', 'Stopped'],
  // Memory and devices are being written to disk; a resume cancels it (back to Running/Paused).
  Suspending: ['Suspended', 'Running', 'Paused', 'Starting', 'Failed', 'Deleting', 'Stopping'],
  // No VMM: memory and device state on disk. A resume restores them (Scheduled -> Starting -> Running);
  // a stop discards them (Stopped).
  Suspended: ['Scheduled', 'Starting', 'Stopped', 'Failed', 'Deleting'],
  Stopping: ['Stopped', 'Failed', 'Deleting'],
  Stopped: ['Pending', 'Scheduled', 'Starting', 'Deleting', 'Failed'],
  Failed: ['Pending', 'Scheduled', 'Starting', 'Deleting', 'Stopped', 'Running'],
  Deleting: [],
};

export function canTransition(from: Phase, to: Phase): boolean {
  return from === to || TRANSITIONS[from].includes(to);
}

export function assertTransition(from: Phase, to: Phase): void {
  if (!canTransition(from, to)) {
    throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `illegal phase transition ${from} -> ${to}`, { details: { from, to } });
  }
}

/**
 * Whether a VM in this phase holds (or is being given) a node: every phase but Stopped, Failed,
 * Suspended (its files stay on the node, its memory and CPUs are free) and Deleting. Such a VM counts against its node's capacity once placed, and its console can
 * still grow.
 */
export function holdsNode(phase: Phase): boolean {
  return phase !== 'Stopped' && phase !== 'Failed' && phase !== 'Deleting' && phase !== 'Suspended';
}

/** User actions and the phases they are legal in. */
export type Action = 'start' | 'stop' | 'delete' | 'update' | 'pause' | 'resume' | 'snapshot' | 'suspend' | 'timeout';
export const ACTION_PHASES: Record<Action, readonly Phase[]> = {
  // A start of a Suspended VM resumes it (as `resume` does).
  start: ['Stopped', 'Failed', 'Suspended'],
  // A stop of a Suspended VM discards its memory: the next start boots.
  stop: ['Pending', 'Scheduled', 'Starting', 'Running', 'Paused', 'Suspended'],
  delete: PHASES,
  update: ['Stopped', 'Failed'],
  pause: ['Running'],
  // Paused: the vCPUs run again; Suspended: restored from disk; Suspending: the suspend is cancelled.
  resume: ['Paused', 'Suspending', 'Suspended'],
  snapshot: ['Running', 'Paused'],
  suspend: ['Running', 'Paused'],
  timeout: ['Pending', 'Scheduled', 'Starting', 'Running', 'Paused', 'Suspending', 'Suspended'],
};

/**
 * The intents of stop, suspend and delete as one write each: the use cases and the lifetime
 * step of the reconcile (timeout, idle) apply the same ones.
 */
export function requestStop(cur: MicroVM): MicroVM {
  cur.desiredState = 'Stopped';
  if (cur.status.phase !== 'Pending' && cur.status.phase !== 'Scheduled' && cur.status.phase !== 'Suspended') cur.status.phase = 'Stopping';
  return cur;
}

export function requestSuspend(cur: MicroVM): MicroVM {
  cur.desiredState = 'Suspended';
  cur.status.phase = 'Suspending';
  return cur;
}

/** Resume from Paused (vCPUs), Suspending (cancel) or Suspended (restore from disk; placed on its node again). */
export function requestResume(cur: MicroVM): MicroVM {
  cur.desiredState = 'Running';
  if (cur.status.phase === 'Suspended') {
    cur.status.phase = cur.status.node ? 'Scheduled' : 'Pending';
    delete cur.status.reason;
    delete cur.status.message;
  }
  return cur;
}

export function requestDelete(cur: MicroVM): MicroVM {
  cur.status.phase = 'Deleting';
  return cur;
}

export function assertAction(vm: MicroVM, action: Action): void {
  const phase = vm.status.phase;
  if (!ACTION_PHASES[action].includes(phase)) {
    throw new MvmError(
      ErrorCodes.ILLEGAL_TRANSITION,
      `cannot ${action} microVM ${vm.id} in phase ${phase} (allowed in: ${ACTION_PHASES[action].join(', ')})`,
      { details: { id: vm.id, phase, action, allowedPhases: ACTION_PHASES[action] } },
    );
  }
}

/** Set a condition, keeping lastTransitionTime when the status does not change. */
export function setCondition(conds: ConditionT[], c: Omit<ConditionT, 'lastTransitionTime'>, now: string): ConditionT[] {
  const existing = conds.find((x) => x.type === c.type);
  if (existing && existing.status === c.status && existing.reason === c.reason && existing.message === c.message) return conds;
  const next: ConditionT = { ...c, lastTransitionTime: existing && existing.status === c.status ? existing.lastTransitionTime : now };
  if (next.message === undefined) delete next.message;
  if (next.reason === undefined) delete next.reason;
  return [...conds.filter((x) => x.type !== c.type), next];
}

export const ConditionTypes = {
  Scheduled: 'Scheduled',
  VmmRunning: 'VmmRunning',
  GuestReady: 'GuestReady',
} as const;
