/**
 * A rate-limited work queue with client-go's semantics (k8s.io/client-go/util/workqueue):
 *
 * - keys are deduplicated: a key added while queued is queued once;
 * - a key is handed to one worker at a time: added while being processed, it is queued again when
 *   the worker calls `done` (never processed twice concurrently);
 * - `addRateLimited` re-adds after a per-key exponential backoff (base·2^failures, capped), and
 *   `forget` resets that key's failures (after a success);
 * - `addAfter` re-adds after a delay (periodic requeue, e.g. waiting on a node).
 *
 * Workers pull with `get()` (resolves when a key is ready, or undefined after `shutDown()`).
 */
export interface WorkQueueOptions {
  /** First retry delay (ms); default 250. */
  baseDelayMs?: number;
  /** Retry delay cap (ms); default 60 s. */
  maxDelayMs?: number;
}

export class RateLimitingQueue {
  private readonly queue: string[] = [];
  private readonly dirty = new Set<string>();
  private readonly processing = new Set<string>();
  private readonly failures = new Map<string, number>();
  private readonly timers = new Map<string, { at: number; timer: NodeJS.Timeout }>();
  private readonly waiters: Array<(k: string | undefined) => void> = [];
  private shuttingDown = false;
  private readonly base: number;
  private readonly max: number;

  constructor(o: WorkQueueOptions = {}) {
    this.base = o.baseDelayMs ?? 250;
    this.max = o.maxDelayMs ?? 60_000;
  }

  add(key: string): void {
    if (this.shuttingDown || this.dirty.has(key)) return;
    this.dirty.add(key);
    if (this.processing.has(key)) return; // re-queued by done()
    const w = this.waiters.shift();
    if (w) {
      this.dirty.delete(key);
      this.processing.add(key);
      w(key);
    } else this.queue.push(key);
  }

  /** Add after `ms`; an earlier pending addAfter of the same key wins. */
  addAfter(key: string, ms: number): void {
    if (this.shuttingDown) return;
    if (ms <= 0) return this.add(key);
    const at = Date.now() + ms;
    const t = this.timers.get(key);
    if (t && t.at <= at) return;
    if (t) clearTimeout(t.timer);
    const timer = setTimeout(() => {
      this.timers.delete(key);
      this.add(key);
    }, ms);
    this.timers.set(key, { at, timer });
  }

  /** The key's next backoff delay (and counts the failure). */
  when(key: string): number {
    const n = this.failures.get(key) ?? 0;
    this.failures.set(key, n + 1);
    return Math.min(this.max, this.base * 2 ** Math.min(n, 30));
  }

  addRateLimited(key: string): number {
    const d = this.when(key);
    this.addAfter(key, d);
    return d;
  }

  forget(key: string): void {
    this.failures.delete(key);
  }

  numRequeues(key: string): number {
    return this.failures.get(key) ?? 0;
  }

  /** Next key to process (marks it processing); undefined once shut down. */
  get(): Promise<string | undefined> {
    if (this.shuttingDown) return Promise.resolve(undefined);
    const key = this.queue.shift();
    if (key !== undefined) {
      this.dirty.delete(key);
      this.processing.add(key);
      return Promise.resolve(key);
    }
    return new Promise((r) => this.waiters.push(r));
  }

  /** The worker finished `key`; if it was added meanwhile, it is queued again. */
  done(key: string): void {
    this.processing.delete(key);
    if (this.dirty.has(key)) {
      this.dirty.delete(key);
      this.add(key);
    }
  }

  get length(): number {
    return this.queue.length;
  }

  isProcessing(key: string): boolean {
    return this.processing.has(key);
  }

  /** True when nothing is queued, processing or waiting on a timer. */
  idle(): boolean {
    return this.queue.length === 0 && this.processing.size === 0 && this.timers.size === 0;
  }

  shutDown(): void {
    this.shuttingDown = true;
    for (const t of this.timers.values()) clearTimeout(t.timer);
    this.timers.clear();
    this.queue.length = 0;
    this.dirty.clear();
    for (const w of this.waiters.splice(0)) w(undefined);
  }
}

/** Run `workers` loops over the queue: each key is handled by one worker at a time. */
export function runWorkers(q: RateLimitingQueue, workers: number, handle: (key: string) => Promise<void>, onError: (key: string, e: unknown, retryInMs: number) => void): Promise<void[]> {
  const loop = async (): Promise<void> => {
    for (;;) {
      const key = await q.get();
      if (key === undefined) return;
      try {
        await handle(key);
        q.forget(key);
      } catch (e) {
        onError(key, e, q.addRateLimited(key));
      } finally {
        q.done(key);
      }
    }
  };
  return Promise.all(Array.from({ length: workers }, loop));
}
