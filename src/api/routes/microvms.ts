/** /api/v1/microvms — every endpoint of seed §3.5.1 plus wait and events. */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { validationError } from '../../core/errors.js';
import type { MicroVMService } from '../../core/service.js';
import { parseDuration } from '../../core/service.js';
import {
  MigrateRequest,
  type MigrateRequestT,
  CreateMicroVMRequest,
  MicroVM,
  MicroVMList,
  Phase,
  UpdateMicroVMRequest,
  VmEvent,
  VmMetrics,
  ItemsOf,
  type CreateMicroVMRequestT,
  type PhaseT,
  type UpdateMicroVMRequestT,
} from '../../core/schema.js';
import { collectConsole, streamConsole, readConsoleTail } from '../../gateway/console-stream.js';
import { IdParams, LABEL_SELECTOR_PATTERN, TenantQuery, cursorParam, etagOf, ifMatch, principal, tenantParam, withEtag } from '../http.js';



function parseLabelSelector(sel: string | string[] | undefined): Record<string, string> | undefined {
  if (sel === undefined) return undefined;
  const out: Record<string, string> = {};
  for (const part of (Array.isArray(sel) ? sel : [sel]).flatMap((s) => s.split(','))) {
    const m = /^([^=]+)=(.*)$/.exec(part.trim());
    if (!m) throw validationError('label', `must be key=value, got ${JSON.stringify(part)}`);
    out[m[1]!] = m[2]!;
  }
  return out;
}

/** Assembled list bodies per page object (the store hands out the same page until the next write). */
const listBodies = new WeakMap<object, string>();

