/**
 * `mvm exec`, `mvm cp` and `mvm port-forward`: inside a running microVM through its guest agent
 * (issue 13). The transport (WebSocket exec, streamed file transfers, the TCP tunnel) is the
 * SDK's (sdk/typescript/src/index.ts); these commands wire it to the terminal, the local disk and local ports.
 */
import { spawn } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync, mkdirSync, readdirSync, statSync, chmodSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { basename, join } from 'node:path';
import { posix } from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { MvmApiError, type ExecStreamRequest, type Mvm } from '../../../sdk/typescript/src/index.js';
import { bytes } from '../format.js';
import { collect, parseDuration, UsageError } from '../parse.js';
import type { CommandContext, CommandGroupDeps } from './common.js';

const examples = (lines: string[]): string => '\nExamples:\n' + lines.map((l) => `  $ ${l}`).join('\n') + '\n';

/** Service problems of guest calls → a message that names the code (and what to do about it). */
export function guestError(e: unknown, vm: string): never {
  if (e instanceof MvmApiError) {
    const agentCode = typeof e.problem.agentCode === 'string' ? e.problem.agentCode : undefined;
    if (agentCode) throw new UsageError(`${e.detail} (${agentCode})`);
    if (e.code === 'AGENT_UNAVAILABLE') throw new UsageError(`${e.detail} (AGENT_UNAVAILABLE: the guest agent of microVM "${vm}" is not connected; is it still booting? try 'mvm wait ${vm} --ready')`);
    if (e.code === 'ILLEGAL_TRANSITION') throw new UsageError(`${e.detail} (ILLEGAL_TRANSITION: microVM "${vm}" must be Running; start it with 'mvm start ${vm} --wait')`);
    if (e.status !== 401 && e.status !== 403 && e.status !== 404 && e.violations.length === 0) throw new UsageError(`${e.detail} (${e.code})`);
  }
  throw e;
}

/** KEY=VALUE flags → env object. */
export function parseEnv(list: string[] | undefined): Record<string, string> | undefined {
  if (!list?.length) return undefined;
  const env: Record<string, string> = {};
  for (const kv of list) {
    const i = kv.indexOf('=');
    if (i <= 0 || !/^[A-Za-z_][A-Za-z0-9_]*$/.test(kv.slice(0, i))) throw new UsageError(`invalid --env ${JSON.stringify(kv)} (expected KEY=VALUE)`);
    env[kv.slice(0, i)] = kv.slice(i + 1);
  }
  return env;
}

/** A duration for the guest (whole s, m or h, as the API wants it). */
function guestDuration(s: string, what: string): string {
  const ms = parseDuration(s, what);
  return ms % 3_600_000 === 0 ? `${ms / 3_600_000}h` : ms % 60_000 === 0 ? `${ms / 60_000}m` : `${Math.ceil(ms / 1000)}s`;
}

// ---- exec ------------------------------------------------------------------------------------------

interface ExecOpts {
  stdin?: boolean;
  tty?: boolean;
  env?: string[];
  cwd?: string;
  user?: string;
  timeout?: string;
}

