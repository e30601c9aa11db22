#!/usr/bin/env node
/**
 * A process-level test peer for the `firecracker` binary: spawned exactly like
 * the real one (`--api-sock <path> --id <id>`), it serves Firecracker's API on
 * the Unix socket and enforces the protocol of the real binary (v1.17, checked
 * request by request against it by test/integration/firecracker-differential):
 *
 *  - HTTP: GET/PUT/PATCH (DELETE only to be refused); other methods, chunked
 *    bodies and bodies over `--http-api-max-payload-size` (51200) get
 *    Firecracker's `{ "error": ... }` answer; 204 on success, 400 (413 for a full
 *    MMDS data store) with `{"fault_message": ...}` on error;
 *  - routing as Firecracker's parser: the first path segment picks the resource
 *    (`/version/x` is `/version`, `/drives/a/b` is drive `a`), a body on a GET or
 *    none on a PUT/PATCH is refused first, the resource id is checked (empty,
 *    not alphanumeric/underscore) before the body, the body (serde: required
 *    fields, JSON types and integer ranges, enums, unknown fields where
 *    Firecracker denies them, a JSON array filling a struct positionally) before
 *    the phase, then path id == body id;
 *  - phases: pre-boot-only calls after boot, post-boot-only calls before boot
 *    (hot-plugging a drive or an interface: "PCI is not enabled"), InstanceStart
 *    once, with a boot source and a kernel that loads into the guest memory (an
 *    ELF image, or a test placeholder of zero bytes); a failed InstanceStart
 *    leaves the process configurable; snapshot/create only while paused;
 *    snapshot/load only before any boot-specific call reached the VMM (even one
 *    that failed), and a failed load ends the process (exit code 1);
 *  - files: kernel, initrd, drives, snapshot files must exist (read-write
 *    drives be writable); logger and metrics sinks are created when missing
 *    (`--log-path`/`--metrics-path` and the API alike); the logger can be
 *    reconfigured, metrics only set once; the vsock socket is bound at PUT (a
 *    second PUT removes the first socket) and at load;
 *  - MMDS: before boot PUT /mmds and PUT /mmds/config create the data store
 *    (a GET of none reads `{}`, a PATCH needs data); after boot it exists only
 *    with an MMDS configuration (booted or loaded), else every call on it is an
 *    error; `--mmds-size-limit` is enforced (413).
 *
 * On InstanceStart the "guest" boots: plausible kernel lines on stdout (the
 * serial console) ending with `MVM-READY id=<mvm.id from boot_args>`; with no
 * root drive and no initrd it panics like a real kernel and the VMM exits.
 * SendCtrlAltDel makes the guest reboot, which ends the process with code 0.
 * The guest "memory" is a random nonce born at boot: snapshot/create writes it
 * to the memory file and snapshot/load restores it, so memory survival can be
 * asserted end to end. Metrics are JSON lines of deltas, like Firecracker's.
 * The guest's drivers are all loaded: unlike the real binary on a host where
 * the guest never boots, the balloon device is active (PATCH /balloon works).
 *
 * The guest has a tiny serial shell on Firecracker's stdin (the console input
 * FIFO the driver passes): it echoes the typed line like a tty and runs
 * `echo [text] [> file]`, `cat file`, `hostname [name]`, `ip link set <dev>
 * address|up|down`, `ip addr add|flush|show`, `ip route replace default via`,
 * `sync`, `true`, `mvm-tick start|stop` (prints TICK every 0.2 s while the
 * vCPUs run) — enough for the agent's re-identification of a clone and for
 * tests to write a "tmpfs" file before a snapshot and read it after a restore.
 * The files, hostname and addresses are part of the guest memory.
 *
 * Limits: no KVM, no real guest, taps are not opened, Uffd memory backends are
 * refused at load, vhost-user drives are refused, and the routes the service
 * never uses (/cpu-config, /pmem, /serial, /hotplug/memory, balloon free page
 * hinting) are routed and phase-checked but answered with a fault. Fault
 * wording is Firecracker's where tests rely on it, else close to it.
 *
 * FC_PEER_LOG=<file> appends every request (and the answer) as a JSON line.
 * FC_PEER_ROOT=<dir> resolves absolute paths under <dir> (chroot emulation).
 */
import { randomBytes } from 'node:crypto';
import { accessSync, appendFileSync, closeSync, constants, existsSync, openSync, readFileSync, readSync, rmSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { createServer as createNetServer, isIPv4, type Server as NetServer } from 'node:net';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { FC_FAULTS, FC_INSTANCE_ID_RE } from '../../src/vmm/firecracker/protocol.js';

const VERSION = process.env.FC_PEER_VERSION ?? '1.10.1';
/**
 * Chroot emulation for jailer tests: absolute paths are resolved under
 * FC_PEER_ROOT, the way a jailed Firecracker sees its chroot.
 */
const ROOT = process.env.FC_PEER_ROOT;
const hostPath = (p: string): string => (ROOT && isAbsolute(p) ? join(ROOT, p) : resolve(p));
const DEFAULT_MAX_PAYLOAD = 51200;
/** Firecracker's exit codes: a generic error (a failed snapshot load, a sink it cannot open), a bad configuration (`--level`), bad arguments. */
const EXIT_GENERIC = 1;
const EXIT_BAD_CONFIGURATION = 152;
const EXIT_ARG_PARSING = 153;
const SNAPSHOT_MAGIC = 'mvm-firecracker-peer-snapshot/1';
const MEMORY_MAGIC = 'MVMFCPEERMEM1\n';

// ---------------------------------------------------------------- CLI

interface Cli {
  apiSock: string;
  id: string;
  /** `--log-path` / `--level` / `--show-level` and `--metrics-path`: sinks configured before anything is printed. */
  logPath?: string;
  showLevel: boolean;
  metricsPath?: string;
  maxPayload: number;
  mmdsSizeLimit: number;
}

/** Logger levels as Firecracker parses them (case-insensitive; `warning` is its own alias of `warn`). */
const LEVELS = ['off', 'error', 'warn', 'warning', 'info', 'debug', 'trace'];
const validLevel = (v: string): boolean => LEVELS.includes(v.toLowerCase());

function parseCli(argv: string[]): Cli {
  const takesValue = new Set([
    '--api-sock', '--id', '--start-time-us', '--start-time-cpu-us', '--parent-cpu-time-us', '--seccomp-filter', '--level', '--log-path', '--metrics-path',
    '--mmds-size-limit', '--http-api-max-payload-size', '--module',
  ]);
  const flags = new Set(['--boot-timer', '--no-seccomp', '--show-level', '--show-log-origin', '--version', '--help', '--enable-pci']);
  const vals: Record<string, string> = {};
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(0, eq) : a;
    if (flags.has(name)) {
      vals[name] = 'true';
      continue;
    }
    if (takesValue.has(name)) {
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined) fatalCli(`Argument '${name}' requires a value`);
      vals[name] = v!;
      continue;
    }
    fatalCli(`Found argument '${a}' which wasn't expected, or isn't valid in this context.`);
  }
  if (vals['--version']) {
    process.stdout.write(`Firecracker v${VERSION}\n\n`);
    process.exit(0);
  }
  const id = vals['--id'] ?? 'anonymous-instance';
  if (!FC_INSTANCE_ID_RE.test(id)) {
    // Firecracker v1.17 panics on it (SIGABRT), it does not report an argument error.
    const bad = [...id].findIndex((c) => !/[A-Za-z0-9-]/.test(c));
    panic(id.length < 1 || id.length > 64 ? `Invalid instance ID: InvalidLen(${id.length}, 1, 64)` : `Invalid instance ID: InvalidChar('${id[bad]}', ${bad})`);
  }
  const level = vals['--level'];
  if (level !== undefined && !validLevel(level)) {
    process.stderr.write(`Invalid value for logger level: Failed to parse string to level filter: ${level}.Possible values: [Error, Warning, Info, Debug]\n`);
    process.exit(EXIT_BAD_CONFIGURATION);
  }
  const num = (name: string, dflt: number): number => {
    const v = vals[name];
    if (v === undefined) return dflt;
    const n = Number(v);
    if (!Number.isInteger(n) || n < 0) fatalCli(`Invalid value for ${name}: ${v}`);
    return n;
  };
  const maxPayload = num('--http-api-max-payload-size', DEFAULT_MAX_PAYLOAD);
  return {
    apiSock: vals['--api-sock'] ?? '/run/firecracker.socket',
    id,
    ...(vals['--log-path'] ? { logPath: vals['--log-path'] } : {}),
    showLevel: vals['--show-level'] === 'true',
    ...(vals['--metrics-path'] ? { metricsPath: vals['--metrics-path'] } : {}),
    maxPayload,
    // The data store limit defaults to the API payload limit.
    mmdsSizeLimit: num('--mmds-size-limit', maxPayload),
  };
}

function fatalCli(msg: string): never {
  process.stderr.write(`Arguments parsing error: ${msg}\n`);
  process.exit(EXIT_ARG_PARSING);
}

/** A Rust panic: the message, then the process aborts (SIGABRT), as Firecracker's release build does. */
function panic(msg: string): never {
  process.stderr.write(`Firecracker panicked: ${msg}\n`);
  process.kill(process.pid, 'SIGABRT');
  // The signal is on its way; make sure nothing runs meanwhile.
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2000);
  process.exit(134);
}

// ---------------------------------------------------------------- body validation (serde-like)

