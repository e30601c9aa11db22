/**
 * /api/v1/microvms/{id}/… inside the guest (issue 13; docs/exec-api.md): exec (buffered, and
 * streaming/interactive over WebSocket), background processes, files (streamed both ways in
 * constant memory, tar for directories), a TCP tunnel over WebSocket (port-forward) and an HTTP
 * proxy to a guest port (WebSocket upgrades included). All need permission microvms:exec (role
 * member and above); every exec is audited with its argv and exit code, never its input or output.
 */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply, FastifyRequest, FastifySchema } from 'fastify';
import type { Socket } from 'node:net';
import { PassThrough, type Duplex, type Readable } from 'node:stream';
import type { WebSocket } from 'ws';
import type { WebsocketHandler } from '@fastify/websocket';
import { ErrorCodes, MvmError, asMvmError, validationError } from '../../core/errors.js';
import { execRequest, type GuestService } from '../../core/guest.js';
import type { GuestExecHandle } from '../../core/ports/guest.js';
import type { Principal } from '../../core/service.js';
import { ExecRequest, ExecResponse, GuestFileStatSchema, GuestProcessSchema, ItemsOf, NoContent, StartProcessRequest, WebSocketUpgrade } from '../../core/schema.js';
import { HTTP_STATUS, toProblem } from '../../gateway/problem.js';

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) });
/**
 * A WebSocket endpoint: the upgrade runs `ws`; a plain HTTP request (no `Upgrade: websocket`) is
 * 426 UPGRADE_REQUIRED problem+json, after authentication like every call (the route is in the
 * OpenAPI document with 101 and its errors).
 */
function wsRoute(app: FastifyInstance, url: string, schema: FastifySchema, ws: WebsocketHandler): void {
  app.route({
    method: 'GET',
    url,
    schema,
    wsHandler: ws,
    handler: async () => {
      throw new MvmError(ErrorCodes.UPGRADE_REQUIRED, `${url.replace(/:(\w+)/g, '{$1}')} is a WebSocket endpoint: send Upgrade: websocket with subprotocol mvm.v1 (docs/exec-api.md)`);
    },
  });
}

const MkdirResult = Type.Object({ path: Type.String(), created: Type.Boolean() });
const PathQuery = Type.Object({
  path: Type.String({ pattern: '^/', minLength: 1, maxLength: 4096, description: 'absolute path in the guest' }),
  archive: Type.Optional(Type.Literal('tar', { description: 'a directory as a tar stream (download), or extract a tar stream into path (upload)' })),
  mode: Type.Optional(Type.String({ pattern: '^[0-7]{3,4}$', description: 'permission bits of an uploaded file, octal (default 644)' })),
  user: Type.Optional(Type.String({ maxLength: 64, description: 'act as this guest user (default root)' })),
  recursive: Type.Optional(Type.Boolean()),
});

/** How a route reports what the audit must record about it (argv, exit code; never data). */
export interface GuestRouteDeps {
  guest: GuestService;
  /** Audit a call whose answer is not a plain reply (WebSocket execs), once it is over. */
  audit(req: FastifyRequest, outcome: { status: number; code?: string; reason?: string; details?: Record<string, unknown> }): Promise<void>;
}

const principal = (req: FastifyRequest): Principal => {
  if (!req.principal) throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'not authenticated');
  return req.principal;
};

const absolute = (path: string, field = 'path'): string => {
  if (!path.startsWith('/')) throw validationError(field, 'must be an absolute path in the guest');
  return path;
};

const userOf = (u: string | undefined): string | number | undefined => (u === undefined || u === '' ? undefined : /^\d+$/.test(u) ? Number(u) : u);

/** WebSocket messages (docs/exec-api.md): binary frames carry [stream byte][data]; text frames JSON. */
export const WsStream = { stdin: 0, stdout: 1, stderr: 2 } as const;

function wsSendJson(ws: WebSocket, o: unknown): void {
  if (ws.readyState === ws.OPEN) ws.send(JSON.stringify(o));
}

