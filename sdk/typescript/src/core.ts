/**
 * @mvm/sdk/core — the browser-safe part of the SDK: the whole REST API (`/api/v1`) over `fetch`,
 * typed from the service's OpenAPI document (./openapi.ts). No Node module is imported here, so a
 * bundler can put it in a web page (the dashboard does). `@mvm/sdk` (./index.ts) adds what needs
 * Node: streaming exec and port tunnels over `ws`, Node streams for files and backups, a private CA.
 */
import type { paths } from './openapi.js';

export type { paths } from './openapi.js';

// ---- types from the OpenAPI document --------------------------------------------------------

type JsonOf<R> = R extends { content: { 'application/json': infer B } } ? B : never;
type RequestJson<Op> = Op extends { requestBody?: infer R } ? JsonOf<NonNullable<R>> : never;
type Status<R, S extends number> = S extends keyof R ? JsonOf<R[S]> : never;
/** The JSON body of an operation's success answer (200, 201 or 202). */
type OkJson<Op> = Op extends { responses: infer R } ? Status<R, 200> | Status<R, 201> | Status<R, 202> : never;
type Method = 'get' | 'post' | 'put' | 'delete';
type Op<P extends keyof paths, M extends Method> = NonNullable<paths[P][M]>;
type Res<P extends keyof paths, M extends Method> = OkJson<Op<P, M>>;
type Req<P extends keyof paths, M extends Method> = RequestJson<Op<P, M>>;
type Query<P extends keyof paths, M extends Method> = Op<P, M> extends { parameters: { query?: infer Q } } ? NonNullable<Q> : never;
type Item<L> = L extends { items: Array<infer I> } ? I : never;

export type MicroVM = Res<'/api/v1/microvms/{id}', 'get'>;
export type MicroVMList = Res<'/api/v1/microvms', 'get'>;
export type ListParams = Query<'/api/v1/microvms', 'get'>;
export type Phase = NonNullable<ListParams['phase']>;
export type CreateMicroVMRequest = Req<'/api/v1/microvms', 'post'>;
export type UpdateMicroVMRequest = Req<'/api/v1/microvms/{id}', 'put'>;
export type VmMetrics = Res<'/api/v1/microvms/{id}/metrics', 'get'>;
export type MetricsHistory = Res<'/api/v1/microvms/{id}/metrics/history', 'get'>;
export type HistoryPoint = Item<{ items: MetricsHistory['points'] }>;
export type VmEvent = Item<Res<'/api/v1/microvms/{id}/events', 'get'>>;
export type EventsQuery = Omit<Query<'/api/v1/events', 'get'>, 'follow'>;
export type ForkRequest = Req<'/api/v1/microvms/{id}/fork', 'post'>;
export type ForkResult = Res<'/api/v1/microvms/{id}/fork', 'post'>;
export type ExecRequest = Req<'/api/v1/microvms/{id}/exec', 'post'>;
export type ExecResponse = Res<'/api/v1/microvms/{id}/exec', 'post'>;
export type StartProcessRequest = Req<'/api/v1/microvms/{id}/processes', 'post'>;
export type StartedProcess = Res<'/api/v1/microvms/{id}/processes', 'post'>;
export type GuestProcess = Item<Res<'/api/v1/microvms/{id}/processes', 'get'>>;
export type GuestFileStat = Res<'/api/v1/microvms/{id}/files/stat', 'get'>;
export type MkdirRequest = Req<'/api/v1/microvms/{id}/files/mkdir', 'post'>;
export type MoveRequest = Req<'/api/v1/microvms/{id}/files/move', 'post'>;
export type Snapshot = Res<'/api/v1/snapshots/{id}', 'get'>;
export type RestoreRequest = Req<'/api/v1/snapshots/{id}/restore', 'post'>;
export type Volume = Res<'/api/v1/volumes/{id}', 'get'>;
export type CreateVolumeRequest = Req<'/api/v1/volumes', 'post'>;
export type VolumeSnapshot = Res<'/api/v1/volumesnapshots/{id}', 'get'>;
export type Template = Res<'/api/v1/templates/{id}', 'get'>;
export type CreateTemplateRequest = Req<'/api/v1/templates', 'post'>;
export type SecurityGroup = Res<'/api/v1/securitygroups/{id}', 'get'>;
export type SecurityGroupRequest = Req<'/api/v1/securitygroups', 'post'>;
export type SecurityGroupUpdate = Req<'/api/v1/securitygroups/{id}', 'put'>;
export type Tenant = Res<'/api/v1/tenants/{id}', 'get'>;
export type CreateTenantRequest = Req<'/api/v1/tenants', 'post'>;
export type UpdateTenantRequest = Req<'/api/v1/tenants/{id}', 'put'>;
export type TenantUsage = Res<'/api/v1/tenants/{id}/usage', 'get'>;
export type ApiKey = Item<Res<'/api/v1/apikeys', 'get'>>;
export type CreateApiKeyRequest = Req<'/api/v1/apikeys', 'post'>;
/** A new API key: the secret `token` is in this answer only. */
export type CreatedApiKey = Res<'/api/v1/apikeys', 'post'>;
export type AuditQuery = Query<'/api/v1/audit', 'get'>;
export type AuditEntry = Item<Res<'/api/v1/audit', 'get'>>;
export type CachedImage = Item<Res<'/api/v1/images', 'get'>>;
export type ImageGcRequest = Req<'/api/v1/images/gc', 'post'>;
export type ImageGcResult = Res<'/api/v1/images/gc', 'post'>;
export type WhoAmI = Res<'/api/v1/whoami', 'get'>;

/** One page of a cursor-paged list. */
export interface Page<T> {
  items: T[];
  next_cursor?: string;
}

export interface PageParams {
  limit?: number;
  cursor?: string;
}

export interface FieldViolation {
  field: string;
  message: string;
}

