/**
 * Inside the guest (issue 13): exec, background processes, files and TCP to a running microVM's
 * guest agent, for REST, gRPC, the CLI, the dashboard and the SDKs. The caller's tenant sees only
 * its own VMs (another tenant's is 404); the VM must be Running (409 with its phase otherwise);
 * a guest without the agent answers 409 AGENT_UNAVAILABLE with a hint.
 */
import { ErrorCodes, MvmError, validationError, unprocessable } from './errors.js';
import { parseDurationMs, type MicroVM } from './microvm.js';
import type { NodeAgent } from './ports/agent.js';
import type { GuestBufferedResult, GuestExecRequest, GuestSession } from './ports/guest.js';
import type { MicroVMService, Principal } from './service.js';

export const DEFAULT_MAX_OUTPUT_BYTES = 1024 * 1024;
export const MAX_OUTPUT_BYTES = 16 * 1024 * 1024;
export const DEFAULT_EXEC_TIMEOUT_MS = 10 * 60_000;
export const MAX_EXEC_TIMEOUT_MS = 24 * 3_600_000;

/** A buffered exec as REST and gRPC take it. */
export interface ExecInput {
  cmd: string[];
  env?: Record<string, string>;
  cwd?: string;
  user?: string | number;
  /** A duration like 30s or 5m (default 10m). */
  timeout?: string;
  stdin?: string;
  stdinEncoding?: 'utf8' | 'base64';
  maxOutputBytes?: number;
}

/** Turn an exec input into the agent's request (validated: the field names the caller used). */
export function execRequest(input: Omit<ExecInput, 'stdin' | 'stdinEncoding' | 'maxOutputBytes'> & { tty?: boolean; cols?: number; rows?: number; stdin?: boolean }): GuestExecRequest {
  if (!Array.isArray(input.cmd) || input.cmd.length === 0 || input.cmd.some((a) => typeof a !== 'string')) throw validationError('cmd', 'must be a non-empty array of strings (argv)');
  // Valid by the schema (OpenAPI 3.0 cannot constrain one item of an array): 422.
  if (input.cmd[0] === '') throw unprocessable('cmd[0]', 'the program name is empty');
  const timeoutMs = input.timeout !== undefined ? parseDurationMs(input.timeout, 'timeout') : DEFAULT_EXEC_TIMEOUT_MS;
  if (timeoutMs > MAX_EXEC_TIMEOUT_MS) throw validationError('timeout', 'must be at most 24h');
  if (input.cwd !== undefined && !input.cwd.startsWith('/')) throw validationError('cwd', 'must be an absolute path');
  return {
    cmd: input.cmd,
    ...(input.env ? { env: input.env } : {}),
    ...(input.cwd ? { cwd: input.cwd } : {}),
    ...(input.user !== undefined && input.user !== '' ? { user: input.user } : {}),
    ...(input.tty ? { tty: true } : {}),
    ...(input.cols ? { cols: input.cols } : {}),
    ...(input.rows ? { rows: input.rows } : {}),
    ...(input.stdin ? { stdin: true } : {}),
    timeoutMs,
  };
}

export class GuestService {
  constructor(
    private readonly vms: MicroVMService,
    private readonly agent: NodeAgent,
  ) {}

  /** The VM (the caller's) and its connected guest agent. */
  async session(p: Principal, idOrName: string): Promise<{ vm: MicroVM; guest: GuestSession }> {
    if (!this.agent.guest) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'exec, files and port forwarding are not available in this deployment');
    // A suspended VM is resumed for the call (ADR 0035); every call is activity for lifecycle.idleTimeout.
    const vm = await this.vms.ensureAwake(p, await this.vms.get(p, idOrName));
    if (vm.status.phase !== 'Running') {
      throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${vm.name} is ${vm.status.phase}: exec, files and port forwarding need a Running microVM${vm.status.phase === 'Paused' ? ' (resume it first)' : vm.status.phase === 'Stopped' ? ' (start it first)' : ''}`, {
        details: { id: vm.id, phase: vm.status.phase },
      });
    }
    return { vm, guest: await this.agent.guest(vm) };
  }

  /** Run a command to its end; its output capped (the answer says when it was). */
  async exec(p: Principal, idOrName: string, input: ExecInput): Promise<GuestBufferedResult & { vm: MicroVM }> {
    const req = execRequest({ ...input, stdin: input.stdin !== undefined });
    const max = input.maxOutputBytes ?? DEFAULT_MAX_OUTPUT_BYTES;
    if (!Number.isInteger(max) || max < 0 || max > MAX_OUTPUT_BYTES) throw validationError('maxOutputBytes', `must be an integer from 0 to ${MAX_OUTPUT_BYTES}`);
    const { vm, guest } = await this.session(p, idOrName);
    const stdin = input.stdin === undefined ? undefined : input.stdinEncoding === 'base64' ? Buffer.from(input.stdin, 'base64') : input.stdin;
    const r = await guest.execBuffered(req, { maxOutputBytes: max, ...(stdin !== undefined ? { input: stdin } : {}) });
    return { ...r, vm };
  }
}
