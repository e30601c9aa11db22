/**
 * The one mapping of error codes to HTTP (RFC 9457 problem+json). gRPC and
 * Kubernetes conditions have their own single tables beside their edges.
 */
import type { ErrorObject } from 'ajv';
import { ErrorCodes, MvmError, isMvmError, type ErrorCode, type FieldViolation } from '../core/errors.js';

export const HTTP_STATUS: Record<ErrorCode, number> = {
  VALIDATION_FAILED: 400,
  NOT_FOUND: 404,
  ALREADY_EXISTS: 409,
  ILLEGAL_TRANSITION: 409,
  FIELD_IMMUTABLE: 422,
  CONFLICT: 409,
  UNAUTHENTICATED: 401,
  PERMISSION_DENIED: 403,
  QUOTA_EXCEEDED: 403,
  RATE_LIMITED: 429,
  CAPABILITY_UNSUPPORTED: 501,
  NO_CAPACITY: 503,
  VMM_ERROR: 502,
  IMAGE_ERROR: 422,
  REGISTRY_NOT_ALLOWED: 403,
  SIGNATURE_VERIFICATION_FAILED: 403,
  UNAVAILABLE: 503,
  TIMEOUT: 408,
  VM_FAILED: 409,
  AGENT_UNAVAILABLE: 409,
  UNPROCESSABLE: 422,
  UPGRADE_REQUIRED: 426,
  METHOD_NOT_ALLOWED: 405,
  PAYLOAD_TOO_LARGE: 413,
  UNSUPPORTED_MEDIA_TYPE: 415,
  URI_TOO_LONG: 414,
  HEADERS_TOO_LARGE: 431,
  INTERNAL: 500,
};

const TITLES: Partial<Record<ErrorCode, string>> = {
  VALIDATION_FAILED: 'Invalid request',
  NOT_FOUND: 'Not found',
  ILLEGAL_TRANSITION: 'Illegal state transition',
  UNAUTHENTICATED: 'Authentication required',
  URI_TOO_LONG: 'URI too long',
};

export interface ProblemBody {
  type: string;
  title: string;
  status: number;
  code: string;
  detail: string;
  instance?: string;
  errors?: FieldViolation[];
  [k: string]: unknown;
}

export function toProblem(e: MvmError, instance?: string): ProblemBody {
  const status = HTTP_STATUS[e.code] ?? 500;
  const body: ProblemBody = {
    type: `https://microvm.service/problems/${e.code.toLowerCase().replace(/_/g, '-')}`,
    title: TITLES[e.code] ?? e.code.replace(/_/g, ' ').toLowerCase().replace(/^./, (c) => c.toUpperCase()),
    status,
    code: e.code,
    detail: e.message,
  };
  if (instance) body.instance = instance;
  if (e.violations.length) body.errors = e.violations;
  for (const [k, v] of Object.entries(e.details)) if (!(k in body)) body[k] = v;
  return body;
}

