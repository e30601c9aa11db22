/**
 * Observability end to end: the real service with a real guest, scraped by
 * Debian's real Prometheus (API job and the node-agent listener), the alert
 * rules loaded into it, the dashboard's PromQL evaluated by it, the exposition
 * linted by promtool, the tenant event stream over SSE (with resume), and the
 * metrics history endpoint.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from '../../src/vmm/proc.js';
import { unexpectedFindings } from '../support/promtool.js';
import { REPO, destroyDataDir, startService, type TestService } from '../support/service.js';

const BOOT_TIMEOUT = 150_000;
let svc: TestService;
let prom: ChildProcess | undefined;
let promUrl = '';
let agentPort = 0;
const promDir = mkdtempSync(join(tmpdir(), 'mvm-prom-'));
let promLog = '';
const closers: Array<() => void> = [];

interface Ev {
  id?: string;
  seq: number;
  vmId: string;
  reason: string;
  type: string;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => resolve(p));
    });
  });
}

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 60_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > deadline) assert.fail(`not within ${ms} ms: ${what}\n${promLog.slice(-2000)}`);
    await sleep(500);
  }
}

async function promQuery(q: string): Promise<{ status: string; data: { result: Array<{ metric: Record<string, string>; value: [number, string] }> }; error?: string }> {
  const r = await fetch(`${promUrl}/api/v1/query?query=${encodeURIComponent(q)}`);
  return (await r.json()) as never;
}

/** Follow the SSE event feed, collecting events. */
function follow(path: string, headers: Record<string, string> = {}): { events: Ev[]; close: () => void; done: Promise<void> } {
  const ac = new AbortController();
  const events: Ev[] = [];
  const done = (async () => {
    const res = await fetch(`${svc.url}/api/v1${path}`, { headers: { authorization: `Bearer ${svc.token}`, ...headers }, signal: ac.signal });
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /text\/event-stream/);
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        const data = block.split('\n').find((l) => l.startsWith('data: '));
        const id = block.split('\n').find((l) => l.startsWith('id: '));
        if (data) events.push({ ...(JSON.parse(data.slice(6)) as Ev), ...(id ? { id: id.slice(4) } : {}) });
      }
    }
  })().catch((e: Error) => {
    if (e.name !== 'AbortError') throw e;
  });
  closers.push(() => ac.abort());
  return { events, close: () => ac.abort(), done };
}

