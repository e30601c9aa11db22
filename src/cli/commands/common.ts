/** What the command groups of `mvm` (one file each in this folder) share: context, output, paging. */
import type { Command } from 'commander';
import type { Mvm } from '../../../sdk/typescript/src/index.js';
import { renderTable, serialize, type OutputFormat } from '../format.js';

/** What a command runs with: the client, the output format, --quiet, the streams. */
export interface CommandContext {
  client: Mvm;
  output: OutputFormat;
  quiet: boolean;
  io: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream; env?: Record<string, string | undefined> };
}

/** Tells the error reporter what the command is about ("security group \"web\" not found"). */
export type About = (kind: string, id: string) => void;

/** What a command group registers itself with. */
export interface CommandGroupDeps {
  /** Adds a top-level command (`mvm <name>`). */
  addCommand: (name: string, description: string) => Command;
  contextOf: (command: Command) => CommandContext;
  about: About;
  /** The process's exit code once the command returns (default 0). */
  setExitCode?: (code: number) => void;
}

export const dash = (value: unknown): string => (value === undefined || value === null || value === '' ? '-' : String(value));

/** A top-level command holding subcommands, with examples in its help. */
export function group(deps: CommandGroupDeps, name: string, description: string, examples: string[]): Command {
  const command = deps.addCommand(name, description);
  command.addHelpText('after', '\nExamples:\n' + examples.map((e) => `  $ ${e}`).join('\n') + '\n');
  return command;
}

export function child(parent: Command, name: string, description: string): Command {
  return parent.command(name).description(description).exitOverride();
}

/** One object: json/yaml as is; table: the text; --quiet: the id. */
export function printOne(ctx: CommandContext, obj: unknown, text: string, id: string): void {
  if (ctx.output !== 'table') ctx.io.stdout.write(serialize(obj, ctx.output));
  else ctx.io.stdout.write(ctx.quiet ? `${id}\n` : text);
}

export function printList<T>(ctx: CommandContext, items: T[], next: string | undefined, what: string, headers: string[], row: (item: T) => string[], idOf: (item: T) => string): void {
  if (ctx.output !== 'table') ctx.io.stdout.write(serialize(next ? { items, next_cursor: next } : { items }, ctx.output));
  else if (ctx.quiet) for (const item of items) ctx.io.stdout.write(`${idOf(item)}\n`);
  else if (items.length === 0) ctx.io.stderr.write(`No ${what} found.\n`);
  else {
    ctx.io.stdout.write(renderTable(headers, items.map(row)));
    if (next) ctx.io.stderr.write(`(more ${what} exist; raise --limit or omit it to list all)\n`);
  }
}

/** As printOne; a DELETE that answers nothing is shown as `{id, deleted: true}`. */
export function printDeleted(ctx: CommandContext, obj: unknown, text: string, id: string): void {
  printOne(ctx, obj ?? { id, deleted: true }, text, id);
}

/** Every page of a cursor-paged list, or one page of at most `limit`. */
export async function pages<T>(limit: number | undefined, fetchPage: (cursor?: string) => Promise<{ items: T[]; next_cursor?: string }>): Promise<{ items: T[]; next?: string }> {
  if (limit !== undefined) {
    const page = await fetchPage();
    return { items: page.items.slice(0, limit), ...(page.next_cursor ? { next: page.next_cursor } : {}) };
  }
  const items: T[] = [];
  const seen = new Set<string>();
  let cursor: string | undefined;
  for (;;) {
    const page = await fetchPage(cursor);
    items.push(...page.items);
    if (!page.next_cursor || seen.has(page.next_cursor)) return { items };
    seen.add(page.next_cursor);
    cursor = page.next_cursor;
  }
}

/** `rm <id>` (alias delete) of a resource whose DELETE answers nothing: prints `done(id)`, or the id with -q. */
export function removeCommand(
  deps: CommandGroupDeps,
  parent: Command,
  name: string,
  description: string,
  kind: string,
  remove: (client: Mvm, id: string) => Promise<void>,
  done: (id: string) => string,
): void {
  child(parent, name, description)
    .alias('delete')
    .action(async (id: string, _opts: unknown, command: Command) => {
      deps.about(kind, id);
      const ctx = deps.contextOf(command);
      await remove(ctx.client, id);
      printDeleted(ctx, undefined, done(id), id);
    });
}
