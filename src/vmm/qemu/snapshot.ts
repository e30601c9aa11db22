/**
 * QEMU snapshots: the full machine state (RAM + devices) as a QEMU migration
 * stream in a file, a compatibility record beside it, and a copy of each
 * writable disk taken while the guest is paused.
 *
 * Neither direction lets QEMU touch the snapshot file or fork: QEMU runs under
 * `-sandbox ...,spawn=deny` (no `exec:` migration) and possibly as an
 * unprivileged user. Our own process moves the bytes over a Unix socket in a
 * private, short-path directory: for a snapshot we listen, QEMU's `migrate`
 * connects and we write the stream into the file; for a restore QEMU (started
 * with `-incoming defer`) listens after `migrate-incoming`, we connect and
 * stream the file in. No fd passing, no helper process, the sandbox stays on.
 * See docs/adr/0009-snapshots.md.
 *
 * Snapshot directory layout:
 *   snapshot.json        compatibility record (QemuSnapshotRecord)
 *   vmstate.qemu         QEMU migration stream (memory + device state)
 *   disk-<drive id>.<fmt> copy of each writable drive at the snapshot instant
 */
import { execFile } from 'node:child_process';
import { createReadStream, createWriteStream, existsSync, fsyncSync, mkdirSync, mkdtempSync, openSync, readSync, closeSync, readFileSync, renameSync, rmSync, statSync, chownSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { ErrorCodes, MvmError, type FieldViolation } from '../../core/errors.js';
import type { DriveSpec, SnapshotFiles } from '../../core/ports/vmm.js';
import { pidAlive, sleep } from '../proc.js';
import { runAsIds } from '../identity.js';
import { QmpClient } from './qmp.js';

const run = promisify(execFile);

export const SNAPSHOT_RECORD_FILE = 'snapshot.json';
export const SNAPSHOT_STATE_FILE = 'vmstate.qemu';
export const SNAPSHOT_FORMAT = 'mvm-qemu-snapshot/1';
/** First bytes of every QEMU migration stream (QEMU_VM_FILE_MAGIC). */
const QEMU_VM_FILE_MAGIC = Buffer.from('QEVM', 'latin1');

/** What a restore must reproduce: derived from the QEMU command line, the same way on both sides. */
export interface QemuMachineRecord {
  /** `-M` value. */
  machine: string;
  /** 'kvm' | 'tcg'. */
  accel: string;
  /** `-icount` value ('' without). Guest time follows it; it is part of the migrated state. */
  icount: string;
  cpu: string;
  vcpu: number;
  memoryMiB: number;
  kernel: { path: string; sizeBytes: number };
  initrd?: { path: string; sizeBytes: number };
  /** Guest-visible devices in command-line order (virtio-mmio slots follow it). */
  devices: Array<{ type: string; id: string }>;
  drives: Array<{ id: string; path: string; format: string; readOnly: boolean }>;
  nics: Array<{ id: string; mac: string }>;
}

export interface QemuSnapshotRecord {
  format: typeof SNAPSHOT_FORMAT;
  driver: 'qemu';
  /** QEMU version (major.minor.micro) of the VMM that wrote the stream. */
  qemuVersion: string;
  sourceId: string;
  createdAt: string;
  machine: QemuMachineRecord;
  /** File name (relative to the snapshot directory) of the migration stream. */
  stateFile: string;
  stateBytes: number;
  /** Writable drives copied into the snapshot; read-only drives are used in place. */
  disks: Array<{ id: string; file: string; format: 'qcow2' | 'raw'; sourcePath: string }>;
  /**
   * Where the guest RAM is: in the stream (absent, the default), or in a frozen file the stream
   * skipped (`x-ignore-shared`): a template's or a fork's memory, mapped copy-on-write by restores.
   */
  memory?: { kind: 'shared-file'; path: string; sizeBytes: number };
  timingsMs: { pause: number; migrate: number; diskCopy: number; total: number };
}

// ---------------------------------------------------------------- command line -> record

function optValues(args: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length - 1; i++) if (args[i] === name) out.push(args[i + 1]!);
  return out;
}

