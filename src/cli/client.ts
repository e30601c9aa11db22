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
import type { ExecRequestT, ExecResponseT } from '../core/schema.js';
import { Duplex, Readable, Writable } from 'node:stream';
import type { IncomingMessage } from 'node:http';
import WebSocket from 'ws';
import { fetchTrusting } from '../tls/client.js';

export type MicroVM = MicroVMT;
export type Phase = PhaseT;
export type CreateRequest = CreateMicroVMRequestT;
export type UpdateRequest = UpdateMicroVMRequestT;
export type VmMetrics = VmMetricsT;
export type ExecRequest = ExecRequestT;
export type ExecResponse = ExecResponseT;

/** The first message of a streaming exec (GET /microvms/{id}/exec over WebSocket). */
export interface ExecStreamRequest {
  cmd: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: string | number;
  /** Duration, e.g. `30s`: the guest kills the command after this long. */
  timeout?: string;
  /** A pseudo-terminal: stdout carries the terminal's output, stderr stays empty. */
  tty?: boolean;
  cols?: number;
  rows?: number;
  /** false: the command gets no stdin (EOF at once). Default true. */
  stdin?: boolean;
}

/** How a command ended. `exitCode` is 128+n when signal n killed it; 127: not found; 126: not executable. */
export interface ExecExit {
  exitCode: number;
  signal: string | null;
  timedOut: boolean;
  durationMs?: number;
  [k: string]: unknown;
}

import type { GuestFileStat } from '../core/ports/guest.js';
export type { GuestFileStat };

export interface FileDownload {
  /** The file's bytes (a Node stream: pipe it; it applies backpressure to the service). */
  stream: Readable;
  /** From content-length, when the service sent it. */
  size: number | undefined;
  /** Permission bits (x-mvm-file-mode), when sent. */
  mode: number | undefined;
}

