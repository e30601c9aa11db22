/** `mvm snapshot create|ls|get|rm`: snapshots of microVMs (memory, devices and disks). */
import type { Command } from 'commander';
import type { SnapshotT } from '../../core/schema.js';
import { age, bytes, kv, renderList } from '../format.js';
import { UsageError } from '../parse.js';
import { child, dash, group, printList, printOne, removeCommand, type CommandGroupDeps } from './common.js';

const SNAPSHOT_HEADERS = ['ID', 'NAME', 'VM', 'PHASE', 'SIZE', 'NODE', 'AGE'];
const snapshotRow = (snapshot: SnapshotT): string[] => [
  snapshot.id,
  snapshot.name,
  snapshot.vmId,
  snapshot.phase,
  snapshot.sizeBytes !== undefined ? bytes(snapshot.sizeBytes) : '-',
  snapshot.node,
  age(snapshot.createdAt),
];

function defaultSnapshotName(vm: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
  const base = vm.toLowerCase().replace(/[^a-z0-9-]/g, '-').replace(/^-+|-+$/g, '').slice(0, 40) || 'vm';
  return `${base}-${stamp}`;
}

export function registerSnapshotCommands(deps: CommandGroupDeps): void {
  const { about, contextOf } = deps;
  deps
    .addCommand('fork <vm>', 'live fork: children carrying the running microVM\'s memory and disk state, each with a fresh identity (the parent is paused only for the snapshot)')
    .option('--count <n>', 'how many children', '1')
    .option('--name <name>', 'a child\'s name (repeatable; as many as --count; default <vm>-fork-<n>)', (v: string, prev: string[] = []) => [...prev, v])
    .option('--wait', 'wait until every child is Running and ready')
    .option('--timeout <seconds>', 'with --wait: give up after this long', '300')
    .action(async (vm: string, opts: { count: string; name?: string[]; wait?: boolean; timeout: string }, command: Command) => {
      about('microVM', vm);
      const count = Number(opts.count);
      if (!Number.isInteger(count) || count < 1) throw new UsageError(`--count wants a whole number of children (1 or more), got ${JSON.stringify(opts.count)}`);
      const ctx = contextOf(command);
      const r = await ctx.client.microvms.fork(vm, { count, ...(opts.name?.length ? { names: opts.name } : {}) });
      let children = r.children;
      if (opts.wait) {
        if (!ctx.quiet) ctx.io.stderr.write(`waiting for ${children.length} children to be ready ...\n`);
        children = await Promise.all(children.map((c) => ctx.client.microvms.waitFor(c.id, { phase: 'Running', ready: true, timeoutMs: Number(opts.timeout) * 1000 })));
      }
      if (ctx.output !== 'table') printOne(ctx, { snapshot: r.snapshot, children }, '', r.snapshot.id);
      else if (ctx.quiet) for (const c of children) ctx.io.stdout.write(`${c.id}\n`);
      else ctx.io.stdout.write(renderList(children));
    });
  const snapshots = group(deps, 'snapshot', 'manage microVM snapshots (memory, devices and disks)', [
    'mvm snapshot create web --name web-before-upgrade',
    'mvm snapshot ls --vm web',
    'mvm create web2 --from-snapshot web-before-upgrade',
    'mvm snapshot rm web-before-upgrade',
  ]).alias('snapshots');
  child(snapshots, 'create <vm>', 'snapshot a running or paused microVM')
    .option('--name <name>', 'snapshot name (default: VM-YYYYMMDDhhmmss)')
    .action(async (vm: string, opts: { name?: string }, command: Command) => {
      about('microVM', vm);
      const ctx = contextOf(command);
      const snapshot = await ctx.client.microvms.snapshot(vm, opts.name ?? defaultSnapshotName(vm));
      printOne(ctx, snapshot, `snapshot "${snapshot.name}" (${snapshot.id}) of ${snapshot.vmId}: ${snapshot.phase}${snapshot.message ? ` (${snapshot.message})` : ''}\n`, snapshot.id);
    });
  child(snapshots, 'list', 'list snapshots')
    .alias('ls')
    .option('--vm <vm>', 'only the snapshots of this microVM')
    .action(async (opts: { vm?: string }, command: Command) => {
      if (opts.vm) about('microVM', opts.vm);
      const ctx = contextOf(command);
      const items = await ctx.client.snapshots.list(opts.vm);
      printList(ctx, items, undefined, 'snapshots', SNAPSHOT_HEADERS, snapshotRow, (snapshot) => snapshot.id);
    });
  child(snapshots, 'get <id>', 'show a snapshot (by id or name)').action(async (id: string, _opts: unknown, command: Command) => {
    about('snapshot', id);
    const ctx = contextOf(command);
    const snapshot = await ctx.client.snapshots.get(id);
    const pairs: Array<[string, string]> = [
      ['id', snapshot.id],
      ['name', snapshot.name],
      ['tenant', snapshot.tenant],
      ['vm', snapshot.vmId],
      ['phase', snapshot.phase],
    ];
    if (snapshot.message) pairs.push(['message', snapshot.message]);
    pairs.push(
      ['driver', snapshot.driver],
      ['node', snapshot.node],
      ['vcpu', dash(snapshot.spec?.vcpu)],
      ['memory', dash(snapshot.spec?.memory)],
      ['size', snapshot.sizeBytes !== undefined ? bytes(snapshot.sizeBytes) : '-'],
      ['created', snapshot.createdAt],
    );
    printOne(ctx, snapshot, kv(pairs), snapshot.id);
  });
  removeCommand(deps, snapshots, 'rm <id>', 'delete a snapshot (refused while microVMs restored from it exist)', 'snapshot', (client, id) => client.snapshots.delete(id), (id) => `snapshot "${id}" deleted\n`);
}
