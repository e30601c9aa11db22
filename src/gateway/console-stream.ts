/** Reading and following a VM's console log file over HTTP (chunked text or SSE), with backpressure. */
import { closeSync, existsSync, openSync, readSync, statSync } from 'node:fs';
import type { FastifyReply, FastifyRequest } from 'fastify';

export function readConsoleTail(path: string, maxBytes: number): string {
  if (!existsSync(path)) return '';
  const size = statSync(path).size;
  const start = Math.max(0, size - maxBytes);
  return readRange(path, start, size).toString('utf8');
}

function readRange(path: string, start: number, end: number): Buffer {
  const fd = openSync(path, 'r');
  try {
    const buf = Buffer.alloc(end - start);
    const n = readSync(fd, buf, 0, buf.length, start);
    return buf.subarray(0, n);
  } finally {
    closeSync(fd);
  }
}

export interface StreamOptions {
  reply: FastifyReply;
  req: FastifyRequest;
  sse: boolean;
  tail: number;
  path: () => Promise<string | undefined>;
  /** False once the VM cannot produce more output (stopped, failed, deleted): the stream ends. */
  alive: () => Promise<boolean>;
  pollMs?: number;
  /** Extra response headers (e.g. RateLimit-*), since the reply is hijacked. */
  headers?: Record<string, string>;
  /** Cluster mode: the bytes come from the VM's node agent instead of following `path`. */
  source?: (signal: AbortSignal) => AsyncIterable<Buffer>;
}

/** All of a (finite) console stream as text. */
export async function collectConsole(chunks: AsyncIterable<Buffer>): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of chunks) parts.push(c);
  return Buffer.concat(parts).toString('utf8');
}

export interface FollowOptions {
  tail: number;
  path: () => Promise<string | undefined>;
  /** False once the VM cannot produce more output (stopped, failed, deleted): the stream ends. */
  alive: () => Promise<boolean>;
  pollMs?: number;
  signal?: AbortSignal;
}

/** The most followConsole reads and hands over at once. */
export const FOLLOW_CHUNK = 64 * 1024;

/** Where writeWithBackpressure writes: a Writable, an HTTP response, a gRPC server stream. */
export interface BackpressuredSink<T> {
  write(chunk: T): boolean;
  once(event: 'drain' | 'close' | 'error', f: () => void): unknown;
  off(event: 'drain' | 'close' | 'error', f: () => void): unknown;
  readonly destroyed?: boolean;
  readonly writableEnded?: boolean;
}

/**
 * Write a chunk, and when the destination's buffer is full wait for it to drain (or to close, or
 * `signal` to abort): the producer of the next chunk waits with us. Answers false once the
 * destination cannot take more.
 */
export async function writeWithBackpressure<T>(dest: BackpressuredSink<T>, chunk: T, signal?: AbortSignal): Promise<boolean> {
  if (dest.destroyed || dest.writableEnded || signal?.aborted) return false;
  if (dest.write(chunk)) return true;
  await new Promise<void>((resolve) => {
    const done = (): void => {
      dest.off('drain', done);
      dest.off('close', done);
      dest.off('error', done);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    dest.once('drain', done);
    dest.once('close', done);
    dest.once('error', done);
    signal?.addEventListener('abort', done, { once: true });
  });
  return !(dest.destroyed || dest.writableEnded || signal?.aborted);
}

/**
 * The console log from `tail` bytes before its end, then every new byte as it is written, until
 * the VM cannot produce more or `signal` aborts. Follows a log rotated by a restart. Shared by
 * REST (chunked text / SSE) and gRPC (server streaming).
 */
export async function* followConsole(o: FollowOptions): AsyncGenerator<Buffer, void, undefined> {
  let offset = -1;
  let ino = -1;
  let idle = 0;
  const pollMs = o.pollMs ?? 100;
  while (!o.signal?.aborted) {
    const path = await o.path();
    let grew = false;
    if (path && existsSync(path)) {
      const st = statSync(path);
      if (st.ino !== ino || st.size < offset) {
        // First read, or the log was rotated by a restart: start from the (tail of the) new file.
        offset = ino === -1 ? Math.max(0, st.size - o.tail) : 0;
        ino = st.ino;
      }
      // At most FOLLOW_CHUNK bytes per step: the consumer pulls the next one only once it has
      // written this one out (backpressure), so a guest flooding its console while the client
      // reads slowly never makes us hold more than a chunk.
      while (st.size > offset && !o.signal?.aborted) {
        const buf = readRange(path, offset, Math.min(st.size, offset + FOLLOW_CHUNK));
        if (buf.length === 0) break;
        offset += buf.length;
        grew = true;
        yield buf;
      }
    }
    if (grew) idle = 0;
    else if (++idle % Math.max(1, Math.round(1000 / pollMs)) === 0 && !(await o.alive())) break;
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

export async function streamConsole(o: StreamOptions): Promise<void> {
  const raw = o.reply.raw;
  o.reply.hijack();
  raw.writeHead(200, {
    'content-type': o.sse ? 'text/event-stream; charset=utf-8' : 'text/plain; charset=utf-8',
    'cache-control': 'no-cache',
    'x-content-type-options': 'nosniff',
    connection: 'keep-alive',
    ...(o.headers ?? {}),
  });
  // Clients see the stream open before the first byte of output (a quiet console can take long).
  raw.flushHeaders();
  const ac = new AbortController();
  o.req.raw.on('close', () => ac.abort());
  // One write per chunk, awaited when the socket's buffer is full: a slow client slows the
  // follower down instead of piling the console up in our memory.
  const write = (buf: Buffer): Promise<boolean> =>
    writeWithBackpressure(raw, o.sse ? buf.toString('utf8').split('\n').map((line) => `data: ${line}\n`).join('') + '\n' : buf, ac.signal);
  const chunks = o.source ? o.source(ac.signal) : followConsole({ tail: o.tail, path: o.path, alive: o.alive, signal: ac.signal, ...(o.pollMs ? { pollMs: o.pollMs } : {}) });
  try {
    for await (const buf of chunks) if (!(await write(buf))) break;
  } catch (e) {
    // Headers are sent: a broken upstream (cluster mode) can only end the stream.
    if (!o.source) throw e;
    if (o.sse) raw.write(`event: error\ndata: ${(e as Error).message.replace(/\n/g, ' ')}\n\n`);
  }
  if (!ac.signal.aborted) raw.end();
}
