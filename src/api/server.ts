/**
 * The REST gateway (seed §3.5.1): Fastify, schema-first with TypeBox, OpenAPI
 * generated from the same schemas, problem+json errors mapped once.
 */
import websocket from '@fastify/websocket';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import AjvModule from 'ajv';
import addFormatsModule from 'ajv-formats';

const Ajv = AjvModule.default;
const addFormats = addFormatsModule.default;
import type { Logger } from 'pino';
import type { AuditService } from '../core/audit.js';
import { ErrorCodes, MvmError, validationError } from '../core/errors.js';
import { Problem, toJsonSchema } from '../core/schema.js';
import type { MicroVMService, Principal } from '../core/service.js';
import type { TenantService } from '../core/tenancy.js';
import { Gateway, IDEMPOTENCY_KEY_RE, rateLimitFields, type CallInfo } from '../gateway/gateway.js';
import { errorStatuses, operationForRoute, undeclaredOperation, type Operation } from '../gateway/operations.js';
import { HTTP_STATUS, ajvToMvmError, errorFrom, toProblem } from '../gateway/problem.js';
import { registerObservabilityRoutes } from './routes/observability.js';
import type { SecurityGroupService } from '../core/security-groups.js';
import { API_VERSIONS, unsupportedVersion } from './versions.js';

export interface ApiOptions {
  service: MicroVMService;
  /** Authentication, rate limits, permissions, idempotency and audit (shared with gRPC). */
  gateway: Gateway;
  tenants?: TenantService;
  audit?: AuditService;
  logger: Logger;
  version: string;
  securityGroups?: SecurityGroupService;
  snapshots?: import('../core/snapshots.js').SnapshotService;
  images?: import('../core/ports/images.js').ImageCatalog;
  volumes?: import('../core/volumes.js').VolumeService;
  /** MicroVMPools (cluster mode only). */
  pools?: import('../core/pools.js').PoolService;
  templates?: import('../core/templates.js').TemplateService;
  guest?: import('../core/guest.js').GuestService;
  backup?: import('../core/ports/backup.js').BackupService;
  /** Serve HTTPS with this certificate, swapped in place when its files change (ADR 0026); plain HTTP otherwise. */
  tls?: import('../tls/files.js').ServerKeyPair;
}

declare module 'fastify' {
  interface FastifyInstance {
    apiRoutes: Array<{ method: string; url: string }>;
  }
  interface FastifyRequest {
    principal?: Principal;
    op?: Operation;
    callInfo?: CallInfo;
    mvmError?: MvmError;
    idempotencyScope?: string;
    /** What the audit entry records beyond the call (exec: argv and exit code; never data). */
    auditDetails?: Record<string, unknown>;
  }
}

/**
 * A WebSocket client cannot send headers from a browser: its bearer token may travel as the
 * subprotocol `bearer.<base64url(token)>` beside `mvm.v1` (the one the server selects).
 */
export function bearerFromSubprotocols(header: string | string[] | undefined): string | undefined {
  const all = (Array.isArray(header) ? header.join(',') : (header ?? '')).split(',').map((x) => x.trim());
  const b = all.find((x) => x.startsWith('bearer.'));
  if (!b) return undefined;
  try {
    return Buffer.from(b.slice('bearer.'.length), 'base64url').toString('utf8') || undefined;
  } catch {
    return undefined;
  }
}

