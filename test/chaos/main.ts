/**
 * `make chaos` (README "Chaos"): N seeded kill -9 iterations against the real standalone service.
 *
 *   node dist/test/chaos/main.js [--seed S] [--iterations N] [--mode standalone|cluster] [--json FILE] [--quiet]
 *   node dist/test/chaos/main.js --summarize FILE...   the table of saved results (--json files)
 *
 * Iteration i runs seed S+i; every seed is printed, and `--seed X --iterations 1` replays
 * iteration X exactly (the same operations, victim, kill point and delay: plan.ts). Exit code 1
 * when any iteration failed; the summary table (markdown) goes to stdout at the end.
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { readFileSync } from 'node:fs';
import { StandaloneTarget, runIteration, summarize, type IterationResult } from './standalone.js';
import { ClusterTarget, runClusterIteration } from './cluster.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    mode: { type: 'string', default: 'standalone' },
    summarize: { type: 'boolean', default: false },
    seed: { type: 'string', default: '1' },
    iterations: { type: 'string', default: '100' },
    json: { type: 'string' },
    quiet: { type: 'boolean', default: false },
  },
});
if (values.summarize) {
  const all = positionals.flatMap((f) => JSON.parse(readFileSync(f, 'utf8')) as IterationResult[]);
  console.log(summarize(all));
  process.exit(0);
}
if (values.mode !== 'standalone' && values.mode !== 'cluster') {
  console.error(`--mode must be standalone or cluster, got ${values.mode}`);
  process.exit(2);
}
const cluster = values.mode === 'cluster';
const seed = Number(values.seed);
const iterations = Number(values.iterations);
if (!Number.isSafeInteger(seed) || seed < 0 || seed > 0xffffffff) {
  console.error(`--seed must be an integer in 0..4294967295, got ${values.seed}`);
  process.exit(2);
}
if (!Number.isSafeInteger(iterations) || iterations < 1) {
  console.error(`--iterations must be a positive integer, got ${values.iterations}`);
  process.exit(2);
}
if (process.getuid?.() !== 0) {
  console.error('chaos: needs root (guests, network namespaces, cgroups), like `make test`');
  process.exit(2);
}

const log = (s: string): void => {
  if (!values.quiet || s.startsWith('seed ') || s.includes('FAIL')) console.error(s);
};
const results: IterationResult[] = [];
interface Target {
  close(): Promise<void>;
}
const startTarget = (): Promise<Target> => (cluster ? ClusterTarget.start() : StandaloneTarget.start());
let target = await startTarget();
const stop = async (): Promise<void> => {
  await target.close().catch(() => undefined);
};
process.once('SIGINT', () => void stop().then(() => process.exit(130)));
try {
  for (let i = 0; i < iterations; i++) {
    const s = (seed + i) >>> 0;
    const r = cluster ? await runClusterIteration(target as ClusterTarget, s, log) : await runIteration(target as StandaloneTarget, s, log);
    results.push(r);
    console.error(`seed ${s}: ${r.failures.length ? `FAILED (${r.failures.length})` : 'ok'} in ${(r.durationMs / 1000).toFixed(1)} s, killed ${r.killed}${r.convergenceMs !== undefined ? `, control plane converged in ${r.convergenceMs} ms` : ''}${r.guestMs !== undefined ? `, guests in ${r.guestMs} ms` : ''} [${i + 1}/${iterations}]`);
    if (values.json) writeFileSync(values.json, JSON.stringify(results, null, 2));
    if (r.failures.length && i + 1 < iterations) {
      // A failed iteration may leave anything behind: the next one starts on a fresh service.
      await stop();
      target = await startTarget();
    }
  }
} finally {
  await stop();
}
console.log(summarize(results));
process.exit(results.some((r) => r.failures.length) ? 1 : 0);
