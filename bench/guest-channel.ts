/**
 * The guest agent against raw baselines on the same virtio channel (issue 13, "Benchmarks"), in one
 * run on one QEMU guest (TCG):
 *   - create → GuestReady, then `exec true` at once on the same VM: what exec adds over readiness;
 *   - `exec true` round trips: through the REST API, through the agent protocol straight on the
 *     VM's channel (PING too), and a raw write/read round trip (64 bytes echoed) on that channel;
 *   - 100 MiB up (to /dev/null) and down (a 100 MiB file): through the files API, through the
 *     protocol straight on the channel, and raw (`mvm-agent --raw sink:/source:`, a `cat` with a
 *     length prefix) on the channel.
 * The raw parts need the channel to themselves: the service is killed (-9; its guests keep
 * running), the protocol is measured straight on `<vmDir>/agent.sock`, then the guest's agent is
 * stopped from the serial console and the same binary is started in a raw mode on the same
 * virtio-serial port.
 * Usage: node dist/bench/guest-channel.js [N]   (N create → ready → exec rounds, default 5)
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync } from 'node:fs';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connectUnixSocket } from '../src/guest/transports.js';
import { sleep } from '../src/vmm/proc.js';
import { guestRun } from '../test/support/console.js';
import { apiCall, destroyDataDir, qemuProcessesUnder, startService, type TestService } from '../test/support/service.js';
import { percentile, printTable } from './stats.js';

const N = Number(process.argv[2] ?? process.env.BENCH_N ?? 5);
const RT = Number(process.env.BENCH_ROUND_TRIPS ?? 200);
const MiB = 1024 * 1024;
const SIZE = 100 * MiB;

let svc: TestService;
const api = (m: string, p: string, b?: unknown) => apiCall(svc, m, p, b);
const p50 = (xs: number[]) => percentile(xs, 50);
const p99 = (xs: number[]) => percentile(xs, 99);
const mibs = (ms: number) => SIZE / MiB / (ms / 1000);

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

async function del(id: string): Promise<void> {
  await api('DELETE', `/microvms/${id}`);
  for (let i = 0; i < 600 && (await api('GET', `/microvms/${id}`)).status !== 404; i++) await sleep(100);
}

/** A raw byte stream on the channel: write, then read exactly n bytes back. */
class Raw {
  private buf: Buffer[] = [];
  private have = 0;
  private want: { n: number; resolve: (b: Buffer) => void } | undefined;
  constructor(readonly sock: Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf.push(d);
      this.have += d.length;
      this.check();
    });
  }
  private check(): void {
    if (!this.want || this.have < this.want.n) return;
    const all = Buffer.concat(this.buf);
    const { n, resolve } = this.want;
    this.want = undefined;
    this.buf = all.length > n ? [all.subarray(n)] : [];
    this.have = all.length - n;
    resolve(all.subarray(0, n));
  }
  /** Read exactly n bytes. */
  read(n: number): Promise<Buffer> {
    return new Promise((resolve) => {
      this.want = { n, resolve };
      this.check();
    });
  }
  /** Discard whatever arrives for `ms` (stale bytes between modes). */
  async drain(ms: number): Promise<void> {
    await sleep(ms);
    this.buf = [];
    this.have = 0;
  }
  write(b: Buffer): Promise<void> {
    return new Promise((resolve, reject) => this.sock.write(b, (e) => (e ? reject(e) : resolve())));
  }
}

/** Stop whatever serves the port in the guest (the agent and init's restart loop, or a raw one) and start `mvm-agent --raw MODE` on it. */
async function rawMode(vmDir: string, mode: string): Promise<void> {
  await guestRun(
    vmDir,
    // The agent's parent is init's restart loop (a subshell): stop the loop too (a raw one's parent is init: left alone).
    'for p in $(pidof mvm-agent); do pp=$(awk \'{print $4}\' /proc/$p/stat); [ "$pp" != 1 ] && kill -9 $pp; kill -9 $p; done 2>/dev/null; sleep 0.3; ' +
      `(setsid /.mvm/mvm-agent --raw ${mode} --vsock-port 0 --log /run/mvm-agent-raw.log </dev/null >/dev/null 2>&1 &); sleep 0.3; pidof mvm-agent`,
    30_000,
  );
}

/** Wait until the raw echo answers on the channel, then drop anything stale. */
async function waitEcho(raw: Raw): Promise<void> {
  for (let i = 0; i < 100; i++) {
    const probe = Buffer.from(`probe-${i}-${randomBytes(4).toString('hex')}`);
    await raw.write(probe);
    const got = await Promise.race([raw.read(probe.length), sleep(300).then(() => undefined)]);
    if (got?.equals(probe)) return raw.drain(200);
    await raw.drain(100);
  }
  throw new Error('the raw echo never answered on the channel');
}