type FieldType =
  | 'u8' | 'u16' | 'u32' | 'u64' | 'usize' | 'bool' | 'string' | 'string[]' | 'json' | 'mac' | 'ipv4' | 'level'
  | { enum: string[] }
  | { obj: Schema }
  | { arr: Schema };

interface Field {
  type: FieldType;
  required?: boolean;
  /** An `Option<T>`: null means absent. */
  nullable?: boolean;
}

interface Schema {
  /** The Rust struct's name (serde's messages name it). */
  name: string;
  /** In Firecracker's declaration order: serde lists them so, and fills them so from a JSON array. */
  fields: Record<string, Field>;
  /** The struct accepts unknown fields (no `deny_unknown_fields`). */
  lenient?: boolean;
}

const MAX: Record<string, number> = { u8: 255, u16: 65535, u32: 4294967295, u64: Number.MAX_SAFE_INTEGER, usize: Number.MAX_SAFE_INTEGER };

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (typeof v === 'string') return `string ${JSON.stringify(v)}`;
  if (typeof v === 'boolean') return `boolean \`${v}\``;
  if (typeof v === 'number') return Number.isInteger(v) ? `integer \`${v}\`` : `floating point \`${v}\``;
  if (Array.isArray(v)) return 'sequence';
  return 'map';
}

/** serde's "expected ..." list: `a`, `a` or `b`, one of `a`, `b`, `c`. */
function expected(names: string[]): string {
  const q = names.map((n) => `\`${n}\``);
  if (q.length === 0) return 'there are no fields';
  if (q.length === 1) return `expected ${q[0]}`;
  if (q.length === 2) return `expected ${q[0]} or ${q[1]}`;
  return `expected one of ${q.join(', ')}`;
}

/** Returns a serde-style error detail, or undefined. A JSON array fills the struct's fields in order. */
function check(body: unknown, schema: Schema): string | undefined {
  const names = Object.keys(schema.fields);
  let b: Record<string, unknown>;
  if (Array.isArray(body)) {
    if (body.length > names.length) return 'trailing characters';
    b = Object.fromEntries(body.map((v, i) => [names[i]!, v]));
    const missing = names.findIndex((n, i) => i >= body.length && schema.fields[n]!.required);
    if (missing >= 0) return `invalid length ${body.length}, expected struct ${schema.name} with ${names.length} elements`;
  } else if (body && typeof body === 'object') {
    b = body as Record<string, unknown>;
    if (!schema.lenient) {
      for (const k of Object.keys(b)) if (!(k in schema.fields)) return `unknown field \`${k}\`, ${expected(names)}`;
    }
  } else {
    return `invalid type: ${describe(body)}, expected struct ${schema.name}`;
  }
  for (const [k, spec] of Object.entries(schema.fields)) {
    if (!(k in b) || b[k] === undefined || (spec.nullable && b[k] === null)) {
      if (spec.required) return `missing field \`${k}\``;
      continue;
    }
    const err = checkValue(b[k], spec.type);
    if (err) return err;
  }
  return undefined;
}

function checkValue(v: unknown, t: FieldType): string | undefined {
  if (typeof t === 'string') {
    switch (t) {
      case 'bool':
        return typeof v === 'boolean' ? undefined : `invalid type: ${describe(v)}, expected a boolean`;
      case 'string':
        return typeof v === 'string' ? undefined : `invalid type: ${describe(v)}, expected a string`;
      case 'string[]':
        if (!Array.isArray(v)) return `invalid type: ${describe(v)}, expected a sequence`;
        for (const x of v) if (typeof x !== 'string') return `invalid type: ${describe(x)}, expected a string`;
        return undefined;
      case 'mac':
        if (typeof v !== 'string') return `invalid type: ${describe(v)}, expected a string`;
        return /^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(v) ? undefined : 'The provided MAC address is invalid.';
      case 'ipv4':
        if (typeof v !== 'string') return `invalid type: ${describe(v)}, expected IPv4 address`;
        return isIPv4(v) ? undefined : 'invalid IPv4 address syntax';
      case 'level':
        if (typeof v !== 'string') return `invalid type: ${describe(v)}, expected a string`;
        return validLevel(v) ? undefined : 'Invalid LevelFilter';
      case 'json':
        return undefined;
      default: {
        if (typeof v !== 'number' || !Number.isInteger(v)) return `invalid type: ${describe(v)}, expected ${t}`;
        if (v < 0 || v > MAX[t]!) return `invalid value: integer \`${v}\`, expected ${t}`;
        return undefined;
      }
    }
  }
  if ('enum' in t) {
    if (typeof v !== 'string') return `invalid type: ${describe(v)}, expected a string`;
    return t.enum.includes(v) ? undefined : `unknown variant \`${v}\`, ${expected(t.enum)}`;
  }
  if ('obj' in t) return check(v, t.obj);
  if (!Array.isArray(v)) return `invalid type: ${describe(v)}, expected a sequence`;
  for (const x of v) {
    const e = check(x, t.arr);
    if (e) return e;
  }
  return undefined;
}

const schema = (name: string, fields: Record<string, Field>, lenient = false): Schema => ({ name, fields, ...(lenient ? { lenient } : {}) });
// Firecracker's TokenBucket takes unknown fields; its RateLimiter does not.
const TOKEN_BUCKET = schema('TokenBucketConfig', { size: { type: 'u64', required: true }, one_time_burst: { type: 'u64', nullable: true }, refill_time: { type: 'u64', required: true } }, true);
const RATE_LIMITER = schema('RateLimiterConfig', { bandwidth: { type: { obj: TOKEN_BUCKET }, nullable: true }, ops: { type: { obj: TOKEN_BUCKET }, nullable: true } });
const S = {
  machine: schema('MachineConfig', {
    vcpu_count: { type: 'u8', required: true },
    mem_size_mib: { type: 'usize', required: true },
    smt: { type: 'bool' },
    cpu_template: { type: { enum: ['C3', 'T2', 'T2S', 'None', 'T2CL', 'T2A'] }, nullable: true },
    track_dirty_pages: { type: 'bool' },
    huge_pages: { type: { enum: ['None', 'Transparent', '2M'] } },
  }),
  boot: schema('BootSourceConfig', { kernel_image_path: { type: 'string', required: true }, initrd_path: { type: 'string', nullable: true }, boot_args: { type: 'string', nullable: true } }),
  drive: schema('BlockDeviceConfig', {
    drive_id: { type: 'string', required: true },
    partuuid: { type: 'string', nullable: true },
    is_root_device: { type: 'bool', required: true },
    cache_type: { type: { enum: ['Unsafe', 'Writeback'] } },
    is_read_only: { type: 'bool', nullable: true },
    path_on_host: { type: 'string', nullable: true },
    rate_limiter: { type: { obj: RATE_LIMITER }, nullable: true },
    io_engine: { type: { enum: ['Async', 'Sync'] } },
    socket: { type: 'string', nullable: true },
  }),
  partialDrive: schema('BlockDeviceUpdateConfig', { drive_id: { type: 'string', required: true }, path_on_host: { type: 'string', nullable: true }, rate_limiter: { type: { obj: RATE_LIMITER }, nullable: true } }),
  net: schema('NetworkInterfaceConfig', {
    iface_id: { type: 'string', required: true },
    host_dev_name: { type: 'string', required: true },
    guest_mac: { type: 'mac', nullable: true },
    mtu: { type: 'u16', nullable: true },
    rx_rate_limiter: { type: { obj: RATE_LIMITER }, nullable: true },
    tx_rate_limiter: { type: { obj: RATE_LIMITER }, nullable: true },
  }),
  partialNet: schema('NetworkInterfaceUpdateConfig', { iface_id: { type: 'string', required: true }, rx_rate_limiter: { type: { obj: RATE_LIMITER }, nullable: true }, tx_rate_limiter: { type: { obj: RATE_LIMITER }, nullable: true } }),
  logger: schema('LoggerConfig', {
    log_path: { type: 'string', nullable: true },
    level: { type: 'level', nullable: true },
    show_level: { type: 'bool', nullable: true },
    show_log_origin: { type: 'bool', nullable: true },
    module: { type: 'string', nullable: true },
  }),
  // Firecracker's MetricsConfig takes unknown fields.
  metrics: schema('MetricsConfig', { metrics_path: { type: 'string', required: true } }, true),
  vsock: schema('VsockDeviceConfig', { vsock_id: { type: 'string', nullable: true }, guest_cid: { type: 'u32', required: true }, uds_path: { type: 'string', required: true } }),
  mmdsConfig: schema('MmdsConfig', {
    version: { type: { enum: ['V1', 'V2'] } },
    network_interfaces: { type: 'string[]', required: true },
    ipv4_address: { type: 'ipv4', nullable: true },
    imds_compat: { type: 'bool' },
  }),
  balloon: schema('BalloonDeviceConfig', {
    amount_mib: { type: 'u32', required: true },
    deflate_on_oom: { type: 'bool', required: true },
    stats_polling_interval_s: { type: 'u16' },
    free_page_hinting: { type: 'bool' },
    free_page_reporting: { type: 'bool' },
  }),
  balloonUpdate: schema('BalloonUpdateConfig', { amount_mib: { type: 'u32', required: true } }),
  balloonStatsUpdate: schema('BalloonUpdateStatsConfig', { stats_polling_interval_s: { type: 'u16', required: true } }),
  action: schema('ActionBody', { action_type: { type: { enum: ['FlushMetrics', 'InstanceStart', 'SendCtrlAltDel'] }, required: true } }),
  vm: schema('Vm', { state: { type: { enum: ['Paused', 'Resumed'] }, required: true } }),
  snapCreate: schema('CreateSnapshotParams', { snapshot_type: { type: { enum: ['Diff', 'Full'] } }, snapshot_path: { type: 'string', required: true }, mem_file_path: { type: 'string', required: true } }),
  snapLoad: schema('LoadSnapshotConfig', {
    snapshot_path: { type: 'string', required: true },
    mem_file_path: { type: 'string', nullable: true },
    mem_backend: { type: { obj: schema('MemBackendConfig', { backend_path: { type: 'string', required: true }, backend_type: { type: { enum: ['File', 'Uffd'] }, required: true } }) }, nullable: true },
    enable_diff_snapshots: { type: 'bool' },
    track_dirty_pages: { type: 'bool' },
    resume_vm: { type: 'bool' },
    // Firecracker's NetworkOverride takes unknown fields.
    network_overrides: { type: { arr: schema('NetworkOverride', { iface_id: { type: 'string', required: true }, host_dev_name: { type: 'string', required: true } }, true) } },
    // So does its VsockOverride.
    vsock_override: { type: { obj: schema('VsockOverride', { uds_path: { type: 'string', required: true } }, true) }, nullable: true },
    clock_realtime: { type: 'bool' },
  }),
  entropy: schema('EntropyDeviceConfig', { rate_limiter: { type: { obj: RATE_LIMITER }, nullable: true } }),
};

