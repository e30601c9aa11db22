/**
 * Test helpers around the Firecracker test peer: an executable named
 * `firecracker` pointing at the compiled peer, raw API requests, the peer's
 * request log, and host probes for the real binaries.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, closeSync, constants, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, statSync, symlinkSync, writeFileSync, writeSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
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

/** One raw API request (no client-side phase checks). */
export function raw(sock: string, method: string, path: string, body?: unknown): Promise<{ status: number; json: unknown; text: string }> {
  const payload = body === undefined ? undefined : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = request(
      { socketPath: sock, method, path, agent: false, headers: payload ? { 'Content-Type': 'application/json', 'Content-Length': payload.length } : {} },
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
          resolve({ status: res.statusCode ?? 0, json, text });
        });
      },
    );
    req.on('error', reject);
    req.end(payload);
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