/** `a=1,b=2` (QEMU option syntax, `,,` escapes a comma) -> map; a leading bare word is under ''. */
function qemuOpts(s: string): Map<string, string> {
  const parts: string[] = [];
  let cur = '';
  for (let i = 0; i < s.length; i++) {
    const c = s[i]!;
    if (c === ',' && s[i + 1] === ',') {
      cur += ',';
      i++;
    } else if (c === ',') {
      parts.push(cur);
      cur = '';
    } else cur += c;
  }
  parts.push(cur);
  const m = new Map<string, string>();
  parts.forEach((p, i) => {
    const eq = p.indexOf('=');
    if (eq < 0) m.set(i === 0 ? '' : p, i === 0 ? p : 'on');
    else m.set(p.slice(0, eq), p.slice(eq + 1));
  });
  return m;
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return -1;
  }
}

/** The compatibility-relevant facts of a QEMU command line (as built by buildQemuArgs). */
export function machineRecordFromArgs(args: string[]): QemuMachineRecord {
  const one = (n: string): string => optValues(args, n)[0] ?? '';
  const kernel = one('-kernel');
  const initrd = one('-initrd');
  const devices: QemuMachineRecord['devices'] = [];
  const macs = new Map<string, string>();
  for (const d of optValues(args, '-device')) {
    const o = qemuOpts(d);
    devices.push({ type: o.get('') ?? '', id: o.get('drive') ?? o.get('netdev') ?? o.get('id') ?? '' });
    if (o.has('netdev')) macs.set(o.get('netdev')!, o.get('mac') ?? '');
  }
  const drives = optValues(args, '-drive').map((d) => {
    const o = qemuOpts(d);
    return { id: o.get('id') ?? '', path: o.get('file') ?? '', format: o.get('format') ?? 'raw', readOnly: o.get('read-only') === 'on' || o.get('readonly') === 'on' };
  });
  const nics = optValues(args, '-netdev').map((n) => {
    const id = qemuOpts(n).get('id') ?? '';
    return { id, mac: macs.get(id) ?? '' };
  });
  return {
    machine: one('-M') || one('-machine'),
    accel: (qemuOpts(one('-accel')).get('') ?? '') || 'tcg',
    icount: one('-icount'),
    cpu: one('-cpu'),
    vcpu: Number((qemuOpts(one('-smp')).get('') ?? '1') || 1),
    memoryMiB: Number(qemuOpts(one('-m')).get('') ?? 0),
    kernel: { path: kernel, sizeBytes: fileSize(kernel) },
    ...(initrd ? { initrd: { path: initrd, sizeBytes: fileSize(initrd) } } : {}),
    devices,
    drives,
    nics,
  };
}

// ---------------------------------------------------------------- compatibility check

export function readSnapshotRecord(dir: string): QemuSnapshotRecord {
  const file = join(dir, SNAPSHOT_RECORD_FILE);
  let rec: QemuSnapshotRecord;
  try {
    rec = JSON.parse(readFileSync(file, 'utf8')) as QemuSnapshotRecord;
  } catch (e) {
    throw new MvmError(ErrorCodes.VALIDATION_FAILED, `${dir} is not a snapshot: cannot read ${SNAPSHOT_RECORD_FILE}: ${(e as Error).message}`, {
      violations: [{ field: 'restoreFrom.dir', message: `no readable ${SNAPSHOT_RECORD_FILE}` }],
      details: { dir },
    });
  }
  const driver = (rec as { driver?: unknown }).driver;
  if (driver !== 'qemu') {
    throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `snapshot in ${dir} was written by the ${String(driver)} driver; the qemu driver cannot restore it`, {
      details: { dir, snapshotDriver: driver },
    });
  }
  if (rec.format !== SNAPSHOT_FORMAT) {
    throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `snapshot in ${dir} has format ${String(rec.format)}; this driver reads ${SNAPSHOT_FORMAT}`, { details: { dir } });
  }
  return rec;
}

