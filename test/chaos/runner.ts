/**
 * One chaos iteration against a target (the standalone service: standalone.ts; cluster mode:
 * cluster.ts), driven over the public REST API only and judged from outside: it runs its plan
 * (plan.ts), kill -9s the victim at the planned point, restarts what it killed (a killed VMM is
 * the service's, or the node agent's, to notice), then checks (converge.ts):
 *
 *   1. within 10 s of the restart (the control plane): every VM in a settled phase equal to its
 *      desired state (Running, Paused, Stopped; Failed only with VmmExited/VmmLost (or StartFailed
 *      cut short) for the VM whose VMM was killed), none Pending/Scheduled/Starting/Stopping/
 *      Deleting, snapshots Ready, volumes Available or InUse exactly when attached, nothing on the
 *      host beyond what the live VMs own (ownership()), and no acknowledged write lost (acked():
 *      VMs, snapshots and volumes whose create answered 2xx exist, deletes stay deleted, desired
 *      states and labels are as last acknowledged; a write in flight at the kill happened
 *      completely or not at all);
 *   2. within 30 s (the guests, reported apart): every Running VM's guest is ready and answers an
 *      exec, a Paused one's does not (a guest the kill sent back to boot needs 3–7 s under TCG);
 *   3. nothing leaked: after the iteration deletes everything, the host inventory equals the one
 *      taken before the iteration (inventory.ts).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { qemuProcessesUnder } from '../support/service.js';
import { pollUntilConverged } from './converge.js';
import { diffInventory, type Inventory } from './inventory.js';
import { describePlan, type Mode, type Op, type OpKind, type Plan, type Victim } from './plan.js';

/** The issue's "within 10 s": control-plane convergence, no leak, no lost write. */
export const CONTROL_PLANE_DEADLINE_MS = 10_000;
/** Guests ready and answering (a guest the kill sent back to boot: 3–7 s under TCG, more with several at once). */
export const GUEST_DEADLINE_MS = 30_000;
const BOOT_TIMEOUT_MS = 120_000;
const TRANSITIONAL = ['Pending', 'Scheduled', 'Starting', 'Stopping', 'Deleting'];

export interface IterationResult {
  seed: number;
  plan: string;
  victim: Victim;
  /** The operation the kill hit. */
  op: OpKind;
  when: 'during' | 'after';
  delayMs: number;
  /** What died (a VM id for a VMM), or why nothing did. */
  killed: string;
  /** The killed process existed (false: no VMM ran at the kill point). */
  didKill: boolean;
  restartMs?: number;
  /** Control-plane convergence (phase, leaks, acked writes), ms after the restart or the VMM kill. */
  convergenceMs?: number;
  /** Guests ready and answering, ms after the restart or the VMM kill. */
  guestMs?: number;
  deadlineMs?: number;
  guestDeadlineMs?: number;
  mode?: Mode;
  acked: number;
  inFlight: number;
  refused: number;
  durationMs: number;
  failures: string[];
}

export interface Answer {
  status: number;
  json?: any;
  text: string;
  error?: string;
}

type Fate = 'acked' | 'maybe';

interface VmTrack {
  name: string;
  id?: string;
  created: Fate;
  deleted?: Fate;
  desired: Set<string>;
  labels?: { want: Record<string, string>; alt?: Record<string, string> };
}
interface ResTrack {
  kind: 'snapshot' | 'volume';
  name: string;
  id?: string;
  created: Fate;
  deleted?: Fate;
}

/** What an iteration needs of the system under test. */
export interface ChaosTarget {
  readonly mode: Mode;
  /** The data dir the VMMs run under (the service's, the node agent's). */
  readonly vmmDataDir: string;
  /** A REST call with the iteration's credentials; status 0 when there is no answer. */
  call(method: string, path: string, body?: unknown, timeoutMs?: number): Promise<Answer>;
  inventory(): Inventory;
  /** kill -9 the victim (service, agent, operator). */
  kill9(victim: Victim): Promise<void>;
  /** Start it again; ms until it answers (or, for the operator, its process started). */
  restart(victim: Victim): Promise<number>;
  /** ms the victim's successor may wait before it may act (the operator's Lease). */
  graceMs(victim: Victim): number;
  /** Convergence checks of this mode beyond the REST API's view (cluster: the MicroVM objects). */
  extraChecks?(): string[];
}