/** An application/problem+json body. */
export interface Problem {
  type?: string;
  title?: string;
  status?: number;
  code?: string;
  detail?: string;
  instance?: string;
  errors?: FieldViolation[];
  [k: string]: unknown;
}

// ---- errors ---------------------------------------------------------------------------------

/** Base class of every error the SDK throws. */
export class MvmError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'MvmError';
  }
}

/** The service answered with an error (HTTP status ≥ 400, or an error message on a WebSocket). */
export class MvmApiError extends MvmError {
  /** HTTP status, e.g. 404. */
  readonly status: number;
  /** The service's error code, e.g. NOT_FOUND, VALIDATION_FAILED, ILLEGAL_TRANSITION, AGENT_UNAVAILABLE. */
  readonly code: string;
  readonly detail: string;
  /** Field-level validation failures (`errors` of the problem body). */
  readonly violations: FieldViolation[];
  /** The whole problem body. */
  readonly problem: Problem;

  constructor(status: number, problem: Problem) {
    const detail = problem.detail ?? problem.title ?? `HTTP ${status}`;
    const code = problem.code ?? codeForStatus(status);
    super(`${status} ${code}: ${detail}`);
    this.name = 'MvmApiError';
    this.status = status;
    this.code = code;
    this.detail = detail;
    this.violations = Array.isArray(problem.errors) ? problem.errors : [];
    this.problem = problem;
  }
}

/** The service could not be reached (refused, DNS, reset, TLS) or did not answer in time. */
export class MvmConnectionError extends MvmError {
  readonly url: string;
  /** Node error code of the root cause (ECONNREFUSED, ENOTFOUND…) or TIMEOUT. */
  readonly errno: string | undefined;
  /** Short cause: the errno, the root error's message, or which request timed out. */
  readonly reason: string;

  constructor(url: string, errno: string | undefined, reason: string, message: string, cause?: unknown) {
    super(message, cause !== undefined ? { cause } : undefined);
    this.name = 'MvmConnectionError';
    this.url = url;
    this.errno = errno;
    this.reason = reason;
  }
}

/** `microvms.waitFor` / `waitDeleted` reached its deadline. */
export class MvmTimeoutError extends MvmError {
  readonly lastSeen: MicroVM | undefined;
  readonly timeoutMs: number;

  constructor(message: string, timeoutMs: number, lastSeen: MicroVM | undefined) {
    super(message);
    this.name = 'MvmTimeoutError';
    this.timeoutMs = timeoutMs;
    this.lastSeen = lastSeen;
  }
}

const STATUS_CODES: Record<number, string> = {
  400: 'VALIDATION_FAILED', 401: 'UNAUTHENTICATED', 403: 'PERMISSION_DENIED', 404: 'NOT_FOUND', 408: 'TIMEOUT',
  409: 'CONFLICT', 422: 'VALIDATION_FAILED', 429: 'RATE_LIMITED', 503: 'UNAVAILABLE', 504: 'TIMEOUT',
};

function codeForStatus(status: number): string {
  return STATUS_CODES[status] ?? (status >= 500 ? 'INTERNAL' : `HTTP_${status}`);
}

/** 1500 → "1.5s", 90000 → "1m30s". */
export function formatMs(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = ms / 1000;
  if (s < 60) return `${Number.isInteger(s) ? s : s.toFixed(1)}s`;
  const m = Math.floor(s / 60);
  const rs = Math.round(s - m * 60);
  return rs ? `${m}m${rs}s` : `${m}m`;
}

/** The guest agent answers (condition GuestReady). */
export function isReady(vm: MicroVM): boolean {
  return (vm.status?.conditions ?? []).some((c) => c.type === 'GuestReady' && c.status === 'True');
}

// ---- client ---------------------------------------------------------------------------------

export interface MvmOptions {
  /** Base URL of the service, e.g. http://127.0.0.1:8080 (a trailing /api/v1 is accepted; '' in a page served by the service). */
  url: string;
  /** Bearer token: the admin token, an API key (mvmk_…) or a JWT. */
  token?: string | undefined;
  /** Timeout of ordinary requests in ms (default 30 s; 0: none). Exec, files, follows and waits have their own. */
  timeoutMs?: number;
  /** User-Agent of the requests (Node only: browsers set their own). Default mvm-sdk-typescript. */
  userAgent?: string;
  fetch?: typeof fetch;
}

/** Options of a POST that creates something: the same key makes a retry answer the first response. */
export interface CreateOptions {
  /** Idempotency-Key header: 1-255 visible ASCII characters. */
  idempotencyKey?: string;
}

/** `ifMatch` (the resourceVersion read; If-Match header) makes a change fail with 409 CONFLICT if someone changed the resource since. */
export interface UpdateOptions {
  ifMatch?: string | number;
}

export interface WaitForOptions {
  /** Default Running. */
  phase?: Phase;
  /** Also wait for the guest agent (condition GuestReady). Default: true when waiting for Running. */
  ready?: boolean;
  /** Overall deadline in ms. Default 5 minutes. */
  timeoutMs?: number;
  /** Longest single long-poll in ms; shorter ones report progress more often. Default 20 s. */
  pollMs?: number;
  /** Called with the VM's state whenever it was (re)fetched. */
  onProgress?: (vm: MicroVM) => void;
  signal?: AbortSignal;
}

export interface WaitDeletedOptions {
  /** Default 2 minutes. */
  timeoutMs?: number | undefined;
  intervalMs?: number;
  onProgress?: (vm: MicroVM) => void;
  signal?: AbortSignal;
}

export interface ConsoleOptions {
  /** Keep the answer open and stream new output. */
  follow?: boolean;
  /** Only the last `tail` bytes of what is buffered. */
  tail?: number;
  signal?: AbortSignal;
}

