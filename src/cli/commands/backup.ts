/**
 * `mvm backup FILE` (admins; through the running service's API) and `mvm restore FILE --data-dir
 * DIR` (on the host, into a fresh data directory, with no service running there). ADR 0022.
 */
import { createWriteStream, renameSync, rmSync, statSync } from 'node:fs';
import { pipeline } from 'node:stream/promises';
import type { Command } from 'commander';
import { bytes, serialize } from '../format.js';
import { UsageError } from '../parse.js';
import type { CommandGroupDeps } from './common.js';

export function registerBackupCommands(deps: CommandGroupDeps): void {
  deps
    .addCommand('backup', 'back up the whole service while it runs (admins): state database, volumes, root disks, snapshot metadata')
    .argument('<file>', 'the tar archive to write (written as FILE.tmp, renamed when complete)')
    .option('--snapshots', 'also the files of memory and volume snapshots (default: their metadata only)')
    .addHelpText('after', '\nExamples:\n  $ mvm backup /srv/backups/mvm-$(date +%F).tar\n  $ mvm backup all.tar --snapshots\n')
    .action(async (file: string, opts: { snapshots?: boolean }, command: Command) => {
      const ctx = deps.contextOf(command);
      const t0 = Date.now();
      const b = await ctx.client.backup({ snapshots: opts.snapshots === true });
      const tmp = `${file}.tmp`;
      try {
        await pipeline(b.stream, createWriteStream(tmp, { mode: 0o600 }));
        renameSync(tmp, file);
      } catch (e) {
        rmSync(tmp, { force: true });
        throw e;
      }
      const result = { file, bytes: statSync(file).size, durationMs: Date.now() - t0, ...(b.summary ? { summary: b.summary } : {}) };
      if (ctx.output !== 'table') ctx.io.stdout.write(serialize(result, ctx.output));
      else if (ctx.quiet) ctx.io.stdout.write(`${file}\n`);
      else {
        const s = b.summary ?? {};
        ctx.io.stdout.write(`wrote ${file} (${bytes(result.bytes)}) in ${(result.durationMs / 1000).toFixed(1)} s: schema ${s.schemaVersion ?? '?'}, ${s.volumes ?? 0} volume(s), ${s.rootDisks ?? 0} root disk(s), ${s.snapshots ?? 0} snapshot(s)\n`);
      }
    });

  deps
    .addCommand('restore', 'restore a backup into a fresh data directory on this host (run the service on it afterwards)')
    .argument('<file>', 'an archive written by `mvm backup`')
    .requiredOption('--data-dir <dir>', 'the data directory to create (must not hold a state database)')
    .option('--node <name>', 'the node name the service will run as (default: MVM_NODE_NAME, else the host name)')
    .addHelpText('after', '\nmicroVMs come back Stopped; snapshots whose files are missing come back Failed and are listed.\n\nExamples:\n  $ mvm restore /srv/backups/mvm-2026-12-07.tar --data-dir /var/lib/mvm\n')
    .action(async (file: string, opts: { dataDir: string; node?: string }, command: Command) => {
      if (!opts.dataDir) throw new UsageError('--data-dir is required');
      const ctx = deps.contextOf(command);
      // Loaded here: the rest of the CLI is an API client and needs no SQLite.
      const { restoreBackup } = await import('../../backup/restore.js');
      const env = ctx.io.env ?? {};
      const node = opts.node ?? env.MVM_NODE_NAME;
      const report = await restoreBackup({ file, dataDir: opts.dataDir, ...(node ? { node } : {}), ...(env.MVM_VOLUME_NFS_DIR ? { nfsDir: env.MVM_VOLUME_NFS_DIR } : {}) });
      if (ctx.output !== 'table') ctx.io.stdout.write(serialize(report, ctx.output));
      else if (ctx.quiet) ctx.io.stdout.write(`${report.dataDir}\n`);
      else {
        ctx.io.stdout.write(
          `restored the backup of ${report.backupCreatedAt} into ${report.dataDir} in ${(report.durationMs / 1000).toFixed(1)} s (schema ${report.schemaVersion.backup} -> ${report.schemaVersion.now}):\n` +
            `  ${report.tenants} tenant(s), ${report.apiKeys} API key(s), ${report.securityGroups} security group(s), ${report.microvms} microVM(s) (Stopped), ` +
            `${report.volumes} volume(s), ${report.rootDisks} root disk(s), ${report.snapshots} snapshot(s), ${report.volumeSnapshots} volume snapshot(s)\n`,
        );
        for (const p of report.problems) ctx.io.stderr.write(`  not restored whole: ${p.kind} ${p.name ?? ''} (${p.id}${p.tenant ? `, tenant ${p.tenant}` : ''}): ${p.reason}\n`);
      }
    });
}
