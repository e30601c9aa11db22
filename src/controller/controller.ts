/**
 * The controller: reconciles each microVM's desired state (spec + desiredState)
 * with what the node agent observes, one idempotent step per pass, re-planned
 * on every pass ("measure, then act"). Driven by store changes and agent events
 * plus a periodic resync that also removes whatever belongs to no VM.
 */
import type { Logger } from 'pino';
import { asMvmError } from '../core/errors.js';
import { ConditionTypes, assertTransition, requestDelete, requestStop, requestSuspend, setCondition, type MicroVM, type Phase } from '../core/microvm.js';
import { activity, clockRuns, evaluateLifetime, type LifetimeClock } from '../core/lifetimes.js';
import type { ActualVm, NodeAgent } from '../core/ports/agent.js';
import type { Store, VmEvent } from '../core/ports/store.js';
import { unschedulableMessage, type Scheduler } from '../scheduler/scheduler.js';
import { holdsPlacement } from '../scheduler/state.js';
import { observability } from '../observability/index.js';

export interface ControllerOptions {
  store: Store;
  agent: NodeAgent;
  scheduler: Scheduler;
  log: Logger;
  resyncMs?: number;
  /** Graceful stop timeout before the VMM is killed. */
  stopTimeoutMs?: number;
}

type Patch = (vm: MicroVM) => void;

export class Controller {
  private readonly queue = new Set<string>();
  private readonly running = new Map<string, Promise<void>>();
  private readonly again = new Set<string>();
  private resyncTimer: NodeJS.Timeout | undefined;
  private unsubs: Array<() => void> = [];
  private stopped = false;
  private readonly failures = new Map<string, number>();
  /** Wake-ups at the next lifetime deadline of a VM (timeout, idle). */
  private readonly wakes = new Map<string, NodeJS.Timeout>();
  /** Its NICs' byte count at the previous lifetime step (traffic since then is activity). */
  private readonly netSeen = new Map<string, number>();

  constructor(private readonly o: ControllerOptions) {}

