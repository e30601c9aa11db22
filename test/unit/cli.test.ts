/**
 * End-to-end tests of the compiled `mvm` CLI against an in-process mock of the REST contract.
 */
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { networkInterfaces, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { AddressInfo } from 'node:net';
import { parse as parseYaml } from 'yaml';
import type { MicroVMT } from '../../src/core/schema.js';
import { isLocalServer } from '../../src/cli/config.js';
import { parseDuration } from '../../src/cli/parse.js';

const CLI = resolve(dirname(fileURLToPath(import.meta.url)), '../../src/cmd/mvm.js');

// ---------------------------------------------------------------------------
// mock server

interface Step {
  at: number; // ms after creation
  phase: string;
  ready?: boolean;
  reason?: string;
  message?: string;
}

interface MockVm {
  vm: MicroVMT;
  created: number;
  timeline: Step[];
  deletedAt?: number;
}

interface Recorded {
  method: string;
  path: string;
  query: URLSearchParams;
  auth: string | undefined;
  body: unknown;
}

function problem(res: ServerResponse, status: number, code: string, detail: string, errors?: Array<{ field: string; message: string }>): void {
  res.writeHead(status, { 'content-type': 'application/problem+json' });
  res.end(JSON.stringify({ type: 'about:blank', title: code, status, code, detail, ...(errors ? { errors } : {}) }));
}

function json(res: ServerResponse, status: number, body: unknown): void {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

const T0 = '2024-05-01T12:00:00.000Z';
let seq = 0;

class Mock {
  server!: Server;
  url = '';
  port = 0;
  requests: Recorded[] = [];
  vms: MockVm[] = [];
  /** When set, requests must carry exactly this bearer token. */
  requireToken: string | undefined;
  pageSize = 2;
  /** Console hook: writes to the response; the default ends after one line. */
  console: (res: ServerResponse, q: URLSearchParams) => void = (res) => res.end('hello\n');
  nextTimeline: Step[] | undefined;

  async start(): Promise<void> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((r) => this.server.listen(0, '0.0.0.0', r));
    this.port = (this.server.address() as AddressInfo).port;
    this.url = `http://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  reset(): void {
    this.requests = [];
    this.vms = [];
    this.requireToken = undefined;
    this.pageSize = 2;
    this.nextTimeline = undefined;
    this.console = (res) => res.end('hello\n');
  }

  add(name: string, timeline: Step[] = [{ at: 0, phase: 'Running', ready: true }], extra: Partial<MicroVMT['spec']> = {}): MicroVMT {
    const id = `vm-${String(++seq).padStart(14, '0')}`;
    const vm: MicroVMT = {
      id,
      name,
      tenant: 'default',
      spec: { vcpu: 1, memory: '128Mi', ...extra },
      desiredState: 'Running',
      status: { phase: 'Pending', conditions: [] },
      generation: 1,
      resourceVersion: '1',
      createdAt: T0,
      updatedAt: T0,
    };
    this.vms.push({ vm, created: Date.now(), timeline });
    return vm;
  }

  find(key: string): MockVm | undefined {
    const m = this.vms.find((x) => x.vm.id === key || x.vm.name === key);
    if (m?.deletedAt !== undefined && Date.now() >= m.deletedAt) {
      this.vms = this.vms.filter((x) => x !== m);
      return undefined;
    }
    return m;
  }

  /** The VM's state at this instant, derived from its timeline. */
  current(m: MockVm): MicroVMT {
    const t = Date.now() - m.created;
    let step: Step | undefined;
    for (const s of m.timeline) if (s.at <= t) step = s;
    if (m.deletedAt !== undefined) step = { at: 0, phase: 'Deleting' };
    if (step) {
      m.vm.status = {
        ...m.vm.status,
        phase: step.phase as MicroVMT['status']['phase'],
        conditions: [{ type: 'GuestReady', status: step.ready ? 'True' : 'False', lastTransitionTime: T0, ...(step.ready ? { reason: 'AgentConnected' } : {}) }],
      };
      if (step.reason) m.vm.status.reason = step.reason;
      if (step.message) m.vm.status.message = step.message;
      if (step.phase === 'Running') Object.assign(m.vm.status, { ip: '10.0.0.2', node: 'node-a', driver: 'qemu', accel: 'kvm', pid: 4242 });
    }
    return structuredClone(m.vm);
  }

  async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const u = new URL(req.url ?? '/', 'http://x');
    let raw = '';
    for await (const c of req) raw += String(c);
    const body = raw ? (JSON.parse(raw) as unknown) : undefined;
    const auth = req.headers.authorization;
    this.requests.push({ method: req.method ?? 'GET', path: u.pathname, query: u.searchParams, auth, body });
    if (this.requireToken !== undefined && auth !== `Bearer ${this.requireToken}`) {
      return problem(res, 401, 'UNAUTHENTICATED', auth ? 'invalid bearer token' : 'missing bearer token');
    }
    const parts = u.pathname.split('/').filter(Boolean); // api v1 microvms [id] [action]
    if (parts[0] !== 'api' || parts[1] !== 'v1' || parts[2] !== 'microvms') return problem(res, 404, 'NOT_FOUND', 'no such route');
    const [id, action] = [parts[3] ? decodeURIComponent(parts[3]) : undefined, parts[4]];

    if (!id) {
      if (req.method === 'POST') return this.create(res, body as Record<string, unknown>);
      return this.list(res, u.searchParams);
    }
    const m = this.find(id);
    if (!m) return problem(res, 404, 'NOT_FOUND', `microvm ${JSON.stringify(id)} not found`);
    const q = u.searchParams;
    switch (`${req.method} ${action ?? ''}`) {
      case 'GET ':
        return json(res, 200, this.current(m));
      case 'PUT ':
        Object.assign(m.vm.spec, body);
        m.vm.generation++;
        return json(res, 200, this.current(m));
      case 'DELETE ':
        m.deletedAt = Date.now() + 300;
        return json(res, 202, this.current(m));
      case 'POST start': {
        const cur = this.current(m);
        if (cur.status.phase === 'Running') return problem(res, 409, 'ILLEGAL_TRANSITION', `cannot start: microVM is already Running`);
        m.created = Date.now();
        m.timeline = [{ at: 0, phase: 'Starting' }, { at: 150, phase: 'Running', ready: true }];
        return json(res, 202, this.current(m));
      }
      case 'POST stop': {
        const cur = this.current(m);
        if (cur.status.phase === 'Stopped') return problem(res, 409, 'ILLEGAL_TRANSITION', 'cannot stop: microVM is Stopped');
        m.created = Date.now();
        m.timeline = [{ at: 0, phase: 'Stopping' }, { at: 150, phase: 'Stopped' }];
        return json(res, 202, this.current(m));
      }
      case 'GET metrics':
        return json(res, 200, {
          id: m.vm.id,
          phase: 'Running',
          timestamp: T0,
          cpuSeconds: 1.5,
          memoryRssBytes: 50 * 1024 * 1024,
          guestMemoryBytes: 128 * 1024 * 1024,
          uptimeSeconds: 42,
          block: [{ device: 'vda', readBytes: 2048, writeBytes: 0, readOps: 3, writeOps: 0 }],
          net: [{ device: 'eth0', rxBytes: 100, txBytes: 200, rxPackets: 1, txPackets: 2 }],
          bootMs: { vmm: 120, guestReady: 480 },
        });
      case 'GET console':
        res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8' });
        return this.console(res, q);
      case 'GET wait':
        return this.wait(res, m, q);
      default:
        return problem(res, 404, 'NOT_FOUND', 'no such route');
    }
  }

  create(res: ServerResponse, body: Record<string, unknown>): void {
    const errors: Array<{ field: string; message: string }> = [];
    if (typeof body.vcpu === 'number' && body.vcpu > 8) errors.push({ field: 'vcpu', message: 'must be <= 8' });
    if (typeof body.memory === 'string' && !/^[1-9][0-9]*(Mi|Gi)$/.test(body.memory)) errors.push({ field: 'memory', message: 'must be a quantity like 128Mi' });
    if (errors.length) return problem(res, 400, 'VALIDATION_FAILED', 'request validation failed', errors);
    if (this.vms.some((x) => x.vm.name === body.name)) return problem(res, 409, 'ALREADY_EXISTS', `microvm ${String(body.name)} already exists`);
    const { name, start, ...spec } = body;
    const timeline =
      this.nextTimeline ??
      (start === false
        ? [{ at: 0, phase: 'Pending' }, { at: 100, phase: 'Stopped' }]
        : [{ at: 0, phase: 'Pending' }, { at: 100, phase: 'Starting' }, { at: 200, phase: 'Running' }, { at: 300, phase: 'Running', ready: true }]);
    const vm = this.add(String(name), timeline, spec as Partial<MicroVMT['spec']>);
    json(res, 201, this.current(this.find(vm.id)!));
  }

  list(res: ServerResponse, q: URLSearchParams): void {
    let items = this.vms.filter((x) => x.deletedAt === undefined).map((x) => this.current(x));
    const phase = q.get('phase');
    if (phase) items = items.filter((v) => v.status.phase === phase);
    for (const l of q.getAll('label')) {
      const [k, v] = l.split('=');
      items = items.filter((vm) => vm.spec.labels?.[k!] === v);
    }
    const start = Number(q.get('cursor') ?? 0);
    const n = Math.min(Number(q.get('limit') ?? this.pageSize), this.pageSize);
    const page = items.slice(start, start + n);
    json(res, 200, start + n < items.length ? { items: page, next_cursor: String(start + n) } : { items: page });
  }

  wait(res: ServerResponse, m: MockVm, q: URLSearchParams): void {
    const want = q.get('phase');
    const ready = q.get('ready') === 'true';
    const timeoutMs = parseDuration(q.get('timeout') ?? '30s');
    const deadline = Date.now() + timeoutMs;
    const tick = (): void => {
      if (res.destroyed) return;
      const vm = this.current(m);
      const isReady = vm.status.conditions.some((c) => c.type === 'GuestReady' && c.status === 'True');
      if (vm.status.phase === want && (!ready || isReady)) return json(res, 200, vm);
      if (vm.status.phase === 'Failed' && want !== 'Failed') return problem(res, 409, 'VM_FAILED', `microVM failed: ${vm.status.reason ?? 'unknown'}`);
      if (Date.now() >= deadline) return problem(res, 408, 'TIMEOUT', `timed out waiting for phase ${want}`);
      setTimeout(tick, 20);
    };
    tick();
  }
}

// ---------------------------------------------------------------------------
// CLI runner

interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

let tmp: string;
let baseEnv: Record<string, string>;

function launch(args: string[], env: Record<string, string> = {}) {
  const child = spawn(process.execPath, [CLI, ...args], { env: { ...baseEnv, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const done = new Promise<RunResult>((resolvePromise) => {
    child.on('close', (code, signal) => resolvePromise({ code, signal, stdout, stderr }));
  });
  return { child, done, out: () => stdout };
}

function run(args: string[], env: Record<string, string> = {}): Promise<RunResult> {
  return launch(args, env).done;
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

const mock = new Mock();

before(async () => {
  await mock.start();
  tmp = mkdtempSync(join(tmpdir(), 'mvm-cli-test-'));
  mkdirSync(join(tmp, 'home', '.config'), { recursive: true });
  mkdirSync(join(tmp, 'data-empty'));
  baseEnv = {
    PATH: process.env.PATH ?? '/usr/bin:/bin',
    HOME: join(tmp, 'home'),
    XDG_CONFIG_HOME: join(tmp, 'home', '.config'),
    MVM_DATA_DIR: join(tmp, 'data-empty'),
    MVM_SERVER: mock.url,
  };
});

after(async () => {
  await mock.stop();
  rmSync(tmp, { recursive: true, force: true });
});

beforeEach(() => mock.reset());

// ---------------------------------------------------------------------------

describe('create', () => {
  test('sends the JSON body and the bearer token, prints the VM', async () => {
    mock.requireToken = 'tok-123';
    const r = await run([
      'create', 'web', '--vcpu', '2', '--memory', '256Mi', '--kernel', 'k1', '--kernel-cmdline', 'quiet',
      '--rootfs', 'alpine', '--rootfs-size', '2Gi', '--read-only', '--label', 'app=web', '--label', 'env=dev', '--no-start',
      '--token', 'tok-123',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const post = mock.requests.find((q) => q.method === 'POST');
    assert.ok(post);
    assert.equal(post.path, '/api/v1/microvms');
    assert.equal(post.auth, 'Bearer tok-123');
    assert.deepEqual(post.body, {
      name: 'web',
      vcpu: 2,
      memory: '256Mi',
      kernel: { image: 'k1', cmdline: 'quiet' },
      rootfs: { image: 'alpine', size: '2Gi', readOnly: true },
      labels: { app: 'web', env: 'dev' },
      start: false,
    });
    assert.match(r.stdout, /^id:\s+vm-\d+$/m);
    assert.match(r.stdout, /^name:\s+web$/m);
    assert.match(r.stdout, /^vcpu:\s+2$/m);
    assert.match(r.stdout, /^memory:\s+256Mi$/m);
    assert.doesNotMatch(r.stdout + r.stderr, /tok-123/);
  });

  test('minimal create omits unset fields; -f yaml file merges with flags', async () => {
    let r = await run(['create', 'mini']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(mock.requests.at(-1)?.body, { name: 'mini' });

    const file = join(tmp, 'vm.yaml');
    writeFileSync(file, 'name: fromfile\nvcpu: 2\nmemory: 128Mi\nlabels:\n  a: b\nrootfs:\n  image: alpine\n');
    r = await run(['create', '-f', file, '--memory', '512Mi', '--rootfs-size', '1Gi', '--label', 'c=d', '-o', 'json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(mock.requests.at(-1)?.body, {
      name: 'fromfile',
      vcpu: 2,
      memory: '512Mi',
      labels: { a: 'b', c: 'd' },
      rootfs: { image: 'alpine', size: '1Gi' },
    });
    assert.equal((JSON.parse(r.stdout) as MicroVMT).name, 'fromfile');
  });

  test('--wait waits until Running and ready, showing phases on stderr', async () => {
    const r = await run(['create', 'waiter', '--wait', '--timeout', '10s']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^phase:\s+Running$/m);
    assert.match(r.stdout, /^ready:\s+true$/m);
    assert.match(r.stderr, /waiting for microVM "vm-\d+" to be Running and ready/);
    assert.match(r.stderr, /phase Running, ready/);
    const wait = mock.requests.find((q) => q.path.endsWith('/wait'));
    assert.ok(wait);
    assert.equal(wait.query.get('phase'), 'Running');
    assert.equal(wait.query.get('ready'), 'true');
    assert.match(wait.query.get('timeout') ?? '', /^\d+s$/);
  });

  test('validation errors print each field and exit 1', async () => {
    const r = await run(['create', 'bad', '--vcpu', '99', '--memory', '12MB']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.equal(r.stderr, 'error: request validation failed\n  - vcpu: must be <= 8\n  - memory: must be a quantity like 128Mi\n');
  });

  test('bad local arguments are rejected before any request', async () => {
    const r = await run(['create', 'x', '--vcpu', 'two']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: --vcpu must be a whole number/);
    assert.equal(mock.requests.length, 0);
  });
});

describe('list', () => {
  test('follows next_cursor to list everything (table)', async () => {
    for (const n of ['a1', 'a2', 'a3', 'a4', 'a5']) mock.add(n);
    const r = await run(['list']);
    assert.equal(r.code, 0, r.stderr);
    const gets = mock.requests.filter((q) => q.path === '/api/v1/microvms');
    assert.deepEqual(gets.map((q) => q.query.get('cursor')), [null, '2', '4']);
    const lines = r.stdout.trimEnd().split('\n');
    assert.deepEqual(lines[0]!.split(/\s{2,}/), ['ID', 'NAME', 'PHASE', 'READY', 'VCPU', 'MEMORY', 'IP', 'NODE', 'AGE']);
    assert.equal(lines.length, 6);
    assert.deepEqual(lines[1]!.split(/\s+/).slice(1, 8), ['a1', 'Running', 'true', '1', '128Mi', '10.0.0.2', 'node-a']);
  });

  test('--limit fetches one page; filters become query parameters', async () => {
    for (const n of ['b1', 'b2', 'b3']) mock.add(n, [{ at: 0, phase: 'Running', ready: true }], { labels: { app: 'web' } });
    let r = await run(['list', '--limit', '2', '--phase', 'running', '--label', 'app=web']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(mock.requests.length, 1);
    const q = mock.requests[0]!.query;
    assert.equal(q.get('limit'), '2');
    assert.equal(q.get('phase'), 'Running');
    assert.deepEqual(q.getAll('label'), ['app=web']);
    assert.equal(r.stdout.trimEnd().split('\n').length, 3);

    r = await run(['list', '-o', 'json']);
    const doc = JSON.parse(r.stdout) as { items: MicroVMT[] };
    assert.deepEqual(doc.items.map((v) => v.name), ['b1', 'b2', 'b3']);

    r = await run(['list', '-q']);
    assert.deepEqual(r.stdout.trim().split('\n'), doc.items.map((v) => v.id));
  });

  test('empty list says so on stderr', async () => {
    const r = await run(['list']);
    assert.equal(r.code, 0);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /No microVMs found/);
  });
});

describe('get and output formats', () => {
  test('json and yaml print the API object as-is; table shows key: value', async () => {
    const vm = mock.add('db', [{ at: 0, phase: 'Running', ready: true }], { labels: { tier: 'db' } });
    const expected = mock.current(mock.find(vm.id)!);

    let r = await run(['get', 'db', '-o', 'json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), expected);

    r = await run(['--output', 'yaml', 'get', vm.id]);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(parseYaml(r.stdout), expected);

    r = await run(['get', 'db']);
    assert.equal(r.code, 0, r.stderr);
    for (const re of [/^id:\s+vm-/m, /^phase:\s+Running$/m, /^ready:\s+true$/m, /^ip:\s+10\.0\.0\.2$/m, /^node:\s+node-a$/m, /^driver:\s+qemu$/m, /^accel:\s+kvm$/m, /^pid:\s+4242$/m, /^created:\s+2024-05-01/m, /^conditions:$/m, /GuestReady\s+True\s+AgentConnected/]) {
      assert.match(r.stdout, re);
    }
    assert.doesNotMatch(r.stdout, /^reason:/m);
  });

  test('reason and message are shown when set', async () => {
    mock.add('broken', [{ at: 0, phase: 'Failed', reason: 'VmmExited', message: 'qemu exited with status 1' }]);
    const r = await run(['get', 'broken']);
    assert.match(r.stdout, /^reason:\s+VmmExited$/m);
    assert.match(r.stdout, /^message:\s+qemu exited with status 1$/m);
  });

  test('invalid --output is a usage error', async () => {
    const r = await run(['get', 'x', '-o', 'xml']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: invalid --output "xml"/);
  });
});

describe('errors', () => {
  test('404 names the microVM', async () => {
    const r = await run(['get', 'nope']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'error: microVM "nope" not found\n');
  });

  test('401 explains how to authenticate and never prints the token', async () => {
    mock.requireToken = 'right';
    const r = await run(['get', 'x', '--token', 'wrong-secret']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, "error: authentication failed: invalid bearer token (pass --token, set MVM_TOKEN, or run on the service's host)\n");
    assert.doesNotMatch(r.stdout + r.stderr, /wrong-secret/);
  });

  test('connection refused', async () => {
    const s = createServer();
    await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
    const port = (s.address() as AddressInfo).port;
    await new Promise<void>((r) => s.close(() => r()));
    const r = await run(['list', '--server', `http://127.0.0.1:${port}`]);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, `error: cannot reach the MicroVM service at http://127.0.0.1:${port} (is it running? start it with 'make run')\n`);
  });

  test('409 illegal transition prints the detail', async () => {
    mock.add('up');
    const r = await run(['start', 'up']);
    assert.equal(r.code, 1);
    assert.equal(r.stderr, 'error: cannot start: microVM is already Running\n');
  });
});