export interface TransferOptions {
  /** Act as this guest user (default root). */
  user?: string;
  signal?: AbortSignal;
}

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
  /** CA certificate(s) (PEM) to trust for an https:// service: a private CA or the self-signed development certificate. */
  ca?: string | Buffer;
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
  readonly #ca: string | Buffer | undefined;

  constructor(opts: ClientOptions) {
    let base = opts.baseUrl.trim().replace(/\/+$/, '');
    base = base.replace(/\/api\/v1$/, '');
    this.baseUrl = base;
    this.#token = opts.token || undefined;
    this.#timeoutMs = opts.requestTimeoutMs ?? 30_000;
    this.#userAgent = opts.userAgent ?? 'mvm-client';
    this.#ca = opts.ca;
    this.#fetch = opts.fetch ?? (opts.ca ? fetchTrusting(opts.ca) : globalThis.fetch.bind(globalThis));
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

  suspend(id: string): Promise<MicroVM> {
    return this.#json<MicroVM>('POST', `/microvms/${enc(id)}/suspend`);
  }

  setTimeout(id: string, timeout: string): Promise<MicroVM> {
    return this.#json<MicroVM>('POST', `/microvms/${enc(id)}/timeout`, { body: { timeout } });
  }

  /** Live fork: `count` children carrying the running VM's memory and disk state, each with a fresh identity. */
  fork(vm: string, req: { count?: number; names?: string[] }): Promise<{ snapshot: SnapshotT; children: MicroVM[] }> {
    return this.#json<{ snapshot: SnapshotT; children: MicroVM[] }>('POST', `/microvms/${enc(vm)}/fork`, { body: req });
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

  // ---- inside the guest: exec, files, ports (issue 13) ---------------------

  /** Run a command and wait for it to end: exit code and (capped) output. */
  exec(id: string, req: ExecRequest, opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<ExecResponse> {
    return this.#json<ExecResponse>('POST', `/microvms/${enc(id)}/exec`, { body: req, signal: opts.signal, timeoutMs: opts.timeoutMs ?? 0 });
  }

  /**
   * A streaming exec over WebSocket: resolves once the service accepted the request (the command
   * started); output arrives on `stdout`/`stderr` as it is produced, `stdin` feeds the command,
   * `result` settles with its exit. Rejects with ApiError when the service refused (e.g.
   * AGENT_UNAVAILABLE, ILLEGAL_TRANSITION, NOT_FOUND) and ConnectionError when unreachable.
   */
  async execStream(id: string, req: ExecStreamRequest): Promise<ExecSession> {
    const ws = await this.#socket(`/microvms/${enc(id)}/exec`);
    const session = new ExecSession(ws);
    ws.send(JSON.stringify(req));
    await session.started;
    return session;
  }

  /**
   * Attach to a background process (its buffered output, then live output and its exit) over
   * WebSocket; the same session shape as execStream.
   */
  async attachProcess(id: string, processId: string): Promise<ExecSession> {
    const ws = await this.#socket(`/microvms/${enc(id)}/processes/${enc(processId)}/attach`);
    const session = new ExecSession(ws, 'attached');
    await session.started;
    return session;
  }

  startProcess(id: string, req: Omit<ExecStreamRequest, 'tty' | 'cols' | 'rows' | 'stdin'> & { tag?: string }): Promise<{ processId: string; pid: number; [k: string]: unknown }> {
    return this.#json('POST', `/microvms/${enc(id)}/processes`, { body: req });
  }

  listProcesses(id: string): Promise<{ items: Array<Record<string, unknown>> }> {
    return this.#json('GET', `/microvms/${enc(id)}/processes`);
  }

  async signalProcess(id: string, processId: string, signal: string | number = 'TERM'): Promise<void> {
    await this.#json<undefined>('POST', `/microvms/${enc(id)}/processes/${enc(processId)}/signal`, { body: { signal } });
  }

  statFile(id: string, path: string, opts: TransferOptions = {}): Promise<GuestFileStat> {
    return this.#json<GuestFileStat>('GET', `/microvms/${enc(id)}/files/stat`, { query: fileQuery(path, opts) });
  }

  listDir(id: string, path: string, opts: TransferOptions = {}): Promise<{ path: string; entries: GuestFileStat[] }> {
    return this.#json('GET', `/microvms/${enc(id)}/files`, { query: fileQuery(path, opts) });
  }

  /** A file of the guest as a stream (constant memory: nothing is buffered beyond the stream's window). */
  async downloadFile(id: string, path: string, opts: TransferOptions = {}): Promise<FileDownload> {
    const res = await this.#request('GET', `/microvms/${enc(id)}/files`, { query: fileQuery(path, opts), accept: 'application/octet-stream', signal: opts.signal, timeoutMs: 0 });
    const ct = res.headers.get('content-type') ?? '';
    if (ct.includes('json')) {
      await res.body?.cancel();
      throw new ApiError(400, { code: 'IS_A_DIRECTORY', detail: `${path} is a directory in the guest (download it as a tar archive)` });
    }
    const len = res.headers.get('content-length');
    const mode = res.headers.get('x-mvm-file-mode');
    return { stream: webToNode(res.body), size: len !== null ? Number(len) : undefined, mode: mode ? parseInt(mode, 8) : undefined };
  }

  /** A directory of the guest as a tar stream (names relative to it). */
  async downloadTar(id: string, path: string, opts: TransferOptions = {}): Promise<Readable> {
    const q = fileQuery(path, opts);
    q.set('archive', 'tar');
    const res = await this.#request('GET', `/microvms/${enc(id)}/files`, { query: q, accept: 'application/x-tar', signal: opts.signal, timeoutMs: 0 });
    return webToNode(res.body);
  }

  /** A backup of the whole service (admins) as a tar stream, with the service's summary of it (ADR 0022). */
  async backup(opts: { snapshots?: boolean; signal?: AbortSignal } = {}): Promise<{ stream: Readable; filename?: string; summary?: Record<string, unknown> }> {
    const q = new URLSearchParams();
    if (opts.snapshots) q.set('snapshots', 'true');
    const res = await this.#request('POST', '/admin/backup', { query: q, accept: 'application/x-tar', signal: opts.signal, timeoutMs: 0 });
    const summary = res.headers.get('x-mvm-backup-summary');
    const filename = /filename="([^"]+)"/.exec(res.headers.get('content-disposition') ?? '')?.[1];
    return { stream: webToNode(res.body), ...(filename ? { filename } : {}), ...(summary ? { summary: JSON.parse(summary) as Record<string, unknown> } : {}) };
  }

  /** Write a file in the guest from a stream (parents are created). `mode`: permission bits. */
  uploadFile(id: string, path: string, body: Readable, opts: TransferOptions & { mode?: number } = {}): Promise<{ path: string; size: number }> {
    const q = fileQuery(path, opts);
    if (opts.mode !== undefined) q.set('mode', (opts.mode & 0o7777).toString(8).padStart(3, '0'));
    return this.#json('PUT', `/microvms/${enc(id)}/files`, { query: q, raw: body, contentType: 'application/octet-stream', signal: opts.signal, timeoutMs: 0 });
  }

  /** Extract a tar stream beneath `path` in the guest (created if missing). */
  uploadTar(id: string, path: string, tar: Readable, opts: TransferOptions = {}): Promise<{ path: string; entries: number; bytes: number }> {
    const q = fileQuery(path, opts);
    q.set('archive', 'tar');
    return this.#json('PUT', `/microvms/${enc(id)}/files`, { query: q, raw: tar, contentType: 'application/x-tar', signal: opts.signal, timeoutMs: 0 });
  }

  mkdir(id: string, path: string, opts: { parents?: boolean; mode?: number; user?: string } = {}): Promise<{ path: string; created: boolean }> {
    return this.#json('POST', `/microvms/${enc(id)}/files/mkdir`, { body: { path, ...opts } });
  }

  async move(id: string, from: string, to: string, opts: { overwrite?: boolean; user?: string } = {}): Promise<void> {
    await this.#json<undefined>('POST', `/microvms/${enc(id)}/files/move`, { body: { from, to, ...opts } });
  }

  async removeFile(id: string, path: string, opts: { recursive?: boolean; user?: string } = {}): Promise<void> {
    const q = fileQuery(path, opts);
    if (opts.recursive) q.set('recursive', 'true');
    await this.#json<undefined>('DELETE', `/microvms/${enc(id)}/files`, { query: q });
  }

  /**
   * A TCP connection to `port` in the guest, tunnelled over WebSocket, as a Node Duplex with
   * backpressure both ways (what `mvm port-forward` pipes each local connection into). The
   * tunnel has no half-close: ending the writable side sends nothing; the connection ends when
   * the guest closes it or the duplex is destroyed.
   */
  async connectPort(id: string, port: number): Promise<Duplex> {
    const ws = await this.#socket(`/microvms/${enc(id)}/ports/${port}/connect`);
    await new Promise<void>((resolve, reject) => {
      const onMessage = (data: WebSocket.RawData, isBinary: boolean): void => {
        if (isBinary) return;
        const msg = parseJson(data);
        if (msg?.type === 'connected') {
          cleanup();
          resolve();
        } else if (msg?.type === 'error') {
          cleanup();
          reject(wsProblem(msg));
        }
      };
      const onClose = (code: number, reason: Buffer): void => {
        cleanup();
        reject(closedError(code, reason));
      };
      const cleanup = (): void => {
        ws.off('message', onMessage);
        ws.off('close', onClose);
      };
      ws.on('message', onMessage);
      ws.on('close', onClose);
    });
    return new WsTunnel(ws);
  }

  /** Open a WebSocket to an API path (auth by header, subprotocol mvm.v1); problems before the upgrade become ApiError. */
  #socket(path: string): Promise<WebSocket> {
    const url = `${this.baseUrl.replace(/^http/, 'ws')}/api/v1${path}`;
    const headers: Record<string, string> = { 'user-agent': this.#userAgent };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    const ws = new WebSocket(url, ['mvm.v1'], { headers, handshakeTimeout: this.#timeoutMs || undefined, perMessageDeflate: false, ...(this.#ca ? { ca: this.#ca } : {}) });
    return new Promise((resolve, reject) => {
      ws.once('open', () => {
        ws.removeAllListeners('error');
        ws.on('error', () => undefined); // reported through 'close'
        resolve(ws);
      });
      ws.once('unexpected-response', (_req, res: IncomingMessage) => {
        void readProblem(res).then(reject, reject);
        ws.on('error', () => undefined);
        res.on('end', () => ws.terminate());
      });
      ws.once('error', (e) => {
        const errno = findErrno(e);
        const reason = errno ?? rootMessage(e);
        reject(new ConnectionError(this.baseUrl, errno, reason, `cannot reach ${this.baseUrl}: ${reason}`, e));
      });
    });
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
    let body: string | ReadableStream<Uint8Array> | undefined;
    if (o.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(o.body);
    } else if (o.raw !== undefined) {
      headers['content-type'] = o.contentType ?? 'application/octet-stream';
      body = Readable.toWeb(o.raw) as ReadableStream<Uint8Array>;
    }
    const timeoutMs = o.timeoutMs ?? this.#timeoutMs;
    const signals: AbortSignal[] = [];
    if (o.signal) signals.push(o.signal);
    if (timeoutMs > 0) signals.push(AbortSignal.timeout(timeoutMs));
    const signal = signals.length === 0 ? undefined : signals.length === 1 ? signals[0] : AbortSignal.any(signals);
    let res: Response;
    try {
      res = await this.#fetch(url, { method, headers, body, signal, ...(o.raw !== undefined ? { duplex: 'half' } : {}) } as RequestInit);
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
  /** A streamed request body (sent chunked, as it is read). */
  raw?: Readable;
  contentType?: string;
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

function fileQuery(path: string, opts: { user?: string | undefined }): URLSearchParams {
  const q = new URLSearchParams({ path });
  if (opts.user) q.set('user', opts.user);
  return q;
}

function webToNode(body: ReadableStream<Uint8Array> | null): Readable {
  if (!body) return Readable.from([]);
  return Readable.fromWeb(body as import('node:stream/web').ReadableStream<Uint8Array>);
}

function parseJson(data: WebSocket.RawData): Record<string, unknown> | undefined {
  try {
    const text = Buffer.isBuffer(data) ? data.toString('utf8') : Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data).toString('utf8');
    const o = JSON.parse(text) as unknown;
    return o && typeof o === 'object' ? (o as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function rawBuffer(data: WebSocket.RawData): Buffer {
  return Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
}

/** A `{type:'error', status, code, message, problem}` message of a guest WebSocket → ApiError. */
function wsProblem(msg: Record<string, unknown>): ApiError {
  const status = typeof msg.status === 'number' ? msg.status : 500;
  const problem = (msg.problem && typeof msg.problem === 'object' ? { ...(msg.problem as Problem) } : {}) as Problem;
  if (problem.code === undefined && typeof msg.code === 'string') problem.code = msg.code;
  if (problem.detail === undefined && typeof msg.message === 'string') problem.detail = msg.message;
  return new ApiError(status, problem);
}

/** A socket closed without the message that should have ended it. */
function closedError(code: number, reason: Buffer | string): ApiError {
  const why = reason.toString() || `code ${code}`;
  if (code >= 4000 && code < 5000) return new ApiError(code - 4000, { code: /^[A-Z_]+$/.test(why) ? why : undefined, detail: `the service closed the connection: ${why}` });
  return new ApiError(502, { code: 'DISCONNECTED', detail: `the connection to the service closed unexpectedly (${why})` });
}

async function readProblem(res: IncomingMessage): Promise<ApiError> {
  const chunks: Buffer[] = [];
  for await (const c of res) chunks.push(c as Buffer);
  const headers = new Headers();
  for (const [k, v] of Object.entries(res.headers)) if (typeof v === 'string') headers.set(k, v);
  return problemFrom(new Response(Buffer.concat(chunks), { status: res.statusCode ?? 500, headers }));
}

const WS_HIGH_WATER = 1024 * 1024;

/**
 * Writes to a WebSocket with backpressure: the callback waits while more than WS_HIGH_WATER
 * bytes are queued on the socket.
 */
function wsWrite(ws: WebSocket, data: Buffer, cb: (err?: Error | null) => void): void {
  if (ws.readyState !== WebSocket.OPEN) return cb(new Error('the connection is closed'));
  let called = false;
  const done = (err?: Error | null): void => {
    if (called) return;
    called = true;
    cb(err);
  };
  ws.send(data, { binary: true }, (err) => done(err ?? null));
  if (ws.bufferedAmount < WS_HIGH_WATER) done(null);
}

/**
 * One streaming exec (or process attach) over WebSocket: binary frames are [stream byte][data]
 * (0 stdin, 1 stdout, 2 stderr), text frames JSON (resize, signal, eof; started, exit, error).
 * stdout/stderr apply backpressure (the socket is paused while a consumer lags).
 */
export class ExecSession {
  readonly stdout: Readable;
  readonly stderr: Readable;
  /** Feeds the command; ending it sends EOF. Data written before the command started is held until then. */
  readonly stdin: Writable;
  /** Resolves with the guest pid once the command started (rejects like `result` if it never did). */
  readonly started: Promise<{ pid?: number; [k: string]: unknown }>;
  /** Settles once the command ended: its exit, or ApiError (the service's problem) / a disconnect. */
  readonly result: Promise<ExecExit>;
  readonly #ws: WebSocket;
  #isStarted = false;
  readonly #waiting: Array<() => void> = [];
  readonly #paused = new Set<Readable>();

  constructor(ws: WebSocket, startedType = 'started') {
    this.#ws = ws;
    const resume = (r: Readable): void => {
      this.#paused.delete(r);
      if (this.#paused.size === 0 && ws.isPaused) ws.resume();
    };
    const out: Readable = new Readable({ read: () => resume(out) });
    const err: Readable = new Readable({ read: () => resume(err) });
    this.stdout = out;
    this.stderr = err;
    this.stdin = new Writable({
      write: (chunk: Buffer, _enc, cb) => this.#whenStarted(() => wsWrite(ws, Buffer.concat([Buffer.from([0]), chunk]), cb)),
      final: (cb) => this.#whenStarted(() => {
        this.#sendJson({ type: 'eof' });
        cb();
      }),
    });
    this.stdin.on('error', () => undefined);
    let onStarted!: (v: { pid?: number }) => void;
    let onStartFailed!: (e: Error) => void;
    this.started = new Promise((res, rej) => ((onStarted = res), (onStartFailed = rej)));
    this.started.catch(() => undefined);
    this.result = new Promise<ExecExit>((resolve, reject) => {
      let settled = false;
      const finish = (e: Error | undefined, exit?: ExecExit): void => {
        if (settled) return;
        settled = true;
        out.push(null);
        err.push(null);
        if (e) {
          onStartFailed(e);
          reject(e);
        } else {
          onStarted({});
          resolve(exit!);
        }
      };
      ws.on('message', (data, isBinary) => {
        if (isBinary) {
          const buf = rawBuffer(data);
          const target = buf[0] === 1 ? out : buf[0] === 2 ? err : undefined;
          if (target && buf.length > 1 && !target.push(buf.subarray(1))) {
            this.#paused.add(target);
            ws.pause();
          }
          return;
        }
        const msg = parseJson(data);
        if (!msg) return;
        if (msg.type === startedType) {
          this.#isStarted = true;
          onStarted(msg);
          for (const f of this.#waiting.splice(0)) f();
        } else if (msg.type === 'exit') {
          this.#isStarted = true;
          finish(undefined, { exitCode: Number(msg.exitCode), signal: (msg.signal as string | null) ?? null, timedOut: msg.timedOut === true, ...msg } as ExecExit);
        } else if (msg.type === 'error') {
          finish(wsProblem(msg));
        }
      });
      ws.on('close', (code, reason) => finish(closedError(code, reason)));
    });
    this.result.catch(() => undefined);
  }

  /** Tell the guest the terminal's size (tty sessions). */
  resize(cols: number, rows: number): void {
    this.#whenStarted(() => this.#sendJson({ type: 'resize', cols, rows }));
  }

  /** Send a signal to the command, e.g. 'INT', 'TERM', 'KILL'. */
  signal(signal: string): void {
    this.#whenStarted(() => this.#sendJson({ type: 'signal', signal }));
  }

  /** Hang up: the service cancels the command. */
  close(): void {
    if (this.#ws.readyState === WebSocket.OPEN || this.#ws.readyState === WebSocket.CONNECTING) this.#ws.close(1000, 'client closed');
  }

  // The service listens for stdin and control messages only once the command started: hold them until then.
  #whenStarted(f: () => void): void {
    if (this.#isStarted) f();
    else this.#waiting.push(f);
  }

  #sendJson(o: unknown): void {
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(o));
  }
}

/** A guest TCP connection over WebSocket as a Duplex (binary frames both ways, backpressure both ways). */
class WsTunnel extends Duplex {
  readonly #ws: WebSocket;

  constructor(ws: WebSocket) {
    super({ allowHalfOpen: true });
    this.#ws = ws;
    ws.on('message', (data, isBinary) => {
      if (!isBinary) return;
      if (!this.push(rawBuffer(data))) ws.pause();
    });
    ws.on('close', (code, reason) => {
      if (code === 1000 || code === 1005) this.push(null);
      else this.destroy(closedError(code, reason));
    });
  }

  override _read(): void {
    if (this.#ws.isPaused) this.#ws.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    wsWrite(this.#ws, chunk, cb);
  }

  override _final(cb: (err?: Error | null) => void): void {
    cb(); // no half-close in the tunnel protocol: the guest's side ends the connection
  }

  override _destroy(err: Error | null, cb: (err?: Error | null) => void): void {
    if (this.#ws.readyState === WebSocket.OPEN || this.#ws.readyState === WebSocket.CONNECTING) this.#ws.close(1000, 'client closed');
    cb(err);
  }
}
