/**
 * Firecracker snapshots on disk: what `/snapshot/create` writes (vm.state +
 * memory), a copy of each writable drive taken while the guest is paused, and
 * `snapshot.json`, the record a restore is checked against before anything is
 * started (driver, Firecracker version, host CPU model, kernel, VM shape,
 * drive paths as Firecracker will reopen them).
 *
 * Firecracker has no drive override on `/snapshot/load`: it reopens every
 * drive at the path it was attached with. So drive paths are chosen to be the
 * same for every clone yet name each clone's own file:
 *   - jailed: `/drives/<id>` inside the clone's own chroot (jailer.ts);
 *   - un-jailed: relative to the VMM's working directory, which is the VM
 *     directory (`root.raw`), so a clone in another VM directory opens its own disk.
 * See docs/adr/0005-firecracker-driver.md and 0009-snapshots.md.
 *
 * Snapshot directory layout:
 *   snapshot.json        FcSnapshotMeta
 *   vm.state, memory     Firecracker's state and guest memory files
 *   disk-<drive id>.raw  copy of each writable drive at the snapshot instant
 */
import { execFile } from 'node:child_process';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { isAbsolute, join, relative, resolve, sep } from 'node:path';
import { promisify } from 'node:util';
import { ErrorCodes, MvmError, type FieldViolation } from '../../core/errors.js';
import type { DriveSpec, LaunchSpec, SnapshotFiles } from '../../core/ports/vmm.js';
import { createRawClone } from '../../storage/disks.js';
import type { ApiCall, Drive } from './api-client.js';
import { SNAPSHOT_MEMORY_FILE, SNAPSHOT_META_FILE, SNAPSHOT_STATE_FILE, fcResourceId, type FcSnapshotMeta } from './config.js';

const run = promisify(execFile);

export const FC_SNAPSHOT_FORMAT = 'mvm-firecracker-snapshot/1';

/** The host CPU model (a snapshot restores only on the CPU model it was taken on). */
export function hostCpuModel(cpuinfo = '/proc/cpuinfo'): string {
  try {
    const text = readFileSync(cpuinfo, 'utf8');
    const model = /^model name\s*:\s*(.+)$/m.exec(text)?.[1]?.trim();
    const vendor = /^vendor_id\s*:\s*(.+)$/m.exec(text)?.[1]?.trim();
    return [vendor, model].filter(Boolean).join(' ') || 'unknown';
  } catch {
    return 'unknown';
  }
}

export function fileFacts(path: string): { path: string; sizeBytes: number } {
  try {
    return { path, sizeBytes: statSync(path).size };
  } catch {
    return { path, sizeBytes: -1 };
  }
}

/** `p` relative to `dir` when it lies inside it, else undefined. */
export function insideDir(dir: string, p: string): string | undefined {
  const rel = relative(resolve(dir), resolve(p));
  if (!rel || rel.startsWith('..') || isAbsolute(rel) || rel.split(sep).includes('..')) return undefined;
  return rel;
}

/**
 * Un-jailed: attach the VM's own drives (files inside its VM directory) by a
 * path relative to the VM directory, Firecracker's working directory. Drives
 * elsewhere (shared read-only images) keep their absolute path.
 */
export function relativizeDrives(calls: ApiCall[], vmDir: string): ApiCall[] {
  return calls.map((c) => {
    if (!c.path.startsWith('/drives/') || c.method !== 'PUT') return c;
    const d = c.body as Drive;
    const rel = d.path_on_host ? insideDir(vmDir, d.path_on_host) : undefined;
    return rel ? { ...c, body: { ...d, path_on_host: rel } } : c;
  });
}

/** The path Firecracker of this VM will open drive `d` at (the value the snapshot must have recorded). */
export function drivePathSeen(d: DriveSpec, vmDir: string, jailed: boolean): string {
  if (jailed) return `/drives/${fcResourceId(d.id)}`;
  return insideDir(vmDir, d.path) ?? d.path;
}

