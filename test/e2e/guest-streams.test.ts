/**
 * Long-lived streams into a real QEMU guest through the service (issue 13):
 *   - WebSocket upgrades through `/api/v1/microvms/{id}/proxy/{port}/...` reach a WebSocket server
 *     in the guest (test/fixtures/ws-echo, uploaded through the files API and run as a background
 *     process): authenticated by header or by a `bearer.` subprotocol that never reaches the guest,
 *     messages both ways (a 300 KiB binary one included), closes propagated from either side;
 *     refused without credentials (401), for a viewer (403), for another tenant (404), and for a
 *     guest port nothing listens on (503).
 *   - Backpressure: a guest writing without end (`yes`) to a streaming exec, and to its console
 *     while the console is followed, with a client that reads slowly, does not grow the service's
 *     memory beyond a bound.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { request } from 'node:http';
import { WebSocket } from 'ws';
import { sleep } from '../../src/vmm/proc.js';
import { apiCall, destroyDataDir, startService, type TestService } from '../support/service.js';
import { buildWsEcho } from '../support/ws-echo.js';

const echo = buildWsEcho();
const skip = 'skip' in echo ? echo.skip : false;
let svc: TestService;
let vmId = '';
const api = (method: string, path: string, body?: unknown, token?: string) => apiCall(token ? { url: svc.url, token } : svc, method, path, body);

const proxyUrl = (path: string) => `${svc.url.replace(/^http/, 'ws')}/api/v1/microvms/${vmId}/proxy/8765${path}`;

/** Resolves with the WebSocket once open, or with the HTTP status that refused the upgrade. */
function connect(url: string, protocols: string[], headers: Record<string, string> = {}): Promise<{ ws: WebSocket; first: Promise<string> } | { status: number; body: string; serverClosed: boolean }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, { headers });
    const first = new Promise<string>((r) => ws.once('message', (d) => r(String(d))));
    ws.once('open', () => resolve({ ws, first }));
    ws.once('unexpected-response', (req, res) => {
      let body = '';
      // A refused upgrade is over: the service must close its side (a socket left open holds its shutdown).
      const serverClosed = new Promise<boolean>((r) => {
        const t = setTimeout(() => r(false), 2000);
        res.socket.once('end', () => (clearTimeout(t), r(true)));
        res.socket.once('close', () => (clearTimeout(t), r(true)));
      });
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => void serverClosed.then((closed) => (req.destroy(), resolve({ status: res.statusCode ?? 0, body, serverClosed: closed }))));
    });
    ws.once('error', reject);
  });
}

const nextMessage = (ws: WebSocket): Promise<{ data: Buffer; binary: boolean }> =>
  new Promise((resolve) => ws.once('message', (data, binary) => resolve({ data: data as Buffer, binary })));
const closed = (ws: WebSocket): Promise<{ code: number; reason: string }> => new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: String(reason) })));

/** The service's resident memory (VmRSS), bytes. */
const rss = (): number => Number(/VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${svc.proc.pid}/status`, 'utf8'))![1]) * 1024;

before(async () => {
  if (skip) return;
  svc = await startService();
  const created = await api('POST', '/microvms', { name: 'streams' });
  assert.equal(created.status, 201, created.text);
  vmId = created.json.id;
  await svc.client.microvms.waitFor(vmId, { phase: 'Running', ready: true, timeoutMs: 180_000 });
  const put = await fetch(`${svc.url}/api/v1/microvms/${vmId}/files?path=/usr/local/bin/ws-echo&mode=755`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${svc.token}`, 'content-type': 'application/octet-stream' },
    body: readFileSync((echo as { path: string }).path),
  });
  assert.equal(put.status, 201, await put.text());
  const p = await api('POST', `/microvms/${vmId}/processes`, { cmd: ['/usr/local/bin/ws-echo', '8765'], tag: 'ws-echo' });
  assert.equal(p.status, 201, p.text);
  // Listening once a plain GET through the proxy answers.
  for (let i = 0; ; i++) {
    const r = await fetch(`${svc.url}/api/v1/microvms/${vmId}/proxy/8765/up`, { headers: { authorization: `Bearer ${svc.token}` } }).catch(() => undefined);
    if (r?.status === 200 && (await r.text()) === 'plain /up') break;
    assert.ok(i < 100, `ws-echo did not start: ${r?.status}`);
    await sleep(100);
  }
});
after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

