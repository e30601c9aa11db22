/**
 * Metrics overhead: CPU and memory that per-VM metrics collection costs the
 * API process with N running guests (default 20, booted in batches of 5) and
 * Prometheus-style scrapes of /metrics every 10 s.
 *
 * The same guests are measured in alternating windows by two service processes
 * over the same data directory (guests stay up across restarts and are
 * re-adopted): "on" = default sampling (10 s) + a scrape every 10 s, "off" =
 * MVM_METRICS_SAMPLE_SECONDS=0 and no scrapes. Overhead = on - off, reported
 * against the API process and against the whole service (API process + every
 * VMM process). API CPU includes the commands the service runs and waits for
 * (children's CPU). The "on" windows also report the CPU the process accounts to
 * its own collection cycles (microvm_service_metrics_collection_cpu_seconds_total;
 * this one excludes child processes).
 *
 * Usage: node dist/bench/metrics-overhead.js [VMS] [WINDOW_SECONDS] [ROUNDS]
 */
import { readFileSync } from 'node:fs';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from '../src/vmm/proc.js';
import { destroyDataDir, qemuProcessesUnder, startService, type TestService } from '../test/support/service.js';
import { printTable } from './stats.js';

const VMS = Number(process.argv[2] ?? process.env.BENCH_VMS ?? 20);
const WINDOW_S = Number(process.argv[3] ?? process.env.BENCH_WINDOW ?? 120);
const ROUNDS = Number(process.argv[4] ?? process.env.BENCH_ROUNDS ?? 2);
const BATCH = 5;
const SCRAPE_MS = 10_000;
const CLK_TCK = 100;

function procStat(pid: number): { cpu: number; rss: number } {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const rssPages = Number(f[21]);
    // utime + stime + the waited-for children's (commands the service runs, e.g. `ip`).
    return { cpu: (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK, rss: rssPages * 4096 };
  } catch {
    return { cpu: 0, rss: 0 };
  }
}

async function scrapeValue(url: string, name: string): Promise<number> {
  const text = await (await fetch(`${url}/metrics`)).text();
  const m = new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : 0;
}

interface Window {
  mode: 'on' | 'off';
  apiCpuPct: number;
  vmmCpuPct: number;
  apiRssMiB: number;
  vmmRssMiB: number;
  selfCpuPct: number;
  scrapes: number;
  scrapeMs: number;
}

