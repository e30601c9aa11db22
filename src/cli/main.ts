/** The `mvm` command line: argument parsing, commands, output and error reporting. */
import { readFileSync } from 'node:fs';
import { Command, CommanderError, Option } from 'commander';
import { Mvm, MvmApiError, MvmConnectionError, MvmTimeoutError, formatMs, isReady } from '../../sdk/typescript/src/index.js';
import type { CreateMicroVMRequest as CreateRequest, MicroVM, Phase, UpdateMicroVMRequest as UpdateRequest } from '../../sdk/typescript/src/index.js';
import { ConfigError, resolveConfig, type ResolvedConfig } from './config.js';
import { OUTPUT_FORMATS, renderList, renderMetrics, renderVm, serialize, type OutputFormat } from './format.js';
import { collect, parseDuration, parseIntArg, parseLabelEdits, parseLabels, parsePhase, readDoc, UsageError } from './parse.js';
import { Progress } from './progress.js';
import { registerCommandGroups } from './commands/index.js';
import { parseVolumeFlag } from './commands/volume.js';

export interface CliIO {
  stdout: NodeJS.WriteStream;
  stderr: NodeJS.WriteStream;
  env: Record<string, string | undefined>;
}

interface GlobalOpts {
  server?: string;
  token?: string;
  ca?: string;
  output: string;
  config?: string;
  quiet?: boolean;
}

interface Ctx {
  client: Mvm;
  cfg: ResolvedConfig;
  output: OutputFormat;
  quiet: boolean;
  io: CliIO;
}

/** State shared with the error reporter: which VM the failing command was about. */
interface RunState {
  subject?: string;
  /** What `subject` is, for "… not found" (default microVM). */
  kind?: string;
  cfg?: ResolvedConfig;
  /** The exit code a command asked for (`mvm exec` exits with the guest command's). */
  exitCode?: number;
}

const DEFAULT_TIMEOUT = '120s';

