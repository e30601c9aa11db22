/**
 * One connection to a guest agent over any byte stream (a Unix socket to QEMU's virtio-serial
 * chardev, Firecracker's hybrid vsock, a test agent's socket): HELLO, multiplexed streams, and
 * per-stream flow control wired to Node stream backpressure.
 *
 * Flow control: on every stream, each channel and direction has a window (256 KiB unless HELLO
 * says otherwise). The agent sends DATA only within the credit we granted; we grant it back only
 * as the consumer reads (an InboundReadable grants what it hands to its reader), so a slow
 * consumer stops the process in the guest instead of growing memory here. Our sends (stdin,
 * uploads) wait for the agent's credit and for the transport to drain.
 */
import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { Readable, Writable, type Duplex } from 'node:stream';
import { StringDecoder } from 'node:string_decoder';
import { FrameDecoder, encodeFrame, encodeHeader, encodeJSON, windowPayload, type Frame } from './codec.js';
import { GuestAgentError, fromErrorBody } from './errors.js';
import { Channel, DEFAULT_WINDOW, FrameKind, MAX_DATA, MAX_PAYLOAD, PROTOCOL_VERSION, SYNC_LEN, type AgentHello } from './protocol.js';

export interface ConnectionOptions {
  /** How long to wait for the agent's HELLO answer (default 10 s). */
  helloTimeoutMs?: number;
  /**
   * Write the resync preamble (SYNC_LEN zero bytes) before HELLO: needed on a byte stream that
   * outlives connections (virtio-serial), where a previous host may have left a partial frame.
   * Default true; a fresh connection (vsock, the agent's own Unix socket) may skip it.
   */
  resync?: boolean;
  /** Our receive window per stream and channel (default 256 KiB). */
  window?: number;
  /** Names this client in the agent's log. */
  client?: string;
  clientVersion?: string;
}

const GRANT_DIVISOR = 4;

/** Where a stream's inbound channel goes. */
export interface InboundSink {
  data(chunk: Buffer): void;
  end(): void;
  fail(err: GuestAgentError): void;
}

/**
 * One REQUEST's stream: its result, events, inbound sinks and outbound sends. Ops in client.ts
 * wrap it into Node streams.
 */
export class AgentStream {
  readonly result: Promise<any>;
  onEvent: ((body: any) => void) | undefined;
  private settle!: { resolve(v: unknown): void; reject(e: unknown): void };
  private finished = false;
  private readonly credit: number[];
  private readonly creditWaiters: Array<Array<() => void>> = [[], [], []];
  private readonly sinks = new Map<number, InboundSink>();
  private readonly recvAllowed: number[];
  private readonly recvGot = [0, 0, 0];

  constructor(
    private readonly conn: AgentConnection,
    readonly id: number,
    readonly op: string,
    sendWindow: number,
    readonly recvWindow: number,
  ) {
    this.credit = [sendWindow, sendWindow, sendWindow];
    this.recvAllowed = [recvWindow, recvWindow, recvWindow];
    this.result = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.result.catch(() => {}); // the op wrapper reports it; never an unhandled rejection
  }

  /** True once RESPONSE or ERROR arrived, or the stream failed or was cancelled. */
  get done(): boolean {
    return this.finished;
  }

  attach(channel: number, sink: InboundSink): void {
    this.sinks.set(channel, sink);
  }

  /** Give the agent `n` more bytes of credit on `channel`. */
  grant(channel: number, n: number): void {
    if (n <= 0 || this.finished) return;
    this.recvAllowed[channel]! += n;
    this.conn.writeFrame(encodeFrame(FrameKind.WINDOW, this.id, windowPayload(channel, n)));
  }

  /** Send bytes on a channel within the agent's credit; resolves once handed to the transport. */
  async sendData(channel: number, buf: Uint8Array): Promise<void> {
    let off = 0;
    while (off < buf.length) {
      if (this.finished) return; // the stream ended: the rest is dropped (the result says why)
      if (this.credit[channel]! <= 0) {
        await new Promise<void>((r) => this.creditWaiters[channel]!.push(r));
        continue;
      }
      await this.conn.writable();
      if (this.finished) return;
      const n = Math.min(this.credit[channel]!, MAX_DATA, buf.length - off);
      this.credit[channel]! -= n;
      this.conn.writeData(this.id, channel, buf.subarray(off, off + n));
      off += n;
    }
  }

