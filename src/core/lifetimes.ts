/**
 * Lifetimes (spec.lifecycle.timeout / idleTimeout): the arithmetic of the two clocks, kept in
 * `status.lifetime` so they survive a restart of the service, and the activity the idle clock
 * watches. The controller's reconcile applies `evaluateLifetime` as one step (the one place
 * lifetimes are enforced); everything here is pure but the in-process activity record.
 *
 * - The timeout clock runs while the VM is Running or Paused. Suspended (and Suspending,
 *   Starting...) time does not count: leaving those phases stops the clock, keeping what is left.
 *   A Stopped or Failed VM loses its clocks: its next start begins a new lifetime.
 * - The idle clock counts from the last activity (exec, files, port forwarding, console calls,
 *   guest network traffic), or from the moment the guest was (again) ready, whichever is later;
 *   it does not run while the guest is not ready (a boot is not idleness).
 */
import { parseDurationMs, type MicroVM } from './microvm.js';
import type { MicroVMStatusT } from './schema.js';

export type LifetimeClock = NonNullable<MicroVMStatusT['lifetime']>;

export interface LifetimeAction {
  reason: 'Timeout' | 'Idle';
  action: 'stop' | 'suspend' | 'delete';
  message: string;
}

export interface LifetimeDecision {
  /** The new `status.lifetime`: undefined = unchanged, null = remove it. */
  clock?: LifetimeClock | null;
  action?: LifetimeAction;
  /** Look again in this many ms (a deadline of a running clock), when there is one. */
  wakeInMs?: number;
}

/** Whether the timeout and idle clocks run in this phase. */
export function clockRuns(phase: MicroVM['status']['phase']): boolean {
  return phase === 'Running' || phase === 'Paused';
}

/** Activity below this much newer than the stored one is not written (one store write per second at most). */
export const ACTIVITY_WRITE_GRANULARITY_MS = 1000;

const ms = (iso: string | undefined): number | undefined => (iso === undefined ? undefined : Date.parse(iso));

/**
 * The lifetime step at `nowMs`, with `activityMs` the latest activity this process saw (if any).
 * Pure: the caller writes the clock and carries out the action.
 */
export function evaluateLifetime(vm: MicroVM, nowMs: number, activityMs?: number): LifetimeDecision {
  const lc = vm.spec.lifecycle;
  const timeoutMs = lc?.timeout ? parseDurationMs(lc.timeout, 'lifecycle.timeout') : undefined;
  const idleMs = lc?.idleTimeout ? parseDurationMs(lc.idleTimeout, 'lifecycle.idleTimeout') : undefined;
  const cur = vm.status.lifetime;
  const phase = vm.status.phase;
  if ((timeoutMs === undefined && idleMs === undefined) || phase === 'Stopped' || phase === 'Failed') return cur ? { clock: null } : {};
  if (phase === 'Deleting') return {};
  const next: LifetimeClock = { ...(cur ?? {}) };
  if (!clockRuns(phase)) {
    // The clock stands still: keep what is left.
    if (next.countingSince !== undefined) {
      if (next.remainingMs !== undefined) next.remainingMs = Math.max(0, next.remainingMs - Math.max(0, nowMs - ms(next.countingSince)!));
      delete next.countingSince;
      delete next.expiresAt;
      return { clock: next };
    }
    return {};
  }
  if (timeoutMs === undefined) {
    delete next.remainingMs;
    delete next.expiresAt;
  } else if (next.remainingMs === undefined) next.remainingMs = timeoutMs;
  next.countingSince ??= new Date(nowMs).toISOString();
  const since = ms(next.countingSince)!;
  if (next.remainingMs !== undefined) next.expiresAt = new Date(since + next.remainingMs).toISOString();
  const stored = ms(next.lastActivityAt);
  if (activityMs !== undefined && (stored === undefined || activityMs - stored >= ACTIVITY_WRITE_GRANULARITY_MS)) next.lastActivityAt = new Date(activityMs).toISOString();
  // A booting guest is not idle: the idle clock starts when the guest is ready (again, after a resume).
  const ready = vm.status.conditions.some((c) => c.type === 'GuestReady' && c.status === 'True');
  const lastActive = Math.max(since, ms(vm.status.readyAt) ?? 0, stored ?? 0, activityMs ?? 0);
  const d: LifetimeDecision = JSON.stringify(next) !== JSON.stringify(cur ?? {}) ? { clock: next } : {};
  const waits: number[] = [];
  if (next.expiresAt !== undefined) {
    const left = ms(next.expiresAt)! - nowMs;
    if (left <= 0) {
      d.action = { reason: 'Timeout', action: lc?.onTimeout ?? 'stop', message: `lifecycle.timeout ${lc!.timeout} reached` };
      return d;
    }
    waits.push(left);
  }
  if (idleMs !== undefined && ready) {
    const left = lastActive + idleMs - nowMs;
    if (left <= 0) {
      d.action = { reason: 'Idle', action: lc?.onIdle ?? 'suspend', message: `no activity for lifecycle.idleTimeout ${lc!.idleTimeout}` };
      return d;
    }
    waits.push(left);
  }
  if (waits.length) d.wakeInMs = Math.min(...waits);
  return d;
}

/** What `POST /microvms/{id}/timeout` writes: `timeoutMs` left from now (the clock runs on only in Running/Paused). */
export function extendedClock(vm: MicroVM, nowMs: number, timeoutMs: number): LifetimeClock {
  const next: LifetimeClock = { ...(vm.status.lifetime ?? {}), remainingMs: timeoutMs };
  if (clockRuns(vm.status.phase)) {
    next.countingSince = new Date(nowMs).toISOString();
    next.expiresAt = new Date(nowMs + timeoutMs).toISOString();
  } else {
    delete next.countingSince;
    delete next.expiresAt;
  }
  return next;
}

/**
 * Activity this process saw, per VM (ms since the epoch): guest calls and console reads record
 * it, the lifetime step reads it and writes it to the VM's status at most once a second.
 */
class ActivityRecord {
  private readonly last = new Map<string, number>();
  touch(id: string, at = Date.now()): void {
    if ((this.last.get(id) ?? 0) < at) this.last.set(id, at);
  }
  get(id: string): number | undefined {
    return this.last.get(id);
  }
  forget(id: string): void {
    this.last.delete(id);
  }
}

export const activity = new ActivityRecord();