/** A logger that becomes `parent.child(bindings)` the first time it logs (one small object per request otherwise). */
class LazyLogger {
  private real?: FastifyBaseLogger;
  constructor(
    private readonly parent: FastifyBaseLogger,
    private readonly bindings: Record<string, unknown>,
  ) {}
  private get r(): FastifyBaseLogger {
    return (this.real ??= this.parent.child(this.bindings));
  }
  get level(): string {
    return this.real?.level ?? this.parent.level;
  }
  set level(v: string) {
    this.r.level = v;
  }
  child(b: Record<string, unknown>, o?: unknown): FastifyBaseLogger {
    return this.real ? this.real.child(b, o as never) : (new LazyLogger(this.parent, { ...this.bindings, ...b }) as unknown as FastifyBaseLogger);
  }
  isLevelEnabled(lv: string): boolean {
    return (this.parent as unknown as { isLevelEnabled(l: string): boolean }).isLevelEnabled(lv);
  }
  fatal(...a: unknown[]): void {
    (this.r.fatal as (...x: unknown[]) => void)(...a);
  }
  error(...a: unknown[]): void {
    (this.r.error as (...x: unknown[]) => void)(...a);
  }
  warn(...a: unknown[]): void {
    (this.r.warn as (...x: unknown[]) => void)(...a);
  }
  info(...a: unknown[]): void {
    (this.r.info as (...x: unknown[]) => void)(...a);
  }
  debug(...a: unknown[]): void {
    (this.r.debug as (...x: unknown[]) => void)(...a);
  }
  trace(...a: unknown[]): void {
    (this.r.trace as (...x: unknown[]) => void)(...a);
  }
  silent(): void {}
}

const lazyChild = (parent: FastifyBaseLogger, bindings: Record<string, unknown>): FastifyBaseLogger => new LazyLogger(parent, bindings) as unknown as FastifyBaseLogger;

/** Paths under /api/ that are not in the route table (404s) still require authentication. */
const UNROUTED: Operation = { id: 'unrouted', permission: 'authenticated', resource: 'unknown', verb: 'unknown', mutation: false, rateClass: 'read' };
const REPLAYED_HEADERS = ['content-type', 'location', 'etag'];
/** Methods a route may answer; an unrouted request whose path answers some of them gets 405 with `Allow`. */
const ROUTABLE_METHODS = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'] as const;
/**
 * Longest path parameter the router accepts. Ids are at most 128 characters by the schema: longer
 * ones reach validation (400, naming the field); only a segment over this limit is refused by the
 * router, as 414 problem+json like every other error.
 */
export const MAX_PARAM_LENGTH = 2048;

const STATUS_TEXT: Record<number, string> = {
  400: 'Invalid request: the fields that are wrong are named in `errors`',
  401: 'Not authenticated',
  403: 'Permission denied, another tenant named, over quota (QUOTA_EXCEEDED), or an image the image policy refuses (REGISTRY_NOT_ALLOWED, SIGNATURE_VERIFICATION_FAILED)',
  404: 'Not found (another tenant\'s object answers the same)',
  408: 'Timed out',
  409: 'Conflict with the current state (ILLEGAL_TRANSITION, ALREADY_EXISTS, CONFLICT, VM_FAILED, AGENT_UNAVAILABLE, a stale If-Match, an Idempotency-Key reused)',
  413: 'Request body too large',
  414: 'A path segment is too long',
  415: 'The body\'s Content-Type is not one this operation takes',
  422: 'Valid by this document but breaking a rule it cannot state (UNPROCESSABLE, naming the field), FIELD_IMMUTABLE, IMAGE_ERROR',
  426: 'A WebSocket endpoint: send Upgrade: websocket',
  429: 'Rate limited (Retry-After says when to retry)',
  431: 'The request line and headers are over 16 KiB (a very long query string)',
  501: 'Not supported by this deployment or driver',
  502: 'The VMM or the guest agent failed',
  503: 'Unavailable: no capacity, or a store or node cannot be reached',
};

/** An error response of the OpenAPI document: application/problem+json (RFC 9457). */
const API_DESCRIPTION = [
  'Create, run and observe microVMs (Firecracker / QEMU microvm).',
  '',
  'Errors are application/problem+json (RFC 9457) with a stable `code`; every operation lists the statuses it can answer. 400 means the request breaks this document (the fields at fault are named in `errors`); 422 means it is valid by this document but breaks a rule the document cannot state (a relation between fields, the node\'s network, the guest\'s users), again naming the field. A method a path does not have is 405 with `Allow`.',
  '',
  'Tenancy: every caller acts in their own tenant. `?tenant=` on list routes: admins list that tenant (default every tenant); anyone else may name only their own tenant, another one is 403 PERMISSION_DENIED. On creates (microVMs, restores, volumes, templates, API keys) admins may name the tenant to create in. Another tenant\'s object by id answers 404, like a missing one.',
  '',
  'Not listed: `/microvms/{id}/proxy/{port}/...`, a pass-through to HTTP servers in the guest (any method; the answers are the guest\'s).',
].join('\n');

