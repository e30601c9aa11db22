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
  // The CLI defaults to the default instance's address and data dir; another instance's need saying.
  const cliEnv = cfg.instance === 'mvm' && cfg.dataDir === '/var/lib/mvm' && server.url === 'http://127.0.0.1:8080' ? '' : `MVM_SERVER=${server.url} MVM_DATA_DIR=${cfg.dataDir} `;
  const tokenHint = server.adminTokenFile ? `admin token in ${server.adminTokenFile}` : 'admin token from MVM_ADMIN_TOKEN';
  process.stderr.write(
    `\nMicroVM service (instance ${cfg.instance}) listening on ${server.url} (data: ${cfg.dataDir}; ${tokenHint})\n` +
      `Try:  ${cliEnv}node dist/src/cmd/mvm.js create demo --wait   (or: ${cliEnv}npx mvm create demo --wait)\n\n`,
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