  sendEOF(channel: number): void {
    if (!this.finished) this.conn.writeFrame(encodeFrame(FrameKind.EOF, this.id, Buffer.from([channel])));
  }

  /** An in-stream CONTROL message ({signal}, {resize}). */
  control(body: Record<string, unknown>): void {
    if (!this.finished) this.conn.writeFrame(encodeJSON(FrameKind.CONTROL, this.id, body));
  }

  /** Ask the agent to stop (it kills a foreground process) and fail the stream now. */
  cancel(reason?: GuestAgentError): void {
    if (this.finished) return;
    this.conn.writeFrame(encodeJSON(FrameKind.CONTROL, this.id, { cancel: true }));
    this.fail(reason ?? new GuestAgentError('CANCELLED', `${this.op} cancelled by the client`));
  }

  /** @internal */
  onFrame(f: Frame): void {
    switch (f.kind) {
      case FrameKind.EVENT:
        this.onEvent?.(parseJSON(f.payload));
        return;
      case FrameKind.DATA: {
        const ch = f.payload[0]!;
        const data = f.payload.subarray(1);
        if (ch > Channel.ERR) return this.violation(`DATA on channel ${ch}`);
        this.recvGot[ch]! += data.length;
        if (this.recvGot[ch]! > this.recvAllowed[ch]!) return this.violation(`the agent sent ${this.recvGot[ch]} bytes on channel ${ch} with credit for ${this.recvAllowed[ch]}`);
        const sink = this.sinks.get(ch);
        if (sink) sink.data(data);
        else this.grant(ch, data.length); // nobody reads this channel: drop it
        return;
      }
      case FrameKind.EOF:
        this.sinks.get(f.payload[0]!)?.end();
        return;
      case FrameKind.WINDOW: {
        if (f.payload.length < 5) return this.violation('short WINDOW frame');
        const ch = f.payload[0]!;
        if (ch > Channel.ERR) return this.violation(`WINDOW on channel ${ch}`);
        this.credit[ch]! += f.payload.readUInt32BE(1);
        this.wake(ch);
        return;
      }
      case FrameKind.RESPONSE:
        this.complete(parseJSON(f.payload));
        return;
      case FrameKind.ERROR:
        this.fail(fromErrorBody(parseJSON(f.payload)));
        return;
    }
  }

  private violation(msg: string): void {
    this.cancel(new GuestAgentError('PROTOCOL', `guest agent protocol violation on ${this.op}: ${msg}`));
  }

  private wake(ch: number): void {
    const ws = this.creditWaiters[ch]!.splice(0);
    for (const w of ws) w();
  }

  private finish(): void {
    this.finished = true;
    this.conn.forget(this);
    for (let ch = 0; ch < 3; ch++) this.wake(ch);
  }

  /** @internal */
  complete(body: unknown): void {
    if (this.finished) return;
    this.finish();
    for (const s of this.sinks.values()) s.end();
    this.settle.resolve(body);
  }

  /** @internal */
  fail(err: GuestAgentError): void {
    if (this.finished) return;
    this.finish();
    for (const s of this.sinks.values()) s.fail(err);
    this.settle.reject(err);
  }
}

/** What the connection routes a stream's frames to: an AgentStream, or a RawStream of the relay. */
interface StreamEndpoint {
  readonly id: number;
  onFrame(f: Frame): void;
  fail(err: GuestAgentError): void;
}

/** Where a RawStream's frames go. */
export interface RawStreamHandler {
  /** Every frame the agent sends on the stream, as it came (the final RESPONSE or ERROR included). */
  frame(f: Frame): void;
  /** The stream failed on this side (the connection closed, or its session was reset). */
  fail(err: GuestAgentError): void;
}

/**
 * A stream whose frames pass through unchanged, with no flow control of its own (the node
 * agent's relay, relay.ts: the remote client keeps the credit windows). It ends at the agent's
 * RESPONSE or ERROR, at `cancel()`, or when the connection does.
 */
export class RawStream implements StreamEndpoint {
  private finished = false;

  constructor(
    private readonly conn: AgentConnection,
    readonly id: number,
    private readonly handler: RawStreamHandler,
  ) {}

