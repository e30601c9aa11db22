/**
 * The convergence poll of both chaos runners (standalone.ts, cluster.ts): look again and again from
 * the restart (or a VMM kill) until the control plane has converged and then the guests have.
 *
 *   control plane: desired == observed phase, no leak, no acknowledged write lost (the issue's
 *                  "within 10 s": `deadlines.controlPlaneMs`, plus a grace a runner may add, the
 *                  operator's Lease after an operator kill);
 *   guests:        what the guests do matches the phase (a Running VM's agent answers an exec, a
 *                  Paused one's does not). A guest killed mid-boot boots again, 3–7 s under TCG
 *                  and longer with several at once: its own, longer deadline, reported apart.
 *
 * The guests are only looked at once the control plane is converged at that look (an exec of a VM
 * the record has not caught up with says nothing); both times are measured from `from`.
 */
import { setTimeout as sleep } from 'node:timers/promises';

export interface Look {
  /** Why the control plane has not converged (empty: it has). */
  controlPlane: string[];
  /** Why the guests do not do what their phase says; only asked for when `controlPlane` is empty. */
  guests?: () => Promise<string[]>;
}

export interface Deadlines {
  controlPlaneMs: number;
  guestMs: number;
  intervalMs?: number;
}

export interface Convergence {
  /** ms from `from` to the first look at which the control plane had converged. */
  controlPlaneMs?: number;
  /** ms from `from` to the first look at which the guests had too. */
  guestMs?: number;
  /** What failed: the control plane past its deadline, or the guests past theirs. */
  failures: string[];
}

export async function pollUntilConverged(check: () => Promise<Look>, from: number, d: Deadlines): Promise<Convergence> {
  const out: Convergence = { failures: [] };
  let lastCp: string[] = [];
  let lastGuests: string[] = [];
  for (;;) {
    const look = await check();
    const cpAt = Date.now() - from;
    lastCp = look.controlPlane;
    if (!lastCp.length) {
      if (out.controlPlaneMs === undefined) out.controlPlaneMs = cpAt;
      lastGuests = look.guests ? await look.guests() : [];
      if (!lastGuests.length) {
        out.guestMs = Date.now() - from;
        break;
      }
    }
    const elapsed = Date.now() - from;
    if (out.controlPlaneMs === undefined && elapsed > d.controlPlaneMs) break;
    if (elapsed > d.guestMs) break;
    await sleep(d.intervalMs ?? 100);
  }
  if (out.controlPlaneMs === undefined) out.failures.push(`control plane not converged ${d.controlPlaneMs / 1000} s after: ${lastCp.join('; ')}`);
  else if (out.controlPlaneMs > d.controlPlaneMs) out.failures.push(`control plane converged only after ${out.controlPlaneMs} ms (deadline ${d.controlPlaneMs / 1000} s)`);
  if (out.controlPlaneMs !== undefined && out.guestMs === undefined) out.failures.push(`guests not converged ${d.guestMs / 1000} s after: ${lastGuests.join('; ')}`);
  return out;
}
