/**
 * Observability of one service process: the Prometheus registry and its
 * instruments, the per-VM sampler and history, the event tailer (SSE fan-out),
 * log rotation of the VMs' files, and the optional metrics-only listener.
 *
 * Like prom-client's default registry, there is one instance per process
 * (`observability`): components report into it with one-line calls (the
 * controller times reconciles, the agent attaches itself), and the composition
 * root (or the component that owns the dependency) attaches the store and the
 * node agent. Tests create their own `new Observability()`.
 */
import type { Logger } from 'pino';
import { asMvmError } from '../core/errors.js';
import { PHASES, type MicroVM } from '../core/microvm.js';
import type { NodeAgent } from '../core/ports/agent.js';
import type { Store, VmEvent } from '../core/ports/store.js';
import { cgroupFigures } from './collectors.js';
import { EventTailer } from './events.js';
import { MetricsHistory, type HistoryPoint } from './history.js';
import { startLogRotation, stopLogRotation, type LogRotator } from './log-rotation.js';
import { startMetricsServer, type MetricsServer } from './metrics-server.js';
import { ServiceMetrics, type TimedOperation } from './metrics.js';
import { VmSampler } from './vm-sampler.js';

export { MetricsHistory, type HistoryPoint } from './history.js';
export { ServiceMetrics } from './metrics.js';

export interface ObservabilityOptions {
  /** Per-VM sampling interval; MVM_METRICS_SAMPLE_SECONDS, default 10 (0: only on scrape). */
  sampleIntervalMs?: number;
  /** Samples of history per VM; default 60 (10 minutes at 10 s). */
  historySamples?: number;
  defaultCollectors?: boolean;
}

export interface AttachAgentOptions {
  /** `<dataDir>/vms`: where the per-VM log files to rotate live. */
  vmsRoot?: string;
  log?: Logger;
  /** Address of the metrics-only listener (cluster node agents: `:9100`); default MVM_METRICS_LISTEN, unset = none. */
  metricsListen?: string;
  /** Where the VMs' cgroups live (MVM_CGROUP_PARENT of the instance); default `mvm`. */
  cgroupParent?: string;
}

export class Observability {
  readonly metrics: ServiceMetrics;
  readonly history: MetricsHistory;
  readonly sampleIntervalMs: number;
  sampler: VmSampler | undefined;
  tailer: EventTailer | undefined;
  private store: Store | undefined;
  private agent: NodeAgent | undefined;
  private log: Logger | undefined;
  private cgroupParent: string | undefined;
  private rotator: { root: string; r: LogRotator } | undefined;
  private metricsServer: MetricsServer | undefined;
  private readonly pendingSince = new Map<string, number>();
  private readonly unsubs: Array<() => void> = [];
  private readonly lastReconcileError = new Map<string, string>();

  constructor(o: ObservabilityOptions = {}) {
    const env = Number(process.env.MVM_METRICS_SAMPLE_SECONDS ?? 10);
    this.sampleIntervalMs = o.sampleIntervalMs ?? (Number.isFinite(env) && env >= 0 ? env * 1000 : 10000);
    this.history = new MetricsHistory({ capacity: o.historySamples ?? 60 });
    this.metrics = new ServiceMetrics({
      samples: () => this.sampler?.samples() ?? [],
      countByPhase: () => this.countByPhase(),
      ...(o.defaultCollectors !== undefined ? { defaultCollectors: o.defaultCollectors } : {}),
    });
  }

  get attachedStore(): Store | undefined {
    return this.store;
  }

  /** The store: events (feed, counters), VM counts, boot timing, which VMs to sample. */
  attachStore(store: Store): void {
    if (this.store === store) return;
    this.store = store;
    this.tailer?.stop();
    this.tailer = new EventTailer(store, { onEvent: (e) => this.onEvent(e) });
    void this.tailer.start();
    this.unsubs.push(store.watch((c) => void this.trackBoot(c.id, c.deleted)));
    this.maybeStartSampler();
  }

  /** The node agent: per-VM figures, boot phases, log rotation of its VM directories. */
  attachAgent(agent: NodeAgent, o: AttachAgentOptions = {}): void {
    if (this.agent === agent) return;
    this.agent = agent;
    if (o.log) this.log = o.log;
    this.cgroupParent = o.cgroupParent;
    this.unsubs.push(
      agent.onEvent((e) => {
        if (e.kind === 'started' || e.kind === 'ready') this.observeBoot(e.id, e.kind);
      }),
    );
    if (o.vmsRoot) this.rotator = { root: o.vmsRoot, r: startLogRotation(o.vmsRoot, o.log) };
    const listen = o.metricsListen ?? process.env.MVM_METRICS_LISTEN;
    if (listen && !this.metricsServer) {
      this.metricsServer = startMetricsServer(this, listen, o.log);
    }
    this.maybeStartSampler();
  }

  async detachAgent(agent: NodeAgent): Promise<void> {
    if (this.agent !== agent) return;
    this.agent = undefined;
    this.sampler?.stop();
    this.sampler = undefined;
    if (this.rotator) stopLogRotation(this.rotator.root);
    this.rotator = undefined;
    await this.metricsServer?.close();
    this.metricsServer = undefined;
  }

  /** Stop everything (tests, shutdown). */
  async close(): Promise<void> {
    if (this.agent) await this.detachAgent(this.agent);
    this.tailer?.stop();
    for (const u of this.unsubs.splice(0)) u();
    this.store = undefined;
  }

