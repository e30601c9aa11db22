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
import { PassThrough } from 'node:stream';
import { createGrpcClient, grpcDownload, grpcExec, grpcUpload, type MicroVMServiceClient } from '../../src/grpc/client.js';
import type { MicroVM } from '../../src/cli/client.js';
import { apiCall, destroyDataDir, startService, type TestService } from '../support/service.js';

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
  vm = await svc.client.waitFor(created.json.id, { phase: 'Running', ready: true, timeoutMs: 180_000 });
  admin = client(svc.token);
});

after(async () => {
  for (const c of clients) c.close();
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

describe('Exec', () => {
  test('stdin in, stdout and stderr out, the exit code at the end', async () => {
    const r = await grpcExec(admin, { id: vm.id, argv: ['sh', '-c', 'read a; echo got-$a; echo e-$((2+3)) >&2; exit 5'] }, { stdin: 'x\n' });
    assert.equal(r.stdout.toString(), 'got-x\n');
    assert.equal(r.stderr.toString(), 'e-5\n');
    assert.equal(r.exit.exitCode, 5);
    assert.equal(r.exit.timedOut, false);
    assert.ok(r.pid && r.pid > 0, `started carries the pid: ${r.pid}`);
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
    await rejectsWith(readAll(grpcDownload(admin, { id: vm.id, path: '/no/such/file' }).stream), grpc.status.NOT_FOUND, 'NOT_FOUND');
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
    await svc.client.waitFor(vm.id, { phase: 'Stopped', timeoutMs: 60_000 });
    await rejectsWith(grpcExec(admin, { id: vm.id, argv: ['true'] }), grpc.status.FAILED_PRECONDITION, 'ILLEGAL_TRANSITION');
    await rejectsWith(grpcUpload(admin, { id: vm.id, path: '/tmp/s' }, 'x'), grpc.status.FAILED_PRECONDITION, 'ILLEGAL_TRANSITION');
    await rejectsWith(readAll(grpcDownload(admin, { id: vm.id, path: '/etc/hostname' }).stream), grpc.status.FAILED_PRECONDITION, 'ILLEGAL_TRANSITION');
  });
});
