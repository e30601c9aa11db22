/**
 * `mvm restore FILE --data-dir DIR` (ADR 0022): a backup archive into a fresh data directory, with
 * the service not running there. Brings back every record of the database (tenants, API keys,
 * security groups, volumes, snapshots, templates, the audit log), migrated to this build's schema;
 * microVMs come back Stopped (start them when wanted); volume files and root disks go where this
 * build looks for them, their qcow2 backing paths rewritten from the old data directory to the new
 * one. A snapshot whose files are neither in the archive nor already in DIR is kept as `Failed`
 * with a message and listed in the report — never dropped silently.
 */
import { execFile } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { MicroVM } from '../core/microvm.js';
import type { BackupManifest } from '../core/ports/backup.js';
import { SNAPSHOT_KIND, type SnapshotSpec } from '../core/snapshots.js';
import { TEMPLATE_KIND } from '../core/templates.js';
import { VOLUME_KIND, VOLUME_SNAPSHOT_KIND, type VolumeSnapshotSpec, type VolumeSpec } from '../core/volumes.js';
import { SqliteResourceStore } from '../store/sqlite/resources.js';
import { SqliteStore } from '../store/sqlite/sqlite-store.js';
import { SqliteTenantStore } from '../store/sqlite/tenant-store.js';
import { MANIFEST_FILE } from './backup.js';

const execFileP = promisify(execFile);

export interface RestoreOptions {
  file: string;
  dataDir: string;
  /** The node name the restored service will run as (MVM_NODE_NAME; default the host name). */
  node?: string;
  /** Where nfs volumes live on this host (MVM_VOLUME_NFS_DIR), if any. */
  nfsDir?: string;
}

export interface RestoreProblem {
  kind: 'snapshot' | 'volumesnapshot' | 'volume' | 'rootDisk' | 'template';
  id: string;
  name?: string;
  tenant?: string;
  reason: string;
}

export interface RestoreReport {
  dataDir: string;
  backupCreatedAt: string;
  schemaVersion: { backup: number; now: number };
  tenants: number;
  apiKeys: number;
  securityGroups: number;
  microvms: number;
  volumes: number;
  rootDisks: number;
  snapshots: number;
  volumeSnapshots: number;
  /** Everything that did not come back whole, with why. */
  problems: RestoreProblem[];
  durationMs: number;
}

/** Which files a snapshot record names (QEMU: stateFile + disk copies; Firecracker: its state and memory files). */
function snapshotComplete(dir: string): string | undefined {
  const rec = join(dir, 'snapshot.json');
  if (!existsSync(rec)) return 'no snapshot.json';
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(readFileSync(rec, 'utf8')) as Record<string, unknown>;
  } catch (e) {
    return `snapshot.json is unreadable: ${(e as Error).message}`;
  }
  const names = new Set<string>();
  for (const k of ['stateFile', 'memoryFile', 'vmstateFile']) if (typeof doc[k] === 'string' && doc[k]) names.add(doc[k]);
  for (const d of Array.isArray(doc.disks) ? (doc.disks as Array<{ file?: unknown }>) : []) if (typeof d.file === 'string') names.add(d.file);
  const missing = [...names].filter((n) => !n.startsWith('/') && !existsSync(join(dir, n)));
  if (!names.size) return undefined;
  return missing.length ? `its files ${missing.join(', ')} are missing` : undefined;
}

/** qcow2 backing paths into the old data directory, pointed at the new one (metadata only, no data copied). */
async function rebase(file: string, from: string, to: string): Promise<string | undefined> {
  const { stdout } = await execFileP('qemu-img', ['info', '--output=json', '-U', file]);
  const info = JSON.parse(stdout) as { format: string; 'backing-filename'?: string; 'backing-filename-format'?: string };
  const backing = info['backing-filename'];
  if (info.format !== 'qcow2' || !backing) return undefined;
  let target = backing;
  if (backing.startsWith(from.replace(/\/$/, '') + '/')) {
    target = join(to, backing.slice(from.replace(/\/$/, '').length + 1));
    await execFileP('qemu-img', ['rebase', '-u', '-f', 'qcow2', '-F', info['backing-filename-format'] ?? 'qcow2', '-b', target, file]);
  }
  return existsSync(target) ? undefined : `its backing file ${target} is not there`;
}

/** Move `src` to `dst` (same filesystem: the staging dir is inside the data dir). */
function place(src: string, dst: string): void {
  mkdirSync(join(dst, '..'), { recursive: true, mode: 0o711 });
  rmSync(dst, { recursive: true, force: true });
  renameSync(src, dst);
}