  private maybeStartSampler(): void {
    if (this.sampler || !this.store || !this.agent) return;
    const store = this.store;
    const agent = this.agent;
    this.sampler = new VmSampler({
      nodeName: agent.nodeName,
      listVms: () => listAll(store),
      metrics: (vm) => agent.metrics(vm),
      history: this.history,
      intervalMs: this.sampleIntervalMs,
      ...(this.log ? { log: this.log } : {}),
      ...(this.cgroupParent ? { cgroup: ((parent: string) => (id: string) => cgroupFigures(id, '/sys/fs/cgroup', parent))(this.cgroupParent) } : {}),
      onCycle: (wall, cpu) => {
        this.metrics.collectionDuration.observe(wall);
        this.metrics.collectionCpu.inc(cpu);
      },
    });
    this.sampler.start();
  }

  /** The exposition, sampling the VMs first if the last cycle is older than one interval. */
  async scrape(): Promise<string> {
    await this.sampler?.ensureFresh(Math.max(1000, this.sampleIntervalMs || 5000));
    return this.metrics.render();
  }

  /** History points of one VM (oldest first). */
  historyOf(id: string): HistoryPoint[] {
    return this.history.points(id);
  }

  // ---- hooks for the controller and the agent (one-line calls) -------------------------

  /** Time one reconcile pass; `queueDepth` is what is still waiting behind it. */
  async reconcile<T>(id: string, queueDepth: number, fn: () => Promise<T>): Promise<T> {
    const m = this.metrics;
    m.reconcileQueueDepth.set(queueDepth);
    m.reconcileInFlight.inc();
    const end = m.reconcileDuration.startTimer();
    try {
      const r = await fn();
      end({ result: 'success' });
      m.reconcileTotal.inc({ result: 'success' });
      this.lastReconcileError.delete(id);
      return r;
    } catch (e) {
      end({ result: 'error' });
      m.reconcileTotal.inc({ result: 'error' });
      const err = asMvmError(e);
      m.errors.inc({ code: err.code, source: 'reconcile' });
      void this.reconcileErrorEvent(id, err.code, err.message);
      throw e;
    } finally {
      m.reconcileInFlight.dec();
    }
  }

  schedulerDecision(p: { node?: string | undefined }): void {
    this.metrics.schedulerDecisions.inc({ result: p.node ? 'placed' : 'unschedulable', node: p.node ?? '' });
  }

  /** Time a snapshot, restore, image pull or image build. */
  async time<T>(op: TimedOperation, fn: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      const r = await fn();
      this.metrics.observeOperation(op, (performance.now() - t0) / 1000, true);
      return r;
    } catch (e) {
      this.metrics.observeOperation(op, (performance.now() - t0) / 1000, false);
      throw e;
    }
  }

  error(code: string, source: string): void {
    this.metrics.errors.inc({ code, source });
  }

  // ---- internals ---------------------------------------------------------------------

  private onEvent(e: VmEvent): void {
    this.metrics.events.inc({ type: e.type, reason: e.reason });
  }

  /** A failing reconcile is a Warning event once per distinct error, not once per retry. */
  private async reconcileErrorEvent(id: string, code: string, message: string): Promise<void> {
    if (this.lastReconcileError.get(id) === message || !this.store) return;
    this.lastReconcileError.set(id, message);
    try {
      const vm = await this.store.getVm(id);
      if (vm) await this.store.appendEvent({ vmId: id, tenant: vm.tenant, time: new Date().toISOString(), type: 'Warning', reason: 'ReconcileError', message: `${code}: ${message}` });
    } catch {
      /* best effort */
    }
  }

  private async trackBoot(id: string, deleted: boolean): Promise<void> {
    if (deleted || !this.store) {
      this.pendingSince.delete(id);
      return;
    }
    const vm = await this.store.getVm(id).catch(() => undefined);
    if (!vm) return void this.pendingSince.delete(id);
    const phase = vm.status.phase;
    if (vm.desiredState === 'Running' && (phase === 'Pending' || phase === 'Scheduled')) {
      if (!this.pendingSince.has(id)) this.pendingSince.set(id, Date.now());
    } else if (phase === 'Stopped' || phase === 'Failed' || phase === 'Deleting' || phase === 'Stopping') {
      this.pendingSince.delete(id);
    }
  }

  private observeBoot(id: string, kind: 'started' | 'ready'): void {
    const a = this.agent?.observe(id);
    const b = a?.bootMs;
    if (!b) return;
    const since = this.pendingSince.get(id);
    const h = this.metrics.bootDuration;
    if (kind === 'started') {
      h.observe({ phase: 'vmm' }, b.vmm / 1000);
      if (since !== undefined) h.observe({ phase: 'prepare' }, Math.max(0, Date.now() - b.vmm - since) / 1000);
    } else if (b.guestReady > 0) {
      h.observe({ phase: 'guest' }, Math.max(0, b.guestReady - b.vmm) / 1000);
      if (since !== undefined) h.observe({ phase: 'total' }, Math.max(0, Date.now() - since) / 1000);
      this.pendingSince.delete(id);
    }
  }

  private async countByPhase(): Promise<Record<string, number>> {
    if (!this.store) return {};
    const counts: Record<string, number> = Object.fromEntries(PHASES.map((p) => [p, 0]));
    for (const vm of await listAll(this.store)) counts[vm.status.phase] = (counts[vm.status.phase] ?? 0) + 1;
    return counts;
  }
}

async function listAll(store: Store): Promise<MicroVM[]> {
  const out: MicroVM[] = [];
  let cursor: string | undefined;
  do {
    const page = await store.listVms({ limit: 1000, ...(cursor ? { cursor } : {}) });
    out.push(...page.items);
    cursor = page.nextCursor;
  } while (cursor);
  return out;
}

/** The process's observability (see the file comment). */
export const observability = new Observability();