  async start(): Promise<void> {
    observability.attachStore(this.o.store);
    await this.o.agent.start();
    this.unsubs.push(this.o.store.watch((c) => this.enqueue(c.id)));
    this.unsubs.push(
      this.o.agent.onEvent((e) => {
        this.enqueue(e.id);
      }),
    );
    await this.resync();
    const tick = (): void => {
      void this.resync().finally(() => {
        if (!this.stopped) this.resyncTimer = setTimeout(tick, this.o.resyncMs ?? 10000);
      });
    };
    this.resyncTimer = setTimeout(tick, this.o.resyncMs ?? 10000);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.resyncTimer);
    for (const t of this.wakes.values()) clearTimeout(t);
    this.wakes.clear();
    for (const u of this.unsubs) u();
    await Promise.allSettled([...this.running.values()]);
  }

  /** Every VM in the store, plus every id the node has resources of. */
  async resync(): Promise<void> {
    const known = await this.o.agent.known();
    let cursor: string | undefined;
    do {
      const page = await this.o.store.listVms({ limit: 500, ...(cursor ? { cursor } : {}) });
      for (const vm of page.items) this.enqueue(vm.id);
      cursor = page.nextCursor;
    } while (cursor);
    for (const id of known) this.enqueue(id);
  }

  enqueue(id: string): void {
    if (this.stopped) return;
    if (this.running.has(id)) {
      this.again.add(id);
      return;
    }
    if (this.queue.has(id)) return;
    this.queue.add(id);
    queueMicrotask(() => this.kick(id));
  }

  /** Resolves when the id's queue is drained (tests, shutdown). */
  async settle(id: string): Promise<void> {
    while (this.running.has(id) || this.queue.has(id)) await (this.running.get(id) ?? new Promise((r) => setTimeout(r, 10)));
  }

  private kick(id: string): void {
    if (!this.queue.delete(id) || this.running.has(id)) return;
    const p = observability.reconcile(id, this.queue.size, () => this.reconcile(id))
      .then(() => {
        this.failures.delete(id);
      })
      .catch((e) => {
        const n = (this.failures.get(id) ?? 0) + 1;
        this.failures.set(id, n);
        const delay = Math.min(30000, 250 * 2 ** Math.min(n, 7));
        this.o.log.warn({ vm: id, err: asMvmError(e).message, retryInMs: delay }, 'reconcile failed');
        setTimeout(() => this.enqueue(id), delay).unref();
      })
      .finally(() => {
        this.running.delete(id);
        if (this.again.delete(id)) this.enqueue(id);
      });
    this.running.set(id, p);
  }

  private async event(vm: MicroVM, type: VmEvent['type'], reason: string, message: string): Promise<void> {
    await this.o.store.appendEvent({ vmId: vm.id, tenant: vm.tenant, time: new Date().toISOString(), type, reason, message });
    this.o.log.info({ vm: vm.id, reason, type }, message);
  }

  /**
   * Move a VM to `to` only if it is still in one of `from` (the user may have
   * acted meanwhile); returns the updated VM or undefined if it moved on.
   */
  private async transition(vm: MicroVM, from: Phase[], to: Phase, patch?: Patch): Promise<MicroVM | undefined> {
    let applied = false;
    const next = await this.o.store.updateVm(vm.id, (cur) => {
      if (!from.includes(cur.status.phase) || cur.desiredState !== vm.desiredState) return cur;
      assertTransition(cur.status.phase, to);
      cur.status.phase = to;
      patch?.(cur);
      cur.status.observedGeneration = cur.generation;
      applied = true;
      return cur;
    });
    return applied ? next : undefined;
  }

  private async patchStatus(vm: MicroVM, patch: Patch): Promise<MicroVM> {
    return this.o.store.updateVm(vm.id, (cur) => {
      patch(cur);
      return cur;
    });
  }

  async reconcile(id: string): Promise<void> {
    const vm = await this.o.store.getVm(id);
    const actual = this.o.agent.observe(id);
    if (!vm) {
      // Resources of a VM that no longer exists (deleted while we were down, or a crash mid-delete).
      if (actual.state !== 'absent' || (await this.o.agent.known()).includes(id)) {
        this.o.log.info({ vm: id }, 'removing resources of a microVM that does not exist');
        await this.o.agent.ensureAbsent(id);
      }
      return;
    }
    const now = new Date().toISOString();
    const phase = vm.status.phase;

    if (phase === 'Deleting') {
      await this.o.agent.ensureAbsent(id);
      await this.o.store.deleteVm(id);
      await this.event(vm, 'Normal', 'Deleted', 'microVM deleted and its resources removed');
      return;
    }

    if (await this.lifetimeStep(vm)) return;

    if (vm.desiredState === 'Suspended') {
      await this.reconcileSuspend(vm, actual);
      return;
    }

    if (vm.desiredState === 'Stopped') {
      if (phase === 'Suspended') {
        // A stop of a suspended VM discards its memory on disk: its next start boots.
        await this.o.agent.discardSuspend?.(id);
        await this.o.agent.ensureStopped(id, this.o.stopTimeoutMs);
        const done = await this.transition(vm, ['Suspended'], 'Stopped', (v) => {
          v.status.stoppedAt = now;
          delete v.status.ip;
          delete v.status.interfaces;
          delete v.status.suspendedAt;
          v.status.conditions = setCondition(v.status.conditions, { type: ConditionTypes.VmmRunning, status: 'False', reason: 'Stopped' }, now);
        });
        if (done) await this.event(done, 'Normal', 'Stopped', 'microVM stopped: its suspended memory was discarded (the next start boots)');
        return;
      }
      if (phase === 'Pending' || phase === 'Scheduled') {
        await this.transition(vm, [phase], 'Stopped', (v) => {
          v.status.stoppedAt = now;
        });
        return;
      }
      if (phase === 'Failed') {
        if (actual.state === 'running' || actual.state === 'starting') await this.o.agent.ensureStopped(id, this.o.stopTimeoutMs);
        return;
      }
      if (phase === 'Stopping' || actual.state === 'running' || actual.state === 'starting' || actual.state === 'paused') {
        if (phase !== 'Stopping') {
          const v = await this.transition(vm, [phase], 'Stopping');
          if (!v) return;
        }
        await this.o.agent.ensureStopped(id, this.o.stopTimeoutMs);
        const done = await this.transition({ ...vm, status: { ...vm.status, phase: 'Stopping' } }, ['Stopping'], 'Stopped', (v) => {
          v.status.stoppedAt = new Date().toISOString();
          v.status.conditions = setCondition(v.status.conditions, { type: ConditionTypes.VmmRunning, status: 'False', reason: 'Stopped' }, now);
          v.status.conditions = setCondition(v.status.conditions, { type: ConditionTypes.GuestReady, status: 'False', reason: 'Stopped' }, now);
          delete v.status.pid;
          delete v.status.guestAgent;
          delete v.status.reason;
          delete v.status.message;
          delete v.status.ip;
          delete v.status.interfaces;
        });
        if (done) await this.event(done, 'Normal', 'Stopped', 'microVM stopped');
      }
      return;
    }

    // desiredState === 'Running'
    switch (phase) {
      case 'Suspended':
        return; // a resume moves it to Scheduled (service.resume)
      case 'Failed':
      case 'Stopped':
      case 'Stopping':
        // A failed VM stays failed until the user starts it again (restart policy: never).
        if (phase === 'Stopping') await this.transition(vm, ['Stopping'], 'Stopped');
        return;
      case 'Pending': {
        const info = await this.o.agent.info();
        const placed: MicroVM[] = [];
        let cursor: string | undefined;
        do {
          const page = await this.o.store.listVms({ limit: 1000, ...(cursor ? { cursor } : {}) });
          placed.push(...page.items.filter(holdsPlacement));
          cursor = page.nextCursor;
        } while (cursor);
        const placement = this.o.scheduler.place(vm, [info], placed);
        observability.schedulerDecision(placement);
        if (!placement.node) {
          const msg = unschedulableMessage(placement);
          const conds = setCondition(vm.status.conditions, { type: ConditionTypes.Scheduled, status: 'False', reason: 'Unschedulable', message: msg }, now);
          // Write only a change: every write re-queues the VM.
          if (conds !== vm.status.conditions) {
            await this.patchStatus(vm, (v) => {
              v.status.conditions = setCondition(v.status.conditions, { type: ConditionTypes.Scheduled, status: 'False', reason: 'Unschedulable', message: msg }, now);
            });
            await this.event(vm, 'Warning', 'Unschedulable', msg);
          }
          return; // retried on the next resync
        }
        const v = await this.transition(vm, ['Pending'], 'Scheduled', (x) => {
          x.status.node = placement.node!;
          x.status.conditions = setCondition(x.status.conditions, { type: ConditionTypes.Scheduled, status: 'True', reason: 'Placed', message: `placed on ${placement.node}` }, now);
        });
        if (v) {
          await this.event(v, 'Normal', 'Scheduled', `placed on node ${placement.node}`);
          this.enqueue(id);
        }
        return;
      }
      case 'Scheduled':
      case 'Starting': {
        if (actual.state === 'running' || actual.state === 'paused') {
          await this.markRunning(vm, actual);
          return;
        }
        let v: MicroVM | undefined = vm;
        if (phase === 'Scheduled') {
          v = await this.transition(vm, ['Scheduled'], 'Starting', (x) => {
            delete x.status.reason;
            delete x.status.message;
            delete x.status.readyAt;
            delete x.status.bootMs;
            delete x.status.stoppedAt;
          });
          if (!v) return;
          await this.event(v, 'Normal', 'Starting', actual.state === 'suspended' ? 'resuming the microVM from its memory on disk' : 'booting the microVM');
        }
        try {
          const a = await this.o.agent.ensureRunning(v);
          await this.markRunning(v, a);
        } catch (e) {
          const err = asMvmError(e);
          const f = await this.transition(v, ['Starting'], 'Failed', (x) => {
            x.status.reason = 'StartFailed';
            x.status.message = err.message;
            x.status.conditions = setCondition(x.status.conditions, { type: ConditionTypes.VmmRunning, status: 'False', reason: 'StartFailed', message: err.message }, now);
          });
          if (f) await this.event(f, 'Warning', 'StartFailed', err.message);
        }
        return;
      }
      case 'Running':
      case 'Paused':
      case 'Suspending': {
        // The vCPUs as desired, measured on the VMM (not inferred from the phase): a pause or resume
        // whose phase write a crash lost, or a VMM the service left paused when it died mid-snapshot
        // (QEMU stays stopped after an interrupted migration), is re-adopted paused and resumed here.
        if (actual.state === 'running' || actual.state === 'paused') {
          const want = vm.desiredState === 'Paused' ? 'paused' : 'running';
          const wantPhase: Phase = want === 'paused' ? 'Paused' : 'Running';
          if (actual.state !== want) {
            if (want === 'paused') await this.o.agent.pause(id);
            else await this.o.agent.resume(id);
          }
          if (phase !== wantPhase) {
            const v = await this.transition(vm, [phase], wantPhase);
            if (v) await this.event(v, 'Normal', want === 'paused' ? 'Paused' : 'Resumed', want === 'paused' ? 'guest vCPUs paused' : 'guest vCPUs resumed');
            return;
          }
          if (actual.state !== want) {
            await this.event(vm, 'Warning', want === 'paused' ? 'Paused' : 'Resumed', `the VMM was found ${actual.state} while the microVM is ${phase}: guest vCPUs ${want === 'paused' ? 'paused' : 'resumed'}`);
          }
          await this.syncRunning(vm, { ...actual, state: want });
          return;
        }
        if (actual.state === 'starting') {
          await this.syncRunning(vm, actual);
          return;
        }
        if (actual.state === 'suspended' && phase !== 'Paused') {
          // The suspend completed although a resume had come (or its phase write was lost): restore it.
          const v = await this.transition(vm, [phase], 'Starting');
          if (v) await this.event(v, 'Normal', 'Starting', 'resuming the microVM from its memory on disk');
          return;
        }
        if (actual.state === 'stopped' && actual.reason === 'GuestShutdown') {
          // The guest powered itself off: that is a stop, not a failure.
          const v = await this.o.store.updateVm(id, (x) => {
            if (x.status.phase !== phase) return x;
            x.status.phase = 'Stopped';
            x.desiredState = 'Stopped';
            x.status.reason = 'GuestShutdown';
            x.status.message = actual.message ?? 'guest powered off';
            x.status.stoppedAt = now;
            delete x.status.pid;
            delete x.status.guestAgent;
            delete x.status.ip;
            delete x.status.interfaces;
            x.status.conditions = setCondition(x.status.conditions, { type: ConditionTypes.VmmRunning, status: 'False', reason: 'GuestShutdown' }, now);
            x.status.conditions = setCondition(x.status.conditions, { type: ConditionTypes.GuestReady, status: 'False', reason: 'GuestShutdown' }, now);
            return x;
          });
          await this.event(v, 'Normal', 'GuestShutdown', v.status.message ?? 'guest powered off');
          await this.o.agent.ensureStopped(id, 1000);
          return;
        }
        const reason = actual.state === 'failed' ? (actual.reason ?? 'VmmExited') : 'VmmLost';
        const message =
          actual.state === 'failed'
            ? (actual.message ?? 'VMM process exited')
            : 'VMM process is not running (it exited while the service was not watching)';
        const f = await this.transition(vm, [phase], 'Failed', (x) => {
          x.status.reason = reason;
          x.status.message = message;
          delete x.status.pid;
          delete x.status.guestAgent;
          delete x.status.ip;
          delete x.status.interfaces;
          x.status.conditions = setCondition(x.status.conditions, { type: ConditionTypes.VmmRunning, status: 'False', reason, message }, now);
          x.status.conditions = setCondition(x.status.conditions, { type: ConditionTypes.GuestReady, status: 'False', reason }, now);
        });
        if (f) {
          await this.event(f, 'Warning', reason, message);
          await this.o.agent.ensureStopped(id, 1000); // release cgroup and sockets
        }
        return;
      }
    }
  }

  /**
   * desiredState Suspended (ADR 0035): Running/Paused -> Suspending -> (agent.suspend: memory and
   * devices to disk, VMM gone) -> Suspended. A resume meanwhile cancels the write (the service
   * calls agent.cancelSuspend) and the next pass finds the VM running; a failed suspend leaves the
   * VM as it was, with a SuspendFailed event.
   */
  private async reconcileSuspend(vm: MicroVM, actual: ActualVm): Promise<void> {
    const phase = vm.status.phase;
    if (phase !== 'Suspending' && phase !== 'Running' && phase !== 'Paused') return;
    let v: MicroVM | undefined = vm;
    if (phase !== 'Suspending') {
      v = await this.transition(vm, [phase], 'Suspending');
      if (!v) return;
    }
    const now = (): string => new Date().toISOString();
    const suspended = (x: MicroVM, r: { sizeBytes: number; durationMs: number }): void => {
      const t = now();
      x.status.suspendedAt = t;
      if (r.durationMs > 0 || !x.status.suspend) x.status.suspend = { sizeBytes: r.sizeBytes, durationMs: r.durationMs };
      delete x.status.pid;
      delete x.status.guestAgent;
      x.status.conditions = setCondition(x.status.conditions, { type: ConditionTypes.VmmRunning, status: 'False', reason: 'Suspended', message: 'memory and device state on disk' }, t);
      x.status.conditions = setCondition(x.status.conditions, { type: ConditionTypes.GuestReady, status: 'False', reason: 'Suspended' }, t);
    };
    if (actual.state !== 'running' && actual.state !== 'paused' && actual.state !== 'suspended') {
      const message = 'VMM process is not running and no complete suspend image exists';
      const f = await this.transition(v, ['Suspending'], 'Failed', (x) => {
        x.status.reason = 'VmmLost';
        x.status.message = message;
        delete x.status.pid;
        delete x.status.guestAgent;
        x.status.conditions = setCondition(x.status.conditions, { type: ConditionTypes.VmmRunning, status: 'False', reason: 'VmmLost', message }, now());
      });
      if (f) await this.event(f, 'Warning', 'VmmLost', message);
      return;
    }
    try {
      if (!this.o.agent.suspend) throw new Error('this node agent cannot suspend microVMs');
      const r = await this.o.agent.suspend(vm.id);
      const done = await this.transition(v, ['Suspending'], 'Suspended', (x) => suspended(x, r));
      if (done) {
        const mib = (r.sizeBytes / 1048576).toFixed(1);
        await this.event(done, 'Normal', 'Suspended', r.durationMs > 0 ? `memory and device state written to disk (${mib} MiB in ${r.durationMs} ms); no VMM runs` : `memory and device state on disk (${mib} MiB); no VMM runs`);
      }
    } catch (e) {
      const err = asMvmError(e);
      if (err.details.cancelled === true) {
        await this.event(v, 'Normal', 'SuspendCancelled', 'a resume cancelled the suspend; the microVM runs on');
        return;
      }
      // The VM runs on as it was (the driver resumed vCPUs it had stopped).
      const was = this.o.agent.observe(vm.id).state === 'paused' ? 'Paused' : 'Running';
      let applied = false;
      const back = await this.o.store.updateVm(vm.id, (x) => {
        if (x.status.phase !== 'Suspending' || x.desiredState !== 'Suspended') return x;
        x.desiredState = was;
        x.status.phase = was;
        applied = true;
        return x;
      });
      if (applied) await this.event(back, 'Warning', 'SuspendFailed', `${err.message}; the microVM stays ${was}`);
    }
  }

  /**
   * Lifetimes (spec.lifecycle.timeout / idleTimeout; src/core/lifetimes.ts): keep the clocks in
   * status.lifetime, act when one runs out (stop, suspend or delete, with a Timeout or Idle event),
   * and wake this VM's reconcile at the next deadline. True when it wrote (the write re-queues the VM).
   */
  private async lifetimeStep(vm: MicroVM): Promise<boolean> {
    const id = vm.id;
    clearTimeout(this.wakes.get(id));
    this.wakes.delete(id);
    const lc = vm.spec.lifecycle;
    if (!lc?.timeout && !lc?.idleTimeout && !vm.status.lifetime) return false;
    // Guest network traffic since the previous look is activity.
    if (lc?.idleTimeout && clockRuns(vm.status.phase)) {
      const bytes = this.o.agent.netBytes?.(id);
      const seen = this.netSeen.get(id);
      if (bytes !== undefined) {
        if (seen !== undefined && bytes !== seen) activity.touch(id);
        this.netSeen.set(id, bytes);
      }
    } else this.netSeen.delete(id);
    const d = evaluateLifetime(vm, Date.now(), activity.get(id));
    const writeClock = (x: MicroVM, clock: LifetimeClock | null | undefined): void => {
      if (clock === null) delete x.status.lifetime;
      else if (clock !== undefined) x.status.lifetime = clock;
    };
    if (d.action) {
      const a = d.action;
      let applied = false;
      const v = await this.o.store.updateVm(id, (x) => {
        if (!clockRuns(x.status.phase) || x.status.phase !== vm.status.phase || (x.desiredState !== 'Running' && x.desiredState !== 'Paused')) return x;
        writeClock(x, d.clock);
        if (a.action === 'stop') requestStop(x);
        else if (a.action === 'suspend') requestSuspend(x);
        else requestDelete(x);
        applied = true;
        return x;
      });
      if (applied) await this.event(v, 'Normal', a.reason, `${a.message}: ${a.action === 'stop' ? 'stopping' : a.action === 'suspend' ? 'suspending to disk' : 'deleting'} the microVM`);
      return true;
    }
    if (d.clock !== undefined) {
      await this.o.store.updateVm(id, (x) => {
        if (x.status.phase === vm.status.phase) writeClock(x, d.clock);
        return x;
      });
      return true;
    }
    if (d.wakeInMs !== undefined) {
      const t = setTimeout(() => this.enqueue(id), Math.min(d.wakeInMs + 25, 2 ** 31 - 1));
      t.unref();
      this.wakes.set(id, t);
    }
    return false;
  }

  private async markRunning(vm: MicroVM, a: ActualVm): Promise<void> {
    const now = new Date().toISOString();
    const v = await this.transition(vm, ['Scheduled', 'Starting'], 'Running', (x) => {
      applyActual(x, a, now);
    });
    if (v) await this.event(v, 'Normal', 'Started', `VMM running (pid ${a.pid}, ${a.driver}/${a.accel})`);
    if (v && a.ready) await this.event(v, 'Normal', 'GuestReady', 'guest reached init');
  }

  private async syncRunning(vm: MicroVM, a: ActualVm): Promise<void> {
    const wasReady = vm.status.conditions.find((c) => c.type === ConditionTypes.GuestReady)?.status === 'True';
    const now = new Date().toISOString();
    const timedOutBefore = vm.status.conditions.find((c) => c.type === ConditionTypes.GuestReady)?.reason === 'BootTimeout';
    const timedOut = !a.ready && a.bootTimedOut !== undefined;
    const needs =
      wasReady !== a.ready ||
      vm.status.pid !== a.pid ||
      (a.bootMs && vm.status.bootMs?.guestReady !== a.bootMs.guestReady) ||
      vm.status.accel !== a.accel ||
      vm.status.guestAgent?.version !== a.guestAgent?.version ||
      timedOut !== timedOutBefore ||
      // A spec change that needs no act (labels): still observed (`kubectl wait` on observedGeneration).
      (vm.status.observedGeneration ?? 0) < vm.generation;
    if (!needs) return;
    const v = await this.o.store.updateVm(vm.id, (x) => {
      if (x.status.phase !== 'Running' && x.status.phase !== 'Paused') return x;
      applyActual(x, a, now);
      // Only the generation this pass acted on: a newer one (a pause that came meanwhile) is the next pass's.
      if (x.generation === vm.generation && x.desiredState === vm.desiredState) x.status.observedGeneration = vm.generation;
      return x;
    });
    if (!wasReady && a.ready) await this.event(v, 'Normal', 'GuestReady', `guest reached init${a.bootMs?.guestReady ? ` (${a.bootMs.guestReady} ms after VMM start)` : ''}`);
    if (timedOut && !timedOutBefore) await this.event(v, 'Warning', 'BootTimeout', `${a.bootTimedOut} (kept running: MVM_BOOT_TIMEOUT_ACTION=keep)`);
  }
}

