/** A typed gRPC client of MicroVMService (types generated from the proto), with the bearer token as call credentials. */
import * as grpc from '@grpc/grpc-js';
import { Readable } from 'node:stream';
import type { MicroVMServiceClient } from './generated/microvm/service/v1alpha1/MicroVMService.js';
import type { DownloadFileInfo__Output } from './generated/microvm/service/v1alpha1/DownloadFileInfo.js';
import type { DownloadRequest } from './generated/microvm/service/v1alpha1/DownloadRequest.js';
import type { ExecExit__Output } from './generated/microvm/service/v1alpha1/ExecExit.js';
import type { ExecInput } from './generated/microvm/service/v1alpha1/ExecInput.js';
import type { ExecOutput__Output } from './generated/microvm/service/v1alpha1/ExecOutput.js';
import type { ExecRequest } from './generated/microvm/service/v1alpha1/ExecRequest.js';
import type { UploadHeader } from './generated/microvm/service/v1alpha1/UploadHeader.js';
import type { UploadResult__Output } from './generated/microvm/service/v1alpha1/UploadResult.js';
import { loadProto } from './loader.js';

export type { MicroVMServiceClient };

/**
 * A client of the gRPC API. With `tls` the channel is TLS, trusting `tls.ca` (PEM; default the
 * system's roots); the token still travels in each call's metadata.
 */
export function createGrpcClient(address: string, token?: string, tls?: { ca?: string | Buffer }): MicroVMServiceClient {
  const Ctor = loadProto().microvm.service.v1alpha1.MicroVMService;
  const methods = Ctor.service as unknown as Record<string, { requestStream: boolean } | undefined>;
  const creds = tls ? grpc.credentials.createSsl(tls.ca ? Buffer.from(tls.ca) : null) : grpc.credentials.createInsecure();
  const client = new Ctor(address, creds);
  if (!token) return client;
  // Insecure channels cannot carry call credentials, so the token goes into every call's metadata.
  const withAuth = (md?: grpc.Metadata): grpc.Metadata => {
    const m = md ?? new grpc.Metadata();
    if (!m.get('authorization').length) m.set('authorization', `Bearer ${token}`);
    return m;
  };
  return new Proxy(client, {
    get(target, prop, recv) {
      const v = Reflect.get(target, prop, recv) as unknown;
      if (typeof v !== 'function' || typeof prop !== 'string' || !/^[A-Z]/.test(prop)) return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v;
      // Client- and bidi-streaming methods take (metadata?, options?, callback?): no request argument.
      if (methods[prop]?.requestStream) {
        return (...args: unknown[]) => {
          const md = args[0] instanceof grpc.Metadata ? (args.shift() as grpc.Metadata) : undefined;
          return (v as (...args: unknown[]) => unknown).call(target, withAuth(md), ...args);
        };
      }
      return (arg: unknown, ...rest: unknown[]) => {
        const md = rest[0] instanceof grpc.Metadata ? (rest.shift() as grpc.Metadata) : undefined;
        return (v as (...args: unknown[]) => unknown).call(target, arg, withAuth(md), ...rest);
      };
    },
  });
}

/**
 * Promise wrapper for unary calls: `unaryCall(client.GetMicroVM.bind(client), { id }, metadata?)`.
 * The request and response types are inferred from the generated client's signatures.
 */
export function unaryCall<Req, Res>(
  fn: (req: Req, cb: (err: grpc.ServiceError | null, res?: Res) => void) => unknown,
  req: Req,
  md: grpc.Metadata = new grpc.Metadata(),
): Promise<Res> {
  const call = fn as unknown as (req: Req, md: grpc.Metadata, cb: (err: grpc.ServiceError | null, res?: Res) => void) => unknown;
  return new Promise((resolve, reject) => call(req, md, (err, res) => (err ? reject(err) : resolve(res as Res))));
}

// ---- inside the guest: Exec, Upload, Download --------------------------------------------------

export interface GrpcExecResult {
  stdout: Buffer;
  stderr: Buffer;
  pid?: number;
  exit: ExecExit__Output;
}

/**
 * Run a command over the Exec stream to its end: stdin (bytes, or a Readable streamed with
 * backpressure) is sent after the request, then closed; stdout and stderr are collected.
 * `onCall` sees the call right after the request was written (to send resizes or signals).
 * `deadline` bounds the whole call.
 */
