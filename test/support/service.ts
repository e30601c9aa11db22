/**
 * Runs the real standalone service as its own process (own session, so a test
 * can kill -9 its whole process group), with a private data directory and port.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, readdirSync, rmdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { Mvm } from '../../sdk/typescript/src/index.js';
import { instanceForDataDir, instanceNames } from '../../src/instance.js';
import { CLAIM_DIR } from '../../src/network/instance-claim.js';
import { listPids, readCmdline, pidAlive, sleep } from '../../src/vmm/proc.js';
import { recordAuditOf, recordErrorAnswer, recordProcessOutput, recordSecret } from './ledger.js';

export const REPO = resolve(new URL('../../..', import.meta.url).pathname);
export const SERVER_BIN = join(REPO, 'dist/src/cmd/mvm-server.js');
export const CLI_BIN = join(REPO, 'dist/src/cmd/mvm.js');

export interface TestService {
  dataDir: string;
  url: string;
  token: string;
  client: Mvm;
  /** The CA the client trusts (an https:// service). */
  ca?: string | Buffer;
  proc: ChildProcess;
  logs: () => string;
  /** SIGKILL the service's whole process group (guests must survive: they run in their own sessions). */
  kill9(): Promise<void>;
  /** Graceful stop (SIGTERM). */
  stop(): Promise<void>;
}

/** The network namespace that stands in for "the host" of a test service (bridge, nftables, published ports). */
export function hostNetnsOf(dataDir: string): string {
  return `mvmt-${createHash('sha256').update(dataDir).digest('hex').slice(0, 8)}`;
}

function ensureNetns(name: string): void {
  if (existsSync(`/var/run/netns/${name}`)) return;
  execFileSync('ip', ['netns', 'add', name]);
  execFileSync('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
}

/**
 * `ca`: the CA the test client trusts for an https:// service (default: server.json's self-signed certificate, if any).
 * `makeHostNetns: false`: leave making MVM_NET_HOST_NETNS to the service (it makes a missing one, and removes it at a clean stop).
 */
export async function startService(opts: { dataDir?: string; env?: Record<string, string>; token?: string; ca?: string | Buffer; makeHostNetns?: boolean } = {}): Promise<TestService> {
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'mvm-test-'));
  // Guest networks of tests live inside a namespace of their own, with no route off the machine.
  const hostNetns = opts.env?.MVM_NET_HOST_NETNS ?? hostNetnsOf(dataDir);
  if (opts.makeHostNetns !== false) ensureNetns(hostNetns);
  const serverJson = join(dataDir, 'server.json');
  rmSync(serverJson, { force: true });
  let out = '';
  const proc = spawn(process.execPath, [SERVER_BIN], {
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: {
      ...process.env,
      MVM_DATA_DIR: dataDir,
      MVM_LISTEN: '127.0.0.1:0',
      MVM_LOG_LEVEL: process.env.MVM_TEST_LOG_LEVEL ?? 'warn',
      MVM_RESYNC_SECONDS: '2',
      MVM_GRPC_LISTEN: '127.0.0.1:0',
      MVM_NET_HOST_NETNS: hostNetns,
      ...(opts.token ? { MVM_ADMIN_TOKEN: opts.token } : {}),
      ...opts.env,
    },
  });
  proc.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  proc.stderr!.on('data', (d: Buffer) => (out += d.toString()));
  recordProcessOutput('mvm-server', [proc.stdout, proc.stderr]);
  const deadline = Date.now() + 60000;
  while (!existsSync(serverJson)) {
    if (proc.exitCode !== null || proc.signalCode !== null) throw new Error(`service exited during start-up:\n${out}`);
    if (Date.now() > deadline) throw new Error(`service did not start in 60 s:\n${out}`);
    await sleep(50);
  }
  const info = JSON.parse(readFileSync(serverJson, 'utf8')) as { url: string; ca?: string };
  const url = info.url;
  const ca = opts.ca ?? (info.ca ? readFileSync(info.ca) : undefined);
  const token = opts.token ?? readFileSync(join(dataDir, 'admin.token'), 'utf8').trim();
  recordSecret('admin token', token);
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  return {
    dataDir,
    url,
    token,
    proc,
    client: new Mvm({ url, token, ...(ca ? { ca } : {}) }),
    ...(ca ? { ca } : {}),
    logs: () => out,
    async kill9() {
      try {
        process.kill(-proc.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
      await exited;
    },
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      // A timer that does not outlive the stop (a pending 30 s timer kept every test file alive 30 s longer).
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([exited, new Promise((r) => (timer = setTimeout(r, 30000)))]);
      clearTimeout(timer);
    },
  };
}

/** Every live QEMU process whose VM directory lies under dataDir. */
export function qemuProcessesUnder(dataDir: string): Array<{ pid: number; id: string }> {
  const out: Array<{ pid: number; id: string }> = [];
  for (const pid of listPids()) {
    const cmd = readCmdline(pid);
    if (!cmd || !cmd[0]?.includes('qemu-system') || !pidAlive(pid)) continue;
    if (!cmd.some((a) => a.includes(join(dataDir, 'vms') + '/'))) continue;
    const name = cmd[cmd.indexOf('-name') + 1] ?? '';
    out.push({ pid, id: name.replace(/^mvm\./, '') });
  }
  return out;
}