export interface FollowEventsOptions {
  /** Events already buffered to send first (default: the service's). */
  tail?: number;
  tenant?: string;
  vm?: string;
  /** Resume after this event id (Last-Event-ID). */
  lastEventId?: string;
  signal?: AbortSignal;
  /** Called once the stream is open. */
  onOpen?: () => void;
}

/** A body the service streams in (a Blob, bytes, text, or a web ReadableStream). */
export type RawBody = Blob | Uint8Array | string | ReadableStream<Uint8Array>;

/** @internal */
export interface RequestOpts {
  body?: unknown;
  raw?: RawBody | undefined;
  contentType?: string;
  query?: URLSearchParams | undefined;
  accept?: string;
  headers?: Record<string, string>;
  signal?: AbortSignal | undefined;
  /** 0: no timeout. */
  timeoutMs?: number | undefined;
}

/** Browsers refuse a User-Agent header (and set their own). */
const IN_BROWSER = typeof (globalThis as { document?: unknown }).document !== 'undefined';

export class MvmCore {
  readonly url: string;
  readonly #token: string | undefined;
  readonly #timeoutMs: number;
  readonly #userAgent: string;
  readonly #fetch: typeof fetch;

  /** MicroVMs: create, list, lifecycle, fork, waits, metrics, events, console, processes. */
  readonly microvms: MicroVMs;
  /** Snapshots of microVMs, and restoring one into a new microVM. */
  readonly snapshots: Snapshots;
  readonly volumes: Volumes;
  readonly templates: Templates;
  readonly securityGroups: SecurityGroups;
  /** Tenants (admins). */
  readonly tenants: Tenants;
  readonly apiKeys: ApiKeys;
  /** The image cache (admins). */
  readonly images: Images;
  /** The event log: a page, or a live Server-Sent Events stream. */
  readonly events: Events;
  /** Files of a running guest. */
  readonly files: Files;

  constructor(opts: MvmOptions) {
    this.url = opts.url.trim().replace(/\/+$/, '').replace(/\/api\/v1$/, '');
    this.#token = opts.token || undefined;
    this.#timeoutMs = opts.timeoutMs ?? 30_000;
    this.#userAgent = opts.userAgent ?? 'mvm-sdk-typescript';
    this.#fetch = opts.fetch ?? globalThis.fetch.bind(globalThis);
    this.microvms = new MicroVMs(this);
    this.snapshots = new Snapshots(this);
    this.volumes = new Volumes(this);
    this.templates = new Templates(this);
    this.securityGroups = new SecurityGroups(this);
    this.tenants = new Tenants(this);
    this.apiKeys = new ApiKeys(this);
    this.images = new Images(this);
    this.events = new Events(this);
    this.files = new Files(this);
  }

  /** Whether a token is sent (the token itself is never exposed). */
  get hasToken(): boolean {
    return this.#token !== undefined;
  }

  /** @internal */
  get timeoutMs(): number {
    return this.#timeoutMs;
  }

  /** @internal */
  get userAgent(): string {
    return this.#userAgent;
  }

  /** The operations this service serves, as "METHOD /api/v1/path" (from its OpenAPI document): which optional endpoints it has. */
  async operations(): Promise<Set<string>> {
    const doc = await this.json<{ paths?: Record<string, Record<string, unknown>> }>('GET', '/openapi.json');
    const out = new Set<string>();
    for (const [p, ops] of Object.entries(doc?.paths ?? {})) for (const m of Object.keys(ops)) out.add(`${m.toUpperCase()} ${p}`);
    return out;
  }

  /** Who the token is: subject, role, tenant. */
  whoami(): Promise<WhoAmI> {
    return this.json<WhoAmI>('GET', '/whoami');
  }

  /** Run a command to completion (buffered output, capped by maxOutputBytes). */
  exec(vm: string, cmd: string[] | ExecRequest, opts: { signal?: AbortSignal; timeoutMs?: number } = {}): Promise<ExecResponse> {
    const body: ExecRequest = Array.isArray(cmd) ? { cmd } : cmd;
    return this.json<ExecResponse>('POST', `/microvms/${enc(vm)}/exec`, { body, signal: opts.signal, timeoutMs: opts.timeoutMs ?? 0 });
  }

  /** The audit log (admins), newest first. */
  audit(query: AuditQuery = {}): Promise<Page<AuditEntry>> {
    return this.json('GET', '/audit', { query: toQuery(query) });
  }

  /** URL of a WebSocket to an API path (ws: or wss:, resolved against the page in a browser). */
  wsUrl(path: string): string {
    let base = this.url;
    const page = (globalThis as { location?: { href: string } }).location;
    if (!/^https?:/.test(base) && page) base = new URL(base || '/', page.href).href.replace(/\/+$/, '');
    return `${base.replace(/^http/, 'ws')}/api/v1${path}`;
  }

  /**
   * The WebSocket subprotocols that authenticate: `mvm.v1` and `bearer.<base64url(token)>` (a browser
   * cannot set Authorization on a WebSocket; docs/exec-api.md).
   */
  wsProtocols(): string[] {
    return this.#token ? ['mvm.v1', `bearer.${base64url(this.#token)}`] : ['mvm.v1'];
  }

  // ---- transport (shared by the resource groups) ----

  /** @internal */
  async json<T>(method: string, path: string, o: RequestOpts = {}): Promise<T> {
    const res = await this.request(method, path, { ...o, accept: o.accept ?? 'application/json' });
    const text = await res.text();
    if (!text) return undefined as T;
    try {
      return JSON.parse(text) as T;
    } catch {
      throw new MvmApiError(res.status, { code: 'BAD_RESPONSE', detail: `invalid JSON from ${method} ${path}: ${text.slice(0, 200)}` });
    }
  }

