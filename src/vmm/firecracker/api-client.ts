/**
 * A small client for Firecracker's API: HTTP/1.1 over the API Unix socket,
 * JSON bodies, 204 on success, 4xx with `{"fault_message": ...}` on error.
 *
 * Every request has an explicit Content-Length (Firecracker's HTTP server does
 * not take chunked bodies) and its own connection. The client knows which phase
 * the microVM is in and refuses a wrong-phase call before sending it
 * (ILLEGAL_TRANSITION), from the same route table the test peer enforces.
 */
import { request } from 'node:http';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import { bootsVm, findRoute, phaseFault, type FcActionType, type FcInstanceState, type FcMethod } from './protocol.js';

// ---- Request / response bodies (names as in firecracker.yaml) ----

export interface TokenBucket {
  size: number;
  refill_time: number;
  one_time_burst?: number;
}

export interface RateLimiter {
  bandwidth?: TokenBucket;
  ops?: TokenBucket;
}

export interface MachineConfig {
  vcpu_count: number;
  mem_size_mib: number;
  smt?: boolean;
  track_dirty_pages?: boolean;
  huge_pages?: 'None' | 'Transparent' | '2M';
}

export interface BootSource {
  kernel_image_path: string;
  boot_args?: string;
  initrd_path?: string;
}

export interface Drive {
  drive_id: string;
  path_on_host: string;
  is_root_device: boolean;
  is_read_only: boolean;
  cache_type?: 'Unsafe' | 'Writeback';
  io_engine?: 'Sync' | 'Async';
  rate_limiter?: RateLimiter;
}

export interface NetworkInterface {
  iface_id: string;
  host_dev_name: string;
  guest_mac?: string;
  rx_rate_limiter?: RateLimiter;
  tx_rate_limiter?: RateLimiter;
}

export interface LoggerConfig {
  log_path?: string;
  level?: 'Error' | 'Warning' | 'Info' | 'Debug' | 'Trace' | 'Off';
  show_level?: boolean;
  show_log_origin?: boolean;
}

export interface MetricsConfig {
  metrics_path: string;
}

export interface Vsock {
  guest_cid: number;
  uds_path: string;
}

export interface MmdsConfig {
  network_interfaces: string[];
  version?: 'V1' | 'V2';
  ipv4_address?: string;
}

export interface Balloon {
  amount_mib: number;
  deflate_on_oom: boolean;
  stats_polling_interval_s?: number;
}

export interface SnapshotCreateParams {
  snapshot_path: string;
  mem_file_path: string;
  snapshot_type?: 'Full' | 'Diff';
}

export interface SnapshotLoadParams {
  snapshot_path: string;
  mem_backend?: { backend_type: 'File' | 'Uffd'; backend_path: string };
  mem_file_path?: string;
  track_dirty_pages?: boolean;
  resume_vm?: boolean;
  network_overrides?: Array<{ iface_id: string; host_dev_name: string }>;
  vsock_override?: { uds_path: string };
}

export interface InstanceInfo {
  id: string;
  state: FcInstanceState;
  vmm_version: string;
  app_name: string;
}

/** One API call: what the driver's `config` lists, in order. */
export interface ApiCall {
  method: FcMethod;
  path: string;
  body?: unknown;
}

export interface ApiResponse<T> {
  status: number;
  body: T | undefined;
}

export interface FirecrackerApiClientOptions {
  /** Per-request timeout (default 10 s; snapshot calls get at least 120 s). */
  timeoutMs?: number;
  /** Known phase: false for a process we just spawned, true after InstanceStart / snapshot load, undefined when unknown. */
  booted?: boolean;
}

/** Label of a call for errors and pipeline steps, e.g. "PUT /actions InstanceStart". */
export function callLabel(c: ApiCall): string {
  const action = c.path === '/actions' ? (c.body as { action_type?: string } | undefined)?.action_type : undefined;
  return `${c.method} ${c.path}${action ? ` ${action}` : ''}`;
}

export class FirecrackerApiClient {
  private booted: boolean | undefined;
  private configured = false;
  private readonly timeoutMs: number;

  constructor(
    readonly socketPath: string,
    opts: FirecrackerApiClientOptions = {},
  ) {
    this.timeoutMs = opts.timeoutMs ?? 10_000;
    this.booted = opts.booted;
  }

  /** What the client believes: undefined until known. */
  get phase(): 'pre-boot' | 'post-boot' | undefined {
    return this.booted === undefined ? undefined : this.booted ? 'post-boot' : 'pre-boot';
  }

  /** Learn the phase from `GET /` (used when re-attaching to a running process). */
  async syncPhase(): Promise<InstanceInfo> {
    const info = await this.describeInstance();
    this.booted = info.state !== 'Not started';
    return info;
  }

  async call<T = unknown>(c: ApiCall): Promise<T | undefined> {
    return (await this.request<T>(c.method, c.path, c.body)).body;
  }

