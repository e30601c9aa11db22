/**
 * Typed HTTP client of the MicroVM REST API (`/api/v1`). Uses the global fetch.
 * Free of CLI concerns: it is shared by the `mvm` CLI, the tests and the benchmarks.
 */
import type { CreateMicroVMRequestT, MicroVMT, PhaseT, UpdateMicroVMRequestT, VmMetricsT } from '../core/schema.js';
import type { CreateVolumeRequestT, VolumeSnapshotT, VolumeT } from '../core/schema.js';
import type { SecurityGroupRequestT, SecurityGroupT, SecurityGroupUpdateT, SnapshotT } from '../core/schema.js';
import type { CreateTemplateRequestT, TemplateT } from '../core/schema.js';
import type { ApiKeyT, AuditEntryT, CreateApiKeyRequestT, CreateTenantRequestT, TenantT, TenantUsageT, UpdateTenantRequestT } from '../core/tenancy-schema.js';
import type { AuditQuery } from '../core/ports/audit.js';
import type { CachedImage, ImageGcResult } from '../core/ports/images.js';

export type MicroVM = MicroVMT;
export type Phase = PhaseT;
export type CreateRequest = CreateMicroVMRequestT;
export type UpdateRequest = UpdateMicroVMRequestT;
export type VmMetrics = VmMetricsT;

export interface MicroVMList {
  items: MicroVM[];
  next_cursor?: string;
}

export interface ListParams {
  limit?: number;
  cursor?: string;
  phase?: string;
  /** Label selectors, each `k=v`; sent as one `label` query parameter per entry. */
  labels?: string[];
}

export interface FieldError {
  field: string;
  message: string;
}

export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  code?: string;
  detail?: string;
  instance?: string;
  errors?: FieldError[];
  [k: string]: unknown;
}

/** A non-2xx answer of the API, parsed from application/problem+json when possible. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  readonly errors: FieldError[];
  readonly problem: Problem;

  constructor(status: number, problem: Problem) {
    const detail = problem.detail ?? problem.title ?? `HTTP ${status}`;
    super(detail);
    this.name = 'ApiError';
    this.status = status;
    this.code = problem.code ?? codeForStatus(status);
    this.detail = detail;
    this.errors = Array.isArray(problem.errors) ? problem.errors : [];
    this.problem = problem;
  }
}

/** The service could not be reached at all (refused, DNS failure, reset, timeout). */
export class ConnectionError extends Error {
  readonly url: string;
  /** Node error code of the root cause, e.g. ECONNREFUSED, ENOTFOUND, or TIMEOUT. */
  readonly errno: string | undefined;
  /** Short cause: the errno, or the root error's message. */
  readonly reason: string;

  constructor(url: string, errno: string | undefined, reason: string, message: string, cause?: unknown) {
    super(message, cause !== undefined ? { cause } : undefined);
    this.name = 'ConnectionError';
    this.url = url;
    this.errno = errno;
    this.reason = reason;
  }
}

/** `waitFor` / `waitDeleted` reached the caller's deadline. */
export class WaitTimeoutError extends Error {
  readonly lastSeen: MicroVM | undefined;
  readonly timeoutMs: number;

  constructor(timeoutMs: number, lastSeen: MicroVM | undefined) {
    super(`timed out after ${formatMs(timeoutMs)}`);
    this.name = 'WaitTimeoutError';
    this.timeoutMs = timeoutMs;
    this.lastSeen = lastSeen;
  }
}

export interface ClientOptions {
  /** Base URL of the service, e.g. http://127.0.0.1:8080 (a trailing /api/v1 is tolerated). */
  baseUrl: string;
  token?: string | undefined;
  /** Per-request timeout for ordinary calls (ms). Default 30 s. Long-polls extend it. */
  requestTimeoutMs?: number;
  userAgent?: string;
  fetch?: typeof fetch;
}

export interface WaitParams {
  phase: string;
  ready?: boolean;
  /** Server-side long-poll timeout (ms); sent as whole seconds, at least 1 s. */
  timeoutMs?: number;
  signal?: AbortSignal;
}