// ---------------------------------------------------------------- state

type Obj = Record<string, unknown>;

interface Sink {
  path: string;
  fd: number;
}

interface SnapshotState {
  magic: string;
  vmm_version: string;
  instance_id: string;
  machine: Obj;
  boot: Obj | undefined;
  drives: Obj[];
  ifaces: Obj[];
  vsock: Obj | undefined;
  mmdsConfig: Obj | undefined;
  balloon: Obj | undefined;
  entropy?: Obj | undefined;
  memory_bytes: number;
}

class Peer {
  booted = false;
  /** A boot-specific call reached the VMM (Firecracker's `boot_path`): a snapshot can no longer be loaded. */
  configured = false;
  paused = false;
  machine: Obj = { vcpu_count: 1, mem_size_mib: 128, smt: false, track_dirty_pages: false, huge_pages: 'None' };
  boot: Obj | undefined;
  drives = new Map<string, Obj>();
  ifaces = new Map<string, Obj>();
  vsock: Obj | undefined;
  vsockServer: NetServer | undefined;
  /** Host path of the bound vsock socket. */
  vsockPath: string | undefined;
  mmdsConfig: Obj | undefined;
  /** The MMDS data store, once created; `data` null = created but not initialized. */
  mmds: { data: unknown } | undefined;
  balloon: Obj | undefined;
  entropy: Obj | undefined;
  logger: (Sink & { showLevel: boolean }) | undefined;
  metrics: Sink | undefined;
  /** The guest's memory: a nonce born at boot, its shell's files and identity; carried by snapshots. */
  memory: GuestMemory | undefined;
  pendingCtrlAltDel = false;
  blockDeltas = new Map<string, { read_bytes: number; write_bytes: number; read_count: number; write_count: number }>();
  apiRequests = 0;
  missedMetrics = 0;

  constructor(readonly cli: Cli) {}

  state(): 'Not started' | 'Running' | 'Paused' {
    return !this.booted ? 'Not started' : this.paused ? 'Paused' : 'Running';
  }

  log(level: string, msg: string): void {
    const ts = new Date().toISOString();
    // As Firecracker does: without a logger, its own lines go to stdout (which is the guest console).
    if (!this.logger) {
      process.stdout.write(`${ts} [${this.cli.id}:fc_api] ${msg}\n`);
      return;
    }
    const line = `${ts} [${this.cli.id}:fc_api${this.logger.showLevel ? `:${level}` : ''}] ${msg}\n`;
    try {
      writeSync(this.logger.fd, line);
    } catch {
      /* full pipe: the line is lost, as with Firecracker */
    }
  }

  flushMetrics(): void {
    if (!this.metrics) return;
    const line: Obj = { utc_timestamp_ms: Date.now(), api_server: { process_startup_time_us: 0 }, put_api_requests: { count: this.apiRequests } };
    const agg = { read_bytes: 0, write_bytes: 0, read_count: 0, write_count: 0 };
    for (const id of this.drives.keys()) {
      const d = this.blockDeltas.get(id) ?? { read_bytes: 0, write_bytes: 0, read_count: 0, write_count: 0 };
      line[`block_${id}`] = { ...d, flush_count: 0 };
      agg.read_bytes += d.read_bytes;
      agg.write_bytes += d.write_bytes;
      agg.read_count += d.read_count;
      agg.write_count += d.write_count;
    }
    line.block = agg;
    line.vmm = { panic_count: 0 };
    line.logger = { missed_metrics_count: this.missedMetrics };
    this.blockDeltas.clear();
    this.apiRequests = 0;
    try {
      writeSync(this.metrics.fd, JSON.stringify(line) + '\n');
    } catch {
      this.missedMetrics += 1;
    }
  }

  addIo(id: string, d: Partial<{ read_bytes: number; write_bytes: number; read_count: number; write_count: number }>): void {
    const cur = this.blockDeltas.get(id) ?? { read_bytes: 0, write_bytes: 0, read_count: 0, write_count: 0 };
    cur.read_bytes += d.read_bytes ?? 0;
    cur.write_bytes += d.write_bytes ?? 0;
    cur.read_count += d.read_count ?? 0;
    cur.write_count += d.write_count ?? 0;
    this.blockDeltas.set(id, cur);
  }
}


interface GuestMemory {
  nonce: string;
  files?: Record<string, string>;
  hostname?: string;
  net?: Record<string, { mac?: string; ip?: string; up?: boolean }>;
  gateway?: string;
}

const newMemory = (): GuestMemory => ({ nonce: randomBytes(8).toString('hex'), files: {}, net: {} });

// ---------------------------------------------------------------- guest shell

/** Split on `;` and `&&` outside quotes. */
function splitCommands(line: string): string[] {
  const out: string[] = [];
  let cur = '';
  let q: string | undefined;
  for (let i = 0; i < line.length; i++) {
    const c = line[i]!;
    if (q) {
      if (c === q) q = undefined;
      cur += c;
    } else if (c === '"' || c === "'") {
      q = c;
      cur += c;
    } else if (c === ';') {
      out.push(cur);
      cur = '';
    } else if (c === '&' && line[i + 1] === '&') {
      out.push(cur);
      cur = '';
      i++;
    } else cur += c;
  }
  out.push(cur);
  return out.map((x) => x.trim()).filter(Boolean);
}

/** Shell words: whitespace separates, quotes group (and adjoining parts concatenate); `$((a op b))` expands outside single quotes. */
function words(cmd: string): string[] {
  const out: string[] = [];
  let cur: string | undefined;
  let q: string | undefined;
  const arith = /^\$\(\(\s*(-?\d+)\s*([-+*/%])\s*(-?\d+)\s*\)\)/;
  for (let i = 0; i < cmd.length; i++) {
    const c = cmd[i]!;
    if (q !== "'" && c === '$') {
      const m = arith.exec(cmd.slice(i));
      if (m) {
        const [x, y] = [Number(m[1]), Number(m[3])];
        const v = m[2] === '+' ? x + y : m[2] === '-' ? x - y : m[2] === '*' ? x * y : m[2] === '/' ? Math.trunc(x / y) : x % y;
        cur = (cur ?? '') + String(v);
        i += m[0].length - 1;
        continue;
      }
    }
    if (q) {
      if (c === q) q = undefined;
      else cur = (cur ?? '') + c;
    } else if (c === '"' || c === "'") {
      q = c;
      cur ??= '';
    } else if (/\s/.test(c)) {
      if (cur !== undefined) out.push(cur);
      cur = undefined;
    } else cur = (cur ?? '') + c;
  }
  if (cur !== undefined) out.push(cur);
  return out;
}

/** Run one typed line in the guest; returns the output lines. */
export function guestShell(mem: GuestMemory, line: string): string[] {
  const out: string[] = [];
  mem.files ??= {};
  mem.net ??= {};
  const dev = (name: string): { mac?: string; ip?: string; up?: boolean } => (mem.net![name] ??= {});
  for (const cmd of splitCommands(line)) {
    const redirect = /^(.*?)\s*>\s*(\S+)$/.exec(cmd);
    const w = words(redirect ? redirect[1]! : cmd);
    const [c, ...a] = w;
    const emit = (text: string): void => {
      if (redirect) mem.files![redirect[2]!] = text + '\n';
      else out.push(text);
    };
    if (c === 'echo') emit(a.join(' '));
    else if (c === 'cat') {
      for (const f of a) {
        const t = mem.files[f];
        if (t === undefined) out.push(`cat: ${f}: No such file or directory`);
        else out.push(...t.replace(/\n$/, '').split('\n'));
      }
    } else if (c === 'hostname') {
      if (a[0]) mem.hostname = a[0];
      else emit(mem.hostname ?? '(none)');
    } else if (c === 'mvm-tick') {
      // A guest program that prints TICK every 0.2 s of guest run time (vCPUs paused: nothing).
      if (a[0] === 'start') startTicker();
      else stopTicker();
    } else if (c === 'sync' || c === 'true') {
      /* nothing to do */
    } else if (c === 'ip') {
      const args = a.filter((x) => x !== '-4');
      const [obj, verb, ...rest] = args;
      if (obj === 'link' && verb === 'set' && rest[0]) {
        const d = dev(rest[0]);
        if (rest[1] === 'address' && rest[2]) d.mac = rest[2].toLowerCase();
        else if (rest[1] === 'up' || rest[1] === 'down') d.up = rest[1] === 'up';
      } else if (obj === 'addr' && verb === 'flush' && rest[0] === 'dev' && rest[1]) delete dev(rest[1]).ip;
      else if (obj === 'addr' && verb === 'add' && rest[1] === 'dev' && rest[2]) dev(rest[2]).ip = rest[0];
      else if (obj === 'addr' && verb === 'show') {
        const names = rest[0] ? [rest[0]] : Object.keys(mem.net);
        names.forEach((n, i) => {
          const d = mem.net![n];
          if (!d) {
            out.push(`Device "${n}" does not exist.`);
            return;
          }
          out.push(`${i + 2}: ${n}: <BROADCAST,MULTICAST${d.up === false ? '' : ',UP,LOWER_UP'}> mtu 1500`);
          out.push(`    link/ether ${d.mac ?? '00:00:00:00:00:00'} brd ff:ff:ff:ff:ff:ff`);
          if (d.ip) out.push(`    inet ${d.ip} scope global ${n}`);
        });
      } else if (obj === 'route' && verb === 'replace' && rest[0] === 'default' && rest[1] === 'via' && rest[2]) mem.gateway = rest[2];
      else out.push(`ip: unsupported by the peer guest: ${cmd}`);
    } else out.push(`sh: ${c}: not found`);
  }
  return out;
}

