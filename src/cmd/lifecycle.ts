/**
 * What the long-running binaries of this folder share (this module is not a binary): loading the
 * configuration, running `main`, and shutting down on a signal.
 */
import type { Logger } from 'pino';
import { loadConfig, type Config } from '../config.js';
import { MvmError } from '../core/errors.js';
import type { Role } from '../instance.js';

/** The configuration from the environment (defaults of `role`, src/instance.ts); a bad one ends the process with status 2. */
export function configOrExit(binary: string, role?: Role): Config {
  try {
    return loadConfig(process.env, role ? { role } : {});
  } catch (e) {
    process.stderr.write(`${binary}: ${(e as Error).message}\n`);
    process.exit(2);
  }
}

/** Run the binary's `main`; an error ends the process with status 1 (a typed one without its stack: it says what to do). */
export function runMain(binary: string, main: () => Promise<void>): void {
  main().catch((e: Error) => {
    process.stderr.write(`${binary}: ${e instanceof MvmError ? `${e.code}: ${e.message}` : (e.stack ?? e.message)}\n`);
    process.exit(1);
  });
}

/** Something to stop at shutdown. */
export type Closer = () => Promise<void>;

export interface ShutdownOptions {
  binary: string;
  log: Pick<Logger, 'info'>;
  /** Stopped in reverse order (the last started stops first); each one runs even when an earlier one failed. */
  closers: Closer[];
  /** Extra fields of the "shutting down" log line, read when the signal comes. */
  fields?: () => Record<string, unknown>;
}

const SIGNALS = { SIGINT: 2, SIGTERM: 15 } as const;

/**
 * On SIGINT or SIGTERM: log, run the closers, exit 0 (1 when a closer failed). A second signal
 * while closing exits at once with 128 + its number.
 */
export function shutdownOnSignals(o: ShutdownOptions): void {
  let stopping = false;
  const shutdown = async (signal: keyof typeof SIGNALS): Promise<void> => {
    if (stopping) {
      process.stderr.write(`${o.binary}: ${signal} again, exiting without finishing the shutdown\n`);
      process.exit(128 + SIGNALS[signal]);
    }
    stopping = true;
    o.log.info({ signal, ...o.fields?.() }, 'shutting down');
    let failed = false;
    for (const close of [...o.closers].reverse()) {
      try {
        await close();
      } catch (e) {
        failed = true;
        process.stderr.write(`${o.binary}: shutdown failed: ${(e as Error).message}\n`);
      }
    }
    process.exit(failed ? 1 : 0);
  };
  for (const signal of Object.keys(SIGNALS) as Array<keyof typeof SIGNALS>) process.on(signal, () => void shutdown(signal));
}
