/**
 * The node agent: owns each VM's directory, cgroup, disks and VMM process on
 * this node, watches the console for the guest's readiness marker and the VMM
 * for exits, and re-adopts running VMMs after its own restart.
 *
 * Layout: <dataDir>/vms/<id>/{vm.json, root.qcow2, console.log, vmm.log, qmp.sock, ...}
 * Order of creation: directory -> cgroup -> disk -> VMM. Teardown runs in reverse,
 * and the directory goes last, so after a crash at any point the directory is
 * what tells `start()`/`ensureAbsent()` there is something to clean up.
 */
import { createHash, randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { closeSync, constants, existsSync, mkdirSync, openSync, readFileSync, readdirSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { cpus, totalmem } from 'node:os';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ErrorCodes, MvmError, asMvmError } from '../core/errors.js';
import { memoryMiB, parseDurationMs, type MicroVM } from '../core/microvm.js';
import type { ActualVm, AgentEvent, NodeAgent, NodeInfo, TemplateBuildResult, TemplateBuildSpec } from '../core/ports/agent.js';
import type { NicAttachment } from '../core/ports/network.js';
import type { VmmInstance } from '../core/ports/vmm.js';
import type { VmMetricsT } from '../core/schema.js';
import { failedStep, runSteps } from '../core/steps.js';
import { GuestLink } from './guest-link.js';
import type { GuestAgentClient } from '../guest/index.js';
import { sleep } from '../vmm/proc.js';
import { RESTORE_PENDING, SUSPEND_DIR, bootSteps, migrateInSteps, restoreSourceOf, restoreSteps, resumeSteps, suspendComplete, templateFilesId, wantsRestore, type IncomingMigration, type Launch, type LaunchDeps, type LaunchEnv, type Runtime, type WatchOptions } from './launch-steps.js';
import { observability } from '../observability/index.js';
import { vmNetCounters } from '../observability/collectors.js';

export const READY_MARKER = 'MVM-READY';

export interface AgentOptions extends LaunchEnv {
  dataDir: string;
  log: Logger;
  labels?: Record<string, string>;
  /** Where template RAM files live (default /dev/shm/mvm-<hash of dataDir>/templates). */
  templateMemoryDir?: string;
}

export class LocalAgent implements NodeAgent {
  readonly nodeName: string;
  private readonly vms = new Map<string, Runtime>();
  private readonly events = new EventEmitter();
  private readonly vmsRoot: string;
  /** VMs building a template: internal to this agent, invisible to the controller (no microVM of the store owns them). */
  private readonly building = new Set<string>();
  /** VMs arriving by migration (docs/adr/0034): not bound here yet, so the controller must not remove them as orphans. */
  private readonly incoming = new Set<string>();
  /** VMs leaving by migration: paused for it, still shown running (the controller must not resume them meanwhile). */
  private readonly outgoing = new Set<string>();
  /** Launches of incoming migrations, restored and waiting for their resume call. */
  private readonly incomingLaunches = new Map<string, Launch>();

  constructor(private readonly options: AgentOptions) {
    this.nodeName = options.nodeName;
    this.vmsRoot = join(options.dataDir, 'vms');
    mkdirSync(this.vmsRoot, { recursive: true });
    this.events.setMaxListeners(0);
  }

  vmDir(id: string): string {
    return join(this.vmsRoot, id);
  }

  async info(): Promise<NodeInfo> {
    const caps = await this.options.driver.capabilities();
    return {
      name: this.nodeName,
      cpus: cpus().length,
      memoryMiB: Math.floor(totalmem() / 1024 / 1024),
      drivers: caps.available ? [caps.driver] : [],
      accel: caps.accel,
      labels: { ...(this.options.labels ?? {}), 'microvm.service/driver': caps.driver, 'microvm.service/accel': caps.accel },
      ready: caps.available,
    };
  }

  private runtimeOf(id: string): Runtime {
    let r = this.vms.get(id);
    if (!r) {
      r = { id, state: this.restingState(id), ready: false, stopping: false, lock: Promise.resolve() };
      this.vms.set(id, r);
    }
    return r;
  }

  /** The state of a VM without a VMM: suspended (complete suspend files), stopped (a directory) or absent. */
  private restingState(id: string): ActualVm['state'] {
    const dir = this.vmDir(id);
    return suspendComplete(dir) ? 'suspended' : existsSync(dir) ? 'stopped' : 'absent';
  }

  /** Run `fn` after every earlier operation on the same VM. */
  private serial<T>(id: string, fn: (r: Runtime) => Promise<T>): Promise<T> {
    const r = this.runtimeOf(id);
    const next = r.lock.then(() => fn(r));
    r.lock = next.catch(() => undefined);
    return next;
  }

  async start(): Promise<void> {
    observability.attachAgent(this, { vmsRoot: this.vmsRoot, log: this.options.log, cgroupParent: this.options.cgroups.parent });
    // 1. Re-adopt VMMs that outlived an earlier service process.
    for (const id of this.dirIds()) {
      const inst = await this.options.driver.adopt(id, this.vmDir(id));
      const r = this.runtimeOf(id);
      const atts = await this.options.network?.get(id).catch(() => undefined);
      if (atts) r.attachments = atts;
      if (inst && existsSync(join(this.vmDir(id), RESTORE_PENDING))) {
        // A restore cut short by the exit of the process that ran it (the chaos harness, a service
        // killed mid-restore): its VMM may hold a half-loaded guest, and the restored guest never
        // got this VM's identity (it still answers as its source), so it would never become
        // ready. Not adopted: it is stopped, and the controller, finding the VM Starting without a
        // VMM, runs the restore again (RESTORE_PENDING: every start restores until one succeeded).
        this.options.log.warn({ vm: id, pid: inst.pid }, 'a restore was cut short: its VMM is stopped, the restore runs again');
        r.inst = inst;
        r.state = 'running';
        await this.ensureStopped(id, 0);
        continue;
      }
      const suspendDir = join(this.vmDir(id), SUSPEND_DIR);
      const vmmState = inst ? await inst.state() : undefined;
      if (inst && vmmState === 'paused' && suspendComplete(this.vmDir(id))) {
        // A suspend that wrote everything before the service died, but whose VMM had not gone yet: finish it.
        this.options.log.info({ vm: id, pid: inst.pid }, 'finishing a suspend interrupted by the restart of the service');
        await inst.kill().catch(() => undefined);
        await this.options.cgroups.remove(id).catch(() => undefined);
        r.state = 'suspended';
        continue;
      }
      // A partial suspend (the service died while writing it), or the stale image of a VM that was resumed.
      if (existsSync(suspendDir) && (inst || !suspendComplete(this.vmDir(id)))) rmSync(suspendDir, { recursive: true, force: true });
      if (inst) {
        r.inst = inst;
        r.state = vmmState === 'paused' ? 'paused' : 'running';
        r.startedAt = new Date(Date.now()).toISOString();
        this.watch(r, inst, 0);
        this.options.log.info({ vm: id, pid: inst.pid }, 're-adopted running VMM');
      } else {
        r.state = this.restingState(id);
      }
    }
    // 2. Kill VMM processes of ours whose directory is gone (crash between teardown steps).
    for (const p of await this.options.driver.findProcesses(this.vmsRoot)) {
      if (!existsSync(p.vmDir) || !this.vms.get(p.id)?.inst) {
        this.options.log.warn({ vm: p.id, pid: p.pid }, 'killing orphaned VMM process');
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
  }

  private dirIds(): string[] {
    if (!existsSync(this.vmsRoot)) return [];
    return readdirSync(this.vmsRoot, { withFileTypes: true })
      .filter((e) => e.isDirectory())
      .map((e) => e.name);
  }

  async known(): Promise<string[]> {
    const ids = new Set(this.dirIds());
    for (const [id, r] of this.vms) if (r.inst || r.state !== 'absent') ids.add(id);
    for (const p of await this.options.driver.findProcesses(this.vmsRoot)) ids.add(p.id);
    for (const id of (await this.options.network?.list()) ?? []) ids.add(id);
    // A build under way is the template service's; after a crash its leftovers are ordinary orphans.
    return [...ids].filter((id) => !this.building.has(id) && !this.incoming.has(id));
  }

  observe(id: string): ActualVm {
    if (this.building.has(id) || this.incoming.has(id)) return { id, state: 'absent', ready: false };
    const r = this.vms.get(id);
    if (!r) return { id, state: this.restingState(id), ready: false };
    const a: ActualVm = { id, state: r.state, ready: r.ready };
    if (r.inst) {
      a.pid = r.inst.pid;
      a.accel = r.inst.accel;
      a.driver = r.inst.driver;
      a.config = r.inst.config;
    }
    if (r.startedAt) a.startedAt = r.startedAt;
    if (r.readyAt) a.readyAt = r.readyAt;
    if (r.bootMs) a.bootMs = r.bootMs;
    if (r.reason) a.reason = r.reason;
    if (r.message) a.message = r.message;
    if (r.bootTimedOut && !r.ready) a.bootTimedOut = r.bootTimedOut.message;
    if (r.agentVersion && r.inst) a.guestAgent = { version: r.agentVersion };
    if (r.attachments?.length) {
      a.ip = r.attachments[0]!.ip;
      a.interfaces = r.attachments.map((n) => ({ name: n.name, ip: n.ip, prefix: n.prefix, gateway: n.gateway, mac: n.mac, tap: n.tap }));
    }
    return a;
  }

  /**
   * Boot (or, for a VM made from a snapshot, restore) the VM through its launch pipeline
   * (launch-steps.ts); a failure leaves the VM `failed` with the step that failed, and nothing running.
   */
  ensureRunning(vm: MicroVM): Promise<ActualVm> {
    return this.start1(vm);
  }

  private start1(vm: MicroVM, extra: Pick<Launch, 'memoryFile'> = {}): Promise<ActualVm> {
    return this.serial(vm.id, async (r) => {
      if (r.inst && (r.state === 'running' || r.state === 'starting' || r.state === 'paused')) return this.observe(vm.id);
      const dir = this.vmDir(vm.id);
      const resume = suspendComplete(dir);
      const steps = resume ? resumeSteps(this.launchDeps) : wantsRestore(vm, dir) ? restoreSteps(this.launchDeps) : bootSteps(this.launchDeps);
      const launch = { vm, runtime: r, dir, ...extra } as Launch;
      try {
        const { timings } = await runSteps(`start of ${vm.id}`, steps, launch, {
          onUndoError: (step, err) => this.options.log.warn({ vm: vm.id, step, err: err.message }, 'undo of a launch step failed'),
        });
        // Where a start's time went, step by step (bench/instant-start.ts reads these lines).
        this.options.log.info({ vm: vm.id, mode: resume ? 'resume' : launch.restoreFrom ? 'restore' : 'boot', steps: Object.fromEntries(timings.map((t) => [t.name, t.ms])) }, 'launch steps');
      } catch (e) {
        const err = asMvmError(e, ErrorCodes.VMM_ERROR);
        const step = (failedStep(err) ?? 'unknown').split('.')[0]!;
        const cause = asMvmError(err.cause ?? err, err.code);
        r.inst = undefined;
        r.state = 'failed';
        r.reason = 'StartFailed';
        r.message = `step ${step}: ${cause.message}`;
        this.options.log.error({ vm: vm.id, step, err: cause.message }, 'start failed');
        throw new MvmError(err.code, r.message, { cause: e, details: { ...cause.details, step } });
      }
      return this.observe(vm.id);
    });
  }

  private get launchDeps(): LaunchDeps {
    return {
      env: this.options,
      snapshotDir: (id) => this.snapDir(id),
      watch: (r, inst, t0, deadlineMs, opts) => this.watch(r, inst, t0, deadlineMs, opts),
      reidentify: (vm, dir, atts, r) => this.reidentify(vm, dir, atts, r),
      started: (vm, inst, how) => this.emit({ id: vm.id, kind: 'started', message: `VMM ${how} (pid ${inst.pid}, ${inst.driver}/${inst.accel})` }),
      resumed: (vm, dir, r) => this.resumed(vm, dir, r),
    };
  }

  /** Watch the console for the readiness marker and the VMM for its exit. */
  private watch(r: Runtime, inst: VmmInstance, t0: number, deadlineMs?: number, opts: WatchOptions = {}): void {
    r.stopWatch?.();
    r.bootTimedOut = undefined;
    r.guest?.close();
    r.guest = inst.guestChannel ? new GuestLink(inst.guestChannel, { client: `mvm-agent@${this.nodeName}` }) : undefined;
    let stopped = false;
    let deadline: NodeJS.Timeout | undefined;
    const markReady = (how: string): void => {
      if (r.ready || stopped || r.inst !== inst) return;
      r.ready = true;
      r.readyAt = new Date().toISOString();
      if (r.bootMs && t0) r.bootMs.guestReady = Date.now() - t0;
      clearTimeout(deadline);
      r.bootTimedOut = undefined;
      this.emit({ id: r.id, kind: 'ready', message: `guest ready (${how})${r.bootMs?.guestReady ? ` after ${r.bootMs.guestReady} ms` : ''}` });
    };
    r.markReady = markReady;
    // Readiness from the guest agent's answer (and its first-boot setup); the console marker below
    // stays the fallback for images without the agent. Restores are marked ready by their launch.
    if (r.guest && opts.probeAgent !== false) {
      const link = r.guest;
      void (async () => {
        try {
          const client = await link.waitReady(Date.now() + (deadlineMs && deadlineMs > 0 ? deadlineMs : 24 * 3600_000), () => !stopped && r.inst === inst && !r.ready);
          r.agentVersion = client.hello.version;
          if (opts.setup) await this.firstBootSetup(client, opts.setup);
          markReady(`guest agent ${client.hello.version}`);
        } catch (e) {
          if (!stopped && r.inst === inst && !r.ready) {
            if (r.agentVersion) this.options.log.warn({ vm: r.id, err: (e as Error).message }, 'the guest agent answered but its first-boot setup (env, files) failed');
            else this.options.log.debug({ vm: r.id, err: (e as Error).message }, 'no guest agent');
          }
        }
      })();
    }
    const consolePath = inst.consolePath;
    let offset = 0;
    let carry = '';
    const marker = `${READY_MARKER} id=${r.id}`;
    const poll = (): void => {
      if (stopped || r.ready) return;
      try {
        const size = statSync(consolePath).size;
        if (size < offset) offset = 0;
        if (size > offset) {
          const fd = openSync(consolePath, 'r');
          try {
            const buf = Buffer.alloc(size - offset);
            readSync(fd, buf, 0, buf.length, offset);
            offset = size;
            const text = carry + buf.toString('utf8');
            // The marker says the guest booted; with a guest agent coming (or setup to do), it decides.
            if (text.includes(marker) && (!opts.setup || !r.guest)) {
              if (!r.guest || opts.markerFallbackMs === 0) markReady('readiness marker');
              else {
                // The agent normally answers within moments of the marker; an image without it never will.
                const fallback = setTimeout(() => {
                  if (!r.ready) markReady('readiness marker; no guest agent');
                }, opts.markerFallbackMs ?? 3000);
                fallback.unref();
              }
              return;
            }
            carry = text.slice(-marker.length);
          } finally {
            closeSync(fd);
          }
        }
      } catch {
        /* console not there yet */
      }
      timer = setTimeout(poll, 25);
    };
    let timer = setTimeout(poll, 25);
    // The boot deadline: a guest that never becomes ready must not hold its resources forever.
    const checkDeadline = (): void => {
      if (stopped || r.ready || r.inst !== inst) return;
      // A paused guest makes no progress: look again once it runs.
      if (r.state === 'paused') {
        deadline = setTimeout(checkDeadline, 5000);
        deadline.unref();
        return;
      }
      this.bootDeadlinePassed(r, inst, deadlineMs!);
    };
    if (deadlineMs && deadlineMs > 0) {
      deadline = setTimeout(checkDeadline, Math.max(0, deadlineMs - (t0 ? Date.now() - t0 : 0)));
      deadline.unref();
    }
    r.stopWatch = () => {
      stopped = true;
      clearTimeout(timer);
      clearTimeout(deadline);
    };
    void inst.exited.then((exit) => {
      if (r.inst !== inst) return;
      r.stopWatch?.();
      r.guest?.close();
      r.guest = undefined;
      r.inst = undefined;
      r.ready = false;
      if (r.stopping) {
        r.state = 'stopped';
        return;
      }
      if (r.bootTimedOut?.killed) {
        // Killed by the boot deadline: the reason is that, not the kill.
        r.state = 'failed';
        void this.options.cgroups.remove(r.id).catch(() => undefined);
        return;
      }
      // Not asked to stop: a guest power-off is a clean stop, anything else a failure.
      if (exit.code === 0 && !exit.signal) {
        r.state = 'stopped';
        r.reason = 'GuestShutdown';
        r.message = exit.reason;
        this.emit({ id: r.id, kind: 'stopped', message: exit.reason });
      } else {
        r.state = 'failed';
        r.reason = 'VmmExited';
        r.message = exit.reason;
        this.emit({ id: r.id, kind: 'exited', message: exit.reason });
      }
      void this.options.cgroups.remove(r.id).catch(() => undefined);
    });
  }

  /**
   * The VM's env and files, written by its guest agent before anything else runs: the guest init
   * waits for /run/mvm-setup-done (kernel argument mvm.setup=1) before starting the workload.
   */
  private async firstBootSetup(client: GuestAgentClient, setup: NonNullable<WatchOptions['setup']>): Promise<void> {
    const files = (setup.files ?? []).map((f) => ({ path: f.path, content: f.encoding === 'base64' ? Buffer.from(f.content, 'base64') : f.content, ...(f.mode !== undefined ? { mode: f.mode } : {}) }));
    await client.setup({ ...(setup.env ? { env: setup.env } : {}), files });
    const exports = Object.entries(setup.env ?? {})
      .map(([k, v]) => `export ${k}='${v.replace(/'/g, `'\\''`)}'`)
      .join('\n');
    await client.writeFile('/run/mvm-env', exports ? exports + '\n' : '', { mode: 0o600 });
    await client.writeFile('/run/mvm-setup-done', '', { mode: 0o644 });
  }

  /**
   * The guest agent of a running VM on this node, connected (exec, files, port forwarding). 409
   * when the VM does not run here; AGENT_UNAVAILABLE when its image has no agent or it does not answer.
   */
  async guest(vm: MicroVM | string): Promise<GuestAgentClient> {
    const id = typeof vm === 'string' ? vm : vm.id;
    const r = this.vms.get(id);
    if (!r?.inst || (r.state !== 'running' && r.state !== 'paused')) {
      throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${id} is not running`, { details: { id, reason: 'NotRunning' } });
    }
    if (r.state === 'paused') throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${id} is paused: resume it first`, { details: { id, reason: 'Paused' } });
    if (!r.guest) throw agentUnavailable(id, 'its VMM has no guest agent channel');
    try {
      // A reconnect after a dropped session (seen once after a resume from disk) may go unanswered
      // once; the next connection resets the channel: one retry.
      const c = await r.guest.get(3000).catch(() => r.guest!.get(3000));
      r.agentVersion ??= c.hello.version;
      return c;
    } catch (e) {
      throw agentUnavailable(id, (e as Error).message);
    }
  }

  /** The guest did not become ready in time: fail the VM (kill its VMM) or, by setting, only say so. */
  private bootDeadlinePassed(r: Runtime, inst: VmmInstance, deadlineMs: number): void {
    const tail = consoleTail(inst.consolePath, 800);
    const message = `guest not ready ${Math.round(deadlineMs / 1000)} s after its VMM started (boot deadline)${tail ? `; console tail: ${tail}` : '; the console is empty'}`;
    const kill = (this.options.bootTimeoutAction ?? 'fail') === 'fail';
    r.bootTimedOut = { message, killed: kill };
    this.options.log.warn({ vm: r.id, deadlineMs, action: kill ? 'fail' : 'keep' }, 'boot deadline passed');
    if (kill) {
      r.reason = 'BootTimeout';
      r.message = message;
      void inst.kill().catch(() => undefined);
    }
    this.emit({ id: r.id, kind: 'boot-timeout', message });
  }

  ensureStopped(id: string, timeoutMs = 10000): Promise<void> {
    return this.serial(id, async (r) => {
      r.stopping = true;
      const inst = r.inst;
      if (inst) {
        // A clean shutdown by the guest agent first (it syncs and powers off); then the VMM's own
        // (ACPI power button / Ctrl-Alt-Del), then the kill.
        const t0 = Date.now();
        const client = r.guest?.current();
        if (client && (await inst.state()) === 'running') {
          const asked = await Promise.race([client.shutdown().then(() => true, () => false), sleep(1000).then(() => false)]);
          if (asked) await Promise.race([inst.exited, sleep(Math.max(0, timeoutMs - (Date.now() - t0)))]);
        }
        const left = Math.max(500, timeoutMs - (Date.now() - t0));
        if (!(await Promise.race([inst.exited.then(() => true), Promise.resolve(false)]))) await inst.stop(left);
        await inst.exited;
      } else {
        // Maybe a VMM we do not hold (e.g. adoption failed): find it by directory.
        for (const p of await this.options.driver.findProcesses(this.vmsRoot)) {
          if (p.id === id) {
            try {
              process.kill(p.pid, 'SIGKILL');
            } catch {
              /* gone */
            }
          }
        }
      }
      // CNI DEL on stop: a stopped VM holds no tap, namespace or address (it gets one again on start).
      await this.releaseVmm(id, r, { network: true });
      r.state = existsSync(this.vmDir(id)) ? 'stopped' : 'absent';
    });
  }

  /**
   * What a VMM that has exited held on this node: its watch, guest link, cgroup, mapped volumes
   * (they stay claimed by the VM until it is deleted), its sockets and pid file, and with `network`
   * its CNI attachments (a suspended VM keeps its tap, MAC and address for the resume).
   */
  private async releaseVmm(id: string, r: Runtime, o: { network: boolean }): Promise<void> {
    r.stopWatch?.();
    r.guest?.close();
    r.guest = undefined;
    r.inst = undefined;
    r.ready = false;
    await this.options.cgroups.remove(id);
    await this.options.volumes?.detachForVm(id, this.nodeName);
    if (o.network) {
      await this.options.network?.teardown(id);
      r.attachments = undefined;
    }
    for (const f of ['qmp.sock', 'console.sock', 'vmm.pid']) rmSync(join(this.vmDir(id), f), { force: true });
  }

  /**
   * Suspend to disk (ADR 0035): the memory and device state go to `<vmDir>/suspend` (QEMU: the
   * migration stream of snapshots, without disk copies), then the VMM exits. The network stays
   * (tap, MAC, address: the resumed guest keeps them), volumes are unmapped, the cgroup goes.
   * `cancelSuspend` while it writes cancels the migration and the VM runs on.
   */
  suspend(id: string): Promise<{ sizeBytes: number; durationMs: number }> {
    const abort = new AbortController();
    const r0 = this.runtimeOf(id);
    r0.suspendAbort?.abort();
    r0.suspendAbort = abort;
    return this.serial(id, async (r) => {
      const dir = this.vmDir(id);
      const sdir = join(dir, SUSPEND_DIR);
      try {
        const inst = r.inst;
        if (!inst) {
          if (suspendComplete(dir)) return { sizeBytes: dirSize(sdir), durationMs: 0 };
          throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${id} has no running VMM to suspend`);
        }
        if (!inst.snapshot || this.options.driver.name !== 'qemu') {
          throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `suspend to disk is implemented for the qemu driver only; this node runs ${inst.driver} (ADR 0035)`);
        }
        if (abort.signal.aborted) throw suspendCancelled(id);
        const wasPaused = r.state === 'paused';
        const t0 = Date.now();
        rmSync(sdir, { recursive: true, force: true });
        mkdirSync(sdir, { recursive: true });
        try {
          await inst.snapshot(sdir, { inPlace: true, signal: abort.signal });
        } catch (e) {
          // Cancelled or failed: no files, and the VM as it was (the driver resumes a guest it stopped).
          rmSync(sdir, { recursive: true, force: true });
          r.state = wasPaused ? 'paused' : 'running';
          throw e;
        }
        writeGuestAgentMark(sdir, r.agentVersion);
        // Complete on disk: the VMM goes (the guest never runs again in it: its disks are inactive).
        r.stopping = true;
        await inst.kill();
        await inst.exited;
        await this.releaseVmm(id, r, { network: false });
        r.state = 'suspended';
        const durationMs = Date.now() - t0;
        this.options.log.info({ vm: id, durationMs, sizeBytes: dirSize(sdir) }, 'suspended to disk');
        return { sizeBytes: dirSize(sdir), durationMs };
      } finally {
        if (r0.suspendAbort === abort) r0.suspendAbort = undefined;
      }
    });
  }

  cancelSuspend(id: string): void {
    this.vms.get(id)?.suspendAbort?.abort();
  }

  /** A stop of a suspended VM: its memory goes, and with it its network (the next start boots, with a new lease). */
  discardSuspend(id: string): Promise<void> {
    return this.serial(id, async (r) => {
      if (r.inst) return;
      rmSync(join(this.vmDir(id), SUSPEND_DIR), { recursive: true, force: true });
      await this.options.network?.teardown(id);
      r.attachments = undefined;
      r.state = this.restingState(id);
    });
  }

  netBytes(id: string): number | undefined {
    const r = this.vms.get(id);
    if (!r?.inst || !r.attachments?.length) return undefined;
    const c = vmNetCounters(r.inst.pid, r.attachments.map((n) => n.tap));
    return c.length ? c.reduce((n, x) => n + x.rxBytes + x.txBytes, 0) : undefined;
  }

  /**
   * The resumed guest runs: its suspend image is stale from here on (removed), its guest agent is
   * reconnected (the guest clock is set, best effort: it resumes at the suspend instant), and it is ready.
   */
  private async resumed(vm: MicroVM, dir: string, r: Runtime): Promise<void> {
    const hadAgent = existsSync(join(dir, SUSPEND_DIR, GUEST_AGENT_MARK));
    rmSync(join(dir, SUSPEND_DIR), { recursive: true, force: true });
    const link = r.guest;
    if (link && hadAgent) {
      // Short hello timeouts: the first connection after a restore sometimes goes unanswered (the
      // guest agent still holds the session of the suspended VMM); a reconnect resets it at once.
      const until = Date.now() + 10_000;
      let client: GuestAgentClient | undefined;
      let last: Error | undefined;
      for (let attempt = 0; !client && r.inst && Date.now() < until; attempt++) {
        client = await link.get(Math.min(3000, 500 * 2 ** attempt)).catch((e: Error) => ((last = e), undefined));
        if (!client) await sleep(20);
      }
      if (!client) this.options.log.warn({ vm: vm.id, err: last?.message }, 'the resumed guest\'s agent did not answer');
      if (client) {
        r.agentVersion = client.hello.version;
        void client.execBuffered({ cmd: ['date', '-s', `@${Math.floor(Date.now() / 1000)}`], timeoutMs: 5000 }).catch(() => undefined);
      }
    }
    r.markReady?.('resumed from disk');
  }

  async ensureAbsent(id: string): Promise<void> {
    await this.ensureStopped(id, 3000);
    await this.serial(id, async (r) => {
      await this.options.network?.teardown(id);
      r.attachments = undefined;
      rmSync(this.vmDir(id), { recursive: true, force: true });
      this.options.vmmIdentities?.release(id);
      r.state = 'absent';
      this.vms.delete(id);
    });
  }

  private snapDir(snapshotId: string): string {
    return join(this.options.dataDir, 'snapshots', snapshotId);
  }

  /** Type the new identity into the restored guest's serial shell. */
  /**
   * A restored guest (a snapshot's clone, a template's clone) still carries its source's identity
   * in memory: its guest agent sets this VM's host name, machine id, MAC and addresses, clock and
   * RNG seed, and the guest is ready. Without an agent (snapshots of older images) the identity
   * is typed into its serial shell instead.
   */
  private async reidentify(vm: MicroVM, dir: string, atts: NicAttachment[], r?: Runtime): Promise<void> {
    const link = r?.guest;
    const source = restoreSourceOf(vm);
    // Only a guest whose agent had answered before its snapshot has one to answer now: without
    // the mark (older snapshots, images without the agent, a guest snapshotted before its agent
    // was up) the identity goes through the console at once instead of after a wait for nothing.
    if (link && source && existsSync(join(this.snapDir(source), GUEST_AGENT_MARK))) {
      // A restored guest's agent is already running: Firecracker answers at once when nothing listens on its port.
      const t0 = Date.now();
      const client = await link.waitReady(Date.now() + 10_000, () => r.inst !== undefined, (e) => /nothing listens/.test(e.message)).catch((e: Error) => {
        this.options.log.warn({ vm: vm.id, err: e.message }, 'the restored guest has no guest agent: typing its identity into the console');
        return undefined;
      });
      const connectedMs = Date.now() - t0;
      if (client) try {
        await client.identity({
          hostname: vm.name,
          machineId: machineIdOf(vm.id),
          interfaces: atts.map((a, i) => ({ name: `eth${i}`, mac: a.mac, ip: a.ip, prefix: a.prefix, gateway: a.gateway, dns: a.dns })),
          timeMs: Date.now(),
          entropy: randomBytes(64),
        });
        r.agentVersion = client.hello.version;
        // A template's clone gets its own env and files once it has its identity.
        if (vm.spec.source?.template && (vm.spec.files?.length || Object.keys(vm.spec.env ?? {}).length)) {
          await this.firstBootSetup(client, { env: vm.spec.env ?? {}, files: vm.spec.files ?? [] });
        }
        this.options.log.info({ vm: vm.id, connectMs: connectedMs, identityMs: Date.now() - t0 - connectedMs }, 'restored guest re-identified by its agent');
        r.markReady?.(`restored; identity set by guest agent ${client.hello.version}`);
        return;
      } catch (e) {
        // The agent answered but the identity or the clone's setup failed: that is the error, not a missing agent.
        throw new MvmError(ErrorCodes.VMM_ERROR, `the restored guest's agent could not set its identity or files: ${(e as Error).message}`, { cause: e });
      }
    }
    const cmds: string[] = [];
    atts.forEach((a, i) => {
      const dev = `eth${i}`;
      cmds.push(`ip link set ${dev} down`, `ip link set ${dev} address ${a.mac}`, `ip addr flush dev ${dev}`, `ip addr add ${a.ip}/${a.prefix} dev ${dev}`, `ip link set ${dev} up`);
      if (i === 0) cmds.push(`ip route replace default via ${a.gateway}`);
    });
    cmds.push(`hostname ${vm.name}`, `echo ${machineIdOf(vm.id)} > /etc/machine-id`);
    // The quotes keep the typed line (echoed by the tty) from containing the marker itself.
    const line = `${cmds.join('; ')}; echo "${READY_MARKER}" "id=${vm.id}"\n`;
    // Firecracker: the console's input is a FIFO (its stdin) instead of a socket.
    const fifo = join(dir, 'console.in');
    if (!existsSync(join(dir, 'console.sock')) && existsSync(fifo)) {
      const fd = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
      try {
        writeSync(fd, '\n' + line);
      } finally {
        closeSync(fd);
      }
      return;
    }
    await new Promise<void>((resolve, reject) => {
      const sock = createConnection(join(dir, 'console.sock'));
      sock.on('error', reject);
      sock.on('connect', () => sock.write('\n' + line, () => setTimeout(() => (sock.end(), resolve()), 50)));
    });
  }

  // ---- migration with memory (docs/adr/0034) ----------------------------------------------------

  /** Source, step pause: stop the vCPUs for the move (the VM still reads as running to the controller). */
  migrationPause(id: string): Promise<number> {
    return this.serial(id, async (r) => {
      const inst = r.inst;
      if (!inst || r.state !== 'running') throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${id} is not running on node ${this.nodeName}`);
      if (!inst.pause || !inst.snapshot) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `driver ${inst.driver} cannot pause and snapshot a guest`);
      this.outgoing.add(id);
      await inst.pause();
      return Date.now();
    });
  }

  /** Source, step snapshot: memory, device state and the disk copy into `dir`; the guest stays paused. */
  migrationSnapshot(id: string, dir: string): Promise<void> {
    return this.serial(id, async (r) => {
      const inst = r.inst;
      if (!inst?.snapshot) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${id} has no VMM to snapshot on node ${this.nodeName}`);
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      await inst.snapshot(dir);
      writeGuestAgentMark(dir, r.agentVersion ?? (r.guest?.current() ? 'unknown' : undefined));
    });
  }

  /** Source, a failed migration: the guest runs on here again. */
  migrationResume(id: string): Promise<void> {
    return this.serial(id, async (r) => {
      this.outgoing.delete(id);
      if (r.inst?.resume) await r.inst.resume();
    });
  }

  /** Source, a migration that succeeded: the VM is bound elsewhere now, its removal here is the controller's. */
  migrationDone(id: string): void {
    this.outgoing.delete(id);
  }

  /**
   * Target, before the source pauses the guest: what takes time and needs no memory (images,
   * cgroup, network with the source's address, console). The VM is not bound here yet: until
   * `adoptIncoming` the controller sees nothing of it. A failure is undone by the caller's abort.
   */
  migratePrepare(vm: MicroVM, m: IncomingMigration): Promise<{ ipChange?: string; timings: Record<string, number> }> {
    this.incoming.add(vm.id);
    return this.serial(vm.id, async (r) => {
      if (r.inst) throw new MvmError(ErrorCodes.CONFLICT, `microVM ${vm.id} already runs on node ${this.nodeName}`);
      const launch = { vm, runtime: r, dir: this.vmDir(vm.id), migration: m } as Launch;
      const { timings } = await runSteps(`migration of ${vm.id} onto ${this.nodeName} (prepare)`, migrateInSteps(this.launchDeps).prepare, launch, {
        onUndoError: (step, err) => this.options.log.warn({ vm: vm.id, step, err: err.message }, 'undo of a migration step failed'),
      });
      this.incomingLaunches.set(vm.id, launch);
      return { ...(m.ipChange ? { ipChange: m.ipChange } : {}), timings: Object.fromEntries(timings.map((t) => [t.name, Math.round(t.ms)])) };
    });
  }

  /** Target, once the files arrived in the prepared launch's directory: the disk, then the VMM restored from the memory and resumed. */
  migrateIn(id: string): Promise<{ ip?: string; interfaces: ActualVm['interfaces']; ipChange?: string; resumedAt: number; pid?: number; timings: Record<string, number> }> {
    return this.serial(id, async (r) => {
      const launch = this.incomingLaunches.get(id);
      if (!launch || !this.incoming.has(id)) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `no migration of microVM ${id} prepared on node ${this.nodeName}`);
      if (r.inst) throw new MvmError(ErrorCodes.CONFLICT, `microVM ${id} already runs on node ${this.nodeName}`);
      const m = launch.migration!;
      let timings: Array<{ name: string; ms: number }>;
      try {
        ({ timings } = await runSteps(`migration of ${id} onto ${this.nodeName}`, migrateInSteps(this.launchDeps).restore, launch, {
          onUndoError: (step, err) => this.options.log.warn({ vm: id, step, err: err.message }, 'undo of a migration step failed'),
        }));
      } catch (e) {
        r.inst = undefined;
        r.state = 'absent';
        throw e;
      }
      r.state = 'running';
      const pid = launch.inst?.pid;
      return {
        ...(r.attachments?.[0]?.ip ? { ip: r.attachments[0].ip } : {}),
        interfaces: r.attachments?.map((n) => ({ name: n.name, ip: n.ip, prefix: n.prefix, gateway: n.gateway, mac: n.mac, tap: n.tap })),
        ...(m.ipChange ? { ipChange: m.ipChange } : {}),
        resumedAt: m.resumedAt ?? Date.now(),
        ...(pid !== undefined ? { pid } : {}),
        timings: Object.fromEntries(timings.map((t) => [t.name, Math.round(t.ms)])),
      };
    });
  }

  /**
   * Target: the restored guest runs again here: its agent answers (the proof), and gets this node's
   * addresses if they changed. A failure leaves it to the caller's abort.
   */
  resumeIncoming(id: string): Promise<{ readyAt: number; agent?: string }> {
    return this.serial(id, async (r) => {
      const launch = this.incomingLaunches.get(id);
      if (!launch || !r.inst) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `no migration of microVM ${id} restored on node ${this.nodeName}`);
      await this.migratedIdentity(launch);
      this.incomingLaunches.delete(id);
      return { readyAt: Date.now(), ...(r.agentVersion ? { agent: r.agentVersion } : {}) };
    });
  }

  /** Target: the VM is bound here now; the controller takes it over. */
  adoptIncoming(id: string): void {
    this.incoming.delete(id);
    this.incomingLaunches.delete(id);
  }

  /** Target: a migration that failed (or was abandoned): nothing of the VM stays on this node. */
  async abortIncoming(id: string): Promise<void> {
    if (!this.incoming.has(id)) return;
    try {
      await this.ensureAbsent(id);
    } finally {
      this.incoming.delete(id);
      this.incomingLaunches.delete(id);
    }
  }

  isIncoming(id: string): boolean {
    return this.incoming.has(id);
  }

  /**
   * A migrated guest resumed here: it is the same machine (same hostname, machine id, MAC), so it is
   * not re-identified. Its guest agent must answer (the proof it runs again); only when this node
   * gave other addresses does the agent get them (the network part of the identity, nothing else).
   */
  private async migratedIdentity(c: Launch): Promise<void> {
    const r = c.runtime;
    const m = c.migration!;
    const hadAgent = existsSync(join(m.dir, GUEST_AGENT_MARK));
    const client = r.guest && hadAgent
      ? await r.guest.waitReady(Date.now() + 20_000, () => r.inst !== undefined).catch((e: Error) => {
          throw new MvmError(ErrorCodes.AGENT_UNAVAILABLE, `the migrated guest's agent did not answer on node ${this.nodeName}: ${e.message}`);
        })
      : undefined;
    if (client) r.agentVersion = client.hello.version;
    if (m.ipChange) {
      const atts = r.attachments ?? [];
      if (client) {
        await client.identity({
          hostname: c.vm.name,
          machineId: machineIdOf(c.vm.id),
          interfaces: atts.map((a, i) => ({ name: `eth${i}`, mac: a.mac, ip: a.ip, prefix: a.prefix, gateway: a.gateway, dns: a.dns })),
          timeMs: Date.now(),
          entropy: randomBytes(64),
        });
      } else {
        await this.reidentify(c.vm, c.dir, atts, r);
        return;
      }
    }
    r.markReady?.(client ? `migrated; guest agent ${client.hello.version} answered` : 'migrated');
  }

  pause(id: string): Promise<void> {
    return this.serial(id, async (r) => {
      if (!r.inst) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${id} has no running VMM to pause`);
      if (!r.inst.pause) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `driver ${r.inst.driver} cannot pause`);
      await r.inst.pause();
      r.state = 'paused';
    });
  }

  resume(id: string): Promise<void> {
    return this.serial(id, async (r) => {
      // Paused for a migration under way: its pipeline resumes it (on failure) or it moves.
      if (this.outgoing.has(id)) return;
      if (!r.inst) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${id} has no VMM to resume`);
      if (!r.inst.resume) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `driver ${r.inst.driver} cannot resume`);
      await r.inst.resume();
      r.state = 'running';
    });
  }

  snapshot(id: string, snapshotId: string): Promise<{ sizeBytes: number; driver: string; durationMs: number }> {
    return this.serial(id, async (r) => {
      const inst = r.inst;
      if (!inst) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${id} has no running VMM to snapshot`);
      if (!inst.snapshot) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `driver ${inst.driver} cannot take snapshots`);
      const dir = this.snapDir(snapshotId);
      const wasPaused = r.state === 'paused';
      const t0 = Date.now();
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir, { recursive: true });
      try {
        await inst.snapshot(dir);
      } catch (e) {
        rmSync(dir, { recursive: true, force: true });
        if (!wasPaused) await inst.resume?.().catch(() => undefined);
        throw e;
      }
      const durationMs = Date.now() - t0;
      writeGuestAgentMark(dir, r.agentVersion);
      // The driver leaves the VM paused; put it back as it was.
      if (!wasPaused && inst.resume) await inst.resume();
      r.state = wasPaused ? 'paused' : 'running';
      return { sizeBytes: dirSize(dir), driver: inst.driver, durationMs };
    });
  }

  /**
   * Run `fn` (a copy of the VM's disk files) while they hold still: a running guest first syncs
   * its page cache through its agent (best effort, 10 s at most), then its VMM is paused (QEMU
   * drains and flushes its block layer when it stops) and resumed after `fn`. A VM that is not
   * running here, or is paused already, only runs `fn`. Serialized with the VM's other operations.
   */
  quiesce<T>(id: string, fn: () => Promise<T>): Promise<{ result: T; pausedMs: number; guestSynced: boolean }> {
    return this.serial(id, async (r) => {
      const inst = r.inst;
      if (!inst || r.state !== 'running' || !inst.pause || !inst.resume) return { result: await fn(), pausedMs: 0, guestSynced: false };
      const client = r.guest?.current();
      const guestSynced = client
        ? await Promise.race([client.execBuffered({ cmd: ['sync'], timeoutMs: 10_000 }).then((x) => x.exitCode === 0, () => false), sleep(10_000).then(() => false)])
        : false;
      const t0 = Date.now();
      await inst.pause();
      try {
        return { result: await fn(), pausedMs: Date.now() - t0, guestSynced };
      } finally {
        await inst.resume();
      }
    });
  }

  /** Where template RAM files live: tmpfs (the clones map them privately; a host reboot empties it). */
  private templateMemoryDir(): string {
    return this.options.templateMemoryDir ?? join('/dev/shm', `mvm-${createHash('sha256').update(this.options.dataDir).digest('hex').slice(0, 8)}`, 'templates');
  }

  /**
   * Build one template version (ADR 0021): boot with the guest RAM in a shared tmpfs file, wait
   * until the guest agent answered (and wrote env/files), the readiness command holds, run the
   * command, snapshot the device state and disk into the snapshot store with the RAM kept as the
   * frozen file, then discard the VM. A failure names its step, carries the console tail, and
   * leaves nothing of the build behind.
   */
  async buildTemplate(spec: TemplateBuildSpec): Promise<TemplateBuildResult> {
    const filesId = templateFilesId(spec.templateId, spec.version);
    const vmId = `build-${filesId}`;
    const memDir = this.templateMemoryDir();
    const memPath = join(memDir, `${filesId}.ram`);
    const filesDir = this.snapDir(filesId);
    const now = new Date().toISOString();
    const vm: MicroVM = {
      id: vmId,
      name: `tpl-${spec.name}`.slice(0, 63).replace(/-+$/, ''),
      tenant: spec.tenant,
      spec: {
        vcpu: spec.vcpu,
        memory: spec.memory,
        labels: { 'microvm.service/template': spec.templateId },
        ...(spec.kernel ? { kernel: spec.kernel } : {}),
        ...(spec.rootfs && Object.keys(spec.rootfs).length ? { rootfs: spec.rootfs } : {}),
        ...(spec.env ? { env: spec.env } : {}),
        ...(spec.files ? { files: spec.files } : {}),
      },
      desiredState: 'Running',
      status: { phase: 'Pending', conditions: [] },
      generation: 1,
      resourceVersion: '1',
      createdAt: now,
      updatedAt: now,
    } as MicroVM;
    const deadline = Date.now() + spec.bootTimeoutMs;
    const timings: Array<{ name: string; ms: number }> = [];
    let client: GuestAgentClient | undefined;
    let result: TemplateBuildResult | undefined;
    const timed = <T>(name: string, f: () => Promise<T>): Promise<T> => {
      const t0 = Date.now();
      return f().finally(() => timings.push({ name, ms: Date.now() - t0 }));
    };
    const execOk = async (cmd: string[], timeoutMs: number): Promise<{ exitCode: number; stderr: string; stdout: string }> => {
      const r = await client!.execBuffered({ cmd, timeoutMs: Math.max(1000, timeoutMs) });
      return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
    };
    this.building.add(vmId);
    try {
      await runSteps(`build of template ${spec.name} version ${spec.version}`, [
        {
          name: 'boot',
          run: () =>
            timed('boot', async () => {
              if (this.options.driver.name !== 'qemu') {
                throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `templates are built with the qemu driver only for now; this node runs ${this.options.driver.name} (ADR 0021)`);
              }
              mkdirSync(memDir, { recursive: true });
              rmSync(memPath, { force: true });
              await this.start1(vm, { memoryFile: { path: memPath, shared: true } });
            }),
        },
        {
          name: 'guest-agent',
          run: () =>
            timed('guest-agent', async () => {
              const r = this.runtimeOf(vmId);
              while (!r.ready) {
                if (!r.inst) throw new MvmError(ErrorCodes.VMM_ERROR, `the template's VM stopped during its boot: ${r.message ?? r.reason ?? 'exited'}`);
                if (Date.now() > deadline) throw new MvmError(ErrorCodes.TIMEOUT, `the template's guest was not ready within ${Math.round(spec.bootTimeoutMs / 1000)} s`);
                await sleep(50);
              }
              if (!r.agentVersion) throw new MvmError(ErrorCodes.AGENT_UNAVAILABLE, 'a template needs an image with the guest agent (its clones get their identity through it)');
              client = await this.guest(vmId);
            }),
        },
        {
          name: 'readiness',
          when: () => 'command' in spec.readiness,
          run: () =>
            timed('readiness', async () => {
              const ready = spec.readiness as { command: string[]; timeout?: string };
              const until = Math.min(deadline, Date.now() + (ready.timeout ? parseDurationMs(ready.timeout, 'readiness.timeout') : 120_000));
              let last = '';
              for (;;) {
                const r = await execOk(ready.command, until - Date.now());
                if (r.exitCode === 0) return;
                last = `exit ${r.exitCode}${r.stderr ? `: ${r.stderr.trim().slice(-300)}` : ''}`;
                if (Date.now() + 500 > until) throw new MvmError(ErrorCodes.TIMEOUT, `the readiness command ${JSON.stringify(ready.command)} never exited 0 (last: ${last})`);
                await sleep(500);
              }
            }),
        },
        {
          name: 'command',
          when: () => (spec.command?.length ?? 0) > 0,
          run: () =>
            timed('command', async () => {
              const r = await execOk(spec.command!, deadline - Date.now());
              if (r.exitCode !== 0) throw new MvmError(ErrorCodes.VMM_ERROR, `the template's command ${JSON.stringify(spec.command)} exited ${r.exitCode}${r.stderr ? `: ${r.stderr.trim().slice(-500)}` : ''}`);
            }),
        },
        {
          name: 'snapshot',
          run: () =>
            timed('snapshot', async () => {
              const inst = this.runtimeOf(vmId).inst;
              if (!inst?.snapshot) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `driver ${this.options.driver.name} cannot snapshot a template`);
              // Quiesce the guest's disk writes, then the device state; the RAM stays as the frozen file.
              await execOk(['sync'], 30_000).catch(() => undefined);
              rmSync(filesDir, { recursive: true, force: true });
              mkdirSync(filesDir, { recursive: true });
              await inst.pause?.();
              await inst.snapshot(filesDir, { memoryTo: memPath });
              writeGuestAgentMark(filesDir, this.runtimeOf(vmId).agentVersion);
            }),
        },
        {
          name: 'discard',
          run: () => timed('discard', () => this.ensureAbsent(vmId)),
        },
        {
          name: 'measure',
          run: () => {
            result = { node: this.nodeName, driver: this.options.driver.name, memoryBytes: statSync(memPath).blocks * 512, diskBytes: dirSize(filesDir), timings };
          },
        },
      ], {}, {});
    } catch (e) {
      const err = asMvmError(e, ErrorCodes.VMM_ERROR);
      const step = (failedStep(err) ?? 'unknown').split('.')[0]!;
      const tail = consoleTail(join(this.vmDir(vmId), 'console.log'), 1200);
      await this.ensureAbsent(vmId).catch(() => undefined);
      rmSync(filesDir, { recursive: true, force: true });
      rmSync(memPath, { force: true });
      const cause = asMvmError(err.cause ?? err, err.code);
      throw new MvmError(cause.code, `step ${step}: ${cause.message}`, { cause: e, details: { ...cause.details, step, ...(tail ? { consoleTail: tail } : {}) } });
    } finally {
      this.building.delete(vmId);
    }
    return result!;
  }

  async deleteTemplate(templateId: string, version?: number): Promise<void> {
    const memDir = this.templateMemoryDir();
    const snaps = join(this.options.dataDir, 'snapshots');
    const match = (name: string): boolean => (version === undefined ? name.startsWith(`${templateId}-v`) : name === templateFilesId(templateId, version) || name === `${templateFilesId(templateId, version)}.ram`);
    for (const dir of [snaps, memDir]) {
      if (!existsSync(dir)) continue;
      for (const name of readdirSync(dir)) if (match(name)) rmSync(join(dir, name), { recursive: true, force: true });
    }
    for (const id of this.dirIds()) {
      if (id.startsWith(`build-${templateId}-v`) && (version === undefined || id === `build-${templateFilesId(templateId, version)}`)) await this.ensureAbsent(id);
    }
  }

  async hasTemplate(templateId: string, version: number): Promise<boolean> {
    const id = templateFilesId(templateId, version);
    return existsSync(join(this.snapDir(id), 'snapshot.json')) && existsSync(join(this.templateMemoryDir(), `${id}.ram`));
  }

  async restoreRefusal(snapshotId: string): Promise<string | undefined> {
    const dir = this.snapDir(snapshotId);
    if (!existsSync(dir)) return `its files are not on node ${this.nodeName}`;
    let driver: string | undefined;
    try {
      driver = (JSON.parse(readFileSync(join(dir, 'snapshot.json'), 'utf8')) as { driver?: string }).driver;
    } catch {
      return `its record ${join(dir, 'snapshot.json')} is missing or unreadable`;
    }
    if (driver && driver !== this.options.driver.name) return `it was taken with the ${driver} driver and this node runs ${this.options.driver.name}`;
    return this.options.driver.restoreRefusal?.(dir);
  }

  async deleteSnapshot(snapshotId: string): Promise<void> {
    rmSync(this.snapDir(snapshotId), { recursive: true, force: true });
  }

  consolePath(id: string): string | undefined {
    const p = join(this.vmDir(id), 'console.log');
    return existsSync(p) ? p : undefined;
  }

  async metrics(vm: MicroVM): Promise<VmMetricsT> {
    const r = this.vms.get(vm.id);
    const stats = r?.inst ? await r.inst.stats() : undefined;
    const started = r?.startedAt ? Date.parse(r.startedAt) : undefined;
    const m: VmMetricsT = {
      id: vm.id,
      phase: vm.status.phase,
      timestamp: new Date().toISOString(),
      cpuSeconds: stats?.cpuSeconds ?? 0,
      memoryRssBytes: stats?.memoryRssBytes ?? 0,
      // Measured by the VMM where it can tell (QEMU); otherwise the size the VMM was given.
      guestMemoryBytes: stats?.guestMemoryBytes ?? memoryMiB(vm.spec) * 1024 * 1024,
      uptimeSeconds: r?.inst && started ? (Date.now() - started) / 1000 : 0,
      block: stats?.block ?? [],
      net: [],
    };
    // The VMM runs in the VM's netns, so its /proc/<pid>/net/dev holds the taps' counters: one file
    // read instead of spawning `ip` per VM and sample; the network manager is the fallback.
    const taps = r?.attachments?.map((n) => n.tap) ?? [];
    const fromProc = vmNetCounters(r?.inst?.pid, taps);
    m.net = fromProc.length === taps.length && taps.length > 0 ? fromProc : ((await this.options.network?.stats(vm.id).catch(() => [])) ?? []);
    if (r?.bootMs) m.bootMs = r.bootMs;
    return m;
  }

  onEvent(cb: (e: AgentEvent) => void): () => void {
    this.events.on('event', cb);
    return () => this.events.off('event', cb);
  }

  private emit(e: AgentEvent): void {
    this.events.emit('event', e);
  }

  /** Stop watching; running VMMs keep running (they are re-adopted on the next start). */
  async shutdown(): Promise<void> {
    await observability.detachAgent(this);
    for (const r of this.vms.values()) r.stopWatch?.();
  }

  /** For the shutdown policy `stop`: stop every running VM. */
  async stopAll(timeoutMs: number): Promise<void> {
    await Promise.all([...this.vms.values()].filter((r) => r.inst).map((r) => this.ensureStopped(r.id, timeoutMs)));
  }
}