let ticker: NodeJS.Timeout | undefined;
let tickerPeer: Peer | undefined;
function startTicker(): void {
  stopTicker();
  ticker = setInterval(() => {
    if (tickerPeer?.booted && !tickerPeer.paused) process.stdout.write('TICK\n');
  }, 200);
}
function stopTicker(): void {
  if (ticker) clearInterval(ticker);
  ticker = undefined;
}

/** The guest reads its serial console input (Firecracker's stdin) line by line, while booted and running. */
function serveConsoleInput(peer: Peer): void {
  tickerPeer = peer;
  let buf = '';
  const pending: string[] = [];
  const drain = (): void => {
    while (pending.length > 0) {
      if (!peer.booted || peer.paused || !peer.memory) {
        setTimeout(drain, 20);
        return;
      }
      const line = pending.shift()!;
      // A tty echoes what is typed; the shell's output follows.
      process.stdout.write(`# ${line}\n`);
      for (const l of guestShell(peer.memory, line)) process.stdout.write(l + '\n');
    }
  };
  process.stdin.on('data', (d: Buffer) => {
    buf += d.toString('utf8');
    let nl: number;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl).replace(/\r$/, '');
      buf = buf.slice(nl + 1);
      if (line.trim()) pending.push(line);
    }
    drain();
  });
  process.stdin.on('error', () => undefined);
  process.stdin.on('end', () => undefined);
}


// ---------------------------------------------------------------- helpers

class Fault extends Error {
  constructor(
    message: string,
    readonly status = 400,
    /** After answering, the process ends (a failed snapshot load). */
    readonly fatal = false,
  ) {
    super(message);
  }
}

/** Errors of Firecracker's HTTP layer: 400 with `{ "error": ... }` (not a fault_message), before any routing. */
class HttpError extends Error {}

const fault = (msg: string): Fault => new Fault(msg);
const enoent = 'No such file or directory (os error 2)';

/** Why `path` cannot be opened for reading (a directory can), or undefined. */
function fileError(path: string): string | undefined {
  try {
    statSync(hostPath(path));
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EACCES' ? 'Permission denied (os error 13)' : enoent;
  }
}

function openSink(path: string): number {
  // Firecracker opens log and metrics sinks non-blocking and read-write, creating a missing file.
  const p = hostPath(path);
  if (existsSync(p) && statSync(p).isFIFO()) return openSync(p, constants.O_RDWR | constants.O_NONBLOCK);
  return openSync(p, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT | constants.O_NONBLOCK, 0o644);
}

/**
 * Whether Firecracker could load this kernel into `memMiB` of guest memory: an x86-64 ELF whose
 * loadable segments end inside it. A file of zero bytes is the test placeholder for a kernel.
 */
function kernelLoadError(path: string, memMiB: number): string | undefined {
  let fd: number | undefined;
  try {
    fd = openSync(hostPath(path), 'r');
    const head = Buffer.alloc(64);
    const n = readSync(fd, head, 0, 64, 0);
    const size = statSync(hostPath(path)).size;
    if (isPlaceholder(fd, size)) return undefined;
    if (n < 64 || head.readUInt32BE(0) !== 0x7f454c46) return 'Kernel Loader: failed to load ELF kernel image: Kernel Loader: Unable to read elf header';
    if (head[4] !== 2 || head.readUInt16LE(18) !== 62) return 'Kernel Loader: failed to load ELF kernel image: Kernel Loader: Invalid ELF magic number';
    const phoff = Number(head.readBigUInt64LE(32));
    const phentsize = head.readUInt16LE(54);
    const phnum = head.readUInt16LE(56);
    const ph = Buffer.alloc(phentsize * phnum);
    readSync(fd, ph, 0, ph.length, phoff);
    let end = 0;
    for (let i = 0; i < phnum; i++) {
      const o = i * phentsize;
      if (ph.readUInt32LE(o) !== 1) continue; // PT_LOAD
      end = Math.max(end, Number(ph.readBigUInt64LE(o + 24)) + Number(ph.readBigUInt64LE(o + 40)));
    }
    if (end > memMiB * 1024 * 1024) return 'Kernel Loader: failed to load ELF kernel image: Kernel Loader: Unable to read kernel image';
    return undefined;
  } catch (e) {
    return `Kernel Loader: failed to load ELF kernel image: ${errText(e)}`;
  } finally {
    if (fd !== undefined) closeSync(fd);
  }
}

/** All bytes zero (the placeholder kernels of the unit tests), checked on the first 64 KiB. */
function isPlaceholder(fd: number, size: number): boolean {
  if (size === 0) return false;
  const buf = Buffer.alloc(Math.min(size, 65536));
  readSync(fd, buf, 0, buf.length, 0);
  return buf.every((b) => b === 0);
}

function maskBits(mask: string): number {
  return mask.split('.').reduce((n, o) => n + (Number(o) >>> 0).toString(2).split('').filter((b) => b === '1').length, 0);
}

function bootArg(args: string, key: string): string | undefined {
  for (const tok of args.split(/\s+/)) if (tok.startsWith(key + '=')) return tok.slice(key.length + 1);
  return undefined;
}

/** The guest prints on its serial console, one line per gap; a paused guest prints nothing until resumed. */
function writeConsole(peer: Peer, lines: string[], gapMs: number, then?: () => void): void {
  let i = 0;
  const next = (): void => {
    if (peer.paused) {
      setTimeout(next, 10);
      return;
    }
    if (i >= lines.length) {
      then?.();
      return;
    }
    process.stdout.write(lines[i++] + '\n');
    setTimeout(next, gapMs);
  };
  next();
}

function guestReboot(peer: Peer, why: string): void {
  writeConsole(peer, [why, 'reboot: Restarting system'], 5, () => {
    peer.log('INFO', 'Vmm is stopping.');
    setTimeout(() => process.exit(0), 20);
  });
}

function bootGuest(peer: Peer): void {
  const boot = peer.boot!;
  const args = String(boot.boot_args ?? '');
  const mem = Number(peer.machine.mem_size_mib);
  const stamp = (ms: number): string => `[${(ms / 1000).toFixed(6).padStart(12)}]`;
  peer.memory ??= newMemory();
  // The kernel's ip= argument and the NICs' MACs configure eth<i>, as in a real guest.
  const gm = peer.memory;
  gm.net ??= {};
  [...peer.ifaces.values()].forEach((n, i) => {
    const d = (gm.net![`eth${i}`] ??= {});
    if (n.guest_mac) d.mac = String(n.guest_mac).toLowerCase();
    d.up = true;
  });
  const ipArg = bootArg(args, 'ip');
  if (ipArg) {
    const [client, , gw, mask, host] = ipArg.split(':');
    if (client && gm.net.eth0) gm.net.eth0.ip = `${client}/${maskBits(mask ?? '')}`;
    if (gw) gm.gateway = gw;
    if (host) gm.hostname = host;
  }
  const lines = [
    `${stamp(0)} Linux version 6.1.0-mvm-peer (firecracker-peer@mvm) #1 SMP PREEMPT_DYNAMIC`,
    `${stamp(0)} Command line: ${args}`,
    `${stamp(0)} Memory: ${mem * 1024 - 20000}K/${mem * 1024}K available`,
    `${stamp(2)} smp: Brought up 1 node, ${String(peer.machine.vcpu_count)} CPUs`,
  ];
  const drives = [...peer.drives.values()].sort((a, b) => Number(b.is_root_device) - Number(a.is_root_device));
  drives.forEach((d, i) => {
    const letter = String.fromCharCode(97 + i);
    let size = 0;
    try {
      size = statSync(hostPath(String(d.path_on_host))).size;
    } catch {
      /* checked at PUT */
    }
    lines.push(`${stamp(8 + i)} virtio_blk virtio${i}: [vd${letter}] ${Math.ceil(size / 512)} 512-byte logical blocks`);
  });
  const root = drives.find((d) => d.is_root_device === true);
  if (!root && !boot.initrd_path) {
    // A real kernel with nothing to mount panics; with panic=<n> it reboots, and Firecracker exits.
    writeConsole(
      peer,
      [...lines, `${stamp(30)} VFS: Cannot open root device "vda" or unknown-block(0,0): error -6`, `${stamp(30)} Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)`],
      3,
      () => guestReboot(peer, `${stamp(31)} Rebooting in 1 seconds..`),
    );
    return;
  }
  if (root) {
    const rid = String(root.drive_id);
    peer.addIo(rid, { read_bytes: 4 * 1024 * 1024, read_count: 1024 });
    lines.push(`${stamp(20)} EXT4-fs (vda): mounted filesystem ${root.is_read_only ? 'readonly' : 'with ordered data mode'}`);
  }
  lines.push(`${stamp(30)} Run /sbin/init as init process`);
  lines.push(`mvm-peer-guest: memory nonce=${peer.memory.nonce}`);
  const id = bootArg(args, 'mvm.id');
  if (id) lines.push(`MVM-READY id=${id}`);
  writeConsole(peer, lines, 3);
}


