/**
 * Firecracker's logger and metrics sinks are FIFOs the service drains.
 *
 * Firecracker opens them non-blocking: with nobody reading, a full pipe
 * (64 KiB) drops lines rather than stalling the VMM. Each metrics line is one
 * JSON object whose counters are deltas since the previous flush (every 60 s
 * and on FlushMetrics), so block totals are the running sum of the lines; the
 * sum is persisted next to the VM so a restarted service continues it.
 */
import { appendFileSync, closeSync, constants, openSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { Socket } from 'node:net';

/** Reads a FIFO line by line without blocking a thread and without seeing EOF when writers come and go. */
export class FifoReader {
  private sock: Socket | undefined;
  private carry = '';

  constructor(
    readonly path: string,
    private readonly onLine: (line: string) => void,
  ) {}

  start(): this {
    if (this.sock) return this;
    // O_RDWR: we count as a writer too, so the pipe never reports EOF.
    const fd = openSync(this.path, constants.O_RDWR | constants.O_NONBLOCK);
    try {
      const sock = new Socket({ fd, readable: true, writable: false });
      sock.on('data', (d: Buffer) => {
        const text = this.carry + d.toString('utf8');
        const lines = text.split('\n');
        this.carry = lines.pop() ?? '';
        for (const l of lines) if (l.length > 0) this.onLine(l);
      });
      sock.on('error', () => this.close());
      sock.unref();
      this.sock = sock;
    } catch (e) {
      closeSync(fd);
      throw e;
    }
    return this;
  }

  close(): void {
    this.sock?.destroy();
    this.sock = undefined;
  }
}

export interface BlockCounters {
  readBytes: number;
  writeBytes: number;
  readOps: number;
  writeOps: number;
}

export interface MetricsTotals {
  lines: number;
  lastTimestampMs: number;
  /** Keyed by Firecracker drive id. */
  block: Record<string, BlockCounters>;
}

export const emptyTotals = (): MetricsTotals => ({ lines: 0, lastTimestampMs: 0, block: {} });

/** Add one metrics line (deltas) to the totals. Lines that are not JSON objects are ignored. */
export function addMetricsLine(t: MetricsTotals, line: string): boolean {
  let m: Record<string, unknown>;
  try {
    m = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return false;
  }
  if (!m || typeof m !== 'object') return false;
  t.lines += 1;
  if (typeof m.utc_timestamp_ms === 'number') t.lastTimestampMs = m.utc_timestamp_ms;
  for (const [k, v] of Object.entries(m)) {
    if (!k.startsWith('block_') || !v || typeof v !== 'object') continue;
    const b = v as Record<string, unknown>;
    const id = k.slice('block_'.length);
    const cur = (t.block[id] ??= { readBytes: 0, writeBytes: 0, readOps: 0, writeOps: 0 });
    cur.readBytes += num(b.read_bytes);
    cur.writeBytes += num(b.write_bytes);
    cur.readOps += num(b.read_count);
    cur.writeOps += num(b.write_count);
  }
  return true;
}

const num = (v: unknown): number => (typeof v === 'number' && Number.isFinite(v) ? v : 0);

export function loadTotals(path: string): MetricsTotals {
  try {
    const t = JSON.parse(readFileSync(path, 'utf8')) as MetricsTotals;
    if (t && typeof t === 'object' && t.block) return t;
  } catch {
    /* none yet */
  }
  return emptyTotals();
}

export function saveTotals(path: string, t: MetricsTotals): void {
  writeFileSync(path + '.tmp', JSON.stringify(t));
  renameSync(path + '.tmp', path);
}

/** Drains the metrics FIFO into persisted totals and lets callers wait for the next line. */
export class MetricsSink {
  private reader: FifoReader;
  private waiters: Array<() => void> = [];
  readonly totals: MetricsTotals;

  constructor(fifo: string, private readonly totalsPath: string) {
    this.totals = loadTotals(totalsPath);
    this.reader = new FifoReader(fifo, (line) => {
      if (addMetricsLine(this.totals, line)) {
        try {
          saveTotals(this.totalsPath, this.totals);
        } catch {
          /* VM directory gone */
        }
      }
      const w = this.waiters;
      this.waiters = [];
      for (const f of w) f();
    });
  }

  start(): this {
    this.reader.start();
    return this;
  }

  /** Resolves at the next metrics line, or after timeoutMs. */
  nextLine(timeoutMs: number): Promise<boolean> {
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== done);
        resolve(false);
      }, timeoutMs);
      const done = (): void => {
        clearTimeout(t);
        resolve(true);
      };
      this.waiters.push(done);
    });
  }

  close(): void {
    this.reader.close();
    for (const w of this.waiters) w();
    this.waiters = [];
  }
}

/** Drains the logger FIFO into a plain log file. */
export function drainLogFifo(fifo: string, logFile: string): FifoReader {
  return new FifoReader(fifo, (line) => {
    try {
      appendFileSync(logFile, line + '\n');
    } catch {
      /* VM directory gone */
    }
  }).start();
}
