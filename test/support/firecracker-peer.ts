#!/usr/bin/env node
/**
 * A process-level test peer for the `firecracker` binary: spawned exactly like
 * the real one (`--api-sock <path> --id <id>`), it serves Firecracker's API on
 * the Unix socket and enforces the published protocol (swagger
 * `firecracker.yaml`, the pre-boot / runtime controllers):
 *
 *  - bodies: required fields, JSON types and integer ranges, enums, unknown
 *    fields rejected (serde `deny_unknown_fields`), path id == body id, resource
 *    ids [A-Za-z0-9_]; 204 on success, 400 `{"fault_message": ...}` on error;
 *  - phases: pre-boot-only calls after boot, post-boot-only calls before boot,
 *    InstanceStart once and only with a boot source, logger/metrics once,
 *    PATCH /vm only after boot, snapshot/create only while paused, snapshot/load
 *    only on a fresh process (before any boot-specific resource);
 *  - files: kernel, initrd, drives, log/metrics sinks, snapshot files must exist
 *    (and read-write drives be writable); the vsock socket is bound at PUT.
 *
 * On InstanceStart the "guest" boots: plausible kernel lines on stdout (the
 * serial console) ending with `MVM-READY id=<mvm.id from boot_args>`; with no
 * root drive and no initrd it panics like a real kernel and the VMM exits.
 * SendCtrlAltDel makes the guest reboot, which ends the process with code 0.
 * The guest "memory" is a random nonce born at boot: snapshot/create writes it
 * to the memory file and snapshot/load restores it, so memory survival can be
 * asserted end to end. Metrics are JSON lines of deltas, like Firecracker's.
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
 * Limits: no KVM, no real guest, taps are not opened, Uffd memory backends and
 * diff snapshots are accepted only as far as validation goes. Wording of a few
 * faults Firecracker words differently per version is the peer's own.
 *
 * FC_PEER_LOG=<file> appends every request (and the answer) as a JSON line.
 * FC_PEER_ROOT=<dir> resolves absolute paths under <dir> (chroot emulation).
 */
import { randomBytes } from 'node:crypto';
import { accessSync, appendFileSync, constants, existsSync, openSync, readFileSync, statSync, writeFileSync, writeSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type Server as NetServer } from 'node:net';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { FC_ACTIONS, FC_EXIT_BAD_CONFIGURATION, FC_FAULTS, FC_INSTANCE_ID_RE, FC_RESOURCE_ID_RE, findRoute, phaseFault, requiredPhase } from '../../src/vmm/firecracker/protocol.js';

const VERSION = process.env.FC_PEER_VERSION ?? '1.10.1';
/**
 * Chroot emulation for jailer tests: absolute paths are resolved under
 * FC_PEER_ROOT, the way a jailed Firecracker sees its chroot.
 */
const ROOT = process.env.FC_PEER_ROOT;
const hostPath = (p: string): string => (ROOT && isAbsolute(p) ? join(ROOT, p) : resolve(p));
const MAX_PAYLOAD = 51200;
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
}

function parseCli(argv: string[]): Cli {
  const takesValue = new Set(['--api-sock', '--id', '--start-time-us', '--start-time-cpu-us', '--parent-cpu-time-us', '--seccomp-filter', '--level', '--log-path', '--metrics-path', '--mmds-size-limit', '--http-api-max-payload-size']);
  const flags = new Set(['--boot-timer', '--no-seccomp', '--show-level', '--show-log-origin', '--version', '--help']);
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
  if (!FC_INSTANCE_ID_RE.test(id)) fatalCli(`Invalid instance ID: ${id}`);
  return {
    apiSock: vals['--api-sock'] ?? '/run/firecracker.socket',
    id,
    ...(vals['--log-path'] ? { logPath: vals['--log-path'] } : {}),
    showLevel: vals['--show-level'] === 'true',
    ...(vals['--metrics-path'] ? { metricsPath: vals['--metrics-path'] } : {}),
  };
}

