/**
 * The event feed: one tailer per process follows the store's event log (woken by
 * store changes, with a poll as a safety net), counts events into the metrics,
 * and fans them out to Server-Sent-Events subscribers. `streamEvents` serves
 * one SSE client: a backlog (resumed from `Last-Event-ID`, or the last N events),
 * then live events, with heartbeats, filtered by tenant and optionally VM.
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { Store, VmEvent } from '../core/ports/store.js';

export type EventListener = (e: VmEvent) => void;

export class EventTailer {
  private lastSeq = 0;
  private readonly listeners = new Set<EventListener>();
  private timer: NodeJS.Timeout | undefined;
  private unwatch: (() => void) | undefined;
  private running: Promise<void> | undefined;
  private again = false;
  private started = false;

  constructor(
    private readonly store: Store,
    private readonly o: { pollMs?: number; onEvent?: EventListener } = {},
  ) {}

  /** Skips the existing log: only events appended from now on are delivered. */
  async start(): Promise<void> {
    if (this.started) return;
    this.started = true;
    this.lastSeq = await lastSeq(this.store);
    // kick() never rejects (it swallows a failed read; the next kick retries): fire and forget.
    this.unwatch = this.store.watch(() => void this.kick());
    this.timer = setInterval(() => void this.kick(), this.o.pollMs ?? 1000);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
    this.unwatch?.();
    this.started = false;
  }

  subscribe(cb: EventListener): () => void {
    this.listeners.add(cb);
    return () => this.listeners.delete(cb);
  }

  /** Read whatever is new now (coalesced). */
  kick(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        for (;;) {
          const evs = await this.store.listEvents({ afterSeq: this.lastSeq, limit: 500 });
          for (const e of evs) {
            this.lastSeq = Math.max(this.lastSeq, e.seq ?? 0);
            this.o.onEvent?.(e);
            for (const l of this.listeners) l(e);
          }
          if (evs.length < 500) break;
        }
      } while (this.again);
    })()
      .catch(() => undefined)
      .finally(() => {
        this.running = undefined;
      });
    return this.running;
  }
}

/** Highest event sequence number in the store (0 when empty). */
export async function lastSeq(store: Store, filter: { tenant?: string; vmId?: string } = {}): Promise<number> {
  let seq = 0;
  for (;;) {
    const page = await store.listEvents({ ...filter, afterSeq: seq, limit: 5000 });
    if (page.length === 0) return seq;
    seq = page[page.length - 1]!.seq ?? seq;
    if (page.length < 5000) return seq;
  }
}

/** The last `n` events matching the filter, oldest first. */
export async function tailEvents(store: Store, filter: { tenant?: string; vmId?: string }, n: number): Promise<VmEvent[]> {
  let seq = 0;
  let keep: VmEvent[] = [];
  for (;;) {
    const page = await store.listEvents({ ...filter, afterSeq: seq, limit: 5000 });
    keep = keep.concat(page).slice(-n);
    if (page.length < 5000) return n > 0 ? keep : [];
    seq = page[page.length - 1]!.seq ?? seq;
  }
}

export interface EventStreamOptions {
  req: FastifyRequest;
  reply: FastifyReply;
  store: Store;
  tailer: EventTailer;
  /** undefined: every tenant (admins). */
  tenant?: string;
  vmId?: string;
  /** Resume after this sequence number (Last-Event-ID / ?after=); otherwise the last `tail` events first. */
  afterSeq?: number;
  tail: number;
  heartbeatMs?: number;
  /** Ends the stream (server shutdown: open streams must not hold it up). */
  signal?: AbortSignal;
}

export const toWire = (e: VmEvent): Record<string, unknown> => ({
  seq: e.seq,
  vmId: e.vmId,
  tenant: e.tenant,
  time: e.time,
  type: e.type,
  reason: e.reason,
  message: e.message,
});

export async function streamEvents(o: EventStreamOptions): Promise<void> {
  const raw = o.reply.raw;
  const match = (e: VmEvent): boolean => (o.tenant === undefined || e.tenant === o.tenant) && (o.vmId === undefined || e.vmId === o.vmId);
  let sent = o.afterSeq ?? 0;
  let live = false;
  const buffered: VmEvent[] = [];
  const send = (e: VmEvent): void => {
    if ((e.seq ?? 0) <= sent) return;
    sent = e.seq ?? sent;
    raw.write(`id: ${e.seq}\ndata: ${JSON.stringify(toWire(e))}\n\n`);
  };
  const unsub = o.tailer.subscribe((e) => {
    if (!match(e)) return;
    if (live) send(e);
    else buffered.push(e);
  });
  o.reply.hijack();
  raw.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache',
    'x-content-type-options': 'nosniff',
    'x-accel-buffering': 'no',
    connection: 'keep-alive',
  });
  raw.write('retry: 3000\n\n');
  const filter = { ...(o.tenant !== undefined ? { tenant: o.tenant } : {}), ...(o.vmId ? { vmId: o.vmId } : {}) };
  try {
    if (o.afterSeq !== undefined) {
      for (let from = o.afterSeq; ; ) {
        const page = await o.store.listEvents({ ...filter, afterSeq: from, limit: 1000 });
        page.forEach(send);
        if (page.length < 1000) break;
        from = page[page.length - 1]!.seq ?? from;
      }
    } else {
      (await tailEvents(o.store, filter, o.tail)).forEach(send);
    }
  } catch {
    /* the backlog is best effort; live events follow */
  }
  live = true;
  buffered.splice(0).forEach(send);
  await o.tailer.kick();
  const hb = setInterval(() => raw.write(': keep-alive\n\n'), o.heartbeatMs ?? 15000);
  await new Promise<void>((resolve) => {
    o.req.raw.on('close', resolve);
    raw.on('close', resolve);
    raw.on('error', resolve);
    if (o.signal?.aborted) resolve();
    o.signal?.addEventListener('abort', () => resolve(), { once: true });
  });
  clearInterval(hb);
  unsub();
  if (!raw.writableEnded) raw.end();
}
