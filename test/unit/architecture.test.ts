/**
 * The layout rules of ADR 0001, checked on the sources: no import cycle among the files of src/
 * (type-only imports count: a cycle of types is still a cycle for a reader), and the core imports
 * nothing outside src/core/.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const SRC = join(REPO, 'src');

/** Every .ts/.tsx file of src/ with the src files it imports (relative imports, any kind). */
function importGraph(): Map<string, string[]> {
  const files: string[] = [];
  (function walk(d: string): void {
    for (const e of readdirSync(d)) {
      const p = join(d, e);
      if (statSync(p).isDirectory()) {
        if (e !== 'node_modules' && e !== 'generated') walk(p);
      } else if (/\.tsx?$/.test(e) && !e.endsWith('.d.ts')) files.push(p);
    }
  })(SRC);
  const known = new Set(files);
  const graph = new Map<string, string[]>();
  const spec = /(?:^|\n)\s*(?:import|export)\b[^'";]*?\bfrom\s*['"](\.{1,2}\/[^'"]+)['"]|(?:^|\n)\s*import\s*['"](\.{1,2}\/[^'"]+)['"]|\bimport\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g;
  for (const f of files) {
    const deps = new Set<string>();
    for (const m of readFileSync(f, 'utf8').matchAll(spec)) {
      const target = resolve(dirname(f), (m[1] ?? m[2] ?? m[3])!);
      for (const cand of [target.replace(/\.js$/, '.ts'), target.replace(/\.js$/, '.tsx'), target]) {
        if (known.has(cand)) {
          deps.add(cand);
          break;
        }
      }
    }
    graph.set(f, [...deps]);
  }
  return graph;
}

/** Strongly connected components with more than one file (Tarjan), or a file importing itself. */
function cycles(graph: Map<string, string[]>): string[][] {
  let index = 0;
  const stack: string[] = [];
  const onStack = new Set<string>();
  const idx = new Map<string, number>();
  const low = new Map<string, number>();
  const out: string[][] = [];
  const visit = (v: string): void => {
    idx.set(v, index);
    low.set(v, index);
    index++;
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!idx.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) low.set(v, Math.min(low.get(v)!, idx.get(w)!));
    }
    if (low.get(v) === idx.get(v)) {
      const comp: string[] = [];
      let w: string;
      do {
        w = stack.pop()!;
        onStack.delete(w);
        comp.push(w);
      } while (w !== v);
      if (comp.length > 1 || (graph.get(v) ?? []).includes(v)) out.push(comp.map((x) => relative(SRC, x)).sort());
    }
  };
  for (const v of graph.keys()) if (!idx.has(v)) visit(v);
  return out;
}

test('the cycle finder finds a planted cycle (so an empty answer below means something)', () => {
  const g = new Map<string, string[]>([
    [join(SRC, 'a.ts'), [join(SRC, 'b.ts')]],
    [join(SRC, 'b.ts'), [join(SRC, 'c.ts')]],
    [join(SRC, 'c.ts'), [join(SRC, 'a.ts')]],
    [join(SRC, 'd.ts'), [join(SRC, 'a.ts')]],
  ]);
  assert.deepEqual(cycles(g), [['a.ts', 'b.ts', 'c.ts']]);
});

test('no import cycle among the files of src/', () => {
  const g = importGraph();
  assert.ok(g.size > 150, `read ${g.size} files`);
  assert.ok([...g.values()].some((d) => d.length > 0), 'imports were found');
  assert.deepEqual(cycles(g), [], 'import cycles (type-only imports included)');
});

test('src/core imports nothing outside src/core', () => {
  const core = join(SRC, 'core') + '/';
  const bad: string[] = [];
  for (const [f, deps] of importGraph()) {
    if (!f.startsWith(core)) continue;
    for (const d of deps) if (!d.startsWith(core)) bad.push(`${relative(SRC, f)} -> ${relative(SRC, d)}`);
  }
  assert.deepEqual(bad, []);
});
