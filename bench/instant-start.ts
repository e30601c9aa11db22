/**
 * Instant start and inside-the-guest figures (issues 19 and 13), each beside its baseline in the
 * same run on the same service:
 *   - create from a template → ready  vs  cold create → ready (N rounds, alternating; p50, ratio);
 *   - create → first exec result  vs  create → ready (what exec adds on top of readiness);
 *   - `exec true` round trip through the API (p50/p99)  vs  an API round trip that does not reach
 *     the guest (GET of the microVM): what the agent channel adds;
 *   - upload / download of 100 MiB through the files API  vs  the same bytes through a streaming
 *     exec of `cat` over the same agent channel;
 *   - C concurrent creates from one template: all ready, failures, p50/p99 (C = BENCH_CONCURRENT, 50).
 * Usage: node dist/bench/instant-start.js [N]
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket } from 'ws';
import { sleep } from '../src/vmm/proc.js';
import { apiCall, destroyDataDir, startService, type TestService } from '../test/support/service.js';
import { percentile, printTable } from './stats.js';

const N = Number(process.argv[2] ?? process.env.BENCH_N ?? 5);
const C = Number(process.env.BENCH_CONCURRENT ?? 50);
const MiB = 1024 * 1024;

let svc: TestService;
const api = (m: string, p: string, b?: unknown) => apiCall(svc, m, p, b);

async function ready(id: string, timeoutMs = 300_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await api('GET', `/microvms/${id}`);
    if (r.json?.status?.conditions?.some((c: { type: string; status: string }) => c.type === 'GuestReady' && c.status === 'True')) return;
    if (r.json?.status?.phase === 'Failed') throw new Error(`${id} failed: ${JSON.stringify(r.json.status.conditions)}`);
    if (Date.now() > end) throw new Error(`${id} not ready: ${JSON.stringify(r.json?.status)}`);
    await sleep(10);
  }
}

async function firstExec(id: string, timeoutMs = 300_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const r = await api('POST', `/microvms/${id}/exec`, { cmd: ['true'] });
    if (r.status === 200 && r.json.exitCode === 0) return;
    if (Date.now() > end) throw new Error(`${id}: no exec: ${JSON.stringify(r.json)}`);
    await sleep(10);
  }
}

async function del(ids: string[]): Promise<void> {
  for (const id of ids) await api('DELETE', `/microvms/${id}`);
  for (const id of ids) {
    for (let i = 0; i < 600 && (await api('GET', `/microvms/${id}`)).status !== 404; i++) await sleep(100);
  }
}

/** Bytes through a streaming exec of `cat` (stdin in, or stdout out). */
function catStream(id: string, mode: 'in' | 'out', data: Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${svc.url.replace(/^http/, 'ws')}/api/v1/microvms/${id}/exec`, ['mvm.v1', `bearer.${Buffer.from(svc.token).toString('base64url')}`]);
    let got = 0;
    const t0 = performance.now();
    ws.on('error', reject);
    ws.on('open', () => {
      ws.send(JSON.stringify({ cmd: mode === 'in' ? ['sh', '-c', 'cat > /dev/null'] : ['head', '-c', String(data.length), '/dev/zero'] }));
      if (mode === 'in') {
        for (let off = 0; off < data.length; off += 256 * 1024) ws.send(Buffer.concat([Buffer.from([0]), data.subarray(off, off + 256 * 1024)]));
        ws.send(JSON.stringify({ type: 'eof' }));
      }
    });
    ws.on('message', (d, bin) => {
      if (bin) got += (d as Buffer).length - 1;
      else if ((JSON.parse(String(d)) as { type: string }).type === 'exit') {
        if (mode === 'out' && got !== data.length) reject(new Error(`cat out: ${got} bytes`));
        resolve(performance.now() - t0);
      }
    });
  });
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mvm-bench-i-'));
  // C template clones of 1 vCPU must fit the node's vCPU budget (their memory is shared copy-on-write).
  svc = await startService({ dataDir, env: { MVM_LOG_LEVEL: 'info', MVM_CPU_OVERCOMMIT: String(Math.max(16, Math.ceil((C + 4) / availableParallelism()))) } });
  const rows: Array<Array<string | number>> = [];
  let stepRows: Array<Array<string | number>> = [];
  try {
    const t = await api('POST', '/templates', { name: 'bench' });
    for (let i = 0; ; i++) {
      const g = await api('GET', `/templates/${t.json.id}`);
      if (g.json.phase === 'Ready') {
        process.stderr.write(`template built in ${g.json.versions[0].buildMs} ms\n`);
        break;
      }
      if (g.json.phase === 'Failed' || i > 2400) throw new Error(`template: ${JSON.stringify(g.json.versions)}`);
      await sleep(250);
    }

    // 1. cold vs template, and create -> first exec vs create -> ready
    const cold: number[] = [];
    const clone: number[] = [];
    const coldExec: number[] = [];
    const cloneExec: number[] = [];
    for (let i = 0; i < N; i++) {
      let t0 = performance.now();
      const a = (await api('POST', '/microvms', { name: `cold-${i}` })).json;
      await ready(a.id);
      cold.push(performance.now() - t0);
      t0 = performance.now();
      const b = (await api('POST', '/microvms', { name: `clone-${i}`, template: 'bench' })).json;
      await ready(b.id);
      clone.push(performance.now() - t0);
      t0 = performance.now();
      const a2 = (await api('POST', '/microvms', { name: `colde-${i}` })).json;
      await firstExec(a2.id);
      coldExec.push(performance.now() - t0);
      t0 = performance.now();
      const b2 = (await api('POST', '/microvms', { name: `clonee-${i}`, template: 'bench' })).json;
      await firstExec(b2.id);
      cloneExec.push(performance.now() - t0);
      await del([a.id, b.id, a2.id, b2.id]);
      process.stderr.write(`round ${i + 1}/${N}\n`);
    }
    const p50 = (xs: number[]) => percentile(xs, 50);
    rows.push(['cold create → ready', p50(cold), percentile(cold, 95), '1.00x']);
    rows.push(['template clone → ready', p50(clone), percentile(clone, 95), `${(p50(clone) / p50(cold)).toFixed(3)}x of cold`]);
    rows.push(['cold create → first exec result', p50(coldExec), percentile(coldExec, 95), `+${Math.round(p50(coldExec) - p50(cold))} ms over ready`]);
    rows.push(['template clone → first exec result', p50(cloneExec), percentile(cloneExec, 95), `+${Math.round(p50(cloneExec) - p50(clone))} ms over ready`]);

    // Where a clone's start goes, step by step (the node agent logs each start's step timings).
    const stepMs = new Map<string, number[]>();
    for (const line of svc.logs().split('\n')) {
      if (!line.includes('"launch steps"')) continue;
      try {
        const rec = JSON.parse(line) as { mode?: string; steps?: Record<string, number> };
        if (rec.mode !== 'restore' || !rec.steps) continue;
        for (const [k, v] of Object.entries(rec.steps)) stepMs.set(k, [...(stepMs.get(k) ?? []), v]);
      } catch {
        // not a JSON log line
      }
    }
    stepRows = [...stepMs].map(([k, xs]) => [k, p50(xs), percentile(xs, 95), `${xs.length} clones`]);

    // 2. exec round trips vs an API round trip that stays on the host
    const vm = (await api('POST', '/microvms', { name: 'rt', template: 'bench' })).json;
    await ready(vm.id);
    const execRt: number[] = [];
    const getRt: number[] = [];
    for (let i = 0; i < 200; i++) {
      let t0 = performance.now();
      await api('GET', `/microvms/${vm.id}`);
      getRt.push(performance.now() - t0);
      t0 = performance.now();
      const r = await api('POST', `/microvms/${vm.id}/exec`, { cmd: ['true'] });
      if (r.json.exitCode !== 0) throw new Error('exec true failed');
      execRt.push(performance.now() - t0);
    }
    rows.push(['API GET of the microVM (host only), 200×', p50(getRt), percentile(getRt, 99), 'baseline']);
    rows.push(['exec true through the API, 200×', p50(execRt), percentile(execRt, 99), `+${(p50(execRt) - p50(getRt)).toFixed(1)} ms (p50)`]);

    await del([vm.id]);

    // 3. 100 MiB up and down vs cat through a streaming exec on the same channel (a root disk with room for it)
    const fvm = (await api('POST', '/microvms', { name: 'files', rootfs: { size: '1Gi' } })).json;
    await ready(fvm.id);
    const data = randomBytes(100 * MiB);
    let t0 = performance.now();
    const put = await fetch(`${svc.url}/api/v1/microvms/${fvm.id}/files?path=/root/blob`, { method: 'PUT', headers: { authorization: `Bearer ${svc.token}`, 'content-type': 'application/octet-stream' }, body: data });
    if (put.status !== 201) throw new Error(`upload: ${put.status} ${await put.text()}`);
    const upMs = performance.now() - t0;
    t0 = performance.now();
    const got = await fetch(`${svc.url}/api/v1/microvms/${fvm.id}/files?path=/root/blob`, { headers: { authorization: `Bearer ${svc.token}` } });
    const down = Buffer.from(await got.arrayBuffer());
    const downMs = performance.now() - t0;
    if (createHash('sha256').update(down).digest('hex') !== createHash('sha256').update(data).digest('hex')) throw new Error('download differs');
    await api('DELETE', `/microvms/${fvm.id}/files?path=/root/blob`);
    const catIn = await catStream(fvm.id, 'in', data);
    const catOut = await catStream(fvm.id, 'out', data);
    const mbs = (ms: number) => (100 / (ms / 1000)).toFixed(1);
    rows.push(['upload 100 MiB (files API), MiB/s', Number(mbs(upMs)), '', `${((catIn / upMs) * 100).toFixed(0)} % of cat-in (${mbs(catIn)} MiB/s)`]);
    rows.push(['download 100 MiB (files API), MiB/s', Number(mbs(downMs)), '', `${((catOut / downMs) * 100).toFixed(0)} % of cat-out (${mbs(catOut)} MiB/s)`]);
    await del([fvm.id]);

    // 4. C concurrent creates from one template
    t0 = performance.now();
    const ids: string[] = [];
    const times: number[] = [];
    let failures = 0;
    await Promise.all(
      Array.from({ length: C }, async (_, i) => {
        const s = performance.now();
        try {
          const r = await api('POST', '/microvms', { name: `many-${i}`, template: 'bench' });
          if (r.status !== 201) throw new Error(JSON.stringify(r.json));
          ids.push(r.json.id);
          await ready(r.json.id, 300_000);
          times.push(performance.now() - s);
        } catch (e) {
          failures++;
          process.stderr.write(`concurrent create ${i}: ${(e as Error).message}\n`);
        }
      }),
    );
    const allMs = performance.now() - t0;
    rows.push([`${C} concurrent template creates → ready (${failures} failed; all in ${(allMs / 1000).toFixed(1)} s)`, p50(times), percentile(times, 99), 'p50 / p99']);
    await del(ids);
  } catch (e) {
    process.stderr.write(`${svc.logs().split('\n').slice(-30).join('\n')}\n`);
    throw e;
  } finally {
    // What was measured is printed even when a later part failed.
    console.log(`\nInstant start and exec (QEMU TCG, ${N} rounds), ms unless noted\n`);
    printTable(['measure', 'p50', 'p95/p99', 'vs baseline'], rows);
    if (stepRows.length) {
      console.log('\nA template clone\'s start on the node, by step (ms)\n');
      printTable(['step', 'p50', 'p95', 'n'], stepRows);
    }
    await svc.stop();
    await destroyDataDir(dataDir);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