  get done(): boolean {
    return this.finished;
  }

  /** A frame of this stream to the agent (DATA, EOF, WINDOW, CONTROL), payload as it is. */
  send(kind: number, payload: Uint8Array): void {
    if (!this.finished) this.conn.writeFrame(encodeFrame(kind, this.id, payload));
  }

  /** Ask the agent to stop the stream (a foreground process is killed); its answer is dropped. */
  cancel(): void {
    if (this.finished) return;
    this.conn.writeFrame(encodeJSON(FrameKind.CONTROL, this.id, { cancel: true }));
    this.finish();
  }

  /** @internal */
  onFrame(f: Frame): void {
    if (this.finished) return;
    if (f.kind === FrameKind.RESPONSE || f.kind === FrameKind.ERROR) this.finish();
    this.handler.frame(f);
  }

  /** @internal */
  fail(err: GuestAgentError): void {
    if (this.finished) return;
    this.finish();
    this.handler.fail(err);
  }

  private finish(): void {
    this.finished = true;
    this.conn.forget(this);
  }
}

function parseJSON(b: Buffer): any {
  try {
    return JSON.parse(b.toString('utf8'));
  } catch {
    return { code: 'PROTOCOL', message: `the agent sent a frame that is not JSON: ${b.subarray(0, 64).toString('utf8')}` };
  }
}

interface Waiter<T> {
  resolve(v: T): void;
  reject(e: unknown): void;
  timer: NodeJS.Timeout;
}

/**
 * The connection: create it with `AgentConnection.open(transport, options)`. When the transport
 * closes, every open stream fails with a DISCONNECTED GuestAgentError and `closed` resolves.
 */
export class AgentConnection extends EventEmitter {
  /** The agent's HELLO answer of the current session. */
  hello!: AgentHello;
  /** Resolves (never rejects) with the reason once the connection is over. */
  readonly closed: Promise<GuestAgentError>;
  readonly decoder = new FrameDecoder();
  readonly window: number;
  private readonly opts: ConnectionOptions;
  private readonly streams = new Map<number, StreamEndpoint>();
  private nextId = 1;
  private ready = false;
  private helloWaiter: (Waiter<AgentHello> & { nonce: string }) | null = null;
  private readonly pings = new Map<string, Waiter<number> & { t0: bigint }>();
  private drainWaiters: Array<{ resolve(): void; reject(e: unknown): void }> = [];
  private failure: GuestAgentError | null = null;
  private resolveClosed!: (e: GuestAgentError) => void;
  private pingSeq = 0;

  private constructor(readonly transport: Duplex, opts: ConnectionOptions) {
    super();
    this.opts = opts;
    this.window = Math.max(64 * 1024, Math.min(opts.window ?? DEFAULT_WINDOW, 16 * 1024 * 1024));
    this.closed = new Promise((r) => (this.resolveClosed = r));
    transport.on('data', (chunk: Buffer) => this.onData(chunk));
    transport.on('drain', () => this.flushDrain());
    transport.on('error', (e: Error) => this.fail(new GuestAgentError('DISCONNECTED', `guest agent transport failed: ${e.message}`, { cause: e })));
    transport.on('end', () => this.fail(new GuestAgentError('DISCONNECTED', 'the guest agent closed the connection')));
    transport.on('close', () => this.fail(new GuestAgentError('DISCONNECTED', 'the guest agent connection closed')));
  }

  /** Connect over an open transport: resync preamble (unless disabled), HELLO, wait for the answer. */
  static async open(transport: Duplex, opts: ConnectionOptions = {}): Promise<AgentConnection> {
    const c = new AgentConnection(transport, opts);
    try {
      await c.handshake({ resync: opts.resync ?? true });
    } catch (e) {
      c.close(e instanceof GuestAgentError ? e : undefined);
      throw e;
    }
    return c;
  }

  get isClosed(): boolean {
    return this.failure !== null;
  }

  /** Streams open right now. */
  get openStreams(): number {
    return this.streams.size;
  }

