#!/usr/bin/env node
/** `mvm-server`: the standalone MicroVM service (API + controller + scheduler + local agent). */
import { loadConfig, type Config } from '../config.js';
import { startClusterApi } from '../cluster-api.js';
import { startStandalone } from '../standalone.js';

async function main(): Promise<void> {
  let cfg;
  try {
    cfg = loadConfig();
  } catch (e) {
    process.stderr.write(`mvm-server: ${(e as Error).message}\n`);
    process.exit(2);
  }
  if (cfg.store === 'kubernetes') return runClusterApi(cfg);
  const s = await startStandalone(cfg);
  const tokenHint = s.adminTokenFile ? `admin token in ${s.adminTokenFile}` : 'admin token from MVM_ADMIN_TOKEN';
  process.stderr.write(
    `\nMicroVM service listening on ${s.url} (data: ${cfg.dataDir}; ${tokenHint})\n` +
      `Try:  node dist/src/cmd/mvm.js create demo --wait   (or: npx mvm create demo --wait)\n\n`,
  );
  let stopping = false;
  const shutdown = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    s.log.info({ signal: sig, policy: cfg.shutdownPolicy }, 'shutting down');
    s.close()
      .then(() => process.exit(0))
      .catch((e: Error) => {
        process.stderr.write(`mvm-server: shutdown failed: ${e.message}\n`);
        process.exit(1);
      });
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
}

/** MVM_STORE=kubernetes: the API in cluster mode (src/cluster-api.ts, ADR 0015), stateless over the cluster's objects. */
async function runClusterApi(cfg: Config): Promise<void> {
  const s = await startClusterApi(cfg);
  process.stderr.write(`\nMicroVM API (cluster mode) listening on ${s.url}${s.grpcAddress ? `, gRPC on ${s.grpcAddress}` : ''}\n\n`);
  let stopping = false;
  const shutdown = (sig: string): void => {
    if (stopping) return;
    stopping = true;
    s.log.info({ signal: sig }, 'shutting down');
    s.close()
      .then(() => process.exit(0))
      .catch((e: Error) => {
        process.stderr.write(`mvm-server: shutdown failed: ${e.message}\n`);
        process.exit(1);
      });
  };
  process.on('SIGINT', () => shutdown('SIGINT'));
  process.on('SIGTERM', () => shutdown('SIGTERM'));
}

main().catch((e: Error) => {
  process.stderr.write(`mvm-server: ${e.stack ?? e.message}\n`);
  process.exit(1);
});