/** A JSON call to the REST API; never throws (status 0 and `error` when there is no answer). */
export async function restCall(base: string, token: string, method: string, path: string, body?: unknown, timeoutMs = 60_000): Promise<Answer> {
  try {
    const r = await fetch(`${base}/api/v1${path}`, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      signal: AbortSignal.timeout(timeoutMs),
    });
    const text = await r.text();
    let json: any;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = undefined;
    }
    return { status: r.status, json, text };
  } catch (e) {
    return { status: 0, text: '', error: (e as Error).message };
  }
}

/** Run one iteration (its plan) against the target; never throws for a failed check. */
export async function runPlan(t: ChaosTarget, plan: Plan, log: (s: string) => void = () => {}): Promise<IterationResult> {
  return new Iteration(t, plan, log).run();
}

class Iteration {
  private readonly vms = new Map<string, VmTrack>();
  private readonly res = new Map<string, ResTrack>();
  private readonly killedVmms = new Set<string>();
  private readonly failures: string[] = [];
  private acked = 0;
  private inFlight = 0;
  private refused = 0;
  private result: Partial<IterationResult> = {};

  constructor(
    private readonly t: ChaosTarget,
    private readonly plan: Plan,
    private readonly log: (s: string) => void,
  ) {}

  private name(local: string): string {
    return `${this.plan.prefix}-${local}`;
  }

  private fail(what: string): void {
    this.failures.push(what);
    this.log(`  FAIL ${what}`);
  }

  async run(): Promise<IterationResult> {
    const t0 = Date.now();
    const p = this.plan;
    this.log(`seed ${p.seed}${this.t.mode === 'cluster' ? ' (cluster)' : ''}: ${describePlan(p)}`);
    const before = this.t.inventory();
    const k = p.kill;
    try {
      for (const [i, op] of p.ops.entries()) {
        if (i !== k.at) {
          await this.step(op);
          continue;
        }
        if (k.when === 'after') {
          await this.step(op);
          await sleep(k.delayMs);
          await this.killAndCheck(op);
        } else {
          const pending = this.issue(op);
          await sleep(k.delayMs);
          const killedAt = this.killAndCheck(op, pending);
          await killedAt;
        }
      }
    } catch (e) {
      this.fail(`harness: ${(e as Error).stack ?? String(e)}`);
    }
    await this.teardown(before);
    return {
      seed: p.seed,
      plan: describePlan(p),
      victim: k.victim,
      op: p.ops[k.at]!.kind,
      when: k.when,
      delayMs: k.delayMs,
      killed: this.result.killed ?? 'nothing',
      didKill: this.result.didKill ?? false,
      ...(this.result.restartMs !== undefined ? { restartMs: this.result.restartMs } : {}),
      ...(this.result.convergenceMs !== undefined ? { convergenceMs: this.result.convergenceMs } : {}),
      ...(this.result.deadlineMs !== undefined ? { deadlineMs: this.result.deadlineMs } : {}),
      ...(this.result.guestMs !== undefined ? { guestMs: this.result.guestMs } : {}),
      ...(this.result.guestDeadlineMs !== undefined ? { guestDeadlineMs: this.result.guestDeadlineMs } : {}),
      mode: this.t.mode,
      acked: this.acked,
      inFlight: this.inFlight,
      refused: this.refused,
      durationMs: Date.now() - t0,
      failures: this.failures,
    };
  }

  // ---- operations ---------------------------------------------------------------------

  private vmId(local: string | undefined): string | undefined {
    return local ? this.vms.get(local)?.id : undefined;
  }

  /** Issue an operation; resolves with its answer once it has one and the tracks are updated. */
  private async issue(op: Op): Promise<{ op: Op; answer: Answer | undefined }> {
    const req = this.request(op);
    if (!req) return { op, answer: undefined };
    const answer = await this.t.call(req.method, req.path, req.body);
    this.record(op, answer);
    return { op, answer };
  }