/** The shared Problem schema (components/schemas/Problem of the OpenAPI document). */
const PROBLEM_SCHEMA = { ...toJsonSchema(Problem), additionalProperties: true, description: 'RFC 9457 problem details: a stable `code`, the fields at fault in `errors`; more members may follow (e.g. retryAfterSeconds, allow)' };
function problemResponse(status: number): Record<string, unknown> {
  return { description: STATUS_TEXT[status] ?? 'Error', content: { 'application/problem+json': { schema: { $ref: 'Problem#' } } } };
}

export async function buildApi(o: ApiOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: o.logger as unknown as FastifyBaseLogger,
    bodyLimit: 1024 * 1024,
    genReqId: () => `req-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
    // One access-log line per request at debug level (below); the audit log records every mutation and denial.
    logController: new LogController({ disableRequestLogging: true }),
    // Request loggers are made on first use: most requests never log, and a pino child per request costs.
    childLoggerFactory: (logger, bindings) => lazyChild(logger, bindings),
    ...(o.tls ? { https: { ...o.tls.current, minVersion: 'TLSv1.2' as const } } : {}),
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // What Node's HTTP parser refuses before Fastify sees a request (headers over 16 KiB: 431; a malformed request: 400), as problem+json.
    clientErrorHandler: (err: NodeJS.ErrnoException, socket) => {
      if (err.code === 'ECONNRESET' || socket.destroyed || !socket.writable) return;
      const e =
        err.code === 'HPE_HEADER_OVERFLOW'
          ? new MvmError(ErrorCodes.HEADERS_TOO_LARGE, 'the request line and headers are over 16 KiB')
          : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? new MvmError(ErrorCodes.TIMEOUT, 'the request was not received in time')
            : new MvmError(ErrorCodes.VALIDATION_FAILED, 'malformed HTTP request');
      const status = HTTP_STATUS[e.code];
      const body = JSON.stringify(toProblem(e));
      socket.end(`HTTP/1.1 ${status} ${status === 431 ? 'Request Header Fields Too Large' : status === 408 ? 'Request Timeout' : 'Bad Request'}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nContent-Type: application/problem+json\r\nConnection: close\r\n\r\n${body}`);
    },
    // What the router refuses before any route runs (bad percent-encoding, an over-long segment) is problem+json too.
    frameworkErrors: (err, req, reply) => {
      const e = errorFrom(err);
      req.mvmError = e;
      void (reply as FastifyReply).status(HTTP_STATUS[e.code]).type('application/problem+json').send(toProblem(e, req.url));
    },
  });
  if (o.tls) {
    // Rotation without a restart: new connections get the new certificate, open ones keep theirs.
    const server = app.server as unknown as import('node:https').Server;
    const off = o.tls.onChange((p) => server.setSecureContext({ ...p, minVersion: 'TLSv1.2' }));
    app.addHook('onClose', async () => off());
  }
  // Security headers on every answer (the dashboard's static files set their own, stricter-for-HTML CSP).
  const hsts = o.tls ? 'max-age=31536000' : undefined;
  app.addHook('onSend', async (_req, reply, payload) => {
    if (hsts) void reply.header('strict-transport-security', hsts);
    void reply.header('x-content-type-options', 'nosniff');
    if (!reply.hasHeader('x-frame-options')) void reply.header('x-frame-options', 'DENY');
    if (!reply.hasHeader('referrer-policy')) void reply.header('referrer-policy', 'no-referrer');
    if (!reply.hasHeader('content-security-policy')) void reply.header('content-security-policy', "default-src 'none'; frame-ancestors 'none'; base-uri 'none'");
    return payload;
  });
  app.addSchema(PROBLEM_SCHEMA);
  const gw = o.gateway;
  // Every route, for the check that each one under /api is in the operations table.
  const routes: Array<{ method: string; url: string }> = [];
  app.decorate('apiRoutes', routes);
  app.addHook('onRoute', (r) => {
    const methods = Array.isArray(r.method) ? r.method : [r.method];
    for (const m of methods) if (m !== 'HEAD') routes.push({ method: m, url: r.url });
    // The OpenAPI document names every error status a route can answer, each an application/problem+json body (operations.ts says which).
    const op = methods.length === 1 && r.url.startsWith('/api/') ? operationForRoute(methods[0]!, r.url) : undefined;
    if (op && r.schema && !r.schema.hide) {
      const response: Record<string, unknown> = {};
      for (const [k, v] of Object.entries((r.schema.response ?? {}) as Record<string, unknown>)) if (!/^[45]/.test(k)) response[k] = v;
      for (const status of errorStatuses(op, { params: r.schema.params !== undefined, query: r.schema.querystring !== undefined, body: r.schema.body !== undefined, method: methods[0]! })) {
        response[status] = problemResponse(status);
      }
      r.schema = { ...r.schema, response, operationId: op.id };
      const ok = Object.keys(response).find((k) => /^2/.test(k));
      if (op.links?.length && ok) {
        const links: Record<string, unknown> = {};
        for (const target of op.links) links[target] = { operationId: target, parameters: { id: '$response.body#/id' } };
        (r as { links?: Record<string, unknown> }).links = { [ok]: links };
      }
    }
    // Idempotency hooks only where they can apply (POST), so reads pay nothing for them.
    if (methods.includes('POST')) {
      r.preHandler = [...(Array.isArray(r.preHandler) ? r.preHandler : r.preHandler ? [r.preHandler] : []), idempotencyPreHandler];
      r.onSend = [...(Array.isArray(r.onSend) ? r.onSend : r.onSend ? [r.onSend] : []), idempotencyOnSend];
    }
  });

  // Bodies are validated strictly (no coercion, no silently dropped fields); query strings and params are coerced.
  // `verbose`: errors carry their schema, so a rule between fields is reported by the field it names.
  const bodyAjv = new Ajv({ allErrors: true, coerceTypes: false, removeAdditional: false, useDefaults: false, strict: false, verbose: true });
  const queryAjv = new Ajv({ allErrors: true, coerceTypes: true, removeAdditional: false, useDefaults: true, strict: false, verbose: true });
  addFormats(bodyAjv);
  addFormats(queryAjv);
  app.setValidatorCompiler(({ schema, httpPart }) => {
    const v = (httpPart === 'body' ? bodyAjv : queryAjv).compile(schema);
    return (data: unknown) => (v(data) ? { value: data } : { error: ajvToMvmError(v.errors ?? [], httpPart ?? 'request') as unknown as Error });
  });
  // Response schemas document the API; serialisation stays plain JSON so nothing is silently dropped.
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));

  app.setErrorHandler((err: Error, req, reply) => {
    let e: MvmError;
    const withValidation = err as { validation?: unknown; validationContext?: string };
    if (err instanceof MvmError) e = err;
    else if (withValidation.validation && err.cause instanceof MvmError) e = err.cause;
    else if (withValidation.validation) e = ajvToMvmError(withValidation.validation as never, withValidation.validationContext ?? 'request');
    else e = errorFrom(err);
    if (e.code === ErrorCodes.INTERNAL) req.log.error({ err }, 'internal error');
    req.mvmError = e;
    const retry = e.details.retryAfterSeconds;
    if (typeof retry === 'number') void reply.header('retry-after', String(retry));
    const body = toProblem(e, req.url);
    void reply.status(body.status).type('application/problem+json').send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split('?')[0]!;
    const v = unsupportedVersion(path);
    const e = v
      ? new MvmError(ErrorCodes.NOT_FOUND, `API version ${v} is not served (supported: ${API_VERSIONS.map((x) => x.name).join(', ')})`, {
          details: { supportedVersions: API_VERSIONS.map((x) => x.name) },
        })
      : new MvmError(ErrorCodes.NOT_FOUND, `no route ${req.method} ${path}`);
    req.mvmError = e;
    const body = toProblem(e, req.url);
    void reply.status(404).type('application/problem+json').send(body);
  });

  // The gateway: authentication, rate limits, permission — per the operations table.
  const warned = new Set<string>();
  app.addHook('onRequest', async (req: FastifyRequest, reply) => {
    const path = req.url.split('?')[0]!;
    const pattern = req.routeOptions.url;
    if (!pattern) {
      // No route for this method: when the path has routes for other methods, 405 naming them (before
      // authentication and before any body is read: an unknown method such as QUERY never gets that far).
      // A static route outranks a parametric one for the same path (`POST /images/gc` is not `DELETE /images/:digest`).
      const found = ROUTABLE_METHODS.map((m) => ({ m, r: app.findRoute({ method: m, url: path }) })).filter((x) => x.r !== null);
      const isStatic = (x: (typeof found)[number]): boolean => Object.keys((x.r as { params?: object }).params ?? {}).length === 0;
      const allow = (found.some(isStatic) ? found.filter(isStatic) : found).map((x) => x.m);
      if (allow.length) {
        void reply.header('allow', allow.join(', '));
        throw new MvmError(ErrorCodes.METHOD_NOT_ALLOWED, `method ${req.method} is not allowed on ${path} (allowed: ${allow.join(', ')})`, { details: { allow } });
      }
    }
    if (!path.startsWith('/api/')) return;
    const method = req.method === 'HEAD' ? 'GET' : req.method;
    let op = pattern ? operationForRoute(method, pattern) : UNROUTED;
    if (!op) {
      op = undeclaredOperation(method, pattern!);
      if (!warned.has(op.rest!)) {
        warned.add(op.rest!);
        req.log.warn({ route: op.rest }, 'route is missing from the operations table: only admins may call it');
      }
    }
    req.op = op;
    const info: CallInfo = {
      transport: 'rest',
      requestId: String(req.id),
      method: `${req.method} ${pattern ?? path}`,
      sourceIp: req.ip,
      ...(req.headers['user-agent'] ? { userAgent: req.headers['user-agent'] } : {}),
      ...(req.headers.authorization
        ? { authorization: req.headers.authorization }
        : bearerFromSubprotocols(req.headers['sec-websocket-protocol'])
          ? { authorization: `Bearer ${bearerFromSubprotocols(req.headers['sec-websocket-protocol'])}` }
          : {}),
    };
    req.callInfo = info;
    const a = await gw.admit(op, info);
    if (a.principal) req.principal = a.principal;
    for (const [k, v] of Object.entries(rateLimitFields(a.decision))) void reply.header(k, v);
    if (a.error) throw a.error;
  });

  // Idempotency-Key on POST: the first response is stored and replayed to retries.
  async function idempotencyPreHandler(req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    if (req.method !== 'POST' || !req.op?.mutation || !req.principal) return;
    const key = req.headers['idempotency-key'];
    if (key === undefined) return;
    if (typeof key !== 'string' || !IDEMPOTENCY_KEY_RE.test(key)) throw validationError('Idempotency-Key', 'must be 1-255 visible ASCII characters');
    const scope = gw.scopeOf(req.principal, 'rest', key, `${req.method} ${req.url}`);
    const r = await gw.beginIdempotent(scope, gw.fingerprint([req.method, req.url, req.body ?? null]));
    if (r.state === 'done') {
      void reply.header('idempotent-replayed', 'true');
      for (const [k, v] of Object.entries(r.response.headers)) void reply.header(k, v);
      return reply.status(r.response.status).send(r.response.body);
    }
    const err = Gateway.idempotencyError(r);
    if (err) throw err;
    req.idempotencyScope = scope;
    return undefined;
  }

  async function idempotencyOnSend(req: FastifyRequest, reply: FastifyReply, payload: unknown): Promise<unknown> {
    const scope = req.idempotencyScope;
    if (scope) {
      req.idempotencyScope = undefined;
      const status = reply.statusCode;
      if (status >= 500 || status === 429 || typeof payload !== 'string') await gw.abandonIdempotent(scope);
      else {
        const headers: Record<string, string> = {};
        for (const h of REPLAYED_HEADERS) {
          const v = reply.getHeader(h);
          if (v !== undefined) headers[h] = String(v);
        }
        await gw.completeIdempotent(scope, { status, headers, body: payload });
      }
    }
    return payload;
  }

  app.addHook('onResponse', async (req, reply) => {
    // An upgrade request answered over HTTP (refused before any handshake: 401, 403, 404, 503...)
    // has a socket Node's HTTP server no longer manages: end it, or it stays open (CLOSE-WAIT once
    // the client goes) and holds the server's close. @fastify/websocket only does this for requests
    // that got past the gateway's onRequest hook (its own hook runs after ours).
    if ((req.raw as { upgrade?: boolean }).upgrade === true) req.raw.socket.destroy();
    if (o.logger.isLevelEnabled('debug')) {
      req.log.debug({ req: { method: req.method, url: req.url, ip: req.ip }, status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10, principal: req.principal?.subject }, 'request');
    }
    if (!req.op || !req.callInfo || (!req.op.mutation && reply.statusCode < 400)) return;
    let resourceId = (req.params as { id?: string } | undefined)?.id;
    if (!resourceId) {
      const loc = reply.getHeader('location');
      if (typeof loc === 'string') resourceId = loc.split('/').pop();
    }
    const e = req.mvmError;
    await gw.finish(req.op, req.callInfo, req.principal, {
      status: reply.statusCode,
      ...(e ? { code: e.code, reason: e.message } : {}),
      ...(resourceId ? { resourceId } : {}),
      ...(req.auditDetails ? { details: req.auditDetails } : {}),
    });
  });

  // WebSocket routes (exec, process attach, port tunnels): the subprotocol mvm.v1 is selected;
  // a `bearer.<token>` one (browsers) authenticates and is never echoed.
  await app.register(websocket, {
    options: {
      maxPayload: 4 * 1024 * 1024,
      handleProtocols: (protocols: Set<string>) => (protocols.has('mvm.v1') ? 'mvm.v1' : false),
    },
  });

  await app.register(swagger, {
    // Shared schemas (Problem) keep their $id as their name under components/schemas.
    refResolver: { buildLocalReference: (json, _base, _fragment, i) => (typeof json.$id === 'string' ? json.$id : `def-${i}`) },
    openapi: {
      openapi: '3.0.3',
      info: { title: 'MicroVM Service API', version: o.version, description: API_DESCRIPTION },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  app.get('/healthz', { schema: { hide: true } }, async () => ({ ok: true }));

  await registerObservabilityRoutes(app, { service: o.service });
  for (const v of API_VERSIONS) {
    await app.register(
      async (api) => {
        await v.register(api, {
          service: o.service,
          ...(o.tenants ? { tenants: o.tenants } : {}),
          ...(o.audit ? { audit: o.audit } : {}),
          ...(o.securityGroups ? { securityGroups: o.securityGroups } : {}),
          ...(o.snapshots ? { snapshots: o.snapshots } : {}),
          ...(o.images ? { images: o.images } : {}),
          ...(o.volumes ? { volumes: o.volumes } : {}),
          ...(o.pools ? { pools: o.pools } : {}),
          ...(o.templates ? { templates: o.templates } : {}),
          ...(o.backup ? { backup: o.backup } : {}),
          ...(o.guest
            ? {
                guest: {
                  guest: o.guest,
                  // WebSocket execs are audited when they end (their reply is the socket).
                  audit: async (req: FastifyRequest, out: { status: number; code?: string; reason?: string; details?: Record<string, unknown> }) => {
                    if (!req.op || !req.callInfo) return;
                    await gw.finish({ ...req.op, mutation: true }, req.callInfo, req.principal, { ...out, resourceId: (req.params as { id?: string }).id ?? '' });
                  },
                },
              }
            : {}),
        });
        api.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
      },
      { prefix: v.prefix },
    );
  }
  return app;
}
