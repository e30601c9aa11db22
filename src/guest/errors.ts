/**
 * Typed errors of the guest agent client. GuestAgentError is an MvmError, so an edge (REST,
 * gRPC, CLI) that meets one maps it like any other; `agentCode` keeps the agent's own code
 * (ENOENT, EROFS, ...) and `code` is the service code it maps to (the table below).
 */
import { ErrorCodes, MvmError, type ErrorCode } from '../core/errors.js';
import { AgentErrorCodes, type AgentErrorCode } from './protocol.js';

export const AGENT_TO_SERVICE_CODE: Record<AgentErrorCode, ErrorCode> = {
  ENOENT: ErrorCodes.NOT_FOUND,
  ESRCH: ErrorCodes.NOT_FOUND,
  EACCES: ErrorCodes.PERMISSION_DENIED,
  EPERM: ErrorCodes.PERMISSION_DENIED,
  EROFS: ErrorCodes.CONFLICT,
  EISDIR: ErrorCodes.CONFLICT,
  ENOTDIR: ErrorCodes.CONFLICT,
  EEXIST: ErrorCodes.CONFLICT,
  ENOTEMPTY: ErrorCodes.CONFLICT,
  EXDEV: ErrorCodes.CONFLICT,
  ELOOP: ErrorCodes.CONFLICT,
  EBUSY: ErrorCodes.CONFLICT,
  ENOSPC: ErrorCodes.CONFLICT,
  // The guest refused a request valid by the schema (an unknown user, a tar entry escaping its target, /): 422.
  EINVAL: ErrorCodes.UNPROCESSABLE,
  UNSUPPORTED: ErrorCodes.CAPABILITY_UNSUPPORTED,
  ECONNREFUSED: ErrorCodes.UNAVAILABLE,
  ETIMEDOUT: ErrorCodes.TIMEOUT,
  TIMEOUT: ErrorCodes.TIMEOUT,
  CANCELLED: ErrorCodes.CONFLICT,
  LIMIT: ErrorCodes.RATE_LIMITED,
  DISCONNECTED: ErrorCodes.UNAVAILABLE,
  RESET: ErrorCodes.UNAVAILABLE,
  PROTOCOL: ErrorCodes.INTERNAL,
  INTERNAL: ErrorCodes.INTERNAL,
};

export class GuestAgentError extends MvmError {
  /** The agent's code (or the client's: DISCONNECTED, TIMEOUT, RESET). */
  readonly agentCode: AgentErrorCode;
  /** The guest path the error is about, when there is one. */
  readonly path: string | undefined;

  constructor(agentCode: AgentErrorCode, message: string, opts: { path?: string; cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(AGENT_TO_SERVICE_CODE[agentCode] ?? ErrorCodes.INTERNAL, message, { details: { agentCode, ...(opts.path ? { path: opts.path } : {}), ...opts.details }, cause: opts.cause });
    this.name = 'GuestAgentError';
    this.agentCode = agentCode;
    this.path = opts.path;
  }
}

export const isGuestAgentError = (e: unknown): e is GuestAgentError => e instanceof GuestAgentError;

/** An ERROR frame's body as a GuestAgentError (an unknown code becomes INTERNAL). */
export function fromErrorBody(body: unknown): GuestAgentError {
  const b = (body && typeof body === 'object' ? body : {}) as { code?: unknown; message?: unknown; path?: unknown };
  const code = typeof b.code === 'string' && (AgentErrorCodes as readonly string[]).includes(b.code) ? (b.code as AgentErrorCode) : 'INTERNAL';
  const message = typeof b.message === 'string' ? b.message : `agent error ${String(b.code)}`;
  return new GuestAgentError(code, message, typeof b.path === 'string' && b.path ? { path: b.path } : {});
}
