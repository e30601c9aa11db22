/**
 * The guest port: what the service asks of a running VM's guest agent (docs/guest-agent-protocol.md)
 * — exec, background processes, files, tar, TCP. The adapter is src/guest's GuestAgentClient,
 * reached through the node agent (NodeAgent.guest): in the service process in standalone mode, over
 * the node agent's endpoint in cluster mode. Streams are Node streams with backpressure: a
 * consumer that does not read stops the producer in the guest.
 */
import type { Duplex, Readable, Writable } from 'node:stream';

export type GuestUser = string | number;

export interface GuestExecRequest {
  cmd: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: GuestUser;
  tty?: boolean;
  cols?: number;
  rows?: number;
  timeoutMs?: number;
  stdin?: boolean;
}

export interface GuestExecResult {
  /** The exit status; 128+n when killed by signal n; 127 not found, 126 not executable. */
  exitCode: number;
  signal: string | null;
  timedOut: boolean;
  durationMs: number;
  pid?: number;
}

export interface GuestExecHandle {
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly started: Promise<{ pid: number }>;
  readonly result: Promise<GuestExecResult>;
  signal(sig: string | number): void;
  resize(cols: number, rows: number): void;
  cancel(): void;
}

export interface GuestBufferedResult extends GuestExecResult {
  stdout: string;
  stderr: string;
  truncated: boolean;
}

export interface GuestFileStat {
  name: string;
  path: string;
  /** file | dir | symlink | fifo | socket | char | block | other */
  type: string;
  size: number;
  /** Permission bits (e.g. 0o644). */
  mode: number;
  mtimeMs: number;
  uid: number;
  gid: number;
  symlinkTarget?: string;
}

export interface GuestProcess {
  processId: string;
  pid: number;
  cmd: string[];
  tag?: string;
  tty: boolean;
  running: boolean;
  startedAt: string;
  endedAt?: string;
  result?: GuestExecResult;
  stdoutBytes: number;
  stderrBytes: number;
}

export interface GuestAttachHandle {
  readonly stdin: Writable;
  readonly stdout: Readable;
  readonly stderr: Readable;
  readonly attached: Promise<{ pid: number; running: boolean }>;
  readonly result: Promise<GuestExecResult & { droppedBytes: number }>;
  signal(sig: string | number): void;
  resize(cols: number, rows: number): void;
  detach(): void;
}

/** A connected guest agent (structurally, src/guest's GuestAgentClient). */
export interface GuestSession {
  readonly hello: { version: string };
  exec(req: GuestExecRequest): GuestExecHandle;
  execBuffered(req: GuestExecRequest, opts?: { maxOutputBytes?: number; input?: Buffer | string }): Promise<GuestBufferedResult>;
  startProcess(req: Omit<GuestExecRequest, 'stdin'> & { tag?: string }): Promise<{ processId: string; pid: number }>;
  listProcesses(opts?: { tag?: string }): Promise<GuestProcess[]>;
  signalProcess(processId: string, signal?: string | number): Promise<void>;
  attachProcess(processId: string): GuestAttachHandle;
  stat(path: string, opts?: { user?: GuestUser }): Promise<GuestFileStat>;
  list(path: string, opts?: { user?: GuestUser; maxEntries?: number }): Promise<GuestFileStat[]>;
  mkdir(path: string, opts?: { user?: GuestUser; parents?: boolean; mode?: number }): Promise<{ created: boolean }>;
  move(from: string, to: string, opts?: { user?: GuestUser; overwrite?: boolean }): Promise<void>;
  remove(path: string, opts?: { user?: GuestUser; recursive?: boolean; force?: boolean }): Promise<{ removed: boolean }>;
  readFile(path: string, opts?: { user?: GuestUser }): Promise<{ stat: GuestFileStat; stream: Readable; done: Promise<{ size: number }> }>;
  writeFile(path: string, data: Readable | Buffer | string, opts?: { user?: GuestUser; mode?: number; mkdirs?: boolean; append?: boolean }): Promise<{ size: number }>;
  tarRead(path: string, opts?: { user?: GuestUser }): { stream: Readable; done: Promise<{ entries: number; bytes: number }> };
  tarWrite(path: string, tar: Readable | Buffer, opts?: { user?: GuestUser }): Promise<{ entries: number; bytes: number }>;
  tcpConnect(port: number, opts?: { host?: string; timeoutMs?: number }): Promise<Duplex>;
}
