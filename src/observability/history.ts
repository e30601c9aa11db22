/**
 * A short per-VM history of metrics samples (default: the last 10 minutes at
 * 10 s resolution) for the dashboard's charts. Counters are kept as they are
 * and turned into rates between consecutive samples; a counter that went down
 * (the VMM restarted) starts a new series instead of yielding a negative rate.
 */
import type { MetricsHistoryPointT, VmMetricsT } from '../core/schema.js';

/** One sample as the charts get it: counters turned into rates (core/schema.ts MetricsHistoryPoint). */
export type HistoryPoint = MetricsHistoryPointT;

interface Raw {
  t: number;
  phase: string;
  cpuSeconds: number;
  memoryRssBytes: number;
  guestMemoryBytes: number;
  cgroupMemoryBytes: number | null;
  rx: number;
  tx: number;
  rd: number;
  wr: number;
  uptimeSeconds: number;
}

export interface HistoryOptions {
  /** Samples kept per VM (default 60). */
  capacity?: number;
}

export class MetricsHistory {
  private readonly rings = new Map<string, Raw[]>();
  readonly capacity: number;

  constructor(o: HistoryOptions = {}) {
    this.capacity = o.capacity ?? 60;
  }

  add(m: VmMetricsT, extra: { cgroupMemoryBytes?: number } = {}): void {
    const t = Date.parse(m.timestamp);
    const raw: Raw = {
      t: Number.isFinite(t) ? t : Date.now(),
      phase: m.phase,
      cpuSeconds: m.cpuSeconds,
      memoryRssBytes: m.memoryRssBytes,
      guestMemoryBytes: m.guestMemoryBytes,
      cgroupMemoryBytes: extra.cgroupMemoryBytes ?? null,
      rx: sum(m.net.map((n) => n.rxBytes)),
      tx: sum(m.net.map((n) => n.txBytes)),
      rd: sum(m.block.map((b) => b.readBytes)),
      wr: sum(m.block.map((b) => b.writeBytes)),
      uptimeSeconds: m.uptimeSeconds,
    };
    let ring = this.rings.get(m.id);
    if (!ring) {
      ring = [];
      this.rings.set(m.id, ring);
    }
    ring.push(raw);
    if (ring.length > this.capacity + 1) ring.splice(0, ring.length - this.capacity - 1);
  }

  /** Forget VMs that are not in `keep` (deleted ones). */
  retain(keep: Set<string>): void {
    for (const id of this.rings.keys()) if (!keep.has(id)) this.rings.delete(id);
  }

  ids(): string[] {
    return [...this.rings.keys()];
  }

  /** Points of one VM, oldest first; at most `capacity` of them. */
  points(id: string): HistoryPoint[] {
    const ring = this.rings.get(id) ?? [];
    const out: HistoryPoint[] = [];
    for (let i = Math.max(0, ring.length - this.capacity - 1); i < ring.length; i++) {
      const cur = ring[i]!;
      const prev = i > 0 ? ring[i - 1] : undefined;
      const dt = prev ? (cur.t - prev.t) / 1000 : 0;
      const rate = (a: number, b: number | undefined): number | null => (prev && dt > 0 && b !== undefined && a >= b ? (a - b) / dt : null);
      out.push({
        t: cur.t,
        phase: cur.phase,
        cpuPercent: (() => {
          const r = rate(cur.cpuSeconds, prev?.cpuSeconds);
          return r === null ? null : Math.round(r * 1000) / 10;
        })(),
        memoryRssBytes: cur.memoryRssBytes,
        guestMemoryBytes: cur.guestMemoryBytes,
        cgroupMemoryBytes: cur.cgroupMemoryBytes,
        netRxBytesPerSec: rate(cur.rx, prev?.rx),
        netTxBytesPerSec: rate(cur.tx, prev?.tx),
        blockReadBytesPerSec: rate(cur.rd, prev?.rd),
        blockWriteBytesPerSec: rate(cur.wr, prev?.wr),
        uptimeSeconds: cur.uptimeSeconds,
      });
    }
    // The oldest kept raw sample only serves as the base of the first rate.
    return out.length > this.capacity ? out.slice(out.length - this.capacity) : out;
  }
}

function sum(xs: number[]): number {
  let s = 0;
  for (const x of xs) s += x;
  return s;
}
