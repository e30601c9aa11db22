/** REST client of the dashboard: bearer token, problem+json errors, streaming (text and SSE), WebSockets (exec), binary up- and downloads (guest files). */
import type { MetricsHistoryPointT, MicroVMT, ProblemT, VmEventT, VmMetricsHistoryT, VmMetricsT } from '../../core/schema';

export type MicroVM = MicroVMT;
export type VmMetrics = VmMetricsT;
export type VmEvent = VmEventT;
export type HistoryPoint = MetricsHistoryPointT;
export type MetricsHistory = VmMetricsHistoryT;
/** A problem+json error; the dashboard makes some itself (a network error), without a type URI. */
export type Problem = Omit<ProblemT, 'type'> & Partial<Pick<ProblemT, 'type'>>;

export class ApiError extends Error {
  constructor(readonly problem: Problem) {
    super(problem.detail || problem.title);
  }
  get status(): number {
    return this.problem.status;
  }
}

async function problemOf(res: Response): Promise<Problem> {
  const text = await res.text().catch(() => '');
  try {
    const p = JSON.parse(text) as Partial<Problem>;
    if (p && typeof p === 'object' && (p.code || p.detail)) {
      return { title: p.title ?? res.statusText, status: p.status ?? res.status, code: p.code ?? `HTTP_${res.status}`, detail: p.detail ?? '', ...(p.errors ? { errors: p.errors } : {}) };
    }
  } catch {
    /* not JSON */
  }
  return { title: res.statusText || 'Request failed', status: res.status, code: `HTTP_${res.status}`, detail: text.slice(0, 500) || `HTTP ${res.status}` };
}

function base64url(s: string): string {
  let bin = '';
  for (const b of new TextEncoder().encode(s)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

export class Api {
  constructor(
    readonly token: string,
    readonly base = '',
  ) {}

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { authorization: `Bearer ${this.token}`, ...extra };
  }

  async request<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.base}/api/v1${path}`, {
        method,
        headers: this.headers(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        ...(signal ? { signal } : {}),
      });
    } catch (e) {
      if ((e as Error).name === 'AbortError') throw e;
      throw new ApiError({ title: 'Network error', status: 0, code: 'NETWORK', detail: `cannot reach the service: ${(e as Error).message}` });
    }
    if (!res.ok) throw new ApiError(await problemOf(res));
    if (res.status === 204) return undefined as T;
    return (await res.json()) as T;
  }

  get<T>(path: string, signal?: AbortSignal): Promise<T> {
    return this.request<T>('GET', path, undefined, signal);
  }

  /** A binary download (a guest file): the body as a Blob. */
  async blob(path: string, signal?: AbortSignal): Promise<Blob> {
    let res: Response;
    try {
      res = await fetch(`${this.base}/api/v1${path}`, { headers: this.headers(), ...(signal ? { signal } : {}) });
    } catch (e) {
      if ((e as Error).name === 'AbortError') throw e;
      throw new ApiError({ title: 'Network error', status: 0, code: 'NETWORK', detail: `cannot reach the service: ${(e as Error).message}` });
    }
    if (!res.ok) throw new ApiError(await problemOf(res));
    return res.blob();
  }

  /** A binary upload (a guest file): PUT with the body as application/octet-stream. */
  async upload<T>(path: string, body: Blob): Promise<T> {
    let res: Response;
    try {
      res = await fetch(`${this.base}/api/v1${path}`, { method: 'PUT', headers: this.headers({ 'content-type': 'application/octet-stream' }), body });
    } catch (e) {
      throw new ApiError({ title: 'Network error', status: 0, code: 'NETWORK', detail: `cannot reach the service: ${(e as Error).message}` });
    }
    if (!res.ok) throw new ApiError(await problemOf(res));
    return (await res.json()) as T;
  }

  /** A text stream (chunked), one decoded chunk at a time. */
  async *text(path: string, signal: AbortSignal): AsyncGenerator<string> {
    const res = await fetch(`${this.base}/api/v1${path}`, { headers: this.headers(), signal });
    if (!res.ok || !res.body) throw new ApiError(await problemOf(res));
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      if (value) yield value;
    }
  }

  /**
   * A WebSocket to an API route (exec): browsers cannot set Authorization on a WebSocket, so the
   * token goes as the subprotocol `bearer.<base64url(token)>` beside `mvm.v1` (docs/exec-api.md).
   */
  socket(path: string): WebSocket {
    const url = new URL(`${this.base}/api/v1${path}`, location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(url, ['mvm.v1', `bearer.${base64url(this.token)}`]);
    ws.binaryType = 'arraybuffer';
    return ws;
  }

  /** Server-Sent Events over fetch (EventSource cannot send the Authorization header). */
  async *sse(path: string, signal: AbortSignal, lastEventId?: string, onOpen?: () => void): AsyncGenerator<{ id?: string; data: string }> {
    const res = await fetch(`${this.base}/api/v1${path}`, {
      headers: this.headers({ accept: 'text/event-stream', ...(lastEventId ? { 'last-event-id': lastEventId } : {}) }),
      signal,
    });
    if (!res.ok || !res.body) throw new ApiError(await problemOf(res));
    onOpen?.();
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += value;
      let i: number;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let id: string | undefined;
        const data: string[] = [];
        for (const line of block.split('\n')) {
          if (line.startsWith('id:')) id = line.slice(3).trim();
          else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''));
        }
        if (data.length) yield { ...(id !== undefined ? { id } : {}), data: data.join('\n') };
      }
    }
  }
}

/** Paths of the served OpenAPI document: which optional endpoints this server has. */
export async function serverCapabilities(base = ''): Promise<Set<string>> {
  try {
    const res = await fetch(`${base}/api/v1/openapi.json`);
    if (!res.ok) return new Set();
    const doc = (await res.json()) as { paths?: Record<string, Record<string, unknown>> };
    const out = new Set<string>();
    for (const [p, ops] of Object.entries(doc.paths ?? {})) for (const m of Object.keys(ops)) out.add(`${m.toUpperCase()} ${p}`);
    return out;
  } catch {
    return new Set();
  }
}
