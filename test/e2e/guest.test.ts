/**
 * Inside the guest through the REST API (issue 13), with a real QEMU guest and the real guest
 * agent: readiness from the agent, env and files at create, buffered and streaming exec,
 * background processes, files both ways (streamed, tar), the HTTP proxy and the TCP tunnel to a
 * guest port, and the rules: viewers refused, other tenants 404, a stopped VM 409, exec audited
 * without its input or output.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { WebSocket } from 'ws';
import type { MicroVM } from '../../sdk/typescript/src/index.js';
import { apiCall, destroyDataDir, startService, type TestService } from '../support/service.js';

let svc: TestService;
let vm: MicroVM;
const api = (method: string, path: string, body?: unknown, headers: Record<string, string> = {}, token?: string) =>
  apiCall(token ? { url: svc.url, token } : svc, method, path, body, headers);
const exec = async (cmd: string[], extra: Record<string, unknown> = {}) => {
  const r = await api('POST', `/microvms/${vm.id}/exec`, { cmd, ...extra });
  assert.equal(r.status, 200, r.text);
  return r.json as { exitCode: number; stdout: string; stderr: string; timedOut: boolean; truncated: boolean; signal: string | null };
};
const sh = (script: string, extra: Record<string, unknown> = {}) => exec(['sh', '-c', script], extra);

/** A WebSocket to the API, authenticated the way browsers must (a `bearer.` subprotocol). */
function wsOpen(path: string, token = svc.token): WebSocket {
  return new WebSocket(`${svc.url.replace(/^http/, 'ws')}/api/v1${path}`, ['mvm.v1', `bearer.${Buffer.from(token).toString('base64url')}`]);
}

before(async () => {
  svc = await startService();
  const created = await api('POST', '/microvms', {
    name: 'inside',
    env: { GREETING: 'hello from env' },
    files: [{ path: '/etc/app/config.txt', content: 'mode=fast\n', mode: 0o600 }],
  });
  assert.equal(created.status, 201, created.text);
  vm = await svc.client.microvms.waitFor(created.json.id, { phase: 'Running', ready: true, timeoutMs: 180_000 });
});
after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

describe('guest agent', () => {
  test('readiness comes from the agent, whose version the status shows', async () => {
    const got = await api('GET', `/microvms/${vm.id}`);
    assert.match(got.json.status.guestAgent?.version ?? '', /^\d+\.\d+\.\d+/, JSON.stringify(got.json.status));
    const ready = got.json.status.conditions.find((c: { type: string }) => c.type === 'GuestReady');
    assert.equal(ready?.status, 'True');
    assert.equal(ready?.reason, 'AgentReady');
  });

  test('env and files from the create spec were written before anything ran', async () => {
    const r = await sh('. /run/mvm-env; echo "[$GREETING]"; stat -c %a /etc/app/config.txt; cat /etc/app/config.txt');
    assert.equal(r.exitCode, 0, r.stderr);
    assert.equal(r.stdout, '[hello from env]\n600\nmode=fast\n');
  });
});

