/**
 * Size-based rotation of the per-VM log files (`<dataDir>/vms/<id>/console.log`,
 * `vmm.log`) while the VMM keeps appending to them, so a guest that prints
 * forever cannot fill the disk.
 *
 * The VMM holds these files open with O_APPEND (QEMU's chardev `logappend=on`,
 * the driver's `vmm.log` opened with flag 'a'), so they are rotated in place
 * ("copytruncate"): shift `.1` → `.2` …, copy the file to `.1`, copy whatever was
 * appended meanwhile, truncate to 0. The VMM's next write lands at offset 0 of
 * the same inode (O_APPEND), readers that follow the file see it shrink and
 * restart at 0 (the console stream and the agent's readiness watcher do).
 * Bytes written between the last copy and the truncate (microseconds) can be
 * lost; that is the price of not restarting the VMM.
 *
 * Bound per file: about (keep + 1) × maxBytes + what the guest writes in one
 * check interval.
 */
import { closeSync, copyFileSync, existsSync, openSync, readdirSync, readSync, renameSync, statSync, truncateSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';

export interface RotationPolicy {
  /** Rotate a file once it is larger than this (default MVM_LOG_MAX_BYTES or 16 MiB). */
  maxBytes: number;
  /** Rotated generations kept: `.1` … `.keep` (default MVM_LOG_KEEP or 2). */
  keep: number;
}

export const LOG_FILES = ['console.log', 'vmm.log'];

export function policyFromEnv(env: NodeJS.ProcessEnv = process.env): RotationPolicy {
  const maxBytes = Number(env.MVM_LOG_MAX_BYTES ?? 16 * 1024 * 1024);
  const keep = Number(env.MVM_LOG_KEEP ?? 2);
  return {
    maxBytes: Number.isFinite(maxBytes) && maxBytes >= 4096 ? Math.floor(maxBytes) : 16 * 1024 * 1024,
    keep: Number.isInteger(keep) && keep >= 1 && keep <= 20 ? keep : 2,
  };
}

/** Shift `path.1`… one generation up, dropping what falls beyond `keep`. */
function shift(path: string, keep: number): void {
  for (let k = keep - 1; k >= 1; k--) {
    if (existsSync(`${path}.${k}`)) renameSync(`${path}.${k}`, `${path}.${k + 1}`);
  }
}

function appendRange(src: string, dst: string, from: number, to: number): void {
  if (to <= from) return;
  const i = openSync(src, 'r');
  const o = openSync(dst, 'a');
  try {
    const buf = Buffer.alloc(Math.min(1024 * 1024, to - from));
    for (let pos = from; pos < to; ) {
      const n = readSync(i, buf, 0, Math.min(buf.length, to - pos), pos);
      if (n <= 0) break;
      writeSync(o, buf, 0, n);
      pos += n;
    }
  } finally {
    closeSync(i);
    closeSync(o);
  }
}

/** Rotate `path` in place if it is larger than maxBytes; returns whether it did. */
export function rotateIfLarger(path: string, p: RotationPolicy): boolean {
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    return false;
  }
  if (size <= p.maxBytes) return false;
  shift(path, p.keep);
  copyFileSync(path, `${path}.1`);
  const copied = statSync(`${path}.1`).size;
  // Whatever the writer appended during the copy, then cut.
  const now = statSync(path).size;
  appendRange(path, `${path}.1`, copied, now);
  truncateSync(path, 0);
  return true;
}

/** Rotate a file nobody writes to (e.g. before a boot): shift and rename, no copy. */
export function rotateClosed(path: string, keep = policyFromEnv().keep): void {
  if (!existsSync(path)) return;
  shift(path, keep);
  renameSync(path, `${path}.1`);
}

export class LogRotator {
  private timer: NodeJS.Timeout | undefined;
  rotations = 0;

  constructor(
    private readonly vmsRoot: string,
    readonly policy: RotationPolicy = policyFromEnv(),
    private readonly o: { intervalMs?: number; log?: Logger; files?: string[] } = {},
  ) {}

  start(): this {
    if (!this.timer) {
      this.timer = setInterval(() => this.checkNow(), this.o.intervalMs ?? 1000);
      this.timer.unref();
    }
    return this;
  }

  stop(): void {
    clearInterval(this.timer);
    this.timer = undefined;
  }

  /** One pass over every VM directory; returns the files it rotated. */
  checkNow(): string[] {
    const rotated: string[] = [];
    let ids: string[];
    try {
      ids = readdirSync(this.vmsRoot);
    } catch {
      return rotated;
    }
    for (const id of ids) {
      for (const f of this.o.files ?? LOG_FILES) {
        const path = join(this.vmsRoot, id, f);
        try {
          if (rotateIfLarger(path, this.policy)) {
            rotated.push(path);
            this.rotations++;
            this.o.log?.info({ vm: id, file: f, maxBytes: this.policy.maxBytes }, 'log rotated (size limit)');
          }
        } catch (e) {
          this.o.log?.warn({ vm: id, file: f, err: (e as Error).message }, 'log rotation failed');
        }
      }
    }
    return rotated;
  }
}

const rotators = new Map<string, LogRotator>();

/** Start (once per directory) rotating the logs of every VM under `vmsRoot`. */
export function startLogRotation(vmsRoot: string, log?: Logger): LogRotator {
  let r = rotators.get(vmsRoot);
  if (!r) {
    r = new LogRotator(vmsRoot, policyFromEnv(), log ? { log } : {}).start();
    rotators.set(vmsRoot, r);
  }
  return r;
}

export function stopLogRotation(vmsRoot: string): void {
  rotators.get(vmsRoot)?.stop();
  rotators.delete(vmsRoot);
}
