/**
 * Observability at the API process: `/metrics` (Prometheus exposition), the
 * tenant-wide event feed `/api/v1/events` (JSON, or SSE with follow=true), the
 * per-VM metrics history for the dashboard, request-duration and error metrics,
 * request logs carrying tenant and VM id, an event for every operator action,
 * and the dashboard's static files at `/`.
 *
 * Register it on the root instance before the /api/v1 routes (its hooks then
 * apply to every route): `await registerObservabilityRoutes(app, { service })`.
 */
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Type } from '@sinclair/typebox';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { MicroVMService, Principal } from '../../core/service.js';
import { streamEvents, tailEvents, toWire } from '../../observability/events.js';
import { tenantParam } from '../http.js';
import { VmEvent, VmMetricsHistory } from '../../core/schema.js';
import { listTenant } from '../../core/authz.js';
import { observability as defaultObservability, type Observability } from '../../observability/index.js';

export interface ObservabilityRouteDeps {
  service: MicroVMService;
  /** Default: the process's `observability`. */
  observability?: Observability;
  /** Built dashboard (vite build output); default MVM_WEB_ROOT or <repo>/dist/web. */
  webRoot?: string;
  /** Bearer token required on /metrics; default MVM_METRICS_TOKEN (unset: open, like most exporters). */
  metricsToken?: string;
}

const principal = (req: FastifyRequest): Principal => {
  if (!req.principal) throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'not authenticated');
  return req.principal;
};

const VM_ROUTE = '/api/v1/microvms/:id';

/** Reasons of the events recorded for operator actions, by HTTP method and route suffix. */
function actionReason(method: string, route: string): string | undefined {
  if (route === VM_ROUTE) return method === 'PUT' ? 'UpdateRequested' : method === 'DELETE' ? 'DeleteRequested' : undefined;
  if (method !== 'POST' || !route.startsWith(`${VM_ROUTE}/`)) return undefined;
  const action = route.slice(VM_ROUTE.length + 1);
  if (!/^[a-z]+$/.test(action)) return undefined;
  return `${action[0]!.toUpperCase()}${action.slice(1)}Requested`;
}

export function defaultWebRoot(): string {
  if (process.env.MVM_WEB_ROOT) return resolve(process.env.MVM_WEB_ROOT);
  // dist/src/api/routes/observability.js -> dist/web
  return resolve(dirname(fileURLToPath(import.meta.url)), '../../../web');
}