  private request(op: Op): { method: string; path: string; body?: unknown } | undefined {
    const id = this.vmId(op.vm);
    const snap = op.snapshot ? this.res.get(`snapshot/${op.snapshot}`)?.id : undefined;
    const vol = op.volume ? this.res.get(`volume/${op.volume}`) : undefined;
    switch (op.kind) {
      case 'create': {
        if (op.volume && !op.volumeSize && !vol?.id) return undefined;
        const body: Record<string, unknown> = { name: this.name(op.vm!), memory: '128Mi', labels: { chaos: String(this.plan.seed) } };
        if (op.rootfsSize) body.rootfs = { size: op.rootfsSize };
        if (op.volume) body.volumes = [{ name: this.name(op.volume), mountPath: '/data', ...(op.volumeSize ? { size: op.volumeSize } : {}) }];
        return { method: 'POST', path: '/microvms', body };
      }
      case 'restore':
        return snap ? { method: 'POST', path: `/snapshots/${snap}/restore`, body: { name: this.name(op.vm!) } } : undefined;
      case 'stop':
      case 'start':
      case 'pause':
      case 'resume':
        return id ? { method: 'POST', path: `/microvms/${id}/${op.kind}` } : undefined;
      case 'delete':
        return id ? { method: 'DELETE', path: `/microvms/${id}` } : undefined;
      case 'update':
        return id ? { method: 'PUT', path: `/microvms/${id}`, body: { labels: op.labels } } : undefined;
      case 'snapshot':
        return id ? { method: 'POST', path: `/microvms/${id}/snapshots`, body: { name: this.name(op.snapshot!) } } : undefined;
      case 'snapshot-delete':
        return snap ? { method: 'DELETE', path: `/snapshots/${snap}` } : undefined;
      case 'volume-create':
        return { method: 'POST', path: '/volumes', body: { name: this.name(op.volume!), size: '16Mi' } };
      case 'volume-delete':
        return vol?.id ? { method: 'DELETE', path: `/volumes/${vol.id}` } : undefined;
    }
  }

  /** Update what must hold from an answer: 2xx acknowledged, no answer (the kill) may or may not have happened. */
  private record(op: Op, a: Answer): void {
    const ok = a.status >= 200 && a.status < 300;
    // No answer (the service died), or a 5xx (a dependency died under it: the node agent the
    // cluster API was calling): the write may have happened or not, never half.
    const fate: Fate | undefined = ok ? 'acked' : a.status === 0 || a.status >= 500 ? 'maybe' : undefined;
    if (ok) this.acked++;
    else if (a.status === 0 || a.status >= 500) this.inFlight++;
    else if (a.status < 500) this.refused++;
    if (!fate) return;
    const vm = op.vm ? this.vms.get(op.vm) : undefined;
    switch (op.kind) {
      case 'create':
      case 'restore': {
        this.vms.set(op.vm!, { name: this.name(op.vm!), ...(ok ? { id: a.json?.id as string } : {}), created: fate, desired: new Set(['Running']) });
        if (op.kind === 'create' && op.volume && op.volumeSize) this.res.set(`volume/${op.volume}`, { kind: 'volume', name: this.name(op.volume), created: fate });
        return;
      }
      case 'stop':
      case 'start':
      case 'pause':
      case 'resume': {
        if (!vm) return;
        const want = op.kind === 'stop' ? 'Stopped' : op.kind === 'pause' ? 'Paused' : 'Running';
        if (fate === 'acked') vm.desired = new Set([want]);
        else vm.desired.add(want);
        return;
      }
      case 'delete':
        if (vm && vm.deleted !== 'acked') vm.deleted = fate;
        return;
      case 'update':
        if (vm) vm.labels = fate === 'acked' ? { want: op.labels! } : { want: op.labels!, alt: vm.labels?.want ?? { chaos: String(this.plan.seed) } };
        return;
      case 'snapshot':
        this.res.set(`snapshot/${op.snapshot}`, { kind: 'snapshot', name: this.name(op.snapshot!), ...(ok ? { id: a.json?.id as string } : {}), created: fate });
        return;
      case 'volume-create':
        this.res.set(`volume/${op.volume}`, { kind: 'volume', name: this.name(op.volume!), ...(ok ? { id: a.json?.id as string } : {}), created: fate });
        return;
      case 'snapshot-delete':
      case 'volume-delete': {
        const r = this.res.get(op.kind === 'snapshot-delete' ? `snapshot/${op.snapshot}` : `volume/${op.volume}`);
        if (r && r.deleted !== 'acked') r.deleted = fate;
        return;
      }
    }
  }

