/**
 * Inside the guest over gRPC (issue 13), against the real service with a real QEMU guest and its
 * agent: Exec as a bidirectional stream (stdin, stdout, stderr, exit code, tty with its size),
 * Upload and Download streams (a 3 MiB random file round-trips byte for byte), and the same rules
 * as REST: viewers PERMISSION_DENIED, another tenant NOT_FOUND, a stopped VM FAILED_PRECONDITION
 * with ILLEGAL_TRANSITION, Exec audited with argv and exit code and never its input or output.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough, Readable } from 'node:stream';
import { createGrpcClient, grpcDownload, grpcExec, grpcUpload, type MicroVMServiceClient } from '../../src/grpc/client.js';
import type { MicroVM } from '../../sdk/typescript/src/index.js';
import { apiCall, destroyDataDir, qemuProcessesUnder, startService, type TestService } from '../support/service.js';

let svc: TestService;
let vm: MicroVM;
let admin: MicroVMServiceClient;
const clients: MicroVMServiceClient[] = [];
const client = (token: string): MicroVMServiceClient => {
  const { grpc: address } = JSON.parse(readFileSync(join(svc.dataDir, 'server.json'), 'utf8')) as { grpc: string };
  const c = createGrpcClient(address, token);
  clients.push(c);
  return c;
};
const api = (method: string, path: string, body?: unknown) => apiCall(svc, method, path, body);
const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
/** For calls that end only when the guest does what is asked: fail in a minute instead of hanging the file. */
const soon = (): number => Date.now() + 60_000;

async function readAll(s: NodeJS.ReadableStream): Promise<Buffer> {
  const parts: Buffer[] = [];
  for await (const c of s) parts.push(c as Buffer);
  return Buffer.concat(parts);
}

const rejectsWith = async (p: Promise<unknown>, code: grpc.status, mvmCode: string): Promise<void> => {
  await assert.rejects(p, (e: grpc.ServiceError) => {
    assert.equal(e.code, code, `${e.code} ${e.details}`);
    assert.equal(e.metadata?.get('mvm-error-code')[0], mvmCode, e.details);
    return true;
  });
};

before(async () => {
  svc = await startService();
  const created = await api('POST', '/microvms', { name: 'grpc-inside' });
  assert.equal(created.status, 201, created.text);
  vm = await svc.client.microvms.waitFor(created.json.id, { phase: 'Running', ready: true, timeoutMs: 180_000 });
  admin = client(svc.token);
  // A real guest: a QEMU process of this VM, and its agent answering.
  assert.deepEqual(qemuProcessesUnder(svc.dataDir).map((q) => q.id), [vm.id]);
  assert.match(vm.status.guestAgent?.version ?? '', /^\d+\.\d+\.\d+/, JSON.stringify(vm.status));
});