function wsFail(ws: WebSocket, e: unknown, url: string): void {
  const err = asMvmError(e);
  const status = HTTP_STATUS[err.code] ?? 500;
  ws.resume();
  wsSendJson(ws, { type: 'error', status, code: err.code, message: err.message, problem: toProblem(err, url) });
  if (ws.readyState === ws.OPEN) ws.close(status >= 500 ? 1011 : 4000 + Math.min(status, 999), err.code.slice(0, 120));
}

/** Pipe a guest stream to the socket as [stream][data] frames, pausing while the socket's buffer is full (backpressure). */
function pump(ws: WebSocket, src: Readable, stream: number): Promise<void> {
  const HIGH = 1024 * 1024;
  return new Promise((resolve) => {
    const check = (): void => {
      if (ws.bufferedAmount < HIGH / 4 || ws.readyState !== ws.OPEN) {
        src.resume();
        return;
      }
      setTimeout(check, 10);
    };
    src.on('data', (d: Buffer) => {
      if (ws.readyState !== ws.OPEN) return;
      ws.send(Buffer.concat([Buffer.from([stream]), d]));
      if (ws.bufferedAmount > HIGH) {
        src.pause();
        setTimeout(check, 10);
      }
    });
    src.on('end', () => resolve());
    src.on('error', () => resolve());
    src.on('close', () => resolve());
  });
}

/** Feed a socket's stdin frames into a guest writable, pausing the socket while the guest is slow. */
/** Messages that arrived before the exec existed (held by holdMessages, replayed by feedStdin). */
const held = new WeakMap<WebSocket, { queue: Array<[Buffer | ArrayBuffer | Buffer[], boolean]>; listener: (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean) => void }>();

/** Keep every message from now on until feedStdin takes over (a client may send stdin right after the request). */
function holdMessages(ws: WebSocket): void {
  const queue: Array<[Buffer | ArrayBuffer | Buffer[], boolean]> = [];
  const listener = (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void => void queue.push([data, isBinary]);
  held.set(ws, { queue, listener });
  ws.on('message', listener);
  ws.pause();
}

function feedStdin(ws: WebSocket, handle: Pick<GuestExecHandle, 'stdin' | 'signal' | 'resize'>): void {
  const h = held.get(ws);
  const onMessage = (data: Buffer | ArrayBuffer | Buffer[], isBinary: boolean): void => {
    if (isBinary) {
      const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data as Buffer[]);
      if (buf[0] === WsStream.stdin && buf.length > 1) {
        if (!handle.stdin.write(buf.subarray(1))) {
          ws.pause();
          handle.stdin.once('drain', () => ws.resume());
        }
      }
      return;
    }
    let msg: { type?: string; cols?: number; rows?: number; signal?: string } = {};
    try {
      msg = JSON.parse(data.toString()) as typeof msg;
    } catch {
      return;
    }
    if (msg.type === 'resize' && msg.cols && msg.rows) handle.resize(msg.cols, msg.rows);
    else if (msg.type === 'signal' && msg.signal) handle.signal(msg.signal);
    else if (msg.type === 'eof') handle.stdin.end();
  };
  if (h) {
    ws.off('message', h.listener);
    held.delete(ws);
    for (const [data, isBinary] of h.queue) onMessage(data, isBinary);
  }
  ws.on('message', onMessage);
  ws.resume();
}

/** The first text message of an exec socket: the request (cmd, tty, cols, rows, env, cwd, user, timeout). */
function firstMessage(ws: WebSocket, timeoutMs = 10_000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new MvmError(ErrorCodes.VALIDATION_FAILED, 'no exec request within 10 s: send {"cmd": [...]} first')), timeoutMs);
    ws.once('message', (data, isBinary) => {
      clearTimeout(timer);
      // Hold what follows (stdin, resizes) until the exec exists to take it (feedStdin replays it).
      holdMessages(ws);
      if (isBinary) return reject(validationError('request', 'the first message must be the exec request as JSON text'));
      try {
        resolve(JSON.parse(data.toString()) as Record<string, unknown>);
      } catch {
        reject(validationError('request', 'the first message is not JSON'));
      }
    });
  });
}