  /** An operation outside the kill: issue it and wait until it settled. */
  private async step(op: Op): Promise<void> {
    const { answer } = await this.issue(op);
    if (!answer) {
      this.log(`  #${op.kind} ${op.vm ?? op.snapshot ?? op.volume ?? ''}: skipped (what it acts on does not exist)`);
      return;
    }
    if (answer.status >= 500 || answer.status === 0) {
      this.fail(`${op.kind} ${op.vm ?? op.snapshot ?? op.volume ?? ''} outside the kill answered ${answer.status}: ${answer.error ?? answer.text.slice(0, 300)}`);
      return;
    }
    if (answer.status >= 300) {
      this.log(`  ${op.kind} ${op.vm ?? op.snapshot ?? op.volume ?? ''}: refused ${answer.status} ${String(answer.json?.code ?? '')} ${String(answer.json?.detail ?? '').slice(0, 160)}`);
      return;
    }
    await this.settle(op);
  }

  private async settle(op: Op): Promise<void> {
    const id = this.vmId(op.vm);
    if (!id) return;
    const want = { create: 'Running', restore: 'Running', start: 'Running', resume: 'Running', stop: 'Stopped', pause: 'Paused' }[op.kind as string];
    if (op.kind === 'delete') {
      if (!(await this.until(60_000, async () => (await this.t.call('GET', `/microvms/${id}`)).status === 404))) this.fail(`delete of ${op.vm} (${id}) did not finish in 60 s`);
      return;
    }
    if (!want) return;
    const ready = want === 'Running' && op.kind !== 'resume';
    const a = await this.t.call('GET', `/microvms/${id}/wait?phase=${want}${ready ? '&ready=true' : ''}&timeout=${BOOT_TIMEOUT_MS / 1000}s`, undefined, BOOT_TIMEOUT_MS + 10_000);
    if (a.status !== 200) this.fail(`${op.kind} ${op.vm} (${id}) did not reach ${want}${ready ? ' and ready' : ''}: ${a.status} ${a.text.slice(0, 300)}`);
  }

