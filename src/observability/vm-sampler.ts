/**
 * Samples the per-VM figures of every VM with a running VMM on this node at a
 * fixed interval (default 10 s): the agent's `metrics()` (/proc, QMP, taps) plus
 * the VM's cgroup. The latest sample of each VM feeds the Prometheus series, and
 * every sample goes into the short history the dashboard charts.
 *
 * A scrape reuses the latest samples while they are fresh, so Prometheus
 * scraping at the sampling interval costs no extra collection.
 */
import type { Logger } from 'pino';
import type { MicroVM } from '../core/microvm.js';
import type { VmMetricsT } from '../core/schema.js';
import { cgroupFigures, type CgroupFigures } from './collectors.js';
import type { MetricsHistory } from './history.js';

export interface VmSample {
  vm: MicroVM;
  node: string;
  metrics: VmMetricsT;
  cgroup: CgroupFigures;
  at: number;
}

export interface VmSamplerOptions {
  nodeName: string;
  /** Every VM this node should have (the store's view, filtered to this node by the sampler). */
  listVms: () => Promise<MicroVM[]>;
  metrics: (vm: MicroVM) => Promise<VmMetricsT>;
  cgroup?: (id: string) => CgroupFigures;
  history: MetricsHistory;
  /** 0 disables periodic sampling (scrapes still sample on demand). */
  intervalMs: number;
  log?: Logger;
  /** Called after each cycle with its wall time and the process CPU time it spanned (seconds). */
  onCycle?: (wallSeconds: number, cpuSeconds: number) => void;
  concurrency?: number;
}

const ACTIVE = new Set(['Starting', 'Running', 'Paused', 'Stopping']);

export class VmSampler {
  private readonly latest = new Map<string, VmSample>();
  private timer: NodeJS.Timeout | undefined;
  private inflight: Promise<void> | undefined;
  private lastCycle = 0;
  private stopped = false;

  constructor(private readonly o: VmSamplerOptions) {}

  start(): void {
    if (this.o.intervalMs <= 0 || this.timer) return;
    const tick = (): void => {
      void this.sample().finally(() => {
        if (!this.stopped) {
          this.timer = setTimeout(tick, this.o.intervalMs);
          this.timer.unref();
        }
      });
    };
    this.timer = setTimeout(tick, Math.min(1000, this.o.intervalMs));
    this.timer.unref();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  samples(): IterableIterator<VmSample> {
    return this.latest.values();
  }

  get(id: string): VmSample | undefined {
    return this.latest.get(id);
  }

  /** Sample now unless the last cycle is younger than `maxAgeMs`; concurrent callers share one cycle. */
  async ensureFresh(maxAgeMs: number): Promise<void> {
    if (Date.now() - this.lastCycle <= maxAgeMs) return;
    await this.sample();
  }

  sample(): Promise<void> {
    if (!this.inflight) {
      this.inflight = this.cycle().finally(() => {
        this.inflight = undefined;
      });
    }
    return this.inflight;
  }

  private async cycle(): Promise<void> {
    const t0 = performance.now();
    const c0 = process.cpuUsage();
    try {
      const all = await this.o.listVms();
      const vms = all.filter((v) => (v.status.node ?? this.o.nodeName) === this.o.nodeName && ACTIVE.has(v.status.phase));
      const keep = new Set<string>();
      const queue = [...vms];
      const worker = async (): Promise<void> => {
        for (let vm = queue.shift(); vm; vm = queue.shift()) {
          try {
            const metrics = await this.o.metrics(vm);
            const cgroup = (this.o.cgroup ?? cgroupFigures)(vm.id);
            const s: VmSample = { vm, node: vm.status.node ?? this.o.nodeName, metrics, cgroup, at: Date.now() };
            this.latest.set(vm.id, s);
            keep.add(vm.id);
            this.o.history.add(metrics, cgroup.memoryBytes !== undefined ? { cgroupMemoryBytes: cgroup.memoryBytes } : {});
          } catch (e) {
            // Keep the previous sample of a VM that did not answer this time (e.g. QMP busy).
            if (this.latest.has(vm.id)) keep.add(vm.id);
            this.o.log?.debug({ vm: vm.id, err: (e as Error).message }, 'metrics sample failed');
          }
        }
      };
      await Promise.all(Array.from({ length: Math.max(1, Math.min(this.o.concurrency ?? 8, vms.length)) }, worker));
      for (const id of this.latest.keys()) if (!keep.has(id)) this.latest.delete(id);
      // History outlives a stop (the dashboard shows the last minutes), but not a delete.
      this.o.history.retain(new Set(all.map((v) => v.id)));
    } catch (e) {
      this.o.log?.warn({ err: (e as Error).message }, 'metrics collection failed');
    } finally {
      this.lastCycle = Date.now();
      const c = process.cpuUsage(c0);
      this.o.onCycle?.((performance.now() - t0) / 1000, (c.user + c.system) / 1e6);
    }
  }
}