describe('exec', () => {
  test('output, exit code, env, cwd and stdin', async () => {
    const r = await sh('echo out-$((6*7)); echo err-$((7*7)) >&2; pwd; echo "$FOO"; cat; exit 3', { env: { FOO: 'bar' }, cwd: '/tmp', stdin: 'from-stdin' });
    assert.equal(r.exitCode, 3);
    assert.equal(r.stdout, 'out-42\n/tmp\nbar\nfrom-stdin');
    assert.equal(r.stderr, 'err-49\n');
    assert.equal(r.timedOut, false);
  });

  test('an unknown binary exits 127 with its error on stderr', async () => {
    const r = await exec(['/no/such/binary']);
    assert.equal(r.exitCode, 127);
    assert.match(r.stderr, /no such file|not found/i);
  });

  test('a timeout kills the command and says so', async () => {
    const t0 = Date.now();
    const r = await exec(['sleep', '30'], { timeout: '1s' });
    assert.equal(r.timedOut, true);
    assert.notEqual(r.exitCode, 0);
    assert.ok(Date.now() - t0 < 15_000, 'killed long before 30 s');
  });

  test('output is capped and the answer says so', async () => {
    const r = await sh('head -c 300000 /dev/zero | tr "\\0" x', { maxOutputBytes: 1000 });
    assert.equal(r.exitCode, 0);
    assert.equal(r.truncated, true);
    assert.ok(r.stdout.length <= 1000, `kept ${r.stdout.length}`);
  });

  test('bad input names the field', async () => {
    const r = await api('POST', `/microvms/${vm.id}/exec`, { cmd: [] });
    assert.equal(r.status, 400);
    assert.ok(r.json.errors.some((e: { field: string }) => e.field.includes('cmd')), r.text);
  });

  test('many execs at once on one VM', async () => {
    const rs = await Promise.all(Array.from({ length: 8 }, (_, i) => sh(`echo n$((${i}+100))`)));
    rs.forEach((r, i) => assert.equal(r.stdout, `n${i + 100}\n`));
  });

  test('streaming over WebSocket: stdin in, stdout and stderr out, exit at the end', async () => {
    const ws = wsOpen(`/microvms/${vm.id}/exec`);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const exit = await new Promise<Record<string, unknown>>((resolve, reject) => {
      ws.on('error', reject);
      ws.on('open', () => {
        ws.send(JSON.stringify({ cmd: ['sh', '-c', 'read a; echo got-$a; echo e-$((2+3)) >&2; exit 5'] }));
        ws.send(Buffer.concat([Buffer.from([0]), Buffer.from('line1\n')]));
      });
      ws.on('message', (data, isBinary) => {
        const b = data as Buffer;
        if (isBinary) (b[0] === 1 ? out : err).push(b.subarray(1));
        else {
          const m = JSON.parse(b.toString()) as Record<string, unknown>;
          if (m.type === 'exit') resolve(m);
          if (m.type === 'error') reject(new Error(JSON.stringify(m)));
        }
      });
    });
    assert.equal(exit.exitCode, 5);
    assert.equal(Buffer.concat(out).toString(), 'got-line1\n');
    assert.equal(Buffer.concat(err).toString(), 'e-5\n');
  });

  test('a TTY: the shell runs on a terminal of the size asked for', async () => {
    const ws = wsOpen(`/microvms/${vm.id}/exec`);
    const out: Buffer[] = [];
    const exit = await new Promise<Record<string, unknown>>((resolve, reject) => {
      ws.on('error', reject);
      ws.on('open', () => {
        ws.send(JSON.stringify({ cmd: ['sh'], tty: true, cols: 91, rows: 37 }));
        ws.send(Buffer.concat([Buffer.from([0]), Buffer.from('[ -t 0 ] && echo tty-$((40+2)); stty size; exit\n')]));
      });
      ws.on('message', (data, isBinary) => {
        const b = data as Buffer;
        if (isBinary) out.push(b.subarray(1));
        else {
          const m = JSON.parse(b.toString()) as Record<string, unknown>;
          if (m.type === 'exit') resolve(m);
        }
      });
    });
    const text = Buffer.concat(out).toString();
    assert.match(text, /tty-42/);
    assert.match(text, /37 91/);
    assert.equal(exit.exitCode, 0);
  });

  test('background processes: start, list, attach to their output, signal', async () => {
    const started = await api('POST', `/microvms/${vm.id}/processes`, { cmd: ['sh', '-c', 'echo begin-$((1+1)); sleep 300'], tag: 'sleeper' });
    assert.equal(started.status, 201, started.text);
    const pid = started.json.processId as string;
    const list = await api('GET', `/microvms/${vm.id}/processes`);
    assert.ok(list.json.items.some((p: { processId: string; tag?: string }) => p.processId === pid && p.tag === 'sleeper'), list.text);
    const ws = wsOpen(`/microvms/${vm.id}/processes/${pid}/attach`);
    const out: Buffer[] = [];
    const ended = new Promise<Record<string, unknown>>((resolve, reject) => {
      ws.on('error', reject);
      ws.on('message', (data, isBinary) => {
        const b = data as Buffer;
        if (isBinary) out.push(b.subarray(1));
        else {
          const m = JSON.parse(b.toString()) as Record<string, unknown>;
          if (m.type === 'exit') resolve(m);
        }
      });
    });
    await new Promise<void>((resolve) => ws.once('open', () => resolve()));
    for (let i = 0; i < 50 && !Buffer.concat(out).toString().includes('begin-2'); i++) await new Promise((r) => setTimeout(r, 100));
    assert.equal((await api('POST', `/microvms/${vm.id}/processes/${pid}/signal`, { signal: 'KILL' })).status, 204);
    const exit = await ended;
    assert.equal(exit.signal, 'KILL', JSON.stringify(exit));
    assert.match(Buffer.concat(out).toString(), /begin-2/);
  });
});