export async function restoreBackup(o: RestoreOptions): Promise<RestoreReport> {
  const t0 = Date.now();
  const dataDir = o.dataDir;
  const node = o.node ?? hostname();
  if (existsSync(join(dataDir, 'state.db'))) {
    throw new MvmError(ErrorCodes.CONFLICT, `data-dir: ${dataDir} already holds a state database; restore into a fresh data directory (with no service running on it)`, {
      violations: [{ field: 'dataDir', message: 'must not hold a state database' }],
    });
  }
  if (!existsSync(o.file) || !statSync(o.file).isFile()) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `file: ${o.file} is not a file`, { violations: [{ field: 'file', message: 'no such file' }] });
  mkdirSync(dataDir, { recursive: true, mode: 0o711 });
  const stage = join(dataDir, `.restore-${process.pid}`);
  rmSync(stage, { recursive: true, force: true });
  mkdirSync(stage, { recursive: true, mode: 0o700 });
  const dbPath = join(dataDir, 'state.db');
  let store: SqliteStore | undefined;
  try {
    try {
      await execFileP('tar', ['--sparse', '-xf', o.file, '-C', stage], { maxBuffer: 16 * 1024 * 1024 });
    } catch (e) {
      throw new MvmError(ErrorCodes.VALIDATION_FAILED, `file: ${o.file} is not a readable backup archive: ${((e as { stderr?: string }).stderr ?? (e as Error).message).trim()}`, {
        violations: [{ field: 'file', message: 'not a tar archive' }],
      });
    }
    let manifest: BackupManifest;
    try {
      manifest = JSON.parse(readFileSync(join(stage, MANIFEST_FILE), 'utf8')) as BackupManifest;
    } catch {
      throw new MvmError(ErrorCodes.VALIDATION_FAILED, `file: ${o.file} has no ${MANIFEST_FILE}: not an mvm backup`, { violations: [{ field: 'file', message: 'not an mvm backup' }] });
    }
    if (manifest.format !== 'mvm-backup' || manifest.formatVersion !== 1) {
      throw new MvmError(ErrorCodes.VALIDATION_FAILED, `file: backup format ${manifest.format} ${manifest.formatVersion} is not one this build reads (mvm-backup 1)`, {
        violations: [{ field: 'file', message: 'unknown backup format' }],
      });
    }
    const problems: RestoreProblem[] = [];
    place(join(stage, 'state.db'), dbPath);
    store = new SqliteStore(dbPath);
    const resources = new SqliteResourceStore(store.database);
    const tenants = new SqliteTenantStore(store);
    const from = manifest.sourceDataDir;

    // Root disks into vms/<id>/, then the VMs themselves: Stopped, unplaced.
    let rootDisks = 0;
    const vms: MicroVM[] = [];
    for (let cursor: string | undefined, first = true; first || cursor; first = false) {
      const page = await store.listVms({ limit: 1000, ...(cursor ? { cursor } : {}) });
      vms.push(...page.items);
      cursor = page.nextCursor;
    }
    for (const vm of vms) {
      const disk = manifest.rootDisks.find((d) => d.vmId === vm.id);
      if (disk && existsSync(join(stage, disk.file.path))) {
        const dst = join(dataDir, disk.file.path);
        place(join(stage, disk.file.path), dst);
        rootDisks++;
      }
      await store.updateVm(vm.id, (cur) => {
        const { node: _n, pid: _p, ip: _i, interfaces: _if, guestAgent: _g, startedAt: _s, readyAt: _r, bootMs: _b, ...status } = cur.status;
        void [_n, _p, _i, _if, _g, _s, _r, _b];
        return {
          ...cur,
          desiredState: 'Stopped',
          status: { ...status, phase: 'Stopped', reason: 'Restored', message: `restored from the backup of ${manifest.createdAt}; start it when wanted`, conditions: [], stoppedAt: new Date().toISOString() },
        };
      });
    }

    // Volumes: files where this build's backends look for them.
    let volumes = 0;
    for (const v of await resources.list<VolumeSpec>(VOLUME_KIND)) {
      const entry = manifest.volumes.find((x) => x.id === v.id);
      const file = entry && 'file' in entry ? entry.file : undefined;
      const dir = v.spec.backend === 'local' ? join(dataDir, 'volumes') : v.spec.backend === 'nfs' ? o.nfsDir : undefined;
      if (!file || !existsSync(join(stage, file.path))) {
        problems.push({ kind: 'volume', id: v.id, name: v.name, tenant: v.tenant, reason: entry && 'skipped' in entry ? `not in the backup: ${entry.skipped}` : 'not in the backup' });
        continue;
      }
      if (!dir) {
        problems.push({ kind: 'volume', id: v.id, name: v.name, tenant: v.tenant, reason: `backend ${v.spec.backend} has no directory here (set MVM_VOLUME_NFS_DIR for nfs); its file stays in the archive` });
        continue;
      }
      place(join(stage, file.path), join(dir, 'volumes', `${v.id}.img`));
      if (v.spec.node && v.spec.node !== node) await resources.update<VolumeSpec>(VOLUME_KIND, v.id, (s) => ({ ...s, node }));
      volumes++;
    }

    // Snapshots: whose files are here (from the archive, or in DIR already) come back; the others are Failed, and said.
    let snapshots = 0;
    for (const s of await resources.list<SnapshotSpec>(SNAPSHOT_KIND)) {
      const staged = join(stage, 'snapshots', s.id);
      const dst = join(dataDir, 'snapshots', s.id);
      const stagedWhy = existsSync(staged) ? snapshotComplete(staged) : 'not in the backup';
      if (!stagedWhy) place(staged, dst);
      const why = stagedWhy && (existsSync(dst) ? snapshotComplete(dst) : stagedWhy);
      if (why) {
        problems.push({ kind: 'snapshot', id: s.id, name: s.name, tenant: s.tenant, reason: `files missing: ${why}${manifest.includeSnapshots ? '' : ' (the backup has snapshot metadata only: take it with --snapshots, or copy snapshots/' + s.id + ' from the old data directory)'}` });
        if (s.spec.phase === 'Ready') await resources.update<SnapshotSpec>(SNAPSHOT_KIND, s.id, (x) => ({ ...x, phase: 'Failed', message: `restored without its files (${why}); delete it` }));
        continue;
      }
      for (const f of readdirSync(dst).filter((n) => n.endsWith('.qcow2'))) {
        const bad = await rebase(join(dst, f), from, dataDir).catch((e: Error) => e.message);
        if (bad) problems.push({ kind: 'snapshot', id: s.id, name: s.name, tenant: s.tenant, reason: `${f}: ${bad}` });
      }
      if (s.spec.node && s.spec.node !== node) await resources.update<SnapshotSpec>(SNAPSHOT_KIND, s.id, (x) => ({ ...x, node }));
      snapshots++;
    }
    let volumeSnapshots = 0;
    for (const s of await resources.list<VolumeSnapshotSpec>(VOLUME_SNAPSHOT_KIND)) {
      const staged = join(stage, 'volume-snapshots', s.spec.backend, `${s.id}.img`);
      const dir = s.spec.backend === 'local' ? join(dataDir, 'volumes') : s.spec.backend === 'nfs' ? o.nfsDir : undefined;
      const dst = dir ? join(dir, 'snapshots', `${s.id}.img`) : undefined;
      if (dst && existsSync(staged)) place(staged, dst);
      if (!dst || !existsSync(dst)) {
        problems.push({ kind: 'volumesnapshot', id: s.id, name: s.name, tenant: s.tenant, reason: dst ? 'files missing: not in the backup' : `backend ${s.spec.backend} has no directory here` });
        if (s.spec.phase === 'Ready') await resources.update<VolumeSnapshotSpec>(VOLUME_SNAPSHOT_KIND, s.id, (x) => ({ ...x, phase: 'Failed' }));
        continue;
      }
      if (s.spec.node && s.spec.node !== node) await resources.update<VolumeSnapshotSpec>(VOLUME_SNAPSHOT_KIND, s.id, (x) => ({ ...x, node }));
      volumeSnapshots++;
    }

    // Root disks over snapshot copies (VMs restored from a snapshot) or old data-dir paths.
    for (const vm of vms) {
      const dir = join(dataDir, 'vms', vm.id);
      for (const f of existsSync(dir) ? readdirSync(dir).filter((n) => n.endsWith('.qcow2')) : []) {
        const bad = await rebase(join(dir, f), from, dataDir).catch((e: Error) => e.message);
        if (bad) problems.push({ kind: 'rootDisk', id: vm.id, name: vm.name, tenant: vm.tenant, reason: `${f}: ${bad}` });
      }
    }
    // Template files (RAM on tmpfs) are never in a backup: the service marks their versions Lost at start.
    for (const t of await resources.list(TEMPLATE_KIND)) problems.push({ kind: 'template', id: t.id, name: t.name, tenant: t.tenant, reason: 'template files are not backed up: rebuild it' });

    const report: RestoreReport = {
      dataDir,
      backupCreatedAt: manifest.createdAt,
      schemaVersion: { backup: manifest.schemaVersion, now: store.database.pragma('user_version', { simple: true }) as number },
      tenants: (await tenants.listTenants({ limit: 1000 })).items.length,
      apiKeys: (await tenants.listKeys({ limit: 1000 })).items.length,
      securityGroups: (await resources.list('securitygroup')).length,
      microvms: vms.length,
      volumes,
      rootDisks,
      snapshots,
      volumeSnapshots,
      problems,
      durationMs: 0,
    };
    await store.close();
    store = undefined;
    chmodSync(dbPath, 0o600);
    chmodSync(dataDir, 0o711);
    report.durationMs = Date.now() - t0;
    return report;
  } catch (e) {
    await store?.close();
    for (const f of ['state.db', 'state.db-wal', 'state.db-shm']) rmSync(join(dataDir, f), { force: true });
    throw e;
  } finally {
    rmSync(stage, { recursive: true, force: true });
  }
}