// ---------------------------------------------------------------- routing (Firecracker's request parser)

type Action =
  | 'GetInfo' | 'GetVersion' | 'GetMachine' | 'GetVmConfig' | 'GetBalloon' | 'GetBalloonStats' | 'GetMmds'
  | 'InstanceStart' | 'FlushMetrics' | 'SendCtrlAltDel'
  | 'PutBalloon' | 'PutBoot' | 'PutDrive' | 'PutLogger' | 'PutMachine' | 'PatchMachine' | 'PutMetrics' | 'PutMmds' | 'PutMmdsConfig' | 'PutNet'
  | 'PutVsock' | 'PutEntropy' | 'SnapshotCreate' | 'SnapshotLoad'
  | 'PatchBalloon' | 'PatchBalloonStats' | 'PatchDrive' | 'PatchMmds' | 'PatchNet' | 'Pause' | 'Resume'
  // Routed and phase-checked, not simulated.
  | 'GetHintingStatus' | 'PatchHinting' | 'PutCpuConfig' | 'PutPmem' | 'PutSerial' | 'HotplugMemory';

interface Parsed {
  action: Action;
  /** The validated struct body, or the raw JSON value (MMDS data). */
  body: Obj;
  raw?: unknown;
}

/** Accepted only before InstanceStart / snapshot load. */
const PRE_BOOT = new Set<Action>([
  'PutBalloon', 'PutBoot', 'PutDrive', 'PutLogger', 'PutMachine', 'PatchMachine', 'PutMetrics', 'PutMmdsConfig', 'PutNet', 'PutVsock', 'PutEntropy',
  'SnapshotLoad', 'InstanceStart', 'PutCpuConfig', 'PutSerial', 'PutPmem',
]);
/** Accepted only after it. */
const POST_BOOT = new Set<Action>([
  'GetBalloonStats', 'PatchBalloon', 'PatchBalloonStats', 'PatchDrive', 'PatchNet', 'Pause', 'Resume', 'SnapshotCreate', 'FlushMetrics', 'SendCtrlAltDel',
  'GetHintingStatus', 'PatchHinting', 'HotplugMemory',
]);
/** Boot-specific configuration: once one reached the VMM (even if it failed), a snapshot cannot be loaded. */
const BOOT_PATH = new Set<Action>(['PutBalloon', 'PutBoot', 'PutDrive', 'PutMachine', 'PatchMachine', 'PutMmdsConfig', 'PutNet', 'PutVsock', 'PutEntropy']);

/** Rust's char::is_alphanumeric, plus underscores. */
const RESOURCE_ID_RE = /^[\p{Alphabetic}\p{N}_]+$/u;

function checkedId(id: string | undefined): string {
  if (!id) throw fault('The ID cannot be empty.');
  if (!RESOURCE_ID_RE.test(id)) throw fault(FC_FAULTS.invalidId);
  return id;
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch (e) {
    throw fault(FC_FAULTS.serde((e as Error).message));
  }
}

/** Deserialize `text` into `schema` (a JSON array fills the fields in order). */
function struct(text: string, s: Schema): Obj {
  const v = parseJson(text);
  const e = check(v, s);
  if (e) throw fault(FC_FAULTS.serde(e));
  if (!Array.isArray(v)) return v as Obj;
  const names = Object.keys(s.fields);
  return Object.fromEntries(v.map((x, i) => [names[i]!, x]));
}

const partial = (s: Schema): Schema => ({ ...s, name: `${s.name}Update`, fields: Object.fromEntries(Object.entries(s.fields).map(([k, v]) => [k, { ...v, required: false }])) });

/**
 * Firecracker's parser: the first path segment names the resource, the next one an id or a
 * sub-resource, anything after it is ignored; no query-string handling (`/?x` is resource `?x`).
 */
function route(method: string, url: string, text: string | undefined): Parsed {
  const tokens = url.replace(/^\/+/, '').split('/');
  if (tokens.length > 0 && tokens[tokens.length - 1] === '') tokens.pop(); // split_terminator
  const first = tokens[0] ?? '';
  const next = tokens[1];
  const p = (action: Action, body: Obj = {}, raw?: unknown): Parsed => ({ action, body, ...(raw !== undefined ? { raw } : {}) });
  if (method === 'GET') {
    if (text !== undefined) throw fault('GET request cannot have a body.');
    switch (first) {
      case '':
        return p('GetInfo');
      case 'balloon':
        if (next === undefined) return p('GetBalloon');
        if (next === 'statistics') return p('GetBalloonStats');
        if (next === 'hinting') {
          if (tokens[2] === 'status') return p('GetHintingStatus');
          throw fault(`Unrecognized GET request path \`/hinting/${tokens[2] ?? ''}\`.`);
        }
        throw fault(`Unrecognized GET request path \`${next}\`.`);
      case 'version':
        return p('GetVersion');
      case 'vm':
        if (next === 'config') return p('GetVmConfig');
        break;
      case 'machine-config':
        return p('GetMachine');
      case 'mmds':
        return p('GetMmds');
      case 'hotplug':
        if (next === 'memory') return p('HotplugMemory');
        break;
    }
  } else if (method === 'PUT') {
    if (text === undefined) throw fault(FC_FAULTS.emptyPut);
    switch (first) {
      case 'actions': {
        const b = struct(text, S.action);
        return p(b.action_type as Action);
      }
      case 'balloon':
        return p('PutBalloon', struct(text, S.balloon));
      case 'boot-source':
        return p('PutBoot', struct(text, S.boot));
      case 'cpu-config':
        return p('PutCpuConfig', {}, parseJson(text));
      case 'drives': {
        const id = checkedId(next);
        const b = struct(text, S.drive);
        if (b.drive_id !== id) throw fault(FC_FAULTS.idMismatch);
        return p('PutDrive', b);
      }
      case 'pmem':
        checkedId(next);
        return p('PutPmem', {}, parseJson(text));
      case 'logger':
        return p('PutLogger', struct(text, S.logger));
      case 'serial':
        return p('PutSerial', {}, parseJson(text));
      case 'machine-config':
        return p('PutMachine', struct(text, S.machine));
      case 'metrics':
        return p('PutMetrics', struct(text, S.metrics));
      case 'mmds':
        if (next === undefined) return p('PutMmds', {}, parseJson(text));
        if (next === 'config') return p('PutMmdsConfig', struct(text, S.mmdsConfig));
        throw fault(`Unrecognized PUT request path \`${next}\`.`);
      case 'network-interfaces': {
        const id = checkedId(next);
        const b = struct(text, S.net);
        if (b.iface_id !== id) throw fault(`The id from the path [${id}] does not match the id from the body [${String(b.iface_id)}]!`);
        return p('PutNet', b);
      }
      case 'snapshot':
        if (next === undefined) throw fault('Missing snapshot operation type.');
        if (next === 'create') return p('SnapshotCreate', struct(text, S.snapCreate));
        if (next === 'load') {
          const b = struct(text, S.snapLoad);
          const hasFile = b.mem_file_path !== undefined && b.mem_file_path !== null;
          const hasBackend = b.mem_backend !== undefined && b.mem_backend !== null;
          if (hasFile && hasBackend) throw fault(FC_FAULTS.serde('too many fields: either `mem_backend` or `mem_file_path` exclusively is required'));
          if (!hasFile && !hasBackend) throw fault(FC_FAULTS.serde('missing field: either `mem_backend` or `mem_file_path` is required'));
          return p('SnapshotLoad', b);
        }
        throw fault(FC_FAULTS.invalidPath('PUT', `/snapshot/${next}`));
      case 'vsock':
        return p('PutVsock', struct(text, S.vsock));
      case 'entropy':
        return p('PutEntropy', struct(text, S.entropy));
      case 'hotplug':
        if (next === 'memory') return p('HotplugMemory', {}, parseJson(text));
        break;
    }
  } else if (method === 'PATCH') {
    if (first === 'balloon') {
      // The balloon parses its own sub-paths, with or without a body.
      if (next === 'statistics' && text !== undefined) return p('PatchBalloonStats', struct(text, S.balloonStatsUpdate));
      if (next === 'hinting') {
        if (tokens[2] === 'start') {
          if (text !== undefined) parseJson(text);
          return p('PatchHinting');
        }
        if (tokens[2] === 'stop') return p('PatchHinting');
        throw fault(`Unrecognized PATCH request path \`/hinting/${tokens[2] ?? ''}\`.`);
      }
      if (text === undefined) throw fault(FC_FAULTS.emptyPatch);
      return p('PatchBalloon', struct(text, S.balloonUpdate));
    }
    if (text === undefined) throw fault(FC_FAULTS.emptyPatch);
    switch (first) {
      case 'drives': {
        const id = checkedId(next);
        const b = struct(text, S.partialDrive);
        if (b.drive_id !== id) throw fault(FC_FAULTS.idMismatch);
        return p('PatchDrive', b);
      }
      case 'machine-config': {
        const b = struct(text, partial(S.machine));
        if (Object.values(b).every((v) => v === undefined || v === null)) throw fault(FC_FAULTS.emptyPatch);
        return p('PatchMachine', b);
      }
      case 'mmds':
        return p('PatchMmds', {}, parseJson(text));
      case 'network-interfaces': {
        const id = checkedId(next);
        const b = struct(text, S.partialNet);
        if (b.iface_id !== id) throw fault(`The id from the path [${id}] does not match the id from the body [${String(b.iface_id)}]!`);
        return p('PatchNet', b);
      }
      case 'vm':
        return p(struct(text, S.vm).state === 'Paused' ? 'Pause' : 'Resume');
      case 'hotplug':
        if (next === 'memory') return p('HotplugMemory', {}, parseJson(text));
        break;
    }
  }
  throw fault(FC_FAULTS.invalidPath(method, first));
}