async function main(): Promise<void> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mvm-bench-ch-'));
  svc = await startService({ dataDir });
  const rows: Array<Array<string | number>> = [];
  // What was measured, printed in the end even when a later part failed.
  const m: Partial<Record<'apiUp' | 'apiUpDisk' | 'apiDown' | 'protoUp' | 'protoDown' | 'rawUp' | 'rawDown', number>> & Partial<Record<'apiRt' | 'pingRt' | 'execRt' | 'rawRt', number[]>> = {};
  let raw: Raw | undefined;
  try {
    // 1. create → ready, then exec at once on the same VM
    const readyMs: number[] = [];
    const execAfter: number[] = [];
    for (let i = 0; i < N; i++) {
      const t0 = performance.now();
      const vm = (await api('POST', '/microvms', { name: `ready-${i}` })).json;
      await ready(vm.id);
      const t1 = performance.now();
      const r = await api('POST', `/microvms/${vm.id}/exec`, { cmd: ['true'] });
      if (r.status !== 200 || r.json.exitCode !== 0) throw new Error(`first exec: ${r.text}`);
      readyMs.push(t1 - t0);
      execAfter.push(performance.now() - t1);
      await del(vm.id);
      process.stderr.write(`round ${i + 1}/${N}\n`);
    }
    rows.push(['create → GuestReady (cold)', p50(readyMs), percentile(readyMs, 95), 'baseline (p50 / p95)']);
    const total = readyMs.map((r, i) => r + execAfter[i]!);
    rows.push(['create → GuestReady → first `exec true` answered', p50(total), percentile(total, 95), `exec adds ${p50(execAfter).toFixed(1)} ms p50, ${percentile(execAfter, 95).toFixed(1)} p95 (target ≤ 50)`]);

    // 2. the channel's VM: a root disk with room for the 100 MiB file
    const vm = (await api('POST', '/microvms', { name: 'channel', rootfs: { size: '1Gi' } })).json;
    await ready(vm.id);
    const data = randomBytes(SIZE);
    const sum = createHash('sha256').update(data).digest('hex');
    // The download source: a 100 MiB file in the guest (also what the upload through the API measures).
    let t0 = performance.now();
    const put = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/files?path=/root/blob`, { method: 'PUT', headers: { authorization: `Bearer ${svc.token}`, 'content-type': 'application/octet-stream' }, body: data });
    if (put.status !== 201) throw new Error(`upload: ${put.status} ${await put.text()}`);
    m.apiUpDisk = performance.now() - t0;
    t0 = performance.now();
    const putNull = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/files?path=/dev/null`, { method: 'PUT', headers: { authorization: `Bearer ${svc.token}`, 'content-type': 'application/octet-stream' }, body: data });
    if (putNull.status !== 201) throw new Error(`upload to /dev/null: ${putNull.status} ${await putNull.text()}`);
    m.apiUp = performance.now() - t0;
    t0 = performance.now();
    const got = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/files?path=/root/blob`, { headers: { authorization: `Bearer ${svc.token}` } });
    const down = Buffer.from(await got.arrayBuffer());
    m.apiDown = performance.now() - t0;
    if (createHash('sha256').update(down).digest('hex') !== sum) throw new Error('download through the API differs');
    const apiRt: number[] = (m.apiRt = []);
    for (let i = 0; i < RT; i++) {
      const s = performance.now();
      const r = await api('POST', `/microvms/${vm.id}/exec`, { cmd: ['true'] });
      if (r.json.exitCode !== 0) throw new Error('exec true failed');
      apiRt.push(performance.now() - s);
    }

    // 3. the channel to ourselves: the service goes (kill -9; the guest keeps running)
    await svc.kill9();
    if (!qemuProcessesUnder(dataDir).some((p) => p.id === vm.id)) throw new Error('the guest did not outlive the service');
    const vmDir = join(dataDir, 'vms', vm.id);
    const client = await connectUnixSocket(join(vmDir, 'agent.sock'));
    const pingRt: number[] = (m.pingRt = []);
    const execRt: number[] = (m.execRt = []);
    for (let i = 0; i < RT; i++) pingRt.push(await client.ping());
    for (let i = 0; i < RT; i++) {
      const s = performance.now();
      const r = await client.execBuffered({ cmd: ['true'] });
      if (r.exitCode !== 0) throw new Error('exec true failed on the channel');
      execRt.push(performance.now() - s);
    }
    t0 = performance.now();
    await client.writeFile('/dev/null', data);
    m.protoUp = performance.now() - t0;
    t0 = performance.now();
    const f = await client.readFile('/root/blob');
    const h = createHash('sha256');
    for await (const c of f.stream) h.update(c as Buffer);
    await f.done;
    m.protoDown = performance.now() - t0;
    if (h.digest('hex') !== sum) throw new Error('download through the protocol differs');
    client.close();

    // 4. raw on the same virtio-serial port
    const sock = await new Promise<Socket>((resolve, reject) => {
      const s = connect(join(vmDir, 'agent.sock'), () => resolve(s));
      s.once('error', reject);
    });
    raw = new Raw(sock);
    await rawMode(vmDir, 'echo');
    await waitEcho(raw);
    const rawRt: number[] = (m.rawRt = []);
    const msg = randomBytes(64);
    for (let i = 0; i < RT; i++) {
      const s = performance.now();
      await raw.write(msg);
      await raw.read(msg.length);
      rawRt.push(performance.now() - s);
    }
    const len = Buffer.alloc(8);
    len.writeBigUInt64BE(BigInt(SIZE));
    await rawMode(vmDir, 'sink:/dev/null');
    await sleep(500);
    await raw.drain(200);
    t0 = performance.now();
    await raw.write(len);
    // As fast as the socket takes it: wait only when its buffer is full.
    for (let off = 0; off < SIZE; off += 256 * 1024) if (!sock.write(data.subarray(off, off + 256 * 1024))) await once(sock, 'drain');
    if ((await raw.read(3)).toString() !== 'OK\n') throw new Error('raw sink did not answer OK');
    m.rawUp = performance.now() - t0;
    await rawMode(vmDir, 'source:/root/blob');
    await sleep(500);
    await raw.drain(200);
    t0 = performance.now();
    await raw.write(len);
    const rawBytes = await raw.read(SIZE);
    const rawDown = performance.now() - t0;
    if (createHash('sha256').update(rawBytes).digest('hex') !== sum) throw new Error('raw download differs');
    m.rawDown = rawDown;

  } catch (e) {
    process.stderr.write(`${svc.logs().split('\n').slice(-30).join('\n')}\n`);
    throw e;
  } finally {
    const pct = (x: number | undefined, base: number | undefined) => (x === undefined || base === undefined ? '' : `${((base / x) * 100).toFixed(0)} % of raw`);
    const over = (xs: number[] | undefined) => (xs && m.rawRt?.length ? `+${(p50(xs) - p50(m.rawRt)).toFixed(2)} ms p50 over raw` : '');
    const rt = (label: string, xs: number[] | undefined, vs: string) => xs?.length && rows.push([`${label} (${xs.length}×)`, p50(xs), p99(xs), vs]);
    const tp = (label: string, ms: number | undefined, vs: string) => ms !== undefined && rows.push([label, mibs(ms), '', vs]);
    rt('raw write/read round trip, 64 B echoed', m.rawRt, 'baseline (p50 / p99)');
    rt('agent PING/PONG on the channel', m.pingRt, over(m.pingRt));
    rt('`exec true`, protocol straight on the channel', m.execRt, over(m.execRt));
    rt('`exec true` through the REST API', m.apiRt, over(m.apiRt));
    tp('upload 100 MiB raw (sink to /dev/null), MiB/s', m.rawUp, 'baseline');
    tp('upload 100 MiB, protocol file.write to /dev/null, MiB/s', m.protoUp, pct(m.protoUp, m.rawUp));
    tp('upload 100 MiB, files API to /dev/null, MiB/s', m.apiUp, `${pct(m.apiUp, m.rawUp)} (target ≥ 50 %)`);
    tp('upload 100 MiB, files API to a file on the root disk, MiB/s', m.apiUpDisk, pct(m.apiUpDisk, m.rawUp));
    tp('download 100 MiB raw (source: the file), MiB/s', m.rawDown, 'baseline');
    tp('download 100 MiB, protocol file.read, MiB/s', m.protoDown, pct(m.protoDown, m.rawDown));
    tp('download 100 MiB, files API, MiB/s', m.apiDown, `${pct(m.apiDown, m.rawDown)} (target ≥ 50 %)`);
    console.log(`\nThe guest agent vs raw on the same virtio-serial channel (QEMU TCG), ms unless noted\n`);
    printTable(['measure', 'p50', 'p95/p99', 'vs baseline'], rows);
    raw?.sock.destroy();
    await svc.kill9().catch(() => undefined);
    await destroyDataDir(dataDir);
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