  private async until(ms: number, f: () => Promise<boolean>): Promise<boolean> {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      if (await f()) return true;
      await sleep(100);
    }
    return false;
  }

  // ---- the kill ---------------------------------------------------------------------------

  private async killAndCheck(op: Op, pending?: Promise<{ op: Op; answer: Answer | undefined }>): Promise<void> {
    const k = this.plan.kill;
    let from: number;
    let grace = 0;
    if (k.victim !== 'vmm') {
      await this.t.kill9(k.victim);
      this.result.killed = k.victim;
      this.result.didKill = true;
      this.result.restartMs = await this.t.restart(k.victim);
      from = Date.now();
      grace = this.t.graceMs(k.victim);
      const done = pending ? await pending : undefined;
      if (done?.answer) this.log(`  ${op.kind} in flight at the kill: ${done.answer.status || `no answer (${done.answer.error})`}`);
    } else {
      const qemus = qemuProcessesUnder(this.t.vmmDataDir);
      const target = this.vmId(op.vm);
      const order = [...this.vms.values()].map((v) => v.id);
      const byOrder = qemus.sort((a, b) => order.indexOf(a.id) - order.indexOf(b.id) || a.id.localeCompare(b.id));
      const victim = byOrder.find((q) => q.id === target) ?? byOrder[Math.floor(k.pick * byOrder.length)];
      if (victim) {
        try {
          process.kill(victim.pid, 'SIGKILL');
        } catch {
          /* gone meanwhile */
        }
        this.killedVmms.add(victim.id);
        this.result.killed = `vmm of ${victim.id}`;
        this.result.didKill = true;
      } else this.result.killed = 'no VMM was running';
      from = Date.now();
      const done = pending ? await pending : undefined;
      if (done?.answer && (done.answer.status < 200 || done.answer.status >= 300)) this.log(`  ${op.kind} during the VMM kill answered ${done.answer.status}: ${done.answer.text.slice(0, 200)}`);
    }
    await this.converge(from, grace);
    await this.recover();
  }

  private async resolveMaybes(): Promise<void> {
    for (const v of this.vms.values()) {
      if (v.id) continue;
      const a = await this.t.call('GET', `/microvms/${v.name}`);
      if (a.status === 200) v.id = a.json.id as string;
    }
    for (const r of this.res.values()) {
      if (r.id) continue;
      const a = await this.t.call('GET', `/${r.kind === 'snapshot' ? 'snapshots' : 'volumes'}/${r.name}`);
      if (a.status === 200) r.id = a.json.id as string;
    }
  }

  private async listAll(): Promise<{ vms: any[]; snaps: any[]; vols: any[]; volsnaps: any[] } | undefined> {
    const [a, b, c, d] = await Promise.all([this.t.call('GET', '/microvms?limit=500'), this.t.call('GET', '/snapshots'), this.t.call('GET', '/volumes'), this.t.call('GET', '/volumesnapshots')]);
    if ([a, b, c, d].some((x) => x.status !== 200)) return undefined;
    return { vms: a.json.items, snaps: b.json.items, vols: c.json.items, volsnaps: d.json.items };
  }

  /** One look: why the control plane has not converged (empty: it has), and how to ask the guests. */
  private async look(): Promise<{ controlPlane: string[]; guests: () => Promise<string[]> }> {
    // Creates in flight: did they happen? (by name; an answer-less create may have been written)
    await this.resolveMaybes();
    const all = await this.listAll();
    if (!all) return { controlPlane: ['the API does not answer its lists'], guests: async () => [] };
    const why: string[] = [];
    for (const vm of all.vms) {
      const ph = vm.status.phase as string;
      const d = vm.desiredState as string;
      if (TRANSITIONAL.includes(ph)) {
        why.push(`${vm.name} ${vm.id} is ${ph} (desired ${d})`);
        continue;
      }
      if (ph === 'Failed') {
        if (!this.killedVmms.has(vm.id) || !killedReason(vm.status.reason, vm.status.message)) why.push(`${vm.name} ${vm.id} is Failed (${vm.status.reason}: ${vm.status.message}) though its VMM was not killed`);
        continue;
      }
      if (ph !== d) why.push(`${vm.name} ${vm.id} is ${ph} but its desired state is ${d}`);
    }
    for (const s of all.snaps) if (s.phase !== 'Ready') why.push(`snapshot ${s.name} ${s.id} is ${s.phase}`);
    for (const s of all.volsnaps) if (s.phase !== 'Ready') why.push(`volume snapshot ${s.name} ${s.id} is ${s.phase}`);
    for (const v of all.vols) {
      const att = (v.status.attachedTo as Array<{ vmId: string }>).filter((x) => all.vms.some((vm) => vm.id === x.vmId));
      if (!['Available', 'InUse'].includes(v.status.phase)) why.push(`volume ${v.name} ${v.id} is ${v.status.phase}`);
      else if ((v.status.phase === 'InUse') !== att.length > 0 || att.length !== v.status.attachedTo.length) why.push(`volume ${v.name} ${v.id} is ${v.status.phase} attached to ${JSON.stringify(v.status.attachedTo)}`);
    }
    why.push(...this.ownership(all, this.t.inventory()));
    why.push(...(this.t.extraChecks?.() ?? []));
    why.push(...(await this.ackedProblems()));
    // Observed state is what the guest does, not only what the record says: a Running VM's guest
    // is ready and runs commands (its agent answers an exec), a Paused one's does not.
    return { controlPlane: why, guests: () => this.guestsAnswer(all.vms) };
  }

  private async guestsAnswer(vms: any[]): Promise<string[]> {
    const out: string[] = [];
    for (const vm of vms) {
      if (vm.status.phase !== 'Running' && vm.status.phase !== 'Paused') continue;
      if (vm.status.phase === 'Running' && !vm.status.conditions.some((c: { type: string; status: string }) => c.type === 'GuestReady' && c.status === 'True')) {
        out.push(`${vm.name} ${vm.id} is Running, its guest not ready yet`);
        continue;
      }
      const a = await this.t.call('POST', `/microvms/${vm.id}/exec`, { cmd: ['true'], timeout: '5s' }, 15_000);
      if (vm.status.phase === 'Running' && (a.status !== 200 || a.json?.exitCode !== 0)) out.push(`${vm.name} ${vm.id} is Running but its guest does not answer: ${a.status} ${a.error ?? a.text.slice(0, 200)}`);
      if (vm.status.phase === 'Paused' && a.status === 200) out.push(`${vm.name} ${vm.id} is Paused but its guest runs commands`);
    }
    return out;
  }

  /** Everything on the host of this service is owned by a live VM, snapshot or volume. */
  private ownership(all: { vms: any[]; snaps: any[]; vols: any[]; volsnaps: any[] }, inv: Inventory): string[] {
    const out: string[] = [];
    const live = all.vms.filter((v) => v.status.phase === 'Running' || v.status.phase === 'Paused');
    const liveIds = live.map((v) => v.id as string).sort();
    const allIds = new Set(all.vms.map((v) => v.id as string));
    const same = (what: string, got: string[], want: string[]): void => {
      const g = [...got].sort();
      const w = [...want].sort();
      if (JSON.stringify(g) !== JSON.stringify(w)) out.push(`${what}: ${JSON.stringify(g)}, expected ${JSON.stringify(w)} (the running/paused VMs)`);
    };
    same('QEMU processes', inv.qemu, liveIds);
    const others = inv.processes.filter((p) => !p.comm.startsWith('qemu-system'));
    if (others.length) out.push(`processes besides the VMMs: ${others.map((p) => `${p.comm}[${p.pid}]`).join(', ')}`);
    same('VM network namespaces', inv.netns, liveIds);
    same('cgroups', inv.cgroups, liveIds);
    same('IPAM lease holders', inv.ipam.map((l) => l.holder), liveIds);
    if (inv.links.veth.length !== live.length) out.push(`veths on the bridge: ${inv.links.veth.length}, expected ${live.length}`);
    if (inv.links.tap.length) out.push(`taps outside VM namespaces: ${inv.links.tap.join(', ')}`);
    if (inv.nft.vmChains !== live.length) out.push(`nftables VM chains: ${inv.nft.vmChains}, expected ${live.length}`);
    const ips = new Set(live.flatMap((v) => (v.status.interfaces ?? []).map((n: { ip: string }) => n.ip)));
    const stray = inv.nft.addresses.filter((a) => !ips.has(a));
    if (stray.length) out.push(`nftables sets hold addresses of no live VM: ${stray.join(', ')}`);
    // A VM namespace is a bind mount under /run/netns: the live VMs' ones are theirs.
    const strayMounts = inv.mounts.filter((m) => !liveIds.some((id) => (m.endsWith(`.${id}`) || m.endsWith(`-${id}`)) && m.includes("/netns/")));
    if (strayMounts.length) out.push(`mounts: ${strayMounts.join(', ')}`);
    if (inv.loops.length) out.push(`loop devices: ${inv.loops.join(', ')}`);
    const strayDirs = inv.vmDirs.filter((d) => !allIds.has(d));
    if (strayDirs.length) out.push(`VM directories of no VM: ${strayDirs.join(', ')}`);
    const strayLeases = inv.uidLeases.filter((l) => !allIds.has(l.id));
    if (strayLeases.length) out.push(`uid leases of no VM: ${strayLeases.map((l) => `${l.uid}:${l.id}`).join(', ')}`);
    same('snapshot directories', inv.snapshotDirs, all.snaps.map((s) => s.id as string));
    same('volume files', inv.volumeFiles, all.vols.map((v) => `${v.id as string}.img`));
    same('volume snapshot files', inv.volumeSnapshotFiles, all.volsnaps.map((s) => `${s.id as string}.img`));
    const partial = inv.files.filter((f) => /\.(tmp|fuse|qsd\.pid)$|\.tmp\//.test(f) || f.includes('(unreadable)'));
    if (partial.length) out.push(`half-written files: ${partial.join(', ')}`);
    return out;
  }

  private async converge(from: number, grace: number): Promise<void> {
    const deadlines = { controlPlaneMs: CONTROL_PLANE_DEADLINE_MS + grace, guestMs: GUEST_DEADLINE_MS + grace };
    const c = await pollUntilConverged(() => this.look(), from, deadlines);
    this.result.deadlineMs = deadlines.controlPlaneMs;
    this.result.guestDeadlineMs = deadlines.guestMs;
    if (c.controlPlaneMs !== undefined) this.result.convergenceMs = c.controlPlaneMs;
    if (c.guestMs !== undefined) this.result.guestMs = c.guestMs;
    this.log(`  control plane converged in ${c.controlPlaneMs ?? '–'} ms (deadline ${deadlines.controlPlaneMs / 1000} s), guests in ${c.guestMs ?? '–'} ms (deadline ${deadlines.guestMs / 1000} s)`);
    const after = this.plan.kill.victim === 'vmm' ? 'the VMM kill' : 'the restart';
    for (const f of c.failures) this.fail(`${f.replace(' after:', ` after ${after}:`)}`);
  }

  /** Why an acknowledged write is not there, or a write in flight happened half (empty: none). */
  private async ackedProblems(): Promise<string[]> {
    const out: string[] = [];
    for (const v of this.vms.values()) {
      const a = v.id ? await this.t.call('GET', `/microvms/${v.id}`) : await this.t.call('GET', `/microvms/${v.name}`);
      if (v.deleted === 'acked') {
        if (a.status !== 404) out.push(`VM ${v.name}: delete was acknowledged, GET answers ${a.status}`);
        continue;
      }
      if (a.status === 404) {
        if (v.created === 'acked' && !v.deleted) out.push(`VM ${v.name} ${v.id}: create was acknowledged, the VM is gone (lost write)`);
        continue;
      }
      if (a.status !== 200) {
        out.push(`VM ${v.name}: GET answers ${a.status}`);
        continue;
      }
      const vm = a.json;
      if (!v.desired.has(vm.desiredState)) out.push(`VM ${v.name} ${vm.id}: desired state ${vm.desiredState}, acknowledged ${[...v.desired].join(' or ')} (lost write)`);
      if (v.labels) {
        const got = JSON.stringify(vm.spec.labels);
        if (got !== JSON.stringify(v.labels.want) && (!v.labels.alt || got !== JSON.stringify(v.labels.alt))) out.push(`VM ${v.name} ${vm.id}: labels ${got}, acknowledged ${JSON.stringify(v.labels.want)} (lost write)`);
      }
    }
    for (const r of this.res.values()) {
      const path = r.kind === 'snapshot' ? 'snapshots' : 'volumes';
      const a = await this.t.call('GET', `/${path}/${r.id ?? r.name}`);
      if (r.deleted === 'acked') {
        if (a.status !== 404) out.push(`${r.kind} ${r.name}: delete was acknowledged, GET answers ${a.status}`);
        continue;
      }
      if (a.status === 404) {
        if (r.created === 'acked' && !r.deleted) out.push(`${r.kind} ${r.name} ${r.id}: create was acknowledged, it is gone (lost write)`);
        continue;
      }
      const phase = r.kind === 'snapshot' ? a.json?.phase : a.json?.status?.phase;
      if (a.status !== 200 || !['Ready', 'Available', 'InUse'].includes(phase)) out.push(`${r.kind} ${r.name}: ${a.status} phase ${phase}`);
    }
    return out;
  }

  /** A VM whose VMM was killed is Failed: starting it again must boot it. */
  private async recover(): Promise<void> {
    for (const id of this.killedVmms) {
      const a = await this.t.call('GET', `/microvms/${id}`);
      if (a.status !== 200 || a.json.status.phase !== 'Failed') continue;
      const s = await this.t.call('POST', `/microvms/${id}/start`);
      if (s.status !== 202) {
        this.fail(`start of ${id} after its VMM was killed answered ${s.status}: ${s.text.slice(0, 200)}`);
        continue;
      }
      const w = await this.t.call('GET', `/microvms/${id}/wait?phase=Running&ready=true&timeout=${BOOT_TIMEOUT_MS / 1000}s`, undefined, BOOT_TIMEOUT_MS + 10_000);
      if (w.status !== 200) this.fail(`${id} did not boot again after its VMM was killed: ${w.status} ${w.text.slice(0, 300)}`);
      else for (const v of this.vms.values()) if (v.id === id) v.desired = new Set(['Running']);
    }
  }

  // ---- the end -------------------------------------------------------------------------

  /** Delete everything this iteration made (whatever the service lists), then the host must be as before. */
  private async teardown(before: Inventory): Promise<void> {
    const all = await this.listAll();
    if (!all) {
      this.fail('teardown: the API does not answer');
      return;
    }
    for (const vm of all.vms) {
      const a = await this.t.call('DELETE', `/microvms/${vm.id}`);
      if (a.status !== 202 && a.status !== 404) this.fail(`teardown: delete of VM ${vm.id} answered ${a.status}: ${a.text.slice(0, 200)}`);
    }
    if (!(await this.until(60_000, async () => (await this.t.call('GET', '/microvms?limit=500')).json?.items?.length === 0))) {
      this.fail(`teardown: VMs still listed 60 s after their delete: ${JSON.stringify((await this.t.call('GET', '/microvms?limit=500')).json?.items?.map((v: any) => [v.id, v.status.phase]))}`);
    }
    for (const s of all.snaps) {
      const a = await this.t.call('DELETE', `/snapshots/${s.id}`);
      if (a.status !== 204 && a.status !== 404) this.fail(`teardown: delete of snapshot ${s.id} answered ${a.status}: ${a.text.slice(0, 200)}`);
    }
    for (const s of all.volsnaps) {
      const a = await this.t.call('DELETE', `/volumesnapshots/${s.id}`);
      if (a.status !== 204 && a.status !== 404) this.fail(`teardown: delete of volume snapshot ${s.id} answered ${a.status}: ${a.text.slice(0, 200)}`);
    }
    for (const v of all.vols) {
      // A volume stays claimed until the store's delete of its VM reached the volume service.
      let a: Answer | undefined;
      await this.until(15_000, async () => {
        a = await this.t.call('DELETE', `/volumes/${v.id}`);
        return a.status !== 409;
      });
      if (a && a.status !== 204 && a.status !== 404) this.fail(`teardown: delete of volume ${v.id} answered ${a.status}: ${a.text.slice(0, 200)}`);
    }
    let diff: string[] = [];
    const clean = await this.until(15_000, async () => {
      diff = diffInventory(before, this.t.inventory());
      return diff.length === 0;
    });
    if (!clean) this.fail(`leaked after everything was deleted: ${diff.join('; ')}`);
  }
}

