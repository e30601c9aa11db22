#!/usr/bin/env node
/**
 * `mvm-agent`: the node agent in cluster mode (the DaemonSet deploy/firecracker, docs/adr/0017).
 * NODE_NAME (downward API) names its node; it runs the MicroVMs bound to that node and reports
 * their status, and heartbeats the node's capacity into the Lease microvm-system/mvm-node-<node>.
 */
import { startClusterNode, type ClusterNode } from '../agent/cluster-node.js';
import { agentEndpointEnv } from '../agent/endpoint/config.js';
import { startAgentEndpoint } from '../agent/endpoint/server.js';
import { imageRoutes } from '../agent/endpoint/images.js';
import { volumeRoutes } from '../agent/endpoint/volumes.js';
import { migrationRoutes } from '../agent/migration.js';
import { configOrExit, runMain, shutdownOnSignals, type Closer } from './lifecycle.js';

const BINARY = 'mvm-agent';

async function main(): Promise<void> {
  const cfg = configOrExit(BINARY, 'agent');
  const node: ClusterNode = await startClusterNode(cfg, {
    ...(process.env.MVM_HEARTBEAT_SECONDS ? { heartbeatMs: Number(process.env.MVM_HEARTBEAT_SECONDS) * 1000 } : {}),
  });
  const closers: Closer[] = [() => node.close()];
  // (hook) further node services (the authenticated console/metrics endpoint) register in `closers`.
  // [API cluster mode, ADR 0015] console/metrics endpoint for the API: TokenReview + SubjectAccessReview.
  const endpointEnv = agentEndpointEnv();
  const endpoint = await startAgentEndpoint({
    agent: node.agent,
    nodeName: node.nodeName,
    // Inside the guest: the API's guest agent sessions, relayed onto this node's connection to the VM's agent.
    guest: async (vm) => (await node.agent.guest(vm)).connection,
    lookup: (id) => node.k8s.getVm(id),
    namespaceOf: (tenant) => node.k8s.tn.namespaceOf(tenant),
    kubeConfig: node.kubeConfig,
    host: endpointEnv.host,
    port: endpointEnv.port,
    ...(endpointEnv.tls ? { tls: endpointEnv.tls } : {}),
    ...(endpointEnv.audiences ? { audiences: endpointEnv.audiences } : {}),
    advertise: endpointEnv.advertise,
    log: node.log.child({ c: 'endpoint' }),
    routes: [
      volumeRoutes({ nodeName: node.nodeName, backends: node.volumeBackends, resources: node.volumeRecords, log: node.log.child({ c: 'volumes' }) }),
      imageRoutes({ nodeName: node.nodeName, images: node.images, log: node.log.child({ c: 'images' }) }),
      // Migration with memory (docs/adr/0034): files served to the target, pulled, restored, resumed.
      migrationRoutes({ nodeName: node.nodeName, dataDir: node.dataDir, agent: node.agent, lookup: (id) => node.k8s.getVm(id), send: node.peers.send, log: node.log.child({ c: 'migration' }) }),
    ],
  });
  closers.push(() => endpoint.close());
  // [end API cluster mode]
  shutdownOnSignals({ binary: BINARY, log: node.log, closers, fields: () => ({ policy: cfg.shutdownPolicy }) });
}

runMain(BINARY, main);