function fsyncPath(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Copy each writable drive into the snapshot directory (reflink where the filesystem can, else sparse). */
export async function copySnapshotDisks(
  dir: string,
  drives: Array<{ id: string; drive_id: string; hostPath: string; readOnly: boolean; vmRelPath?: string }>,
): Promise<FcSnapshotMeta['disks']> {
  const out: FcSnapshotMeta['disks'] = [];
  for (const d of drives) {
    if (d.readOnly) continue;
    const file = `disk-${d.drive_id}.raw`;
    const dst = join(dir, file);
    rmSync(`${dst}.tmp`, { force: true });
    try {
      await run('cp', ['--reflink=auto', '--sparse=always', d.hostPath, `${dst}.tmp`]);
      fsyncPath(`${dst}.tmp`);
      renameSync(`${dst}.tmp`, dst);
    } catch (e) {
      rmSync(`${dst}.tmp`, { force: true });
      throw new MvmError(ErrorCodes.VMM_ERROR, `snapshot: cannot copy drive ${d.id} (${d.hostPath}): ${(e as Error).message}`, { cause: e });
    }
    out.push({ drive_id: d.drive_id, id: d.id, file, sourcePath: d.hostPath, ...(d.vmRelPath ? { vmRelPath: d.vmRelPath } : {}) });
  }
  return out;
}

export function writeSnapshotMeta(dir: string, meta: FcSnapshotMeta): void {
  const tmp = join(dir, `${SNAPSHOT_META_FILE}.tmp`);
  writeFileSync(tmp, JSON.stringify(meta, null, 2));
  fsyncPath(tmp);
  renameSync(tmp, join(dir, SNAPSHOT_META_FILE));
}

/** The record of a Firecracker snapshot; typed errors for "not a snapshot" and "another driver's snapshot". */
export function readFcSnapshotMeta(dir: string): FcSnapshotMeta {
  let m: FcSnapshotMeta;
  try {
    m = JSON.parse(readFileSync(join(dir, SNAPSHOT_META_FILE), 'utf8')) as FcSnapshotMeta;
  } catch (e) {
    throw new MvmError(ErrorCodes.VALIDATION_FAILED, `${dir} is not a snapshot: cannot read ${SNAPSHOT_META_FILE}: ${(e as Error).message}`, {
      violations: [{ field: 'restoreFrom.dir', message: `no readable ${SNAPSHOT_META_FILE}` }],
      details: { dir, step: 'restore-check' },
    });
  }
  const driver = (m as { driver?: unknown }).driver;
  if (driver !== 'firecracker') {
    throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `snapshot in ${dir} was written by the ${String(driver)} driver; the firecracker driver cannot restore it`, {
      details: { dir, snapshotDriver: driver ?? null, step: 'restore-check' },
    });
  }
  return m;
}

export function snapshotFilesOf(dir: string): SnapshotFiles {
  return { dir, memoryFile: join(dir, SNAPSHOT_MEMORY_FILE), stateFile: join(dir, SNAPSHOT_STATE_FILE) };
}

/**
 * Can this VM (spec, jailed or not, Firecracker `vmmVersion` on CPU `cpuModel`)
 * restore the snapshot? Throws before anything is started:
 * CAPABILITY_UNSUPPORTED for another VMM/host (version, CPU model, jailed vs
 * un-jailed layout), VALIDATION_FAILED for another VM shape (vCPUs, memory,
 * kernel, drives) or missing snapshot files.
 */