  /**
   * (Re)start the session: every open stream fails with RESET (the agent cancels them: it kills
   * their foreground processes; background processes survive), then HELLO.
   */
  async handshake(opts: { resync?: boolean } = {}): Promise<AgentHello> {
    if (this.failure) throw this.failure;
    this.ready = false;
    const reset = new GuestAgentError('RESET', 'the guest agent session was reset (a new HELLO)');
    for (const s of [...this.streams.values()]) s.fail(reset);
    this.helloWaiter?.reject(reset);
    clearTimeout(this.helloWaiter?.timer);
    const nonce = randomBytes(8).toString('hex');
    const timeoutMs = this.opts.helloTimeoutMs ?? 10_000;
    const answer = new Promise<AgentHello>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.helloWaiter = null;
        reject(new GuestAgentError('TIMEOUT', `the guest agent did not answer HELLO within ${timeoutMs} ms (agent not running, or not on this channel?)`));
      }, timeoutMs);
      this.helloWaiter = { resolve, reject, timer, nonce };
    });
    if (opts.resync) this.transport.write(Buffer.alloc(SYNC_LEN));
    this.writeFrame(encodeJSON(FrameKind.HELLO, 0, { client: this.opts.client ?? 'mvm-ts', version: this.opts.clientVersion ?? '0.1.0', protocol: PROTOCOL_VERSION, window: this.window, nonce }));
    const hello = await answer;
    if (hello.protocol !== PROTOCOL_VERSION) throw new GuestAgentError('UNSUPPORTED', `the guest agent speaks protocol ${hello.protocol}, this client ${PROTOCOL_VERSION}`);
    this.hello = hello;
    this.ready = true;
    return hello;
  }

  /** Open a stream with a REQUEST. Never throws: a closed connection gives a failed stream. */
  openStream(request: { op: string } & Record<string, unknown>): AgentStream {
    const id = this.allocateId();
    const s = new AgentStream(this, id, request.op, this.hello?.window ?? DEFAULT_WINDOW, this.window);
    const body = Buffer.from(JSON.stringify(request));
    if (this.failure) {
      s.fail(this.failure);
    } else if (!this.ready) {
      s.fail(new GuestAgentError('RESET', 'the guest agent session is being (re)established'));
    } else if (body.length > MAX_PAYLOAD) {
      s.fail(new GuestAgentError('EINVAL', `the ${request.op} request is ${body.length} bytes, more than a frame holds (${MAX_PAYLOAD})`));
    } else {
      this.streams.set(id, s);
      this.writeFrame(encodeFrame(FrameKind.REQUEST, id, body));
    }
    return s;
  }

  /**
   * A stream opened with a REQUEST payload as it is, whose frames go to `handler` unchanged (the
   * node agent's relay). Throws a GuestAgentError when the connection is closed or not ready, or
   * the payload is larger than a frame.
   */
  openRaw(request: Buffer, handler: RawStreamHandler): RawStream {
    if (this.failure) throw this.failure;
    if (!this.ready) throw new GuestAgentError('RESET', 'the guest agent session is being (re)established');
    if (request.length > MAX_PAYLOAD) throw new GuestAgentError('EINVAL', `a request of ${request.length} bytes is more than a frame holds (${MAX_PAYLOAD})`);
    const s = new RawStream(this, this.allocateId(), handler);
    this.streams.set(s.id, s);
    this.writeFrame(encodeFrame(FrameKind.REQUEST, s.id, request));
    return s;
  }

  /** Round trip of a PING (ms). */
  ping(timeoutMs = 5_000): Promise<number> {
    if (this.failure) return Promise.reject(this.failure);
    const payload = Buffer.alloc(8);
    payload.writeUInt32BE(++this.pingSeq >>> 0, 4);
    const key = payload.toString('hex');
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pings.delete(key);
        reject(new GuestAgentError('TIMEOUT', `the guest agent did not answer PING within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pings.set(key, { resolve, reject, timer, t0: process.hrtime.bigint() });
      this.writeFrame(encodeFrame(FrameKind.PING, 0, payload));
    });
  }

  /** Close the transport; open streams fail with DISCONNECTED (or the given reason). */
  close(reason?: GuestAgentError): void {
    this.fail(reason ?? new GuestAgentError('DISCONNECTED', 'the guest agent connection was closed by the client'));
  }

  // --- internals -----------------------------------------------------------------------------------

  private allocateId(): number {
    for (;;) {
      const id = this.nextId;
      this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
      if (!this.streams.has(id)) return id;
    }
  }

  /** @internal */
  forget(s: StreamEndpoint): void {
    if (this.streams.get(s.id) === s) this.streams.delete(s.id);
  }

  /** @internal Write a control frame (never waits). */
  writeFrame(buf: Buffer): void {
    if (!this.failure) this.transport.write(buf);
  }

  /** @internal A DATA frame without copying the payload. */
  writeData(stream: number, channel: number, data: Uint8Array): void {
    if (this.failure) return;
    const ch = Buffer.from([channel]);
    const header = encodeHeader(FrameKind.DATA, stream, [ch, data]);
    this.transport.cork();
    this.transport.write(Buffer.concat([header, ch]));
    this.transport.write(data);
    process.nextTick(() => this.transport.uncork());
  }

  /** @internal Resolves when the transport accepts more (its buffer is below its high-water mark). */
  writable(): Promise<void> {
    if (this.failure) return Promise.resolve();
    if (!this.transport.writableNeedDrain) return Promise.resolve();
    return new Promise((resolve, reject) => this.drainWaiters.push({ resolve, reject }));
  }

  private flushDrain(): void {
    const ws = this.drainWaiters.splice(0);
    for (const w of ws) w.resolve();
  }

  private onData(chunk: Buffer): void {
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (e) {
      this.fail(new GuestAgentError('PROTOCOL', `cannot decode the guest agent's frames: ${(e as Error).message}`, { cause: e }));
      return;
    }
    for (const f of frames) this.dispatch(f);
  }

  private dispatch(f: Frame): void {
    switch (f.kind) {
      case FrameKind.HELLO: {
        const body = parseJSON(f.payload) as AgentHello;
        const w = this.helloWaiter;
        if (!w || (body.nonce !== undefined && body.nonce !== w.nonce)) return; // a stale answer
        this.helloWaiter = null;
        clearTimeout(w.timer);
        w.resolve(body);
        return;
      }
      case FrameKind.PONG: {
        const p = this.pings.get(f.payload.toString('hex'));
        if (!p) return;
        this.pings.delete(f.payload.toString('hex'));
        clearTimeout(p.timer);
        p.resolve(Number(process.hrtime.bigint() - p.t0) / 1e6);
        return;
      }
    }
    if (f.stream === 0) {
      if (f.kind !== FrameKind.ERROR) return;
      const err = fromErrorBody(parseJSON(f.payload));
      if (this.helloWaiter) {
        // Answering our HELLO (an unsupported protocol); "no session" nags of an old session are not.
        if (err.agentCode === 'UNSUPPORTED') {
          clearTimeout(this.helloWaiter.timer);
          this.helloWaiter.reject(err);
          this.helloWaiter = null;
        }
        return;
      }
      if (this.ready) this.fail(new GuestAgentError(err.agentCode, `the guest agent reported a connection error: ${err.message}`));
      return;
    }
    if (!this.ready) return; // frames of a session we are not part of
    this.streams.get(f.stream)?.onFrame(f);
  }

  private fail(err: GuestAgentError): void {
    if (this.failure) return;
    this.failure = err;
    this.ready = false;
    if (this.helloWaiter) {
      clearTimeout(this.helloWaiter.timer);
      this.helloWaiter.reject(err);
      this.helloWaiter = null;
    }
    for (const p of this.pings.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pings.clear();
    for (const s of [...this.streams.values()]) s.fail(err);
    this.streams.clear();
    this.flushDrain();
    this.transport.destroy();
    this.resolveClosed(err);
    this.emit('close', err);
  }
}

// --- Node streams over a stream's channels ----------------------------------------------------------

export interface InboundOptions {
  /**
   * How a failure of the stream reaches the reader: 'always' destroys the Readable with the error
   * (it is the product: readFile, tarRead); 'ifListened' does so only when an 'error' listener
   * is attached, else the Readable just ends (exec output: the result promise carries the error).
   */
  errors: 'always' | 'ifListened';
  /** Called when the reader destroys the Readable before the end (e.g. cancel the stream). */
  onEarlyDestroy?: () => void;
}

/**
 * A Readable fed by one inbound channel. It hands data to its reader only when asked (_read), and
 * grants the agent credit for what it handed over, so the agent never sends more than the window
 * beyond what the reader consumed.
 */
export class InboundReadable extends Readable implements InboundSink {
  private queue: Buffer[] = [];
  private wanting = false;
  private ended = false;
  private eofPushed = false;
  private discarding = false;
  private ungranted = 0;
  private readonly threshold: number;
  /** Mutable: an op may hand the Readable out later and only then want errors on it. */
  readonly options: InboundOptions;

  constructor(
    private readonly stream: AgentStream,
    private readonly channel: number,
    options: InboundOptions,
  ) {
    super({ highWaterMark: MAX_DATA });
    this.options = { ...options };
    this.threshold = Math.max(1, Math.floor(stream.recvWindow / GRANT_DIVISOR));
    stream.attach(channel, this);
  }

  override _read(): void {
    this.wanting = true;
    this.flush();
  }

  data(chunk: Buffer): void {
    if (this.discarding || this.destroyed) {
      this.stream.grant(this.channel, chunk.length);
      return;
    }
    this.queue.push(chunk);
    this.flush();
  }

  end(): void {
    this.ended = true;
    this.flush();
  }

  fail(err: GuestAgentError): void {
    if (this.destroyed || this.eofPushed) return;
    if (this.options.errors === 'always' || this.listenerCount('error') > 0) {
      this.queue = [];
      this.destroy(err);
    } else {
      this.end();
    }
  }

  private flush(): void {
    while (this.wanting && this.queue.length > 0 && !this.destroyed) {
      const b = this.queue.shift()!;
      this.ungranted += b.length;
      if (this.ungranted >= this.threshold) {
        this.stream.grant(this.channel, this.ungranted);
        this.ungranted = 0;
      }
      this.wanting = this.push(b);
    }
    if (this.ended && this.queue.length === 0 && !this.eofPushed && !this.destroyed) {
      this.eofPushed = true;
      this.push(null);
    }
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.eofPushed) {
      this.discarding = true;
      let n = this.ungranted;
      for (const b of this.queue) n += b.length;
      this.queue = [];
      this.ungranted = 0;
      this.stream.grant(this.channel, n);
      if (!this.stream.done) this.options.onEarlyDestroy?.();
    }
    cb(err);
  }
}