function dirSize(dir: string): number {
  let total = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    total += e.isDirectory() ? dirSize(p) : statSync(p).blocks * 512;
  }
  return total;
}

/** The last `n` characters of the guest console, control sequences and blank lines dropped, on one line. */
function consoleTail(path: string, n: number): string {
  try {
    const st = statSync(path);
    const len = Math.min(st.size, n * 4);
    const buf = Buffer.alloc(len);
    const fd = openSync(path, 'r');
    try {
      readSync(fd, buf, 0, len, st.size - len);
    } finally {
      closeSync(fd);
    }
    // eslint-disable-next-line no-control-regex
    const text = buf.toString('utf8').replace(/\x1b\[[0-9;?]*[A-Za-z]/g, '').replace(/[\x00-\x08\x0b-\x1f\x7f]/g, '');
    return text.split('\n').map((l) => l.trim()).filter(Boolean).join(' | ').slice(-n);
  } catch {
    return '';
  }
}

function suspendCancelled(id: string): MvmError {
  return new MvmError(ErrorCodes.CONFLICT, `the suspend of microVM ${id} was cancelled`, { details: { id, cancelled: true } });
}

/** 409 AGENT_UNAVAILABLE: exec, files and port forwarding need the guest agent. */
function agentUnavailable(id: string, why: string): MvmError {
  return new MvmError(ErrorCodes.AGENT_UNAVAILABLE, `the guest agent of microVM ${id} is not available (${why}); exec, files and port forwarding need an image with the guest agent (the default image and every image the service builds from OCI carry it)`, {
    details: { id, hint: 'rebuild the image with this service version, or use the console' },
  });
}

/** A VM's machine id: 32 hex digits derived from its id (stable across restarts, distinct per VM). */
function machineIdOf(id: string): string {
  return createHash('sha256').update(id).digest('hex').slice(0, 32);
}

/** In a snapshot's (or template's) files: the guest agent had answered before the snapshot (its version). */
const GUEST_AGENT_MARK = 'guest-agent.json';

function writeGuestAgentMark(dir: string, version: string | undefined): void {
  if (version) writeFileSync(join(dir, GUEST_AGENT_MARK), `${JSON.stringify({ version })}\n`);
}