/** Turn Ajv errors into field violations named like the request: "vcpu", "rootfs.size", "labels.app". */
export function ajvToMvmError(errors: ErrorObject[], context: string): MvmError {
  const seen = new Set<string>();
  const violations: FieldViolation[] = [];
  // A union of literals fails as one `const` per branch plus an `anyOf`: name the allowed values
  // at that field unless a more specific error already names something there.
  const allowed = new Map<string, unknown[]>();
  const unions: string[] = [];
  for (const err of errors) {
    const field = formatPath(err.instancePath.replace(/^\//, '').split('/').filter(Boolean).map(unescapePointer)) || context;
    if (err.keyword === 'const') allowed.set(field, [...(allowed.get(field) ?? []), (err.params as { allowedValue: unknown }).allowedValue]);
    else if (err.keyword === 'enum') allowed.set(field, [...(allowed.get(field) ?? []), ...((err.params as { allowedValues: unknown[] }).allowedValues ?? [])]);
    else if (err.keyword === 'anyOf' && !unions.includes(field)) unions.push(field);
  }
  // Rules between fields (schema.ts exclusive / requiredUnless / excludes; needs Ajv's `verbose`)
  // are named by their field; the errors of their branches say nothing more.
  const ruled = new Set<string>();
  const fieldRules: FieldViolation[] = [];
  for (const err of errors) {
    const ps = (err.parentSchema ?? {}) as Record<string, unknown>;
    const base = err.instancePath.replace(/^\//, '').split('/').filter(Boolean).map(unescapePointer);
    const data = (err.data ?? {}) as Record<string, unknown>;
    const at = (f: string): string => formatPath([...base, f]);
    if (err.keyword === 'oneOf' && Array.isArray(ps['x-exclusive'])) {
      const [a, b] = ps['x-exclusive'] as [string, string];
      fieldRules.push({ field: at(b), message: `give ${a} or ${b}, not both` });
    } else if (err.keyword === 'anyOf' && Array.isArray(ps['x-required-unless'])) {
      const [f, other] = ps['x-required-unless'] as [string, string];
      fieldRules.push({ field: at(f), message: `is required unless ${other} is given` });
    } else if (err.keyword === 'not' && ps['x-excludes'] && err.schemaPath.endsWith('/not')) {
      const { field, others } = ps['x-excludes'] as { field: string; others: string[] };
      for (const o of others) if (data[o] !== undefined) fieldRules.push({ field: at(o), message: `comes from ${field}: omit it` });
    } else if (err.keyword === 'not' && typeof (err.schema as { pattern?: unknown } | undefined)?.pattern === 'string') {
      fieldRules.push({ field: formatPath(base) || context, message: `must not match ${(err.schema as { pattern: string }).pattern}` });
    } else continue;
    ruled.add(err.instancePath);
  }
  for (const err of errors) {
    let path = err.instancePath.replace(/^\//, '').split('/').filter(Boolean).map(unescapePointer);
    let message = err.message ?? 'is invalid';
    // A rule's branches (`required` inside a oneOf/anyOf/not) were reported by the rule itself.
    if (ruled.has(err.instancePath) && /\/(oneOf|anyOf|not)(\/|$)/.test(err.schemaPath)) continue;
    if (ruled.has(err.instancePath) && (err.keyword === 'oneOf' || err.keyword === 'anyOf' || err.keyword === 'not')) continue;
    if (err.keyword === 'additionalProperties') {
      path = [...path, String((err.params as { additionalProperty: string }).additionalProperty)];
      message = 'unknown field';
    } else if (err.keyword === 'required') {
      path = [...path, String((err.params as { missingProperty: string }).missingProperty)];
      message = 'is required';
    } else if (err.keyword === 'type') {
      message = `must be ${(err.params as { type: string }).type}`;
    } else if (err.keyword === 'anyOf' || err.keyword === 'const') {
      continue; // union noise; the specific branch errors say more
    }
    const field = formatPath(path) || context;
    const key = `${field}|${message}`;
    if (seen.has(key)) continue;
    seen.add(key);
    violations.push({ field, message });
  }
  for (const v of fieldRules) {
    if (seen.has(`${v.field}|${v.message}`)) continue;
    seen.add(`${v.field}|${v.message}`);
    violations.push(v);
  }
  for (const field of unions) {
    const named = violations.some((v) => v.field === field || v.field.startsWith(`${field}.`) || v.field.startsWith(`${field}[`) || (field === context && v.field !== context));
    if (named) continue;
    const values = allowed.get(field);
    violations.push({ field, message: values?.length ? `must be one of ${values.map((v) => JSON.stringify(v)).join(', ')}` : 'is invalid' });
  }
  if (violations.length === 0) violations.push({ field: context, message: 'is invalid' });
  const detail = violations.map((v) => `${v.field}: ${v.message}`).join('; ');
  return new MvmError(ErrorCodes.VALIDATION_FAILED, detail, { violations });
}

function unescapePointer(s: string): string {
  return s.replace(/~1/g, '/').replace(/~0/g, '~');
}

function formatPath(parts: string[]): string {
  let out = '';
  for (const p of parts) {
    if (/^\d+$/.test(p)) out += `[${p}]`;
    else out += out ? `.${p}` : p;
  }
  return out;
}

export function errorFrom(e: unknown): MvmError {
  if (isMvmError(e)) return e;
  const err = e as { statusCode?: number; code?: string; message?: string };
  if (err && err.code === 'FST_ERR_CTP_INVALID_MEDIA_TYPE') {
    return new MvmError(ErrorCodes.UNSUPPORTED_MEDIA_TYPE, 'body: Content-Type must be application/json', { violations: [{ field: 'body', message: 'must be JSON' }] });
  }
  if (err && (err.code === 'FST_ERR_CTP_EMPTY_JSON_BODY' || err.code === 'FST_ERR_CTP_INVALID_JSON_BODY' || (err.statusCode === 400 && /JSON/.test(err.message ?? '')))) {
    return new MvmError(ErrorCodes.VALIDATION_FAILED, `body: ${err.message ?? 'invalid JSON'}`, { violations: [{ field: 'body', message: 'invalid JSON' }] });
  }
  if (err && err.statusCode === 413) return new MvmError(ErrorCodes.PAYLOAD_TOO_LARGE, 'body: request body too large', { violations: [{ field: 'body', message: 'too large' }] });
  if (err && err.code === 'FST_ERR_MAX_PARAM_LENGTH') return new MvmError(ErrorCodes.URI_TOO_LONG, 'a path segment is too long', { violations: [{ field: 'path', message: 'too long' }] });
  if (err && err.code === 'FST_ERR_BAD_URL') return new MvmError(ErrorCodes.VALIDATION_FAILED, 'path: not a valid URL (bad percent-encoding)', { violations: [{ field: 'path', message: 'invalid URL encoding' }] });
  if (err && err.statusCode === 404) return new MvmError(ErrorCodes.NOT_FOUND, err.message ?? 'not found');
  if (err && err.statusCode === 415) return new MvmError(ErrorCodes.UNSUPPORTED_MEDIA_TYPE, err.message ?? 'unsupported media type', { violations: [{ field: 'body', message: 'unsupported media type' }] });
  return new MvmError(ErrorCodes.INTERNAL, 'internal error', { cause: e });
}
