/**
 * Inside the guest over gRPC (issue 13; docs/exec-api.md): Exec as a bidirectional stream, Upload
 * (client stream) and Download (server stream), over the same GuestService as REST and the same
 * gateway pipeline (permission microvms:exec, tenancy, rate limits, audit). Every stream has
 * backpressure in both directions: a gRPC write() that returns false pauses the guest stream until
 * 'drain', and a slow guest pauses reading from the call, so memory stays constant whatever the
 * size of a file or an output.
 */
import type * as grpc from '@grpc/grpc-js';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { ErrorCodes, MvmError, asMvmError, validationError } from '../core/errors.js';
import type { Principal } from '../core/authz.js';
import { execRequest, type GuestService } from '../core/guest.js';
import type { GuestExecHandle, GuestExecRequest, GuestUser } from '../core/ports/guest.js';
import type { Gateway, CallInfo, Outcome } from '../gateway/gateway.js';
import { operationForRpc } from '../gateway/operations.js';
import { requiredId } from './mapping.js';
import type { MicroVMServiceHandlers } from './generated/microvm/service/v1alpha1/MicroVMService.js';
import type { ExecInput__Output } from './generated/microvm/service/v1alpha1/ExecInput.js';
import type { ExecOutput } from './generated/microvm/service/v1alpha1/ExecOutput.js';
import type { ExecRequest__Output } from './generated/microvm/service/v1alpha1/ExecRequest.js';
import type { UploadChunk__Output } from './generated/microvm/service/v1alpha1/UploadChunk.js';

/** What the guest handlers need of the server (admission and the error mapping live there). */
export interface GuestRpcContext {
  guest?: GuestService;
  gateway: Gateway;
  log: Logger;
  admit(rpc: string, call: grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>): Promise<{ principal?: Principal; info: CallInfo; error?: MvmError }>;
  toGrpcError(e: MvmError): grpc.ServiceError;
}

/** Largest data message we send (the default receive limit of gRPC clients is 4 MiB). */
const MAX_CHUNK = 1024 * 1024;
const FIRST_MESSAGE_TIMEOUT_MS = 10_000;

const userOf = (u: string): GuestUser | undefined => (u === '' ? undefined : /^\d+$/.test(u) ? Number(u) : u);
const userOpt = (u: string): { user?: GuestUser } => {
  const v = userOf(u);
  return v === undefined ? {} : { user: v };
};
const absolute = (path: string, field = 'path'): string => {
  if (!path) throw validationError(field, 'is required');
  if (!path.startsWith('/')) throw validationError(field, 'must be an absolute path in the guest');
  return path;
};
const vmId = requiredId;

/** The agent's exec request from the first ExecInput (validated like REST; fields named as in the proto). */
export function execRequestFromProto(r: ExecRequest__Output): GuestExecRequest {
  if (r.cols < 0 || r.cols > 10_000) throw validationError('request.cols', 'must be 0..10000');
  if (r.rows < 0 || r.rows > 10_000) throw validationError('request.rows', 'must be 0..10000');
  try {
    return execRequest({
      cmd: [...r.argv],
      ...(Object.keys(r.env).length ? { env: { ...r.env } } : {}),
      ...(r.cwd ? { cwd: r.cwd } : {}),
      ...(r.user ? { user: userOf(r.user)! } : {}),
      ...(r.timeout ? { timeout: r.timeout } : {}),
      tty: r.tty,
      ...(r.cols ? { cols: r.cols } : {}),
      ...(r.rows ? { rows: r.rows } : {}),
      stdin: true,
    });
  } catch (e) {
    const err = asMvmError(e);
    if (err.code !== ErrorCodes.VALIDATION_FAILED && err.code !== ErrorCodes.UNPROCESSABLE) throw err;
    // execRequest names the REST fields (cmd, cmd[0], timeout, cwd): name the proto's.
    const rename = (f: string): string => `request.${f.replace(/^cmd/, 'argv')}`;
    const violations = err.violations.map((v) => ({ ...v, field: rename(v.field) }));
    throw new MvmError(err.code, violations.map((v) => `${v.field}: ${v.message}`).join('; ') || err.message, { violations });
  }
}

/**
 * Write a guest stream to a gRPC call as messages, in pieces of at most MAX_CHUNK, pausing the
 * source while the call's buffer is full (write() returned false) until it drains.
 */
function pumpToCall(src: Readable, call: grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>, wrap: (d: Buffer) => unknown, isGone: () => boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    let waiting = false;
    src.on('data', (d: Buffer) => {
      if (isGone()) return;
      let ok = true;
      for (let i = 0; i < d.length; i += MAX_CHUNK) ok = call.write(wrap(d.subarray(i, i + MAX_CHUNK))) && ok;
      if (!ok && !waiting) {
        waiting = true;
        src.pause();
        call.once('drain', () => {
          waiting = false;
          src.resume();
        });
      }
    });
    src.once('end', () => resolve());
    src.once('close', () => resolve());
    src.once('error', (e) => reject(e));
  });
}