export async function registerMicroVMRoutes(app: FastifyInstance, svc: MicroVMService): Promise<void> {
  app.get(
    '/microvms',
    {
      schema: {
        summary: 'List microVMs',
        querystring: Type.Object(
          {
            limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
            cursor: cursorParam(),
            phase: Type.Optional(Phase),
            label: Type.Optional(
              Type.Union([Type.String({ pattern: LABEL_SELECTOR_PATTERN, maxLength: 512 }), Type.Array(Type.String({ pattern: LABEL_SELECTOR_PATTERN, maxLength: 512 }), { maxItems: 8 })], {
                description: 'label selector: key=value, comma-separated or repeated; all must match',
              }),
            ),
            tenant: tenantParam(),
          },
          { additionalProperties: false },
        ),
        response: { 200: MicroVMList },
      },
    },
    async (req, reply) => {
      const q = req.query as { limit?: number; cursor?: string; phase?: PhaseT; label?: string | string[]; tenant?: string };
      const labels = parseLabelSelector(q.label);
      // The stored documents are sent as they are (no parse and re-serialisation per item).
      const page = await svc.listRaw(principal(req), {
        ...(q.limit ? { limit: q.limit } : {}),
        ...(q.cursor ? { cursor: q.cursor } : {}),
        ...(q.phase ? { phase: q.phase } : {}),
        ...(labels ? { labels } : {}),
        ...(q.tenant ? { tenant: q.tenant } : {}),
      });
      let body = listBodies.get(page);
      if (body === undefined) {
        body = `{"items":[${page.items.join(',')}]${page.nextCursor ? `,"next_cursor":${JSON.stringify(page.nextCursor)}` : ''}}`;
        listBodies.set(page, body);
      }
      return reply.type('application/json; charset=utf-8').send(body);
    },
  );

  app.post(
    '/microvms',
    {
      schema: {
        summary: 'Create a microVM (starts it unless start=false). Idempotency-Key makes retries safe.',
        body: CreateMicroVMRequest,
        querystring: TenantQuery,
        response: { 201: MicroVM },
      },
    },
    async (req, reply) => {
      const q = req.query as { tenant?: string };
      const vm = await svc.create(principal(req), req.body as CreateMicroVMRequestT, q.tenant ? { tenant: q.tenant } : {});
      return reply.status(201).header('location', `/api/v1/microvms/${vm.id}`).header('etag', etagOf(vm.resourceVersion)).send(vm);
    },
  );

  app.get(
    '/microvms/:id',
    {
      schema: {
        summary: 'Get a microVM by id or name',
        params: IdParams,
        querystring: Type.Object({ view: Type.Optional(Type.Union([Type.Literal('basic'), Type.Literal('full')])) }, { additionalProperties: false }),
        response: { 200: MicroVM, 304: Type.Null({ description: 'Not modified (If-None-Match)' }) },
      },
    },
    async (req, reply) => {
      const { id } = req.params as { id: string };
      if ((req.query as { view?: string }).view === 'full') {
        const vm = await svc.get(principal(req), id);
        reply.header('etag', etagOf(vm.resourceVersion));
        const cfg = svc.vmmConfig(vm);
        return { ...vm, vmm: cfg ?? null };
      }
      const raw = await svc.getRaw(principal(req), id);
      const r = withEtag(req, reply, raw);
      return r === raw ? reply.type('application/json; charset=utf-8').send(raw.json) : r;
    },
  );

  app.put(
    '/microvms/:id',
    {
      schema: {
        summary: 'Update a microVM (vcpu, memory, kernel on a stopped VM; labels any time)',
        params: IdParams,
        body: UpdateMicroVMRequest,
        response: { 200: MicroVM },
      },
    },
    async (req, reply) => {
      const { id } = req.params as { id: string };
      const vm = await svc.update(principal(req), id, req.body as UpdateMicroVMRequestT, ifMatch(req));
      return reply.header('etag', etagOf(vm.resourceVersion)).send(vm);
    },
  );

  app.delete('/microvms/:id', { schema: { summary: 'Delete a microVM', params: IdParams, response: { 202: MicroVM } } }, async (req, reply) => {
    const { id } = req.params as { id: string };
    const vm = await svc.delete(principal(req), id, ifMatch(req));
    return reply.status(202).header('etag', etagOf(vm.resourceVersion)).send(vm);
  });

  app.post('/microvms/:id/start', { schema: { summary: 'Start a stopped or failed microVM', params: IdParams, response: { 202: MicroVM } } }, async (req, reply) => {
    const { id } = req.params as { id: string };
    const vm = await svc.start(principal(req), id, ifMatch(req));
    return reply.status(202).header('etag', etagOf(vm.resourceVersion)).send(vm);
  });

  app.post(
    '/microvms/:id/migrate',
    {
      schema: {
        summary: 'Move a running microVM to another node with its memory, processes, disk and MAC (cluster mode: 409 NeedsClusterMode standalone); 202, then condition Migrated and events say how it went',
        params: IdParams,
        body: MigrateRequest,
        response: { 202: MicroVM },
      },
    },
    async (req, reply) => {
      const { id } = req.params as { id: string };
      return reply.status(202).send(await svc.migrate(principal(req), id, (req.body ?? {}) as MigrateRequestT));
    },
  );

  app.post('/microvms/:id/stop', { schema: { summary: 'Stop a microVM (graceful, then forced)', params: IdParams, response: { 202: MicroVM } } }, async (req, reply) => {
    const { id } = req.params as { id: string };
    const vm = await svc.stop(principal(req), id, ifMatch(req));
    return reply.status(202).header('etag', etagOf(vm.resourceVersion)).send(vm);
  });

  app.get(
    '/microvms/:id/wait',
    {
      schema: {
        summary: 'Long-poll until the microVM reaches a phase',
        params: IdParams,
        querystring: Type.Object(
          {
            phase: Type.Optional(Phase),
            ready: Type.Optional(Type.Boolean()),
            timeout: Type.Optional(Type.String({ pattern: '^[0-9]{1,9}(\\.[0-9]{1,3})?(ms|s|m)?$', description: 'how long to wait: e.g. 30s, 500ms, 2m (a bare number is seconds; default 60s, at most 300s)' })),
          },
          { additionalProperties: false },
        ),
        response: { 200: MicroVM },
      },
    },
    async (req) => {
      const { id } = req.params as { id: string };
      const q = req.query as { phase?: PhaseT; ready?: boolean; timeout?: string };
      const timeoutMs = Math.min(parseDuration(q.timeout ?? '60s', 'timeout'), 300000);
      const ac = new AbortController();
      req.raw.on('close', () => {
        if (!req.raw.complete || req.raw.destroyed) ac.abort();
      });
      return svc.wait(principal(req), id, { phase: q.phase ?? 'Running', ready: q.ready ?? false, timeoutMs, signal: ac.signal });
    },
  );

  app.get(
    '/microvms/:id/console',
    {
      schema: {
        summary: 'Console output (text); follow=true streams it (chunked text, or SSE with Accept: text/event-stream)',
        params: IdParams,
        querystring: Type.Object(
          {
            follow: Type.Optional(Type.Boolean()),
            tail: Type.Optional(Type.Integer({ minimum: 0, maximum: 16 * 1024 * 1024, description: 'bytes from the end (default: whole log up to 1 MiB)' })),
          },
          { additionalProperties: false },
        ),
        response: { 200: { description: 'The console text; with follow=true a stream (chunked text, or text/event-stream with Accept: text/event-stream)', content: { 'text/plain': { schema: Type.String() }, 'text/event-stream': { schema: Type.String() } } } },
      },
    },
    async (req, reply: FastifyReply) => {
      const { id } = req.params as { id: string };
      const q = req.query as { follow?: boolean; tail?: number };
      const p = principal(req);
      const { vm, path } = await svc.consolePath(p, id);
      // Cluster mode: the console lives on the VM's node and is proxied from its agent.
      const remote = svc.remoteConsole(vm);
      if (!q.follow) {
        const text = remote ? await collectConsole(remote({ tail: q.tail ?? 1024 * 1024, follow: false })) : path ? readConsoleTail(path, q.tail ?? 1024 * 1024) : '';
        return reply.type('text/plain; charset=utf-8').send(text);
      }
      const sse = (req.headers.accept ?? '').includes('text/event-stream');
      await streamConsole({
        reply,
        req,
        sse,
        headers: Object.fromEntries(Object.entries(reply.getHeaders()).map(([k, v]) => [k, String(v)])),
        tail: q.tail ?? 1024 * 1024,
        ...(remote ? { source: (signal: AbortSignal) => remote({ tail: q.tail ?? 1024 * 1024, follow: true, signal }) } : {}),
        ...svc.localConsole(p, vm),
      });
      return reply;
    },
  );

  app.get('/microvms/:id/metrics', { schema: { summary: 'Metrics of a microVM', params: IdParams, response: { 200: VmMetrics } } }, async (req) => {
    const { id } = req.params as { id: string };
    return svc.metrics(principal(req), id);
  });

  app.get('/microvms/:id/events', { schema: { summary: 'Events of a microVM', params: IdParams, response: { 200: ItemsOf(VmEvent) } } }, async (req) => {
    const { id } = req.params as { id: string };
    return { items: await svc.events(principal(req), id) };
  });
}