// ---------------------------------------------------------------- handlers

const present = (v: unknown): boolean => v !== undefined && v !== null;

function machineView(peer: Peer): Obj {
  const m = peer.machine;
  const out: Obj = { vcpu_count: m.vcpu_count, mem_size_mib: m.mem_size_mib, smt: m.smt, track_dirty_pages: m.track_dirty_pages, huge_pages: m.huge_pages };
  if (present(m.cpu_template) && m.cpu_template !== 'None') out.cpu_template = m.cpu_template;
  return out;
}

function driveView(d: Obj): Obj {
  return {
    drive_id: d.drive_id,
    partuuid: d.partuuid ?? null,
    is_root_device: d.is_root_device,
    cache_type: d.cache_type ?? 'Unsafe',
    is_read_only: d.is_read_only ?? false,
    path_on_host: d.path_on_host ?? null,
    rate_limiter: d.rate_limiter ?? null,
    io_engine: d.io_engine ?? 'Sync',
    socket: d.socket ?? null,
  };
}

function vmConfig(peer: Peer): Obj {
  const b = peer.boot;
  return {
    balloon: peer.balloon ?? null,
    drives: [...peer.drives.values()].map(driveView),
    'boot-source': { kernel_image_path: b?.kernel_image_path ?? '', initrd_path: b?.initrd_path ?? null, boot_args: b?.boot_args ?? null },
    'cpu-config': null,
    // Firecracker reports neither sink here, however they were set.
    logger: null,
    'machine-config': machineView(peer),
    metrics: null,
    'mmds-config': peer.mmdsConfig
      ? { version: peer.mmdsConfig.version ?? 'V1', network_interfaces: peer.mmdsConfig.network_interfaces, ipv4_address: peer.mmdsConfig.ipv4_address ?? '169.254.169.254', imds_compat: peer.mmdsConfig.imds_compat ?? false }
      : null,
    'network-interfaces': [...peer.ifaces.values()].map((n) => ({
      iface_id: n.iface_id,
      host_dev_name: n.host_dev_name,
      guest_mac: n.guest_mac ?? null,
      rx_rate_limiter: n.rx_rate_limiter ?? null,
      tx_rate_limiter: n.tx_rate_limiter ?? null,
    })),
    vsock: peer.vsock ? { guest_cid: peer.vsock.guest_cid, uds_path: peer.vsock.uds_path } : null,
    entropy: peer.entropy ? { rate_limiter: peer.entropy.rate_limiter ?? null } : null,
    pmem: [],
    'memory-hotplug': null,
  };
}

const mmdsUninitialized = 'MMDS error: The MMDS data store is not initialized.';

/** The data store: created on demand before boot; after boot it must exist. */
function mmdsStore(peer: Peer): { data: unknown } {
  if (!peer.mmds) {
    if (peer.booted) throw fault(mmdsUninitialized);
    peer.mmds = { data: null };
  }
  return peer.mmds;
}

function mmdsFits(peer: Peer, data: unknown): void {
  if (JSON.stringify(data).length > peer.cli.mmdsSizeLimit) throw new Fault("MMDS limit exceeded error: The MMDS patch request doesn't fit.", 413);
}