export async function registerGuestRoutes(app: FastifyInstance, deps: GuestRouteDeps): Promise<void> {
  const guests = deps.guest;

  // Uploads are streamed to the guest as they arrive: no buffering, no body limit.
  app.addContentTypeParser(['application/octet-stream', 'application/x-tar'], (_req, payload, done) => done(null, payload));

  // ---- exec -----------------------------------------------------------------------------------
  app.post(
    '/microvms/:id/exec',
    { bodyLimit: 12 * 1024 * 1024, schema: { summary: 'Run a command in the guest and answer once it ended: exit code, output (capped; `truncated` says so)', params: IdParams, body: ExecRequest, response: { 200: ExecResponse } } },
    async (req) => {
      const body = req.body as import('../../core/schema.js').ExecRequestT;
      req.auditDetails = { argv: body.cmd };
      const r = await guests.exec(principal(req), (req.params as { id: string }).id, body);
      req.auditDetails = { argv: body.cmd, exitCode: r.exitCode, ...(r.timedOut ? { timedOut: true } : {}) };
      return { exitCode: r.exitCode, signal: r.signal, timedOut: r.timedOut, durationMs: r.durationMs, stdout: r.stdout, stderr: r.stderr, truncated: r.truncated };
    },
  );

  wsRoute(app, '/microvms/:id/exec', { summary: 'Streaming and interactive exec over WebSocket (docs/exec-api.md): stdin, stdout, stderr, exit, tty with resize', params: IdParams, response: { 101: WebSocketUpgrade } }, (socket, req) => {
    const ws = socket as unknown as WebSocket;
    void (async () => {
      let argv: string[] | undefined;
      try {
        const msg = await firstMessage(ws);
        const request = execRequest({
          cmd: msg.cmd as string[],
          ...(msg.env ? { env: msg.env as Record<string, string> } : {}),
          ...(typeof msg.cwd === 'string' ? { cwd: msg.cwd } : {}),
          ...(msg.user !== undefined ? { user: msg.user as string | number } : {}),
          ...(typeof msg.timeout === 'string' ? { timeout: msg.timeout } : {}),
          tty: msg.tty === true,
          ...(typeof msg.cols === 'number' ? { cols: msg.cols } : {}),
          ...(typeof msg.rows === 'number' ? { rows: msg.rows } : {}),
          stdin: msg.stdin !== false,
        });
        argv = request.cmd;
        const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
        const h = guest.exec(request);
        ws.on('close', () => h.cancel());
        feedStdin(ws, h);
        void h.started.then((s) => wsSendJson(ws, { type: 'started', pid: s.pid }), () => undefined);
        const [result] = await Promise.all([h.result, pump(ws, h.stdout, WsStream.stdout), pump(ws, h.stderr, WsStream.stderr)]);
        wsSendJson(ws, { type: 'exit', ...result });
        if (ws.readyState === ws.OPEN) ws.close(1000, 'exit');
        await deps.audit(req, { status: 200, details: { argv, exitCode: result.exitCode, stream: true, ...(result.timedOut ? { timedOut: true } : {}) } });
      } catch (e) {
        const err = asMvmError(e);
        wsFail(ws, err, req.url);
        await deps.audit(req, { status: HTTP_STATUS[err.code] ?? 500, code: err.code, reason: err.message, ...(argv ? { details: { argv, stream: true } } : {}) });
      }
    })();
  });

  // ---- background processes ---------------------------------------------------------------------
  app.post('/microvms/:id/processes', { schema: { summary: 'Start a background process (its output is kept in a bounded buffer; attach to read it)', params: IdParams, body: StartProcessRequest, response: { 201: GuestProcessSchema } } }, async (req, reply) => {
    const body = req.body as import('../../core/schema.js').StartProcessRequestT;
    const request = execRequest(body);
    req.auditDetails = { argv: request.cmd, background: true };
    const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
    const { stdin: _s, ...rest } = request;
    const p = await guest.startProcess({ ...rest, ...(body.tag ? { tag: body.tag } : {}) });
    return reply.status(201).send(p);
  });
  app.get('/microvms/:id/processes', { schema: { summary: 'Background processes of the guest (running and ended)', params: IdParams, response: { 200: ItemsOf(GuestProcessSchema) } } }, async (req) => {
    const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
    return { items: await guest.listProcesses() };
  });
  app.post(
    '/microvms/:id/processes/:processId/signal',
    { schema: { summary: 'Send a signal to a background process', params: Type.Object({ id: Type.String({ maxLength: 128 }), processId: Type.String({ maxLength: 128 }) }), body: Type.Object({ signal: Type.Optional(Type.Union([Type.String({ maxLength: 16 }), Type.Integer({ minimum: 1, maximum: 64 })])) }, { additionalProperties: false }), response: { 204: NoContent } } },
    async (req, reply) => {
      const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
      await guest.signalProcess((req.params as { processId: string }).processId, (req.body as { signal?: string | number }).signal ?? 'TERM');
      return reply.status(204).send();
    },
  );
  wsRoute(
    app,
    '/microvms/:id/processes/:processId/attach',
    { summary: 'Re-attach to a background process over WebSocket: its buffered output, then live output and its exit', params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }), processId: Type.String({ minLength: 1, maxLength: 128 }) }), response: { 101: WebSocketUpgrade } },
    (socket, req) => {
      const ws = socket as unknown as WebSocket;
      holdMessages(ws);
      void (async () => {
        try {
          const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
          const h = guest.attachProcess((req.params as { processId: string }).processId);
          ws.on('close', () => h.detach());
          feedStdin(ws, h);
          void h.attached.then((a) => wsSendJson(ws, { type: 'attached', ...a }), () => undefined);
          const [result] = await Promise.all([h.result, pump(ws, h.stdout, WsStream.stdout), pump(ws, h.stderr, WsStream.stderr)]);
          wsSendJson(ws, { type: 'exit', ...result });
          if (ws.readyState === ws.OPEN) ws.close(1000, 'exit');
        } catch (e) {
          wsFail(ws, e, req.url);
        }
      })();
    },
  );

  // ---- files ----------------------------------------------------------------------------------
  app.get('/microvms/:id/files/stat', { schema: { summary: 'Stat a path in the guest', params: IdParams, querystring: PathQuery, response: { 200: GuestFileStatSchema } } }, async (req) => {
    const q = req.query as { path: string; user?: string };
    const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
    return guest.stat(absolute(q.path), userOpt(q.user));
  });
  app.get(
    '/microvms/:id/files',
    { schema: { summary: 'Download a file (streamed), list a directory (JSON), or a directory as a tar stream (?archive=tar)',
        params: IdParams,
        querystring: PathQuery,
        response: {
          200: {
            description: 'A file (application/octet-stream), a directory listing (JSON) or a tar stream',
            content: {
              'application/octet-stream': { schema: Type.String({ format: 'binary' }) },
              'application/json': { schema: Type.Object({ path: Type.String(), entries: Type.Array(GuestFileStatSchema) }) },
              'application/x-tar': { schema: Type.String({ format: 'binary' }) },
            },
          },
        },
      },
    },
    async (req, reply) => {
      const q = req.query as { path: string; archive?: 'tar'; user?: string };
      const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
      const path = absolute(q.path);
      if (q.archive === 'tar') {
        const t = guest.tarRead(path, userOpt(q.user));
        void t.done.catch(() => undefined);
        return reply.type('application/x-tar').header('content-disposition', `attachment; filename="${basenameOf(path)}.tar"`).send(t.stream);
      }
      const st = await guest.stat(path, userOpt(q.user));
      if (st.type === 'dir') return { path, entries: await guest.list(path, userOpt(q.user)) };
      const f = await guest.readFile(path, userOpt(q.user));
      void f.done.catch(() => undefined);
      return reply
        .type('application/octet-stream')
        .header('content-length', String(f.stat.size))
        .header('last-modified', new Date(f.stat.mtimeMs).toUTCString())
        .header('x-mvm-file-mode', (f.stat.mode & 0o7777).toString(8))
        .send(f.stream);
    },
  );
  app.put(
    '/microvms/:id/files',
    {
      bodyLimit: Number.MAX_SAFE_INTEGER,
      // The body is streamed to the guest as it arrives (never validated or buffered): described in the OpenAPI document only.
      config: {
        swaggerTransform: ({ schema, url }: { schema: FastifySchema; url: string }) => ({
          schema: { ...schema, body: Type.String({ format: 'binary', description: 'the file (application/octet-stream), or a tar stream with ?archive=tar' }), consumes: ['application/octet-stream', 'application/x-tar'] },
          url,
        }),
      },
      schema: { summary: 'Upload a file (the body, streamed; parents are created), or extract a tar stream into a directory (?archive=tar)',
        params: IdParams,
        querystring: PathQuery,
        response: { 201: Type.Object({ path: Type.String(), size: Type.Optional(Type.Integer()), entries: Type.Optional(Type.Integer()), bytes: Type.Optional(Type.Integer()) }) },
      },
    },
    async (req, reply) => {
      const q = req.query as { path: string; archive?: 'tar'; mode?: string; user?: string };
      const path = absolute(q.path);
      const body = req.body as Readable | Buffer | undefined;
      const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
      if (type !== 'application/octet-stream' && type !== 'application/x-tar') {
        throw new MvmError(ErrorCodes.UNSUPPORTED_MEDIA_TYPE, 'body: send the content as application/octet-stream (or application/x-tar with ?archive=tar)', { violations: [{ field: 'body', message: 'unsupported media type' }] });
      }
      if (body === undefined || body === null || (typeof body === 'object' && !('pipe' in body) && !Buffer.isBuffer(body))) {
        throw validationError('body', 'send the content as application/octet-stream (or application/x-tar with ?archive=tar)');
      }
      // The guest side gets a shield: its failure destroys the shield, never the request (whose
      // destruction would reset the connection before the error is sent).
      const content = Buffer.isBuffer(body) ? body : (body as Readable).pipe(new PassThrough());
      try {
        const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
        if (q.archive === 'tar') {
          const r = await guest.tarWrite(path, content as Readable, userOpt(q.user));
          return reply.status(201).send({ path, entries: r.entries, bytes: r.bytes });
        }
        const r = await guest.writeFile(path, content as Readable, { ...userOpt(q.user), mkdirs: true, ...(q.mode ? { mode: parseInt(q.mode, 8) } : {}) });
        return reply.status(201).send({ path, size: r.size });
      } catch (e) {
        // An answer sent while the client still sends reaches it as a connection reset (a full
        // guest disk mid-upload): read the rest of the body away first, so it gets the error.
        if (!Buffer.isBuffer(body)) (body as Readable).unpipe();
        await drain(body as Readable, UPLOAD_DRAIN_MS);
        throw e;
      }
    },
  );
  app.post(
    '/microvms/:id/files/mkdir',
    { schema: { summary: 'Make a directory in the guest', params: IdParams, body: Type.Object({ path: Type.String({ pattern: '^/', minLength: 1, maxLength: 4096 }), parents: Type.Optional(Type.Boolean()), mode: Type.Optional(Type.Integer({ minimum: 0, maximum: 0o7777 })), user: Type.Optional(Type.String({ maxLength: 64 })) }, { additionalProperties: false }), response: { 200: MkdirResult, 201: MkdirResult } } },
    async (req, reply) => {
      const b = req.body as { path: string; parents?: boolean; mode?: number; user?: string };
      const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
      const r = await guest.mkdir(absolute(b.path), { parents: b.parents !== false, ...(b.mode !== undefined ? { mode: b.mode } : {}), ...userOpt(b.user) });
      return reply.status(r.created ? 201 : 200).send({ path: b.path, created: r.created });
    },
  );
  app.post(
    '/microvms/:id/files/move',
    { schema: { summary: 'Move or rename a path in the guest', params: IdParams, body: Type.Object({ from: Type.String({ pattern: '^/', minLength: 1, maxLength: 4096 }), to: Type.String({ pattern: '^/', minLength: 1, maxLength: 4096 }), overwrite: Type.Optional(Type.Boolean()), user: Type.Optional(Type.String({ maxLength: 64 })) }, { additionalProperties: false }), response: { 204: NoContent } } },
    async (req, reply) => {
      const b = req.body as { from: string; to: string; overwrite?: boolean; user?: string };
      const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
      await guest.move(absolute(b.from, 'from'), absolute(b.to, 'to'), { ...(b.overwrite ? { overwrite: true } : {}), ...userOpt(b.user) });
      return reply.status(204).send();
    },
  );
  app.delete('/microvms/:id/files', { schema: { summary: 'Delete a path in the guest (?recursive=true for a directory with content)', params: IdParams, querystring: PathQuery, response: { 204: NoContent } } }, async (req, reply) => {
    const q = req.query as { path: string; recursive?: boolean; user?: string };
    const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
    const r = await guest.remove(absolute(q.path), { ...(q.recursive ? { recursive: true } : {}), ...userOpt(q.user) });
    if (!r.removed) throw new MvmError(ErrorCodes.NOT_FOUND, `no ${q.path} in the guest`);
    return reply.status(204).send();
  });

  // ---- TCP: a tunnel (port-forward) and an HTTP proxy ------------------------------------------------
  const PortParams = Type.Object({ id: Type.String({ maxLength: 128 }), port: Type.Integer({ minimum: 1, maximum: 65535 }) });
  wsRoute(app, '/microvms/:id/ports/:port/connect', { summary: 'A TCP connection to a guest port over WebSocket (binary frames both ways): what `mvm port-forward` uses', params: PortParams, response: { 101: WebSocketUpgrade } }, (socket, req) => {
    const ws = socket as unknown as WebSocket;
    void (async () => {
      try {
        const { guest } = await guests.session(principal(req), (req.params as { id: string }).id);
        const conn = await guest.tcpConnect(Number((req.params as { port: number }).port));
        wsSendJson(ws, { type: 'connected' });
        tunnel(ws, conn);
      } catch (e) {
        wsFail(ws, e, req.url);
      }
    })();
  });

  const proxy = async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    const params = req.params as { id: string; port: number; '*'?: string };
    const { guest } = await guests.session(principal(req), params.id);
    const conn = await guest.tcpConnect(Number(params.port));
    proxyHttp(req, reply, conn, `/${params['*'] ?? ''}${req.url.includes('?') ? req.url.slice(req.url.indexOf('?')) : ''}`);
  };
  /**
   * An upgrade (WebSocket) request reaches the route through @fastify/websocket, whose wrapper
   * would complete the handshake itself and close the socket (the route has no wsHandler). So the
   * proxy takes it here, before the handler and after authentication, permission and validation:
   * the guest server answers the handshake, and the bytes pass through both ways. A refusal before
   * that (401, 403, 404, 409, the guest port refusing: 503) is an ordinary HTTP answer.
   */
  const upgradeProxy = async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if ((req.raw as { upgrade?: boolean }).upgrade !== true) return;
    await proxy(req, reply);
  };
  // Not in the OpenAPI document: a pass-through to whatever HTTP server the guest runs, any method, any answer.
  const proxyOpts = {
    preHandler: upgradeProxy,
    schema: { hide: true, summary: 'HTTP to a server in the guest (WebSocket upgrades included), authenticated like every call', params: Type.Object({ id: Type.String({ maxLength: 128 }), port: Type.Integer({ minimum: 1, maximum: 65535 }), '*': Type.Optional(Type.String()) }) },
  };
  app.all('/microvms/:id/proxy/:port', proxyOpts, proxy);
  app.all('/microvms/:id/proxy/:port/*', proxyOpts, proxy);
}