function applyActual(x: MicroVM, a: ActualVm, now: string): void {
  if (a.pid !== undefined) x.status.pid = a.pid;
  if (a.accel) x.status.accel = a.accel;
  if (a.driver) x.status.driver = a.driver;
  if (a.startedAt) x.status.startedAt = a.startedAt;
  if (a.readyAt) x.status.readyAt = a.readyAt;
  if (a.bootMs) x.status.bootMs = a.bootMs;
  if (a.ip) x.status.ip = a.ip;
  if (a.interfaces) x.status.interfaces = a.interfaces;
  if (a.guestAgent) x.status.guestAgent = a.guestAgent;
  else delete x.status.guestAgent;
  delete x.status.reason;
  delete x.status.message;
  x.status.conditions = setCondition(x.status.conditions, { type: ConditionTypes.VmmRunning, status: 'True', reason: 'Started', message: `pid ${a.pid}` }, now);
  x.status.conditions = setCondition(
    x.status.conditions,
    a.ready
      ? { type: ConditionTypes.GuestReady, status: 'True', reason: a.guestAgent ? 'AgentReady' : 'MarkerSeen' }
      : a.bootTimedOut
        ? { type: ConditionTypes.GuestReady, status: 'False', reason: 'BootTimeout', message: a.bootTimedOut }
        : { type: ConditionTypes.GuestReady, status: 'False', reason: 'Booting' },
    now,
  );
}
