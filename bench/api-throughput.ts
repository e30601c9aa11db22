/**
 * API throughput: an authenticated `GET /api/v1/microvms/{id}` and `GET /api/v1/microvms` (list of
 * 20) through our whole stack (the real mvm-server process: API-key authentication, rate limiting,
 * permission check, SQLite read, ETag, access logging at the default level), against a bare
 * Fastify route returning the same bytes, on the same machine in the same run. autocannon drives
 * both from this process; each server is its own process.
 * Usage: node dist/bench/api-throughput.js [seconds per run, default 10] [connections, default 32] [rounds, default 3]
 * Exits 1 when our stack keeps less than 50% of the bare route's throughput.
 */
import autocannon from 'autocannon';
import { spawn, type ChildProcess } from 'node:child_process';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import { sleep } from '../src/vmm/proc.js';
import { bareServer, startBenchService } from './service.js';
import { printTable } from './stats.js';

const SECONDS = Number(process.argv[2] ?? process.env.BENCH_SECONDS ?? 10);
const CONNECTIONS = Number(process.argv[3] ?? process.env.BENCH_CONNECTIONS ?? 32);
const ROUNDS = Number(process.argv[4] ?? process.env.BENCH_ROUNDS ?? 3);
const SELF = fileURLToPath(import.meta.url);


interface Run {
  name: string;
  rps: number;
  p50: number;
  p99: number;
  errors: number;
  non2xx: number;
}

async function drive(name: string, url: string, headers: Record<string, string>, seconds = SECONDS): Promise<Run> {
  const r = await autocannon({ url, connections: CONNECTIONS, duration: seconds, headers });
  return { name, rps: r.requests.average, p50: r.latency.p50, p99: r.latency.p99, errors: r.errors + r.timeouts, non2xx: r.non2xx };
}

async function main(): Promise<void> {
  if (process.argv.includes('--bare-server')) return bareServer();
  const ours = await startBenchService({ MVM_RATE_LIMITS: 'tenant.read=1000000/s:1000000,key.read=1000000/s:1000000' });
  let bare: ChildProcess | undefined;
  try {
    const admin = { authorization: `Bearer ${ours.token}`, 'content-type': 'application/json' };
    const post = async (path: string, body: unknown, h: Record<string, string> = admin): Promise<any> => {
      const r = await fetch(`${ours.url}/api/v1${path}`, { method: 'POST', headers: h, body: JSON.stringify(body) });
      if (!r.ok) throw new Error(`${path}: ${r.status} ${await r.text()}`);
      return r.json();
    };
    await post('/tenants', { id: 'bench' });
    const key = (await post('/apikeys?tenant=bench', { name: 'bench', role: 'member' })) as { token: string };
    const auth = { authorization: `Bearer ${key.token}` };
    const h = { ...admin, ...auth };
    let id = '';
    for (let i = 0; i < 20; i++) id ||= ((await post('/microvms', { name: `b${i}`, start: false, labels: { bench: 'yes' } }, h)) as { id: string }).id;
    await sleep(500);
    const one = await (await fetch(`${ours.url}/api/v1/microvms/${id}`, { headers: auth })).json();
    const list = await (await fetch(`${ours.url}/api/v1/microvms?limit=20`, { headers: auth })).json();

    bare = spawn(process.execPath, [SELF, '--bare-server'], { stdio: ['pipe', 'pipe', 'inherit'] });
    bare.stdin!.end(JSON.stringify({ one, list }));
    const bareUrl = await new Promise<string>((resolve) => bare!.stdout!.once('data', (d: Buffer) => resolve(d.toString().trim())));

    // Warm up both (JIT, SQLite page cache), then measure, alternating.
    await drive('warm', `${bareUrl}/api/v1/microvms/${id}`, {}, 2);
    await drive('warm', `${ours.url}/api/v1/microvms/${id}`, auth, 2);
    // Rounds of the four runs back to back, so a burst of load from elsewhere hits both sides; medians per target.
    const targets: Array<[string, string]> = [
      ['bare Fastify: GET /microvms/{id}', `${bareUrl}/api/v1/microvms/${id}`],
      ['ours: GET /microvms/{id} (API key)', `${ours.url}/api/v1/microvms/${id}`],
      ['bare Fastify: GET /microvms (20)', `${bareUrl}/api/v1/microvms`],
      ['ours: GET /microvms?limit=20 (API key)', `${ours.url}/api/v1/microvms?limit=20`],
    ];
    const all: Run[][] = targets.map(() => []);
    for (let round = 0; round < ROUNDS; round++) {
      for (const [i, [name, url]] of targets.entries()) all[i]!.push(await drive(name, url, auth));
    }
    const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    const runs: Run[] = all.map((rs) => ({
      name: rs[0]!.name,
      rps: median(rs.map((r) => r.rps)),
      p50: median(rs.map((r) => r.p50)),
      p99: median(rs.map((r) => r.p99)),
      errors: rs.reduce((n, r) => n + r.errors, 0),
      non2xx: rs.reduce((n, r) => n + r.non2xx, 0),
    }));

    console.log(
      `\nAPI throughput: median of ${ROUNDS} rounds, ${SECONDS} s per run, ${CONNECTIONS} connections, autocannon; servers are separate processes on this machine (load average ${loadavg()[0]!.toFixed(2)})\n`,
    );
    const rows = runs.map((r, i) => {
      const base = runs[i - (i % 2)]!;
      return [r.name, Math.round(r.rps), r.p50, r.p99, r.errors + r.non2xx, i % 2 ? `${((100 * r.rps) / base.rps).toFixed(0)}%` : '100%'];
    });
    printTable(['target', 'req/s', 'p50 ms', 'p99 ms', 'errors', 'of bare'], rows);
    const worst = Math.min(runs[1]!.rps / runs[0]!.rps, runs[3]!.rps / runs[2]!.rps);
    const bad = runs.some((r) => r.errors + r.non2xx > 0);
    console.log(`\nours keeps ${(worst * 100).toFixed(0)}% of the bare route's throughput (required: >= 50%)${bad ? '; some requests failed' : ''}`);
    if (worst < 0.5 || bad) process.exitCode = 1;
  } finally {
    bare?.kill();
    await ours.stop();
  }
}

main().catch((e: Error) => {
  console.error(e.stack ?? e.message);
  process.exit(1);
});
