/**
 * The API's client of the node agents follows an agent that restarted at another address (found
 * by the chaos harness, cluster seed 221: after a node agent's restart on a new port, the API's
 * remembered endpoint refused and a snapshot answered 503 though the agent was up). A refused
 * connection to a remembered address re-reads the Node's endpoint annotation and asks once more.
 * A stand-in for the Kubernetes API (GET of the Node) and two stand-in agents over real HTTP.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { KubeConfig } from '@kubernetes/client-node';
import { RemoteNodeAgents } from '../../src/agent/endpoint/client.js';
import { ANN_AGENT_ENDPOINT, readText } from '../../src/agent/endpoint/http.js';

const listen = (s: Server): Promise<string> => new Promise((r) => s.listen(0, '127.0.0.1', () => r(`http://127.0.0.1:${(s.address() as AddressInfo).port}`)));

test('an agent that restarted at a new address: the next call follows it instead of answering UNAVAILABLE', async () => {
  const agentA = createServer((_q, res) => res.end('from A'));
  const agentB = createServer((_q, res) => res.end('from B'));
  let endpoint = await listen(agentA);
  const urlB = await listen(agentB);
  let nodeReads = 0;
  const kube = createServer((q, res) => {
    nodeReads++;
    assert.equal(q.url, '/api/v1/nodes/node-a');
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name: 'node-a', annotations: { [ANN_AGENT_ENDPOINT]: endpoint } } }));
  });
  const kubeUrl = await listen(kube);
  const kc = new KubeConfig();
  kc.loadFromOptions({ clusters: [{ name: 'c', server: kubeUrl, skipTLSVerify: true }], users: [{ name: 'u', token: 't' }], contexts: [{ name: 'x', cluster: 'c', user: 'u' }], currentContext: 'x' });
  const agents = new RemoteNodeAgents({ kubeConfig: kc, token: () => 'tok' });
  try {
    assert.equal(await readText(await agents.call('node-a', 'GET', '/v1/ping')), 'from A');
    assert.equal(nodeReads, 1);
    // The agent restarts elsewhere: A refuses, the Node names B.
    agentA.closeAllConnections();
    await new Promise((r) => agentA.close(r));
    await new Promise((r) => setTimeout(r, 50)); // the client sees its idle connection closed, as after a kill -9
    endpoint = urlB;
    assert.equal(await readText(await agents.call('node-a', 'GET', '/v1/ping')), 'from B');
    assert.equal(nodeReads, 2, 'one fresh read of the Node');
  } finally {
    await agents.shutdown();
    for (const s of [agentB, kube]) s.close();
  }
});
