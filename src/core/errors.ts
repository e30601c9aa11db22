/**
 * Typed errors with stable codes. The core throws these; each edge (REST, gRPC,
 * Kubernetes conditions, CLI) maps them exactly once (see src/gateway/problem.ts).
 */
export const ErrorCodes = {
  VALIDATION_FAILED: 'VALIDATION_FAILED',
  NOT_FOUND: 'NOT_FOUND',
  ALREADY_EXISTS: 'ALREADY_EXISTS',
  ILLEGAL_TRANSITION: 'ILLEGAL_TRANSITION',
  FIELD_IMMUTABLE: 'FIELD_IMMUTABLE',
  CONFLICT: 'CONFLICT',
  UNAUTHENTICATED: 'UNAUTHENTICATED',
  PERMISSION_DENIED: 'PERMISSION_DENIED',
  QUOTA_EXCEEDED: 'QUOTA_EXCEEDED',
  RATE_LIMITED: 'RATE_LIMITED',
  CAPABILITY_UNSUPPORTED: 'CAPABILITY_UNSUPPORTED',
  NO_CAPACITY: 'NO_CAPACITY',
  VMM_ERROR: 'VMM_ERROR',
  IMAGE_ERROR: 'IMAGE_ERROR',
  /** An image reference names a registry the admin's image policy does not allow (403). */
  REGISTRY_NOT_ALLOWED: 'REGISTRY_NOT_ALLOWED',
  /** The image policy requires a signature and the image has none by a trusted key (403). */
  SIGNATURE_VERIFICATION_FAILED: 'SIGNATURE_VERIFICATION_FAILED',
  UNAVAILABLE: 'UNAVAILABLE',
  TIMEOUT: 'TIMEOUT',
  VM_FAILED: 'VM_FAILED',
  /** exec, files, port forwarding: the VM's guest agent is not there or does not answer (409). */
  AGENT_UNAVAILABLE: 'AGENT_UNAVAILABLE',
  /**
   * Valid by the published schema, but breaking a rule the schema cannot state (a relation between
   * fields, e.g. cmd[0] empty, fork names vs count): 422 naming the field. A schema violation is 400.
   */
  UNPROCESSABLE: 'UNPROCESSABLE',
  /** A WebSocket endpoint called without the upgrade (426). */
  UPGRADE_REQUIRED: 'UPGRADE_REQUIRED',
  /** The path exists but not with this HTTP method (REST only: 405 with `Allow`). */
  METHOD_NOT_ALLOWED: 'METHOD_NOT_ALLOWED',
  /** The request body's Content-Type is not one the operation takes (415). */
  UNSUPPORTED_MEDIA_TYPE: 'UNSUPPORTED_MEDIA_TYPE',
  /** The request body is over the limit (413). */
  PAYLOAD_TOO_LARGE: 'PAYLOAD_TOO_LARGE',
  /** The request line and headers are over Node's limit (431; answered before any route). */
  HEADERS_TOO_LARGE: 'HEADERS_TOO_LARGE',
  /** A path segment is over the router's limit (414). */
  URI_TOO_LONG: 'URI_TOO_LONG',
  INTERNAL: 'INTERNAL',
} as const;

export type ErrorCode = (typeof ErrorCodes)[keyof typeof ErrorCodes];

export interface FieldViolation {
  /** JSON-pointer-ish path of the offending field, e.g. "vcpu" or "rootfs.size". */
  field: string;
  message: string;
}

export class MvmError extends Error {
  readonly code: ErrorCode;
  readonly violations: FieldViolation[];
  readonly details: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, opts: { violations?: FieldViolation[]; details?: Record<string, unknown>; cause?: unknown } = {}) {
    super(message, opts.cause !== undefined ? { cause: opts.cause } : undefined);
    this.name = 'MvmError';
    this.code = code;
    this.violations = opts.violations ?? [];
    this.details = opts.details ?? {};
  }
}

export const validationError = (field: string, message: string): MvmError =>
  new MvmError(ErrorCodes.VALIDATION_FAILED, `${field}: ${message}`, { violations: [{ field, message }] });

export const unprocessable = (field: string, message: string): MvmError =>
  new MvmError(ErrorCodes.UNPROCESSABLE, `${field}: ${message}`, { violations: [{ field, message }] });

export const notFound = (kind: string, id: string): MvmError =>
  new MvmError(ErrorCodes.NOT_FOUND, `${kind} ${JSON.stringify(id)} not found`, { details: { kind, id } });

export const isMvmError = (e: unknown): e is MvmError => e instanceof MvmError;

/** Wrap anything thrown into an MvmError without losing a typed one. */
export function asMvmError(e: unknown, code: ErrorCode = ErrorCodes.INTERNAL): MvmError {
  if (e instanceof MvmError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new MvmError(code, msg, { cause: e });
}
