/**
 * Kubernetes API errors → our typed errors, mapped once here (BRIEF §5.6). Works with the
 * ApiException of @kubernetes/client-node (`code` = HTTP status, `body` = the Status object, as
 * JSON text or parsed) and with the Error of its Watch (`statusCode`).
 */
import { ErrorCodes, MvmError, type ErrorCode, type FieldViolation } from '../core/errors.js';

export interface K8sStatus {
  kind?: string;
  status?: string;
  message?: string;
  reason?: string;
  code?: number;
  details?: { name?: string; kind?: string; causes?: Array<{ reason?: string; message?: string; field?: string }> };
}

/** HTTP status of a failed call, or undefined when the request never got an answer. */
export function httpStatus(e: unknown): number | undefined {
  const o = e as { code?: unknown; statusCode?: unknown } | null;
  if (typeof o?.code === 'number') return o.code;
  if (typeof o?.statusCode === 'number') return o.statusCode;
  return undefined;
}

export function k8sStatus(e: unknown): K8sStatus {
  const body = (e as { body?: unknown } | null)?.body;
  if (typeof body === 'string') {
    try {
      return JSON.parse(body) as K8sStatus;
    } catch {
      return { message: body };
    }
  }
  return body && typeof body === 'object' ? (body as K8sStatus) : {};
}

/** `spec.vcpu` → `vcpu`: the API's field names are relative to the resource body. */
const fieldOf = (f: string): string => f.replace(/^spec\./, '').replace(/^metadata\.name$/, 'name');

export function fromK8sError(e: unknown, what = 'request'): MvmError {
  if (e instanceof MvmError) return e;
  const code = httpStatus(e);
  const st = k8sStatus(e);
  const message = `${what}: ${st.message ?? (e instanceof Error ? e.message.split('\n')[0] : String(e))}`;
  const violations: FieldViolation[] = (st.details?.causes ?? []).filter((c) => c.field).map((c) => ({ field: fieldOf(c.field!), message: c.message ?? c.reason ?? 'invalid' }));
  if (code === 404 && st.details?.kind === undefined && /could not find the requested resource/.test(st.message ?? '')) {
    return new MvmError(ErrorCodes.UNAVAILABLE, `${what}: the API server does not serve this resource; are the CRDs installed (kubectl apply -f deploy/crds)?`, { cause: e });
  }
  let ec: ErrorCode;
  switch (code) {
    case 400:
    case 422:
      ec = ErrorCodes.VALIDATION_FAILED;
      break;
    case 401:
      ec = ErrorCodes.UNAUTHENTICATED;
      break;
    case 403:
      ec = ErrorCodes.PERMISSION_DENIED;
      break;
    case 404:
      ec = ErrorCodes.NOT_FOUND;
      break;
    case 409:
      ec = st.reason === 'AlreadyExists' ? ErrorCodes.ALREADY_EXISTS : ErrorCodes.CONFLICT;
      break;
    case 429:
      ec = ErrorCodes.RATE_LIMITED;
      break;
    case 504:
      ec = ErrorCodes.TIMEOUT;
      break;
    default:
      ec = code === undefined || code >= 500 ? ErrorCodes.UNAVAILABLE : ErrorCodes.INTERNAL;
  }
  return new MvmError(ec, message, { violations, details: { kubernetes: { code, reason: st.reason } }, cause: e });
}