after(async () => {
  for (const c of clients) c.close();
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

describe('Exec', () => {
  test('stdin in, stdout and stderr out, the exit code at the end', async () => {
    const r = await grpcExec(admin, { id: vm.id, argv: ['sh', '-c', 'read a; echo got-$a; echo e-$((2+3)) >&2; exit 5'] }, { stdin: 'x\n', deadline: soon() });
    assert.equal(r.stdout.toString(), 'got-x\n');
    assert.equal(r.stderr.toString(), 'e-5\n');
    assert.equal(r.exit.exitCode, 5);
    assert.equal(r.exit.timedOut, false);
    assert.ok(r.pid && r.pid > 0, `started carries the pid: ${r.pid}`);
  });

  test('cat echoes 2 MiB of streamed stdin byte for byte (backpressure both ways)', async () => {
    const data = randomBytes(2 * 1024 * 1024);
    // A Readable of 64 KiB pieces: the client waits for 'drain', the server pauses the call.
    const stdin = Readable.from((function* () {
      for (let i = 0; i < data.length; i += 64 * 1024) yield data.subarray(i, i + 64 * 1024);
    })());
    const r = await grpcExec(admin, { id: vm.id, argv: ['cat'] }, { stdin, deadline: soon() });
    assert.equal(r.exit.exitCode, 0, r.stderr.toString());
    assert.equal(r.stdout.length, data.length);
    assert.equal(sha256(r.stdout), sha256(data));
    assert.equal(r.stderr.length, 0);
  });

  test('a signal sent on the stream reaches the command', async () => {
    const t0 = Date.now();
    // stdin stays open (no half-close) until the command has gone, so the call can carry the signal.
    const stdin = new PassThrough();
    const r = await grpcExec(admin, { id: vm.id, argv: ['sleep', '60'] }, {
      stdin,
      deadline: soon(),
      onCall: (call) => {
        // Once it has started (the started message carries its pid), TERM it.
        call.on('data', (m: { output?: string }) => {
          if (m.output === 'started') call.write({ signal: 'TERM' });
        });
      },
    });
    stdin.end();
    assert.ok(Date.now() - t0 < 30_000, `ended after ${Date.now() - t0} ms`);
    assert.equal(r.exit.signal, 'TERM', JSON.stringify(r.exit));
    assert.equal(r.exit.exitCode, 128 + 15);
    assert.equal(r.exit.timedOut, false);
  });

  test('a call that ends early (its deadline) ends the command in the guest', async () => {
    const secs = String(600 + Math.floor(Math.random() * 300));
    const stdin = new PassThrough();
    await assert.rejects(grpcExec(admin, { id: vm.id, argv: ['sleep', secs] }, { stdin, deadline: Date.now() + 3000 }), (e: grpc.ServiceError) => {
      assert.equal(e.code, grpc.status.DEADLINE_EXCEEDED, `${e.code} ${e.details}`);
      return true;
    });
    stdin.end();
    // The guest's process table, read from /proc (no procps needed), until `sleep <secs>` is gone.
    const running = async (): Promise<boolean> => {
      const ps = await grpcExec(admin, { id: vm.id, argv: ['sh', '-c', 'for p in /proc/[0-9]*; do tr "\\0" " " < $p/cmdline 2>/dev/null; echo; done'] }, { deadline: soon() });
      assert.equal(ps.exit.exitCode, 0, ps.stderr.toString());
      assert.match(ps.stdout.toString(), /\bsh -c\b/, 'the listing sees its own shell');
      return ps.stdout.toString().split('\n').some((l) => l.trim() === `sleep ${secs}`);
    };
    const until = Date.now() + 15_000;
    while ((await running()) && Date.now() < until) await new Promise((r) => setTimeout(r, 300));
    assert.equal(await running(), false, `sleep ${secs} still runs in the guest after its call ended`);
  });

  test('an unknown binary exits 127', async () => {
    const r = await grpcExec(admin, { id: vm.id, argv: ['/no/such/binary'] });
    assert.equal(r.exit.exitCode, 127);
    assert.match(r.stderr.toString(), /no such file|not found/i);
  });

  test('a tty reports its size, and a resize reaches it', async () => {
    const r = await grpcExec(admin, { id: vm.id, argv: ['stty', 'size'], tty: true, cols: 91, rows: 37 });
    assert.equal(r.exit.exitCode, 0, r.stdout.toString());
    assert.match(r.stdout.toString(), /37 91/);

    // An interactive shell: resize, then ask; stdin stays open until the shell exits by itself.
    const stdin = new PassThrough();
    const out = await grpcExec(admin, { id: vm.id, argv: ['sh'], tty: true, cols: 80, rows: 24 }, {
      deadline: soon(),
      onCall: (call) => {
        call.write({ resize: { cols: 120, rows: 50 } });
        call.write({ stdin: Buffer.from('stty size; exit 0\n') });
      },
      stdin,
    });
    stdin.end();
    assert.equal(out.exit.exitCode, 0);
    assert.match(out.stdout.toString(), /50 120/, out.stdout.toString());
  });

  test('a bad request is INVALID_ARGUMENT naming the proto field', async () => {
    await rejectsWith(grpcExec(admin, { id: vm.id, argv: [] }), grpc.status.INVALID_ARGUMENT, 'VALIDATION_FAILED');
    await assert.rejects(grpcExec(admin, { id: vm.id, argv: ['ls'], cwd: 'relative' }), (e: grpc.ServiceError) => {
      assert.match(e.details, /request\.cwd/);
      return true;
    });
  });
});

describe('files', () => {
  test('Upload of a 3 MiB random file, then Download: the same bytes', async () => {
    const data = randomBytes(3 * 1024 * 1024);
    const up = await grpcUpload(admin, { id: vm.id, path: '/tmp/grpc/up.bin', mode: 0o640 }, data);
    assert.equal(up.path, '/tmp/grpc/up.bin');
    assert.equal(up.size, data.length);
    const d = grpcDownload(admin, { id: vm.id, path: '/tmp/grpc/up.bin' });
    const got = await readAll(d.stream);
    assert.equal(got.length, data.length);
    assert.equal(sha256(got), sha256(data));
    const info = await d.info;
    assert.equal(info?.size, data.length);
    assert.equal(info?.mode, 0o640);
    // The guest agrees.
    const r = await grpcExec(admin, { id: vm.id, argv: ['sha256sum', '/tmp/grpc/up.bin'] });
    assert.equal(r.stdout.toString().split(/\s+/)[0], sha256(data));
  });

  test('a directory as a tar stream: Download with tar, Upload with tar elsewhere', async () => {
    const mk = await grpcExec(admin, { id: vm.id, argv: ['sh', '-c', 'mkdir -p /tmp/tdir/sub && echo one > /tmp/tdir/a.txt && echo two > /tmp/tdir/sub/b.txt'] });
    assert.equal(mk.exit.exitCode, 0, mk.stderr.toString());
    const tar = await readAll(grpcDownload(admin, { id: vm.id, path: '/tmp/tdir', tar: true }).stream);
    assert.ok(tar.length >= 1024, `tar of ${tar.length} bytes`);
    const up = await grpcUpload(admin, { id: vm.id, path: '/tmp/tdir-copy', tar: true }, tar);
    assert.ok(up.entries >= 2, JSON.stringify(up));
    const r = await grpcExec(admin, { id: vm.id, argv: ['sh', '-c', 'cat /tmp/tdir-copy/a.txt /tmp/tdir-copy/sub/b.txt'] });
    assert.equal(r.stdout.toString(), 'one\ntwo\n');
  });

  test('Download of a missing path is NOT_FOUND; a directory without tar is INVALID_ARGUMENT', async () => {
    const missing = `/tmp/missing-${randomBytes(4).toString('hex')}/file.bin`;
    await assert.rejects(readAll(grpcDownload(admin, { id: vm.id, path: missing }).stream), (e: grpc.ServiceError) => {
      assert.equal(e.code, grpc.status.NOT_FOUND, `${e.code} ${e.details}`);
      assert.equal(e.metadata?.get('mvm-error-code')[0], 'NOT_FOUND', e.details);
      // A message a person can act on: which path, and that it does not exist.
      assert.ok(e.details.includes(missing), e.details);
      assert.match(e.details, /no such file|does not exist|not found/i);
      // The guest agent's own code, as REST's agentCode.
      assert.equal(e.metadata?.get('mvm-agent-code')[0], 'ENOENT', e.details);
      return true;
    });
    await rejectsWith(readAll(grpcDownload(admin, { id: vm.id, path: '/etc' }).stream), grpc.status.INVALID_ARGUMENT, 'VALIDATION_FAILED');
  });
});

describe('rules', () => {
  test('a viewer is PERMISSION_DENIED for Exec, Upload and Download', async () => {
    const key = await api('POST', '/apikeys', { name: 'grpc-viewer', role: 'viewer' });
    assert.equal(key.status, 201, key.text);
    const viewer = client(key.json.token);
    await rejectsWith(grpcExec(viewer, { id: vm.id, argv: ['true'] }), grpc.status.PERMISSION_DENIED, 'PERMISSION_DENIED');
    await rejectsWith(grpcUpload(viewer, { id: vm.id, path: '/tmp/v' }, 'x'), grpc.status.PERMISSION_DENIED, 'PERMISSION_DENIED');
    await rejectsWith(readAll(grpcDownload(viewer, { id: vm.id, path: '/etc/hostname' }).stream), grpc.status.PERMISSION_DENIED, 'PERMISSION_DENIED');
  });

  test('no token is UNAUTHENTICATED', async () => {
    const anon = client('');
    await rejectsWith(grpcExec(anon, { id: vm.id, argv: ['true'] }), grpc.status.UNAUTHENTICATED, 'UNAUTHENTICATED');
  });

  test('another tenant gets NOT_FOUND, exactly like a missing VM', async () => {
    assert.equal((await api('POST', '/tenants', { id: 'grpc-other' })).status, 201);
    const key = await api('POST', '/apikeys?tenant=grpc-other', { name: 'o', role: 'tenant-admin' });
    assert.equal(key.status, 201, key.text);
    const other = client(key.json.token);
    await rejectsWith(grpcExec(other, { id: vm.id, argv: ['true'] }), grpc.status.NOT_FOUND, 'NOT_FOUND');
    await rejectsWith(grpcUpload(other, { id: vm.id, path: '/tmp/o' }, 'x'), grpc.status.NOT_FOUND, 'NOT_FOUND');
    await rejectsWith(readAll(grpcDownload(other, { id: vm.id, path: '/etc/hostname' }).stream), grpc.status.NOT_FOUND, 'NOT_FOUND');
    await rejectsWith(grpcExec(admin, { id: 'vm-doesnotexist000', argv: ['true'] }), grpc.status.NOT_FOUND, 'NOT_FOUND');
  });

  test('Exec is audited with argv and exit code, never stdin or output', async () => {
    const secretIn = `stdin-secret-${randomBytes(6).toString('hex')}`;
    const r = await grpcExec(admin, { id: vm.id, argv: ['sh', '-c', 'cat >/dev/null; echo out-secret-$((6*6)); exit 3'] }, { stdin: secretIn });
    assert.equal(r.exit.exitCode, 3);
    assert.equal(r.stdout.toString(), 'out-secret-36\n');
    const audit = await api('GET', '/audit?limit=1000');
    assert.equal(audit.status, 200, audit.text);
    const entries = (audit.json.items as Array<{ transport: string; operation: string; details?: { argv?: string[]; exitCode?: number }; resourceId?: string }>).filter(
      (e) => e.transport === 'grpc' && e.operation === 'guest.execStream' && JSON.stringify(e.details?.argv ?? []).includes('out-secret'),
    );
    assert.equal(entries.length, 1, JSON.stringify(entries));
    assert.equal(entries[0]!.details?.exitCode, 3);
    assert.equal(entries[0]!.resourceId, vm.id);
    assert.ok(!audit.text.includes(secretIn), 'stdin never reaches the audit log');
    assert.ok(!audit.text.includes('out-secret-36'), 'output never reaches the audit log');
    // Uploads are audited as file writes; denied calls too.
    assert.ok(audit.json.items.some((e: { transport: string; operation: string }) => e.transport === 'grpc' && e.operation === 'guest.filePut'));
    assert.ok(audit.json.items.some((e: { transport: string; result: string }) => e.transport === 'grpc' && e.result === 'denied'));
  });

  test('a stopped VM is FAILED_PRECONDITION with ILLEGAL_TRANSITION', async () => {
    assert.equal((await api('POST', `/microvms/${vm.id}/stop`)).status, 202);
    await svc.client.microvms.waitFor(vm.id, { phase: 'Stopped', timeoutMs: 60_000 });
    await rejectsWith(grpcExec(admin, { id: vm.id, argv: ['true'] }), grpc.status.FAILED_PRECONDITION, 'ILLEGAL_TRANSITION');
    await rejectsWith(grpcUpload(admin, { id: vm.id, path: '/tmp/s' }, 'x'), grpc.status.FAILED_PRECONDITION, 'ILLEGAL_TRANSITION');
    await rejectsWith(readAll(grpcDownload(admin, { id: vm.id, path: '/etc/hostname' }).stream), grpc.status.FAILED_PRECONDITION, 'ILLEGAL_TRANSITION');
  });
});