async function runExec(ctx: CommandContext, vm: string, argv: string[], opts: ExecOpts): Promise<number> {
  if (argv.length === 0) throw new UsageError('a command is required: mvm exec VM -- COMMAND [ARGS...]');
  const stdin = process.stdin;
  const stdout = process.stdout;
  const tty = Boolean(opts.tty);
  const req: ExecStreamRequest = { cmd: argv, tty, stdin: Boolean(opts.stdin) };
  const env = parseEnv(opts.env);
  if (env) req.env = env;
  if (opts.cwd) req.cwd = opts.cwd;
  if (opts.user !== undefined) req.user = /^\d+$/.test(opts.user) ? Number(opts.user) : opts.user;
  if (opts.timeout !== undefined) req.timeout = guestDuration(opts.timeout, '--timeout');
  if (tty && stdout.isTTY) {
    req.cols = stdout.columns;
    req.rows = stdout.rows;
  }
  let session;
  try {
    session = await ctx.client.execStream(vm, req);
  } catch (e) {
    guestError(e, vm);
  }
  const s = session;
  const outDone = new Promise<void>((r) => s.stdout.once('end', r));
  const errDone = new Promise<void>((r) => s.stderr.once('end', r));
  s.stdout.pipe(ctx.io.stdout, { end: false });
  s.stderr.pipe(ctx.io.stderr, { end: false });

  const raw = tty && Boolean(opts.stdin) && stdin.isTTY;
  const cleanups: Array<() => void> = [];
  if (opts.stdin) {
    if (raw) {
      stdin.setRawMode(true);
      cleanups.push(() => stdin.setRawMode(false));
    }
    stdin.pipe(s.stdin);
    cleanups.push(() => {
      stdin.unpipe(s.stdin);
      stdin.pause();
      if (!stdin.isTTY) stdin.destroy();
    });
  }
  if (tty && stdout.isTTY) {
    const onResize = (): void => s.resize(stdout.columns, stdout.rows);
    stdout.on('resize', onResize);
    cleanups.push(() => stdout.off('resize', onResize));
  }
  // Without a terminal in raw mode Ctrl-C reaches us: pass it on; a second one hangs up.
  let interrupts = 0;
  const onSignal = (sig: NodeJS.Signals): void => {
    interrupts++;
    if (interrupts === 1) s.signal(sig === 'SIGTERM' ? 'TERM' : sig === 'SIGHUP' ? 'HUP' : 'INT');
    else s.close();
  };
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, onSignal);
    cleanups.push(() => process.off(sig, onSignal));
  }
  try {
    const exit = await s.result;
    await Promise.all([outDone, errDone]);
    if (exit.timedOut) ctx.io.stderr.write(`${raw ? '\r\n' : ''}mvm: the command timed out${req.timeout ? ` after ${req.timeout}` : ''} and was killed\n`);
    return exit.exitCode;
  } catch (e) {
    return guestError(e, vm);
  } finally {
    for (const c of cleanups.reverse()) c();
  }
}

// ---- cp --------------------------------------------------------------------------------------------

export interface CopySpec {
  vm?: string;
  path: string;
}

/** `VM:/path` (a guest path) or a local path. A local path with a colon can be written ./a:b. */
export function parseCopySpec(s: string): CopySpec {
  const m = /^([A-Za-z0-9][A-Za-z0-9._-]*):(.*)$/.exec(s);
  if (!m) return { path: s };
  const path = m[2] || '/';
  if (!path.startsWith('/')) throw new UsageError(`the guest path of ${JSON.stringify(s)} must be absolute (VM:/path)`);
  return { vm: m[1], path };
}

/** Counts bytes through a stream, drawing a progress line on a terminal. */
class TransferMeter extends Transform {
  n = 0;
  readonly #timer: NodeJS.Timeout | undefined;
  readonly #stream: NodeJS.WriteStream | undefined;
  readonly #started = Date.now();

  constructor(
    readonly label: string,
    readonly total: number | undefined,
    stream: NodeJS.WriteStream | undefined,
  ) {
    super();
    this.#stream = stream?.isTTY ? stream : undefined;
    if (this.#stream) {
      this.#timer = setInterval(() => this.#draw(), 200);
      this.#timer.unref();
    }
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: (e?: Error | null, d?: Buffer) => void): void {
    this.n += chunk.length;
    cb(null, chunk);
  }