function userOpt(u: string | undefined): { user?: string | number } {
  const v = userOf(u);
  return v === undefined ? {} : { user: v };
}

function basenameOf(p: string): string {
  return p.replace(/\/+$/, '').split('/').pop() || 'root';
}

/** Bytes both ways between a WebSocket (binary frames) and a TCP connection in the guest, with backpressure. */
function tunnel(ws: WebSocket, conn: Duplex): void {
  const HIGH = 1024 * 1024;
  conn.on('data', (d: Buffer) => {
    if (ws.readyState !== ws.OPEN) return;
    ws.send(d);
    if (ws.bufferedAmount > HIGH) {
      conn.pause();
      const check = (): void => {
        if (ws.readyState !== ws.OPEN || ws.bufferedAmount < HIGH / 4) conn.resume();
        else setTimeout(check, 10);
      };
      setTimeout(check, 10);
    }
  });
  conn.on('end', () => ws.readyState === ws.OPEN && ws.close(1000, 'guest closed'));
  conn.on('error', () => ws.readyState === ws.OPEN && ws.close(1011, 'guest connection failed'));
  ws.on('message', (data, isBinary) => {
    if (!isBinary) return;
    const buf = Buffer.isBuffer(data) ? data : Buffer.concat(data as Buffer[]);
    if (!conn.write(buf)) {
      ws.pause();
      conn.once('drain', () => ws.resume());
    }
  });
  ws.on('close', () => conn.end());
}