function handle(peer: Peer, req: Parsed): { status: number; json?: unknown } {
  const a = req.action;
  if (PRE_BOOT.has(a) && peer.booted) {
    // Drives and interfaces would be hot-plugged, which needs PCI.
    throw fault(a === 'PutDrive' || a === 'PutNet' || a === 'PutPmem' ? 'PCI is not enabled' : FC_FAULTS.notAfterBoot);
  }
  if (POST_BOOT.has(a) && !peer.booted) throw fault(FC_FAULTS.notBeforeBoot);
  if (BOOT_PATH.has(a)) peer.configured = true;
  const b = req.body;
  switch (a) {
    case 'GetInfo':
      return { status: 200, json: { id: peer.cli.id, state: peer.state(), vmm_version: VERSION, app_name: 'Firecracker' } };
    case 'GetVersion':
      return { status: 200, json: { firecracker_version: VERSION } };
    case 'GetMachine':
      return { status: 200, json: machineView(peer) };
    case 'GetVmConfig':
      return { status: 200, json: vmConfig(peer) };
    case 'PutMachine':
    case 'PatchMachine': {
      const given = Object.fromEntries(Object.entries(b).filter(([, v]) => v !== undefined && v !== null));
      const next: Obj = a === 'PutMachine' ? { smt: false, track_dirty_pages: false, huge_pages: 'None', ...given } : { ...peer.machine, ...given };
      const vcpu = Number(next.vcpu_count);
      if (vcpu < 1 || vcpu > 32 || (next.smt === true && vcpu > 1 && vcpu % 2 !== 0)) {
        throw fault('Machine config error: The number of vCPUs must be greater than 0, less than 32 and must be 1 or an even number if SMT is enabled.');
      }
      const mem = Number(next.mem_size_mib);
      if (mem < 1 || (next.huge_pages === '2M' && mem % 2 !== 0)) throw fault('Machine config error: The memory size (MiB) is either 0, or not a multiple of the configured page size.');
      peer.machine = next;
      return { status: 204 };
    }
    case 'PutBoot': {
      const ke = fileError(String(b.kernel_image_path));
      if (ke) throw fault(`Boot source error: The kernel file cannot be opened: ${ke}`);
      if (present(b.initrd_path)) {
        const ie = fileError(String(b.initrd_path));
        if (ie) throw fault(`Boot source error: The initrd file cannot be opened due to invalid path or invalid permissions. ${ie}`);
      }
      peer.boot = b;
      return { status: 204 };
    }
    case 'PutDrive': {
      const id = String(b.drive_id);
      const path = present(b.path_on_host) ? String(b.path_on_host) : undefined;
      if ((path === undefined) === !present(b.socket)) throw fault('Drive config error: Unable to create the virtio block device: Invalid block config.');
      if (path === undefined) throw fault('Drive config error: Unable to create the vhost-user block device: vhost-user drives are not simulated by the test peer');
      if (b.is_root_device === true) {
        for (const [other, d] of peer.drives) if (other !== id && d.is_root_device === true) throw fault('Drive config error: A root block device already exists!');
      }
      const p = hostPath(path);
      if (fileError(path)) throw fault(`Unable to create the block device: BackingFile(Os { code: 2, kind: NotFound, message: "No such file or directory" }, "${path}")`);
      if (statSync(p).isDirectory()) throw fault(`Unable to create the block device: BackingFile(Os { code: 21, kind: IsADirectory, message: "Is a directory" }, "${path}")`);
      try {
        accessSync(p, b.is_read_only === true ? constants.R_OK : constants.R_OK | constants.W_OK);
      } catch {
        throw fault(`Unable to create the block device: BackingFile(Os { code: 13, kind: PermissionDenied, message: "Permission denied" }, "${path}")`);
      }
      peer.drives.set(id, { ...b, is_read_only: b.is_read_only ?? false });
      return { status: 204 };
    }
    case 'PatchDrive': {
      const id = String(b.drive_id);
      const d = peer.drives.get(id);
      if (!d) throw fault('Drive config error: Unable to patch the block device: Failed perform action on device: Device not found Please verify the request arguments.');
      // Neither a path nor a rate limiter: Firecracker takes it for a vhost-user update.
      if (!present(b.path_on_host) && !present(b.rate_limiter)) {
        throw fault('Drive config error: Unable to patch the block device: Block: Running method expected different backend. Please verify the request arguments.');
      }
      if (present(b.path_on_host) && fileError(String(b.path_on_host))) {
        throw fault(`Drive config error: Unable to patch the block device: Block: Virtio backend error: Error manipulating the backing file: ${enoent} ${String(b.path_on_host)} Please verify the request arguments.`);
      }
      peer.drives.set(id, { ...d, ...Object.fromEntries(Object.entries(b).filter(([, v]) => present(v))) });
      return { status: 204 };
    }
    case 'PutNet': {
      const id = String(b.iface_id);
      const dev = String(b.host_dev_name);
      // An empty name is the kernel's to choose; 15 bytes is the longest (IFNAMSIZ).
      if (Buffer.byteLength(dev) > 15) throw fault('Network config error: Could not create the network device: Open tap device failed: Invalid interface name');
      for (const [other, n] of peer.ifaces) {
        if (other === id) continue;
        if (dev !== '' && n.host_dev_name === dev) {
          throw fault(`Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: Device or resource busy (os error 16). Invalid TUN/TAP Backend provided by ${dev}.`);
        }
        if (present(b.guest_mac) && String(n.guest_mac ?? '').toLowerCase() === String(b.guest_mac).toLowerCase()) {
          throw fault(`Network config error: The MAC address is already in use: ${String(b.guest_mac)}`);
        }
      }
      peer.ifaces.set(id, b);
      return { status: 204 };
    }
    case 'PatchNet':
      if (!peer.ifaces.has(String(b.iface_id))) throw fault('Network config error: Unable to update the net device: Failed perform action on device: Device not found');
      return { status: 204 };
    case 'PutLogger': {
      if (present(b.log_path)) {
        let fd: number;
        try {
          fd = openSink(String(b.log_path));
        } catch (e) {
          throw fault(`Logger error: Failed to open target file: ${errText(e)}`);
        }
        if (peer.logger) closeSync(peer.logger.fd);
        peer.logger = { path: String(b.log_path), fd, showLevel: b.show_level === true };
        peer.log('INFO', `Running Firecracker v${VERSION}`);
      } else if (peer.logger && present(b.show_level)) {
        peer.logger.showLevel = b.show_level === true;
      }
      return { status: 204 };
    }
    case 'PutMetrics': {
      const bad = 'Metrics error: Cannot initialize the metrics system due to bad user input:';
      if (peer.metrics) throw fault(`${bad} Reinitialization of metrics not allowed.`);
      try {
        peer.metrics = { path: String(b.metrics_path), fd: openSink(String(b.metrics_path)) };
      } catch (e) {
        throw fault(`${bad} ${errText(e)}`);
      }
      setInterval(() => peer.flushMetrics(), 60_000).unref();
      return { status: 204 };
    }
    case 'PutVsock': {
      // A second vsock replaces the first: its socket is removed before the new one is bound.
      if (peer.vsockServer) {
        peer.vsockServer.close();
        peer.vsockServer = undefined;
      }
      if (peer.vsockPath) rmSync(peer.vsockPath, { force: true });
      peer.vsock = undefined;
      peer.vsockPath = undefined;
      bindVsock(peer, String(b.uds_path), (m) => fault(`Vsock config error: Cannot create backend for vsock device: Error binding to the host-side Unix socket: ${m}`));
      peer.vsock = b;
      return { status: 204 };
    }
    case 'PutEntropy':
      peer.entropy = b;
      return { status: 204 };
    case 'PutMmdsConfig': {
      const ifs = b.network_interfaces as string[];
      if (ifs.length === 0) throw fault('MMMDS config error: The list of network interface IDs that allow forwarding MMDS requests is empty.');
      if (ifs.some((i) => !peer.ifaces.has(i))) {
        throw fault('MMMDS config error: The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.');
      }
      if (present(b.ipv4_address) && !String(b.ipv4_address).startsWith('169.254.')) throw fault('MMMDS config error: The MMDS IPv4 address is not link local.');
      peer.mmdsConfig = b;
      mmdsStore(peer);
      return { status: 204 };
    }
    case 'GetMmds': {
      if (!peer.mmds && !peer.booted) return { status: 200, json: {} };
      const data = mmdsStore(peer).data;
      return { status: 200, json: data === null ? {} : data };
    }
    case 'PutMmds': {
      const store = mmdsStore(peer);
      mmdsFits(peer, req.raw);
      store.data = req.raw;
      return { status: 204 };
    }
    case 'PatchMmds': {
      // A patch does not create the data store.
      if (!peer.mmds || peer.mmds.data === null) throw fault(mmdsUninitialized);
      const store = peer.mmds;
      const merged = mergePatch(store.data, req.raw);
      mmdsFits(peer, merged);
      store.data = merged;
      return { status: 204 };
    }
    case 'PutBalloon':
      if (Number(b.amount_mib) > Number(peer.machine.mem_size_mib)) throw fault('Balloon config error: Amount of pages requested is too large.');
      peer.balloon = {
        amount_mib: b.amount_mib,
        deflate_on_oom: b.deflate_on_oom,
        stats_polling_interval_s: b.stats_polling_interval_s ?? 0,
        free_page_hinting: b.free_page_hinting ?? false,
        free_page_reporting: b.free_page_reporting ?? false,
      };
      return { status: 204 };
    case 'GetBalloon':
      if (!peer.balloon) throw fault(peer.booted ? 'Internal VMM error: Failed perform action on device: Device not found' : 'Balloon config error: No balloon device found.');
      return { status: 200, json: peer.balloon };
    case 'GetBalloonStats': {
      if (!peer.balloon) throw fault('Internal VMM error: Failed perform action on device: Device not found');
      if (!Number(peer.balloon.stats_polling_interval_s)) throw fault('Internal VMM error: Balloon: Received stats query when stats are disabled.');
      const mib = Number(peer.balloon.amount_mib);
      return { status: 200, json: { target_pages: mib * 256, actual_pages: mib * 256, target_mib: mib, actual_mib: mib } };
    }
    case 'PatchBalloon':
      if (!peer.balloon) throw fault('Balloon update error: Failed perform action on device: Device not found');
      if (Number(b.amount_mib) > Number(peer.machine.mem_size_mib)) throw fault('Balloon update error: Amount of pages requested is too large.');
      // The peer's guest has its balloon driver loaded: the device is active.
      peer.balloon = { ...peer.balloon, amount_mib: b.amount_mib };
      return { status: 204 };
    case 'PatchBalloonStats': {
      if (!peer.balloon) throw fault('Balloon update error: Failed perform action on device: Device not found');
      const was = Number(peer.balloon.stats_polling_interval_s) !== 0;
      const will = Number(b.stats_polling_interval_s) !== 0;
      if (was !== will) throw fault('Balloon update error: Balloon: Statistics cannot be enabled/disabled after activation.');
      peer.balloon = { ...peer.balloon, stats_polling_interval_s: b.stats_polling_interval_s };
      return { status: 204 };
    }
    case 'InstanceStart': {
      if (!peer.boot) throw fault(`Start microvm error: ${FC_FAULTS.missingKernel}`);
      const ke = kernelLoadError(String(peer.boot.kernel_image_path), Number(peer.machine.mem_size_mib));
      if (ke) throw fault(`Start microvm error: System configuration error: Cannot load kernel due to invalid memory configuration or invalid kernel image: ${ke}`);
      peer.booted = true;
      // The data store serves the guest through the MMDS network stack: without one it is dropped.
      if (!peer.mmdsConfig) peer.mmds = undefined;
      peer.memory = newMemory();
      peer.log('INFO', 'Successfully started microvm that was configured from one single json');
      setTimeout(() => bootGuest(peer), 5);
      return { status: 204 };
    }
    case 'SendCtrlAltDel':
      if (peer.paused) peer.pendingCtrlAltDel = true;
      else guestReboot(peer, 'mvm-peer-guest: received Ctrl-Alt-Del, rebooting');
      return { status: 204 };
    case 'FlushMetrics':
      peer.flushMetrics();
      return { status: 204 };
    case 'Pause':
      peer.paused = true;
      return { status: 204 };
    case 'Resume':
      peer.paused = false;
      if (peer.pendingCtrlAltDel) {
        peer.pendingCtrlAltDel = false;
        guestReboot(peer, 'mvm-peer-guest: received Ctrl-Alt-Del, rebooting');
      }
      return { status: 204 };
    case 'SnapshotCreate':
      return createSnapshot(peer, b);
    case 'SnapshotLoad':
      return loadSnapshot(peer, b);
    case 'GetHintingStatus':
    case 'PatchHinting':
      throw fault('Balloon: free page hinting is not simulated by the test peer');
    case 'PutCpuConfig':
    case 'PutPmem':
    case 'PutSerial':
    case 'HotplugMemory':
      throw fault(`${a}: not simulated by the test peer`);
  }
}

/** Bind the vsock device's host socket (an existing file is refused, as bind(2) refuses it). */
function bindVsock(peer: Peer, udsPath: string, err: (m: string) => Fault): void {
  const uds = hostPath(udsPath);
  if (existsSync(uds)) throw err('Address already in use (os error 98)');
  if (!existsSync(dirname(uds))) throw err(enoent);
  const srv = createNetServer((s) => s.end());
  srv.listen(uds);
  srv.unref();
  peer.vsockServer = srv;
  peer.vsockPath = uds;
}

function errText(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return enoent;
  if (code === 'EACCES') return 'Permission denied (os error 13)';
  if (code === 'EISDIR') return 'Is a directory (os error 21)';
  return (e as Error).message;
}

function mergePatch(target: unknown, patch: unknown): unknown {
  if (!patch || typeof patch !== 'object' || Array.isArray(patch)) return patch;
  const out: Obj = target && typeof target === 'object' && !Array.isArray(target) ? { ...(target as Obj) } : {};
  for (const [k, v] of Object.entries(patch as Obj)) {
    if (v === null) delete out[k];
    else out[k] = mergePatch(out[k], v);
  }
  return out;
}