describe('files', () => {
  test('upload creates parents and streams; download gives the same bytes; stat and listing', async () => {
    const data = randomBytes(5 * 1024 * 1024 + 17);
    const put = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/files?path=/data/deep/blob.bin&mode=640`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${svc.token}`, 'content-type': 'application/octet-stream' },
      body: data,
    });
    assert.equal(put.status, 201, await put.clone().text());
    assert.equal(((await put.json()) as { size: number }).size, data.length);
    const sum = await sh('sha256sum /data/deep/blob.bin');
    assert.equal(sum.stdout.split(' ')[0], createHash('sha256').update(data).digest('hex'));
    const st = await api('GET', `/microvms/${vm.id}/files/stat?path=/data/deep/blob.bin`);
    assert.equal(st.json.type, 'file');
    assert.equal(st.json.size, data.length);
    assert.equal(st.json.mode & 0o777, 0o640);
    const got = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/files?path=/data/deep/blob.bin`, { headers: { authorization: `Bearer ${svc.token}` } });
    assert.equal(got.status, 200);
    assert.ok(Buffer.from(await got.arrayBuffer()).equals(data));
    const dir = await api('GET', `/microvms/${vm.id}/files?path=/data/deep`);
    assert.deepEqual(dir.json.entries.map((e: { name: string; size: number }) => [e.name, e.size]), [['blob.bin', data.length]]);
  });

  test('mkdir, move, delete; a missing path is 404', async () => {
    assert.equal((await api('POST', `/microvms/${vm.id}/files/mkdir`, { path: '/data/m/n' })).status, 201);
    assert.equal((await api('POST', `/microvms/${vm.id}/files/move`, { from: '/data/m', to: '/data/moved' })).status, 204);
    assert.equal((await api('GET', `/microvms/${vm.id}/files/stat?path=/data/moved/n`)).json.type, 'dir');
    assert.equal((await api('GET', `/microvms/${vm.id}/files/stat?path=/data/m`)).status, 404);
    assert.equal((await api('DELETE', `/microvms/${vm.id}/files?path=/data/moved&recursive=true`)).status, 204);
    assert.equal((await api('GET', `/microvms/${vm.id}/files/stat?path=/data/moved`)).status, 404);
    const rel = await api('GET', `/microvms/${vm.id}/files/stat?path=relative/x`);
    assert.equal(rel.status, 400);
    assert.ok(rel.json.errors.some((e: { field: string }) => e.field === 'path'), rel.text);
  });

  test('a directory goes out as tar and comes back in as tar', async () => {
    assert.equal((await sh('mkdir -p /srv/tree/a/b && echo one > /srv/tree/a/1.txt && echo two > /srv/tree/a/b/2.txt')).exitCode, 0);
    const tar = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/files?path=/srv/tree&archive=tar`, { headers: { authorization: `Bearer ${svc.token}` } });
    assert.equal(tar.status, 200);
    const bytes = Buffer.from(await tar.arrayBuffer());
    assert.ok(bytes.length >= 1024 && bytes.length % 512 === 0, `a tar stream (${bytes.length} bytes)`);
    const up = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/files?path=/srv/copy&archive=tar`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${svc.token}`, 'content-type': 'application/x-tar' },
      body: bytes,
    });
    assert.equal(up.status, 201, await up.clone().text());
    const r = await sh('cd /srv/copy && find . -type f | sort && cat a/1.txt a/b/2.txt');
    assert.equal(r.stdout, './a/1.txt\n./a/b/2.txt\none\ntwo\n');
  });
});

describe('ports', () => {
  before(async () => {
    assert.equal((await sh('mkdir -p /srv/www && echo "served-$((3*3))" > /srv/www/index.html && busybox httpd -p 8080 -h /srv/www && echo started')).stdout, 'started\n');
  });

  test('the HTTP proxy reaches a server in the guest, authenticated', async () => {
    const r = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/proxy/8080/index.html`, { headers: { authorization: `Bearer ${svc.token}` } });
    assert.equal(r.status, 200);
    assert.equal(await r.text(), 'served-9\n');
    const anon = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/proxy/8080/index.html`);
    assert.equal(anon.status, 401);
  });

  test('the TCP tunnel over WebSocket carries a raw HTTP exchange', async () => {
    const ws = wsOpen(`/microvms/${vm.id}/ports/8080/connect`);
    const chunks: Buffer[] = [];
    await new Promise<void>((resolve, reject) => {
      ws.on('error', reject);
      ws.on('message', (data, isBinary) => {
        if (!isBinary) {
          const m = JSON.parse(String(data)) as { type: string };
          if (m.type === 'connected') ws.send(Buffer.from('GET /index.html HTTP/1.0\r\n\r\n'));
          if (m.type === 'error') reject(new Error(String(data)));
        } else chunks.push(data as Buffer);
      });
      ws.on('close', () => resolve());
    });
    const text = Buffer.concat(chunks).toString();
    assert.match(text, /^HTTP\/1\.[01] 200/);
    assert.match(text, /served-9/);
  });
});

