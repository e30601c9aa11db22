/**
 * Test helpers around the Firecracker test peer: an executable named
 * `firecracker` pointing at the compiled peer, raw API requests, the peer's
 * request log, and host probes for the real binaries.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, constants, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, statSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { request } from 'node:http';
import { setPriority, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { sleep } from '../../src/vmm/proc.js';
import { resolveBinary } from '../../src/vmm/firecracker/firecracker-driver.js';

export const PEER_JS = new URL('./firecracker-peer.js', import.meta.url).pathname;

/** An executable `firecracker` (in `parent`, default a new temp dir) that is the test peer. Returns its path. */
export function peerBinary(parent?: string): string {
  // Only the owner may chmod; the unit tests also run unprivileged (make test-unit).
  if ((statSync(PEER_JS).mode & 0o111) !== 0o111) chmodSync(PEER_JS, 0o755);
  const dir = parent ? join(parent, 'bin') : mkdtempSync(join(tmpdir(), 'fc-peer-bin-'));
  mkdirSync(dir, { recursive: true });
  const bin = join(dir, 'firecracker');
  symlinkSync(PEER_JS, bin);
  return bin;
}

/**
 * A stand-in for Firecracker's `jailer` (written as a shell script into `dir`):
 * parses the jailer's arguments, checks the required ones, creates the chroot
 * `<base>/<exec-file-name>/<id>/root` owned by uid:gid, joins the `--netns`
 * network namespace (nsenter; a missing one fails like the jailer), and execs
 * the exec file in place (same pid) with `--id=<id>` and the arguments after
 * `--`, telling the peer to resolve absolute paths under the chroot
 * (FC_PEER_ROOT). It does not pivot_root, drop privileges or join cgroups;
 * every argument it does not act on (and --netns) is appended to $FAKE_JAILER_LOG.
 */
export function fakeJailer(dir: string): string {
  mkdirSync(dir, { recursive: true });
  const p = join(dir, 'jailer');
  writeFileSync(
    p,
    [
      '#!/bin/sh',
      'set -e',
      'id=; exec_file=; uid=; gid=; netns=; base=/srv/jailer',
      'while [ $# -gt 0 ]; do',
      '  case "$1" in',
      '    --id) id=$2; shift 2;;',
      '    --exec-file) exec_file=$2; shift 2;;',
      '    --uid) uid=$2; shift 2;;',
      '    --gid) gid=$2; shift 2;;',
      '    --chroot-base-dir) base=$2; shift 2;;',
      '    --netns) netns=$2; echo "$1 $2" >> "${FAKE_JAILER_LOG:-/dev/null}"; shift 2;;',
      '    --cgroup-version|--cgroup|--parent-cgroup|--resource-limit) echo "$1 $2" >> "${FAKE_JAILER_LOG:-/dev/null}"; shift 2;;',
      '    --new-pid-ns|--daemonize) echo "$1" >> "${FAKE_JAILER_LOG:-/dev/null}"; shift;;',
      '    --) shift; break;;',
      '    *) echo "jailer: unknown argument $1" >&2; exit 1;;',
      '  esac',
      'done',
      '[ -n "$id" ] && [ -n "$exec_file" ] && [ -n "$uid" ] && [ -n "$gid" ] || { echo "jailer: missing a required argument" >&2; exit 1; }',
      'case "$(basename "$exec_file")" in *firecracker*) ;; *) echo "jailer: the exec file name must contain firecracker" >&2; exit 1;; esac',
      'chroot="$base/$(basename "$exec_file")/$id/root"',
      'mkdir -p "$chroot"',
      'chown "$uid:$gid" "$chroot"',
      '[ -z "$netns" ] || [ -e "$netns" ] || { echo "jailer: cannot open network namespace $netns" >&2; exit 1; }',
      'enter=; [ -z "$netns" ] || enter="nsenter --net=$netns --"',
      'exec $enter env FC_PEER_ROOT="$chroot" "$exec_file" --id="$id" --start-time-us=0 --start-time-cpu-us=0 "$@"',
      '',
    ].join('\n'),
  );
  chmodSync(p, 0o755);
  return p;
}

export interface RunningPeer {
  proc: ChildProcess;
  sock: string;
  log: string;
  stdout: () => string;
  exited: Promise<number | null>;
}

