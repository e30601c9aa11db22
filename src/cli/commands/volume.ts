/** `mvm volume create|ls|get|rm|snapshot` and the `--volume` flag of `mvm create` (ADR 0018). */
import type { Command } from 'commander';
import type { CreateVolumeRequestT, VolumeT } from '../../core/schema.js';
import { serialize } from '../format.js';
import { UsageError } from '../parse.js';
import { child, printOne, type CommandGroupDeps } from './common.js';

/** `name:/mount/path[:ro|rw][:size]` → a `volumes[]` entry of a create request. */
export function parseVolumeFlag(text: string): { name: string; mountPath: string; readOnly?: boolean; size?: string } {
  const [name, mountPath, ...rest] = text.split(':');
  if (!name || !mountPath || !mountPath.startsWith('/')) throw new UsageError(`invalid --volume ${JSON.stringify(text)} (expected NAME:/mount/path[:ro][:SIZE])`);
  const out: { name: string; mountPath: string; readOnly?: boolean; size?: string } = { name, mountPath };
  for (const part of rest) {
    if (part === 'ro') out.readOnly = true;
    else if (part === 'rw') out.readOnly = false;
    else if (/^[1-9][0-9]*(Mi|Gi)$/.test(part)) out.size = part;
    else throw new UsageError(`invalid --volume ${JSON.stringify(text)}: ${JSON.stringify(part)} is neither ro, rw nor a size like 1Gi`);
  }
  return out;
}

const volumeRow = (volume: VolumeT): string[] => [
  volume.name,
  volume.id,
  volume.size,
  volume.backend,
  volume.status.phase,
  volume.status.attachedTo.map((a) => `${a.vmId}${a.readOnly ? '(ro)' : ''}`).join(',') || '-',
];

function volumeTable(rows: string[][]): string {
  const head = ['NAME', 'ID', 'SIZE', 'BACKEND', 'PHASE', 'ATTACHED TO'];
  const all = [head, ...rows];
  const widths = head.map((_, i) => Math.max(...all.map((row) => (row[i] ?? '').length)));
  return all.map((row) => row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}

export function registerVolumeCommands(deps: CommandGroupDeps): void {
  const { contextOf } = deps;
  const volumes = deps.addCommand('volume', 'manage persistent volumes').alias('volumes');
  child(volumes, 'create <name>', 'create a volume (ext4)')
    .option('--size <quantity>', 'size, e.g. 1Gi (required unless --from-snapshot)')
    .option('--backend <name>', 'storage backend: local, nfs, ceph-rbd')
    .option('--read-only', 'only ever attach it read-only')
    .option('--from-snapshot <snapshot>', 'restore this volume snapshot into the new volume')
    .action(async (name: string, opts: { size?: string; backend?: string; readOnly?: boolean; fromSnapshot?: string }, command: Command) => {
      const request: CreateVolumeRequestT = {
        name,
        ...(opts.size ? { size: opts.size } : {}),
        ...(opts.backend ? { backend: opts.backend } : {}),
        ...(opts.readOnly ? { readOnly: true } : {}),
        ...(opts.fromSnapshot ? { fromSnapshot: opts.fromSnapshot } : {}),
      };
      const ctx = contextOf(command);
      const volume = await ctx.client.volumes.create(request);
      printOne(ctx, volume, volumeTable([volumeRow(volume)]), volume.id);
    });
  child(volumes, 'list', 'list volumes')
    .alias('ls')
    .action(async (_opts: unknown, command: Command) => {
      const ctx = contextOf(command);
      const items = await ctx.client.volumes.list();
      if (ctx.output !== 'table') ctx.io.stdout.write(serialize({ items }, ctx.output));
      else if (ctx.quiet) for (const volume of items) ctx.io.stdout.write(`${volume.id}\n`);
      else if (items.length === 0) ctx.io.stderr.write('No volumes found.\n');
      else ctx.io.stdout.write(volumeTable(items.map(volumeRow)));
    });
  child(volumes, 'get <id>', 'show a volume (by id or name)').action(async (id: string, _opts: unknown, command: Command) => {
    const ctx = contextOf(command);
    const volume = await ctx.client.volumes.get(id);
    printOne(ctx, volume, volumeTable([volumeRow(volume)]), volume.id);
  });
  child(volumes, 'rm <id>', 'delete a volume (refused while attached or while it has snapshots)')
    .alias('delete')
    .action(async (id: string, _opts: unknown, command: Command) => {
      const ctx = contextOf(command);
      await ctx.client.volumes.delete(id);
      if (!ctx.quiet && ctx.output === 'table') ctx.io.stdout.write(`volume "${id}" deleted\n`);
    });
  child(volumes, 'snapshot <volume> <name>', 'snapshot a volume').action(async (id: string, name: string, _opts: unknown, command: Command) => {
    const ctx = contextOf(command);
    const snapshot = await ctx.client.volumes.snapshot(id, name);
    printOne(ctx, snapshot, `volume snapshot "${snapshot.name}" (${snapshot.id}) of ${snapshot.volumeId}: ${snapshot.phase}${snapshot.copyOnWrite ? ', copy-on-write' : ''}\n`, snapshot.id);
  });
}