/**
 * Can a VMM started with `args` (QEMU `version`) take the snapshot's state?
 * Throws VALIDATION_FAILED for a different VM shape (vcpu, memory, kernel,
 * device layout, the source's live disk) and CAPABILITY_UNSUPPORTED for a
 * different VMM/host (QEMU version, accel, CPU model, machine, icount) —
 * before anything is started.
 */
export function checkRestoreCompatible(snapshot: SnapshotFiles, target: { qemuVersion: string; args: string[] }): QemuSnapshotRecord {
  const rec = readSnapshotRecord(snapshot.dir);
  const stateFile = stateFileOf(snapshot, rec);
  const head = Buffer.alloc(4);
  try {
    const fd = openSync(stateFile, 'r');
    try {
      readSync(fd, head, 0, 4, 0);
    } finally {
      closeSync(fd);
    }
  } catch (e) {
    throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot state ${stateFile} is unreadable: ${(e as Error).message}`, { details: { stateFile } });
  }
  if (!head.equals(QEMU_VM_FILE_MAGIC)) {
    throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot state ${stateFile} is not a QEMU migration stream`, { details: { stateFile } });
  }
  const have = rec.machine;
  const want = machineRecordFromArgs(target.args);
  const host: FieldViolation[] = [];
  const shape: FieldViolation[] = [];
  const cmp = (list: FieldViolation[], field: string, a: unknown, b: unknown): void => {
    if (JSON.stringify(a) !== JSON.stringify(b)) list.push({ field, message: `snapshot has ${JSON.stringify(a)}, this VM has ${JSON.stringify(b)}` });
  };
  cmp(host, 'qemuVersion', rec.qemuVersion, target.qemuVersion);
  cmp(host, 'accel', have.accel, want.accel);
  cmp(host, 'icount', have.icount, want.icount);
  cmp(host, 'cpu', have.cpu, want.cpu);
  cmp(host, 'machine', have.machine, want.machine);
  cmp(shape, 'vcpu', have.vcpu, want.vcpu);
  cmp(shape, 'memoryMiB', have.memoryMiB, want.memoryMiB);
  cmp(shape, 'kernel', have.kernel, want.kernel);
  cmp(shape, 'initrd', have.initrd ?? null, want.initrd ?? null);
  cmp(shape, 'devices', have.devices, want.devices);
  cmp(
    shape,
    'drives',
    have.drives.map((d) => ({ id: d.id, readOnly: d.readOnly })),
    want.drives.map((d) => ({ id: d.id, readOnly: d.readOnly })),
  );
  cmp(shape, 'nics', have.nics.map((n) => n.id), want.nics.map((n) => n.id));
  // A writable drive must not be the source VM's own disk: the snapshot's copy diverges from it.
  for (const d of want.drives) {
    const src = rec.disks.find((x) => x.id === d.id);
    if (src && !d.readOnly && resolve(d.path) === resolve(src.sourcePath)) {
      shape.push({ field: `drives.${d.id}`, message: `${d.path} is the source VM's live disk; restore onto an overlay of the snapshot's copy (prepareRestoreDisk)` });
    }
  }
  const fail = (code: typeof ErrorCodes.CAPABILITY_UNSUPPORTED | typeof ErrorCodes.VALIDATION_FAILED, v: FieldViolation[]): never => {
    throw new MvmError(code, `cannot restore snapshot of ${rec.sourceId} from ${snapshot.dir}: ${v.map((x) => `${x.field}: ${x.message}`).join('; ')}`, {
      violations: v,
      details: { step: 'restore-check', dir: snapshot.dir },
    });
  };
  // A different VM shape is the caller's to fix (and may imply host-side differences, e.g. icount per vcpu count).
  if (shape.length) fail(ErrorCodes.VALIDATION_FAILED, [...shape, ...host]);
  if (host.length) fail(ErrorCodes.CAPABILITY_UNSUPPORTED, host);
  return rec;
}

