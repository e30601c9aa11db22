/**
 * The HTTP pieces both sides of the node agent's endpoint share (ADR 0015): the server's answers
 * (JSON, typed errors with their code in x-mvm-code), the route-group shape the server plugs in
 * (volumes.ts, images.ts), and the client's reading of those answers (the API raises the node's
 * typed error again as it is).
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { ErrorCodes, MvmError, asMvmError, type ErrorCode } from '../../core/errors.js';
import { HTTP_STATUS } from '../../gateway/problem.js';

/** The Node annotation holding the URL of its agent's endpoint. */
export const ANN_AGENT_ENDPOINT = 'microvm.service/agent-endpoint';

/** A request as the endpoint's routes see it: the path percent-decoded once (sha256%3A… as sha256:…). */
export interface EndpointRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  /** The request itself (headers such as Range, a body to read). */
  raw?: IncomingMessage;
}

/**
 * A group of routes plugged into the endpoint (volumes.ts, images.ts), called after the token is
 * reviewed; `access(verb)` is the SubjectAccessReview of its cluster-wide resource. Returns false
 * when the request is not one of its routes.
 */
export type EndpointRoutes<Verb extends string> = (req: EndpointRequest, access: (verb: Verb) => Promise<boolean>, res: ServerResponse) => Promise<boolean>;

/** A group of routes and the cluster-wide resource its SubjectAccessReviews name (`<resource>/<subresource>`). */
export interface EndpointRouteGroup<Verb extends string = string> {
  resource: string;
  subresource: string;
  handle: EndpointRoutes<Verb>;
}

/** A JSON answer. */
export function answerJson(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  res.writeHead(status, { 'content-type': 'application/json', ...headers });
  res.end(JSON.stringify(body));
}

/** A typed error as {status, code, message}, the code also in x-mvm-code (the API raises it again as it is: agentError). */
export function answerError(res: ServerResponse, e: unknown): void {
  const err = asMvmError(e);
  const status = HTTP_STATUS[err.code] ?? 500;
  answerJson(res, status, { status, code: err.code, message: err.message }, { 'x-mvm-code': err.code });
}

const CODES = new Set<string>(Object.values(ErrorCodes));

/** An authenticated request to a node's agent, any answer returned (RemoteNodeAgents.call). */
export type AgentCall = (node: string, method: string, path: string, timeoutMs?: number) => Promise<IncomingMessage>;

/**
 * A node agent's failed answer: its own typed error (header x-mvm-code) is raised again as it is
 * (ILLEGAL_TRANSITION, CAPABILITY_UNSUPPORTED, ...); anything else — 401/403 (this installation's
 * RBAC or tokens, not the caller's fault), a VM no longer there — is UNAVAILABLE for the caller.
 */
export async function agentError(node: string, res: IncomingMessage, what: string): Promise<MvmError> {
  const body = await readText(res);
  let msg = body;
  try {
    msg = (JSON.parse(body) as { message?: string }).message ?? body;
  } catch {
    // plain text
  }
  const code = res.headers['x-mvm-code'];
  if (typeof code === 'string' && CODES.has(code)) return new MvmError(code as ErrorCode, msg);
  return new MvmError(ErrorCodes.UNAVAILABLE, `${what}: the agent of node ${node} answered ${res.statusCode}: ${msg}`, { details: { agentStatus: res.statusCode } });
}

/** A node agent's answer: its JSON on 200 (`{}` when empty), else its error (agentError) raised. */
export async function agentResult<T>(node: string, res: IncomingMessage, what: string): Promise<T> {
  if (res.statusCode !== 200) throw await agentError(node, res, what);
  const body = await readText(res);
  return (body ? JSON.parse(body) : {}) as T;
}

export async function readText(res: IncomingMessage): Promise<string> {
  const parts: Buffer[] = [];
  for await (const c of res) parts.push(c as Buffer);
  return Buffer.concat(parts).toString('utf8');
}