function createSnapshot(peer: Peer, b: Obj): { status: number } {
  if (!peer.paused) throw fault('Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running');
  // Diff snapshots without dirty page tracking are taken too (Firecracker v1.17 finds the dirty pages itself); the peer writes them whole.
  if (!existsSync(dirname(hostPath(String(b.snapshot_path))))) throw fault(`Create snapshot error: Cannot perform open on the snapshot backing file: ${enoent}`);
  if (!existsSync(dirname(hostPath(String(b.mem_file_path))))) throw fault(`Create snapshot error: Cannot perform open on the memory backing file: ${enoent}`);
  const memBytes = Number(peer.machine.mem_size_mib) * 1024 * 1024;
  const state: SnapshotState = {
    magic: SNAPSHOT_MAGIC,
    vmm_version: VERSION,
    instance_id: peer.cli.id,
    machine: peer.machine,
    boot: peer.boot,
    drives: [...peer.drives.values()],
    ifaces: [...peer.ifaces.values()],
    vsock: peer.vsock,
    mmdsConfig: peer.mmdsConfig,
    balloon: peer.balloon,
    entropy: peer.entropy,
    memory_bytes: memBytes,
  };
  writeFileSync(hostPath(String(b.snapshot_path)), JSON.stringify(state));
  writeFileSync(hostPath(String(b.mem_file_path)), MEMORY_MAGIC + JSON.stringify({ ...(peer.memory ?? { nonce: '' }), mem_size_mib: peer.machine.mem_size_mib }) + '\n');
  peer.log('INFO', `'create ${b.snapshot_type === 'Diff' ? 'diff' : 'full'} snapshot' VMM action took 1000 us.`);
  return { status: 204 };
}

function loadSnapshot(peer: Peer, b: Obj): { status: number } {
  if (peer.configured) throw fault(`Load snapshot error: ${FC_FAULTS.loadNotAllowed}`);
  const backend = b.mem_backend as Obj | undefined | null;
  const memPath = present(backend) ? String(backend!.backend_path) : String(b.mem_file_path);
  // From here on, a failure leaves Firecracker unusable: it answers and exits.
  const fatal = (msg: string): Fault => new Fault(`Load snapshot error: Failed to restore from snapshot: ${msg}`, 400, true);
  let state: SnapshotState;
  try {
    state = JSON.parse(readFileSync(hostPath(String(b.snapshot_path)), 'utf8')) as SnapshotState;
  } catch (e) {
    throw fatal(`Failed to get snapshot state from file: ${(e as NodeJS.ErrnoException).code ? `Failed to open snapshot file: ${errText(e)}` : 'Failed to load snapshot state from file: An error occurred during bitcode serialization: bitcode error'}`);
  }
  if (state.magic !== SNAPSHOT_MAGIC) throw fatal('Failed to get snapshot state from file: Failed to load snapshot state from file: An error occurred during bitcode serialization: bitcode error');
  const ifaces = new Map(state.ifaces.map((n) => [String(n.iface_id), { ...n }]));
  for (const o of (b.network_overrides as Obj[] | undefined) ?? []) {
    const n = ifaces.get(String(o.iface_id));
    if (!n) throw fatal('Failed to get snapshot state from file: Unknown Network Device.');
    n.host_dev_name = o.host_dev_name;
  }
  let vsock = state.vsock;
  const vo = b.vsock_override as Obj | undefined | null;
  if (present(vo)) {
    if (!vsock) throw fatal('Failed to get snapshot state from file: Unknown Vsock Device.');
    vsock = { ...vsock, uds_path: vo!.uds_path };
  }
  if (present(backend) && backend!.backend_type !== 'File') {
    if (!existsSync(hostPath(memPath))) throw fatal(`Failed to load guest memory: Error creating guest memory from uffd: Failed to connect to UDS Unix stream: ${enoent}`);
    throw fatal('Failed to load guest memory: Error creating guest memory from uffd: Uffd memory backends are not simulated by the test peer');
  }
  let memory: GuestMemory;
  try {
    const raw = readFileSync(hostPath(memPath), 'utf8');
    if (!raw.startsWith(MEMORY_MAGIC)) throw new Error('not a memory file of this snapshot');
    memory = JSON.parse(raw.slice(MEMORY_MAGIC.length)) as GuestMemory;
  } catch (e) {
    throw fatal(`Failed to load guest memory: Error creating guest memory from file: Failed to load guest memory: ${errText(e)}`);
  }
  for (const d of state.drives) {
    if (fileError(String(d.path_on_host))) throw fatal(`Cannot open the block device backing file: ${enoent}: ${String(d.path_on_host)}`);
  }
  if (vsock) bindVsock(peer, String(vsock.uds_path), (m) => fatal(`Failed to build microVM from snapshot: Failed to restore devices: Error restoring MMIO devices: VsockUnixBackend: Error binding to the host-side Unix socket: ${m}`));
  peer.machine = { ...state.machine, track_dirty_pages: b.track_dirty_pages === true || b.enable_diff_snapshots === true };
  peer.boot = state.boot;
  peer.drives = new Map(state.drives.map((d) => [String(d.drive_id), d]));
  peer.ifaces = ifaces;
  peer.vsock = vsock;
  peer.mmdsConfig = state.mmdsConfig;
  // The data store is not in a snapshot: a restored MMDS starts empty.
  if (state.mmdsConfig) peer.mmds = { data: null };
  peer.balloon = state.balloon;
  peer.entropy = state.entropy;
  peer.memory = memory;
  peer.booted = true;
  peer.paused = b.resume_vm !== true;
  peer.log('INFO', `'load snapshot' VMM action took 1000 us.`);
  return { status: 204 };
}

// ---------------------------------------------------------------- server

function record(entry: Obj): void {
  const f = process.env.FC_PEER_LOG;
  if (!f) return;
  try {
    appendFileSync(f, JSON.stringify({ t: Date.now(), ...entry }) + '\n');
  } catch {
    /* best effort */
  }
}

/** Firecracker's HTTP-layer error body: not JSON (a raw newline in the string), no fault_message. */
const httpErrorBody = (msg: string): string => `{ "error": "${msg}\nAll previous unanswered requests will be dropped." }`;

function main(): void {
  const cli = parseCli(process.argv.slice(2));
  const peer = new Peer(cli);
  // Sinks named on the command line are opened (created if missing) at start; a failure exits, as Firecracker does.
  try {
    if (cli.logPath) peer.logger = { path: cli.logPath, fd: openSink(cli.logPath), showLevel: cli.showLevel };
    if (cli.metricsPath) {
      peer.metrics = { path: cli.metricsPath, fd: openSink(cli.metricsPath) };
      setInterval(() => peer.flushMetrics(), 60_000).unref();
    }
  } catch (e) {
    process.stderr.write(`Failed to open target file: ${errText(e)}\n`);
    process.exit(EXIT_GENERIC);
  }
  peer.log('INFO', `Running Firecracker v${VERSION}`);
  serveConsoleInput(peer);
  const sock = hostPath(cli.apiSock);
  if (existsSync(sock)) {
    process.stderr.write(`Failed to open the API socket at: ${cli.apiSock}. Check that it is not already used.\n`);
    process.exit(EXIT_GENERIC);
  }
  const server: HttpServer = createHttpServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (d: Buffer) => {
      size += d.length;
      chunks.push(d);
    });
    req.on('end', () => {
      const method = req.method ?? 'GET';
      const path = req.url ?? '/';
      const reply = (status: number, body?: string, fatal = false): void => {
        const headers: Record<string, string | number> = { Server: 'Firecracker API' };
        if (body !== undefined) Object.assign(headers, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(body) });
        res.writeHead(status, headers);
        res.end(body, () => {
          if (fatal) setTimeout(() => process.exit(EXIT_GENERIC), 5);
        });
      };
      const text = Buffer.concat(chunks).toString('utf8');
      let body: unknown = text.length > 0 ? text : undefined;
      try {
        body = text.length > 0 ? JSON.parse(text) : undefined;
      } catch {
        /* kept as text for the log */
      }
      try {
        if (!['GET', 'PUT', 'PATCH', 'DELETE'].includes(method)) throw new HttpError('Invalid HTTP Method: Unsupported HTTP method.');
        if (req.headers['transfer-encoding']) throw new HttpError('Invalid request.');
        if (size > cli.maxPayload) throw new HttpError(`Request payload with size ${size} is larger than the limit of ${cli.maxPayload} allowed by server.`);
        peer.apiRequests += 1;
        const verb = `${method[0]}${method.slice(1).toLowerCase()}`;
        peer.log('INFO', `The API server received a ${verb} request on ${JSON.stringify(path)}${text.length > 0 && path !== '/mmds' ? ` with body ${JSON.stringify(text)}` : ''}.`);
        const r = handle(peer, route(method, path, text.length > 0 ? text : undefined));
        record({ method, path, body, status: r.status });
        reply(r.status, r.json === undefined ? undefined : JSON.stringify(r.json));
      } catch (e) {
        if (e instanceof HttpError) {
          record({ method, path, body, status: 400, error: e.message });
          reply(400, httpErrorBody(e.message));
          return;
        }
        const f = e instanceof Fault ? e : new Fault(`Internal error: ${(e as Error).message}`, 500);
        record({ method, path, body, status: f.status, fault_message: f.message });
        peer.log('ERROR', `Received Error. Status code: ${f.status} Bad Request. Message: ${f.message}`);
        // A failed load ends the process: no new connection is accepted from now on.
        if (f.fatal) server.close();
        reply(f.status, JSON.stringify({ fault_message: f.message }), f.fatal);
      }
    });
  });
  // A request line Node cannot parse: Firecracker's HTTP layer answers it like this.
  server.on('clientError', (_err, socket) => {
    const body = httpErrorBody('Invalid request.');
    if (socket.writable) socket.end(`HTTP/1.1 400 \r\nServer: Firecracker API\r\nConnection: keep-alive\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
  server.listen(sock);
  process.on('SIGTERM', () => process.exit(143));
}

main();