export interface WaitForOptions {
  phase: string;
  ready?: boolean;
  /** Overall deadline (ms). */
  timeoutMs: number;
  /** Longest single long-poll (ms); shorter polls refresh progress more often. Default 5 s. */
  pollMs?: number;
  /** Called with the VM's current state whenever it was (re)fetched. */
  onProgress?: (vm: MicroVM) => void;
  signal?: AbortSignal;
}

export interface WaitDeletedOptions {
  timeoutMs: number;
  intervalMs?: number;
  onProgress?: (vm: MicroVM) => void;
  signal?: AbortSignal;
}

export interface ConsoleParams {
  follow?: boolean;
  tail?: number;
  signal?: AbortSignal;
}

const STATUS_CODES: Record<number, string> = {
  400: 'VALIDATION_FAILED',
  401: 'UNAUTHENTICATED',
  403: 'PERMISSION_DENIED',
  404: 'NOT_FOUND',
  408: 'TIMEOUT',
  409: 'CONFLICT',
  422: 'VALIDATION_FAILED',
  429: 'RATE_LIMITED',
  503: 'UNAVAILABLE',
  504: 'TIMEOUT',
};

function codeForStatus(status: number): string {
  return STATUS_CODES[status] ?? (status >= 500 ? 'INTERNAL' : 'HTTP_' + String(status));
}