  /** @internal */
  async request(method: string, path: string, o: RequestOpts = {}): Promise<Response> {
    const qs = o.query && [...o.query.keys()].length ? `?${o.query.toString()}` : '';
    const url = `${this.url}/api/v1${path}${qs}`;
    const headers: Record<string, string> = { accept: o.accept ?? 'application/json', ...o.headers };
    if (!IN_BROWSER) headers['user-agent'] = this.#userAgent;
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    let body: RequestInit['body'] | undefined;
    if (o.body !== undefined) {
      headers['content-type'] = 'application/json';
      body = JSON.stringify(o.body);
    } else if (o.raw !== undefined) {
      headers['content-type'] = o.contentType ?? 'application/octet-stream';
      body = o.raw as RequestInit['body'];
    }
    const timeoutMs = o.timeoutMs ?? this.#timeoutMs;
    const signals: AbortSignal[] = [];
    if (o.signal) signals.push(o.signal);
    if (timeoutMs > 0) signals.push(AbortSignal.timeout(timeoutMs));
    const signal = signals.length === 0 ? undefined : signals.length === 1 ? signals[0] : AbortSignal.any(signals);
    const streamed = typeof ReadableStream !== 'undefined' && body instanceof ReadableStream;
    let res: Response;
    try {
      res = await this.#fetch(url, { method, headers, body, signal, ...(streamed ? { duplex: 'half' } : {}) } as RequestInit);
    } catch (e) {
      if (o.signal?.aborted) throw e;
      if (e instanceof Error && (e.name === 'TimeoutError' || e.name === 'AbortError')) {
        const reason = `${method} ${path} got no answer within ${formatMs(timeoutMs)}`;
        throw new MvmConnectionError(this.url, 'TIMEOUT', reason, `request ${reason}`, e);
      }
      const errno = findErrno(e);
      const reason = errno ?? rootMessage(e);
      throw new MvmConnectionError(this.url, errno, reason, `cannot reach ${this.url || 'the service'}: ${reason}`, e);
    }
    if (res.ok) return res;
    throw await problemFrom(res);
  }
}

/** `mvm.microvms`: the microVM resource. */
export class MicroVMs {
  readonly #c: MvmCore;

  constructor(c: MvmCore) {
    this.#c = c;
  }

  create(req: CreateMicroVMRequest, opts: CreateOptions & { tenant?: string } = {}): Promise<MicroVM> {
    return this.#c.json<MicroVM>('POST', '/microvms', { body: req, headers: idempotency(opts), query: toQuery({ tenant: opts.tenant }) });
  }

  get(id: string): Promise<MicroVM> {
    return this.#c.json<MicroVM>('GET', `/microvms/${enc(id)}`);
  }

  /** One page. `label` selectors (`k=v`) may be repeated. */
  list(params: ListParams = {}): Promise<MicroVMList> {
    return this.#c.json<MicroVMList>('GET', '/microvms', { query: toQuery(params) });
  }

  /** Every VM matching the filters, following `next_cursor` page by page. */
  async *listAll(params: Omit<ListParams, 'cursor'> = {}): AsyncGenerator<MicroVM, void, undefined> {
    yield* allPages((cursor) => this.list({ ...params, ...(cursor ? { cursor } : {}) }));
  }

  /** Change a VM's spec (labels, resources…); `ifMatch` makes it conditional. */
  update(id: string, patch: UpdateMicroVMRequest, opts: UpdateOptions = {}): Promise<MicroVM> {
    return this.#c.json<MicroVM>('PUT', `/microvms/${enc(id)}`, { body: patch, headers: ifMatch(opts) });
  }

  /** Ask for deletion (the VM goes through Deleting). `wait: true` also waits until it is gone. */
  async delete(id: string, opts: UpdateOptions & { wait?: boolean; timeoutMs?: number } = {}): Promise<MicroVM> {
    const vm = await this.#c.json<MicroVM>('DELETE', `/microvms/${enc(id)}`, { headers: ifMatch(opts) });
    if (opts.wait) await this.waitDeleted(id, { timeoutMs: opts.timeoutMs });
    return vm;
  }

  start(id: string, opts: UpdateOptions = {}): Promise<MicroVM> {
    return this.#c.json<MicroVM>('POST', `/microvms/${enc(id)}/start`, { headers: ifMatch(opts) });
  }

  stop(id: string, opts: UpdateOptions = {}): Promise<MicroVM> {
    return this.#c.json<MicroVM>('POST', `/microvms/${enc(id)}/stop`, { headers: ifMatch(opts) });
  }

  pause(id: string): Promise<MicroVM> {
    return this.#c.json<MicroVM>('POST', `/microvms/${enc(id)}/pause`);
  }

  resume(id: string): Promise<MicroVM> {
    return this.#c.json<MicroVM>('POST', `/microvms/${enc(id)}/resume`);
  }

  /** Suspend to disk: memory and device state go to the node, no VMM runs (phase `Suspended`); `resume` brings it back with the same identity. */
  suspend(id: string): Promise<MicroVM> {
    return this.#c.json<MicroVM>('POST', `/microvms/${enc(id)}/suspend`);
  }

  /** The VM's `lifecycle.timeout` ends `timeout` (e.g. "10m") from now. */
  setTimeout(id: string, timeout: string): Promise<MicroVM> {
    return this.#c.json<MicroVM>('POST', `/microvms/${enc(id)}/timeout`, { body: { timeout } });
  }

  /** Cluster mode: move the running VM to another node with its memory (`node`, or the scheduler's pick). */
  migrate(id: string, req: { node?: string } = {}): Promise<MicroVM> {
    return this.#c.json<MicroVM>('POST', `/microvms/${enc(id)}/migrate`, { body: req });
  }

  /** Live fork: `count` children carrying the running VM's memory and disk state, each with a fresh identity. */
  fork(id: string, req: ForkRequest, opts: CreateOptions = {}): Promise<ForkResult> {
    return this.#c.json<ForkResult>('POST', `/microvms/${enc(id)}/fork`, { body: req, headers: idempotency(opts) });
  }