function version(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

function makeCtx(cmd: Command, io: CliIO, state: RunState): Ctx {
  const globals = cmd.optsWithGlobals<GlobalOpts>();
  const output = (globals.output ?? 'table').toLowerCase();
  if (!(OUTPUT_FORMATS as readonly string[]).includes(output)) {
    throw new UsageError(`invalid --output ${JSON.stringify(globals.output)} (one of ${OUTPUT_FORMATS.join(', ')})`);
  }
  const cfg = resolveConfig({ server: globals.server, token: globals.token, config: globals.config, ca: globals.ca }, io.env);
  state.cfg = cfg;
  let ca: Buffer | undefined;
  if (cfg.caFile) {
    try {
      ca = readFileSync(cfg.caFile);
    } catch (e) {
      throw new ConfigError(`cannot read CA file ${cfg.caFile}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    }
  }
  const client = new Mvm({ url: cfg.server, token: cfg.token, userAgent: `mvm/${version()}`, ...(ca ? { ca } : {}) });
  return { client, cfg, output: output as OutputFormat, quiet: Boolean(globals.quiet), io };
}

function printVm(ctx: Ctx, vm: MicroVM): void {
  if (ctx.output !== 'table') ctx.io.stdout.write(serialize(vm, ctx.output));
  else if (ctx.quiet) ctx.io.stdout.write(vm.id + '\n');
  else ctx.io.stdout.write(renderVm(vm));
}

/** One-line acknowledgement of an asynchronous action (start/stop/delete without --wait). */
function printAck(ctx: Ctx, vm: MicroVM, what: string): void {
  if (ctx.output !== 'table') ctx.io.stdout.write(serialize(vm, ctx.output));
  else if (ctx.quiet) ctx.io.stdout.write(vm.id + '\n');
  else ctx.io.stdout.write(`microVM "${vm.name}" (${vm.id}) ${what}; phase ${vm.status?.phase ?? 'unknown'}\n`);
}

function describeTarget(name: string, phase: string, ready: boolean): string {
  return `microVM "${name}" to be ${phase}${ready ? ' and ready' : ''}`;
}

/** Install a SIGINT handler that stops the spinner before exiting 130; returns the uninstaller. */
function onInterrupt(fn: () => void): () => void {
  const handler = (): void => {
    fn();
    process.exit(130);
  };
  process.once('SIGINT', handler);
  return () => process.removeListener('SIGINT', handler);
}

async function waitForPhase(ctx: Ctx, id: string, phase: string, ready: boolean, timeoutMs: number): Promise<MicroVM> {
  const progress = new Progress({ label: describeTarget(id, phase, ready), stream: ctx.io.stderr, enabled: !ctx.quiet });
  const off = onInterrupt(() => progress.stop());
  try {
    return await ctx.client.microvms.waitFor(id, {
      phase: phase as Phase,
      ready,
      timeoutMs,
      pollMs: 2000,
      onProgress: (vm) => progress.update(vm.status?.phase, isReady(vm)),
    });
  } catch (e) {
    if (e instanceof MvmTimeoutError) {
      const last = e.lastSeen?.status?.phase;
      throw new UsageError(
        `timed out after ${formatMs(timeoutMs)} waiting for ${describeTarget(id, phase, ready)}` +
          (last ? ` (current phase: ${last}${e.lastSeen && isReady(e.lastSeen) ? ', ready' : ''})` : ''),
      );
    }
    if (e instanceof MvmApiError && e.code === 'VM_FAILED') throw await failedError(ctx, id, e);
    throw e;
  } finally {
    off();
    progress.stop();
  }
}

async function failedError(ctx: Ctx, id: string, e: MvmApiError): Promise<UsageError> {
  let why = e.detail;
  try {
    const vm = await ctx.client.microvms.get(id);
    const parts = [vm.status?.reason, vm.status?.message].filter((x): x is string => Boolean(x));
    if (parts.length) why = parts.join(': ');
  } catch {
    /* keep the server's detail */
  }
  return new UsageError(`microVM "${id}" failed: ${why}`);
}

async function waitGone(ctx: Ctx, id: string, timeoutMs: number): Promise<void> {
  const progress = new Progress({ label: `microVM "${id}" to be deleted`, stream: ctx.io.stderr, enabled: !ctx.quiet });
  const off = onInterrupt(() => progress.stop());
  try {
    await ctx.client.microvms.waitDeleted(id, { timeoutMs, intervalMs: 250, onProgress: (vm) => progress.update(vm.status?.phase) });
  } catch (e) {
    if (e instanceof MvmTimeoutError) {
      const last = e.lastSeen?.status?.phase;
      throw new UsageError(`timed out after ${formatMs(timeoutMs)} waiting for microVM "${id}" to be deleted${last ? ` (current phase: ${last})` : ''}`);
    }
    throw e;
  } finally {
    off();
    progress.stop();
  }
}

function readSpecFile(path: string): Record<string, unknown> {
  const opts = readDoc(path);
  // Accept a full MicroVM resource too: { name, spec: {...} } → flat create request.
  if (opts.spec && typeof opts.spec === 'object' && !Array.isArray(opts.spec)) {
    const flat: Record<string, unknown> = { ...(opts.spec as Record<string, unknown>) };
    if (opts.name !== undefined) flat.name = opts.name;
    if (opts.start !== undefined) flat.start = opts.start;
    return flat;
  }
  return opts;
}

interface CreateOpts {
  vcpu?: string;
  memory?: string;
  kernel?: string;
  kernelCmdline?: string;
  rootfs?: string;
  rootfsSize?: string;
  readOnly?: boolean;
  label?: string[];
  volume?: string[];
  start: boolean;
  wait?: boolean;
  timeout: string;
  file?: string;
  fromSnapshot?: string;
  template?: string;
  bootTimeout?: string;
  lifetime?: string;
  onTimeout?: string;
  idleTimeout?: string;
  onIdle?: string;
}

export function buildCreateRequest(name: string | undefined, opts: CreateOpts): CreateRequest {
  const body: Record<string, unknown> = opts.file ? readSpecFile(opts.file) : {};
  if (name) body.name = name;
  if (!body.name) throw new UsageError('a name is required: mvm create NAME (or "name" in the -f file)');
  if (opts.vcpu !== undefined) body.vcpu = parseIntArg(opts.vcpu, '--vcpu', 1);
  if (opts.memory !== undefined) body.memory = opts.memory;
  if (opts.kernel !== undefined || opts.kernelCmdline !== undefined) {
    const kernel = { ...((body.kernel as Record<string, unknown> | undefined) ?? {}) };
    if (opts.kernel !== undefined) kernel.image = opts.kernel;
    if (opts.kernelCmdline !== undefined) kernel.cmdline = opts.kernelCmdline;
    body.kernel = kernel;
  }
  if (opts.rootfs !== undefined || opts.rootfsSize !== undefined || opts.readOnly) {
    const rootfs = { ...((body.rootfs as Record<string, unknown> | undefined) ?? {}) };
    if (opts.rootfs !== undefined) rootfs.image = opts.rootfs;
    if (opts.rootfsSize !== undefined) rootfs.size = opts.rootfsSize;
    if (opts.readOnly) rootfs.readOnly = true;
    body.rootfs = rootfs;
  }
  const labels = parseLabels(opts.label);
  if (labels) body.labels = { ...((body.labels as Record<string, string> | undefined) ?? {}), ...labels };
  if (opts.volume?.length) body.volumes = [...((body.volumes as unknown[] | undefined) ?? []), ...opts.volume.map(parseVolumeFlag)];
  if (opts.fromSnapshot !== undefined) body.snapshot = opts.fromSnapshot;
  if (opts.template !== undefined) body.template = opts.template;
  const lifecycle: Record<string, unknown> = {};
  if (opts.bootTimeout !== undefined) lifecycle.bootTimeout = opts.bootTimeout;
  if (opts.lifetime !== undefined) lifecycle.timeout = opts.lifetime;
  if (opts.onTimeout !== undefined) lifecycle.onTimeout = opts.onTimeout;
  if (opts.idleTimeout !== undefined) lifecycle.idleTimeout = opts.idleTimeout;
  if (opts.onIdle !== undefined) lifecycle.onIdle = opts.onIdle;
  if (Object.keys(lifecycle).length) body.lifecycle = { ...((body.lifecycle as Record<string, unknown> | undefined) ?? {}), ...lifecycle };
  if (opts.start === false) body.start = false;
  return body as unknown as CreateRequest;
}

export function buildProgram(io: CliIO, state: RunState): Command {
  const program = new Command('mvm');
  program
    .description('Manage microVMs of the MicroVM service')
    .version(version(), '-V, --version')
    .addOption(new Option('--server <url>', 'service URL (env MVM_SERVER, config file; default http://127.0.0.1:8080)'))
    .addOption(new Option('--token <token>', 'API token (env MVM_TOKEN, config file, or the local admin token)'))
    .addOption(new Option('--ca <file>', 'CA certificate (PEM) to trust for an https:// server (env MVM_CA_CERT, config file `ca`)'))
    .addOption(new Option('-o, --output <format>', 'output format: table, json or yaml').default('table'))
    .addOption(new Option('--config <path>', 'config file (default ${XDG_CONFIG_HOME:-~/.config}/mvm/config.yaml)'))
    .addOption(new Option('-q, --quiet', 'no progress output; print only ids in table mode'))
    .showHelpAfterError('(run with --help for usage)')
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
    });

  const addCommand = (name: string, desc: string): Command =>
    program
      .command(name)
      .description(desc)
      .exitOverride()
      .configureOutput({ writeOut: (s) => io.stdout.write(s), writeErr: (s) => io.stderr.write(s) })
      .showHelpAfterError('(run with --help for usage)');

  addCommand('create [name]', 'create a microVM (and start it unless --no-start)')
    .option('--vcpu <n>', 'number of vCPUs (1-8)')
    .option('--memory <quantity>', 'guest memory, e.g. 128Mi, 1Gi')
    .option('--kernel <image>', 'kernel image reference')
    .option('--kernel-cmdline <str>', 'extra kernel command line')
    .option('--rootfs <image>', 'root filesystem image reference')
    .option('--rootfs-size <quantity>', 'root disk size, e.g. 1Gi')
    .option('--read-only', 'attach the root filesystem read-only')
    .option('--label <k=v>', 'label (repeatable)', collect)
    .option('--volume <name:/path[:ro][:size]>', 'attach a volume of the tenant (created with SIZE when missing; repeatable)', collect)
    .option('--boot-timeout <duration>', 'fail the VM when its guest is not ready this long after its VMM started, e.g. 90s (default: the service\'s)')
    .option('--lifetime <duration>', 'lifecycle.timeout: after this much Running/Paused time --on-timeout happens, e.g. 1h')
    .option('--on-timeout <action>', 'stop (default), suspend or delete')
    .option('--idle-timeout <duration>', 'lifecycle.idleTimeout: after this long without exec, files, port forwarding, console or network traffic --on-idle happens')
    .option('--on-idle <action>', 'suspend (default) or stop')
    .option('--no-start', 'create without starting')
    .option('--wait', 'wait until Running and ready (Stopped with --no-start)')
    .option('--timeout <duration>', 'how long --wait waits', DEFAULT_TIMEOUT)
    .option('-f, --file <path>', 'read the request from a JSON or YAML file ("-" for stdin); flags override it')
    .option('--from-snapshot <snapshot>', 'restore (clone) from this snapshot (id or name); vcpu, memory, kernel and rootfs come from it')
    .option('--template <name[@version]>', 'clone this template (ready in a fraction of a cold boot); vcpu, memory, kernel and rootfs come from it')
    .addHelpText('after', '\nExamples:\n  $ mvm create web --vcpu 2 --memory 512Mi --wait\n  $ mvm create web2 --from-snapshot web-before-upgrade --wait\n  $ mvm create job1 --template python --wait\n')
    .action(async (name: string | undefined, opts: CreateOpts, cmd: Command) => {
      const body = buildCreateRequest(name, opts);
      const timeoutMs = opts.wait ? parseDuration(opts.timeout, '--timeout') : 0;
      const ctx = makeCtx(cmd, io, state);
      state.subject = body.name;
      let vm = await ctx.client.microvms.create(body);
      if (opts.wait) {
        const started = body.start !== false;
        vm = await waitForPhase(ctx, vm.id, started ? 'Running' : 'Stopped', started, timeoutMs);
      }
      printVm(ctx, vm);
    });

  addCommand('list', 'list microVMs')
    .alias('ls')
    .option('--phase <phase>', 'only VMs in this phase')
    .option('--label <k=v>', 'only VMs with this label (repeatable)', collect)
    .option('--limit <n>', 'at most N VMs (one page); default: all')
    .action(async (opts: { phase?: string; label?: string[]; limit?: string }, cmd: Command) => {
      const phase = opts.phase !== undefined ? (parsePhase(opts.phase) as Phase) : undefined;
      const labels = opts.label ?? [];
      parseLabels(labels);
      const limit = opts.limit !== undefined ? parseIntArg(opts.limit, '--limit', 1) : undefined;
      const ctx = makeCtx(cmd, io, state);
      let items: MicroVM[];
      let next: string | undefined;
      if (limit !== undefined) {
        const page = await ctx.client.microvms.list({ limit, phase, label: labels });
        items = (page.items ?? []).slice(0, limit);
        next = page.next_cursor;
      } else {
        items = [];
        for await (const vm of ctx.client.microvms.listAll({ phase, label: labels })) items.push(vm);
      }
      if (ctx.output !== 'table') {
        ctx.io.stdout.write(serialize(next ? { items, next_cursor: next } : { items }, ctx.output));
      } else if (ctx.quiet) {
        for (const vm of items) ctx.io.stdout.write(vm.id + '\n');
      } else if (items.length === 0) {
        ctx.io.stderr.write('No microVMs found.\n');
      } else {
        ctx.io.stdout.write(renderList(items));
        if (next) ctx.io.stderr.write(`(more microVMs exist; raise --limit or omit it to list all)\n`);
      }
    });

  addCommand('get <id>', 'show a microVM (by id or name)').action(async (id: string, _opts: unknown, cmd: Command) => {
    state.subject = id;
    const ctx = makeCtx(cmd, io, state);
    printVm(ctx, await ctx.client.microvms.get(id));
  });

  addCommand('update <id>', 'change the spec of a microVM')
    .option('--vcpu <n>', 'number of vCPUs')
    .option('--memory <quantity>', 'guest memory, e.g. 256Mi')
    .option('--label <k=v>', 'set a label, or remove one with k- (repeatable)', collect)
    .option('--kernel-cmdline <str>', 'extra kernel command line')
    .action(async (id: string, opts: { vcpu?: string; memory?: string; label?: string[]; kernelCmdline?: string }, cmd: Command) => {
      state.subject = id;
      const patch: UpdateRequest = {};
      if (opts.vcpu !== undefined) patch.vcpu = parseIntArg(opts.vcpu, '--vcpu', 1);
      if (opts.memory !== undefined) patch.memory = opts.memory;
      const edits = opts.label ? parseLabelEdits(opts.label) : undefined;
      if (Object.keys(patch).length === 0 && !edits && opts.kernelCmdline === undefined) {
        throw new UsageError('nothing to update: pass --vcpu, --memory, --label or --kernel-cmdline');
      }
      const ctx = makeCtx(cmd, io, state);
      if (edits || opts.kernelCmdline !== undefined) {
        // Labels and kernel are replaced as a whole by PUT: merge with the current values.
        const cur = await ctx.client.microvms.get(id);
        if (edits) {
          const labels = { ...(cur.spec?.labels ?? {}), ...edits.set };
          for (const key of edits.remove) delete labels[key];
          patch.labels = labels;
        }
        if (opts.kernelCmdline !== undefined) patch.kernel = { ...(cur.spec?.kernel ?? {}), cmdline: opts.kernelCmdline };
      }
      printVm(ctx, await ctx.client.microvms.update(id, patch));
    });

  const WAIT_HELP = { start: 'wait until Running and ready', stop: 'wait until Stopped', pause: 'wait until Paused', resume: 'wait until Running and ready', suspend: 'wait until Suspended' } as const;
  const DESC = {
    start: 'start a microVM',
    stop: 'stop a microVM (a suspended one: its memory on disk is discarded)',
    pause: 'pause a running microVM (vCPUs stop, memory stays)',
    resume: 'resume a paused microVM, or a suspended one from disk (same IP, MAC, processes)',
    suspend: 'suspend a microVM to disk: memory and devices are written to the node, no VMM runs',
  } as const;
  for (const [verb, target, ack] of [
    ['start', 'Running', 'start requested'],
    ['stop', 'Stopped', 'stop requested'],
    ['pause', 'Paused', 'pause requested'],
    ['resume', 'Running', 'resume requested'],
    ['suspend', 'Suspended', 'suspend requested'],
  ] as const) {
    addCommand(`${verb} <id>`, DESC[verb])
      .option('--wait', WAIT_HELP[verb])
      .option('--timeout <duration>', 'how long --wait waits', DEFAULT_TIMEOUT)
      .action(async (id: string, opts: { wait?: boolean; timeout: string }, cmd: Command) => {
        state.subject = id;
        const timeoutMs = opts.wait ? parseDuration(opts.timeout, '--timeout') : 0;
        const ctx = makeCtx(cmd, io, state);
        const vm = await ctx.client.microvms[verb](id);
        if (!opts.wait) return printAck(ctx, vm, ack);
        printVm(ctx, await waitForPhase(ctx, vm.id, target, verb === 'start' || verb === 'resume', timeoutMs));
      });
  }

  addCommand('timeout <id> <duration>', 'set the time left of a microVM\'s lifecycle.timeout: it ends <duration> from now (e.g. 10m)').action(async (id: string, duration: string, _opts: unknown, cmd: Command) => {
    state.subject = id;
    const ctx = makeCtx(cmd, io, state);
    printVm(ctx, await ctx.client.microvms.setTimeout(id, duration));
  });

  addCommand('delete <id>', 'delete a microVM')
    .alias('rm')
    .option('--wait', 'wait until the microVM is gone')
    .option('--timeout <duration>', 'how long --wait waits', DEFAULT_TIMEOUT)
    .action(async (id: string, opts: { wait?: boolean; timeout: string }, cmd: Command) => {
      state.subject = id;
      const timeoutMs = opts.wait ? parseDuration(opts.timeout, '--timeout') : 0;
      const ctx = makeCtx(cmd, io, state);
      const vm = await ctx.client.microvms.delete(id);
      if (!opts.wait) return printAck(ctx, vm, 'deletion requested');
      await waitGone(ctx, vm.id, timeoutMs);
      if (ctx.output !== 'table') ctx.io.stdout.write(serialize(vm, ctx.output));
      else if (ctx.quiet) ctx.io.stdout.write(vm.id + '\n');
      else ctx.io.stdout.write(`microVM "${vm.name}" (${vm.id}) deleted\n`);
    });

  addCommand('console <id>', 'print the serial console of a microVM')
    .option('--follow', 'keep streaming new output until Ctrl-C')
    .option('--tail <bytes>', 'only the last BYTES bytes')
    .action(async (id: string, opts: { follow?: boolean; tail?: string }, cmd: Command) => {
      state.subject = id;
      const tail = opts.tail !== undefined ? parseIntArg(opts.tail, '--tail', 0) : undefined;
      const ctx = makeCtx(cmd, io, state);
      await streamConsole(ctx, id, Boolean(opts.follow), tail);
    });

  addCommand('metrics <id>', 'show resource usage of a microVM').action(async (id: string, _opts: unknown, cmd: Command) => {
    state.subject = id;
    const ctx = makeCtx(cmd, io, state);
    const metrics = await ctx.client.microvms.metrics(id);
    ctx.io.stdout.write(ctx.output === 'table' ? renderMetrics(metrics) : serialize(metrics, ctx.output));
  });

  addCommand('wait <id>', 'wait until a microVM reaches a phase')
    .option('--for <phase>', 'phase to wait for', 'Running')
    .option('--ready', 'also wait for the guest to be ready (GuestReady=True)')
    .option('--timeout <duration>', 'how long to wait', DEFAULT_TIMEOUT)
    .action(async (id: string, opts: { for: string; ready?: boolean; timeout: string }, cmd: Command) => {
      state.subject = id;
      const phase = parsePhase(opts.for);
      const timeoutMs = parseDuration(opts.timeout, '--timeout');
      const ctx = makeCtx(cmd, io, state);
      printVm(ctx, await waitForPhase(ctx, id, phase, Boolean(opts.ready), timeoutMs));
    });

  registerCommandGroups({
    addCommand: addCommand,
    contextOf: (command) => makeCtx(command, io, state),
    about: (kind, id) => {
      state.kind = kind;
      state.subject = id;
    },
    setExitCode: (code) => {
      state.exitCode = code;
    },
  });
  return program;
}

async function streamConsole(ctx: Ctx, id: string, follow: boolean, tail: number | undefined): Promise<void> {
  const ac = new AbortController();
  let interrupted = false;
  const onSigint = (): void => {
    interrupted = true;
    ac.abort();
  };
  process.on('SIGINT', onSigint);
  process.on('SIGTERM', onSigint);
  let broken = false;
  const onOutErr = (): void => {
    broken = true;
    ac.abort();
  };
  ctx.io.stdout.on('error', onOutErr);
  try {
    const body = await ctx.client.microvms.console(id, { follow, ...(tail !== undefined ? { tail } : {}), signal: ac.signal });
    const reader = body.getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) break;
        if (value && value.length && !broken) {
          if (!ctx.io.stdout.write(value)) await new Promise<void>((r) => ctx.io.stdout.once('drain', r));
        }
      }
    } finally {
      reader.releaseLock();
    }
  } catch (e) {
    if (!(interrupted || broken) || !isAbort(e)) throw e;
  } finally {
    process.removeListener('SIGINT', onSigint);
    process.removeListener('SIGTERM', onSigint);
    ctx.io.stdout.removeListener('error', onOutErr);
  }
}

function isAbort(e: unknown): boolean {
  return e instanceof Error && (e.name === 'AbortError' || e.name === 'TimeoutError' || /abort/i.test(e.message));
}

/** Error → lines for stderr. Expected errors never show a stack trace. */
export function describeError(e: unknown, state: RunState, debug = false): string {
  const lines: string[] = [];
  if (e instanceof MvmConnectionError) {
    if (e.errno === 'ECONNREFUSED') {
      lines.push(`error: cannot reach the MicroVM service at ${e.url} (is it running? start it with 'make run')`);
    } else if (e.errno === 'TIMEOUT') {
      lines.push(`error: the MicroVM service at ${e.url} did not answer in time (${e.reason})`);
    } else {
      lines.push(`error: cannot reach the MicroVM service at ${e.url}: ${e.reason}`);
    }
  } else if (e instanceof MvmApiError) {
    if (e.status === 401) {
      lines.push(`error: authentication failed: ${e.detail} (pass --token, set MVM_TOKEN, or run on the service's host)`);
      if (state.cfg?.adminTokenError) {
        lines.push(`  note: the admin token file ${state.cfg.adminTokenPath} exists but is not readable (${state.cfg.adminTokenError})`);
      }
    } else if (e.status === 404 && state.subject !== undefined && e.violations.length === 0 && (e.code === 'NOT_FOUND' || !e.problem.code)) {
      // (A 404 that names a field is about something the request refers to, e.g. --from-snapshot: the server's words.)
      lines.push(`error: ${state.kind ?? 'microVM'} "${state.subject}" not found`);
    } else if (e.status === 403) {
      lines.push(`error: permission denied: ${e.detail}`);
    } else {
      lines.push(`error: ${e.detail}`);
    }
    for (const f of e.violations) lines.push(`  - ${f.field || '(request)'}: ${f.message}`);
  } else if (e instanceof UsageError || e instanceof ConfigError) {
    lines.push(`error: ${e.message}`);
  } else if (e instanceof Error) {
    lines.push(`error: ${e.message}`);
    if (debug && e.stack) lines.push(e.stack);
  } else {
    lines.push(`error: ${String(e)}`);
  }
  let out = lines.join('\n') + '\n';
  const tok = state.cfg?.token;
  if (tok && tok.length >= 4) out = out.split(tok).join('***');
  return out;
}

/** Run the CLI; resolves with the exit code (never calls process.exit itself, except on Ctrl-C while waiting). */
export async function main(argv: string[], io: CliIO = { stdout: process.stdout, stderr: process.stderr, env: process.env }): Promise<number> {
  const state: RunState = {};
  const program = buildProgram(io, state);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return state.exitCode ?? 0;
  } catch (e) {
    if (e instanceof CommanderError) return e.exitCode;
    io.stderr.write(describeError(e, state, Boolean(io.env.MVM_DEBUG)));
    return 1;
  }
}