  async request<T = unknown>(method: FcMethod, path: string, body?: unknown): Promise<ApiResponse<T>> {
    const route = findRoute(method, path);
    if (this.booted !== undefined) {
      const fault = phaseFault(method, path, body, { booted: this.booted, configured: this.configured });
      if (fault) {
        throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `Firecracker ${method} ${path}: refused before sending, the microVM is ${this.booted ? 'already started' : 'not started yet'} (${fault})`, {
          details: { method, path, phase: this.phase, faultMessage: fault },
        });
      }
    }
    const slow = path.startsWith('/snapshot/');
    const res = await this.send(method, path, body, slow ? Math.max(this.timeoutMs, 120_000) : this.timeoutMs);
    if (res.status >= 300) {
      const faultMessage = faultOf(res.text);
      throw new MvmError(ErrorCodes.VMM_ERROR, `Firecracker ${method} ${path}: ${faultMessage}`, {
        details: { faultMessage, status: res.status, path, method },
      });
    }
    if (route?.route.bootPath) this.configured = true;
    if (bootsVm(method, path, body)) this.booted = true;
    let parsed: T | undefined;
    if (res.text.length > 0) {
      try {
        parsed = JSON.parse(res.text) as T;
      } catch {
        parsed = res.text as unknown as T;
      }
    }
    return { status: res.status, body: parsed };
  }

  private send(method: string, path: string, body: unknown, timeoutMs: number): Promise<{ status: number; text: string }> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise((resolve, reject) => {
      const headers: Record<string, string | number> = { Accept: 'application/json' };
      if (payload) {
        headers['Content-Type'] = 'application/json';
        headers['Content-Length'] = payload.length;
      }
      const req = request({ socketPath: this.socketPath, path, method, headers, agent: false }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (d: Buffer) => chunks.push(d));
        res.on('end', () => {
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') });
        });
        res.on('error', (e) => {
          clearTimeout(timer);
          reject(transportError(method, path, this.socketPath, e));
        });
      });
      const timer = setTimeout(() => {
        req.destroy();
        reject(new MvmError(ErrorCodes.TIMEOUT, `Firecracker ${method} ${path}: no answer within ${timeoutMs} ms`, { details: { method, path, socket: this.socketPath } }));
      }, timeoutMs);
      req.on('error', (e) => {
        clearTimeout(timer);
        reject(transportError(method, path, this.socketPath, e));
      });
      req.end(payload);
    });
  }

  // ---- Typed calls ----

  putMachineConfig(c: MachineConfig): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/machine-config', body: c });
  }
  getMachineConfig(): Promise<MachineConfig | undefined> {
    return this.call<MachineConfig>({ method: 'GET', path: '/machine-config' });
  }
  putBootSource(b: BootSource): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/boot-source', body: b });
  }
  putDrive(d: Drive): Promise<unknown> {
    return this.call({ method: 'PUT', path: `/drives/${encodeURIComponent(d.drive_id)}`, body: d });
  }
  putNetworkInterface(n: NetworkInterface): Promise<unknown> {
    return this.call({ method: 'PUT', path: `/network-interfaces/${encodeURIComponent(n.iface_id)}`, body: n });
  }
  putLogger(l: LoggerConfig): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/logger', body: l });
  }
  putMetrics(m: MetricsConfig): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/metrics', body: m });
  }
  putVsock(v: Vsock): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/vsock', body: v });
  }
  putMmdsConfig(c: MmdsConfig): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/mmds/config', body: c });
  }
  putMmds(data: Record<string, unknown>): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/mmds', body: data });
  }
  getMmds(): Promise<Record<string, unknown> | undefined> {
    return this.call<Record<string, unknown>>({ method: 'GET', path: '/mmds' });
  }
  putBalloon(b: Balloon): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/balloon', body: b });
  }
  action(action_type: FcActionType): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/actions', body: { action_type } });
  }
  patchVm(state: 'Paused' | 'Resumed'): Promise<unknown> {
    return this.call({ method: 'PATCH', path: '/vm', body: { state } });
  }
  createSnapshot(p: SnapshotCreateParams): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/snapshot/create', body: p });
  }
  loadSnapshot(p: SnapshotLoadParams): Promise<unknown> {
    return this.call({ method: 'PUT', path: '/snapshot/load', body: p });
  }
  async describeInstance(): Promise<InstanceInfo> {
    const r = await this.call<InstanceInfo>({ method: 'GET', path: '/' });
    if (!r || typeof r !== 'object') throw new MvmError(ErrorCodes.VMM_ERROR, 'Firecracker GET /: empty answer', { details: { path: '/' } });
    return r;
  }
  async getVersion(): Promise<string> {
    const r = await this.call<{ firecracker_version: string }>({ method: 'GET', path: '/version' });
    return r?.firecracker_version ?? 'unknown';
  }
}

function faultOf(text: string): string {
  try {
    const j = JSON.parse(text) as { fault_message?: unknown };
    if (typeof j.fault_message === 'string') return j.fault_message;
  } catch {
    /* not JSON */
  }
  return text.trim() || 'no fault message';
}

function transportError(method: string, path: string, socket: string, e: Error & { code?: string }): MvmError {
  return new MvmError(ErrorCodes.VMM_ERROR, `Firecracker ${method} ${path}: cannot reach the API socket ${socket}: ${e.code ?? e.message}`, {
    details: { method, path, socket, errno: e.code },
    cause: e,
  });
}
