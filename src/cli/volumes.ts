/** `mvm volume create|ls|get|rm|snapshot` and the `--volume` flag of `mvm create` (ADR 0018). */
import type { Command } from 'commander';
import type { MvmClient } from './client.js';
import type { CreateVolumeRequestT, VolumeT } from '../core/schema.js';
import { serialize, type OutputFormat } from './format.js';
import { UsageError } from './parse.js';

export interface VolumeCtx {
  client: MvmClient;
  output: OutputFormat;
  quiet: boolean;
  io: { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream };
}

/** `name:/mount/path[:ro|rw][:size]` → a `volumes[]` entry of a create request. */
export function parseVolumeFlag(s: string): { name: string; mountPath: string; readOnly?: boolean; size?: string } {
  const parts = s.split(':');
  const [name, mountPath, ...rest] = parts;
  if (!name || !mountPath || !mountPath.startsWith('/')) throw new UsageError(`invalid --volume ${JSON.stringify(s)} (expected NAME:/mount/path[:ro][:SIZE])`);
  const out: { name: string; mountPath: string; readOnly?: boolean; size?: string } = { name, mountPath };
  for (const r of rest) {
    if (r === 'ro') out.readOnly = true;
    else if (r === 'rw') out.readOnly = false;
    else if (/^[1-9][0-9]*(Mi|Gi)$/.test(r)) out.size = r;
    else throw new UsageError(`invalid --volume ${JSON.stringify(s)}: ${JSON.stringify(r)} is neither ro, rw nor a size like 1Gi`);
  }
  return out;
}

const row = (v: VolumeT): string[] => [v.name, v.id, v.size, v.backend, v.status.phase, v.status.attachedTo.map((a) => `${a.vmId}${a.readOnly ? '(ro)' : ''}`).join(',') || '-'];

function table(rows: string[][]): string {
  const head = ['NAME', 'ID', 'SIZE', 'BACKEND', 'PHASE', 'ATTACHED TO'];
  const all = [head, ...rows];
  const w = head.map((_, i) => Math.max(...all.map((r) => (r[i] ?? '').length)));
  return all.map((r) => r.map((c, i) => c.padEnd(w[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}

export function registerVolumeCommands(program: Command, sub: (name: string, desc: string) => Command, ctxOf: (cmd: Command) => VolumeCtx): void {
  void program;
  const vol = sub('volume', 'manage persistent volumes').alias('volumes');
  const cmd = (name: string, desc: string): Command => vol.command(name).description(desc).exitOverride();
  const print = (ctx: VolumeCtx, v: unknown, text: string, id: string): void => {
    if (ctx.output !== 'table') ctx.io.stdout.write(serialize(v, ctx.output));
    else ctx.io.stdout.write(ctx.quiet ? `${id}\n` : text);
  };
  cmd('create <name>', 'create a volume (ext4)')
    .option('--size <quantity>', 'size, e.g. 1Gi (required unless --from-snapshot)')
    .option('--backend <name>', 'storage backend: local, nfs, ceph-rbd')
    .option('--read-only', 'only ever attach it read-only')
    .option('--from-snapshot <snapshot>', 'restore this volume snapshot into the new volume')
    .action(async (name: string, o: { size?: string; backend?: string; readOnly?: boolean; fromSnapshot?: string }, c: Command) => {
      const req: CreateVolumeRequestT = { name, ...(o.size ? { size: o.size } : {}), ...(o.backend ? { backend: o.backend } : {}), ...(o.readOnly ? { readOnly: true } : {}), ...(o.fromSnapshot ? { fromSnapshot: o.fromSnapshot } : {}) };
      const ctx = ctxOf(c);
      const v = await ctx.client.createVolume(req);
      print(ctx, v, table([row(v)]), v.id);
    });
  cmd('list', 'list volumes')
    .alias('ls')
    .action(async (_o: unknown, c: Command) => {
      const ctx = ctxOf(c);
      const { items } = await ctx.client.listVolumes();
      if (ctx.output !== 'table') ctx.io.stdout.write(serialize({ items }, ctx.output));
      else if (ctx.quiet) for (const v of items) ctx.io.stdout.write(`${v.id}\n`);
      else if (items.length === 0) ctx.io.stderr.write('No volumes found.\n');
      else ctx.io.stdout.write(table(items.map(row)));
    });
  cmd('get <id>', 'show a volume (by id or name)').action(async (id: string, _o: unknown, c: Command) => {
    const ctx = ctxOf(c);
    const v = await ctx.client.getVolume(id);
    print(ctx, v, table([row(v)]), v.id);
  });
  cmd('rm <id>', 'delete a volume (refused while attached or while it has snapshots)')
    .alias('delete')
    .action(async (id: string, _o: unknown, c: Command) => {
      const ctx = ctxOf(c);
      await ctx.client.deleteVolume(id);
      if (!ctx.quiet && ctx.output === 'table') ctx.io.stdout.write(`volume "${id}" deleted\n`);
    });
  cmd('snapshot <volume> <name>', 'snapshot a volume')
    .action(async (id: string, name: string, _o: unknown, c: Command) => {
      const ctx = ctxOf(c);
      const s = await ctx.client.snapshotVolume(id, name);
      print(ctx, s, `volume snapshot "${s.name}" (${s.id}) of ${s.volumeId}: ${s.phase}${s.copyOnWrite ? ', copy-on-write' : ''}\n`, s.id);
    });
}
