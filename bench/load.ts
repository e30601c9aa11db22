/**
 * Load: the real mvm-server on loopback under
 *   1. 1,000 concurrent connections over GET /microvms/{id} and GET /microvms, against a bare
 *      Fastify route answering the same bytes, in the same run (autocannon drives both);
 *   2. 200 concurrent creates against a tenant quota of N VMs: exactly N admitted, no 5xx;
 *   3. a soak of mixed calls (create, get, label update, list, delete) by concurrent clients,
 *      sampling the service's resident memory each minute.
 * Usage: node dist/bench/load.js [--seconds 10] [--connections 1000] [--quota 20] [--soak 600] [--soak-clients 16]
 * Exits 1 on any 5xx or transport error, or when the creates admit other than N.
 */
import autocannon from 'autocannon';
import { spawn, type ChildProcess } from 'node:child_process';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { sleep } from '../src/vmm/proc.js';
import { bareServer, rssMiB, startBenchService, type BenchService } from './service.js';
import { printTable } from './stats.js';

const SELF = fileURLToPath(import.meta.url);
const { values: opt } = parseArgs({
  options: {
    seconds: { type: 'string', default: '10' },
    connections: { type: 'string', default: '1000' },
    quota: { type: 'string', default: '20' },
    creates: { type: 'string', default: '200' },
    soak: { type: 'string', default: '600' },
    'soak-clients': { type: 'string', default: '16' },
    'bare-server': { type: 'boolean', default: false },
  },
});
const num = (name: keyof typeof opt): number => {
  const n = Number(opt[name]);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} must be a non-negative number, got ${String(opt[name])}`);
  return n;
};


interface Row {
  name: string;
  rps: number;
  p50: number;
  p99: number;
  s5xx: number;
  errors: number;
}

async function drive(name: string, url: string, headers: Record<string, string>, o: Partial<autocannon.Options> = {}): Promise<Row & { s2xx: number; non2xx: number }> {
  const r = await autocannon({ url, connections: num('connections'), duration: num('seconds'), headers, ...o });
  return { name, rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, s5xx: r['5xx'], errors: r.errors + r.timeouts, s2xx: r['2xx'], non2xx: r.non2xx };
}

async function main(): Promise<void> {
  if (opt['bare-server']) return bareServer();
  const svc: BenchService = await startBenchService();
  let bare: ChildProcess | undefined;
  let failed = false;
  try {
    const admin = { authorization: `Bearer ${svc.token}`, 'content-type': 'application/json' };
    const call = async (method: string, path: string, body?: unknown, h: Record<string, string> = admin): Promise<{ status: number; json: any }> => {
      const headers = body === undefined ? { authorization: h.authorization! } : h;
      const r = await fetch(`${svc.url}/api/v1${path}`, { method, headers, ...(body === undefined ? {} : { body: JSON.stringify(body) }) });
      const text = await r.text();
      return { status: r.status, json: text ? JSON.parse(text) : undefined };
    };
    const must = async (method: string, path: string, body?: unknown, h?: Record<string, string>): Promise<any> => {
      const r = await call(method, path, body, h);
      if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(r.json)}`);
      return r.json;
    };
    await must('POST', '/tenants', { id: 'load' });
    const key = (await must('POST', '/apikeys?tenant=load', { name: 'load', role: 'member' })) as { token: string };
    const h = { authorization: `Bearer ${key.token}`, 'content-type': 'application/json' };
    const auth = { authorization: `Bearer ${key.token}` };
    let id = '';
    for (let i = 0; i < 20; i++) id ||= ((await must('POST', '/microvms', { name: `l${i}`, start: false }, h)) as { id: string }).id;
    const one = await must('GET', `/microvms/${id}`, undefined, h);
    const list = await must('GET', '/microvms?limit=20', undefined, h);

    // 1. Reads at 1,000 connections, ours vs bare, alternating.
    bare = spawn(process.execPath, [SELF, '--bare-server'], { stdio: ['pipe', 'pipe', 'inherit'] });
    bare.stdin!.end(JSON.stringify({ one, list }));
    const bareUrl = await new Promise<string>((resolve) => bare!.stdout!.once('data', (d: Buffer) => resolve(d.toString().trim())));
    await drive('warm', `${svc.url}/api/v1/microvms/${id}`, auth, { duration: 2, connections: 50 });
    const reads = [
      await drive('bare Fastify: GET /microvms/{id}', `${bareUrl}/api/v1/microvms/${id}`, {}),
      await drive('ours: GET /microvms/{id}', `${svc.url}/api/v1/microvms/${id}`, auth),
      await drive('bare Fastify: GET /microvms (20)', `${bareUrl}/api/v1/microvms`, {}),
      await drive('ours: GET /microvms?limit=20', `${svc.url}/api/v1/microvms?limit=20`, auth),
    ];
    console.log(`\nLoad: ${num('connections')} connections, ${num('seconds')} s per run, autocannon; servers are separate processes (load average ${loadavg()[0]!.toFixed(2)})\n`);
    printTable(
      ['target', 'req/s', 'p50 ms', 'p99 ms', 'non-2xx', '5xx', 'errors', 'of bare'],
      reads.map((r, i) => [r.name, Math.round(r.rps), r.p50, r.p99, r.non2xx, r.s5xx, r.errors, `${((100 * r.rps) / reads[i - (i % 2)]!.rps).toFixed(0)}%`]),
    );
    if (reads.some((r) => r.non2xx > 0 || r.errors > 0)) failed = true;

    // 2. Concurrent creates against a quota of N.
    const quota = num('quota');
    const creates = num('creates');
    await must('POST', '/tenants', { id: 'race', quotas: { vms: quota } });
    const rkey = (await must('POST', '/apikeys?tenant=race', { name: 'race', role: 'member' })) as { token: string };
    let n = 0;
    const t0 = Date.now();
    const cr = await autocannon({
      url: `${svc.url}/api/v1/microvms`,
      method: 'POST',
      connections: creates,
      amount: creates,
      headers: { authorization: `Bearer ${rkey.token}`, 'content-type': 'application/json' },
      requests: [{ setupRequest: (req) => ({ ...req, body: JSON.stringify({ name: `c-${n++}`, start: false }) }) }],
    });
    const ms = Date.now() - t0;
    const listed = (await must('GET', '/microvms?limit=1000', undefined, { authorization: `Bearer ${rkey.token}` })) as { items: unknown[] };
    console.log(`\n${creates} concurrent creates against a quota of ${quota} VMs\n`);
    printTable(
      ['requests', '201 admitted', 'refused (4xx)', '5xx', 'errors', 'VMs listed', 'wall ms', 'p50 ms', 'p99 ms'],
      [[cr.requests.sent, cr['2xx'], cr['4xx'], cr['5xx'], cr.errors + cr.timeouts, listed.items.length, ms, cr.latency.p50, cr.latency.p99]],
    );
    if (cr['2xx'] !== quota || listed.items.length !== quota || cr['5xx'] > 0 || cr.errors + cr.timeouts > 0) failed = true;

    // 3. Soak: mixed calls by concurrent clients; RSS each minute.
    const soakS = num('soak');
    if (soakS > 0) {
      await must('POST', '/tenants', { id: 'soak' });
      const skey = (await must('POST', '/apikeys?tenant=soak', { name: 'soak', role: 'member' })) as { token: string };
      const sh = { authorization: `Bearer ${skey.token}`, 'content-type': 'application/json' };
      const end = Date.now() + soakS * 1000;
      let ops = 0;
      let s5xx = 0;
      let other = 0;
      const count = (s: number, ok: (s: number) => boolean): void => {
        ops++;
        if (s >= 500) s5xx++;
        else if (!ok(s)) other++;
      };
      const client = async (c: number): Promise<void> => {
        for (let i = 0; Date.now() < end; i++) {
          const cr = await call('POST', '/microvms', { name: `s${c}-${i}`, start: false, labels: { soak: 'yes' } }, sh);
          count(cr.status, (s) => s === 201);
          if (cr.status !== 201) continue;
          const vid = (cr.json as { id: string }).id;
          count((await call('GET', `/microvms/${vid}`, undefined, sh)).status, (s) => s === 200);
          count((await call('PUT', `/microvms/${vid}`, { labels: { soak: 'yes', round: String(i % 100) } }, sh)).status, (s) => s === 200);
          count((await call('GET', '/microvms?limit=20&label=soak%3Dyes', undefined, sh)).status, (s) => s === 200);
          count((await call('DELETE', `/microvms/${vid}`, undefined, sh)).status, (s) => s === 200 || s === 202 || s === 204);
        }
      };
      const samples: Array<[string, number, number]> = [];
      const sample = (label: string): void => {
        samples.push([label, Math.round(rssMiB(svc.proc.pid!)), ops]);
      };
      sample('before the soak');
      // The first sample that counts is taken after a warm-up (JIT, SQLite page cache, pools):
      // a tenth of the soak, at most a minute.
      const warm = Math.min(60_000, (soakS * 1000) / 10);
      const t = Date.now();
      const timers = [setTimeout(() => sample('after warm-up'), warm), setInterval(() => sample(`${Math.round((Date.now() - t) / 60_000)} min`), 60_000)];
      const clients = num('soak-clients');
      await Promise.all(Array.from({ length: clients }, (_, c) => client(c)));
      for (const tm of timers) clearTimeout(tm);
      await sleep(2000);
      sample('end');
      console.log(`\nSoak: ${clients} clients × (create, get, label update, list, delete) for ${soakS} s: ${ops} calls (${Math.round(ops / ((Date.now() - t) / 1000))}/s), ${s5xx} 5xx, ${other} unexpected statuses\n`);
      printTable(['at', 'service RSS MiB', 'calls so far'], samples);
      const first = (samples.find((x) => x[0] === 'after warm-up') ?? samples[0]!)[1];
      const last = samples.at(-1)![1];
      console.log(`\nRSS after warm-up ${first} MiB → end ${last} MiB (${last >= first ? '+' : ''}${last - first} MiB)`);
      if (s5xx > 0 || other > 0) failed = true;
    }
  } finally {
    bare?.kill();
    await svc.stop();
  }
  if (failed) {
    console.log('\nFAILED: a 5xx, a transport error, an unexpected status, or an admission count other than the quota');
    process.exitCode = 1;
  }
}

main().catch((e: Error) => {
  console.error(e.stack ?? e.message);
  process.exit(1);
});
