/** The real mvm-server as a benchmark target: its own process and data dir, no guest network. */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Fastify from 'fastify';
import { sleep } from '../src/vmm/proc.js';

const SERVER_BIN = join(fileURLToPath(import.meta.url), '../../src/cmd/mvm-server.js');

export interface BenchService {
  url: string;
  proc: ChildProcess;
  dataDir: string;
  /** The admin token. */
  token: string;
  stop(): Promise<void>;
}

/** Limiting stays on (its cost is measured) with budgets a benchmark does not exhaust. */
export const GENEROUS_RATE_LIMITS = 'tenant.read=1000000/s:1000000,key.read=1000000/s:1000000,tenant.mutation=1000000/s:1000000,key.mutation=1000000/s:1000000,ip.read=1000000/s:1000000,ip.mutation=1000000/s:1000000';

export async function startBenchService(env: Record<string, string> = {}): Promise<BenchService> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mvm-bench-api-'));
  const proc = spawn(process.execPath, [SERVER_BIN], {
    detached: true,
    stdio: ['ignore', 'ignore', 'inherit'],
    env: {
      ...process.env,
      MVM_DATA_DIR: dataDir,
      MVM_LISTEN: '127.0.0.1:0',
      MVM_GRPC_LISTEN: '127.0.0.1:0',
      MVM_NETWORK: 'none',
      MVM_ACCEL: process.env.MVM_ACCEL ?? 'tcg',
      MVM_RATE_LIMITS: GENEROUS_RATE_LIMITS,
      ...env,
    },
  });
  const sj = join(dataDir, 'server.json');
  const deadline = Date.now() + 60_000;
  while (!existsSync(sj)) {
    if (proc.exitCode !== null) throw new Error('mvm-server exited during start-up');
    if (Date.now() > deadline) throw new Error('mvm-server did not start in 60 s');
    await sleep(50);
  }
  const stop = async (): Promise<void> => {
    try {
      process.kill(-proc.pid!, 'SIGTERM');
    } catch {
      /* gone */
    }
    for (let i = 0; i < 100 && proc.exitCode === null && proc.signalCode === null; i++) await sleep(50);
    rmSync(dataDir, { recursive: true, force: true });
  };
  return { url: (JSON.parse(readFileSync(sj, 'utf8')) as { url: string }).url, proc, dataDir, token: readFileSync(join(dataDir, 'admin.token'), 'utf8').trim(), stop };
}

/** Resident set size of a process in MiB (from /proc). */
export function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Child mode of a benchmark: a bare Fastify server answering the bodies it reads on stdin (the baseline). */
export async function bareServer(): Promise<void> {
  let input = '';
  for await (const c of process.stdin) input += c;
  const { one, list } = JSON.parse(input) as { one: unknown; list: unknown };
  const app = Fastify({ logger: false });
  app.get('/api/v1/microvms/:id', async () => one);
  app.get('/api/v1/microvms', async () => list);
  process.stdout.write((await app.listen({ host: '127.0.0.1', port: 0 })) + '\n');
}