  /** Take a snapshot (memory and disk) of a VM. */
  snapshot(id: string, name: string, opts: CreateOptions = {}): Promise<Snapshot> {
    return this.#c.json<Snapshot>('POST', `/microvms/${enc(id)}/snapshots`, { body: { name }, headers: idempotency(opts) });
  }

  metrics(id: string): Promise<VmMetrics> {
    return this.#c.json<VmMetrics>('GET', `/microvms/${enc(id)}/metrics`);
  }

  metricsHistory(id: string): Promise<MetricsHistory> {
    return this.#c.json<MetricsHistory>('GET', `/microvms/${enc(id)}/metrics/history`);
  }

  /** The VM's recent events (oldest first). */
  async events(id: string): Promise<VmEvent[]> {
    return (await this.#c.json<{ items: VmEvent[] }>('GET', `/microvms/${enc(id)}/events`)).items;
  }

  /** The serial console as a byte stream (kept open while following; abort with `signal`). */
  async console(id: string, opts: ConsoleOptions = {}): Promise<ReadableStream<Uint8Array>> {
    const res = await this.#c.request('GET', `/microvms/${enc(id)}/console`, {
      query: toQuery({ follow: opts.follow || undefined, tail: opts.tail }),
      accept: 'text/plain',
      signal: opts.signal,
      timeoutMs: opts.follow ? 0 : undefined,
    });
    return res.body ?? new ReadableStream({ start: (c) => c.close() });
  }

  /** The console as decoded text, chunk by chunk (with `follow`, until `signal` aborts). */
  async *consoleChunks(id: string, opts: ConsoleOptions = {}): AsyncGenerator<string, void, undefined> {
    yield* textChunks(await this.console(id, opts));
  }

  /** The console's current contents as text (no follow). */
  async consoleText(id: string, tail?: number): Promise<string> {
    let out = '';
    for await (const s of this.consoleChunks(id, tail !== undefined ? { tail } : {})) out += s;
    return out;
  }

  /** Start a background process in the guest (attach to it with `attachProcess` of @mvm/sdk). */
  startProcess(id: string, req: StartProcessRequest): Promise<StartedProcess> {
    return this.#c.json<StartedProcess>('POST', `/microvms/${enc(id)}/processes`, { body: req });
  }

  async listProcesses(id: string): Promise<GuestProcess[]> {
    return (await this.#c.json<{ items: GuestProcess[] }>('GET', `/microvms/${enc(id)}/processes`)).items;
  }

  async signalProcess(id: string, processId: string, signal: string | number = 'TERM'): Promise<void> {
    await this.#c.json<undefined>('POST', `/microvms/${enc(id)}/processes/${enc(processId)}/signal`, { body: { signal } });
  }

  /**
   * One server-side long-poll (GET /microvms/{id}/wait): the VM once it reached `phase` (and the
   * guest agent answers, with `ready`). MvmApiError TIMEOUT (408) or VM_FAILED (409) otherwise.
   */
  wait(id: string, opts: { phase: Phase; ready?: boolean; timeoutMs?: number; signal?: AbortSignal }): Promise<MicroVM> {
    const secs = Math.max(1, Math.ceil((opts.timeoutMs ?? 30_000) / 1000));
    const q = new URLSearchParams({ phase: opts.phase, timeout: `${secs}s` });
    if (opts.ready) q.set('ready', 'true');
    return this.#c.json<MicroVM>('GET', `/microvms/${enc(id)}/wait`, { query: q, signal: opts.signal, timeoutMs: secs * 1000 + 15_000 });
  }

  /**
   * Wait until the VM is in `phase` (default Running) and, unless `ready: false`, its guest agent
   * answers (GuestReady). Long-polls GET /microvms/{id}/wait. MvmApiError VM_FAILED if it failed,
   * MvmTimeoutError at the deadline.
   */
  async waitFor(id: string, opts: WaitForOptions = {}): Promise<MicroVM> {
    const phase = opts.phase ?? 'Running';
    const ready = opts.ready ?? phase === 'Running';
    const timeoutMs = opts.timeoutMs ?? 300_000;
    const pollMs = Math.max(1000, opts.pollMs ?? 20_000);
    const deadline = Date.now() + timeoutMs;
    const timedOut = (): MvmTimeoutError => new MvmTimeoutError(`${id} not ${phase}${ready ? ' and ready' : ''} after ${formatMs(timeoutMs)}`, timeoutMs, last);
    let last: MicroVM | undefined;
    const refresh = async (): Promise<void> => {
      last = await this.get(id);
      opts.onProgress?.(last);
    };
    await refresh();
    if (last && last.status?.phase === phase && (!ready || isReady(last))) return last;
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw timedOut();
      // The service's timeout has whole-second granularity: cut the last poll at our own deadline.
      const cut = AbortSignal.timeout(remaining + 100);
      try {
        const vm = await this.wait(id, { phase, ready, timeoutMs: Math.min(pollMs, remaining), signal: opts.signal ? AbortSignal.any([opts.signal, cut]) : cut });
        opts.onProgress?.(vm);
        return vm;
      } catch (e) {
        if (cut.aborted && !opts.signal?.aborted) throw timedOut();
        if (!(e instanceof MvmApiError) || e.code !== 'TIMEOUT') throw e;
      }
      if (deadline - Date.now() <= 0) throw timedOut();
      await refresh();
    }
  }

  /** Poll GET until it answers 404 (the VM is gone). Resolves with the last state seen. */
  async waitDeleted(id: string, opts: WaitDeletedOptions = {}): Promise<MicroVM | undefined> {
    const timeoutMs = opts.timeoutMs ?? 120_000;
    const deadline = Date.now() + timeoutMs;
    let last: MicroVM | undefined;
    for (;;) {
      try {
        last = await this.get(id);
        opts.onProgress?.(last);
      } catch (e) {
        if (e instanceof MvmApiError && e.status === 404) return last;
        throw e;
      }
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw new MvmTimeoutError(`${id} still present after ${formatMs(timeoutMs)}`, timeoutMs, last);
      await sleep(Math.min(opts.intervalMs ?? 250, remaining), opts.signal);
    }
  }
}