/** How long a failed upload's remaining body is read away before the error is sent. */
const UPLOAD_DRAIN_MS = 60_000;

/** Read a request body to its end (discarding it), at most `ms`. */
function drain(body: Readable | Buffer, ms: number): Promise<void> {
  if (Buffer.isBuffer(body) || body.readableEnded || body.destroyed) return Promise.resolve();
  return new Promise((resolve) => {
    const done = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(done, ms);
    body.once('end', done);
    body.once('close', done);
    body.once('error', done);
    body.resume();
  });
}

/** Bytes of an upgrade request that Node read past its head (held by @fastify/websocket): they belong to the guest. */
function upgradeHead(raw: object): Buffer | undefined {
  const sym = Object.getOwnPropertySymbols(raw).find((s) => s.description === 'ws-head');
  const head = sym ? (raw as Record<symbol, unknown>)[sym] : undefined;
  return Buffer.isBuffer(head) && head.length > 0 ? head : undefined;
}

/**
 * A raw HTTP/1.1 exchange with the guest server: the request head (path rewritten, our credentials
 * and hop-by-hop headers removed, `connection: close` unless it is an upgrade), the body, then the
 * guest's bytes straight back to the client's socket — any response, chunked or an upgraded
 * WebSocket, passes through unchanged.
 */