export function checkRestoreCompatible(
  snap: SnapshotFiles,
  spec: LaunchSpec,
  target: { vmmVersion: string; cpuModel: string; jailed: boolean },
): FcSnapshotMeta {
  const meta = readFcSnapshotMeta(snap.dir);
  for (const f of [snap.stateFile ?? join(snap.dir, SNAPSHOT_STATE_FILE), snap.memoryFile]) {
    if (!existsSync(f)) {
      throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot in ${snap.dir} is incomplete: ${f} is missing`, {
        violations: [{ field: 'restoreFrom', message: `${f} is missing` }],
        details: { dir: snap.dir, step: 'restore-check' },
      });
    }
  }
  const host: FieldViolation[] = [];
  const shape: FieldViolation[] = [];
  const cmp = (list: FieldViolation[], field: string, a: unknown, b: unknown): void => {
    if (JSON.stringify(a) !== JSON.stringify(b)) list.push({ field, message: `snapshot has ${JSON.stringify(a)}, this VM has ${JSON.stringify(b)}` });
  };
  // Version and CPU are checked when both sides know them (older records lack them).
  if (meta.vmmVersion && meta.vmmVersion !== 'unknown' && target.vmmVersion !== 'unknown') cmp(host, 'vmmVersion', meta.vmmVersion, target.vmmVersion);
  if (meta.cpuModel && meta.cpuModel !== 'unknown' && target.cpuModel !== 'unknown') cmp(host, 'cpuModel', meta.cpuModel, target.cpuModel);
  if (meta.jailed !== target.jailed) {
    host.push({
      field: 'jailed',
      message: meta.jailed
        ? 'the snapshot was taken under the jailer (drives at /drives/<id> in the chroot); restore it with the jailer'
        : 'the snapshot was taken without the jailer (drives relative to the VM directory); restore it without the jailer',
    });
  }
  cmp(shape, 'vcpu', meta.vcpu, spec.vcpu);
  cmp(shape, 'memoryMiB', meta.memoryMiB, spec.memoryMiB);
  if (meta.kernel) cmp(shape, 'kernel', meta.kernel, fileFacts(spec.kernelPath));
  // Firecracker reopens each drive at the recorded path: this VM must have it at that very path.
  for (const d of meta.drives) {
    const mine = spec.drives.find((x) => fcResourceId(x.id) === d.drive_id);
    if (!mine) {
      shape.push({ field: `drives.${d.drive_id}`, message: 'the snapshot has this drive; this VM does not attach it' });
      continue;
    }
    const seen = drivePathSeen(mine, spec.vmDir, target.jailed);
    if (seen !== d.path_on_host) {
      shape.push({
        field: `drives.${d.drive_id}`,
        message: `Firecracker reopens it at ${d.path_on_host}, this VM has it at ${seen}${isAbsolute(seen) && !target.jailed ? ' (un-jailed, only drives inside the VM directory move with a clone)' : ''}`,
      });
    }
    const copy = (meta.disks ?? []).find((x) => x.drive_id === d.drive_id);
    if (copy && !mine.readOnly && resolve(mine.path) === resolve(copy.sourcePath) && resolve(spec.vmDir) !== resolve(meta.sourceVmDir ?? '')) {
      shape.push({ field: `drives.${d.drive_id}`, message: `${mine.path} is the source VM's live disk; restore onto a copy of the snapshot's disk (prepareRestoreDisk)` });
    }
  }
  for (const d of spec.drives) {
    if (!meta.drives.some((x) => x.drive_id === fcResourceId(d.id))) shape.push({ field: `drives.${d.id}`, message: 'this VM attaches a drive the snapshot does not have' });
  }
  const fail = (code: typeof ErrorCodes.CAPABILITY_UNSUPPORTED | typeof ErrorCodes.VALIDATION_FAILED, v: FieldViolation[]): never => {
    throw new MvmError(code, `cannot restore snapshot of ${meta.sourceId} from ${snap.dir}: ${v.map((x) => `${x.field}: ${x.message}`).join('; ')}`, {
      violations: v,
      details: { step: 'restore-check', dir: snap.dir },
    });
  };
  if (host.length) fail(ErrorCodes.CAPABILITY_UNSUPPORTED, host);
  if (shape.length) fail(ErrorCodes.VALIDATION_FAILED, shape);
  return meta;
}

/**
 * A restored (cloned) VM's own drives: for each drive the snapshot copied, a
 * reflink/sparse raw clone of the copy at the same place in the new VM
 * directory as in the source's (so the un-jailed relative path matches);
 * read-only drives are attached in place. Replaces a disk of that name.
 * Returns the drives in the snapshot's order, root first.
 */
export async function prepareRestoreDrives(snapshotDir: string, vmDir: string, opts: { owner?: { uid: number; gid: number } } = {}): Promise<DriveSpec[]> {
  const meta = readFcSnapshotMeta(snapshotDir);
  mkdirSync(vmDir, { recursive: true });
  const out: DriveSpec[] = [];
  for (const d of meta.drives) {
    const id = d.id ?? d.drive_id;
    const root = d.root ?? out.length === 0;
    const copy = (meta.disks ?? []).find((x) => x.drive_id === d.drive_id);
    if (!copy) {
      if (d.readOnly && d.hostPath) {
        out.push({ id, path: d.hostPath, format: 'raw', readOnly: true, root });
        continue;
      }
      throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot in ${snapshotDir} has no copy of writable drive ${id}`, { details: { dir: snapshotDir } });
    }
    const base = join(resolve(snapshotDir), copy.file);
    if (!existsSync(base)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot disk ${base} is missing`, { details: { dir: snapshotDir } });
    const path = join(resolve(vmDir), copy.vmRelPath ?? `${id}.raw`);
    rmSync(path, { force: true });
    await createRawClone({ base, path, ...(opts.owner ? { owner: opts.owner } : {}) });
    out.push({ id, path, format: 'raw', readOnly: false, root });
  }
  return out.sort((a, b) => Number(b.root) - Number(a.root));
}