/** `mvm.snapshots`: snapshots of microVMs (take one with `microvms.snapshot`). */
export class Snapshots {
  readonly #c: MvmCore;

  constructor(c: MvmCore) {
    this.#c = c;
  }

  /** All snapshots, or those of one microVM. */
  async list(vm?: string): Promise<Snapshot[]> {
    return (await this.#c.json<{ items: Snapshot[] }>('GET', vm !== undefined ? `/microvms/${enc(vm)}/snapshots` : '/snapshots')).items;
  }

  get(id: string): Promise<Snapshot> {
    return this.#c.json<Snapshot>('GET', `/snapshots/${enc(id)}`);
  }

  /** A new microVM from the snapshot (a clone: fresh identity). */
  restore(id: string, req: RestoreRequest, opts: CreateOptions = {}): Promise<MicroVM> {
    return this.#c.json<MicroVM>('POST', `/snapshots/${enc(id)}/restore`, { body: req, headers: idempotency(opts) });
  }

  async delete(id: string): Promise<void> {
    await this.#c.json<undefined>('DELETE', `/snapshots/${enc(id)}`);
  }
}

/** A collection under `path` whose members are created, listed, read and deleted alike. */
class Collection<T, C> {
  protected readonly c: MvmCore;
  readonly #path: string;

  constructor(c: MvmCore, path: string) {
    this.c = c;
    this.#path = path;
  }