function proxyHttp(req: FastifyRequest, reply: FastifyReply, conn: Duplex, path: string): void {
  reply.hijack();
  const client = req.raw.socket as Socket;
  const upgrade = (req.raw as { upgrade?: boolean }).upgrade === true;
  const drop = new Set(['authorization', 'connection', 'upgrade', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'content-length', 'host']);
  const lines = [`${req.method} ${path} HTTP/1.1`, `host: ${req.headers.host ?? 'localhost'}`];
  for (const [k, v] of Object.entries(req.headers)) {
    if (drop.has(k) && !(upgrade && (k === 'connection' || k === 'upgrade'))) continue;
    if (k === 'sec-websocket-protocol' && typeof v === 'string') {
      const kept = v.split(',').map((x) => x.trim()).filter((x) => !x.startsWith('bearer.'));
      if (kept.length) lines.push(`${k}: ${kept.join(', ')}`);
      continue;
    }
    for (const one of Array.isArray(v) ? v : v !== undefined ? [v] : []) lines.push(`${k}: ${one}`);
  }
  const body = req.body as Readable | Buffer | string | object | undefined;
  const raw = body === undefined || body === null ? undefined : Buffer.isBuffer(body) ? body : typeof body === 'string' ? Buffer.from(body) : typeof (body as Readable).pipe === 'function' ? undefined : Buffer.from(JSON.stringify(body));
  if (!upgrade) {
    lines.push('connection: close');
    if (raw) lines.push(`content-length: ${raw.length}`);
    else if (body && typeof (body as Readable).pipe === 'function') lines.push('transfer-encoding: chunked');
  }
  conn.write(lines.join('\r\n') + '\r\n\r\n');
  const head = upgrade ? upgradeHead(req.raw) : undefined;
  if (head) conn.write(head);
  if (raw) conn.write(raw);
  else if (body && typeof (body as Readable).pipe === 'function') {
    const src = body as Readable;
    src.on('data', (d: Buffer) => {
      // One write per chunk (size line, data, CRLF): never skipped, paused while the guest is slow.
      if (!conn.write(Buffer.concat([Buffer.from(`${d.length.toString(16)}\r\n`), d, Buffer.from('\r\n')]))) {
        src.pause();
        conn.once('drain', () => src.resume());
      }
    });
    src.on('end', () => conn.write('0\r\n\r\n'));
  }
  conn.pipe(client);
  if (upgrade) client.pipe(conn);
  const done = (): void => {
    conn.destroy();
    client.destroy();
  };
  conn.on('end', () => client.end());
  conn.on('error', done);
  client.on('error', done);
  client.on('close', () => conn.destroy());
}