/** Start the peer directly (no driver) on `<dir>/api.sock`, logging requests to `<dir>/peer.jsonl`. */
export async function startPeer(dir: string, args: string[] = []): Promise<RunningPeer> {
  const sock = join(dir, 'api.sock');
  const log = join(dir, 'peer.jsonl');
  const proc = spawn(process.execPath, [PEER_JS, '--api-sock', sock, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, FC_PEER_LOG: log } });
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((r) => proc.on('exit', (code) => r(code)));
  // The socket file appears at bind, a moment before the server accepts: wait for an answer.
  let up = false;
  for (let i = 0; i < 500 && !up; i++) {
    if (existsSync(sock)) up = await raw(sock, 'GET', '/version').then(() => true, () => false);
    if (!up) await sleep(10);
  }
  if (!up) throw new Error(`peer did not answer on ${sock}: ${out}`);
  return { proc, sock, log, stdout: () => out, exited };
}

export interface RawOptions {
  /** Fail (reject with code ETIMEDOUT) when no complete answer came within this time. */
  timeoutMs?: number;
  /** Send the body chunked (Transfer-Encoding), without a Content-Length. */
  chunked?: boolean;
}

/** One raw API request (no client-side phase checks). A string body is sent as is, anything else as JSON. */
export function raw(sock: string, method: string, path: string, body?: unknown, opts: RawOptions = {}): Promise<{ status: number; json: unknown; text: string }> {
  const payload = body === undefined ? undefined : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  const headers: Record<string, string | number> = {};
  if (payload) {
    headers['Content-Type'] = 'application/json';
    if (opts.chunked) headers['Transfer-Encoding'] = 'chunked';
    else headers['Content-Length'] = payload.length;
  }
  return new Promise((resolve, reject) => {
    const timer =
      opts.timeoutMs === undefined
        ? undefined
        : setTimeout(() => {
            req.destroy(Object.assign(new Error(`no answer to ${method} ${path} within ${opts.timeoutMs} ms`), { code: 'ETIMEDOUT' }));
          }, opts.timeoutMs);
    const req = request(
      { socketPath: sock, method, path, agent: false, headers },
      (res) => {
        let text = '';
        res.on('data', (d: Buffer) => (text += d.toString()));
        res.on('end', () => {
          let json: unknown;
          try {
            json = text ? JSON.parse(text) : undefined;
          } catch {
            json = undefined;
          }
          clearTimeout(timer);
          resolve({ status: res.statusCode ?? 0, json, text });
        });
        res.on('error', (e) => {
          clearTimeout(timer);
          reject(e);
        });
      },
    );
    req.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    if (payload && opts.chunked) {
      req.write(payload);
      req.end();
    } else req.end(payload);
  });
}

export interface PeerLogEntry {
  method: string;
  path: string;
  body?: Record<string, unknown>;
  status: number;
  fault_message?: string;
}

export function readPeerLog(path: string): PeerLogEntry[] {
  if (!existsSync(path)) return [];
  return readFileSync(path, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as PeerLogEntry);
}

/** The nonce of the peer guest's "memory" in a snapshot memory file. */
export function memoryNonce(memoryFile: string): string {
  const raw = readFileSync(memoryFile, 'utf8');
  const nl = raw.indexOf('\n');
  return (JSON.parse(raw.slice(nl + 1)) as { nonce: string }).nonce;
}

export async function waitFor(pred: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

let runSeq = 0;

/**
 * Run `cmd` in the serial shell of a Firecracker guest (the peer's, or a real
 * guest's): typed into the console input FIFO `<vmDir>/console.in`, output read
 * from `<vmDir>/console.log` up to an end marker (quoted so the tty echo of the
 * typed line differs from the output), like guestRun does over QEMU's socket.
 */
export async function peerRun(vmDir: string, cmd: string, timeoutMs = 10_000): Promise<string> {
  const n = `${process.pid}x${++runSeq}`;
  const log = join(vmDir, 'console.log');
  const start = statSync(log).size;
  const fd = openSync(join(vmDir, 'console.in'), constants.O_WRONLY | constants.O_NONBLOCK);
  try {
    writeSync(fd, `\n${cmd}; echo "__done_""${n}__"\n`);
  } finally {
    closeSync(fd);
  }
  const marker = `__done_${n}__`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = readFileSync(log).subarray(start).toString('utf8');
    const i = text.indexOf(marker);
    if (i >= 0) {
      // Drop the echo of the typed line: the output starts after it.
      const body = text.slice(0, i);
      const echoEnd = body.indexOf(`"__done_""${n}__"`);
      return echoEnd >= 0 ? body.slice(body.indexOf('\n', echoEnd) + 1) : body;
    }
    if (Date.now() > deadline) throw new Error(`guest command timed out: ${cmd}\n--- console ---\n${text.slice(-2000)}`);
    await sleep(20);
  }
}