describe('WebSocket through the guest proxy', { skip }, () => {
  test('upgrades to the guest server: messages both ways, closed by the client', async () => {
    const c = await connect(proxyUrl('/chat/room?x=1'), ['chat'], { authorization: `Bearer ${svc.token}` });
    assert.ok('ws' in c, JSON.stringify(c));
    const { ws, first } = c;
    assert.equal(ws.protocol, 'chat', 'the guest server chose the subprotocol');
    // The guest spoke first, and got the path and query but not our credentials.
    assert.equal(await first, 'hello /chat/room?x=1\nprotocol: chat\nauthorization: ');
    ws.send('ping-1');
    const text = await nextMessage(ws);
    assert.deepEqual([String(text.data), text.binary], ['ping-1', false]);
    const blob = randomBytes(300 * 1024);
    ws.send(blob);
    const back = await nextMessage(ws);
    assert.equal(back.binary, true);
    assert.ok(back.data.equals(blob), 'a 300 KiB binary message comes back intact');
    const done = closed(ws);
    ws.close(4001, 'client bye');
    // The guest answers the close with the same code: the close went through and came back.
    assert.deepEqual(await done, { code: 4001, reason: 'client bye' });
  });

  test('a bearer subprotocol authenticates, never reaches the guest; the guest closes first', async () => {
    const c = await connect(proxyUrl('/sub'), ['chat', `bearer.${Buffer.from(svc.token).toString('base64url')}`]);
    assert.ok('ws' in c, JSON.stringify(c));
    const { ws, first } = c;
    assert.equal(ws.protocol, 'chat');
    assert.equal(await first, 'hello /sub\nprotocol: chat\nauthorization: ');
    const done = closed(ws);
    ws.send('close-me');
    assert.deepEqual(await done, { code: 4002, reason: 'server bye' });
  });

  test('refused without credentials (401), for a viewer (403), another tenant (404), a closed guest port (503)', async () => {
    const anon = await connect(proxyUrl('/x'), ['chat']);
    assert.equal('status' in anon && anon.status, 401, JSON.stringify(anon));
    assert.equal('status' in anon && anon.serverClosed, true, 'the service closed the refused socket');

    const viewer = await api('POST', '/apikeys', { name: 'ws-viewer', role: 'viewer' });
    assert.equal(viewer.status, 201, viewer.text);
    const v = await connect(proxyUrl('/x'), ['chat'], { authorization: `Bearer ${viewer.json.token}` });
    assert.equal('status' in v && v.status, 403, JSON.stringify(v));
    assert.equal('status' in v && v.serverClosed, true);

    assert.equal((await api('POST', '/tenants', { id: 'ws-other' })).status, 201);
    const other = await api('POST', '/apikeys?tenant=ws-other', { name: 'o', role: 'tenant-admin' });
    assert.equal(other.status, 201, other.text);
    const o = await connect(proxyUrl('/x'), ['chat'], { authorization: `Bearer ${other.json.token}` });
    assert.equal('status' in o && o.status, 404, JSON.stringify(o));
    assert.equal('status' in o && o.serverClosed, true);

    const closedPort = await connect(proxyUrl('/x').replace('/proxy/8765/', '/proxy/8799/'), ['chat'], { authorization: `Bearer ${svc.token}` });
    assert.equal('status' in closedPort && closedPort.status, 503, JSON.stringify(closedPort));
    assert.match('body' in closedPort ? closedPort.body : '', /UNAVAILABLE/);
    assert.equal('status' in closedPort && closedPort.serverClosed, true);
  });
});

/**
 * Reads slowly: pauses the source and lets one chunk through every 200 ms. Measures the
 * service's RSS every 200 ms while the guest writes for `seconds`; answers the peak growth.
 */
