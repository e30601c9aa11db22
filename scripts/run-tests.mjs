#!/usr/bin/env node
// Runs the compiled tests with node's built-in runner. Files run one at a time (guests boot under
// TCG on 2 cores); tests inside a file may run concurrently.
//
//   node scripts/run-tests.mjs                       every test: unit, integration, e2e, then final
//   node scripts/run-tests.mjs --layer unit          one layer (test/unit: no root, no guests, < 1 min)
//   node scripts/run-tests.mjs [filter-substring ...] the files whose path contains a filter
//
// Only compiled files whose TypeScript source still exists run: a test deleted or moved in test/
// never runs from a stale dist/.
//
// The whole suite (no --layer, no filter) runs with a ledger (MVM_TEST_LEDGER, test/support/ledger.ts):
// the secrets the tests make and everything the service processes write, which test/final scans
// last. The services then log at info (MVM_TEST_LOG_LEVEL), so there is something to scan.
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';
import { availableParallelism, tmpdir } from 'node:os';

const repo = new URL('..', import.meta.url).pathname;
const LAYERS = ['unit', 'integration', 'e2e', 'final'];
const args = process.argv.slice(2);
let layers = LAYERS;
const filters = [];
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--layer') {
    const l = args[++i];
    if (!LAYERS.includes(l)) {
      console.error(`--layer must be one of ${LAYERS.join(', ')}, got ${l}`);
      process.exit(2);
    }
    layers = [l];
  } else filters.push(args[i]);
}

const files = [];
for (const layer of layers) {
  const dir = join(repo, 'dist/test', layer);
  if (!existsSync(dir)) continue;
  (function walk(d) {
    for (const e of readdirSync(d).sort()) {
      const p = join(d, e);
      if (statSync(p).isDirectory()) walk(p);
      else if (e.endsWith('.test.js')) {
        const src = join(repo, relative(join(repo, 'dist'), p)).replace(/\.js$/, '.ts');
        if (existsSync(src)) files.push(p);
      }
    }
  })(dir);
}
const selected = files.filter((f) => filters.length === 0 || filters.some((x) => f.includes(x)));
if (selected.length === 0) {
  console.error('no test files matched (run `make build` first?)');
  process.exit(1);
}
// Unit test files boot nothing: they may run side by side.
const concurrency = layers.length === 1 && layers[0] === 'unit' ? availableParallelism() : 1;
const whole = layers === LAYERS && filters.length === 0;
const env = { ...process.env };
if (whole) {
  env.MVM_TEST_LEDGER = mkdtempSync(join(tmpdir(), 'mvm-test-ledger-'));
  env.MVM_TEST_LOG_LEVEL ??= 'info';
}
const run = (fs) => spawnSync(process.execPath, ['--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...fs], { stdio: 'inherit', env }).status ?? 1;
// test/final runs after everything else, in a run of its own.
const isFinal = (f) => f.includes('/dist/test/final/');
const main = selected.filter((f) => !isFinal(f));
const final = selected.filter(isFinal);
let status = main.length ? run(main) : 0;
if (final.length) status = run(final) || status;
if (whole && status === 0 && !process.env.MVM_TEST_KEEP) rmSync(env.MVM_TEST_LEDGER, { recursive: true, force: true });
process.exit(status);
