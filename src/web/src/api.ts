/**
 * The dashboard's client: the SDK's browser-safe core (sdk/typescript/src/core.ts, `@mvm/sdk/core`)
 * against the service that served the page. Only what a browser needs on top lives here: the
 * exec WebSocket (the browser's own), and how an error is shown.
 */
import { MvmApiError, MvmConnectionError, MvmCore, type FieldViolation } from '../../../sdk/typescript/src/core.js';

export { MvmApiError } from '../../../sdk/typescript/src/core.js';
export type { GuestFileStat, MetricsHistory, MicroVM, TenantUsage, VmEvent } from '../../../sdk/typescript/src/core.js';

export type Api = MvmCore;

/** A client of the service that served the page, with this token. */
export function connect(token: string): Api {
  return new MvmCore({ url: '', token });
}

/** A problem as the dashboard shows it: title, status · code, detail, the offending fields. */
export interface ShownProblem {
  title: string;
  status: number;
  code: string;
  detail: string;
  errors?: FieldViolation[];
}

export function shownProblem(error: unknown): ShownProblem {
  if (error instanceof MvmApiError) {
    return { title: error.problem.title ?? 'Request failed', status: error.status, code: error.code, detail: error.detail, ...(error.violations.length ? { errors: error.violations } : {}) };
  }
  if (error instanceof MvmConnectionError) return { title: 'Network error', status: 0, code: 'NETWORK', detail: `cannot reach the service: ${error.reason}` };
  return { title: 'Error', status: 0, code: 'CLIENT_ERROR', detail: error instanceof Error ? error.message : String(error) };
}

/** A check of the dashboard's own (no request made), shown like the service's problems. */
export function localProblem(title: string, code: string, detail: string): MvmApiError {
  return new MvmApiError(0, { title, code, detail });
}

/**
 * A WebSocket to an API route (exec): browsers cannot set Authorization on a WebSocket, so the
 * token goes as the subprotocol `bearer.<base64url(token)>` beside `mvm.v1` (docs/exec-api.md).
 */
export function openSocket(api: Api, path: string): WebSocket {
  const ws = new WebSocket(api.wsUrl(path), api.wsProtocols());
  ws.binaryType = 'arraybuffer';
  return ws;
}

/** Which optional endpoints this server has ("POST /api/v1/microvms/{id}/pause"…); none when unknown. */
export async function serverCapabilities(api: Api): Promise<Set<string>> {
  try {
    return await api.operations();
  } catch {
    return new Set();
  }
}
