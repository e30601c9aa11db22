/**
 * Client-side validation of the create form against the API's own schema
 * (src/core/schema.ts, the TypeBox definitions that validate requests on the
 * server), so the form and the API agree field by field.
 */
import { Value } from '@sinclair/typebox/value';
import { CreateMicroVMRequest, type CreateMicroVMRequestT } from '../../core/schema';

export type FieldErrors = Record<string, string>;

const MIN_MEMORY_MIB = 128;
const MAX_MEMORY_MIB = 8 * 1024;

function field(path: string): string {
  const parts = path.replace(/^\//, '').split('/').filter(Boolean);
  return parts.map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : i ? `.${p}` : p)).join('').replace(/\.\[/g, '[') || 'body';
}

export function validateCreate(body: CreateMicroVMRequestT): FieldErrors {
  const errors: FieldErrors = {};
  for (const e of Value.Errors(CreateMicroVMRequest, body)) {
    const f = field(e.path);
    if (!errors[f]) errors[f] = humanize(f, e.message);
  }
  // The server's domain check beyond the schema pattern (core/microvm.ts validateSpec).
  // A well-formed quantity out of range gets the range, not the schema's generic pattern message.
  const mem = body.memory ? /^([1-9][0-9]*)(Mi|Gi)$/.exec(body.memory) : null;
  if (mem) {
    const mib = Number(mem[1]) * (mem[2] === 'Gi' ? 1024 : 1);
    if (mib < MIN_MEMORY_MIB || mib > MAX_MEMORY_MIB) errors.memory = `must be between 128Mi and 8Gi, got ${body.memory}`;
  }
  return errors;
}

function humanize(f: string, msg: string): string {
  if (/pattern|to match/i.test(msg)) {
    if (f === 'name') return 'lowercase letters, digits and "-", starting and ending with a letter or digit';
    if (f === 'memory' || f.endsWith('size')) return 'a quantity like 128Mi or 1Gi';
    if (f.startsWith('labels')) return 'label keys are like "app" or "example.com/team"';
  }
  return msg;
}

/** "a=b, c=d" or one per line -> labels; returns an error message for a malformed entry. */
export function parseLabels(text: string): { labels: Record<string, string>; error?: string } {
  const labels: Record<string, string> = {};
  for (const part of text.split(/[\n,]/).map((s) => s.trim()).filter(Boolean)) {
    const m = /^([^=]+)=(.*)$/.exec(part);
    if (!m) return { labels, error: `"${part}" is not key=value` };
    labels[m[1]!.trim()] = m[2]!.trim();
  }
  return { labels };
}