function fatalCli(msg: string): never {
  process.stderr.write(`Arguments parsing error: ${msg}\n`);
  process.exit(153);
}

// ---------------------------------------------------------------- body validation (serde-like)

type FieldType =
  | 'u8' | 'u16' | 'u32' | 'u64' | 'usize' | 'bool' | 'string' | 'string[]' | 'json'
  | { enum: string[]; caseInsensitive?: boolean }
  | { obj: Schema }
  | { arr: Schema };

interface Schema {
  [field: string]: { type: FieldType; required?: boolean };
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

/** Returns a serde-style error detail, or undefined. */
function check(body: unknown, schema: Schema): string | undefined {
  if (!body || typeof body !== 'object' || Array.isArray(body)) return `invalid type: ${describe(body)}, expected struct`;
  const b = body as Record<string, unknown>;
  for (const k of Object.keys(b)) {
    if (!(k in schema)) return `unknown field \`${k}\`, expected one of ${Object.keys(schema).map((x) => `\`${x}\``).join(', ')}`;
  }
  for (const [k, spec] of Object.entries(schema)) {
    if (!(k in b) || b[k] === undefined) {
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
    const ok = t.caseInsensitive ? t.enum.some((e) => e.toLowerCase() === v.toLowerCase()) : t.enum.includes(v);
    return ok ? undefined : `unknown variant \`${v}\`, expected one of ${t.enum.map((e) => `\`${e}\``).join(', ')}`;
  }
  if ('obj' in t) return check(v, t.obj);
  if (!Array.isArray(v)) return `invalid type: ${describe(v)}, expected a sequence`;
  for (const x of v) {
    const e = check(x, t.arr);
    if (e) return e;
  }
  return undefined;
}

const TOKEN_BUCKET: Schema = { size: { type: 'u64', required: true }, refill_time: { type: 'u64', required: true }, one_time_burst: { type: 'u64' } };
const RATE_LIMITER: Schema = { bandwidth: { type: { obj: TOKEN_BUCKET } }, ops: { type: { obj: TOKEN_BUCKET } } };
const S = {
  machine: {
    vcpu_count: { type: 'u8', required: true },
    mem_size_mib: { type: 'usize', required: true },
    smt: { type: 'bool' },
    track_dirty_pages: { type: 'bool' },
    cpu_template: { type: { enum: ['C3', 'T2', 'T2S', 'T2CL', 'T2A', 'V1N1', 'None'] } },
    huge_pages: { type: { enum: ['None', 'Transparent', '2M'] } },
  } as Schema,
  boot: { kernel_image_path: { type: 'string', required: true }, boot_args: { type: 'string' }, initrd_path: { type: 'string' } } as Schema,
  drive: {
    drive_id: { type: 'string', required: true },
    is_root_device: { type: 'bool', required: true },
    partuuid: { type: 'string' },
    cache_type: { type: { enum: ['Unsafe', 'Writeback'] } },
    is_read_only: { type: 'bool' },
    path_on_host: { type: 'string' },
    rate_limiter: { type: { obj: RATE_LIMITER } },
    io_engine: { type: { enum: ['Sync', 'Async'] } },
    socket: { type: 'string' },
  } as Schema,
  partialDrive: { drive_id: { type: 'string', required: true }, path_on_host: { type: 'string' }, rate_limiter: { type: { obj: RATE_LIMITER } } } as Schema,
  net: {
    iface_id: { type: 'string', required: true },
    host_dev_name: { type: 'string', required: true },
    guest_mac: { type: 'string' },
    rx_rate_limiter: { type: { obj: RATE_LIMITER } },
    tx_rate_limiter: { type: { obj: RATE_LIMITER } },
  } as Schema,
  partialNet: { iface_id: { type: 'string', required: true }, rx_rate_limiter: { type: { obj: RATE_LIMITER } }, tx_rate_limiter: { type: { obj: RATE_LIMITER } } } as Schema,
  logger: {
    log_path: { type: 'string' },
    level: { type: { enum: ['Error', 'Warning', 'Info', 'Debug', 'Trace', 'Off'], caseInsensitive: true } },
    show_level: { type: 'bool' },
    show_log_origin: { type: 'bool' },
    module: { type: 'string' },
  } as Schema,
  metrics: { metrics_path: { type: 'string', required: true } } as Schema,
  vsock: { guest_cid: { type: 'u32', required: true }, uds_path: { type: 'string', required: true }, vsock_id: { type: 'string' } } as Schema,
  mmdsConfig: {
    network_interfaces: { type: 'string[]', required: true },
    version: { type: { enum: ['V1', 'V2'] } },
    ipv4_address: { type: 'string' },
    imds_compat: { type: 'bool' },
  } as Schema,
  balloon: {
    amount_mib: { type: 'u32', required: true },
    deflate_on_oom: { type: 'bool', required: true },
    stats_polling_interval_s: { type: 'u16' },
    free_page_hinting: { type: 'bool' },
    free_page_reporting: { type: 'bool' },
  } as Schema,
  balloonUpdate: { amount_mib: { type: 'u32', required: true } } as Schema,
  balloonStatsUpdate: { stats_polling_interval_s: { type: 'u16', required: true } } as Schema,
  action: { action_type: { type: { enum: Object.keys(FC_ACTIONS) }, required: true } } as Schema,
  vm: { state: { type: { enum: ['Paused', 'Resumed'] }, required: true } } as Schema,
  snapCreate: { snapshot_path: { type: 'string', required: true }, mem_file_path: { type: 'string', required: true }, snapshot_type: { type: { enum: ['Full', 'Diff'] } } } as Schema,
  snapLoad: {
    snapshot_path: { type: 'string', required: true },
    mem_file_path: { type: 'string' },
    mem_backend: { type: { obj: { backend_type: { type: { enum: ['File', 'Uffd'] }, required: true }, backend_path: { type: 'string', required: true } } } },
    enable_diff_snapshots: { type: 'bool' },
    track_dirty_pages: { type: 'bool' },
    resume_vm: { type: 'bool' },
    network_overrides: { type: { arr: { iface_id: { type: 'string', required: true }, host_dev_name: { type: 'string', required: true } } } },
    vsock_override: { type: { obj: { uds_path: { type: 'string', required: true } } } },
    clock_realtime: { type: 'bool' },
  } as Schema,
  entropy: { rate_limiter: { type: { obj: RATE_LIMITER } } } as Schema,
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
  memory_bytes: number;
}

class Peer {
  booted = false;
  configured = false;
  paused = false;
  machine: Obj = { vcpu_count: 1, mem_size_mib: 128, smt: false, track_dirty_pages: false, huge_pages: 'None' };
  boot: Obj | undefined;
  drives = new Map<string, Obj>();
  ifaces = new Map<string, Obj>();
  vsock: Obj | undefined;
  vsockServer: NetServer | undefined;
  mmdsConfig: Obj | undefined;
  mmds: unknown = undefined;
  balloon: Obj | undefined;
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
    readonly fatal = false,
  ) {
    super(message);
  }
}

const fault = (msg: string): Fault => new Fault(msg);
const enoent = 'No such file or directory (os error 2)';

function fileError(path: string): string | undefined {
  try {
    const st = statSync(hostPath(path));
    if (st.isDirectory()) return 'Is a directory (os error 21)';
    return undefined;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EACCES' ? 'Permission denied (os error 13)' : enoent;
  }
}

function openSink(path: string): number {
  // Firecracker opens log and metrics sinks non-blocking, read-write, without creating them.
  const p = hostPath(path);
  const st = statSync(p);
  const flags = st.isFIFO() ? constants.O_RDWR | constants.O_NONBLOCK : constants.O_WRONLY | constants.O_APPEND | constants.O_NONBLOCK;
  return openSync(p, flags);
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

// ---------------------------------------------------------------- handlers

function idFromPath(pathId: string | undefined, bodyId: unknown): void {
  if (!pathId) throw fault('The ID cannot be empty.');
  if (!FC_RESOURCE_ID_RE.test(pathId)) throw fault(FC_FAULTS.invalidId);
  if (pathId !== bodyId) throw fault(FC_FAULTS.idMismatch);
}

function validate(body: unknown, schema: Schema): void {
  const e = check(body, schema);
  if (e) throw fault(FC_FAULTS.serde(e));
}

function handle(peer: Peer, method: string, path: string, body: unknown): { status: number; json?: unknown } {
  const m = findRoute(method, path);
  if (!m) throw fault(FC_FAULTS.invalidPath(method, path));
  const route = m.route;
  if (method !== 'GET' && body === undefined) throw fault(method === 'PATCH' ? FC_FAULTS.emptyPatch : FC_FAULTS.emptyPut);
  // /actions is validated before its phase is known.
  if (route.path === '/actions') validate(body, S.action);
  const phase = phaseFault(method, path, body, { booted: peer.booted, configured: peer.configured });
  if (phase) throw fault(phase);
  const b = (body ?? {}) as Obj;
  const key = `${method} ${route.path}`;
  switch (key) {
    case 'GET /':
      return { status: 200, json: { id: peer.cli.id, state: peer.state(), vmm_version: VERSION, app_name: 'Firecracker' } };
    case 'GET /version':
      return { status: 200, json: { firecracker_version: VERSION } };
    case 'GET /machine-config':
      return { status: 200, json: peer.machine };
    case 'GET /vm/config':
      return {
        status: 200,
        json: {
          'machine-config': peer.machine,
          'boot-source': peer.boot ?? null,
          drives: [...peer.drives.values()],
          'network-interfaces': [...peer.ifaces.values()],
          vsock: peer.vsock ?? null,
          'mmds-config': peer.mmdsConfig ?? null,
          balloon: peer.balloon ?? null,
          logger: peer.logger ? { log_path: peer.logger.path } : null,
          metrics: peer.metrics ? { metrics_path: peer.metrics.path } : null,
        },
      };
    case 'PUT /machine-config':
    case 'PATCH /machine-config': {
      const schema = method === 'PUT' ? S.machine : Object.fromEntries(Object.entries(S.machine).map(([k, v]) => [k, { type: v.type }]));
      validate(b, schema);
      const next: Obj = method === 'PUT' ? { smt: false, track_dirty_pages: false, huge_pages: 'None', ...b } : { ...peer.machine, ...b };
      const vcpu = Number(next.vcpu_count);
      if (vcpu < 1 || vcpu > 32 || (next.smt === true && vcpu > 1 && vcpu % 2 !== 0)) throw fault(FC_FAULTS.invalidVcpus);
      const mem = Number(next.mem_size_mib);
      if (mem < 1 || (next.huge_pages === '2M' && mem % 2 !== 0)) throw fault(FC_FAULTS.invalidMemory);
      peer.machine = next;
      return { status: 204 };
    }
    case 'PUT /boot-source': {
      validate(b, S.boot);
      const ke = fileError(String(b.kernel_image_path));
      if (ke) throw fault(`The kernel file cannot be opened: ${ke}`);
      if (b.initrd_path !== undefined) {
        const ie = fileError(String(b.initrd_path));
        if (ie) throw fault(`The initrd file cannot be opened due to invalid path or invalid permissions. ${ie}`);
      }
      peer.boot = b;
      return { status: 204 };
    }
    case 'PUT /drives/{id}': {
      validate(b, S.drive);
      idFromPath(m.id, b.drive_id);
      if (b.socket === undefined) {
        if (b.path_on_host === undefined) throw fault(FC_FAULTS.serde('missing field `path_on_host`'));
        if (b.is_read_only === undefined) throw fault(FC_FAULTS.serde('missing field `is_read_only`'));
      } else {
        throw fault('The requested operation is not supported: vhost-user block devices (test peer)');
      }
      if (b.is_root_device === true) {
        for (const [id, d] of peer.drives) if (id !== m.id && d.is_root_device === true) throw fault(FC_FAULTS.rootExists);
      }
      const p = hostPath(String(b.path_on_host));
      const fe = fileError(String(b.path_on_host));
      if (fe) throw fault(`Unable to create the block device: BackingFile(Os { code: 2, kind: NotFound, message: "No such file or directory" }, "${String(b.path_on_host)}")`);
      try {
        accessSync(p, b.is_read_only === true ? constants.R_OK : constants.R_OK | constants.W_OK);
      } catch {
        throw fault(`Unable to create the block device: BackingFile(Os { code: 13, kind: PermissionDenied, message: "Permission denied" }, "${String(b.path_on_host)}")`);
      }
      peer.drives.set(m.id!, b);
      return { status: 204 };
    }
    case 'PATCH /drives/{id}': {
      validate(b, S.partialDrive);
      idFromPath(m.id, b.drive_id);
      if (!peer.drives.has(m.id!)) throw fault(`Unable to patch the block device: DeviceUpdate(DeviceNotFound) ${m.id}`);
      if (b.path_on_host !== undefined && fileError(String(b.path_on_host))) throw fault(`Unable to patch the block device: BackingFile ${enoent}`);
      peer.drives.set(m.id!, { ...peer.drives.get(m.id!)!, ...b });
      return { status: 204 };
    }
    case 'PUT /network-interfaces/{id}': {
      validate(b, S.net);
      idFromPath(m.id, b.iface_id);
      const dev = String(b.host_dev_name);
      if (dev.length === 0 || dev.length > 15) throw fault(`Could not create the network device: Open tap device failed: Invalid interface name ${dev}`);
      for (const [id, n] of peer.ifaces) if (id !== m.id && n.host_dev_name === dev) throw fault(`The host device name ${dev} is already in use.`);
      if (b.guest_mac !== undefined && !/^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$/.test(String(b.guest_mac))) {
        throw fault(FC_FAULTS.serde(`invalid value: string ${JSON.stringify(b.guest_mac)}, expected MAC address`));
      }
      peer.ifaces.set(m.id!, b);
      return { status: 204 };
    }
    case 'PATCH /network-interfaces/{id}': {
      validate(b, S.partialNet);
      idFromPath(m.id, b.iface_id);
      if (!peer.ifaces.has(m.id!)) throw fault(`Unable to update the net device: device ${m.id} not found`);
      return { status: 204 };
    }
    case 'PUT /logger': {
      validate(b, S.logger);
      if (peer.logger) throw fault('Reinitialization of logger not allowed.');
      if (b.log_path !== undefined) {
        try {
          peer.logger = { path: String(b.log_path), fd: openSink(String(b.log_path)), showLevel: b.show_level === true };
        } catch (e) {
          throw fault(`Failed to open target file: ${errText(e)}`);
        }
        peer.log('INFO', `Running Firecracker v${VERSION}`);
      }
      return { status: 204 };
    }
    case 'PUT /metrics': {
      validate(b, S.metrics);
      if (peer.metrics) throw fault('Reinitialization of metrics not allowed.');
      try {
        peer.metrics = { path: String(b.metrics_path), fd: openSink(String(b.metrics_path)) };
      } catch (e) {
        throw fault(`Failed to open target file: ${errText(e)}`);
      }
      setInterval(() => peer.flushMetrics(), 60_000).unref();
      return { status: 204 };
    }
    case 'PUT /vsock': {
      validate(b, S.vsock);
      if (Number(b.guest_cid) < 3) throw fault(FC_FAULTS.serde(`invalid value: integer \`${String(b.guest_cid)}\`, expected a guest CID of at least 3`));
      const uds = hostPath(String(b.uds_path));
      if (existsSync(uds)) throw fault('Cannot create backend for vsock device: UnixBind(Os { code: 98, kind: AddrInUse, message: "Address in use" })');
      if (!existsSync(dirname(uds))) throw fault(`Cannot create backend for vsock device: UnixBind(Os { code: 2, kind: NotFound, message: "No such file or directory" })`);
      peer.vsockServer?.close();
      const srv = createNetServer((s) => s.end());
      srv.listen(uds);
      srv.unref();
      peer.vsockServer = srv;
      peer.vsock = b;
      return { status: 204 };
    }
    case 'PUT /entropy':
      validate(b, S.entropy);
      return { status: 204 };
    case 'PUT /mmds/config': {
      validate(b, S.mmdsConfig);
      const ifs = b.network_interfaces as string[];
      if (ifs.length === 0) throw fault('The list of network interface IDs that allow forwarding MMDS requests is empty.');
      if (ifs.some((i) => !peer.ifaces.has(i))) throw fault('The list of network interface IDs provided contains at least one ID that does not correspond to any existing network interface.');
      if (b.ipv4_address !== undefined && !/^169\.254\.\d{1,3}\.\d{1,3}$/.test(String(b.ipv4_address))) throw fault('The MMDS IPv4 address is not link local.');
      peer.mmdsConfig = b;
      return { status: 204 };
    }
    case 'PUT /mmds':
      peer.mmds = body;
      return { status: 204 };
    case 'PATCH /mmds': {
      if (peer.mmds === undefined) throw fault('The MMDS data store is not initialized.');
      peer.mmds = mergePatch(peer.mmds, body);
      return { status: 204 };
    }
    case 'GET /mmds':
      if (peer.mmds === undefined) return { status: 404, json: { fault_message: 'The MMDS data store is not initialized.' } };
      return { status: 200, json: peer.mmds };
    case 'PUT /balloon':
      validate(b, S.balloon);
      if (Number(b.amount_mib) > Number(peer.machine.mem_size_mib)) throw fault('Amount of pages requested cannot be greater than the memory of the guest.');
      peer.balloon = b;
      return { status: 204 };
    case 'PATCH /balloon':
      validate(b, S.balloonUpdate);
      if (!peer.balloon) throw fault('No balloon device found.');
      peer.balloon = { ...peer.balloon, ...b };
      return { status: 204 };
    case 'GET /balloon':
      if (!peer.balloon) throw fault('No balloon device found.');
      return { status: 200, json: peer.balloon };
    case 'GET /balloon/statistics':
    case 'PATCH /balloon/statistics':
      if (!peer.balloon || !peer.balloon.stats_polling_interval_s) throw fault('Statistics for the balloon device are not enabled');
      if (method === 'PATCH') validate(b, S.balloonStatsUpdate);
      return method === 'GET' ? { status: 200, json: { target_pages: 0, actual_pages: 0, target_mib: 0, actual_mib: 0 } } : { status: 204 };
    case 'PUT /actions': {
      const action = String(b.action_type);
      if (action === 'InstanceStart') {
        if (!peer.boot) throw fault(FC_FAULTS.missingKernel);
        const ke = fileError(String(peer.boot.kernel_image_path));
        if (ke) throw fault(`Cannot load kernel due to invalid memory configuration or invalid kernel image. ${ke}`);
        peer.booted = true;
        peer.memory = newMemory();
        peer.log('INFO', 'Successfully started microvm that was configured from one single json');
        setTimeout(() => bootGuest(peer), 5);
      } else if (action === 'SendCtrlAltDel') {
        if (peer.paused) peer.pendingCtrlAltDel = true;
        else guestReboot(peer, 'mvm-peer-guest: received Ctrl-Alt-Del, rebooting');
      } else if (action === 'FlushMetrics') {
        peer.flushMetrics();
      }
      return { status: 204 };
    }
    case 'PATCH /vm': {
      validate(b, S.vm);
      if (b.state === 'Paused') peer.paused = true;
      else {
        peer.paused = false;
        if (peer.pendingCtrlAltDel) {
          peer.pendingCtrlAltDel = false;
          guestReboot(peer, 'mvm-peer-guest: received Ctrl-Alt-Del, rebooting');
        }
      }
      return { status: 204 };
    }
    case 'PUT /snapshot/create':
      return createSnapshot(peer, b);
    case 'PUT /snapshot/load':
      return loadSnapshot(peer, b);
    default:
      throw fault(FC_FAULTS.invalidPath(method, path));
  }
}