describe('wait', () => {
  test('succeeds when the phase and readiness are reached', async () => {
    // Long enough that even a slow CLI start-up sees the VM still Starting.
    mock.add('w1', [{ at: 0, phase: 'Starting' }, { at: 3000, phase: 'Running' }, { at: 3300, phase: 'Running', ready: true }]);
    const r = await run(['wait', 'w1', '--for', 'Running', '--ready', '--timeout', '15s']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^name:\s+w1$/m);
    assert.match(r.stdout, /^ready:\s+true$/m);
    assert.match(r.stderr, /phase Starting/);
    assert.match(r.stderr, /phase Running, ready/);
  });

  test('times out with exit 1 and the current phase', async () => {
    mock.add('stuck', [{ at: 0, phase: 'Starting' }]);
    const t = Date.now();
    const r = await run(['wait', 'stuck', '--for', 'Running', '--timeout', '1s']);
    assert.equal(r.code, 1);
    assert.ok(Date.now() - t < 5000);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^error: timed out after 1s waiting for microVM "stuck" to be Running \(current phase: Starting\)$/m);
  });

  test('a VM entering Failed exits 1 with its reason and message', async () => {
    mock.add('doomed', [{ at: 0, phase: 'Starting' }, { at: 150, phase: 'Failed', reason: 'VmmExited', message: 'qemu exited with status 1' }]);
    const r = await run(['wait', 'doomed', '--timeout', '5s']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: microVM "doomed" failed: VmmExited: qemu exited with status 1$/m);
  });

  test('stop --wait and delete --wait', async () => {
    mock.add('cycle');
    let r = await run(['stop', 'cycle', '--wait']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^phase:\s+Stopped$/m);

    r = await run(['start', 'cycle']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^microVM "cycle" \(vm-\d+\) start requested; phase Starting$/m);

    r = await run(['delete', 'cycle', '--wait', '-q']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^vm-\d+\n$/);
    assert.equal(r.stderr, '');
    const polls = mock.requests.filter((q) => q.method === 'GET' && /\/microvms\/vm-\d+$/.test(q.path));
    assert.ok(polls.length >= 2, 'polled GET until 404');
    assert.equal(mock.find('cycle'), undefined);
  });
});