/** A Writable onto an outbound channel: each write waits for credit and for the transport. */
export class OutboundWritable extends Writable {
  constructor(
    private readonly stream: AgentStream,
    private readonly channel: number = Channel.IN,
    private readonly onEarlyDestroy?: () => void,
  ) {
    super({ highWaterMark: MAX_DATA });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.stream.sendData(this.channel, chunk).then(() => cb(), cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    this.stream.sendEOF(this.channel);
    cb();
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (!this.writableFinished && !this.stream.done) this.onEarlyDestroy?.();
    cb(err);
  }
}

/**
 * A sink that splits a channel into JSON lines (file.list, process.list), granting credit as it
 * parses, with a cap on one line.
 */
export class JsonLinesSink<T> implements InboundSink {
  readonly items: T[] = [];
  private partial = '';
  private readonly text = new StringDecoder('utf8');
  private bad: GuestAgentError | null = null;

  constructor(
    private readonly stream: AgentStream,
    private readonly channel: number,
    private readonly maxItems = Number.POSITIVE_INFINITY,
  ) {
    stream.attach(channel, this);
  }

  data(chunk: Buffer): void {
    this.partial += this.text.write(chunk);
    const lines = this.partial.split('\n');
    this.partial = lines.pop()!;
    for (const l of lines) {
      if (!l) continue;
      if (this.items.length >= this.maxItems) {
        this.stream.cancel(new GuestAgentError('LIMIT', `more than ${this.maxItems} entries`));
        return;
      }
      try {
        this.items.push(JSON.parse(l) as T);
      } catch {
        this.bad ??= new GuestAgentError('PROTOCOL', `a bad JSON line from the agent: ${l.slice(0, 80)}`);
      }
    }
    if (this.partial.length > 1 << 20) this.stream.cancel(new GuestAgentError('PROTOCOL', 'a JSON line longer than 1 MiB'));
    this.stream.grant(this.channel, chunk.length);
  }

  end(): void {}

  fail(): void {}

  /** A line that was not JSON, if any. */
  get error(): GuestAgentError | null {
    return this.bad;
  }
}
