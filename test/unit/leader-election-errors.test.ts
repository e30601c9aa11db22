/**
 * The operator's leader election when its namespace is missing (issue 17, item 2): against a small
 * HTTP server answering as kube-apiserver does (404 for the Lease, then 404 `namespaces "…" not
 * found` for its create), the elector says once what is missing and what to apply, not a bare
 * error every retry; once the namespace exists it says so and leads.
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { KubeConfig } from '@kubernetes/client-node';
import { LeaderElector, describeLeaseFailure } from '../../src/operator/leader.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('leader election before the namespace exists: one clear message naming the manifest, then it leads once the namespace is there', async () => {
  let namespaceExists = false;
  let creates = 0;
  const srv = createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      if (req.method === 'GET') {
        res.statusCode = 404;
        res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', message: 'leases.coordination.k8s.io "microvm-operator" not found', reason: 'NotFound', details: { name: 'microvm-operator', group: 'coordination.k8s.io', kind: 'leases' }, code: 404 }));
        return;
      }
      creates++;
      if (!namespaceExists) {
        res.statusCode = 404;
        res.end(JSON.stringify({ kind: 'Status', apiVersion: 'v1', status: 'Failure', message: 'namespaces "microvm-system" not found', reason: 'NotFound', details: { name: 'microvm-system', kind: 'namespaces' }, code: 404 }));
        return;
      }
      res.statusCode = 201;
      res.end(body);
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`, skipTLSVerify: true }],
    users: [{ name: 'u', token: 't' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  const logs: Array<{ msg: string; level: string | undefined }> = [];
  let leading = false;
  const el = new LeaderElector({
    kubeConfig: kc,
    namespace: 'microvm-system',
    name: 'microvm-operator',
    identity: 'op-0',
    leaseDurationMs: 400,
    renewDeadlineMs: 200,
    retryPeriodMs: 20,
    onStartedLeading: () => void (leading = true),
    onStoppedLeading: () => undefined,
    log: (msg, _o, level) => logs.push({ msg, level }),
  });
  try {
    el.start();
    while (creates < 10) await sleep(10);
    const warned = logs.filter((l) => l.level === 'warn');
    assert.equal(warned.length, 1, `one message for ${creates} failed attempts: ${JSON.stringify(logs)}`);
    assert.match(warned[0]!.msg, /namespace microvm-system does not exist.*deploy\/operator\/00-namespace\.yaml/);
    namespaceExists = true;
    while (!leading) await sleep(10);
    assert.ok(logs.some((l) => l.msg === 'lease requests work again'), JSON.stringify(logs));
  } finally {
    await el.stop();
    srv.closeAllConnections();
    srv.close();
  }
});

test('describeLeaseFailure: missing rights name the RBAC manifest; anything else keeps its message', () => {
  const forbidden = Object.assign(new Error('HTTP-Code: 403'), { code: 403, body: '{"reason":"Forbidden"}' });
  assert.match(describeLeaseFailure(forbidden, 'microvm-system', 'microvm-operator'), /deploy\/operator\/rbac\.yaml/);
  assert.equal(describeLeaseFailure(new Error('connect ECONNREFUSED 127.0.0.1:1'), 'microvm-system', 'l'), 'lease request failed: connect ECONNREFUSED 127.0.0.1:1');
  assert.equal(describeLeaseFailure(undefined, 'ns', 'l'), 'lease request failed: undefined');
});
