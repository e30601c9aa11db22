/**
 * Running the host tools (ip, tc, nft, sysctl, CNI plugins), optionally inside a
 * named network namespace that plays the host (tests and benchmarks keep the
 * whole bridge world inside one namespace of their own).
 */
import { spawn } from 'node:child_process';
import { ErrorCodes, MvmError } from '../core/errors.js';

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  input?: string;
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  /** Run inside this `ip netns` namespace (via `ip netns exec`). */
  netns?: string;
}

/** Spawn and collect; never throws for a non-zero exit (see `runOk`). */
export function run(cmd: string, args: string[], o: RunOptions = {}): Promise<RunResult> {
  const [bin, argv] = o.netns ? ['ip', ['netns', 'exec', o.netns, cmd, ...args]] : [cmd, args];
  return new Promise((resolve, reject) => {
    const child = spawn(bin, argv, { env: o.env ?? process.env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    let timer: NodeJS.Timeout | undefined;
    if (o.timeoutMs) timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs);
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      reject(new MvmError(ErrorCodes.UNAVAILABLE, `cannot run ${cmd}: ${e.message}`, { cause: e, details: { cmd } }));
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(o.input ?? '');
  });
}

/** Run and throw an MvmError (INTERNAL unless told) carrying stderr on a non-zero exit. */
export async function runOk(cmd: string, args: string[], o: RunOptions & { code?: MvmError['code']; what?: string } = {}): Promise<string> {
  const r = await run(cmd, args, o);
  if (r.code !== 0) {
    const what = o.what ?? `${cmd} ${args.join(' ')}`;
    throw new MvmError(o.code ?? ErrorCodes.INTERNAL, `${what} failed: ${(r.stderr || r.stdout).trim() || `exit ${r.code ?? r.signal}`}`, {
      details: { cmd, args, exitCode: r.code, stderr: r.stderr.trim() },
    });
  }
  return r.stdout;
}