describe('token discovery', () => {
  let dataDir: string;
  before(() => {
    dataDir = join(tmp, 'data');
    mkdirSync(dataDir, { recursive: true });
    writeFileSync(join(dataDir, 'admin.token'), 'admin-secret\n');
  });

  test('uses $MVM_DATA_DIR/admin.token for a localhost server', async () => {
    mock.add('t1');
    mock.requireToken = 'admin-secret';
    for (const host of ['127.0.0.1', 'localhost']) {
      const r = await run(['get', 't1', '--server', `http://${host}:${mock.port}`], { MVM_DATA_DIR: dataDir });
      assert.equal(r.code, 0, r.stderr);
    }
    assert.ok(mock.requests.every((q) => q.auth === 'Bearer admin-secret'));
    // MVM_TOKEN takes precedence over the admin token file
    const r = await run(['get', 't1'], { MVM_DATA_DIR: dataDir, MVM_TOKEN: 'env-token' });
    assert.equal(r.code, 1);
    assert.equal(mock.requests.at(-1)?.auth, 'Bearer env-token');
  });

  test('does not send the admin token to a non-local server', async (t) => {
    const addr = Object.values(networkInterfaces())
      .flat()
      .find((i) => i && i.family === 'IPv4' && !i.internal)?.address;
    if (!addr) return t.skip('no non-loopback IPv4 address on this host');
    assert.equal(isLocalServer(`http://${addr}:1`), false);
    mock.requireToken = 'admin-secret';
    const r = await run(['get', 't1', '--server', `http://${addr}:${mock.port}`], { MVM_DATA_DIR: dataDir });
    assert.equal(r.code, 1);
    assert.equal(mock.requests.length, 1);
    assert.equal(mock.requests[0]!.auth, undefined);
    assert.match(r.stderr, /^error: authentication failed: missing bearer token \(pass --token/);
  });

  test('isLocalServer', () => {
    for (const u of ['http://127.0.0.1:8080', 'http://localhost', 'http://[::1]:8080', 'https://LOCALHOST:1']) assert.equal(isLocalServer(u), true, u);
    for (const u of ['http://10.0.0.1:8080', 'http://example.com', 'http://localhost.example.com', 'not a url']) assert.equal(isLocalServer(u), false, u);
  });

  test('config file supplies server and token; env and flags override it', async () => {
    mock.add('c1');
    const cfgDir = join(tmp, 'cfg');
    mkdirSync(join(cfgDir, 'mvm'), { recursive: true });
    writeFileSync(join(cfgDir, 'mvm', 'config.yaml'), `server: ${mock.url}\ntoken: cfg-token\n`);
    const env = { XDG_CONFIG_HOME: cfgDir, MVM_SERVER: '' };
    let r = await run(['get', 'c1'], env);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(mock.requests.at(-1)?.auth, 'Bearer cfg-token');
    r = await run(['get', 'c1'], { ...env, MVM_TOKEN: 'env-token' });
    assert.equal(mock.requests.at(-1)?.auth, 'Bearer env-token');
    r = await run(['get', 'c1', '--token', 'flag-token'], { ...env, MVM_TOKEN: 'env-token' });
    assert.equal(mock.requests.at(-1)?.auth, 'Bearer flag-token');
    // --config points elsewhere; a missing explicit config file is an error
    r = await run(['get', 'c1', '--config', join(tmp, 'missing.yaml')], env);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: cannot read config file .*missing\.yaml: ENOENT/);
  });
});