async function measure(svc: TestService, mode: 'on' | 'off', dataDir: string): Promise<Window> {
  const pid = svc.proc.pid!;
  await sleep(15_000); // settle after (re)start: adoption, first samples
  const vmmPids = () => qemuProcessesUnder(dataDir).map((p) => p.pid);
  const a0 = procStat(pid);
  const v0 = vmmPids().reduce((s, p) => s + procStat(p).cpu, 0);
  const self0 = mode === 'on' ? await scrapeValue(svc.url, 'microvm_service_metrics_collection_cpu_seconds_total') : 0;
  const t0 = Date.now();
  let scrapes = 0;
  let scrapeMs = 0;
  const rss: number[] = [];
  const vmmRss: number[] = [];
  while (Date.now() - t0 < WINDOW_S * 1000) {
    const s0 = Date.now();
    if (mode === 'on') {
      const r = await fetch(`${svc.url}/metrics`);
      await r.text();
      scrapes++;
      scrapeMs += Date.now() - s0;
    }
    rss.push(procStat(pid).rss);
    vmmRss.push(vmmPids().reduce((s, p) => s + procStat(p).rss, 0));
    await sleep(Math.max(0, SCRAPE_MS - (Date.now() - s0)));
  }
  const secs = (Date.now() - t0) / 1000;
  const a1 = procStat(pid);
  const v1 = vmmPids().reduce((s, p) => s + procStat(p).cpu, 0);
  const self1 = mode === 'on' ? await scrapeValue(svc.url, 'microvm_service_metrics_collection_cpu_seconds_total') : 0;
  const avg = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / Math.max(1, xs.length);
  return {
    mode,
    apiCpuPct: ((a1.cpu - a0.cpu) / secs) * 100,
    vmmCpuPct: ((v1 - v0) / secs) * 100,
    apiRssMiB: avg(rss) / 2 ** 20,
    vmmRssMiB: avg(vmmRss) / 2 ** 20,
    selfCpuPct: ((self1 - self0) / secs) * 100,
    scrapes,
    scrapeMs: scrapes ? scrapeMs / scrapes : 0,
  };
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mvm-bench-metrics-'));
  const token = `bench-${Date.now()}`;
  const start = (mode: 'on' | 'off') =>
    startService({ dataDir, token, env: { MVM_METRICS_SAMPLE_SECONDS: mode === 'on' ? '10' : '0', MVM_RESYNC_SECONDS: '10' } });
  let svc = await start('on');
  try {
    console.log(`booting ${VMS} guests (128 MiB, TCG) in batches of ${BATCH}…`);
    const t0 = Date.now();
    for (let i = 0; i < VMS; i += BATCH) {
      const batch = await Promise.all(
        Array.from({ length: Math.min(BATCH, VMS - i) }, (_, k) => svc.client.microvms.create({ name: `bench-${i + k}`, vcpu: 1, memory: '128Mi' })),
      );
      await Promise.all(batch.map((vm) => svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 300_000 })));
      console.log(`  ${i + batch.length}/${VMS} ready after ${Math.round((Date.now() - t0) / 1000)} s`);
    }
    const windows: Window[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      for (const mode of ['on', 'off'] as const) {
        if (r > 0 || mode === 'off') {
          await svc.stop(); // guests keep running (shutdown policy leave) and are re-adopted
          svc = await start(mode);
        }
        console.log(`round ${r + 1}: metrics ${mode}, ${WINDOW_S} s…`);
        windows.push(await measure(svc, mode, dataDir));
      }
    }
    const avg = (mode: 'on' | 'off', k: keyof Omit<Window, 'mode'>) => {
      const ws = windows.filter((w) => w.mode === mode);
      return ws.reduce((s, w) => s + (w[k] as number), 0) / ws.length;
    };
    console.log(`\n${VMS} running guests, scrape every ${SCRAPE_MS / 1000} s, ${ROUNDS} x ${WINDOW_S} s windows per mode (CPU in % of one core)\n`);
    printTable(
      ['window', 'API CPU %', 'VMMs CPU %', 'API RSS MiB', 'VMMs RSS MiB', 'self-accounted collection CPU %', 'scrape ms'],
      windows.map((w, i) => [`${Math.floor(i / 2) + 1} ${w.mode}`, w.apiCpuPct, w.vmmCpuPct, w.apiRssMiB, w.vmmRssMiB, w.mode === 'on' ? w.selfCpuPct.toFixed(2) : '–', w.mode === 'on' ? w.scrapeMs : '–']),
    );
    const dCpu = avg('on', 'apiCpuPct') - avg('off', 'apiCpuPct');
    const dRss = avg('on', 'apiRssMiB') - avg('off', 'apiRssMiB');
    const totalCpu = avg('on', 'apiCpuPct') + avg('on', 'vmmCpuPct');
    const totalRss = avg('on', 'apiRssMiB') + avg('on', 'vmmRssMiB');
    console.log('');
    printTable(
      ['overhead of metrics (on - off)', 'value', 'share of API process', 'share of service total'],
      [
        ['CPU (% of one core)', dCpu.toFixed(2), `${((dCpu / avg('on', 'apiCpuPct')) * 100).toFixed(1)}%`, `${((dCpu / totalCpu) * 100).toFixed(1)}%`],
        ['self-accounted collection CPU (%)', avg('on', 'selfCpuPct').toFixed(2), `${((avg('on', 'selfCpuPct') / avg('on', 'apiCpuPct')) * 100).toFixed(1)}%`, `${((avg('on', 'selfCpuPct') / totalCpu) * 100).toFixed(1)}%`],
        ['memory (RSS MiB)', dRss.toFixed(1), `${((dRss / avg('on', 'apiRssMiB')) * 100).toFixed(1)}%`, `${((dRss / totalRss) * 100).toFixed(2)}%`],
      ],
    );
    for (const vm of (await svc.client.microvms.list({ limit: 1000 })).items) await svc.client.microvms.delete(vm.id).catch(() => undefined);
    const deadline = Date.now() + 120_000;
    while ((await svc.client.microvms.list()).items.length > 0 && Date.now() < deadline) await sleep(1000);
  } finally {
    await svc.stop().catch(() => undefined);
    await destroyDataDir(dataDir);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