export function grpcExec(
  client: MicroVMServiceClient,
  request: ExecRequest,
  o: { stdin?: Buffer | string | Readable; md?: grpc.Metadata; deadline?: grpc.Deadline; onCall?: (call: grpc.ClientDuplexStream<ExecInput, ExecOutput__Output>) => void } = {},
): Promise<GrpcExecResult> {
  // A deadline ends the call (DEADLINE_EXCEEDED) and the command with it (the server cancels it).
  const opts: grpc.CallOptions = o.deadline !== undefined ? { deadline: o.deadline } : {};
  const call = o.md ? client.Exec(o.md, opts) : client.Exec(opts);
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  let pid: number | undefined;
  let exit: ExecExit__Output | undefined;
  return new Promise((resolve, reject) => {
    call.on('data', (m: ExecOutput__Output) => {
      if (m.output === 'stdout' && m.stdout) out.push(m.stdout);
      else if (m.output === 'stderr' && m.stderr) err.push(m.stderr);
      else if (m.output === 'started' && m.started) pid = m.started.pid;
      else if (m.output === 'exit' && m.exit) exit = m.exit;
    });
    call.on('error', reject);
    call.on('end', () => (exit ? resolve({ stdout: Buffer.concat(out), stderr: Buffer.concat(err), ...(pid !== undefined ? { pid } : {}), exit }) : reject(new Error('the Exec stream ended without an exit message'))));
    call.write({ request });
    // After the request: resizes, signals, early stdin of the caller's own.
    o.onCall?.(call);
    void writeAll(call, o.stdin, (data) => ({ stdin: data })).then(
      () => call.end(),
      (e: Error) => {
        call.cancel();
        reject(e);
      },
    );
  });
}

/** Upload a file (or, with header.tar, a tar stream) from bytes or a Readable, in chunks, with backpressure. */
export function grpcUpload(client: MicroVMServiceClient, header: UploadHeader, data: Buffer | string | Readable, md?: grpc.Metadata): Promise<UploadResult__Output> {
  return new Promise((resolve, reject) => {
    const cb = (e: grpc.ServiceError | null, r?: UploadResult__Output): void => (e ? reject(e) : resolve(r!));
    const call = md ? client.Upload(md, cb) : client.Upload(cb);
    call.write({ header });
    void writeAll(call, data, (d) => ({ data: d })).then(
      () => call.end(),
      (e: Error) => {
        call.cancel();
        reject(e);
      },
    );
  });
}

/**
 * Download a file (or, with tar, a tar stream) as a Readable of its bytes (backpressure: the call
 * is read as fast as the Readable is consumed). `info` resolves with the file's size and mode (null
 * for a tar stream); errors (NOT_FOUND, ...) destroy the Readable with the gRPC error.
 */
export function grpcDownload(client: MicroVMServiceClient, req: DownloadRequest, md?: grpc.Metadata): { stream: Readable; info: Promise<DownloadFileInfo__Output | null> } {
  const call = md ? client.Download(req, md) : client.Download(req);
  let setInfo: (i: DownloadFileInfo__Output | null) => void = () => undefined;
  const info = new Promise<DownloadFileInfo__Output | null>((resolve) => (setInfo = resolve));
  const stream = new Readable({
    read() {
      call.resume();
    },
    destroy(err, cb) {
      call.cancel();
      cb(err);
    },
  });
  call.on('data', (m: { data?: Buffer; info?: DownloadFileInfo__Output | null }) => {
    if (m.info) setInfo(m.info);
    else setInfo(null);
    if (m.data?.length && !stream.push(m.data)) call.pause();
  });
  call.on('end', () => {
    setInfo(null);
    stream.push(null);
  });
  call.on('error', (e: grpc.ServiceError) => {
    setInfo(null);
    if (e.code !== grpc.status.CANCELLED || !stream.destroyed) stream.destroy(e);
  });
  return { stream, info };
}

/** Write bytes (in 256 KiB chunks) or a Readable to a client stream, waiting for 'drain' when write() says so. */
async function writeAll<T>(call: grpc.ClientWritableStream<T> | grpc.ClientDuplexStream<T, unknown>, data: Buffer | string | Readable | undefined, wrap: (d: Buffer) => T): Promise<void> {
  if (data === undefined) return;
  const CHUNK = 256 * 1024;
  let over = false;
  call.once('close', () => (over = true));
  call.once('error', () => (over = true));
  // 'drain', or the end of the call (its outcome is reported by the caller's listeners).
  const drained = (): Promise<void> =>
    new Promise((r) => {
      const done = (): void => {
        call.off('drain', done);
        call.off('close', done);
        call.off('error', done);
        r();
      };
      call.once('drain', done);
      call.once('close', done);
      call.once('error', done);
    });
  const chunks = typeof data === 'string' || Buffer.isBuffer(data) ? [Buffer.from(data)] : data;
  for await (const c of chunks as AsyncIterable<Buffer> | Buffer[]) {
    const b = Buffer.isBuffer(c) ? c : Buffer.from(c);
    for (let i = 0; i < b.length; i += CHUNK) {
      if (over) return;
      if (!call.write(wrap(b.subarray(i, i + CHUNK)))) await drained();
    }
  }
}