describe('rules', () => {
  test('viewers are refused, another tenant gets 404, exec is audited without its input or output', async () => {
    const viewer = await api('POST', '/apikeys', { name: 'v', role: 'viewer' });
    assert.equal(viewer.status, 201, viewer.text);
    const denied = await api('POST', `/microvms/${vm.id}/exec`, { cmd: ['true'] }, {}, viewer.json.token);
    assert.equal(denied.status, 403, denied.text);
    const deniedFile = await api('GET', `/microvms/${vm.id}/files/stat?path=/etc`, undefined, {}, viewer.json.token);
    assert.equal(deniedFile.status, 403);

    assert.equal((await api('POST', '/tenants', { id: 'other' })).status, 201);
    const other = await api('POST', '/apikeys?tenant=other', { name: 'o', role: 'tenant-admin' });
    assert.equal(other.status, 201, other.text);
    for (const [m, p, b] of [
      ['POST', `/microvms/${vm.id}/exec`, { cmd: ['true'] }],
      ['GET', `/microvms/${vm.id}/files?path=/etc/hostname`, undefined],
      ['GET', `/microvms/${vm.id}/proxy/8080/`, undefined],
    ] as const) {
      const r = await api(m, p, b, {}, other.json.token);
      assert.equal(r.status, 404, `${m} ${p}: ${r.text}`);
    }

    const secretIn = `stdin-secret-${randomBytes(6).toString('hex')}`;
    await exec(['sh', '-c', 'cat; echo out-secret-$((5*5))'], { stdin: secretIn });
    const audit = await api('GET', '/audit?limit=1000');
    const execs = audit.json.items.filter((e: { action?: string; operation?: string }) => JSON.stringify(e).includes('out-secret') || JSON.stringify(e).includes('cat; echo'));
    assert.ok(execs.length >= 1, 'the exec is in the audit log with its argv');
    assert.ok(execs.some((e: { details?: { exitCode?: number } }) => e.details?.exitCode === 0), JSON.stringify(execs));
    assert.ok(!audit.text.includes(secretIn), 'stdin never reaches the audit log');
    assert.ok(!audit.text.includes('out-secret-25'), 'output never reaches the audit log');
  });

  test('a read-only place answers a clear error', async () => {
    // a real read-only file system in the guest: a tmpfs mounted ro
    const m = await sh('mkdir -p /mnt/ro && mount -t tmpfs -o ro tmpfs /mnt/ro && grep " /mnt/ro " /proc/mounts');
    assert.equal(m.exitCode, 0, m.stderr);
    assert.match(m.stdout, /\bro\b/);
    const r = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/files?path=/mnt/ro/x.txt`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${svc.token}`, 'content-type': 'application/octet-stream' },
      body: 'x',
    });
    const text = await r.text();
    assert.equal(r.status, 409, text);
    const body = JSON.parse(text) as { code: string; detail?: string };
    assert.equal(body.code, 'CONFLICT', text);
    assert.match(body.detail ?? '', /read-only/, text);
  });

  test('a full guest disk mid-upload answers its error (not a connection reset)', async () => {
    const m = await sh('mkdir -p /mnt/small && mount -t tmpfs -o size=1m tmpfs /mnt/small && echo mounted-$((1+1))');
    assert.equal(m.stdout.trim(), 'mounted-2', m.stderr);
    const body = randomBytes(8 * 1024 * 1024);
    const r = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/files?path=/mnt/small/big.bin`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${svc.token}`, 'content-type': 'application/octet-stream' },
      body,
    });
    const text = await r.text();
    assert.equal(r.status, 409, text);
    assert.match(text, /ENOSPC|no space/, text);
  });

  test('a stopped VM answers 409 with a code', async () => {
    assert.equal((await api('POST', `/microvms/${vm.id}/stop`)).status, 202);
    await svc.client.microvms.waitFor(vm.id, { phase: 'Stopped', timeoutMs: 60_000 });
    const r = await api('POST', `/microvms/${vm.id}/exec`, { cmd: ['true'] });
    assert.equal(r.status, 409, r.text);
    assert.equal(r.json.code, 'ILLEGAL_TRANSITION');
  });
});