  override _flush(cb: () => void): void {
    this.stop();
    cb();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    if (this.#stream && Date.now() - this.#started > 500) this.#stream.write('\r\x1b[2K');
  }

  #draw(): void {
    const secs = (Date.now() - this.#started) / 1000;
    if (secs < 0.5 || !this.#stream) return;
    const rate = this.n / Math.max(secs, 0.001);
    const pct = this.total ? ` ${Math.floor((this.n / this.total) * 100)}%` : '';
    this.#stream.write(`\r\x1b[2K${this.label}: ${bytes(this.n)}${this.total ? ` / ${bytes(this.total)}` : ''}${pct} (${bytes(Math.round(rate))}/s)`);
  }
}

/** Run local `tar` with a stream on one side; resolves when it exited 0. */
function tarProcess(args: string[]): { proc: ReturnType<typeof spawn>; done: Promise<void> } {
  const proc = spawn('tar', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let err = '';
  proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const done = new Promise<void>((resolve, reject) => {
    proc.on('error', (e) => reject(new UsageError(`cannot run tar: ${e.message}`)));
    proc.on('close', (code) => (code === 0 ? resolve() : reject(new UsageError(`tar ${args.join(' ')} failed (exit ${code}): ${err.trim().slice(0, 500)}`))));
  });
  return { proc, done };
}

async function guestType(client: Mvm, vm: string, path: string): Promise<string | undefined> {
  try {
    return (await client.files.stat(vm, path)).type;
  } catch (e) {
    if (e instanceof MvmApiError && e.status === 404 && e.problem.agentCode) return undefined;
    throw e;
  }
}

async function copyIn(ctx: CommandContext, local: string, vm: string, remote: string, stderr: NodeJS.WriteStream | undefined): Promise<string> {
  let st;
  try {
    st = statSync(local);
  } catch (e) {
    throw new UsageError(`cannot read ${local}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  const remoteType = await guestType(ctx.client, vm, remote);
  const name = basename(local.replace(/\/+$/, '')) || 'root';
  const into = remoteType === 'dir' || (remoteType === undefined && remote.endsWith('/') && !st.isDirectory());
  const dest = into ? posix.join(remote, name) : remote;
  if (st.isDirectory()) {
    if (remoteType !== undefined && remoteType !== 'dir') throw new UsageError(`cannot copy directory ${local} onto ${vm}:${remote}: it is a ${remoteType} in the guest`);
    if (process.env.MVM_CP_TAR !== '0') {
      const tar = tarProcess(['-C', local, '-cf', '-', '.']);
      const meter = new TransferMeter(`${local} -> ${vm}:${dest}`, undefined, stderr);
      const upload = ctx.client.files.writeTar(vm, dest, tar.proc.stdout!.pipe(meter));
      const [r] = await Promise.all([
        upload.catch((e: unknown) => {
          tar.proc.kill();
          throw e;
        }),
        tar.done,
      ]);
      meter.stop();
      return `${local} -> ${vm}:${dest} (${r.entries} entries, ${bytes(meter.n)})`;
    }
    return copyTreeIn(ctx, local, vm, dest, stderr);
  }
  if (!st.isFile()) throw new UsageError(`${local} is neither a file nor a directory`);
  const meter = new TransferMeter(`${local} -> ${vm}:${dest}`, st.size, stderr);
  const r = await ctx.client.files.write(vm, dest, createReadStream(local).pipe(meter), { mode: st.mode & 0o7777 });
  meter.stop();
  return `${local} -> ${vm}:${dest} (${bytes(r.size ?? meter.n)})`;
}

/**
 * A local directory into the guest entry by entry: directories made, files streamed one by one
 * with their modes — for guests whose agent predates the tar.write fix (MVM_CP_TAR=0; the
 * default is one tar stream). Symlinks and special files are skipped with a warning.
 */
async function copyTreeIn(ctx: CommandContext, local: string, vm: string, dest: string, stderr: NodeJS.WriteStream | undefined): Promise<string> {
  let files = 0;
  let total = 0;
  const walk = async (dir: string, remote: string): Promise<void> => {
    await ctx.client.files.mkdir(vm, remote, { parents: true, mode: statSync(dir).mode & 0o7777 });
    for (const e of readdirSync(dir, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = join(dir, e.name);
      const r = posix.join(remote, e.name);
      if (e.isDirectory()) await walk(p, r);
      else if (e.isFile()) {
        const st = statSync(p);
        const meter = new TransferMeter(`${p} -> ${vm}:${r}`, st.size, st.size > 1024 * 1024 ? stderr : undefined);
        await ctx.client.files.write(vm, r, createReadStream(p).pipe(meter), { mode: st.mode & 0o7777 });
        meter.stop();
        files++;
        total += meter.n;
      } else ctx.io.stderr.write(`mvm: skipped ${p}: ${e.isSymbolicLink() ? 'a symlink' : 'not a regular file'}\n`);
    }
  };
  await walk(local, dest);
  return `${local} -> ${vm}:${dest} (${files} files, ${bytes(total)})`;
}

async function copyOut(ctx: CommandContext, vm: string, remote: string, local: string, stderr: NodeJS.WriteStream | undefined): Promise<string> {
  const type = (await ctx.client.files.stat(vm, remote)).type;
  const name = posix.basename(remote.replace(/\/+$/, '')) || 'root';
  const localIsDir = existsSync(local) && statSync(local).isDirectory();
  if (type === 'dir') {
    const dest = localIsDir ? join(local, name) : local;
    if (existsSync(dest) && !statSync(dest).isDirectory()) throw new UsageError(`cannot copy directory ${vm}:${remote} onto ${dest}: it is not a directory`);
    mkdirSync(dest, { recursive: true });
    const stream = await ctx.client.files.readTar(vm, remote);
    const tar = tarProcess(['-C', dest, '--no-same-owner', '-xf', '-']);
    const meter = new TransferMeter(`${vm}:${remote} -> ${dest}`, undefined, stderr);
    await Promise.all([pipeline(stream, meter, tar.proc.stdin!), tar.done]);
    return `${vm}:${remote} -> ${dest} (${bytes(meter.n)} of tar)`;
  }
  const dest = localIsDir || local.endsWith('/') ? join(local, name) : local;
  const f = await ctx.client.files.read(vm, remote);
  const meter = new TransferMeter(`${vm}:${remote} -> ${dest}`, f.size, stderr);
  await pipeline(f.stream, meter, createWriteStream(dest, f.mode !== undefined ? { mode: f.mode & 0o777 } : {}));
  if (f.mode !== undefined) chmodSync(dest, f.mode & 0o7777);
  if (f.size !== undefined && meter.n !== f.size) throw new UsageError(`short transfer of ${vm}:${remote}: got ${meter.n} of ${f.size} bytes`);
  return `${vm}:${remote} -> ${dest} (${bytes(meter.n)})`;
}

// ---- port-forward ----------------------------------------------------------------------------------

export interface PortPair {
  local: number;
  remote: number;
}

/** `8080:80`, `80` (same port), `:80` (any free local port). */
export function parsePortPair(s: string): PortPair {
  const m = /^(?:(\d*):)?(\d+)$/.exec(s.trim());
  const port = (x: string): number => {
    const n = Number(x);
    if (!Number.isInteger(n) || n < 1 || n > 65535) throw new UsageError(`invalid port ${JSON.stringify(x)} in ${JSON.stringify(s)} (1-65535)`);
    return n;
  };
  if (!m) throw new UsageError(`invalid port mapping ${JSON.stringify(s)} (expected LOCAL:REMOTE, e.g. 8080:80)`);
  const remote = port(m[2]!);
  const local = m[1] === undefined ? remote : m[1] === '' ? 0 : port(m[1]);
  return { local, remote };
}

function listen(server: Server, port: number, address: string): Promise<number> {
  return new Promise((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(new UsageError(`cannot listen on ${address}:${port}: ${e.code ?? e.message}`)));
    server.listen(port, address, () => {
      const a = server.address();
      resolve(typeof a === 'object' && a ? a.port : port);
    });
  });
}

async function portForward(ctx: CommandContext, vm: string, pairs: PortPair[], addresses: string[]): Promise<void> {
  const current = await ctx.client.microvms.get(vm);
  if (current.status?.phase !== 'Running') throw new UsageError(`microVM "${vm}" is ${current.status?.phase ?? 'in an unknown phase'}: port-forward needs it Running`);
  const id = current.id;
  const servers: Server[] = [];
  const sockets = new Set<Socket>();
  let stopped = false;
  const stop = (): void => {
    stopped = true;
    for (const s of servers) s.close();
    for (const s of sockets) s.destroy();
  };
  try {
    for (const pair of pairs) {
      for (const address of addresses) {
        const server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (sock) => {
          sockets.add(sock);
          sock.on('close', () => sockets.delete(sock));
          sock.on('error', () => undefined);
          ctx.client.connectPort(id, pair.remote).then(
            (tunnel) => {
              if (sock.destroyed) return void tunnel.destroy();
              tunnel.on('error', (e: unknown) => {
                ctx.io.stderr.write(`mvm: connection to port ${pair.remote}: ${e instanceof MvmApiError ? e.detail : e instanceof Error ? e.message : String(e)}\n`);
                sock.destroy();
              });
              sock.on('close', () => tunnel.destroy());
              sock.pipe(tunnel);
              tunnel.pipe(sock);
              sock.resume();
            },
            (e: unknown) => {
              const why = e instanceof MvmApiError ? `${e.detail} (${typeof e.problem.agentCode === 'string' ? e.problem.agentCode : e.code})` : e instanceof Error ? e.message : String(e);
              ctx.io.stderr.write(`mvm: cannot forward a connection to port ${pair.remote} of "${vm}": ${why}\n`);
              sock.destroy();
            },
          );
        });
        servers.push(server);
        const port = await listen(server, pair.local, address);
        server.on('error', (e) => ctx.io.stderr.write(`mvm: listener ${address}:${port}: ${e.message}\n`));
        const shown = address.includes(':') ? `[${address}]` : address;
        ctx.io.stdout.write(`Forwarding from ${shown}:${port} -> ${pair.remote}\n`);
      }
    }
  } catch (e) {
    stop();
    throw e;
  }
  await new Promise<void>((resolve) => {
    const onSignal = (): void => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
      resolve();
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  if (!stopped) stop();
}

// ---- registration ----------------------------------------------------------------------------------

export function registerGuestCommands(deps: CommandGroupDeps): void {
  const { about, contextOf } = deps;

  deps
    .addCommand('exec <vm> [command...]', 'run a command inside a running microVM; its output streams live and mvm exits with its exit code')
    .option('-i, --stdin', 'pass stdin to the command')
    .option('-t, --tty', 'allocate a pseudo-terminal (with -i: an interactive terminal)')
    .option('-e, --env <KEY=VALUE>', 'environment variable (repeatable)', collect)
    .option('-w, --cwd <dir>', 'working directory in the guest (default the user\'s home)')
    .option('-u, --user <user>', 'run as this guest user name or uid (default root)')
    .option('--timeout <duration>', 'kill the command after this long, e.g. 30s, 5m (default: the service\'s, 10m)')
    .addHelpText(
      'after',
      '\nOptions of the command itself go after "--" so that mvm does not read them.\n' +
        examples(["mvm exec web -- uname -a", "mvm exec web --env GREETING=hi -- sh -c 'echo $GREETING; exit 3'; echo $?", 'mvm exec -it web sh', 'tar -c . | mvm exec -i web -- tar -x -C /srv']),
    )
    .action(async (vm: string, command: string[], opts: ExecOpts, cmd: Command) => {
      about('microVM', vm);
      const ctx = contextOf(cmd);
      const code = await runExec(ctx, vm, command, opts);
      deps.setExitCode?.(code);
    });

  deps
    .addCommand('cp <source> <destination>', 'copy files and directories between the local machine and a microVM (VM:/path on one side)')
    .addHelpText(
      'after',
      '\nA directory is copied recursively (into the guest file by file, out of it as a tar stream: needs `tar` locally); a file is streamed.\n' +
        'If the destination is an existing directory, the source is copied into it.\n' +
        examples(['mvm cp ./site web:/srv/site', 'mvm cp web:/var/log/app.log .', 'mvm cp web:/etc ./guest-etc']),
    )
    .action(async (source: string, destination: string, _opts: unknown, cmd: Command) => {
      const from = parseCopySpec(source);
      const to = parseCopySpec(destination);
      if ((from.vm === undefined) === (to.vm === undefined)) throw new UsageError('exactly one side must be in a microVM: mvm cp LOCAL VM:/path, or mvm cp VM:/path LOCAL');
      const vm = (from.vm ?? to.vm)!;
      about('microVM', vm);
      const ctx = contextOf(cmd);
      const stderr = ctx.quiet ? undefined : (ctx.io.stderr as NodeJS.WriteStream);
      let summary: string;
      try {
        summary = from.vm ? await copyOut(ctx, vm, from.path, to.path, stderr) : await copyIn(ctx, from.path, vm, to.path, stderr);
      } catch (e) {
        guestError(e, vm);
      }
      if (!ctx.quiet && stderr?.isTTY) stderr.write(`copied ${summary}\n`);
    });

  deps
    .addCommand('port-forward <vm> <ports...>', 'forward local TCP ports to ports of a microVM (LOCAL:REMOTE) until Ctrl-C')
    .option('--address <addresses>', 'local addresses to listen on, comma-separated', '127.0.0.1')
    .addHelpText('after', '\nLOCAL:REMOTE, REMOTE (same local port) or :REMOTE (a free local port).\n' + examples(['mvm port-forward web 8080:80', 'mvm port-forward db 5432 :6379 --address 127.0.0.1,::1']))
    .action(async (vm: string, ports: string[], opts: { address: string }, cmd: Command) => {
      const pairs = ports.map(parsePortPair);
      const addresses = opts.address.split(',').map((a) => a.trim()).filter(Boolean);
      if (addresses.length === 0) throw new UsageError('--address needs at least one address');
      about('microVM', vm);
      const ctx = contextOf(cmd);
      try {
        await portForward(ctx, vm, pairs, addresses);
      } catch (e) {
        guestError(e, vm);
      }
    });
}


