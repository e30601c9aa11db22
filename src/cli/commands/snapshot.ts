/** `mvm snapshot create|ls|get|rm`: snapshots of microVMs (memory, devices and disks). */
import type { Command } from 'commander';
import type { SnapshotT } from '../../core/schema.js';
import { age, bytes, kv } from '../format.js';
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
      const snapshot = await ctx.client.createSnapshot(vm, opts.name ?? defaultSnapshotName(vm));
      printOne(ctx, snapshot, `snapshot "${snapshot.name}" (${snapshot.id}) of ${snapshot.vmId}: ${snapshot.phase}${snapshot.message ? ` (${snapshot.message})` : ''}\n`, snapshot.id);
    });
  child(snapshots, 'list', 'list snapshots')
    .alias('ls')
    .option('--vm <vm>', 'only the snapshots of this microVM')
    .action(async (opts: { vm?: string }, command: Command) => {
      if (opts.vm) about('microVM', opts.vm);
      const ctx = contextOf(command);
      const { items } = await ctx.client.listSnapshots(opts.vm);
      printList(ctx, items, undefined, 'snapshots', SNAPSHOT_HEADERS, snapshotRow, (snapshot) => snapshot.id);
    });
  child(snapshots, 'get <id>', 'show a snapshot (by id or name)').action(async (id: string, _opts: unknown, command: Command) => {
    about('snapshot', id);
    const ctx = contextOf(command);
    const snapshot = await ctx.client.getSnapshot(id);
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
  removeCommand(deps, snapshots, 'rm <id>', 'delete a snapshot (refused while microVMs restored from it exist)', 'snapshot', (client, id) => client.deleteSnapshot(id), (id) => `snapshot "${id}" deleted\n`);
}
