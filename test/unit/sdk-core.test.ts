/**
 * The SDK's browser-safe core (sdk/typescript/src/core.ts) against a local HTTP server playing the
 * service: it imports no Node module (the dashboard bundles it), problem+json and other error
 * bodies become typed errors, Idempotency-Key and If-Match go out as headers, SSE events and UTF-8
 * text survive being split across chunks. The real service is exercised by
 * test/e2e/sdk-typescript.test.ts and, through the CLI and the dashboard, by their tests.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { MvmApiError, MvmConnectionError, MvmCore } from '../../sdk/typescript/src/core.js';
import { REPO } from '../support/service.js';

let server: Server;
let url: string;
const seen: Array<{ method: string; url: string; headers: IncomingHttpHeaders }> = [];

before(async () => {
  server = createServer((req, res) => {
    seen.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path === '/api/v1/microvms' && req.method === 'POST') {
      res.writeHead(400, { 'content-type': 'application/problem+json' });
      res.end(JSON.stringify({ title: 'Bad Request', status: 400, code: 'VALIDATION_FAILED', detail: 'name is invalid', errors: [{ field: 'name', message: 'must be lowercase' }] }));
    } else if (path === '/api/v1/microvms/vm1' && req.method === 'PUT') {
      res.writeHead(409, { 'content-type': 'application/problem+json' });
      res.end(JSON.stringify({ status: 409, code: 'CONFLICT', detail: 'stale If-Match' }));
    } else if (path === '/api/v1/tenants') {
      res.writeHead(500, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ statusCode: 500, error: 'Internal Server Error', message: 'boom' }));
    } else if (path === '/api/v1/whoami') {
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end('bad gateway from a proxy');
    } else if (path === '/api/v1/events') {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      const body = 'retry: 3000\n\nid: 7\ndata: {"seq":7,"vmId":"a","reason":"Créé"}\n\nid: 8\ndata: {"seq":8,"vmId":"b","reason":"Started"}\n\n';
      const bytes = Buffer.from(body);
      // Cut inside an event and inside the two-byte 'é'.
      const cut1 = body.indexOf('"vmId":"a"');
      const cut2 = bytes.indexOf(Buffer.from('é')) + 1;
      res.write(bytes.subarray(0, cut1));
      setTimeout(() => {
        res.write(bytes.subarray(cut1, cut2));
        setTimeout(() => res.end(bytes.subarray(cut2)), 10);
      }, 10);
    } else {
      res.writeHead(404, { 'content-type': 'application/problem+json' });
      res.end(JSON.stringify({ status: 404, code: 'NOT_FOUND', detail: `no route ${path}` }));
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(() => new Promise<void>((r) => server.close(() => r())));

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (e) {
    return e;
  }
  assert.fail('expected a rejection');
}

test('core.ts imports no Node module (the dashboard bundles it)', () => {
  const src = readFileSync(join(REPO, 'sdk/typescript/src/core.ts'), 'utf8');
  const specifiers = [...src.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+'([^']+)'/gm)].map((m) => m[1]);
  assert.deepEqual([...new Set(specifiers)], ['./openapi.js']);
  assert.doesNotMatch(src, /\bBuffer\b|\bprocess\.|require\(/);
});

test('problem+json → MvmApiError with status, code, detail and field violations; Idempotency-Key sent', async () => {
  const mvm = new MvmCore({ url: `${url}/api/v1/`, token: 't0ken' });
  const e = await rejection(mvm.microvms.create({ name: 'Bad' }, { idempotencyKey: 'key-1' }));
  assert.ok(e instanceof MvmApiError);
  assert.deepEqual([e.status, e.code, e.detail], [400, 'VALIDATION_FAILED', 'name is invalid']);
  assert.deepEqual(e.violations, [{ field: 'name', message: 'must be lowercase' }]);
  assert.equal(e.problem.title, 'Bad Request');
  const req = seen.at(-1)!;
  assert.equal(req.headers['idempotency-key'], 'key-1');
  assert.equal(req.headers.authorization, 'Bearer t0ken');
});

test('If-Match is sent quoted; other error bodies become MvmApiError too; an unreachable service is MvmConnectionError', async () => {
  const mvm = new MvmCore({ url, token: 't' });
  const conflict = await rejection(mvm.microvms.update('vm1', { vcpu: 2 }, { ifMatch: 41 }));
  assert.ok(conflict instanceof MvmApiError && conflict.code === 'CONFLICT' && conflict.status === 409);
  assert.equal(seen.at(-1)!.headers['if-match'], '"41"');
  const fastify = await rejection(mvm.tenants.list());
  assert.ok(fastify instanceof MvmApiError);
  assert.deepEqual([fastify.status, fastify.code, fastify.detail], [500, 'INTERNAL', 'boom']);
  const text = await rejection(mvm.whoami());
  assert.ok(text instanceof MvmApiError);
  assert.deepEqual([text.status, text.detail], [502, 'bad gateway from a proxy']);
  const closed = createServer();
  await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((r) => closed.close(() => r()));
  const down = await rejection(new MvmCore({ url: `http://127.0.0.1:${port}` }).whoami());
  assert.ok(down instanceof MvmConnectionError);
  assert.equal(down.errno, 'ECONNREFUSED');
});

test('events.follow parses SSE split across chunks (inside an event and inside a UTF-8 character)', async () => {
  const mvm = new MvmCore({ url });
  let opened = false;
  const got: Array<{ id?: string; reason: string }> = [];
  for await (const { id, event } of mvm.events.follow({ tail: 0, lastEventId: '6', onOpen: () => (opened = true) })) got.push({ ...(id ? { id } : {}), reason: event.reason });
  assert.ok(opened);
  assert.deepEqual(got, [
    { id: '7', reason: 'Créé' },
    { id: '8', reason: 'Started' },
  ]);
  const req = seen.at(-1)!;
  assert.equal(req.headers['last-event-id'], '6');
  assert.equal(req.headers.accept, 'text/event-stream');
  assert.match(req.url, /follow=true/);
  assert.match(req.url, /tail=0/);
});
