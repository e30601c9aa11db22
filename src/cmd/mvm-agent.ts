#!/usr/bin/env node
/**
 * `mvm-agent`: the node agent in cluster mode (the DaemonSet deploy/firecracker, docs/adr/0017).
 * NODE_NAME (downward API) names its node; it runs the MicroVMs bound to that node and reports
 * their status, and heartbeats the node's capacity into the Lease microvm-system/mvm-node-<node>.
 */
import { loadConfig } from '../config.js';
import { startClusterNode, type ClusterNode } from '../agent/cluster-node.js';
import { agentEndpointEnv } from '../agent/endpoint/config.js';
import { startAgentEndpoint } from '../agent/endpoint/server.js';
import { imageRoutes } from '../agent/endpoint/images.js';
import { volumeRoutes } from '../agent/endpoint/volumes.js';

async function main(): Promise<void> {
  let cfg;
  try {
    cfg = loadConfig();
  } catch (e) {
    process.stderr.write(`mvm-agent: ${(e as Error).message}\n`);
    process.exit(2);
  }
  const node: ClusterNode = await startClusterNode(cfg, {
    ...(process.env.MVM_HEARTBEAT_SECONDS ? { heartbeatMs: Number(process.env.MVM_HEARTBEAT_SECONDS) * 1000 } : {}),
  });
  const closers: Array<() => Promise<void>> = [];
  // (hook) further node services (the authenticated console/metrics endpoint) register in `closers`.
  // [API cluster mode, ADR 0015] console/metrics endpoint for the API: TokenReview + SubjectAccessReview.
  const ep = agentEndpointEnv();
  const endpoint = await startAgentEndpoint({
    agent: node.agent,
    nodeName: node.nodeName,
    lookup: (id) => node.k8s.getVm(id),
    namespaceOf: (t) => node.k8s.tn.namespaceOf(t),
    kubeConfig: node.kubeConfig,
    host: ep.host,
    port: ep.port,
    ...(ep.tls ? { tls: ep.tls } : {}),
    ...(ep.audiences ? { audiences: ep.audiences } : {}),
    advertise: ep.advertise,
    log: node.log.child({ c: 'endpoint' }),
    routes: [
      volumeRoutes({ nodeName: node.nodeName, backends: node.volumeBackends, resources: node.volumeRecords, log: node.log.child({ c: 'volumes' }) }),
      imageRoutes({ nodeName: node.nodeName, images: node.images, log: node.log.child({ c: 'images' }) }),
    ],
  });
  closers.push(() => endpoint.close());
  // [end API cluster mode]
  let stopping = false;
  const shutdown = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    node.log.info({ signal: sig, policy: cfg.shutdownPolicy }, 'shutting down');
    Promise.allSettled(closers.map((c) => c()))
      .then(() => node.close())
      .then(() => process.exit(0))
      .catch((e: Error) => {
        process.stderr.write(`mvm-agent: shutdown failed: ${e.message}\n`);
        process.exit(1);
      });
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
}

main().catch((e: Error) => {
  process.stderr.write(`mvm-agent: ${e.stack ?? e.message}\n`);
  process.exit(1);
});