/** The migration stream of a snapshot: named by its record (SnapshotFiles' file paths are informative only). */
function stateFileOf(snapshot: SnapshotFiles, rec: QemuSnapshotRecord): string {
  return join(snapshot.dir, rec.stateFile || SNAPSHOT_STATE_FILE);
}

// ---------------------------------------------------------------- one-shot migration sockets

interface Channel {
  uri: string;
  /** Resolves with the bytes moved once the single connection is done. */
  done: Promise<number>;
  close(): void;
}

/** `p`, or undefined after `ms`. */
function within<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([p, new Promise<undefined>((r) => (timer = setTimeout(() => r(undefined), ms)))]).finally(() => clearTimeout(timer));
}


/**
 * A Unix socket in a private directory (short path, reachable by the QEMU
 * user only) that accepts exactly one connection and hands it to `onConn`.
 */
async function oneShotSocket(runAs: string | undefined, onConn: (s: Socket, settle: (err: Error | null, bytes: number) => void) => void): Promise<Channel> {
  const priv = privateSocketDir(runAs);
  const path = priv.path;
  const owner = runAsIds(runAs);
  let settle!: (err: Error | null, bytes: number) => void;
  const done = new Promise<number>((res, rej) => {
    settle = (err, bytes) => (err ? rej(err) : res(bytes));
  });
  let taken = false;
  const server: Server = createServer((s) => {
    if (taken) {
      s.destroy();
      return;
    }
    taken = true;
    server.close();
    onConn(s, settle);
  });
  await new Promise<void>((res, rej) => {
    server.once('error', rej);
    server.listen(path, () => res());
  });
  if (owner) chownSync(path, owner.uid, owner.gid);
  void done.catch(() => undefined);
  return {
    uri: `unix:${path}`,
    done,
    close: () => {
      server.close();
      priv.close();
    },
  };
}

/** Serve a socket whose single client's bytes go into `file`. */
function sinkToFile(file: string, runAs: string | undefined): Promise<Channel> {
  return oneShotSocket(runAs, (s, settle) => {
    const out = createWriteStream(file);
    let bytes = 0;
    s.on('data', (d: Buffer) => (bytes += d.length));
    s.on('error', (e) => settle(e, bytes));
    out.on('error', (e) => settle(e, bytes));
    out.on('finish', () => settle(null, bytes));
    s.pipe(out);
  });
}

