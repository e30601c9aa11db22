/** Parsers of CLI argument values. They throw UsageError with a message fit for `error: …`. */
import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { PHASES } from '../core/microvm.js';

export class UsageError extends Error {
  override name = 'UsageError';
}

/** `120s`, `2m`, `1h`, `500ms`, `1.5s` or a bare number of seconds → milliseconds. */
export function parseDuration(s: string, what = 'duration'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/.exec(s);
  if (!m) throw new UsageError(`invalid ${what} ${JSON.stringify(s)} (expected e.g. 30s, 2m, 1h, 500ms)`);
  const n = Number(m[1]);
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[(m[2] ?? 's') as 'ms' | 's' | 'm' | 'h'];
  const ms = Math.round(n * mult);
  if (ms <= 0) throw new UsageError(`invalid ${what} ${JSON.stringify(s)}: must be positive`);
  return ms;
}

export function parseIntArg(s: string, what: string, min = 0): number {
  if (!/^\s*\d+\s*$/.test(s)) throw new UsageError(`${what} must be a whole number, got ${JSON.stringify(s)}`);
  const n = Number(s);
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError(`${what} must be at least ${min}, got ${s}`);
  return n;
}

/** `k=v` → [k, v]. */
export function parseLabel(s: string): [string, string] {
  const i = s.indexOf('=');
  if (i <= 0) throw new UsageError(`invalid label ${JSON.stringify(s)} (expected key=value)`);
  return [s.slice(0, i), s.slice(i + 1)];
}

export function parseLabels(list: string[] | undefined): Record<string, string> | undefined {
  if (!list || list.length === 0) return undefined;
  const out: Record<string, string> = {};
  for (const l of list) {
    const [k, v] = parseLabel(l);
    out[k] = v;
  }
  return out;
}

/** Label edits of `update`: `k=v` sets, `k-` removes. */
export function parseLabelEdits(list: string[]): { set: Record<string, string>; remove: string[] } {
  const set: Record<string, string> = {};
  const remove: string[] = [];
  for (const l of list) {
    if (!l.includes('=') && l.endsWith('-') && l.length > 1) remove.push(l.slice(0, -1));
    else {
      const [k, v] = parseLabel(l);
      set[k] = v;
    }
  }
  return { set, remove };
}

/** Case-insensitive phase name → canonical spelling. */
export function parsePhase(s: string): string {
  const p = PHASES.find((x) => x.toLowerCase() === s.trim().toLowerCase());
  if (!p) throw new UsageError(`unknown phase ${JSON.stringify(s)} (one of ${PHASES.join(', ')})`);
  return p;
}

export function collect(value: string, previous: string[] | undefined): string[] {
  return [...(previous ?? []), value];
}

/** A JSON or YAML file ("-": stdin) holding one object; a shallow copy of it. */
export function readDoc(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = path === '-' ? readFileSync(0, 'utf8') : readFileSync(path, 'utf8');
  } catch (e) {
    throw new UsageError(`cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text); // YAML is a superset of JSON
  } catch (e) {
    throw new UsageError(`cannot parse ${path}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw new UsageError(`${path} must contain an object`);
  return { ...(doc as Record<string, unknown>) };
}