  create(req: C, opts: CreateOptions = {}): Promise<T> {
    return this.c.json<T>('POST', this.#path, { body: req, headers: idempotency(opts) });
  }

  async list(): Promise<T[]> {
    return (await this.c.json<{ items: T[] }>('GET', this.#path)).items;
  }

  get(id: string): Promise<T> {
    return this.c.json<T>('GET', `${this.#path}/${enc(id)}`);
  }

  async delete(id: string): Promise<void> {
    await this.c.json<undefined>('DELETE', `${this.#path}/${enc(id)}`);
  }
}

/** `mvm.volumes`: persistent volumes and their snapshots (ADR 0018). */
export class Volumes extends Collection<Volume, CreateVolumeRequest> {
  constructor(c: MvmCore) {
    super(c, '/volumes');
  }

  snapshot(id: string, name: string, opts: CreateOptions = {}): Promise<VolumeSnapshot> {
    return this.c.json<VolumeSnapshot>('POST', `/volumes/${enc(id)}/snapshots`, { body: { name }, headers: idempotency(opts) });
  }

  async listSnapshots(): Promise<VolumeSnapshot[]> {
    return (await this.c.json<{ items: VolumeSnapshot[] }>('GET', '/volumesnapshots')).items;
  }

  async deleteSnapshot(id: string): Promise<void> {
    await this.c.json<undefined>('DELETE', `/volumesnapshots/${enc(id)}`);
  }
}

/** `mvm.templates`: pre-booted templates microVMs start from. */
export class Templates extends Collection<Template, CreateTemplateRequest> {
  constructor(c: MvmCore) {
    super(c, '/templates');
  }

  rebuild(id: string): Promise<Template> {
    return this.c.json<Template>('POST', `/templates/${enc(id)}/rebuild`);
  }
}

/** `mvm.securityGroups`: firewall rules attached to microVMs. */
export class SecurityGroups extends Collection<SecurityGroup, SecurityGroupRequest> {
  constructor(c: MvmCore) {
    super(c, '/securitygroups');
  }

  update(id: string, patch: SecurityGroupUpdate): Promise<SecurityGroup> {
    return this.c.json<SecurityGroup>('PUT', `/securitygroups/${enc(id)}`, { body: patch });
  }
}

/** `mvm.tenants` (admins; a tenant may read its own and its usage). */
export class Tenants {
  readonly #c: MvmCore;

  constructor(c: MvmCore) {
    this.#c = c;
  }

  create(req: CreateTenantRequest, opts: CreateOptions = {}): Promise<Tenant> {
    return this.#c.json<Tenant>('POST', '/tenants', { body: req, headers: idempotency(opts) });
  }

  list(params: PageParams = {}): Promise<Page<Tenant>> {
    return this.#c.json('GET', '/tenants', { query: toQuery(params) });
  }

  async *listAll(): AsyncGenerator<Tenant, void, undefined> {
    yield* allPages((cursor) => this.list(cursor ? { cursor } : {}));
  }

  get(id: string): Promise<Tenant> {
    return this.#c.json<Tenant>('GET', `/tenants/${enc(id)}`);
  }

  update(id: string, patch: UpdateTenantRequest, opts: UpdateOptions = {}): Promise<Tenant> {
    return this.#c.json<Tenant>('PUT', `/tenants/${enc(id)}`, { body: patch, headers: ifMatch(opts) });
  }

  /** `cascade`: delete its microVMs, snapshots, volumes and keys too (else refused while any exist). */
  delete(id: string, opts: UpdateOptions & { cascade?: boolean } = {}): Promise<unknown> {
    return this.#c.json<unknown>('DELETE', `/tenants/${enc(id)}`, { query: toQuery({ cascade: opts.cascade || undefined }), headers: ifMatch(opts) });
  }

  usage(id: string): Promise<TenantUsage> {
    return this.#c.json<TenantUsage>('GET', `/tenants/${enc(id)}/usage`);
  }
}

/** `mvm.apiKeys`: API keys (mvmk_…) of a tenant. */
export class ApiKeys {
  readonly #c: MvmCore;

  constructor(c: MvmCore) {
    this.#c = c;
  }

  /** The secret `token` is in this answer only. `tenant`: admins create keys of other tenants. */
  create(req: CreateApiKeyRequest, opts: CreateOptions & { tenant?: string } = {}): Promise<CreatedApiKey> {
    return this.#c.json<CreatedApiKey>('POST', '/apikeys', { body: req, headers: idempotency(opts), query: toQuery({ tenant: opts.tenant }) });
  }

  list(params: PageParams & { tenant?: string } = {}): Promise<Page<ApiKey>> {
    return this.#c.json('GET', '/apikeys', { query: toQuery(params) });
  }

  revoke(id: string): Promise<ApiKey> {
    return this.#c.json<ApiKey>('DELETE', `/apikeys/${enc(id)}`);
  }
}

/** `mvm.images`: the cache of pulled OCI images (admins). */
export class Images {
  readonly #c: MvmCore;

  constructor(c: MvmCore) {
    this.#c = c;
  }

  async list(): Promise<CachedImage[]> {
    return (await this.#c.json<{ items: CachedImage[] }>('GET', '/images')).items;
  }

  async delete(digest: string): Promise<void> {
    await this.#c.json<undefined>('DELETE', `/images/${enc(digest)}`);
  }

  /** Drop images idle longer than `maxIdle` and/or beyond `maxBytes` in total. */
  gc(req: ImageGcRequest = {}): Promise<ImageGcResult> {
    return this.#c.json<ImageGcResult>('POST', '/images/gc', { body: req });
  }
}

/** `mvm.events`: the event log of the caller's tenant. */
export class Events {
  readonly #c: MvmCore;

  constructor(c: MvmCore) {
    this.#c = c;
  }

  async list(query: EventsQuery = {}): Promise<VmEvent[]> {
    return (await this.#c.json<{ items: VmEvent[] }>('GET', '/events', { query: toQuery(query) })).items;
  }

  /** Live events as Server-Sent Events over fetch (so the token goes as a header); ends when `signal` aborts. */
  async *follow(opts: FollowEventsOptions = {}): AsyncGenerator<{ id?: string; event: VmEvent }, void, undefined> {
    const res = await this.#c.request('GET', '/events', {
      query: toQuery({ follow: true, tail: opts.tail, tenant: opts.tenant, vm: opts.vm }),
      accept: 'text/event-stream',
      headers: opts.lastEventId ? { 'last-event-id': opts.lastEventId } : {},
      signal: opts.signal,
      timeoutMs: 0,
    });
    opts.onOpen?.();
    let buf = '';
    for await (const chunk of textChunks(res.body)) {
      buf += chunk;
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
        if (data.length) yield { ...(id !== undefined ? { id } : {}), event: JSON.parse(data.join('\n')) as VmEvent };
      }
    }
  }
}


export interface FileOptions {
  /** Act as this guest user (default root). */
  user?: string;
  signal?: AbortSignal;
}

/** `mvm.files`: files of a running guest (absolute paths). */
export class Files {
  protected readonly c: MvmCore;

  constructor(c: MvmCore) {
    this.c = c;
  }

  /** A directory's entries (lstat), sorted by name. */
  async list(vm: string, path: string, opts: FileOptions = {}): Promise<GuestFileStat[]> {
    return (await this.listDir(vm, path, opts)).entries;
  }

  /** As `list`, with the directory's canonical path. */
  async listDir(vm: string, path: string, opts: FileOptions = {}): Promise<{ path: string; entries: GuestFileStat[] }> {
    const r = await this.c.json<{ path: string; entries?: GuestFileStat[] }>('GET', `/microvms/${enc(vm)}/files`, { query: fileQuery(path, opts), signal: opts.signal });
    if (!Array.isArray(r?.entries)) throw new MvmApiError(400, { code: 'NOT_A_DIRECTORY', detail: `${path} is not a directory in the guest` });
    return { path: r.path, entries: r.entries };
  }

  stat(vm: string, path: string, opts: FileOptions = {}): Promise<GuestFileStat> {
    return this.c.json<GuestFileStat>('GET', `/microvms/${enc(vm)}/files/stat`, { query: fileQuery(path, opts), signal: opts.signal });
  }

  mkdir(vm: string, path: string, opts: Omit<MkdirRequest, 'path'> = {}): Promise<{ path: string; created: boolean }> {
    return this.c.json('POST', `/microvms/${enc(vm)}/files/mkdir`, { body: { path, ...opts } });
  }

  async move(vm: string, from: string, to: string, opts: Omit<MoveRequest, 'from' | 'to'> = {}): Promise<void> {
    await this.c.json<undefined>('POST', `/microvms/${enc(vm)}/files/move`, { body: { from, to, ...opts } });
  }

  /** Delete a file, an empty directory, or (recursive) a tree. */
  async remove(vm: string, path: string, opts: { recursive?: boolean; user?: string } = {}): Promise<void> {
    const q = fileQuery(path, opts);
    if (opts.recursive) q.set('recursive', 'true');
    await this.c.json<undefined>('DELETE', `/microvms/${enc(vm)}/files`, { query: q });
  }

  /** A file's bytes as the service's answer (a web stream in `body`; size and mode in the headers). */
  async download(vm: string, path: string, opts: FileOptions & { tar?: boolean } = {}): Promise<Response> {
    const q = fileQuery(path, opts);
    if (opts.tar) q.set('archive', 'tar');
    const res = await this.c.request('GET', `/microvms/${enc(vm)}/files`, { query: q, accept: opts.tar ? 'application/x-tar' : 'application/octet-stream', signal: opts.signal, timeoutMs: 0 });
    if (!opts.tar && (res.headers.get('content-type') ?? '').includes('json')) {
      await res.body?.cancel();
      throw new MvmApiError(400, { code: 'IS_A_DIRECTORY', detail: `${path} is a directory in the guest (download it as a tar archive)` });
    }
    return res;
  }

  /** A whole file as a Blob (browsers: save it; small files). */
  async blob(vm: string, path: string, opts: FileOptions = {}): Promise<Blob> {
    return (await this.download(vm, path, opts)).blob();
  }

  /** Write a file (parents created; an existing file is truncated). `mode`: permission bits. */
  upload(vm: string, path: string, data: RawBody, opts: FileOptions & { mode?: number | undefined } = {}): Promise<{ path: string; size: number }> {
    const q = fileQuery(path, opts);
    if (opts.mode !== undefined) q.set('mode', (opts.mode & 0o7777).toString(8).padStart(3, '0'));
    return this.c.json('PUT', `/microvms/${enc(vm)}/files`, { query: q, raw: data, contentType: 'application/octet-stream', signal: opts.signal, timeoutMs: 0 });
  }

  /** Extract a tar archive beneath the directory `path` (created if missing). */
  uploadTar(vm: string, path: string, tar: RawBody, opts: FileOptions = {}): Promise<{ path: string; entries: number; bytes: number }> {
    const q = fileQuery(path, opts);
    q.set('archive', 'tar');
    return this.c.json('PUT', `/microvms/${enc(vm)}/files`, { query: q, raw: tar, contentType: 'application/x-tar', signal: opts.signal, timeoutMs: 0 });
  }

}

// ---- helpers ------------------------------------------------------------------------------------

/** @internal */
export function enc(id: string): string {
  return encodeURIComponent(id);
}

/** Query parameters from an object: undefined and '' are left out, arrays repeat the key. @internal */
export function toQuery(params: object): URLSearchParams {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (Array.isArray(v)) for (const x of v) q.append(k, String(x));
    else if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  return q;
}

function fileQuery(path: string, opts: { user?: string | undefined }): URLSearchParams {
  const q = new URLSearchParams({ path });
  if (opts.user) q.set('user', opts.user);
  return q;
}

function idempotency(opts: CreateOptions): Record<string, string> {
  return opts.idempotencyKey !== undefined ? { 'idempotency-key': opts.idempotencyKey } : {};
}

function ifMatch(opts: UpdateOptions): Record<string, string> {
  return opts.ifMatch !== undefined ? { 'if-match': `"${String(opts.ifMatch)}"` } : {};
}

async function* allPages<T>(fetchPage: (cursor?: string) => Promise<Page<T>>): AsyncGenerator<T, void, undefined> {
  let cursor: string | undefined;
  const seen = new Set<string>();
  for (;;) {
    const page = await fetchPage(cursor);
    yield* page.items ?? [];
    if (!page.next_cursor || seen.has(page.next_cursor)) return;
    seen.add(page.next_cursor);
    cursor = page.next_cursor;
  }
}

async function* textChunks(body: ReadableStream<Uint8Array> | null): AsyncGenerator<string, void, undefined> {
  if (!body) return;
  const reader = body.getReader();
  const decoder = new TextDecoder();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) {
        const rest = decoder.decode();
        if (rest) yield rest;
        return;
      }
      const text = value ? decoder.decode(value, { stream: true }) : '';
      if (text) yield text;
    }
  } finally {
    reader.releaseLock();
  }
}

