/**
 * Named step pipelines (docs/adr/0020-step-pipelines.md): the launch of a VM by the node agent,
 * the start of a Firecracker process, the operator's reconcile of a MicroVM. A pipeline is a plain
 * list of `{ name, when?, run, undo? }`; one runner executes it, times each step, stops early when
 * a step says the pass is over, and on failure undoes what the completed steps did (in reverse)
 * and raises one error naming the step that failed. A variant of a pipeline (a restore, a clone
 * from a template) swaps or drops steps by name instead of branching inside them.
 */
import { ErrorCodes, MvmError, asMvmError } from './errors.js';

/** Returned by a step's `run` to end the pipeline here with success (nothing left to do this pass). */
export const DONE: Readonly<{ pipeline: 'done' }> = Object.freeze({ pipeline: 'done' as const });

export interface Step<C> {
  /** Stable, kebab-case: shown in errors, conditions, events, logs and timings. */
  readonly name: string;
  /** Whether the step applies to this context (Flintlock's ShouldDo); skipped when false. */
  when?(ctx: C): boolean;
  run(ctx: C): Promise<void | typeof DONE> | void | typeof DONE;
  /** Reverts `run` when a later step fails. Best effort: its own failure is reported, not raised. */
  undo?(ctx: C): Promise<void> | void;
}

export interface StepTiming {
  name: string;
  ms: number;
  skipped?: boolean;
}

export interface PipelineRun {
  timings: StepTiming[];
  /** The step that ended the pipeline early with DONE. */
  doneAt?: string;
}

export interface RunOptions {
  /** Called after each step (timings, progress); never throws into the pipeline. */
  onStep?(t: StepTiming): void;
  /** Called when an undo fails (the original error is still the one raised). */
  onUndoError?(step: string, err: MvmError): void;
  /** Errors of this class pass through untouched (e.g. an operator's re-queue signal): no wrapping, but undo still runs. */
  passThrough?: (e: unknown) => boolean;
}

/** The step that failed, on an error raised by `runSteps` (or undefined for any other error). */
export function failedStep(e: unknown): string | undefined {
  const step = e instanceof MvmError ? e.details.step : undefined;
  return typeof step === 'string' ? step : undefined;
}

/**
 * Run `steps` in order on `ctx`. On a failure: undo the completed steps in reverse order, then
 * throw an MvmError with the failing step's code, the message `<pipeline> failed at step "<name>":
 * <message>` and `details.step`; an error that already names an inner step (a nested pipeline)
 * keeps it, joined with a dot (`vmm-start.api-socket`).
 */
export async function runSteps<C>(pipeline: string, steps: ReadonlyArray<Step<C>>, ctx: C, o: RunOptions = {}): Promise<PipelineRun> {
  assertUniqueNames(pipeline, steps);
  const timings: StepTiming[] = [];
  const done: Array<Step<C>> = [];
  const note = (t: StepTiming): void => {
    timings.push(t);
    try {
      o.onStep?.(t);
    } catch {
      /* observers never break the pipeline */
    }
  };
  for (const step of steps) {
    if (step.when && !step.when(ctx)) {
      note({ name: step.name, ms: 0, skipped: true });
      continue;
    }
    const t0 = performance.now();
    let result: void | typeof DONE;
    try {
      result = await step.run(ctx);
    } catch (e) {
      note({ name: step.name, ms: performance.now() - t0 });
      // The failing step may have done part of its work: its own undo runs first.
      await undoAll(pipeline, [...done, step], ctx, o);
      if (o.passThrough?.(e)) throw e;
      throw stepError(pipeline, step.name, e);
    }
    note({ name: step.name, ms: performance.now() - t0 });
    done.push(step);
    if (result === DONE) return { timings, doneAt: step.name };
  }
  return { timings };
}

async function undoAll<C>(pipeline: string, done: Array<Step<C>>, ctx: C, o: RunOptions): Promise<void> {
  for (const s of [...done].reverse()) {
    if (!s.undo) continue;
    try {
      await s.undo(ctx);
    } catch (e) {
      o.onUndoError?.(s.name, asMvmError(e, ErrorCodes.INTERNAL));
    }
  }
}

function stepError(pipeline: string, name: string, e: unknown): MvmError {
  const err = asMvmError(e, ErrorCodes.INTERNAL);
  const inner = failedStep(e);
  const step = inner && inner !== name && !inner.startsWith(`${name}.`) ? `${name}.${inner}` : (inner ?? name);
  const prefix = `${pipeline} failed at step "${name}": `;
  const message = err.message.startsWith(prefix) ? err.message : `${prefix}${err.message}`;
  return new MvmError(err.code, message, { details: { ...err.details, step }, violations: err.violations, cause: e });
}

function assertUniqueNames<C>(pipeline: string, steps: ReadonlyArray<Step<C>>): void {
  const seen = new Set<string>();
  for (const s of steps) {
    if (seen.has(s.name)) throw new MvmError(ErrorCodes.INTERNAL, `pipeline ${pipeline} has two steps named ${s.name}`);
    seen.add(s.name);
  }
}

/** The pipeline with the steps named in `by` replaced (a replacement of `undefined` drops the step). Unknown names throw. */
export function swapSteps<C>(steps: ReadonlyArray<Step<C>>, by: Record<string, Step<C> | undefined>): Array<Step<C>> {
  const names = new Set(steps.map((s) => s.name));
  for (const n of Object.keys(by)) if (!names.has(n)) throw new MvmError(ErrorCodes.INTERNAL, `no step named ${n} to swap (steps: ${[...names].join(', ')})`);
  const out: Array<Step<C>> = [];
  for (const s of steps) {
    if (!(s.name in by)) out.push(s);
    else if (by[s.name]) out.push(by[s.name]!);
  }
  return out;
}

/** The pipeline with `extra` inserted right after the step named `after`. */
export function insertAfter<C>(steps: ReadonlyArray<Step<C>>, after: string, ...extra: Array<Step<C>>): Array<Step<C>> {
  const i = steps.findIndex((s) => s.name === after);
  if (i < 0) throw new MvmError(ErrorCodes.INTERNAL, `no step named ${after} to insert after`);
  return [...steps.slice(0, i + 1), ...extra, ...steps.slice(i + 1)];
}
