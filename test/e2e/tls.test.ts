/**
 * TLS on REST and gRPC (issue 15 item 5, ADR 0026) against the real service process, with real
 * clients: curl, Node (the CLI's client, node:https) and @grpc/grpc-js, Python's grpcio. The
 * certificate rotates without a restart: new connections see the new one. The security headers
 * are on every answer. MVM_TLS_SELF_SIGNED makes a development pair the CLI trusts with --ca.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { createGrpcClient, unaryCall } from '../../src/grpc/client.js';
import { Mvm, MvmApiError, MvmConnectionError } from '../../sdk/typescript/src/index.js';
import { REPO, destroyDataDir } from '../support/service.js';
import { startGatewayService, type GatewayService } from '../support/gateway.js';
import { pythonVenv } from '../support/sdk.js';
import { TestPki } from '../support/tls.js';

const pki = new TestPki();
let svc: GatewayService;
let ca1: { cert: string; key: string };
let ca2: { cert: string; key: string };
/** The files the service reads; the test rotates them. */
let live: { cert: string; key: string; fingerprint256: string };
let port: number;

const SANS = ['IP:127.0.0.1', 'DNS:localhost'];

function curl(args: string[]): { status: number | null; out: string; err: string } {
  const r = spawnSync('curl', ['-sS', '--max-time', '10', ...args], { encoding: 'utf8' });
  return { status: r.status, out: r.stdout, err: r.stderr };
}

/** The certificate a new TLS connection to host:port is shown (no verification: we only look). */
function peerFingerprint(p: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port: p, rejectUnauthorized: false }, () => {
      const fp = s.getPeerCertificate().fingerprint256;
      s.end();
      resolve(fp);
    });
    s.on('error', reject);
  });
}

