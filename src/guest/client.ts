/**
 * The typed client of the guest agent: exec (streaming and buffered), background processes,
 * files, tar, TCP, setup, identity, shutdown. Build one with `GuestAgentClient.connect(duplex)` or
 * the helpers of transports.ts.
 */
import { Duplex, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { AgentConnection, InboundReadable, JsonLinesSink, OutboundWritable, type AgentStream, type ConnectionOptions } from './connection.js';
import { GuestAgentError } from './errors.js';
import { Channel, type AgentHello, type ExecRequest, type ExecResult, type FileStat, type GuestUser, type HealthInfo, type IdentityRequest, type IdentityResult, type ProcessInfo } from './protocol.js';

/** A running exec. Read stdout and stderr (or destroy them to discard): unread output stops the process. */
export interface ExecHandle {
  /** Fed to the process (needs `stdin: true` or `tty: true`); end() closes it (^D on a tty). */
  readonly stdin: Writable;
  readonly stdout: Readable;
  /** Empty with a tty (its output is merged on stdout). */
  readonly stderr: Readable;
  /** Resolves with the pid once running; with pid 0 when it never started (exit 126/127). */
  readonly started: Promise<{ pid: number }>;
  readonly result: Promise<ExecResult>;
  /** A signal to the process group: a name ("TERM", "SIGINT") or a number. */
  signal(sig: string | number): void;
  /** Terminal size (tty only). */
  resize(cols: number, rows: number): void;
  /** Kill it (SIGKILL to the group); result rejects with CANCELLED. */
  cancel(): void;
}

export interface BufferedExecOptions<E extends 'utf8' | 'buffer'> {
  /** Cap on stdout + stderr kept (default 1 MiB); the rest is read and dropped, `truncated` says so. */
  maxOutputBytes?: number;
  /** 'utf8' (default): strings; 'buffer': Buffers. */
  encoding?: E;
  /** Written to stdin, then closed. */
  input?: Buffer | string;
}

export interface BufferedExecResult<T> extends ExecResult {
  stdout: T;
  stderr: T;
  truncated: boolean;
}

export interface AttachHandle {
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly attached: Promise<{ pid: number; running: boolean }>;
  /** The process's exit, once its output was delivered; droppedBytes: output that had left the buffer. */
  readonly result: Promise<ExecResult & { droppedBytes: number }>;
  signal(sig: string | number): void;
  resize(cols: number, rows: number): void;
  /** Stop following (the process keeps running). */
  detach(): void;
}

export interface FileOptions {
  /** Do the operation as this guest user (its permissions, its ownership). Default root. */
  user?: GuestUser;
}

export interface ReadFileHandle {
  stat: FileStat;
  /** The contents, streamed within the flow-control window (constant memory). */
  stream: Readable;
  done: Promise<{ size: number }>;
}

export interface WriteFileOptions extends FileOptions {
  /** Permission bits (default 0o644 for a new file; applied to an existing one when given). */
  mode?: number;
  /** Create missing parent directories (default true). */
  mkdirs?: boolean;
  append?: boolean;
}

export type DataSource = Readable | Buffer | Uint8Array | string;

export interface SetupRequest {
  /** Merged into the default env of every later exec (kept across agent restarts). */
  env?: Record<string, string>;
  files?: Array<{ path: string; content: Buffer | string; mode?: number }>;
}

export interface ClientOptions extends ConnectionOptions {}

function toBuffer(d: Buffer | Uint8Array | string): Buffer {
  return typeof d === 'string' ? Buffer.from(d) : Buffer.isBuffer(d) ? d : Buffer.from(d.buffer, d.byteOffset, d.byteLength);
}

function normalizeResult(r: any): ExecResult {
  return { exitCode: r.exitCode, signal: r.signal ?? null, timedOut: !!r.timedOut, durationMs: r.durationMs ?? 0, ...(r.pid ? { pid: r.pid } : {}) };
}

/** A Writable that refuses writes (exec without stdin). */
function noStdin(): Writable {
  return new Writable({
    write(_c, _e, cb) {
      cb(new GuestAgentError('EINVAL', 'this exec was started without stdin: true'));
    },
  });
}

export class GuestAgentClient {
  constructor(readonly connection: AgentConnection) {}

  /** HELLO over an open transport (see ConnectionOptions for resync and timeouts). */
  static async connect(transport: Duplex, opts: ClientOptions = {}): Promise<GuestAgentClient> {
    return new GuestAgentClient(await AgentConnection.open(transport, opts));
  }

  /** The agent's HELLO: version, bootId, capabilities, transport. */
  get hello(): AgentHello {
    return this.connection.hello;
  }

  /** Resolves with the reason when the connection ends. */
  get closed(): Promise<GuestAgentError> {
    return this.connection.closed;
  }

  close(): void {
    this.connection.close();
  }

  ping(timeoutMs?: number): Promise<number> {
    return this.connection.ping(timeoutMs);
  }

  /** A JSON op without data channels (the RESPONSE body). */
  call<T = any>(op: string, body: Record<string, unknown> = {}): Promise<T> {
    return this.connection.openStream({ ...body, op }).result as Promise<T>;
  }

  health(): Promise<HealthInfo> {
    return this.call('health');
  }

  // --- exec ----------------------------------------------------------------------------------------

  exec(req: ExecRequest): ExecHandle {
    const s = this.connection.openStream({ op: 'exec', ...req, background: false });
    const stdout = new InboundReadable(s, Channel.OUT, { errors: 'ifListened' });
    const stderr = new InboundReadable(s, Channel.ERR, { errors: 'ifListened' });
    const stdin = req.stdin || req.tty ? new OutboundWritable(s, Channel.IN) : noStdin();
    let onStarted!: (v: { pid: number }) => void;
    const started = new Promise<{ pid: number }>((resolve, reject) => {
      onStarted = resolve;
      s.result.then(() => resolve({ pid: 0 }), reject);
    });
    started.catch(() => {});
    s.onEvent = (ev) => {
      if (ev?.started) onStarted({ pid: ev.started.pid });
    };
    const result = s.result.then(normalizeResult);
    result.catch(() => {});
    return {
      stdin,
      stdout,
      stderr,
      started,
      result,
      signal: (sig) => s.control({ signal: sig }),
      resize: (cols, rows) => s.control({ resize: { cols, rows } }),
      cancel: () => s.cancel(),
    };
  }

  /** Run to completion, keeping at most maxOutputBytes of output (never more in memory). */
  execBuffered(req: ExecRequest, opts?: BufferedExecOptions<'utf8'>): Promise<BufferedExecResult<string>>;
  execBuffered(req: ExecRequest, opts: BufferedExecOptions<'buffer'>): Promise<BufferedExecResult<Buffer>>;
  async execBuffered(req: ExecRequest, opts: BufferedExecOptions<'utf8' | 'buffer'> = {}): Promise<BufferedExecResult<string | Buffer>> {
    const cap = opts.maxOutputBytes ?? 1 << 20;
    const h = this.exec({ ...req, stdin: opts.input !== undefined || !!req.stdin });
    const kept: Record<'out' | 'err', Buffer[]> = { out: [], err: [] };
    let total = 0;
    let truncated = false;
    const collect = (which: 'out' | 'err') => (chunk: Buffer) => {
      const room = cap - total;
      if (chunk.length > room) truncated = true;
      if (room <= 0) return;
      const keep = chunk.length > room ? chunk.subarray(0, room) : chunk;
      kept[which].push(Buffer.from(keep));
      total += keep.length;
    };
    h.stdout.on('data', collect('out'));
    h.stderr.on('data', collect('err'));
    if (opts.input !== undefined) h.stdin.end(toBuffer(opts.input));
    else if (req.stdin) h.stdin.end();
    const ended = (r: Readable) => new Promise<void>((resolve) => (r.readableEnded || r.destroyed ? resolve() : r.once('end', resolve).once('close', resolve)));
    const res = await h.result;
    await Promise.all([ended(h.stdout), ended(h.stderr)]);
    const out = Buffer.concat(kept.out);
    const err = Buffer.concat(kept.err);
    const text = opts.encoding !== 'buffer';
    return { ...res, stdout: text ? out.toString('utf8') : out, stderr: text ? err.toString('utf8') : err, truncated };
  }

  // --- background processes --------------------------------------------------------------------------

  /** Start a background process: its output is kept in a ring buffer (bufferBytes) for attach. */
  startProcess(req: Omit<ExecRequest, 'background' | 'stdin'>): Promise<{ processId: string; pid: number }> {
    return this.connection.openStream({ op: 'exec', ...req, background: true, stdin: false }).result;
  }

  async listProcesses(opts: { tag?: string } = {}): Promise<ProcessInfo[]> {
    const s = this.connection.openStream({ op: 'process.list', ...opts });
    const sink = new JsonLinesSink<ProcessInfo>(s, Channel.OUT);
    await s.result;
    if (sink.error) throw sink.error;
    return sink.items;
  }

  async signalProcess(processId: string, signal: string | number = 'TERM'): Promise<void> {
    await this.call('process.signal', { processId, signal });
  }

  /** Follow a background process: its kept output, then live output, then its exit. */
  attachProcess(processId: string): AttachHandle {
    const s = this.connection.openStream({ op: 'process.attach', processId });
    const stdout = new InboundReadable(s, Channel.OUT, { errors: 'ifListened' });
    const stderr = new InboundReadable(s, Channel.ERR, { errors: 'ifListened' });
    const stdin = new OutboundWritable(s, Channel.IN);
    let onAttached!: (v: { pid: number; running: boolean }) => void;
    const attached = new Promise<{ pid: number; running: boolean }>((resolve, reject) => {
      onAttached = resolve;
      s.result.catch(reject);
    });
    attached.catch(() => {});
    s.onEvent = (ev) => {
      if (ev?.attached) onAttached({ pid: ev.attached.pid, running: ev.attached.running });
    };
    const result = s.result.then((r) => ({ ...normalizeResult(r), droppedBytes: r.droppedBytes ?? 0 }));
    result.catch(() => {});
    return {
      stdin,
      stdout,
      stderr,
      attached,
      result,
      signal: (sig) => s.control({ signal: sig }),
      resize: (cols, rows) => s.control({ resize: { cols, rows } }),
      detach: () => s.cancel(new GuestAgentError('CANCELLED', 'detached')),
    };
  }

  // --- files ---------------------------------------------------------------------------------------

  stat(path: string, opts: FileOptions & { follow?: boolean } = {}): Promise<FileStat> {
    return this.call('file.stat', { path, ...opts });
  }

  /** The entries of a directory (lstat: symlinks with their target), sorted by name. */
  async list(path: string, opts: FileOptions & { maxEntries?: number } = {}): Promise<FileStat[]> {
    const { maxEntries, ...rest } = opts;
    const s = this.connection.openStream({ op: 'file.list', path, ...rest });
    const sink = new JsonLinesSink<FileStat>(s, Channel.OUT, maxEntries);
    await s.result;
    if (sink.error) throw sink.error;
    return sink.items.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  mkdir(path: string, opts: FileOptions & { parents?: boolean; mode?: number } = {}): Promise<{ created: boolean }> {
    return this.call('file.mkdir', { path, ...opts });
  }

  async move(from: string, to: string, opts: FileOptions & { overwrite?: boolean } = {}): Promise<void> {
    await this.call('file.move', { from, to, ...opts });
  }

  remove(path: string, opts: FileOptions & { recursive?: boolean; force?: boolean } = {}): Promise<{ removed: boolean }> {
    return this.call('file.remove', { path, ...opts });
  }

  /** Download: resolves with the stat once the file is open (rejects with ENOENT, EISDIR, ...). */
  readFile(path: string, opts: FileOptions & { offset?: number; length?: number } = {}): Promise<ReadFileHandle> {
    const s = this.connection.openStream({ op: 'file.read', path, ...opts });
    // Errors reach the Readable only once it is handed out; before that, the promise rejects.
    const stream = new InboundReadable(s, Channel.OUT, { errors: 'ifListened', onEarlyDestroy: () => s.cancel() });
    const done = s.result.then((r) => ({ size: r.size as number }));
    done.catch(() => {});
    return new Promise((resolve, reject) => {
      s.onEvent = (ev) => {
        if (ev?.stat) {
          stream.options.errors = 'always';
          resolve({ stat: ev.stat, stream, done });
        }
      };
      s.result.then(() => reject(new GuestAgentError('PROTOCOL', 'file.read ended without a stat event')), (e) => {
        stream.destroy();
        reject(e);
      });
    });
  }

  /** Upload from a Readable, a Buffer or a string; parents are created unless mkdirs is false. */
  writeFile(path: string, data: DataSource, opts: WriteFileOptions = {}): Promise<{ size: number }> {
    const s = this.connection.openStream({ op: 'file.write', path, ...opts });
    return this.upload(s, data).then((r) => ({ size: r.size }));
  }

  /** A tar stream of a directory (or of one file). */
  tarRead(path: string, opts: FileOptions = {}): { stream: Readable; done: Promise<{ entries: number; bytes: number }> } {
    const s = this.connection.openStream({ op: 'tar.read', path, ...opts });
    const stream = new InboundReadable(s, Channel.OUT, { errors: 'always', onEarlyDestroy: () => s.cancel() });
    const done = s.result.then((r) => ({ entries: r.entries as number, bytes: r.bytes as number }));
    done.catch(() => {});
    return { stream, done };
  }

  /** Extract a tar stream beneath path (entries that would escape it are refused). */
  tarWrite(path: string, tar: DataSource, opts: FileOptions = {}): Promise<{ entries: number; bytes: number }> {
    const s = this.connection.openStream({ op: 'tar.write', path, ...opts });
    return this.upload(s, tar).then((r) => ({ entries: r.entries, bytes: r.bytes }));
  }

  /** Stream data on channel 0 (ending it), then the result; a failing source cancels the op. */
  private async upload(s: AgentStream, data: DataSource): Promise<any> {
    const w = new OutboundWritable(s, Channel.IN, () => s.cancel());
    if (data instanceof Readable) {
      pipeline(data, w).catch((e: Error) => {
        if (!s.done) s.cancel(new GuestAgentError('CANCELLED', `the upload source failed: ${e.message}`, { cause: e }));
      });
      try {
        return await s.result;
      } catch (e) {
        data.destroy();
        throw e;
      }
    }
    w.end(toBuffer(data));
    return s.result;
  }

  // --- network -------------------------------------------------------------------------------------

  /** A TCP connection to host:port inside the guest (default host 127.0.0.1), as a Duplex. */
  tcpConnect(port: number, opts: { host?: string; timeoutMs?: number } = {}): Promise<Duplex> {
    const s = this.connection.openStream({ op: 'tcp.connect', port, ...opts });
    const readable = new InboundReadable(s, Channel.OUT, { errors: 'ifListened', onEarlyDestroy: () => s.cancel() });
    const writable = new OutboundWritable(s, Channel.IN, () => s.cancel());
    return new Promise((resolve, reject) => {
      s.onEvent = (ev) => {
        if (ev?.connected) {
          const d = Duplex.from({ readable, writable });
          s.result.catch((e) => {
            if (!d.destroyed && d.listenerCount('error') > 0) d.destroy(e);
          });
          resolve(d);
        }
      };
      // One handler for both outcomes: a bare .then() here would leave a rejected derived promise unhandled.
      s.result.then(() => reject(new GuestAgentError('PROTOCOL', 'tcp.connect ended without connecting')), reject);
    });
  }

  // --- system --------------------------------------------------------------------------------------

  /** First-boot set-up: env for later execs, files (contents streamed). Call before anything else runs. */
  async setup(req: SetupRequest): Promise<{ env: number; files: Array<{ path: string; size: number }> }> {
    const files = (req.files ?? []).map((f) => ({ path: f.path, mode: f.mode, data: toBuffer(f.content) }));
    const s = this.connection.openStream({ op: 'setup', env: req.env ?? {}, files: files.map((f) => ({ path: f.path, ...(f.mode !== undefined ? { mode: f.mode } : {}), size: f.data.length })) });
    if (files.length > 0) {
      const w = new OutboundWritable(s, Channel.IN);
      for (const f of files) w.write(f.data);
      w.end();
    }
    return s.result;
  }

  /** Re-identify a clone restored from a memory snapshot (RNG, clock, hostname, machine-id, network). */
  identity(req: IdentityRequest): Promise<IdentityResult> {
    const { entropy, ...rest } = req;
    return this.call('identity', { ...rest, ...(entropy ? { entropy: entropy.toString('base64') } : {}) });
  }

  /** Clean power-off: sync, SIGTERM to init, reboot(2) after a grace period. */
  shutdown(): Promise<{ initPid: number }> {
    return this.call('shutdown');
  }
}
