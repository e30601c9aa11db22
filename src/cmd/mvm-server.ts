#!/usr/bin/env node
/** `mvm-server`: the standalone MicroVM service (API + controller + scheduler + local agent). */
import type { Config } from '../config.js';
import { startClusterApi } from '../cluster-api.js';
import { startStandalone } from '../standalone.js';
import { configOrExit, runMain, shutdownOnSignals } from './lifecycle.js';

const BINARY = 'mvm-server';

async function main(): Promise<void> {
  const cfg = configOrExit(BINARY);
  if (cfg.store === 'kubernetes') return runClusterApi(cfg);
  const server = await startStandalone(cfg);
  const tokenHint = server.adminTokenFile ? `admin token in ${server.adminTokenFile}` : 'admin token from MVM_ADMIN_TOKEN';
  process.stderr.write(
    `\nMicroVM service listening on ${server.url} (data: ${cfg.dataDir}; ${tokenHint})\n` +
      `Try:  node dist/src/cmd/mvm.js create demo --wait   (or: npx mvm create demo --wait)\n\n`,
  );
  shutdownOnSignals({ binary: BINARY, log: server.log, closers: [() => server.close()], fields: () => ({ policy: cfg.shutdownPolicy }) });
}

/** MVM_STORE=kubernetes: the API in cluster mode (src/cluster-api.ts, ADR 0015), stateless over the cluster's objects. */
async function runClusterApi(cfg: Config): Promise<void> {
  const api = await startClusterApi(cfg);
  process.stderr.write(`\nMicroVM API (cluster mode) listening on ${api.url}${api.grpcAddress ? `, gRPC on ${api.grpcAddress}` : ''}\n\n`);
  shutdownOnSignals({ binary: BINARY, log: api.log, closers: [() => api.close()] });
}

runMain(BINARY, main);
