/**
 * Backups of the standalone service while it runs (ADR 0022). Into a staging directory inside the
 * data directory (same filesystem: reflink copies where it can), in this order:
 *   1. state.db: SQLite's online backup of the live database (better-sqlite3 `backup()`), a
 *      consistent copy of every record at one instant, taken while writes go on;
 *   2. the files that copy names, read from the copy (not the live database) so records and files
 *      agree: each volume of a file backend and each microVM's root disk, copied under
 *      `agent.quiesce` when a running guest writes to them (guest `sync`, VMM paused for the copy);
 *   3. each snapshot's metadata (`snapshot.json`), or all its files with `includeSnapshots`;
 *   4. manifest.json, saying what is in the archive and how each file was copied.
 * Then a GNU tar of the staging directory (sparse files stay sparse) is streamed to the caller and
 * the staging directory removed when the stream ends or fails (and at the next start after a crash).
 */
import { spawn, execFile } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Database from 'better-sqlite3';
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { BackupArchive, BackupFileEntry, BackupManifest, BackupOptions, BackupService } from '../core/ports/backup.js';
import type { VolumeBackend } from '../core/ports/volumes.js';
import { SNAPSHOT_KIND } from '../core/snapshots.js';
import { VOLUME_KIND, VOLUME_SNAPSHOT_KIND, type VolumeSnapshotSpec, type VolumeSpec } from '../core/volumes.js';
import { FileVolumeBackend } from '../storage/volumes/file-backend.js';

const execFileP = promisify(execFile);

export const STAGING_DIR = '.backup-staging';
export const MANIFEST_FILE = 'manifest.json';

/** What the backup needs of the node agent: where a VM's files are, and a way to hold them still. */
export interface QuiescingAgent {
  vmDir(id: string): string;
  quiesce<T>(id: string, fn: () => Promise<T>): Promise<{ result: T; pausedMs: number; guestSynced: boolean }>;
}

export interface LocalBackupOptions {
  db: Database.Database;
  dataDir: string;
  node: string;
  agent: QuiescingAgent;
  volumeBackends: VolumeBackend[];
  serviceVersion: string;
  schemaVersion: number;
}

/** A sparse, owner- and mode-keeping copy; a reflink where the filesystem can. */
async function copyFile(src: string, dst: string): Promise<number> {
  mkdirSync(join(dst, '..'), { recursive: true });
  await execFileP('cp', ['--reflink=auto', '--sparse=always', '--preserve=mode,ownership', src, dst]);
  return statSync(dst).size;
}

async function copyDir(src: string, dst: string): Promise<void> {
  mkdirSync(join(dst, '..'), { recursive: true });
  await execFileP('cp', ['-R', '--reflink=auto', '--sparse=always', '--preserve=mode,ownership', src, dst]);
}

export class LocalBackupService implements BackupService {
  private readonly stagingRoot: string;

  constructor(private readonly o: LocalBackupOptions) {
    this.stagingRoot = join(o.dataDir, STAGING_DIR);
  }

  /** Staging directories left by a service that died mid-backup. */
  sweep(): void {
    rmSync(this.stagingRoot, { recursive: true, force: true });
  }

