/**
 * Test helpers around the Firecracker test peer: an executable named
 * `firecracker` pointing at the compiled peer, raw API requests, the peer's
 * request log, and host probes for the real binaries.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, symlinkSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sleep } from '../../src/vmm/proc.js';
import { resolveBinary } from '../../src/vmm/firecracker/firecracker-driver.js';

export const PEER_JS = new URL('./firecracker-peer.js', import.meta.url).pathname;

/** A directory holding an executable `firecracker` that is the test peer. Returns the binary path. */
export function peerBinary(): string {
  chmodSync(PEER_JS, 0o755);
  const dir = mkdtempSync(join(tmpdir(), 'fc-peer-bin-'));
  const bin = join(dir, 'firecracker');
  symlinkSync(PEER_JS, bin);
  return bin;
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
  for (let i = 0; i < 500 && !existsSync(sock); i++) await sleep(10);
  if (!existsSync(sock)) throw new Error(`peer did not create ${sock}: ${out}`);
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

/** Real binaries on this host, if any. */
export const realFirecracker = (): string | undefined => resolveBinary('firecracker');
export const realJailer = (): string | undefined => resolveBinary('jailer');