function base64url(s: string): string {
  let bin = '';
  for (const b of new TextEncoder().encode(s)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
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

/** Walk an error's cause chain (and AggregateError members) for a Node errno code. @internal */
export function findErrno(e: unknown, depth = 0): string | undefined {
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

/** @internal */
export function rootMessage(e: unknown): string {
  let cur: unknown = e;
  for (let i = 0; i < 5; i++) {
    const c = (cur as { cause?: unknown } | undefined)?.cause;
    if (!c) break;
    cur = c;
  }
  return cur instanceof Error ? cur.message : String(cur);
}

/** An error answer → MvmApiError (problem+json; Fastify-style `{ error, message }` is tolerated). @internal */
export async function problemFrom(res: Response): Promise<MvmApiError> {
  let text = '';
  try {
    text = await res.text();
  } catch {
    /* unreadable body: the status line will do */
  }
  if (text && ((res.headers.get('content-type') ?? '').includes('json') || text.trimStart().startsWith('{'))) {
    try {
      const p = JSON.parse(text) as Problem & { message?: unknown; error?: unknown };
      if (p && typeof p === 'object') {
        if (p.detail === undefined && typeof p.message === 'string') p.detail = p.message;
        if (p.title === undefined && typeof p.error === 'string') p.title = p.error;
        return new MvmApiError(res.status, p);
      }
    } catch {
      /* not JSON after all */
    }
  }
  return new MvmApiError(res.status, { detail: text.trim().slice(0, 500) || `${res.status} ${res.statusText}`.trim() });
}

/** A `{type:'error', status, code, message, problem}` message of a WebSocket → MvmApiError. @internal */
export function wsProblem(msg: Record<string, unknown>): MvmApiError {
  const status = typeof msg.status === 'number' ? msg.status : 500;
  const problem = (msg.problem && typeof msg.problem === 'object' ? { ...(msg.problem as Problem) } : {}) as Problem;
  if (problem.code === undefined && typeof msg.code === 'string') problem.code = msg.code;
  if (problem.detail === undefined && typeof msg.message === 'string') problem.detail = msg.message;
  return new MvmApiError(status, problem);
}

/** A WebSocket closed without the message that should have ended it. @internal */
export function closedError(code: number, reason: { toString(): string }): MvmApiError {
  const why = reason.toString() || `code ${code}`;
  if (code >= 4000 && code < 5000) return new MvmApiError(code - 4000, { code: /^[A-Z_]+$/.test(why) ? why : undefined, detail: `the service closed the connection: ${why}` });
  return new MvmApiError(502, { code: 'DISCONNECTED', detail: `the connection to the service closed unexpectedly (${why})` });
}
