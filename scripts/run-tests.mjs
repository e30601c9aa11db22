#!/usr/bin/env node
// Runs the compiled tests with node's built-in runner. Files run one at a time (guests boot under
// TCG on 2 cores); tests inside a file may run concurrently.
//
//   node scripts/run-tests.mjs                       every test: unit, integration, e2e
//   node scripts/run-tests.mjs --layer unit          one layer (test/unit: no root, no guests, < 1 min)
//   node scripts/run-tests.mjs [filter-substring ...] the files whose path contains a filter
//
// Only compiled files whose TypeScript source still exists run: a test deleted or moved in test/
// never runs from a stale dist/.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { spawnSync } from 'node:child_process';
import { availableParallelism } from 'node:os';

const repo = new URL('..', import.meta.url).pathname;
const LAYERS = ['unit', 'integration', 'e2e'];
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
const r = spawnSync(process.execPath, ['--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...selected], { stdio: 'inherit' });
process.exit(r.status ?? 1);