export function guestHandlers(ctx: GuestRpcContext): Pick<MicroVMServiceHandlers, 'Exec' | 'Upload' | 'Download'> {
  const gw = ctx.gateway;
  const guests = (): GuestService => {
    if (!ctx.guest) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'exec, files and port forwarding are not available in this deployment');
    return ctx.guest;
  };
  /** The gRPC error, with the guest agent's own code (ENOENT, EACCES, ...) as `mvm-agent-code` when there is one (REST: `agentCode`). */
  const toGrpcError = (err: MvmError): grpc.ServiceError => {
    const e = ctx.toGrpcError(err);
    const agentCode = err.details.agentCode;
    if (typeof agentCode === 'string' && /^[A-Z0-9_]{1,32}$/.test(agentCode)) e.metadata.set('mvm-agent-code', agentCode);
    return e;
  };
  const logInternal = (e: unknown, err: MvmError, rpc: string): void => {
    if (err.code === ErrorCodes.INTERNAL) ctx.log.error({ err: e, rpc }, 'internal error');
  };

  // ---- Exec: a bidirectional stream ------------------------------------------------------------
  const Exec: MicroVMServiceHandlers['Exec'] = (call) => {
    // Audited like the REST WebSocket exec: when it ends, as a mutation, with argv and exit code.
    const op = { ...operationForRpc('Exec'), mutation: true };
    let gone = false;
    let handle: GuestExecHandle | undefined;
    let stdinEnded = false;
    call.on('cancelled', () => {
      gone = true;
      handle?.cancel();
    });
    call.on('error', () => undefined);

    const endStdin = (): void => {
      if (stdinEnded) return;
      stdinEnded = true;
      handle?.stdin.end();
    };
    /** Later ExecInputs: stdin bytes (with backpressure), resizes, signals, the end of stdin. */
    const apply = (h: GuestExecHandle, m: ExecInput__Output): void => {
      switch (m.input) {
        case 'stdin':
          if (stdinEnded || !m.stdin?.length) return;
          if (!h.stdin.write(m.stdin)) {
            call.pause();
            h.stdin.once('drain', () => call.resume());
          }
          return;
        case 'resize':
          if (m.resize && m.resize.cols > 0 && m.resize.rows > 0) h.resize(m.resize.cols, m.resize.rows);
          return;
        case 'signal':
          if (m.signal) h.signal(/^\d+$/.test(m.signal) ? Number(m.signal) : m.signal);
          return;
        case 'stdinEof':
          if (m.stdinEof) endStdin();
          return;
        default:
          return; // a second request, or an empty message: ignored
      }
    };

    void (async () => {
      const a = await ctx.admit('Exec', call);
      if (a.error) return void call.emit('error', ctx.toGrpcError(a.error));
      const p = a.principal!;
      let argv: string[] | undefined;
      let id: string | undefined;
      try {
        // The first message is the request; what follows is held (the call paused) until the exec exists.
        const first = await new Promise<ExecInput__Output>((resolve, reject) => {
          const t = setTimeout(() => reject(validationError('request', `no ExecInput.request within ${FIRST_MESSAGE_TIMEOUT_MS / 1000} s: send the request first`)), FIRST_MESSAGE_TIMEOUT_MS);
          const onEnd = (): void => {
            clearTimeout(t);
            reject(validationError('request', 'the call ended before an ExecInput.request'));
          };
          call.once('end', onEnd);
          call.once('data', (m: ExecInput__Output) => {
            clearTimeout(t);
            call.off('end', onEnd);
            call.pause();
            resolve(m);
          });
        });
        if (first.input !== 'request' || !first.request) throw validationError('request', 'the first ExecInput must carry the request');
        id = vmId(first.request.id, 'request.id');
        const req = execRequestFromProto(first.request);
        argv = req.cmd;
        const { guest } = await guests().session(p, id);
        if (gone) throw new MvmError(ErrorCodes.CONFLICT, 'the call was cancelled');
        const h = guest.exec(req);
        handle = h;
        call.on('data', (m: ExecInput__Output) => apply(h, m));
        // Half-closing the call ends stdin, like ExecInput.stdin_eof.
        call.on('end', endStdin);
        call.resume();
        void h.started.then((s) => !gone && call.write({ started: { pid: s.pid } } satisfies ExecOutput), () => undefined);
        const [result] = await Promise.all([
          h.result,
          pumpToCall(h.stdout, call, (d) => ({ stdout: d }) satisfies ExecOutput, () => gone),
          pumpToCall(h.stderr, call, (d) => ({ stderr: d }) satisfies ExecOutput, () => gone),
        ]);
        if (!gone) call.write({ exit: { exitCode: result.exitCode, signal: result.signal ?? '', timedOut: result.timedOut, durationMs: Math.round(result.durationMs) } } satisfies ExecOutput);
        // Audited before the call ends, so a client that saw the end finds the record (as for Upload).
        const details = { argv, exitCode: result.exitCode, stream: true, ...(result.timedOut ? { timedOut: true } : {}), ...(gone ? { cancelled: true } : {}) };
        await gw.finish(op, a.info, p, { status: 200, resourceId: id, details }).catch((e: unknown) => ctx.log.error({ err: e, rpc: 'Exec' }, 'audit record failed'));
        if (!gone) call.end();
      } catch (e) {
        const err = asMvmError(e);
        logInternal(e, err, 'Exec');
        handle?.cancel();
        if (!gone) call.emit('error', toGrpcError(err));
        const out: Outcome = { ...gw.outcomeOf(err, id), ...(argv ? { details: { argv, stream: true } } : {}) };
        await gw.finish(op, a.info, p, out);
      }
    })();
  };

  // ---- Upload: a client stream ------------------------------------------------------------------
  const Upload: MicroVMServiceHandlers['Upload'] = (call, callback) => {
    const op = operationForRpc('Upload');
    void (async () => {
      const a = await ctx.admit('Upload', call);
      if (a.error) return callback(ctx.toGrpcError(a.error));
      const p = a.principal!;
      let id: string | undefined;
      const it = call[Symbol.asyncIterator]() as AsyncIterator<UploadChunk__Output>;
      try {
        const first = await Promise.race([
          it.next(),
          new Promise<never>((_, reject) => setTimeout(() => reject(validationError('header', `no UploadChunk.header within ${FIRST_MESSAGE_TIMEOUT_MS / 1000} s`)), FIRST_MESSAGE_TIMEOUT_MS).unref()),
        ]);
        if (first.done || first.value.chunk !== 'header' || !first.value.header) throw validationError('header', 'the first UploadChunk must carry the header');
        const h = first.value.header;
        id = vmId(h.id, 'header.id');
        const path = absolute(h.path, 'header.path');
        if (h.mode < 0 || h.mode > 0o7777) throw validationError('header.mode', 'must be permission bits (0..07777)');
        const { guest } = await guests().session(p, id);
        // The rest of the call as a byte stream: pulled one message at a time, so a slow guest
        // stops reading from the call (HTTP/2 flow control stops the client).
        const body = Readable.from(
          (async function* () {
            for (;;) {
              const r = await it.next();
              if (r.done) return;
              if (r.value.chunk === 'data' && r.value.data?.length) yield r.value.data;
              else if (r.value.chunk === 'header') throw validationError('header', 'only the first UploadChunk may carry the header');
            }
          })(),
          { objectMode: false },
        );
        let res: { path: string; size: number; entries: number };
        if (h.tar) {
          const r = await guest.tarWrite(path, body, userOpt(h.user));
          res = { path, size: r.bytes, entries: r.entries };
        } else {
          const r = await guest.writeFile(path, body, { ...userOpt(h.user), mkdirs: true, ...(h.mode ? { mode: h.mode } : {}) });
          res = { path, size: r.size, entries: 0 };
        }
        await gw.finish(op, a.info, p, { status: 201, resourceId: id });
        callback(null, res);
      } catch (e) {
        const err = asMvmError(e);
        logInternal(e, err, 'Upload');
        await it.return?.().catch(() => undefined);
        await gw.finish(op, a.info, p, gw.outcomeOf(err, id));
        callback(toGrpcError(err));
      }
    })();
  };

  // ---- Download: a server stream ----------------------------------------------------------------
  const Download: MicroVMServiceHandlers['Download'] = (call) => {
    const op = operationForRpc('Download');
    let gone = false;
    let src: Readable | undefined;
    call.on('cancelled', () => {
      gone = true;
      src?.destroy();
    });
    call.on('error', () => undefined);
    void (async () => {
      const a = await ctx.admit('Download', call);
      if (a.error) return void call.emit('error', ctx.toGrpcError(a.error));
      const p = a.principal!;
      const r = call.request;
      try {
        const id = vmId(r.id, 'id');
        const path = absolute(r.path);
        const { guest } = await guests().session(p, id);
        let done: Promise<unknown>;
        if (r.tar) {
          const t = guest.tarRead(path, userOpt(r.user));
          src = t.stream;
          done = t.done;
        } else {
          const st = await guest.stat(path, userOpt(r.user));
          if (st.type === 'dir') throw validationError('path', `${path} is a directory: set tar to download it as a tar stream`);
          const f = await guest.readFile(path, userOpt(r.user));
          src = f.stream;
          done = f.done;
          call.write({ data: Buffer.alloc(0), info: { size: f.stat.size, mode: f.stat.mode & 0o7777, mtimeMs: Math.round(f.stat.mtimeMs) } });
        }
        done.catch(() => undefined);
        if (gone) src.destroy();
        await pumpToCall(src, call, (d) => ({ data: d }), () => gone);
        // The guest's own verdict (a tar of a directory that vanished midway, a read error).
        await done;
        if (!gone) call.end();
      } catch (e) {
        const err = asMvmError(e);
        logInternal(e, err, 'Download');
        src?.destroy();
        if (!gone) call.emit('error', toGrpcError(err));
        // Not a mutation: the gateway audits it only when it was denied.
        await gw.finish(op, a.info, p, gw.outcomeOf(err, r.id || undefined));
      }
    })();
  };

  return { Exec, Upload, Download };
}