/** A private directory for a migration socket, reachable by QEMU's user (after -runas) only. */
function privateSocketDir(runAs: string | undefined): { dir: string; path: string; close(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-mig-'));
  const owner = runAsIds(runAs);
  if (owner) chownSync(dir, owner.uid, owner.gid);
  return { dir, path: join(dir, 'mig.sock'), close: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Connect to the socket QEMU listens on for an incoming migration and stream `file` into it. */
async function sendFile(sockPath: string, file: string, timeoutMs: number, alive: () => boolean): Promise<{ bytes: number; error?: Error }> {
  const deadline = Date.now() + timeoutMs;
  let sock: Socket;
  for (;;) {
    try {
      sock = await new Promise<Socket>((res, rej) => {
        const s = createConnection(sockPath);
        s.once('connect', () => res(s));
        s.once('error', rej);
      });
      break;
    } catch (e) {
      if (!alive()) throw new MvmError(ErrorCodes.VMM_ERROR, 'QEMU exited before it accepted the snapshot stream');
      if (Date.now() > deadline) throw new MvmError(ErrorCodes.TIMEOUT, `QEMU did not listen on ${sockPath}: ${(e as Error).message}`);
      await sleep(5);
    }
  }
  const src = createReadStream(file, { highWaterMark: 1 << 20 });
  try {
    await pipeline(src, sock);
  } catch (e) {
    // QEMU closes its end as soon as it has read the stream's end marker, which may
    // beat our last write callback: only QEMU's run state says whether the load worked.
    return { bytes: src.bytesRead, error: e as Error };
  }
  return { bytes: src.bytesRead };
}

// ---------------------------------------------------------------- snapshot

/** A snapshot must survive a host crash once `snapshot()` returned (snapshot.json is written last). */
function fsyncFile(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

interface MigrateInfo {
  status?: string;
  'error-desc'?: string;
  ram?: { transferred?: number };
}

async function waitMigration(c: QmpClient, what: string, timeoutMs: number, alive: () => boolean, signal?: AbortSignal): Promise<MigrateInfo> {
  const deadline = Date.now() + timeoutMs;
  let cancelAsked = false;
  for (;;) {
    if (!alive()) throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU exited during ${what}`);
    if (signal?.aborted && !cancelAsked) {
      cancelAsked = true;
      await c.execute('migrate_cancel').catch(() => undefined);
    }
    const info = await c.execute<MigrateInfo>('query-migrate', undefined, 5000);
    if (info.status === 'completed') return info;
    if (info.status === 'cancelled' && cancelAsked) throw new MvmError(ErrorCodes.CONFLICT, `${what} cancelled`, { details: { cancelled: true } });
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new MvmError(ErrorCodes.VMM_ERROR, `${what} ${info.status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
    }
    if (Date.now() > deadline) throw new MvmError(ErrorCodes.TIMEOUT, `${what} did not complete within ${timeoutMs} ms (status ${info.status ?? 'none'})`);
    await sleep(10);
  }
}

export interface TakeSnapshotOptions {
  id: string;
  pid: number;
  qmpPath: string;
  /** The VMM's argv (without the binary). */
  args: string[];
  dir: string;
  timeoutMs?: number;
  /**
   * The VM's RAM is a shared file: snapshot only the device state (x-ignore-shared) and put the RAM
   * in `memoryTo` — a copy taken while paused, or the RAM file itself when `memoryTo` names it (the
   * caller then keeps the file frozen: a template whose VM is discarded).
   */
  memoryTo?: string;
  /** Suspend to disk: no disk copies, and the VM stays in `postmigrate` (see SnapshotOptions.inPlace). */
  inPlace?: boolean;
  /** `migrate_cancel` when aborted: CONFLICT, and the VM is left as it was found. */
  signal?: AbortSignal;
}

/** The shared RAM file of a QEMU command line (memory-backend-file with share=on), if any. */
export function sharedMemoryFileOf(args: string[]): string | undefined {
  for (const o of optValues(args, '-object')) {
    const m = qemuOpts(o);
    if (m.get('') === 'memory-backend-file' && m.get('share') === 'on') return m.get('mem-path');
  }
  return undefined;
}

/**
 * Pause, stream the machine state into `<dir>/vmstate.qemu`, copy writable
 * disks while paused, write `snapshot.json`. The VM is left paused (runstate
 * `paused`, disks active), so resume/stop/kill behave as after `pause()`.
 */
export async function takeSnapshot(o: TakeSnapshotOptions): Promise<SnapshotFiles> {
  if (!pidAlive(o.pid)) {
    throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `cannot snapshot ${o.id}: its VMM is not running`, { details: { id: o.id } });
  }
  const dir = resolve(o.dir);
  mkdirSync(dir, { recursive: true });
  const stateFile = join(dir, SNAPSHOT_STATE_FILE);
  const tmpState = `${stateFile}.tmp`;
  const timeoutMs = o.timeoutMs ?? 120_000;
  const runAs = optValues(o.args, '-runas')[0];
  const t0 = Date.now();
  let c: QmpClient;
  try {
    c = await QmpClient.connect(o.qmpPath, 5000);
  } catch (e) {
    throw new MvmError(ErrorCodes.VMM_ERROR, `cannot snapshot ${o.id}: QMP: ${(e as Error).message}`, { cause: e });
  }
  let sink: Channel | undefined;
  let stoppedByUs = false;
  try {
    const st = await c.execute<{ status: string }>('query-status');
    if (st.status === 'inmigrate' || st.status === 'prelaunch') {
      throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `cannot snapshot ${o.id}: the VM has not started (${st.status})`, { details: { id: o.id } });
    }
    if (st.status === 'shutdown' || st.status === 'guest-panicked' || st.status === 'internal-error') {
      throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `cannot snapshot ${o.id}: the VM is ${st.status}`, { details: { id: o.id } });
    }
    if (st.status !== 'paused' && st.status !== 'postmigrate') {
      await c.execute('stop');
      stoppedByUs = true;
    }
    const tPaused = Date.now();
    const sharedRam = o.memoryTo ? sharedMemoryFileOf(o.args) : undefined;
    if (o.memoryTo && !sharedRam) throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, `cannot snapshot ${o.id} without its RAM: its memory is not a shared file`);
    // Device state only when the RAM is a shared file; otherwise RAM and devices in one stream.
    await c.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: !!sharedRam }] });
    // The guest is stopped: one pass, as fast as the file takes it.
    await c.execute('migrate-set-parameters', { 'max-bandwidth': 16 * 1024 * 1024 * 1024 });
    rmSync(tmpState, { force: true });
    sink = await sinkToFile(tmpState, runAs);
    await c.execute('migrate', { uri: sink.uri });
    if (o.signal?.aborted) throw new MvmError(ErrorCodes.CONFLICT, `snapshot of ${o.id} cancelled`, { details: { cancelled: true } });
    await waitMigration(c, `snapshot of ${o.id}`, timeoutMs, () => pidAlive(o.pid), o.signal);
    const stateBytes = await within(sink.done, 10_000);
    if (stateBytes === undefined) throw new MvmError(ErrorCodes.TIMEOUT, `snapshot of ${o.id}: the migration stream did not end`);
    fsyncFile(tmpState);
    renameSync(tmpState, stateFile);
    // A fork's frozen RAM: a copy of the shared file taken while the guest is still paused.
    let memory: QemuSnapshotRecord['memory'];
    if (sharedRam && o.memoryTo) {
      if (resolve(o.memoryTo) !== resolve(sharedRam)) {
        rmSync(o.memoryTo, { force: true });
        await run('cp', ['--reflink=auto', '--sparse=always', sharedRam, `${o.memoryTo}.tmp`]);
        renameSync(`${o.memoryTo}.tmp`, o.memoryTo);
      }
      memory = { kind: 'shared-file', path: resolve(o.memoryTo), sizeBytes: statSync(o.memoryTo).size };
    }
    const tMigrated = Date.now();
    // Migration completion flushed and inactivated the disks: copy them now.
    const machine = machineRecordFromArgs(o.args);
    const disks: QemuSnapshotRecord['disks'] = [];
    for (const d of machine.drives) {
      if (d.readOnly || o.inPlace) continue;
      const format = d.format === 'qcow2' ? 'qcow2' : 'raw';
      const file = `disk-${d.id}.${format}`;
      const dst = join(dir, file);
      rmSync(dst, { force: true });
      try {
        await run('cp', ['--reflink=auto', '--sparse=always', d.path, `${dst}.tmp`]);
      } catch (e) {
        rmSync(`${dst}.tmp`, { force: true });
        throw new MvmError(ErrorCodes.VMM_ERROR, `snapshot of ${o.id}: cannot copy drive ${d.id} (${d.path}): ${(e as Error).message}`, { cause: e });
      }
      fsyncFile(`${dst}.tmp`);
      renameSync(`${dst}.tmp`, dst);
      disks.push({ id: d.id, file, format, sourcePath: d.path });
    }
    const tCopied = Date.now();
    // Back to plain `paused` (re-activates the disks) without letting the guest run... almost: `cont`
    // lets it run for an instant, which would change a RAM file kept as the snapshot's memory. A
    // template's VM (memoryTo is its own RAM) stays as it is, in postmigrate, to be discarded.
    const keepsRamFile = memory !== undefined && sharedRam !== undefined && resolve(memory.path) === resolve(sharedRam);
    if (!keepsRamFile && !o.inPlace) {
      await c.execute('cont');
      await c.execute('stop');
    }
    const v = await c.execute<{ qemu: { major: number; minor: number; micro: number } }>('query-version');
    const rec: QemuSnapshotRecord = {
      format: SNAPSHOT_FORMAT,
      driver: 'qemu',
      qemuVersion: `${v.qemu.major}.${v.qemu.minor}.${v.qemu.micro}`,
      sourceId: o.id,
      createdAt: new Date().toISOString(),
      machine,
      stateFile: SNAPSHOT_STATE_FILE,
      stateBytes,
      disks,
      ...(memory ? { memory } : {}),
      timingsMs: { pause: tPaused - t0, migrate: tMigrated - tPaused, diskCopy: tCopied - tMigrated, total: Date.now() - t0 },
    };
    writeFileSync(join(dir, `${SNAPSHOT_RECORD_FILE}.tmp`), JSON.stringify(rec, null, 2));
    fsyncFile(join(dir, `${SNAPSHOT_RECORD_FILE}.tmp`));
    renameSync(join(dir, `${SNAPSHOT_RECORD_FILE}.tmp`), join(dir, SNAPSHOT_RECORD_FILE));
    fsyncFile(dir);
    return { dir, memoryFile: stateFile, stateFile };
  } catch (e) {
    rmSync(tmpState, { force: true });
    // A failed snapshot leaves the VM as it found it.
    if (stoppedByUs) await c.execute('cont').catch(() => undefined);
    if (e instanceof MvmError) throw e;
    throw new MvmError(ErrorCodes.VMM_ERROR, `snapshot of ${o.id} failed: ${(e as Error).message}`, { cause: e });
  } finally {
    sink?.close();
    c.close();
  }
}