before(async () => {
  agentPort = await freePort();
  svc = await startService({ env: { MVM_METRICS_SAMPLE_SECONDS: '2', MVM_METRICS_LISTEN: `127.0.0.1:${agentPort}`, MVM_TEST_LOG_LEVEL: 'warn' } });
  const apiTarget = new URL(svc.url).host;
  const promPort = await freePort();
  promUrl = `http://127.0.0.1:${promPort}`;
  writeFileSync(
    join(promDir, 'prometheus.yml'),
    [
      'global: {scrape_interval: 2s, evaluation_interval: 2s}',
      `rule_files: ['${join(REPO, 'deploy/monitoring/alerts.rules.yml')}']`,
      'scrape_configs:',
      '  - job_name: microvm-api',
      `    static_configs: [{targets: ['${apiTarget}']}]`,
      '  - job_name: microvm-node-agent',
      `    static_configs: [{targets: ['127.0.0.1:${agentPort}']}]`,
      '',
    ].join('\n'),
  );
  prom = spawn(
    'prometheus',
    [`--config.file=${join(promDir, 'prometheus.yml')}`, `--storage.tsdb.path=${join(promDir, 'data')}`, `--web.listen-address=127.0.0.1:${promPort}`, '--log.level=warn'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  prom.stdout!.on('data', (d: Buffer) => (promLog += d.toString()));
  prom.stderr!.on('data', (d: Buffer) => (promLog += d.toString()));
  await until('prometheus ready', async () => ((await fetch(`${promUrl}/-/ready`)).ok ? true : undefined), 60_000);
});

after(async () => {
  for (const c of closers) c();
  prom?.kill('SIGTERM');
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
  rmSync(promDir, { recursive: true, force: true });
});

test('a real guest: SSE events, /metrics, Prometheus scrapes and queries, promtool, history, stop and delete', { timeout: 400_000 }, async () => {
  const feed = follow('/events?follow=true&tail=0');
  await sleep(300);
  const vm = await svc.client.microvms.create({ name: 'obs1', vcpu: 1, memory: '128Mi' });
  await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: BOOT_TIMEOUT });

  // --- the tenant-wide stream saw the lifecycle, in order.
  const mine = () => feed.events.filter((e) => e.vmId === vm.id).map((e) => e.reason);
  await until('GuestReady on the SSE stream', async () => (mine().includes('GuestReady') ? true : undefined), 15_000);
  assert.deepEqual(mine(), ['Created', 'Scheduled', 'Starting', 'Started', 'GuestReady']);
  const seqs = feed.events.map((e) => e.seq);
  assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b));
  assert.ok(feed.events.every((e) => e.id === String(e.seq)), 'SSE ids are the sequence numbers');

  // --- resume with Last-Event-ID: only what came after.
  const started = feed.events.find((e) => e.vmId === vm.id && e.reason === 'Started')!;
  const resumed = follow('/events?follow=true', { 'last-event-id': String(started.seq) });
  await until('resumed stream', async () => (resumed.events.length ? true : undefined), 10_000);
  assert.equal(resumed.events[0]!.reason, 'GuestReady');
  resumed.close();
  // JSON listing, filtered by VM.
  const list = (await (await fetch(`${svc.url}/api/v1/events?vm=obs1`, { headers: { authorization: `Bearer ${svc.token}` } })).json()) as { items: Ev[] };
  assert.deepEqual(list.items.map((e) => e.reason), ['Created', 'Scheduled', 'Starting', 'Started', 'GuestReady']);

  // --- /metrics on the API port: per-VM series with id, name, tenant, node.
  const labels = `id="${vm.id}",name="obs1",tenant="${vm.tenant}"`;
  const text = await until(
    'per-VM series in /metrics',
    async () => {
      const t = await (await fetch(`${svc.url}/metrics`)).text();
      return t.includes(`microvm_memory_rss_bytes{${labels}`) && t.includes('microvm_block_read_bytes_total') ? t : undefined;
    },
    30_000,
  );
  for (const name of ['microvm_info', 'microvm_cpu_seconds_total', 'microvm_guest_memory_bytes', 'microvm_uptime_seconds', 'microvm_block_write_ops_total']) {
    assert.match(text, new RegExp(`^${name}\\{${labels.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')},node="[^"]+"`, 'm'), name);
  }
  assert.match(text, /^microvm_service_microvm_count\{status="Running"\} 1$/m);
  assert.match(text, /^microvm_service_boot_duration_seconds_count\{phase="total"\} 1$/m);
  assert.match(text, /^microvm_service_http_request_duration_seconds_count\{method="GET",route="\/api\/v1\/microvms\/:id\/wait",status_code="200"\} \d+$/m);
  assert.match(text, /^microvm_service_reconcile_total\{result="success"\} \d+$/m);
  assert.match(text, /^microvm_service_scheduler_decisions_total\{result="placed",node="[^"]+"\} 1$/m);
  assert.match(text, /^process_resident_memory_bytes \d+/m);
  assert.deepEqual(unexpectedFindings(text), [], 'promtool check metrics');
  // The node-agent style listener (MVM_METRICS_LISTEN) serves the same exposition.
  const agentText = await (await fetch(`http://127.0.0.1:${agentPort}/metrics`)).text();
  assert.ok(agentText.includes(`microvm_memory_rss_bytes{${labels}`));
  // Errors by code from problem+json.
  await fetch(`${svc.url}/api/v1/microvms/vm-nope`, { headers: { authorization: `Bearer ${svc.token}` } });
  assert.match(await (await fetch(`${svc.url}/metrics`)).text(), /^microvm_service_errors_total\{code="NOT_FOUND",source="api"\} [1-9]/m);

  // --- Prometheus scrapes both targets and answers per-VM queries.
  const rss = await until(
    'Prometheus has the per-VM series',
    async () => {
      const r = await promQuery(`microvm_memory_rss_bytes{id="${vm.id}"}`);
      return r.data.result.length ? r.data.result : undefined;
    },
    60_000,
  );
  assert.ok(rss.length >= 1);
  assert.equal(rss[0]!.metric.name, 'obs1');
  assert.ok(Number(rss[0]!.value[1]) > 10 * 2 ** 20);
  const up = await until('both targets up', async () => {
    const r = await promQuery('up');
    return r.data.result.length === 2 && r.data.result.every((x) => x.value[1] === '1') ? r.data.result : undefined;
  });
  assert.deepEqual(up.map((x) => x.metric.job).sort(), ['microvm-api', 'microvm-node-agent']);
  const cpuRate = await until('a CPU rate', async () => {
    const r = await promQuery(`rate(microvm_cpu_seconds_total{id="${vm.id}",job="microvm-api"}[30s])`);
    return r.data.result[0];
  });
  assert.ok(Number(cpuRate.value[1]) >= 0);
  // The alert rules are loaded and healthy; nothing fires for a healthy guest.
  const rules = (await (await fetch(`${promUrl}/api/v1/rules`)).json()) as { data: { groups: Array<{ rules: Array<{ name: string; health: string; state: string }> }> } };
  const all = rules.data.groups.flatMap((g) => g.rules);
  assert.equal(all.length, 8);
  await sleep(2500);
  const after = (await (await fetch(`${promUrl}/api/v1/rules`)).json()) as typeof rules;
  for (const r of after.data.groups.flatMap((g) => g.rules)) {
    assert.notEqual(r.health, 'err', `${r.name} evaluates`);
    assert.equal(r.state, 'inactive', `${r.name} does not fire`);
  }
  // Every query of the Grafana dashboard is valid PromQL, and the per-VM panels return data.
  const dash = JSON.parse(readFileSync(join(REPO, 'deploy/monitoring/grafana-dashboard.json'), 'utf8')) as { panels: Array<{ title: string; targets?: Array<{ expr: string }> }> };
  for (const p of dash.panels) {
    for (const t of p.targets ?? []) {
      const q = t.expr.replace(/\$__rate_interval/g, '30s').replace(/\$(job|tenant|node|vm)\b/g, '.*');
      const r = await promQuery(q);
      assert.equal(r.status, 'success', `${p.title}: ${q}: ${r.error}`);
      if (/^(CPU per microVM|VMM RSS|Uptime|MicroVMs by phase)/.test(p.title)) assert.ok(r.data.result.length > 0, `${p.title} has data`);
    }
  }

  // --- history for the dashboard's charts.
  const hist = await until('history points', async () => {
    const h = (await (await fetch(`${svc.url}/api/v1/microvms/${vm.id}/metrics/history`, { headers: { authorization: `Bearer ${svc.token}` } })).json()) as {
      intervalSeconds: number;
      windowSeconds: number;
      current: { cpuSeconds: number };
      points: Array<{ t: number; cpuPercent: number | null; memoryRssBytes: number }>;
    };
    return h.points.length >= 3 ? h : undefined;
  });
  assert.equal(hist.intervalSeconds, 2);
  assert.equal(hist.windowSeconds, 120);
  assert.ok(hist.current.cpuSeconds > 0);
  assert.ok(hist.points.slice(1).every((p) => p.cpuPercent !== null && p.cpuPercent >= 0 && p.memoryRssBytes > 0));
  assert.ok(hist.points.every((p, i) => i === 0 || p.t > hist.points[i - 1]!.t));

  // --- stop and delete: operator actions and results are events; the series go away.
  await svc.client.microvms.stop(vm.id);
  await svc.client.microvms.waitFor(vm.id, { phase: 'Stopped', timeoutMs: 60_000 });
  await until('per-VM series gone after stop', async () => ((await (await fetch(`${svc.url}/metrics`)).text()).includes(`id="${vm.id}"`) ? undefined : true), 15_000);
  await svc.client.microvms.delete(vm.id);
  await until('Deleted on the stream', async () => (mine().includes('Deleted') ? true : undefined), 60_000);
  assert.deepEqual(mine().slice(5), ['StopRequested', 'Stopped', 'DeleteRequested', 'Deleted']);
  const stopReq = feed.events.find((e) => e.reason === 'StopRequested') as Ev & { message: string };
  assert.match(stopReq.message, /stop requested by admin \(request req-/);
  feed.close();
  await feed.done;
});