/** Summary figures of a run (README "Chaos"): the totals, then kills per operation hit and victim. */
export function summarize(results: IterationResult[]): string {
  const pct = (xs: number[], p: number): number | string => {
    if (!xs.length) return '–';
    const s = [...xs].sort((a, b) => a - b);
    return s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)]!;
  };
  const fig = (xs: number[]): string => (xs.length ? `${pct(xs, 50)} / ${pct(xs, 99)} / ${Math.max(...xs)}` : '–');
  const conv = results.map((r) => r.convergenceMs).filter((x): x is number => x !== undefined);
  const guest = results.map((r) => r.guestMs).filter((x): x is number => x !== undefined);
  const restart = results.map((r) => r.restartMs).filter((x): x is number => x !== undefined);
  const failed = results.filter((r) => r.failures.length);
  const lines = [
    `| iterations | kills done | failed | control plane converged p50 / p99 / max (ms) | guests ready p50 / p99 / max (ms) | restart of the killed process p50 / max (ms) | acked writes | no answer or 5xx (kill mid-request) |`,
    `|--:|--:|--:|--:|--:|--:|--:|--:|`,
    `| ${results.length} | ${results.filter((r) => r.didKill).length} | ${failed.length} | ${fig(conv)} | ${fig(guest)} | ${restart.length ? `${pct(restart, 50)} / ${Math.max(...restart)}` : '–'} | ${results.reduce((s, r) => s + r.acked, 0)} | ${results.reduce((s, r) => s + r.inFlight, 0)} |`,
    '',
  ];
  // Kills per operation hit (during its work / after it settled) and victim; a VMM kill that found no VMM is not a kill.
  const victims = [...new Set(results.map((r) => r.victim))].sort();
  const ops = [...new Set(results.map((r) => r.op))].sort();
  lines.push(`| operation hit | ${victims.map((v) => `${v} during / after`).join(' | ')} | kills | failed |`, `|---|${victims.map(() => '--:|').join('')}--:|--:|`);
  for (const op of ops) {
    const of = results.filter((r) => r.op === op && r.didKill);
    const cell = (v: string): string => `${of.filter((r) => r.victim === v && r.when === 'during').length} / ${of.filter((r) => r.victim === v && r.when === 'after').length}`;
    lines.push(`| ${op} | ${victims.map(cell).join(' | ')} | ${of.length} | ${of.filter((r) => r.failures.length).length} |`);
  }
  const none = results.filter((r) => !r.didKill);
  if (none.length) lines.push('', `No victim at the kill point (no VMM ran): ${none.length} (seeds ${none.map((r) => r.seed).join(', ')}).`);
  if (failed.length) {
    lines.push('', `Failing seeds (replay: \`make ${results[0]?.mode === 'cluster' ? 'chaos-cluster' : 'chaos'} SEED=<seed> ITERATIONS=1\`):`);
    for (const r of failed) lines.push(`- seed ${r.seed}: ${r.failures.map((f) => f.split('\n')[0]).join(' / ')}`);
  }
  return lines.join('\n');
}

/**
 * Why a VM whose VMM we killed may be Failed: it exited or was lost, or it was killed while it
 * started (StartFailed, whatever launch step noticed it: QMP, the snapshot stream, the restored
 * guest's agent; the message names the signal only where that step could see the exit).
 */
export function killedReason(reason: string | undefined, _message: string | undefined): boolean {
  return reason === 'VmmExited' || reason === 'VmmLost' || reason === 'StartFailed';
}
