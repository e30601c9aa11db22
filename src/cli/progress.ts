/** Progress indicator on stderr: a spinner on a TTY, one line per phase change otherwise. */
import { formatMs } from '../../sdk/typescript/src/core.js';

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

export interface ProgressOptions {
  /** What is awaited, e.g. `web to be Running and ready`. */
  label: string;
  stream?: NodeJS.WriteStream;
  enabled?: boolean;
  /** Force TTY / non-TTY behaviour (default: stream.isTTY). */
  tty?: boolean;
}

export class Progress {
  readonly #label: string;
  readonly #stream: NodeJS.WriteStream;
  readonly #enabled: boolean;
  readonly #tty: boolean;
  readonly #started = Date.now();
  #phase: string | undefined;
  #frame = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(opts: ProgressOptions) {
    this.#label = opts.label;
    this.#stream = opts.stream ?? process.stderr;
    this.#enabled = opts.enabled ?? true;
    this.#tty = opts.tty ?? Boolean(this.#stream.isTTY);
    if (!this.#enabled) return;
    if (this.#tty) {
      this.#render();
      this.#timer = setInterval(() => this.#render(), 100);
      this.#timer.unref();
    } else {
      this.#stream.write(`waiting for ${this.#label}\n`);
    }
  }

  /** Report the current phase (and readiness); prints a line when it changed (non-TTY). */
  update(phase: string | undefined, ready?: boolean): void {
    const p = phase === undefined ? undefined : ready ? `${phase}, ready` : phase;
    if (p === this.#phase) return;
    this.#phase = p;
    if (!this.#enabled) return;
    if (this.#tty) this.#render();
    else if (p !== undefined) this.#stream.write(`  phase ${p} (${formatMs(this.elapsedMs)})\n`);
  }

  get elapsedMs(): number {
    return Date.now() - this.#started;
  }

  /** Stop the spinner and clear its line. */
  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#enabled && this.#tty) this.#stream.write('\r\x1b[2K');
  }

  #render(): void {
    const f = FRAMES[this.#frame++ % FRAMES.length];
    const secs = (this.elapsedMs / 1000).toFixed(1);
    const phase = this.#phase ? ` — phase ${this.#phase}` : '';
    this.#stream.write(`\r\x1b[2K${f} waiting for ${this.#label} (${secs}s${phase})`);
  }
}