export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  if (s < 60) return `${Number.isInteger(s) ? s : s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  const rs = Math.round(s - m * 60);
  return rs ? `${m}m${rs}s` : `${m}m`;
}

/** Walk an error's cause chain (and AggregateError members) for a Node errno code. */
function findErrno(e: unknown, depth = 0): string | undefined {
  if (!e || typeof e !== 'object' || depth > 5) return undefined;
  const o = e as { code?: unknown; cause?: unknown; errors?: unknown };
  if (typeof o.code === 'string' && /^E[A-Z_]+$/.test(o.code)) return o.code;
  if (Array.isArray(o.errors)) {
    for (const x of o.errors) {
      const c = findErrno(x, depth + 1);
      if (c) return c;
    }
  }
  return findErrno(o.cause, depth + 1);
}

function rootMessage(e: unknown): string {
  let cur: unknown = e;
  for (let i = 0; i < 5; i++) {
    const c = (cur as { cause?: unknown } | undefined)?.cause;
    if (!c) break;
    cur = c;
  }
  return cur instanceof Error ? cur.message : String(cur);
}

export function isTerminalFailure(vm: MicroVM): boolean {
  return vm.status?.phase === 'Failed';
}

export function isReady(vm: MicroVM): boolean {
  return (vm.status?.conditions ?? []).some((c) => c.type === 'GuestReady' && c.status === 'True');
}

export class MvmClient {
  readonly baseUrl: string;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;
  readonly #userAgent: string;
  readonly #fetch: typeof fetch;

  constructor(opts: ClientOptions) {
    let base = opts.baseUrl.trim().replace(/\/+$/, '');
    base = base.replace(/\/api\/v1$/, '');
    this.baseUrl = base;
    this.#token = opts.token || undefined;
    this.#timeoutMs = opts.requestTimeoutMs ?? 30_000;
    this.#userAgent = opts.userAgent ?? 'mvm-client';
    this.#fetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Whether a token will be sent (the token itself is never exposed). */
  get hasToken(): boolean {
    return this.#token !== undefined;
  }

  // ---- resources -------------------------------------------------------

  create(req: CreateRequest): Promise<MicroVM> {
    return this.#json<MicroVM>('POST', '/microvms', { body: req });
  }

  list(params: ListParams = {}): Promise<MicroVMList> {
    const q = pageQuery(params);
    if (params.phase) q.set('phase', params.phase);
    for (const l of params.labels ?? []) q.append('label', l);
    return this.#json<MicroVMList>('GET', '/microvms', { query: q });
  }

  /** Every VM matching the filters, following `next_cursor` page by page. */
  async *listAll(params: Omit<ListParams, 'cursor'> = {}): AsyncGenerator<MicroVM, void, undefined> {
    let cursor: string | undefined;
    const seen = new Set<string>();
    for (;;) {
      const page = await this.list({ ...params, cursor });
      for (const vm of page.items ?? []) yield vm;
      if (!page.next_cursor || seen.has(page.next_cursor)) return;
      seen.add(page.next_cursor);
      cursor = page.next_cursor;
    }
  }

  get(id: string): Promise<MicroVM> {
    return this.#json<MicroVM>('GET', `/microvms/${enc(id)}`);
  }

  update(id: string, patch: UpdateRequest): Promise<MicroVM> {
    return this.#json<MicroVM>('PUT', `/microvms/${enc(id)}`, { body: patch });
  }

  delete(id: string): Promise<MicroVM> {
    return this.#json<MicroVM>('DELETE', `/microvms/${enc(id)}`);
  }

  start(id: string): Promise<MicroVM> {
    return this.#json<MicroVM>('POST', `/microvms/${enc(id)}/start`);
  }

  stop(id: string): Promise<MicroVM> {
    return this.#json<MicroVM>('POST', `/microvms/${enc(id)}/stop`);
  }

  // ---- volumes (ADR 0018) -----------------------------------------------

  createVolume(req: CreateVolumeRequestT): Promise<VolumeT> {
    return this.#json<VolumeT>('POST', '/volumes', { body: req });
  }

  listVolumes(): Promise<{ items: VolumeT[] }> {
    return this.#json<{ items: VolumeT[] }>('GET', '/volumes');
  }

  getVolume(id: string): Promise<VolumeT> {
    return this.#json<VolumeT>('GET', `/volumes/${enc(id)}`);
  }

  async deleteVolume(id: string): Promise<void> {
    await this.#json<undefined>('DELETE', `/volumes/${enc(id)}`);
  }

  snapshotVolume(id: string, name: string): Promise<VolumeSnapshotT> {
    return this.#json<VolumeSnapshotT>('POST', `/volumes/${enc(id)}/snapshots`, { body: { name } });
  }

  // ---- pause/resume and snapshots ---------------------------------------

  pause(id: string): Promise<MicroVM> {
    return this.#json<MicroVM>('POST', `/microvms/${enc(id)}/pause`);
  }

  resume(id: string): Promise<MicroVM> {
    return this.#json<MicroVM>('POST', `/microvms/${enc(id)}/resume`);
  }

  createSnapshot(vm: string, name: string): Promise<SnapshotT> {
    return this.#json<SnapshotT>('POST', `/microvms/${enc(vm)}/snapshots`, { body: { name } });
  }

  /** All snapshots, or those of one microVM. */
  listSnapshots(vm?: string): Promise<{ items: SnapshotT[] }> {
    return this.#json<{ items: SnapshotT[] }>('GET', vm !== undefined ? `/microvms/${enc(vm)}/snapshots` : '/snapshots');
  }

  getSnapshot(id: string): Promise<SnapshotT> {
    return this.#json<SnapshotT>('GET', `/snapshots/${enc(id)}`);
  }

  async deleteSnapshot(id: string): Promise<void> {
    await this.#json<undefined>('DELETE', `/snapshots/${enc(id)}`);
  }

  // ---- templates ---------------------------------------------------------

  createTemplate(req: CreateTemplateRequestT): Promise<TemplateT> {
    return this.#json<TemplateT>('POST', '/templates', { body: req });
  }

  listTemplates(): Promise<{ items: TemplateT[] }> {
    return this.#json<{ items: TemplateT[] }>('GET', '/templates');
  }

  getTemplate(id: string): Promise<TemplateT> {
    return this.#json<TemplateT>('GET', `/templates/${enc(id)}`);
  }

  rebuildTemplate(id: string): Promise<TemplateT> {
    return this.#json<TemplateT>('POST', `/templates/${enc(id)}/rebuild`);
  }

  async deleteTemplate(id: string): Promise<void> {
    await this.#json<undefined>('DELETE', `/templates/${enc(id)}`);
  }

  // ---- security groups ---------------------------------------------------

  createSecurityGroup(req: SecurityGroupRequestT): Promise<SecurityGroupT> {
    return this.#json<SecurityGroupT>('POST', '/securitygroups', { body: req });
  }

  listSecurityGroups(): Promise<{ items: SecurityGroupT[] }> {
    return this.#json<{ items: SecurityGroupT[] }>('GET', '/securitygroups');
  }

  getSecurityGroup(id: string): Promise<SecurityGroupT> {
    return this.#json<SecurityGroupT>('GET', `/securitygroups/${enc(id)}`);
  }

  updateSecurityGroup(id: string, patch: SecurityGroupUpdateT): Promise<SecurityGroupT> {
    return this.#json<SecurityGroupT>('PUT', `/securitygroups/${enc(id)}`, { body: patch });
  }

  async deleteSecurityGroup(id: string): Promise<void> {
    await this.#json<undefined>('DELETE', `/securitygroups/${enc(id)}`);
  }

  // ---- tenants, API keys, audit (admin) ----------------------------------

  createTenant(req: CreateTenantRequestT): Promise<TenantT> {
    return this.#json<TenantT>('POST', '/tenants', { body: req });
  }

  listTenants(params: { limit?: number; cursor?: string } = {}): Promise<{ items: TenantT[]; next_cursor?: string }> {
    return this.#json('GET', '/tenants', { query: pageQuery(params) });
  }

  getTenant(id: string): Promise<TenantT> {
    return this.#json<TenantT>('GET', `/tenants/${enc(id)}`);
  }

  updateTenant(id: string, patch: UpdateTenantRequestT): Promise<TenantT> {
    return this.#json<TenantT>('PUT', `/tenants/${enc(id)}`, { body: patch });
  }

  deleteTenant(id: string, opts: { cascade?: boolean } = {}): Promise<unknown> {
    return this.#json<unknown>('DELETE', `/tenants/${enc(id)}`, { query: opts.cascade ? new URLSearchParams({ cascade: 'true' }) : undefined });
  }

  tenantUsage(id: string): Promise<TenantUsageT> {
    return this.#json<TenantUsageT>('GET', `/tenants/${enc(id)}/usage`);
  }

  /** The secret `token` is in this answer only. */
  createApiKey(req: CreateApiKeyRequestT, opts: { tenant?: string } = {}): Promise<ApiKeyT & { token: string }> {
    return this.#json('POST', '/apikeys', { body: req, query: opts.tenant ? new URLSearchParams({ tenant: opts.tenant }) : undefined });
  }

  listApiKeys(params: { tenant?: string; limit?: number; cursor?: string } = {}): Promise<{ items: ApiKeyT[]; next_cursor?: string }> {
    const q = pageQuery(params);
    if (params.tenant) q.set('tenant', params.tenant);
    return this.#json('GET', '/apikeys', { query: q });
  }

  revokeApiKey(id: string): Promise<ApiKeyT> {
    return this.#json<ApiKeyT>('DELETE', `/apikeys/${enc(id)}`);
  }

  audit(params: AuditQuery = {}): Promise<{ items: AuditEntryT[]; next_cursor?: string }> {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== '') q.set(k, String(v));
    return this.#json('GET', '/audit', { query: q });
  }

  // ---- image cache (admin) -----------------------------------------------

  listImages(): Promise<{ items: CachedImage[] }> {
    return this.#json<{ items: CachedImage[] }>('GET', '/images');
  }

  async deleteImage(digest: string): Promise<void> {
    await this.#json<undefined>('DELETE', `/images/${enc(digest)}`);
  }

  gcImages(req: { maxIdle?: string; maxBytes?: number } = {}): Promise<ImageGcResult> {
    return this.#json<ImageGcResult>('POST', '/images/gc', { body: req });
  }

  metrics(id: string): Promise<VmMetrics> {
    return this.#json<VmMetrics>('GET', `/microvms/${enc(id)}/metrics`);
  }

  /** The console as a byte stream (chunked while following). The caller consumes it or aborts via `signal`. */
  async console(id: string, params: ConsoleParams = {}): Promise<ReadableStream<Uint8Array>> {
    const q = new URLSearchParams();
    if (params.follow) q.set('follow', 'true');
    if (params.tail !== undefined) q.set('tail', String(params.tail));
    const res = await this.#request('GET', `/microvms/${enc(id)}/console`, {
      query: q,
      accept: 'text/plain',
      signal: params.signal,
      timeoutMs: params.follow ? 0 : undefined,
    });
    if (!res.body) return new ReadableStream({ start: (c) => c.close() });
    return res.body;
  }

  /** The console's current contents as text (no follow). */
  async consoleText(id: string, tail?: number): Promise<string> {
    const res = await this.#request('GET', `/microvms/${enc(id)}/console`, {
      query: tail !== undefined ? new URLSearchParams({ tail: String(tail) }) : undefined,
      accept: 'text/plain',
    });
    return res.text();
  }

  /**
   * One server-side long-poll. Resolves with the VM once it reached `phase` (and readiness if asked);
   * rejects with ApiError code TIMEOUT (408) or VM_FAILED (409) otherwise.
   */
  wait(id: string, params: WaitParams): Promise<MicroVM> {
    const q = new URLSearchParams({ phase: params.phase });
    if (params.ready) q.set('ready', 'true');
    const ms = params.timeoutMs ?? 30_000;
    const secs = Math.max(1, Math.ceil(ms / 1000));
    q.set('timeout', `${secs}s`);
    return this.#json<MicroVM>('GET', `/microvms/${enc(id)}/wait`, {
      query: q,
      signal: params.signal,
      timeoutMs: secs * 1000 + 15_000,
    });
  }

  /**
   * Long-poll repeatedly until the VM reaches the phase (and readiness) or the deadline passes.
   * Throws WaitTimeoutError at the deadline, ApiError VM_FAILED if the VM failed instead.
   */
  async waitFor(id: string, opts: WaitForOptions): Promise<MicroVM> {
    const started = Date.now();
    const deadline = started + opts.timeoutMs;
    const pollMs = Math.max(1000, opts.pollMs ?? 5000);
    let last: MicroVM | undefined;
    const refresh = async (): Promise<void> => {
      last = await this.get(id);
      opts.onProgress?.(last);
    };
    await refresh();
    if (last && matches(last, opts.phase, opts.ready)) return last;
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new WaitTimeoutError(opts.timeoutMs, last);
      // The server's timeout has whole-second granularity: cut the last poll at our own deadline.
      const cut = AbortSignal.timeout(remaining + 100);
      try {
        const vm = await this.wait(id, {
          phase: opts.phase,
          ready: opts.ready,
          timeoutMs: Math.min(pollMs, remaining),
          signal: opts.signal ? AbortSignal.any([opts.signal, cut]) : cut,
        });
        opts.onProgress?.(vm);
        return vm;
      } catch (e) {
        if (cut.aborted && !opts.signal?.aborted) throw new WaitTimeoutError(opts.timeoutMs, last);
        if (!(e instanceof ApiError) || e.code !== 'TIMEOUT') throw e;
      }
      if (deadline - Date.now() <= 0) throw new WaitTimeoutError(opts.timeoutMs, last);
      await refresh();
    }
  }

  /** Poll GET until it answers 404 (the VM is gone). Resolves with the last state seen. */
  async waitDeleted(id: string, opts: WaitDeletedOptions): Promise<MicroVM | undefined> {
    const deadline = Date.now() + opts.timeoutMs;
    const interval = opts.intervalMs ?? 250;
    let last: MicroVM | undefined;
    for (;;) {
      try {
        last = await this.get(id);
        opts.onProgress?.(last);
      } catch (e) {
        if (e instanceof ApiError && e.status === 404) return last;
        throw e;
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new WaitTimeoutError(opts.timeoutMs, last);
      await sleep(Math.min(interval, remaining), opts.signal);
    }
  }

  // ---- transport -------------------------------------------------------

  async #json<T>(method: string, path: string, o: RequestOpts = {}): Promise<T> {
    const res = await this.#request(method, path, { ...o, accept: 'application/json' });
    const text = await res.text();
    if (!text) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new ApiError(res.status, { code: 'BAD_RESPONSE', detail: `invalid JSON from ${method} ${path}: ${text.slice(0, 200)}` });
    }
  }

  async #request(method: string, path: string, o: RequestOpts = {}): Promise<Response> {
    const qs = o.query && [...o.query.keys()].length ? `?${o.query.toString()}` : '';
    const url = `${this.baseUrl}/api/v1${path}${qs}`;
    const headers: Record<string, string> = { accept: o.accept ?? 'application/json', 'user-agent': this.#userAgent };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    let body: string | undefined;
    if (o.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(o.body);
    }
    const timeoutMs = o.timeoutMs ?? this.#timeoutMs;
    const signals: AbortSignal[] = [];
    if (o.signal) signals.push(o.signal);
    if (timeoutMs > 0) signals.push(AbortSignal.timeout(timeoutMs));
    const signal = signals.length === 0 ? undefined : signals.length === 1 ? signals[0] : AbortSignal.any(signals);
    let res: Response;
    try {
      res = await this.#fetch(url, { method, headers, body, signal });
    } catch (e) {
      if (o.signal?.aborted) throw e;
      if (e instanceof Error && (e.name === 'TimeoutError' || e.name === 'AbortError')) {
        const reason = `${method} ${path} got no answer within ${formatMs(timeoutMs)}`;
        throw new ConnectionError(this.baseUrl, 'TIMEOUT', reason, `request ${reason}`, e);
      }
      const errno = findErrno(e);
      const reason = errno ?? rootMessage(e);
      throw new ConnectionError(this.baseUrl, errno, reason, `cannot reach ${this.baseUrl}: ${reason}`, e);
    }
    if (res.ok) return res;
    throw await problemFrom(res);
  }
}

function pageQuery(p: { limit?: number; cursor?: string }): URLSearchParams {
  const q = new URLSearchParams();
  if (p.limit !== undefined) q.set('limit', String(p.limit));
  if (p.cursor) q.set('cursor', p.cursor);
  return q;
}

interface RequestOpts {
  body?: unknown;
  query?: URLSearchParams | undefined;
  accept?: string;
  signal?: AbortSignal | undefined;
  /** 0 disables the timeout. */
  timeoutMs?: number | undefined;
}

async function problemFrom(res: Response): Promise<ApiError> {
  let text = '';
  try {
    text = await res.text();
  } catch {
    /* body unreadable: fall back to the status line */
  }
  const ct = res.headers.get('content-type') ?? '';
  if (text && (ct.includes('json') || text.trimStart().startsWith('{'))) {
    try {
      const p = JSON.parse(text) as Problem;
      if (p && typeof p === 'object') {
        // Fastify-style { statusCode, error, message } bodies are tolerated too.
        const loose = p as Problem & { message?: unknown; error?: unknown };
        if (p.detail === undefined && typeof loose.message === 'string') p.detail = loose.message;
        if (p.title === undefined && typeof loose.error === 'string') p.title = loose.error;
        return new ApiError(res.status, p);
      }
    } catch {
      /* not JSON after all */
    }
  }
  return new ApiError(res.status, { detail: text.trim().slice(0, 500) || `${res.status} ${res.statusText}`.trim() });
}

function matches(vm: MicroVM, phase: string, ready?: boolean): boolean {
  return vm.status?.phase === phase && (!ready || isReady(vm));
}

function enc(id: string): string {
  return encodeURIComponent(id);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason as Error);
    const t = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(signal?.reason as Error);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