  async create(opts: BackupOptions = {}): Promise<BackupArchive> {
    const t0 = Date.now();
    const createdAt = new Date(t0).toISOString();
    const stage = join(this.stagingRoot, `b-${t0}-${process.pid}-${Math.random().toString(36).slice(2, 8)}`);
    mkdirSync(stage, { recursive: true, mode: 0o700 });
    try {
      const manifest = await this.stage(stage, createdAt, opts.includeSnapshots === true);
      manifest.durationMs = Date.now() - t0;
      writeFileSync(join(stage, MANIFEST_FILE), JSON.stringify(manifest, null, 2) + '\n');
      const entries = readdirSync(stage);
      const tar = spawn('tar', ['--format=gnu', '--sparse', '-C', stage, '-cf', '-', ...entries], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      tar.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      const cleanup = (): void => rmSync(stage, { recursive: true, force: true });
      tar.once('close', (code) => {
        if (code !== 0) tar.stdout.destroy(new MvmError(ErrorCodes.INTERNAL, `tar of the backup failed (${code}): ${stderr.trim()}`));
        cleanup();
      });
      tar.stdout.once('close', () => {
        if (tar.exitCode === null) tar.kill('SIGKILL'); // the reader went away
      });
      return { stream: tar.stdout, filename: `mvm-backup-${createdAt.replace(/[:.]/g, '-')}.tar`, manifest };
    } catch (e) {
      rmSync(stage, { recursive: true, force: true });
      throw e;
    }
  }

  private async stage(stage: string, createdAt: string, includeSnapshots: boolean): Promise<BackupManifest> {
    // 1. The database, at one instant.
    await this.o.db.backup(join(stage, 'state.db'));
    const copy = new Database(join(stage, 'state.db'));
    let vms: Array<{ id: string; doc: string }>;
    let resources: Array<{ kind: string; id: string; tenant: string; name: string; doc: string }>;
    try {
      copy.pragma('journal_mode = DELETE'); // one self-contained file
      vms = copy.prepare('SELECT id, doc FROM microvms ORDER BY seq').all() as typeof vms;
      resources = copy.prepare('SELECT kind, id, tenant, name, doc FROM resources WHERE kind IN (?, ?, ?) ORDER BY kind, id').all(VOLUME_KIND, VOLUME_SNAPSHOT_KIND, SNAPSHOT_KIND) as typeof resources;
    } finally {
      copy.close();
    }
    const manifest: BackupManifest = {
      format: 'mvm-backup',
      formatVersion: 1,
      createdAt,
      serviceVersion: this.o.serviceVersion,
      schemaVersion: this.o.schemaVersion,
      sourceDataDir: this.o.dataDir,
      node: this.o.node,
      includeSnapshots,
      volumes: [],
      rootDisks: [],
      snapshots: [],
      durationMs: 0,
    };

    // 2. Files that guests write: grouped per VM so that each running guest pauses once.
    const perVm = new Map<string, Array<{ src: string; dst: string; done: (f: BackupFileEntry) => void }>>();
    const offline: Array<{ src: string; dst: string; done: (f: BackupFileEntry) => void }> = [];
    for (const { id } of vms) {
      const dir = this.o.agent.vmDir(id);
      const disk = ['root.qcow2', 'root.raw'].find((f) => existsSync(join(dir, f)));
      if (!disk) continue;
      const path = `vms/${id}/${disk}`;
      const job = { src: join(dir, disk), dst: join(stage, path), done: (f: BackupFileEntry) => manifest.rootDisks.push({ vmId: id, file: f }) };
      perVm.set(id, [...(perVm.get(id) ?? []), job]);
    }
    for (const r of resources.filter((x) => x.kind === VOLUME_KIND)) {
      const spec = JSON.parse(r.doc) as VolumeSpec;
      const base = { id: r.id, name: r.name, tenant: r.tenant, backend: spec.backend };
      const backend = this.o.volumeBackends.find((b) => b.name === spec.backend);
      if (!(backend instanceof FileVolumeBackend)) {
        manifest.volumes.push({ ...base, skipped: `backend ${spec.backend} keeps its data outside the data directory: back it up with that system's tools (e.g. rbd export)` });
        continue;
      }
      const src = backend.volumePath(r.id);
      if (spec.phase === 'Creating' || spec.phase === 'Deleting' || !existsSync(src)) {
        manifest.volumes.push({ ...base, skipped: `the volume is ${spec.phase}${existsSync(src) ? '' : ' and has no file'}` });
        continue;
      }
      const path = `volumes/${spec.backend}/${r.id}.img`;
      const job = { src, dst: join(stage, path), done: (f: BackupFileEntry) => manifest.volumes.push({ ...base, file: f }) };
      const writer = spec.attachedTo.find((a) => !a.readOnly);
      if (writer) perVm.set(writer.vmId, [...(perVm.get(writer.vmId) ?? []), job]);
      else offline.push(job);
    }
    for (const [vmId, jobs] of perVm) {
      const q = await this.o.agent.quiesce(vmId, async () => {
        const sizes: number[] = [];
        for (const j of jobs) sizes.push(await copyFile(j.src, j.dst));
        return sizes;
      });
      jobs.forEach((j, i) =>
        j.done({
          path: j.dst.slice(stage.length + 1),
          bytes: q.result[i]!,
          consistency: q.pausedMs > 0 || q.guestSynced ? 'quiesced' : 'offline',
          ...(q.pausedMs > 0 ? { pausedMs: q.pausedMs, guestSynced: q.guestSynced } : {}),
        }),
      );
    }
    for (const j of offline) j.done({ path: j.dst.slice(stage.length + 1), bytes: await copyFile(j.src, j.dst), consistency: 'offline' });

    // 3. Snapshots: their records are in the database; their files here (all, or the metadata).
    for (const r of resources.filter((x) => x.kind === SNAPSHOT_KIND)) {
      const dir = join(this.o.dataDir, 'snapshots', r.id);
      const entry = { id: r.id, name: r.name, tenant: r.tenant, kind: 'snapshot' as const };
      if (!existsSync(join(dir, 'snapshot.json'))) {
        manifest.snapshots.push({ ...entry, files: 'missing' });
      } else if (includeSnapshots) {
        await copyDir(dir, join(stage, 'snapshots', r.id));
        manifest.snapshots.push({ ...entry, files: 'included' });
      } else {
        mkdirSync(join(stage, 'snapshots', r.id), { recursive: true });
        copyFileSync(join(dir, 'snapshot.json'), join(stage, 'snapshots', r.id, 'snapshot.json'));
        manifest.snapshots.push({ ...entry, files: 'metadata' });
      }
    }
    for (const r of resources.filter((x) => x.kind === VOLUME_SNAPSHOT_KIND)) {
      const spec = JSON.parse(r.doc) as VolumeSnapshotSpec;
      const backend = this.o.volumeBackends.find((b) => b.name === spec.backend);
      const entry = { id: r.id, name: r.name, tenant: r.tenant, kind: 'volumesnapshot' as const };
      const src = backend instanceof FileVolumeBackend ? backend.snapshotPath(r.id) : undefined;
      if (!src || !existsSync(src)) manifest.snapshots.push({ ...entry, files: 'missing' });
      else if (includeSnapshots) {
        await copyFile(src, join(stage, 'volume-snapshots', spec.backend, `${r.id}.img`));
        manifest.snapshots.push({ ...entry, files: 'included' });
      } else manifest.snapshots.push({ ...entry, files: 'metadata' });
    }
    return manifest;
  }
}