async function slowRead(seconds: number, source: { pause(): void; resume(): void; on(e: string, f: () => void): unknown; off(e: string, f: () => void): unknown }, event: 'data' | 'message'): Promise<number> {
  const base = rss();
  let peak = base;
  let slow = true;
  // One chunk per turn: pause again as soon as one arrived.
  const onChunk = (): void => {
    if (slow) source.pause();
  };
  source.on(event, onChunk);
  source.pause();
  const end = Date.now() + seconds * 1000;
  while (Date.now() < end) {
    await sleep(200);
    peak = Math.max(peak, rss());
    source.resume();
  }
  slow = false;
  source.off(event, onChunk);
  source.resume();
  return peak - base;
}

const MiB = 1024 * 1024;
// What the service may hold for one slow stream: the socket buffers, the 1 MiB WebSocket high
// mark, the agent window (256 KiB per channel), the chunks in flight; plus the noise of a Node heap.
const BOUND = 48 * MiB;

describe('backpressure: unbounded guest output, a slow client', { skip }, () => {
  test('a streaming exec of `yes` for 10 s does not grow the service', { timeout: 90_000 }, async () => {
    const ws = new WebSocket(`${svc.url.replace(/^http/, 'ws')}/api/v1/microvms/${vmId}/exec`, ['mvm.v1'], { headers: { authorization: `Bearer ${svc.token}` } });
    let read = 0;
    ws.on('message', (d, binary) => binary && (read += (d as Buffer).length));
    const exit = new Promise<Record<string, unknown>>((resolve) => ws.on('message', (d, binary) => !binary && JSON.parse(String(d)).type === 'exit' && resolve(JSON.parse(String(d)) as Record<string, unknown>)));
    await new Promise((r) => ws.once('open', r));
    ws.send(JSON.stringify({ cmd: ['yes'], stdin: false, timeout: '10s' }));
    await sleep(500); // output flowing
    const peakGrowth = await slowRead(10, ws, 'message');
    const readSlowly = read;
    // Now read everything that is left: the process was held back, not its output dropped.
    const r = await exit;
    assert.equal(r.timedOut, true, JSON.stringify(r));
    ws.close();
    process.stderr.write(`exec yes: service RSS grew ${(peakGrowth / MiB).toFixed(1)} MiB at most; the client read ${(readSlowly / MiB).toFixed(1)} MiB slowly, ${(read / MiB).toFixed(1)} MiB in all\n`);
    assert.ok(peakGrowth < BOUND, `the service grew by ${(peakGrowth / MiB).toFixed(1)} MiB`);
  });

  test('the followed console while the guest writes to it for 10 s does not grow the service', { timeout: 90_000 }, async () => {
    let read = 0;
    const res = await new Promise<import('node:http').IncomingMessage>((resolve, reject) => {
      const req = request(`${svc.url}/api/v1/microvms/${vmId}/console?follow=true&tail=0`, { headers: { authorization: `Bearer ${svc.token}` } }, resolve);
      req.on('error', reject);
      req.end();
    });
    assert.equal(res.statusCode, 200);
    res.on('data', (d: Buffer) => (read += d.length));
    const log = execFileSync('find', [svc.dataDir, '-name', 'console.log', '-path', `*${vmId}*`], { encoding: 'utf8' }).trim().split('\n')[0]!;
    const sizeBefore = statSync(log).size;
    const ex = api('POST', `/microvms/${vmId}/exec`, { cmd: ['sh', '-c', 'yes console-flood-line > /dev/console'], timeout: '10s' });
    await sleep(500);
    const peakGrowth = await slowRead(10, res, 'data');
    const r = await ex;
    assert.equal(r.json.timedOut, true, r.text);
    res.destroy();
    const written = statSync(log).size - sizeBefore;
    process.stderr.write(`console flood: the guest wrote ${(written / MiB).toFixed(1)} MiB; service RSS grew ${(peakGrowth / MiB).toFixed(1)} MiB at most; the client read ${(read / MiB).toFixed(1)} MiB\n`);
    assert.ok(peakGrowth < BOUND, `the service grew by ${(peakGrowth / MiB).toFixed(1)} MiB`);
  });
});