async function until(what: string, check: () => Promise<boolean>, ms = 10_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** A Python grpcio client: ListMicroVMs (empty request) and GetMicroVM of a missing id, over TLS trusting `caFile`. */
function grpcio(address: string, caFile: string, token: string): { status: number | null; out: string } {
  const script = `
import grpc, sys
addr, ca, token = sys.argv[1], sys.argv[2], sys.argv[3]
creds = grpc.ssl_channel_credentials(root_certificates=open(ca, 'rb').read())
with grpc.secure_channel(addr, creds) as ch:
    md = (('authorization', 'Bearer ' + token),)
    lst = ch.unary_unary('/microvm.service.v1alpha1.MicroVMService/ListMicroVMs')
    lst(b'', metadata=md, timeout=10)
    print('LIST-OK')
    get = ch.unary_unary('/microvm.service.v1alpha1.MicroVMService/GetMicroVM')
    try:
        get(b'\\n\\x07missing', metadata=md, timeout=10)
    except grpc.RpcError as e:
        print('GET', e.code().name)
`;
  const r = spawnSync(pythonVenv(), ['-c', script, address, caFile, token], { encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, out: r.stdout + r.stderr };
}

describe('TLS with files (MVM_TLS_CERT, MVM_TLS_KEY)', () => {
  before(async () => {
    ca1 = pki.ca('ca-one');
    ca2 = pki.ca('ca-two');
    live = pki.issue(ca1, 'mvm-test', SANS);
    svc = await startGatewayService({ MVM_TLS_CERT: live.cert, MVM_TLS_KEY: live.key, MVM_TLS_RELOAD_SECONDS: '0.2' }, { ca: readFileSync(ca1.cert) });
    port = Number(new URL(svc.url).port);
  });

  after(async () => {
    await svc?.stop();
    if (svc) await destroyDataDir(svc.dataDir);
    pki.cleanup();
  });

  test('REST: curl verifies against the CA and sees the security headers; plain HTTP and an unknown CA are refused', () => {
    assert.match(svc.url, /^https:\/\/127\.0\.0\.1:\d+$/);
    const ok = curl(['-D', '-', '--cacert', ca1.cert, '-H', `authorization: Bearer ${svc.token}`, `${svc.url}/api/v1/microvms`]);
    assert.equal(ok.status, 0, ok.err);
    assert.match(ok.out, /^HTTP\/1\.1 200/);
    const h = ok.out.toLowerCase();
    assert.match(h, /\nstrict-transport-security: max-age=31536000/);
    assert.match(h, /\nx-content-type-options: nosniff/);
    assert.match(h, /\nx-frame-options: deny/);
    assert.match(h, /\nreferrer-policy: no-referrer/);
    assert.match(h, /\ncontent-security-policy: default-src 'none'; frame-ancestors 'none'/);
    // Errors carry them too.
    assert.match(curl(['-D', '-', '-o', '/dev/null', '--cacert', ca1.cert, `${svc.url}/api/v1/microvms`]).out.toLowerCase(), /x-frame-options: deny/);
    // Not trusted without the CA, nor with another one; plain HTTP on the TLS port gets nothing.
    assert.notEqual(curl([`${svc.url}/healthz`]).status, 0);
    const other = curl(['--cacert', ca2.cert, `${svc.url}/healthz`]);
    assert.notEqual(other.status, 0);
    assert.match(other.err, /certificate/i);
    assert.notEqual(curl([`http://127.0.0.1:${port}/healthz`]).out, '{"ok":true}');
  });

  test('Node: the SDK (what the CLI is built on) with the CA over fetch and WebSockets, node:https with it, and without it refused', async () => {
    const mvm = new Mvm({ url: svc.url, token: svc.token, ca: readFileSync(ca1.cert) });
    assert.deepEqual((await mvm.microvms.list()).items, []);
    assert.equal((await mvm.whoami()).role, 'admin');
    // The WebSocket handshake goes through TLS with the CA too: the service's own answer (no such VM), not a TLS failure.
    await assert.rejects(mvm.execStream('no-such-vm', { cmd: ['true'] }), (e: unknown) => e instanceof MvmApiError && e.status === 404);
    const untrusting = new Mvm({ url: svc.url, token: svc.token });
    await assert.rejects(untrusting.microvms.list(), (e: unknown) => e instanceof MvmConnectionError && /certificate|self.signed|unable to verify/i.test(e.message));
    await assert.rejects(untrusting.execStream('no-such-vm', { cmd: ['true'] }), (e: unknown) => e instanceof MvmConnectionError && /certificate|self.signed|unable to verify/i.test(e.message));
    await assert.rejects(new Mvm({ url: svc.url, token: svc.token, ca: readFileSync(ca2.cert) }).microvms.list(), MvmConnectionError);
    const r = await svc.call('GET', '/microvms');
    assert.equal(r.status, 200);
  });

  test('the Python SDK with ca= (httpx over TLS); without it the certificate is refused', () => {
    const script = `
import sys
from mvm_sdk import Mvm
from mvm_sdk.errors import MvmConnectionError
url, token, ca = sys.argv[1], sys.argv[2], sys.argv[3]
with Mvm(url, token, ca=ca) as m:
    print('ITEMS', len(m.microvms.list()['items']))
try:
    Mvm(url, token).microvms.list()
except Exception as e:
    print('REFUSED', type(e).__name__, 'CERTIFICATE' if 'CERTIFICATE' in str(e).upper() else str(e))
`;
    const r = spawnSync(pythonVenv(), ['-c', script, svc.url, svc.token, ca1.cert], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, PYTHONPATH: join(REPO, 'sdk/python/src'), PYTHONDONTWRITEBYTECODE: '1' } });
    assert.equal(r.status, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /ITEMS 0/);
    assert.match(r.stdout, /REFUSED \w+ CERTIFICATE/);
  });

  test('gRPC: @grpc/grpc-js and Python grpcio over TLS with the CA; a plaintext client fails', async () => {
    const c = createGrpcClient(svc.grpc, svc.token, { ca: readFileSync(ca1.cert) });
    try {
      const res = await unaryCall(c.ListMicroVMs.bind(c), {});
      assert.deepEqual(res.microvms, []);
      await assert.rejects(unaryCall(c.GetMicroVM.bind(c), { id: 'missing' }), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
    } finally {
      c.close();
    }
    const plain = createGrpcClient(svc.grpc, svc.token);
    try {
      await assert.rejects(unaryCall(plain.ListMicroVMs.bind(plain), {}), (e: grpc.ServiceError) => e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED);
    } finally {
      plain.close();
    }
    const py = grpcio(svc.grpc, ca1.cert, svc.token);
    assert.equal(py.status, 0, py.out);
    assert.match(py.out, /LIST-OK/);
    assert.match(py.out, /GET NOT_FOUND/);
  });

  test('rotation without a restart: a half-written pair is ignored; the new pair (another CA) is what new REST and gRPC connections see', async () => {
    const pid = svc.proc.pid;
    assert.equal(await peerFingerprint(port), live.fingerprint256);
    const next = pki.issue(ca2, 'mvm-test-rotated', SANS);
    // Only the certificate first: it does not match the key, so the old pair stays.
    TestPki.replace(next.cert, live.cert);
    await new Promise((r) => setTimeout(r, 800));
    assert.equal(await peerFingerprint(port), live.fingerprint256, 'a certificate without its key is not taken');
    assert.equal(curl(['--cacert', ca1.cert, `${svc.url}/healthz`]).status, 0);
    // Then the key: the new pair is served on new connections.
    TestPki.replace(next.key, live.key);
    await until('the REST listener serves the new certificate', async () => (await peerFingerprint(port)) === next.fingerprint256);
    const viaCa2 = curl(['--cacert', ca2.cert, `${svc.url}/healthz`]);
    assert.equal(viaCa2.status, 0, viaCa2.err);
    assert.equal(viaCa2.out, '{"ok":true}');
    assert.notEqual(curl(['--cacert', ca1.cert, `${svc.url}/healthz`]).status, 0, 'the old CA no longer verifies it');
    // gRPC too (grpc-js and grpcio, new channels).
    const grpcPort = Number(svc.grpc.split(':').pop());
    await until('the gRPC listener serves the new certificate', async () => (await peerFingerprint(grpcPort)) === next.fingerprint256);
    const c = createGrpcClient(svc.grpc, svc.token, { ca: readFileSync(ca2.cert) });
    try {
      assert.deepEqual((await unaryCall(c.ListMicroVMs.bind(c), {})).microvms, []);
    } finally {
      c.close();
    }
    const py = grpcio(svc.grpc, ca2.cert, svc.token);
    assert.equal(py.status, 0, py.out);
    assert.match(py.out, /LIST-OK/);
    assert.equal(svc.proc.pid, pid);
    assert.equal(svc.proc.exitCode, null, 'the service was not restarted');
  });
});

describe('MVM_TLS_SELF_SIGNED (development)', () => {
  let dev: GatewayService | undefined;

  after(async () => {
    await dev?.stop();
    if (dev) await destroyDataDir(dev.dataDir);
  });

  test('a self-signed pair is made in <dataDir>/tls; curl and the CLI trust it with --ca', async () => {
    dev = await startGatewayService({ MVM_TLS_SELF_SIGNED: '1' });
    const info = JSON.parse(readFileSync(join(dev.dataDir, 'server.json'), 'utf8')) as { url: string; ca: string; tls: boolean };
    assert.equal(info.tls, true);
    assert.equal(info.ca, join(dev.dataDir, 'tls', 'server.crt'));
    assert.match(dev.url, /^https:/);
    const ok = curl(['--cacert', info.ca, `${dev.url}/healthz`]);
    assert.equal(ok.status, 0, ok.err);
    assert.notEqual(curl([`${dev.url}/healthz`]).status, 0, 'not trusted without --cacert');
    const cli = (args: string[], env: Record<string, string> = {}) =>
      spawnSync(process.execPath, [join(REPO, 'dist/src/cmd/mvm.js'), '--server', dev!.url, '--token', dev!.token, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, timeout: 30_000 });
    const ls = cli(['--ca', info.ca, 'ls', '-o', 'json']);
    assert.equal(ls.status, 0, ls.stderr);
    assert.equal(cli(['ls', '-o', 'json'], { MVM_CA_CERT: info.ca }).status, 0);
    const untrusted = cli(['ls']);
    assert.notEqual(untrusted.status, 0);
    assert.match(untrusted.stderr, /certificate/i);
  });
});