export async function registerObservabilityRoutes(app: FastifyInstance, deps: ObservabilityRouteDeps): Promise<void> {
  const obs = deps.observability ?? defaultObservability;
  const svc = deps.service;
  const metricsToken = deps.metricsToken ?? process.env.MVM_METRICS_TOKEN;
  // Open event streams end when the server closes (they would hold up app.close() forever).
  const closing = new AbortController();
  app.addHook('preClose', async () => closing.abort());
  const storeOrFail = () => {
    const s = obs.attachedStore;
    if (!s) throw new MvmError(ErrorCodes.UNAVAILABLE, 'the event log is not available in this process');
    return s;
  };

  // Request logs carry the tenant and the VM id (the auth hook ran before this one).
  app.addHook('onRequest', async (req, reply) => {
    const bindings: Record<string, string> = {};
    if (req.principal) bindings.tenant = req.principal.tenant;
    const id = (req.params as { id?: string } | undefined)?.id;
    if (id && req.routeOptions.url?.startsWith(VM_ROUTE)) bindings.vm = id;
    if (Object.keys(bindings).length) {
      req.log = req.log.child(bindings);
      reply.log = req.log;
    }
  });

  app.addHook('onResponse', async (req, reply) => {
    const route = req.routeOptions.url ?? 'unmatched';
    if (route === '/metrics') return; // the scrape does not measure itself
    obs.metrics.httpDuration.observe({ method: req.method, route, status_code: String(reply.statusCode) }, reply.elapsedTime / 1000);
  });

  // Errors by code (from the problem+json body), and an event for every operator action.
  app.addHook('onSend', async (req, reply, payload) => {
    const route = req.routeOptions.url ?? '';
    if (reply.statusCode >= 400) {
      const type = String(reply.getHeader('content-type') ?? '');
      let code = `HTTP_${reply.statusCode}`;
      if (type.includes('problem+json') && typeof payload === 'string') {
        try {
          code = (JSON.parse(payload) as { code?: string }).code ?? code;
        } catch {
          /* keep HTTP_<status> */
        }
      }
      obs.error(code, 'api');
      return payload;
    }
    const reason = actionReason(req.method, route);
    const store = obs.attachedStore;
    if (reason && store && typeof payload === 'string' && req.principal) {
      try {
        const vm = JSON.parse(payload) as { id?: string; tenant?: string };
        if (vm.id && vm.tenant) {
          await store.appendEvent({
            vmId: vm.id,
            tenant: vm.tenant,
            time: new Date().toISOString(),
            type: 'Normal',
            reason,
            message: `${reason.replace(/Requested$/, '').toLowerCase()} requested by ${req.principal.subject} (request ${req.id})`,
          });
        }
      } catch {
        /* the action itself succeeded; its event is best effort */
      }
    }
    return payload;
  });

  app.get('/metrics', { schema: { hide: true } }, async (req, reply) => {
    if (metricsToken && req.headers.authorization !== `Bearer ${metricsToken}`) {
      throw new MvmError(ErrorCodes.UNAUTHENTICATED, '/metrics requires the metrics bearer token (MVM_METRICS_TOKEN)');
    }
    const body = await obs.scrape();
    return reply.type(obs.metrics.contentType()).send(body);
  });

  const EventQuery = Type.Object(
    {
      follow: Type.Optional(Type.Boolean({ description: 'Stream as Server-Sent Events (id = seq; resumable with Last-Event-ID)' })),
      tenant: tenantParam(),
      vm: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Only this microVM (id or name)' })),
      after: Type.Optional(Type.Integer({ minimum: 0, description: 'Only events after this sequence number' })),
      tail: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000, description: 'Without `after`: the last N events (default 100)' })),
    },
    { additionalProperties: false },
  );

  app.get(
    '/api/v1/events',
    {
      schema: {
        summary: "Events of the caller's tenant (every tenant for admins); follow=true streams them as SSE",
        querystring: EventQuery,
        response: { 200: { description: 'The events (JSON), or with follow=true a text/event-stream', content: { 'application/json': { schema: Type.Object({ items: Type.Array(VmEvent) }) }, 'text/event-stream': { schema: Type.String() } } } },
      },
    },
    async (req, reply) => {
      const p = principal(req);
      const q = req.query as { follow?: boolean; tenant?: string; vm?: string; after?: number; tail?: number };
      let tenant = listTenant(p, q.tenant);
      let vmId: string | undefined;
      if (q.vm) {
        const vm = await svc.get(p, q.vm);
        vmId = vm.id;
        tenant = vm.tenant;
      }
      const store = storeOrFail();
      const lastEventId = Number(req.headers['last-event-id']);
      const after = q.after ?? (Number.isInteger(lastEventId) && lastEventId >= 0 ? lastEventId : undefined);
      const filter = { ...(tenant !== undefined ? { tenant } : {}), ...(vmId ? { vmId } : {}) };
      if (q.follow) {
        if (!obs.tailer) throw new MvmError(ErrorCodes.UNAVAILABLE, 'the event feed is not running');
        await streamEvents({ req, reply, store, tailer: obs.tailer, signal: closing.signal, ...filter, ...(after !== undefined ? { afterSeq: after } : {}), tail: q.tail ?? 100 });
        return reply;
      }
      const items = after !== undefined ? await store.listEvents({ ...filter, afterSeq: after, limit: 500 }) : await tailEvents(store, filter, q.tail ?? 100);
      return { items: items.map(toWire) };
    },
  );

  app.get(
    '/api/v1/microvms/:id/metrics/history',
    {
      schema: {
        summary: 'Current metrics of a microVM and their history (last 10 minutes at the sampling interval) for charts',
        params: Type.Object({ id: Type.String({ minLength: 1, maxLength: 128 }) }),
        response: { 200: VmMetricsHistory },
      },
    },
    async (req) => {
      const p = principal(req);
      const { id } = req.params as { id: string };
      const vm = await svc.get(p, id);
      const current = await svc.metrics(p, vm.id);
      const interval = obs.sampleIntervalMs / 1000;
      return {
        id: vm.id,
        intervalSeconds: interval,
        windowSeconds: interval * obs.history.capacity,
        current,
        points: obs.historyOf(vm.id),
      };
    },
  );

  await registerDashboard(app, deps.webRoot ?? defaultWebRoot());
}

/**
 * The dashboard's Content-Security-Policy: its own scripts, styles (xterm sets inline styles),
 * images and data: icons, API and WebSocket calls to its own origin; no plugins, no framing,
 * forms only to itself.
 */
export const DASHBOARD_CSP =
  "default-src 'self'; script-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/** The dashboard (a static SPA with hash routes) at `/`; a hint when it was not built. */
async function registerDashboard(app: FastifyInstance, root: string): Promise<void> {
  if (!existsSync(join(root, 'index.html'))) {
    app.get('/', { schema: { hide: true } }, async (_req, reply) =>
      reply.type('text/plain; charset=utf-8').send(`MicroVM Service API. The dashboard is not built (${root}): run \`make build\`.\nAPI: /api/v1, OpenAPI: /api/v1/openapi.json, metrics: /metrics\n`),
    );
    return;
  }
  await app.register(fastifyStatic, {
    root,
    prefix: '/',
    wildcard: false,
    index: ['index.html'],
    cacheControl: false,
    setHeaders(reply, path) {
      if (path.includes(`${join(root, 'assets')}/`)) reply.header('cache-control', 'public, max-age=31536000, immutable');
      else reply.header('cache-control', 'no-cache');
      reply.header('x-content-type-options', 'nosniff');
      reply.header('referrer-policy', 'no-referrer');
      if (path.endsWith('.html')) {
        reply.header('content-security-policy', DASHBOARD_CSP);
        reply.header('cross-origin-opener-policy', 'same-origin');
        reply.header('x-frame-options', 'DENY');
      }
    },
  });
}
