/**
 * The node agent's guest relay (src/guest/relay.ts) against the real guest agent binary (run on
 * this host with --listen unix:PATH, so its execs are host processes): one shared connection, as
 * GuestLink holds, and remote clients over WebSockets (as the API's RemoteNodeAgents makes them)
 * relayed onto it. Two remotes run concurrent streams with computed results (execs, stdin,
 * files larger than the window both ways); HELLO is answered from the guest's; the agent's error
 * codes pass through; a remote that goes has only its own streams cancelled in the guest (its
 * foreground process killed, the other remote's still running, a background process kept); a
 * remote asking for a window below the node's is refused; the shared connection going
 * disconnects every remote.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { WebSocket, WebSocketServer, createWebSocketStream } from 'ws';
import { GuestAgentClient, connectUnixSocket, relayGuestConnection, type GuestAgentError, type RelayStats } from '../../src/guest/index.js';
import { guestAgentBinary } from '../../src/storage/guest-agent.js';
import { sleep } from '../../src/vmm/proc.js';

let dir: string;
let agent: ChildProcess;
let shared: GuestAgentClient;
let wss: WebSocketServer;
let url: string;
/** Each relayed remote's stats, once it is over, in the order the remotes connected. */
const relayed: Array<Promise<RelayStats>> = [];

async function remote(opts: { window?: number } = {}): Promise<{ client: GuestAgentClient; ws: WebSocket }> {
  const ws = new WebSocket(url);
  await new Promise<void>((resolve, reject) => ws.once('open', () => resolve()).once('error', reject));
  const client = await GuestAgentClient.connect(createWebSocketStream(ws), { resync: false, helloTimeoutMs: 5000, client: 'relay-test', ...opts });
  return { client, ws };
}

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function until(what: string, fn: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await fn())) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