describe('console, metrics, update', () => {
  test('console --follow streams chunks as they arrive', async () => {
    mock.add('con');
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    mock.console = (res, q) => {
      res.write(`tail=${q.get('tail')} follow=${q.get('follow')}\nboot line 1\n`);
      void released.then(() => res.end('login: '));
    };
    const p = launch(['console', 'con', '--follow', '--tail', '4096']);
    await until(() => p.out().includes('boot line 1\n'));
    assert.ok(!p.out().includes('login'), 'first chunk printed before the stream ended');
    release();
    const r = await p.done;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'tail=4096 follow=true\nboot line 1\nlogin: ');
  });

  test('console --follow stops cleanly on Ctrl-C', async () => {
    mock.add('con2');
    mock.console = (res) => res.write('still booting\n');
    const p = launch(['console', 'con2', '--follow']);
    await until(() => p.out().includes('still booting'));
    p.child.kill('SIGINT');
    const r = await p.done;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
  });

  test('console without --follow prints the buffer', async () => {
    mock.add('con3');
    const r = await run(['console', 'con3']);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, 'hello\n');
    assert.equal(mock.requests.at(-1)?.query.get('follow'), null);
  });

  test('metrics table', async () => {
    mock.add('m1');
    const r = await run(['metrics', 'm1']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^cpu:\s+1\.50s$/m);
    assert.match(r.stdout, /^memory rss:\s+50\.0 MiB$/m);
    assert.match(r.stdout, /^guest memory:\s+128 MiB$/m);
    assert.match(r.stdout, /^uptime:\s+42\.0s$/m);
    assert.match(r.stdout, /^BLOCK\s+READ\s+WRITE/m);
    assert.match(r.stdout, /^vda\s+2\.0 KiB\s+0 B\s+3\s+0$/m);
    assert.match(r.stdout, /^eth0\s+100 B\s+200 B\s+1\s+2$/m);
  });

  test('update merges labels and sends only the changed fields', async () => {
    mock.add('u1', undefined, { labels: { app: 'web', old: 'x' }, kernel: { image: 'k1' } });
    const r = await run(['update', 'u1', '--vcpu', '4', '--label', 'tier=db', '--label', 'old-', '--kernel-cmdline', 'quiet', '-o', 'json']);
    assert.equal(r.code, 0, r.stderr);
    const put = mock.requests.find((q) => q.method === 'PUT');
    assert.deepEqual(put?.body, { vcpu: 4, labels: { app: 'web', tier: 'db' }, kernel: { image: 'k1', cmdline: 'quiet' } });
    assert.equal((JSON.parse(r.stdout) as MicroVMT).spec.vcpu, 4);
    const none = await run(['update', 'u1']);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /^error: nothing to update/);
  });
});