function errText(e: unknown): string {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return enoent;
  if (code === 'EACCES') return 'Permission denied (os error 13)';
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
  validate(b, S.snapCreate);
  if (!peer.paused) throw fault('Create snapshot error: Cannot save the microVM state: the microVM must be paused first.');
  if (b.snapshot_type === 'Diff' && peer.machine.track_dirty_pages !== true) throw fault(FC_FAULTS.diffWithoutTracking);
  for (const p of [String(b.snapshot_path), String(b.mem_file_path)]) {
    if (!existsSync(dirname(hostPath(p)))) throw fault(`Create snapshot error: Cannot write snapshot file ${p}: ${enoent}`);
  }
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
    memory_bytes: memBytes,
  };
  writeFileSync(hostPath(String(b.snapshot_path)), JSON.stringify(state));
  writeFileSync(hostPath(String(b.mem_file_path)), MEMORY_MAGIC + JSON.stringify({ ...(peer.memory ?? { nonce: '' }), mem_size_mib: peer.machine.mem_size_mib }) + '\n');
  peer.log('INFO', `'create full snapshot' VMM action took 1000 us.`);
  return { status: 204 };
}

function loadSnapshot(peer: Peer, b: Obj): { status: number } {
  validate(b, S.snapLoad);
  const hasFile = b.mem_file_path !== undefined;
  const backend = b.mem_backend as Obj | undefined;
  if (hasFile === (backend !== undefined)) throw fault(FC_FAULTS.serde('missing field: either `mem_backend` or `mem_file_path` is required, exclusively'));
  const memPath = hasFile ? String(b.mem_file_path) : String(backend!.backend_path);
  if (backend && backend.backend_type !== 'File') throw fault('Load snapshot error: Failed to restore from snapshot: the test peer serves File memory backends only');
  // From here on, a failure leaves Firecracker unusable: it answers and exits.
  const fatal = (msg: string): Fault => new Fault(`Load snapshot error: Failed to restore from snapshot: ${msg}`, 400, true);
  let state: SnapshotState;
  try {
    state = JSON.parse(readFileSync(hostPath(String(b.snapshot_path)), 'utf8')) as SnapshotState;
  } catch (e) {
    throw fatal(`Failed to read microVM state: ${errText(e)}`);
  }
  if (state.magic !== SNAPSHOT_MAGIC) throw fatal('Snapshot magic value mismatch');
  let memory: GuestMemory;
  try {
    const raw = readFileSync(hostPath(memPath), 'utf8');
    if (!raw.startsWith(MEMORY_MAGIC)) throw new Error('not a memory file of this snapshot');
    memory = JSON.parse(raw.slice(MEMORY_MAGIC.length)) as GuestMemory;
  } catch (e) {
    throw fatal(`Failed to load guest memory: ${errText(e)}`);
  }
  for (const d of state.drives) {
    if (fileError(String(d.path_on_host))) throw fatal(`Cannot open the block device backing file: ${enoent}: ${String(d.path_on_host)}`);
  }
  const ifaces = new Map(state.ifaces.map((n) => [String(n.iface_id), { ...n }]));
  for (const o of (b.network_overrides as Obj[] | undefined) ?? []) {
    const n = ifaces.get(String(o.iface_id));
    if (!n) throw fatal(`Invalid network override: no network interface with id ${String(o.iface_id)} in the snapshot`);
    n.host_dev_name = o.host_dev_name;
  }
  let vsock = state.vsock;
  const vo = b.vsock_override as Obj | undefined;
  if (vo) {
    if (!vsock) throw fatal('Invalid vsock override: the snapshot has no vsock device');
    vsock = { ...vsock, uds_path: vo.uds_path };
  }
  if (vsock) {
    const uds = hostPath(String(vsock.uds_path));
    if (existsSync(uds)) throw fatal('Cannot create backend for vsock device: UnixBind(Os { code: 98, kind: AddrInUse, message: "Address in use" })');
    const srv = createNetServer((s) => s.end());
    srv.listen(uds);
    srv.unref();
    peer.vsockServer = srv;
  }
  peer.machine = { ...state.machine, track_dirty_pages: b.track_dirty_pages === true || b.enable_diff_snapshots === true };
  peer.boot = state.boot;
  peer.drives = new Map(state.drives.map((d) => [String(d.drive_id), d]));
  peer.ifaces = ifaces;
  peer.vsock = vsock;
  peer.mmdsConfig = state.mmdsConfig;
  peer.balloon = state.balloon;
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

function main(): void {
  const cli = parseCli(process.argv.slice(2));
  const peer = new Peer(cli);
  // Sinks named on the command line are opened at start (a failure exits, as Firecracker does).
  try {
    if (cli.logPath) peer.logger = { path: cli.logPath, fd: openSink(cli.logPath), showLevel: cli.showLevel };
    if (cli.metricsPath) {
      peer.metrics = { path: cli.metricsPath, fd: openSink(cli.metricsPath) };
      setInterval(() => peer.flushMetrics(), 60_000).unref();
    }
  } catch (e) {
    process.stderr.write(`Failed to open target file: ${errText(e)}\n`);
    process.exit(1);
  }
  peer.log('INFO', `Running Firecracker v${VERSION}`);
  serveConsoleInput(peer);
  const sock = hostPath(cli.apiSock);
  if (existsSync(sock)) {
    process.stderr.write(`Failed to open the API socket at: ${cli.apiSock}. Check that it is not already used.\n`);
    process.exit(1);
  }
  const server = createHttpServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (d: Buffer) => {
      size += d.length;
      chunks.push(d);
    });
    req.on('end', () => {
      const method = req.method ?? 'GET';
      const path = req.url ?? '/';
      const reply = (status: number, json?: unknown, fatal = false): void => {
        const text = json === undefined ? '' : JSON.stringify(json);
        res.writeHead(status, json === undefined ? {} : { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
        res.end(text, () => {
          if (fatal) setTimeout(() => process.exit(FC_EXIT_BAD_CONFIGURATION), 20);
        });
      };
      let body: unknown;
      const raw = Buffer.concat(chunks).toString('utf8');
      try {
        if (req.headers['transfer-encoding']) throw fault('Invalid header. Reason: Transfer-Encoding is not supported; send a Content-Length');
        if (size > MAX_PAYLOAD) throw fault(`Request payload with size ${size} is larger than the limit of ${MAX_PAYLOAD} allowed by server.`);
        if (raw.length > 0) {
          try {
            body = JSON.parse(raw);
          } catch (e) {
            throw fault(FC_FAULTS.serde((e as Error).message));
          }
        }
        peer.apiRequests += 1;
        const phase = requiredPhase(method, path, body);
        peer.log('INFO', `The API server received a ${method[0]}${method.slice(1).toLowerCase()} request on "${path}"${phase ? '' : ' (unknown route)'}.`);
        const r = handle(peer, method, path, body);
        if (findRoute(method, path)?.route.bootPath && r.status < 300) peer.configured = true;
        record({ method, path, body, status: r.status });
        reply(r.status, r.json);
      } catch (e) {
        const f = e instanceof Fault ? e : new Fault(`Internal error: ${(e as Error).message}`, 500);
        record({ method, path, body, status: f.status, fault_message: f.message });
        peer.log('ERROR', `Received Error. Status code: ${f.status} Bad Request. Message: ${f.message}`);
        reply(f.status, { fault_message: f.message }, f.fatal);
      }
    });
  });
  server.listen(sock);
  process.on('SIGTERM', () => process.exit(143));
}

main();