before(async () => {
  const bin = guestAgentBinary();
  assert.ok('path' in bin, `no guest agent binary: ${'missing' in bin ? bin.missing : ''}`);
  dir = mkdtempSync(join(tmpdir(), 'mvm-relay-'));
  const sock = join(dir, 'agent.sock');
  agent = spawn(bin.path, ['--listen', `unix:${sock}`, '--state-dir', join(dir, 'state'), '--no-set-clock', '--log', join(dir, 'agent.log')], { stdio: 'ignore' });
  await until('the agent socket', () => existsSync(sock));
  // As GuestLink: the node's one connection to the guest.
  shared = await connectUnixSocket(sock, { resync: false, client: 'node-link' });
  wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise<void>((r) => wss.once('listening', () => r()));
  url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`;
  wss.on('connection', (ws) => relayed.push(relayGuestConnection(createWebSocketStream(ws), shared.connection)));
});

after(async () => {
  shared?.close();
  await new Promise<void>((r) => (wss ? wss.close(() => r()) : r()));
  agent?.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('guest relay', () => {
  test('HELLO comes from the guest; concurrent streams of two remotes share the one connection', async () => {
    const a = await remote();
    const b = await remote();
    assert.equal(a.client.hello.version, shared.hello.version);
    assert.equal(a.client.hello.bootId, shared.hello.bootId);
    assert.deepEqual(a.client.hello.capabilities, shared.hello.capabilities);
    assert.ok((await a.client.ping()) >= 0);

    const big = randomBytes(3 * 1024 * 1024 + 17); // larger than every window: credit flows through the relay
    const path = join(dir, `up-${randomBytes(4).toString('hex')}`);
    const jobs = [
      ...[1, 2, 3, 4, 5].map(async (i) => {
        const c = i % 2 ? a.client : b.client;
        const r = await c.execBuffered({ cmd: ['sh', '-c', `echo $((${i}*7)); echo err-${i} >&2; exit ${i}`] });
        assert.deepEqual([r.exitCode, r.stdout, r.stderr], [i, `${i * 7}\n`, `err-${i}\n`]);
      }),
      (async () => {
        // stdin through the relay, output checked on the other side
        const h = b.client.exec({ cmd: ['sha256sum'], stdin: true });
        const out: Buffer[] = [];
        h.stdout.on('data', (d: Buffer) => out.push(d));
        h.stdin.end(big);
        assert.equal((await h.result).exitCode, 0);
        assert.equal(Buffer.concat(out).toString().split(' ')[0], sha(big));
      })(),
      (async () => {
        await a.client.writeFile(path, big);
        const { stream, done } = await a.client.readFile(path);
        const parts: Buffer[] = [];
        for await (const c of stream) parts.push(c as Buffer);
        assert.equal((await done).size, big.length);
        assert.equal(sha(Buffer.concat(parts)), sha(big));
      })(),
    ];
    await Promise.all(jobs);
    // The agent's own error codes pass through.
    await assert.rejects(b.client.stat(join(dir, 'nope')), (e: GuestAgentError) => e.agentCode === 'ENOENT' && e.code === 'NOT_FOUND');
    await assert.rejects(b.client.call('no.such.op'), (e: GuestAgentError) => e.agentCode === 'UNSUPPORTED');
    await until('streams closed on the shared connection', () => shared.connection.openStreams === 0);
    a.client.close();
    b.client.close();
  });

  test('a remote that goes has its own streams cancelled in the guest, and only those', async () => {
    const a = await remote();
    const b = await remote();
    const first = relayed.length - 2;
    const pidOf = async (h: { started: Promise<{ pid: number }> }): Promise<number> => (await h.started).pid;
    const ha = a.client.exec({ cmd: ['sh', '-c', 'sleep 60'] });
    const hb = b.client.exec({ cmd: ['sh', '-c', 'read x; echo got-$x'], stdin: true });
    const bg = await a.client.startProcess({ cmd: ['sh', '-c', 'sleep 60'], tag: 'relay-test' });
    const [pa, pb] = await Promise.all([pidOf(ha), pidOf(hb)]);
    assert.equal(shared.connection.openStreams, 2);

    a.ws.terminate(); // the remote goes without a word
    await assert.rejects(ha.result, (e: GuestAgentError) => e.agentCode === 'DISCONNECTED');
    const stats = await relayed[first]!;
    assert.equal(stats.cancelled, 1);
    await until('the gone remote’s process killed', () => !alive(pa));
    assert.ok(alive(pb), 'the other remote’s process still runs');
    assert.ok(alive(bg.pid), 'a background process outlives the remote');
    assert.equal(shared.connection.openStreams, 1);

    // The other remote's stream goes on to its end.
    const out: Buffer[] = [];
    hb.stdout.on('data', (d: Buffer) => out.push(d));
    hb.stdin.end('42\n');
    assert.equal((await hb.result).exitCode, 0);
    assert.equal(Buffer.concat(out).toString(), 'got-42\n');
    await b.client.signalProcess(bg.processId, 'KILL');
    b.client.close();
  });

  test('a remote window below the node’s is refused; a larger one works', async () => {
    const small = new WebSocket(url);
    await new Promise<void>((resolve, reject) => small.once('open', () => resolve()).once('error', reject));
    await assert.rejects(GuestAgentClient.connect(createWebSocketStream(small), { resync: false, window: 64 * 1024, helloTimeoutMs: 5000 }), (e: GuestAgentError) => e.agentCode === 'UNSUPPORTED');
    small.terminate();
    const large = await remote({ window: 1024 * 1024 });
    const r = await large.client.execBuffered({ cmd: ['sh', '-c', 'head -c 5000000 /dev/zero | tr "\\0" x'] }, { maxOutputBytes: 8 * 1024 * 1024 });
    assert.equal(r.stdout.length, 5_000_000);
    large.client.close();
  });

  test('when the shared connection goes, every remote is disconnected', async () => {
    const a = await remote();
    const b = await remote();
    const h = a.client.exec({ cmd: ['sleep', '60'] });
    await h.started;
    shared.close();
    await assert.rejects(h.result, (e: GuestAgentError) => e.code === 'UNAVAILABLE');
    assert.equal((await a.client.closed).agentCode, 'DISCONNECTED');
    assert.equal((await b.client.closed).agentCode, 'DISCONNECTED');
    // The agent's log shows the remote sessions never reached it: only the node's HELLO did.
    assert.doesNotMatch(readFileSync(join(dir, 'agent.log'), 'utf8'), /relay-test/);
  });
});