const CGROUP_ROOTS = ['/sys/fs/cgroup', ...['cpu', 'memory', 'pids'].map((c) => `/sys/fs/cgroup/${c}`)];

/** Cgroup directories of a VM under any instance's parent (`mvm`, `mvm-<instance>`), on v1 or v2. */
export function cgroupDirsOf(id: string): string[] {
  const parents = CGROUP_ROOTS.flatMap((r) => (existsSync(r) ? readdirSync(r).filter((n) => n === 'mvm' || n.startsWith('mvm-')).map((n) => join(r, n)) : []));
  return parents.map((d) => join(d, id)).filter((d) => existsSync(d));
}

/** The nftables table name (each family) of a test service's or node agent's instance. */
export function nftTableOf(dataDir: string): string {
  return instanceNames(instanceOf(dataDir)).table;
}

/** Prefix of the VM network namespaces of a test service's instance. */
export function vmNetnsPrefixOf(dataDir: string): string {
  return instanceNames(instanceOf(dataDir)).netnsPrefix;
}

/** The subnet a service or node agent picked for its instance (recorded in its data dir at start). */
export function subnetOf(dataDir: string): string {
  const s = (JSON.parse(readFileSync(join(dataDir, 'instance.json'), 'utf8')) as { subnet?: string }).subnet;
  if (!s) throw new Error(`no subnet recorded in ${dataDir}/instance.json`);
  return s;
}

/** The instance a test service's data dir belongs to (what it recorded, else what its path derives). */
export function instanceOf(dataDir: string): string {
  try {
    return (JSON.parse(readFileSync(join(dataDir, 'instance.json'), 'utf8')) as { instance: string }).instance;
  } catch {
    return instanceForDataDir(dataDir);
  }
}

/** Kill every guest of a data dir and remove the dir (cleanup even when a test failed). */
export async function destroyDataDir(dataDir: string): Promise<void> {
  if (process.env.MVM_TEST_KEEP) return;
  recordAuditOf(dataDir);
  for (const p of qemuProcessesUnder(dataDir)) {
    try {
      process.kill(p.pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await sleep(200);
  const vms = join(dataDir, 'vms');
  if (existsSync(vms)) {
    for (const id of readdirSync(vms)) {
      for (const d of cgroupDirsOf(id)) {
        try {
          rmdirSync(d);
        } catch {
          /* still busy: leave it */
        }
      }
    }
  }
  // VM namespaces of this data dir's instance (prefix mvm-<instance>.) and the stand-in host namespace.
  const names = instanceNames(instanceOf(dataDir));
  for (const ns of existsSync('/var/run/netns') ? readdirSync('/var/run/netns') : []) {
    if (ns.startsWith(names.netnsPrefix) || ns === hostNetnsOf(dataDir)) {
      try {
        execFileSync('ip', ['netns', 'del', ns]);
      } catch {
        /* already gone */
      }
    }
  }
  // The instance's cgroup parent (when empty) and its claim in the host's register.
  for (const r of CGROUP_ROOTS) {
    try {
      rmdirSync(join(r, names.cgroupParent));
    } catch {
      /* absent or busy */
    }
  }
  const claim = join(CLAIM_DIR, `${names.instance}.json`);
  try {
    if ((JSON.parse(readFileSync(claim, 'utf8')) as { dataDir: string }).dataDir === dataDir) rmSync(claim, { force: true });
  } catch {
    /* none */
  }
  // Template RAM files on tmpfs (the agent's default place for this data dir).
  rmSync(join('/dev/shm', `mvm-${createHash('sha256').update(dataDir).digest('hex').slice(0, 8)}`), { recursive: true, force: true });
  rmSync(dataDir, { recursive: true, force: true });
}

/** A raw JSON call to the service's REST API with its admin token: status and parsed body. */
export async function apiCall(
  svc: Pick<TestService, 'url' | 'token'>,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: any; text: string; headers: Headers }> {
  const r = await fetch(`${svc.url}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${svc.token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await r.text();
  recordErrorAnswer(method, path, r.status, text);
  let json: any;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined; // not JSON: the caller asserts on status and text
  }
  return { status: r.status, json, text, headers: r.headers };
}

/** Poll a microVM until its phase is one of `phases` (and, with `ready`, GuestReady is True); the last answer in the error. */
export async function waitForPhase(svc: TestService, id: string, phases: string[], timeoutMs = 120_000, ready = false): Promise<any> {
  const until = Date.now() + timeoutMs;
  let last = '';
  for (;;) {
    const r = await apiCall(svc, 'GET', `/microvms/${id}`);
    last = r.text;
    const isReady = r.json?.status?.conditions?.some((c: { type: string; status: string }) => c.type === 'GuestReady' && c.status === 'True');
    if (r.status === 200 && phases.includes(r.json.status.phase) && (!ready || isReady)) return r.json;
    if (Date.now() > until) throw new Error(`${id} not in ${phases.join('/')} within ${timeoutMs} ms: ${last}`);
    await new Promise((res) => setTimeout(res, 100));
  }
}