// ---------------------------------------------------------------- restore

/**
 * Feed a snapshot into a QEMU started with `-incoming defer`, wait until it is
 * loaded, and start the guest. Throws with the VMM log's words on failure (an
 * incoming migration that fails makes QEMU exit).
 */
export async function restoreIncoming(o: {
  id: string;
  qmpPath: string;
  args: string[];
  snapshot: SnapshotFiles;
  alive: () => boolean;
  /** How the VMM ended, in words, once it did (a signal, an exit code): named in the error. */
  exitReason?: () => Promise<string | undefined>;
  timeoutMs?: number;
}): Promise<{ migrateMs: number; bytes: number }> {
  const timeoutMs = o.timeoutMs ?? 120_000;
  const runAs = optValues(o.args, '-runas')[0];
  const stateFile = stateFileOf(o.snapshot, readSnapshotRecord(o.snapshot.dir));
  const t0 = Date.now();
  const sock = privateSocketDir(runAs);
  let c: QmpClient | undefined;
  try {
    c = await QmpClient.connect(o.qmpPath, 5000);
    // A stream without RAM (its RAM is a frozen file the VM maps): both sides skip the shared block.
    if (readSnapshotRecord(o.snapshot.dir).memory?.kind === 'shared-file') {
      await c.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    }
    // QEMU listens (the incoming side is the server); we connect and stream the file.
    await c.execute('migrate-incoming', { uri: `unix:${sock.path}` });
    let sendError: Error | undefined;
    let connectFailed = false;
    const sent = sendFile(sock.path, stateFile, 10_000, o.alive).then(
      (r) => ((sendError = r.error), r.bytes),
      (e: unknown) => ((sendError = e as Error), (connectFailed = true), -1),
    );
    const deadline = Date.now() + timeoutMs;
    let status = 'inmigrate';
    for (;;) {
      if (!o.alive()) {
        // Say how it ended: a QEMU killed from outside (kill -9, the OOM killer) is not a broken snapshot.
        const how = await o.exitReason?.().catch(() => undefined);
        throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU exited while loading the snapshot${how ? `: ${how}` : ''}${sendError ? ` (stream: ${sendError.message})` : ''}`);
      }
      if (connectFailed) throw sendError instanceof MvmError ? sendError : new MvmError(ErrorCodes.VMM_ERROR, `cannot stream the snapshot into QEMU: ${sendError?.message}`);
      status = (await c.execute<{ status: string }>('query-status', undefined, 5000)).status;
      if (status !== 'inmigrate') break;
      if (Date.now() > deadline) throw new MvmError(ErrorCodes.TIMEOUT, `snapshot load did not complete within ${timeoutMs} ms${sendError ? ` (stream: ${sendError.message})` : ''}`);
      await sleep(10);
    }
    const bytes = await sent;
    if (status === 'paused' || status === 'postmigrate' || status === 'prelaunch') await c.execute('cont');
    else if (status !== 'running') throw new MvmError(ErrorCodes.VMM_ERROR, `after the snapshot load the VM is ${status}`);
    return { migrateMs: Date.now() - t0, bytes };
  } catch (e) {
    // QEMU died under us: whichever call noticed first (QMP reset, the stream), say how it ended.
    for (let i = 0; i < 20 && o.alive(); i++) await sleep(10);
    if (o.alive() || (e instanceof MvmError && e.message.startsWith('QEMU exited'))) throw e;
    const how = await o.exitReason?.().catch(() => undefined);
    throw new MvmError(ErrorCodes.VMM_ERROR, `QEMU exited while loading the snapshot${how ? `: ${how}` : ''} (${(e as Error).message})`, { cause: e });
  } finally {
    c?.close();
    sock.close();
  }
}

// ---------------------------------------------------------------- disks of restored VMs

export interface RestoreDiskOptions {
  /**
   * Owner of the new overlays: the VMM user when QEMU runs with `-runas`
   * (QEMU re-opens a disk read-write when it activates it after loading the
   * snapshot, as that user).
   */
  owner?: { uid: number; gid: number };
}

/**
 * Give a VM restored (or cloned) from a snapshot its own writable disks: for
 * each drive the snapshot copied, a new qcow2 overlay `<vmDir>/<drive id>.qcow2`
 * backed by the snapshot's copy (which stays read-only), replacing any disk of
 * that name. Read-only drives are attached in place. Returns the drives in the
 * snapshot's order, ready for `LaunchSpec.drives`.
 */
export async function prepareRestoreDrives(snapshotDir: string, vmDir: string, opts: RestoreDiskOptions = {}): Promise<DriveSpec[]> {
  const rec = readSnapshotRecord(snapshotDir);
  mkdirSync(vmDir, { recursive: true });
  const out: DriveSpec[] = [];
  rec.machine.drives.forEach((d, i) => {
    const root = i === 0;
    if (d.readOnly) {
      out.push({ id: d.id, path: d.path, format: d.format === 'qcow2' ? 'qcow2' : 'raw', readOnly: true, root });
      return;
    }
    out.push({ id: d.id, path: join(resolve(vmDir), `${d.id}.qcow2`), format: 'qcow2', readOnly: false, root });
  });
  for (const d of out) {
    if (d.readOnly) continue;
    const copy = rec.disks.find((x) => x.id === d.id);
    if (!copy) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot in ${snapshotDir} has no copy of writable drive ${d.id}`);
    const backing = join(resolve(snapshotDir), copy.file);
    if (!existsSync(backing)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot disk ${backing} is missing`);
    const tmp = `${d.path}.tmp`;
    rmSync(tmp, { force: true });
    try {
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-F', copy.format, '-b', backing, tmp]);
    } catch (e) {
      rmSync(tmp, { force: true });
      throw new MvmError(ErrorCodes.IMAGE_ERROR, `cannot create the restore disk ${d.path}: ${(e as Error).message}`, { cause: e });
    }
    if (opts.owner) chownSync(tmp, opts.owner.uid, opts.owner.gid);
    renameSync(tmp, d.path);
  }
  return out;
}

/** The root disk of a VM restored from `snapshotDir` into `vmDir` (see prepareRestoreDrives): a new overlay over the snapshot's copy. */
export async function prepareRestoreDisk(snapshotDir: string, vmDir: string, opts: RestoreDiskOptions = {}): Promise<string> {
  const drives = await prepareRestoreDrives(snapshotDir, vmDir, opts);
  const root = drives.find((d) => d.root) ?? drives[0];
  if (!root) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `snapshot in ${snapshotDir} has no drives`);
  return root.path;
}