/** Real binaries on this host, if any. */
/**
 * Where the real Firecracker and jailer for tests are: MVM_TEST_FIRECRACKER_DIR, else the
 * workspace's shared build (<repo>/../shared/firecracker), else undefined (then PATH is searched).
 */
export function realFirecrackerDir(): string | undefined {
  const repo = fileURLToPath(new URL('../../..', import.meta.url));
  for (const d of [process.env.MVM_TEST_FIRECRACKER_DIR, join(repo, '..', 'shared', 'firecracker')]) {
    if (d && existsSync(join(d, 'firecracker'))) return d;
  }
  return undefined;
}
const realIn = (name: string): string | undefined => {
  const dir = realFirecrackerDir();
  return dir && existsSync(join(dir, name)) ? join(dir, name) : resolveBinary(name);
};
export const realFirecracker = (): string | undefined => realIn('firecracker');
export const realJailer = (): string | undefined => realIn('jailer');


/** A Firecracker API server process (the peer or the real binary) started for a differential run. */
export interface ApiProcess {
  kind: 'peer' | 'real';
  proc: ChildProcess;
  sock: string;
  /** stdout + stderr so far. */
  output: () => string;
  /** Exit code, or the signal's name. */
  exited: Promise<number | string>;
  /** Set when the process exited before it answered on its socket. */
  startupExit?: number | string;
}

/**
 * Start the peer or the real Firecracker on `<dir>/api.sock` with `args` after `--api-sock`, in
 * `dir` (its cwd: relative paths resolve there, as for the driver's un-jailed VMs). The real
 * binary runs at a low CPU priority (nice 10: its vCPUs spin on this host once started) and, with
 * `netns`, inside that network namespace (its taps are created there). Resolves once the API
 * answers, or once the process exited without answering (`startupExit`). Never throws for a
 * process that refuses its command line: that is a result to compare.
 */
export async function startApiProcess(kind: 'peer' | 'real', dir: string, args: string[], opts: { binary?: string; netns?: string; env?: Record<string, string>; startTimeoutMs?: number } = {}): Promise<ApiProcess> {
  const sock = join(dir, 'api.sock');
  let cmd: string;
  let argv: string[];
  if (kind === 'peer') {
    cmd = process.execPath;
    argv = [PEER_JS, '--api-sock', sock, ...args];
  } else {
    const bin = opts.binary ?? realFirecracker();
    if (!bin) throw new Error('no real firecracker binary');
    cmd = opts.netns ? 'nsenter' : bin;
    argv = [...(opts.netns ? [`--net=/run/netns/${opts.netns}`, '--', bin] : []), '--api-sock', sock, ...args];
  }
  const proc = spawn(cmd, argv, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(kind === 'peer' ? { FC_PEER_LOG: join(dir, 'peer.jsonl') } : {}), ...opts.env } });
  if (kind === 'real' && proc.pid) {
    try {
      setPriority(proc.pid, 10);
    } catch {
      /* gone already: seen below */
    }
  }
  let out = '';
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  let exitedWith: number | string | undefined;
  const exited = new Promise<number | string>((r) =>
    proc.on('exit', (code, signal) => {
      exitedWith = code ?? signal ?? 'unknown';
      r(exitedWith);
    }),
  );
  const p: ApiProcess = { kind, proc, sock, output: () => out, exited };
  const deadline = Date.now() + (opts.startTimeoutMs ?? 10_000);
  for (;;) {
    if (exitedWith !== undefined) {
      p.startupExit = exitedWith;
      return p;
    }
    if (existsSync(sock) && (await raw(sock, 'GET', '/version', undefined, { timeoutMs: 2000 }).then(() => true, () => false))) return p;
    if (Date.now() > deadline) {
      proc.kill('SIGKILL');
      await exited;
      throw new Error(`${kind} did not answer on ${sock} within ${opts.startTimeoutMs ?? 10_000} ms: ${out}`);
    }
    await sleep(10);
  }
}

/** SIGKILL an ApiProcess (if still running) and wait for it to be gone. */
export async function stopApiProcess(p: ApiProcess): Promise<number | string> {
  if (p.proc.exitCode === null && p.proc.signalCode === null) p.proc.kill('SIGKILL');
  return p.exited;
}
