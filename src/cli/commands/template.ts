/** `mvm template build|ls|get|rebuild|rm`: templates microVMs are cloned from (issue 19, ADR 0021). */
import type { Command } from 'commander';
import type { CreateTemplateRequestT, TemplateT } from '../../core/schema.js';
import { age, bytes, kv } from '../format.js';
import { UsageError } from '../parse.js';
import { child, dash, group, printList, printOne, removeCommand, type CommandGroupDeps } from './common.js';

const HEADERS = ['ID', 'NAME', 'PHASE', 'READY', 'VERSIONS', 'AGE'];
const row = (t: TemplateT): string[] => [t.id, t.name, t.phase, t.readyVersion !== undefined ? `v${t.readyVersion}` : '-', String(t.versions.length), age(t.createdAt)];

function parseEnv(list: string[] | undefined): Record<string, string> | undefined {
  if (!list?.length) return undefined;
  const env: Record<string, string> = {};
  for (const kvPair of list) {
    const i = kvPair.indexOf('=');
    if (i <= 0) throw new UsageError(`--env wants KEY=VALUE, got ${JSON.stringify(kvPair)}`);
    env[kvPair.slice(0, i)] = kvPair.slice(i + 1);
  }
  return env;
}

export function registerTemplateCommands(deps: CommandGroupDeps): void {
  const { about, contextOf } = deps;
  const templates = group(deps, 'template', 'templates: a guest booted once and snapshotted with its memory; creates clone it in a fraction of a cold boot', [
    "mvm template build py --image registry.local/python:3.12 --command 'python3 -c \"import json\"' --wait",
    'mvm create job1 --template py --wait',
    'mvm template ls',
    'mvm template rm py',
  ]).alias('templates');
  child(templates, 'build <name>', 'create a template and build its first version (boot, readiness, command, memory snapshot)')
    .option('--image <ref>', 'root filesystem image (an OCI reference or a local image name)')
    .option('--vcpu <n>', 'vCPUs of the template (and of every clone)')
    .option('--memory <quantity>', 'guest memory, e.g. 256Mi')
    .option('--env <KEY=VALUE>', 'environment for the guest (repeatable)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--command <shell>', 'run once (sh -c) after boot, before the snapshot; must exit 0')
    .option('--ready <shell>', 'readiness: a command (sh -c) that must exit 0 before the command runs (default: the guest agent answers)')
    .option('--ready-timeout <duration>', 'how long the readiness command may take to hold', '60s')
    .option('--wait', 'wait until the build is over')
    .option('--timeout <duration>', 'with --wait: give up after this long', '10m')
    .action(async (name: string, opts: { image?: string; vcpu?: string; memory?: string; env?: string[]; command?: string; ready?: string; readyTimeout: string; wait?: boolean; timeout: string }, command: Command) => {
      const ctx = contextOf(command);
      const req: CreateTemplateRequestT = { name };
      if (opts.image) req.image = opts.image;
      if (opts.vcpu) req.vcpu = Number(opts.vcpu);
      if (opts.memory) req.memory = opts.memory;
      const env = parseEnv(opts.env);
      if (env) req.env = env;
      if (opts.command) req.command = ['sh', '-c', opts.command];
      if (opts.ready) req.readiness = { command: ['sh', '-c', opts.ready], timeout: opts.readyTimeout };
      let t = await ctx.client.templates.create(req);
      if (opts.wait) {
        const until = Date.now() + parseDuration(opts.timeout);
        if (!ctx.quiet) ctx.io.stderr.write(`building template ${name} (${t.id}) ...\n`);
        while (t.phase === 'Building') {
          if (Date.now() > until) throw new UsageError(`template ${name} is still building after ${opts.timeout}`);
          await new Promise((r) => setTimeout(r, 500));
          t = await ctx.client.templates.get(t.id);
        }
      }
      const latest = t.versions[t.versions.length - 1];
      printOne(ctx, t, `template "${t.name}" (${t.id}) version ${latest?.version}: ${t.phase}${latest?.step ? ` at step ${latest.step}` : ''}${latest?.message ? ` (${latest.message})` : ''}\n`, t.id);
      if (t.phase === 'Failed') process.exitCode = 1;
    });
  child(templates, 'list', 'list templates')
    .alias('ls')
    .action(async (_opts: unknown, command: Command) => {
      const ctx = contextOf(command);
      const items = await ctx.client.templates.list();
      printList(ctx, items, undefined, 'templates', HEADERS, row, (t) => t.id);
    });
  child(templates, 'get <id>', 'show a template and its versions (by id or name)').action(async (id: string, _opts: unknown, command: Command) => {
    about('template', id);
    const ctx = contextOf(command);
    const t = await ctx.client.templates.get(id);
    const pairs: Array<[string, string]> = [
      ['id', t.id],
      ['name', t.name],
      ['tenant', t.tenant],
      ['phase', t.phase],
      ['ready version', dash(t.readyVersion)],
      ['image', dash(t.spec.image ?? t.spec.rootfs?.image)],
      ['vcpu', dash(t.spec.vcpu)],
      ['memory', dash(t.spec.memory)],
      ['created', t.createdAt],
    ];
    for (const v of t.versions) {
      pairs.push([`v${v.version}`, [v.phase, v.node, v.buildMs !== undefined ? `${v.buildMs} ms` : undefined, v.memoryBytes !== undefined ? `memory ${bytes(v.memoryBytes)}` : undefined, v.step ? `step ${v.step}` : undefined, v.message].filter(Boolean).join(', ')]);
    }
    printOne(ctx, t, kv(pairs), t.id);
  });
  child(templates, 'rebuild <id>', 'build a new version (clones keep the version they came from)').action(async (id: string, _opts: unknown, command: Command) => {
    about('template', id);
    const ctx = contextOf(command);
    const t = await ctx.client.templates.rebuild(id);
    printOne(ctx, t, `template "${t.name}": building version ${t.versions[t.versions.length - 1]?.version}\n`, t.id);
  });
  removeCommand(deps, templates, 'rm <id>', 'delete a template and its files (refused while microVMs cloned from it exist)', 'template', (client, id) => client.templates.delete(id), (id) => `template "${id}" deleted\n`);
}

function parseDuration(d: string): number {
  const m = /^(\d+)(ms|s|m|h)$/.exec(d);
  if (!m) throw new UsageError(`--timeout wants a duration like 90s or 10m, got ${JSON.stringify(d)}`);
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3_600_000 }[m[2] as 'ms' | 's' | 'm' | 'h'];
}
