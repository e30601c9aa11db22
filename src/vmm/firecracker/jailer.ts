/**
 * Running Firecracker under its jailer (docs/jailer.md): argument building,
 * per-VM uid/gid allocation, chroot preparation and cleanup.
 *
 * Layout: `<chrootBase>/<exec-file-name>/<id>/root/` is the chroot (the jailer
 * creates the same path and leaves an existing one alone). Inside it:
 *   /run/firecracker.socket   API socket (the jailed process creates it)
 *   /boot/kernel, /boot/initrd, /drives/<drive_id>   hard links (copies across filesystems)
 *   /fc-log.fifo, /fc-metrics.fifo                    FIFOs we create, owned by the VM's uid
 *   /vsock.sock                                       vsock host socket (Firecracker creates it)
 *   /snapshot/vm.state, /snapshot/memory              snapshot in/out
 * Next to `root/`, `mvm.json` records the VM directory (the jailed process's
 * command line cannot say where its VM lives), and `.uids/<uid>` files under
 * `<chrootBase>/<exec-file-name>/` are the uid leases.
 *
 * Everything that decides something is a pure function; file-system work goes
 * through a small `JailFs` so tests can inject failures (EXDEV).
 */
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, copyFileSync, existsSync, linkSync, mkdirSync, readFileSync, rmSync, rmdirSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { ErrorCodes, MvmError, validationError } from '../../core/errors.js';
import type { ApiCall, Drive, SnapshotCreateParams, SnapshotLoadParams } from './api-client.js';
import { FC_INSTANCE_ID_RE } from './protocol.js';
import { leaseUid, releaseUidLeases, uidCandidates as candidates } from '../identity.js';

/** Where the jailed Firecracker puts its API socket (its default). */
export const JAIL_API_SOCK = '/run/firecracker.socket';

export interface JailerConfig {
  /** The `jailer` binary. */
  jailerBinary: string;
  /** The Firecracker binary the jailer copies into the chroot and execs (its file name must contain "firecracker"). */
  firecrackerBinary: string;
  /** Default /srv/jailer. Put it on the same filesystem as the VM disks so drives are hard-linked, not copied. */
  chrootBaseDir: string;
  /** uids (and gids) handed to jailed VMs: start .. start+size-1. */
  uidRange: { start: number; size: number };
  cgroupVersion: 1 | 2;
  /** cgroup parent of the VM's cgroup; default `mvm`, the agent's parent, so the jailer joins the agent's per-VM cgroup. */
  parentCgroup: string;
  cgroupRoot: string;
  /** Added to guest RAM for the memory limit (Firecracker itself needs ~5 MiB). */
  memoryOverheadMiB: number;
  /** Network namespace handle to join, e.g. /var/run/netns/<ns>. */
  netns?: string;
  /** `--resource-limit` values, e.g. { 'no-file': 1024 }. */
  resourceLimits?: Record<string, number>;
}

export const defaultJailerConfig = (o: Partial<JailerConfig> & Pick<JailerConfig, 'jailerBinary' | 'firecrackerBinary'>): JailerConfig => ({
  chrootBaseDir: '/srv/jailer',
  uidRange: { start: 100_000, size: 10_000 },
  cgroupVersion: detectCgroupVersion(),
  parentCgroup: 'mvm',
  cgroupRoot: '/sys/fs/cgroup',
  memoryOverheadMiB: 64,
  ...o,
});

/** v2 when the unified hierarchy carries the memory controller, else v1 (hybrid hosts). */
export function detectCgroupVersion(root = '/sys/fs/cgroup'): 1 | 2 {
  try {
    return readFileSync(join(root, 'cgroup.controllers'), 'utf8').includes('memory') ? 2 : 1;
  } catch {
    return 1;
  }
}

export function execFileName(firecrackerBinary: string): string {
  const name = basename(firecrackerBinary);
  if (!name.includes('firecracker')) throw validationError('jailer.firecrackerBinary', `the jailer only execs files whose name contains "firecracker", got ${name}`);
  return name;
}

export function validateJailId(id: string): void {
  if (!FC_INSTANCE_ID_RE.test(id)) throw validationError('id', `jailer ids are 1-64 alphanumerics or hyphens, got ${JSON.stringify(id)}`);
}

/** Host-side paths of one VM's jail. */
export function jailPaths(chrootBaseDir: string, execName: string, id: string) {
  validateJailId(id);
  const jailDir = join(resolve(chrootBaseDir), execName, id);
  const chrootDir = join(jailDir, 'root');
  return {
    jailDir,
    chrootDir,
    meta: join(jailDir, 'mvm.json'),
    leaseDir: join(resolve(chrootBaseDir), execName, '.uids'),
    apiSock: jailHostPath(chrootDir, JAIL_API_SOCK),
  };
}

/** A path as the jailed Firecracker sees it, seen from the host. */
export function jailHostPath(chrootDir: string, jailPath: string): string {
  if (!jailPath.startsWith('/') || jailPath.split('/').includes('..')) throw new MvmError(ErrorCodes.INTERNAL, `not a jail path: ${jailPath}`);
  return join(chrootDir, jailPath);
}

/** `--cgroup` settings for the VM: CPU quota = vCPUs, memory = guest RAM + overhead. */
export function cgroupSettings(version: 1 | 2, vcpu: number, memoryBytes: number): string[] {
  if (version === 2) return [`cpu.max=${vcpu * 100_000} 100000`, `memory.max=${memoryBytes}`];
  return ['cpu.cfs_period_us=100000', `cpu.cfs_quota_us=${vcpu * 100_000}`, `memory.limit_in_bytes=${memoryBytes}`];
}

/** The cgroup directories the jailer creates for these settings (removed at cleanup). */
export function jailCgroupDirs(cfg: Pick<JailerConfig, 'cgroupVersion' | 'cgroupRoot' | 'parentCgroup'>, id: string, settings: string[]): string[] {
  validateJailId(id);
  if (cfg.cgroupVersion === 2) return [join(cfg.cgroupRoot, cfg.parentCgroup, id)];
  const controllers = [...new Set(settings.map((s) => s.slice(0, s.indexOf('.'))))];
  return controllers.map((c) => join(cfg.cgroupRoot, c, cfg.parentCgroup, id));
}

export interface JailerArgsInput {
  id: string;
  uid: number;
  gid: number;
  execFile: string;
  chrootBaseDir: string;
  cgroupVersion: 1 | 2;
  cgroups: string[];
  parentCgroup?: string;
  netns?: string;
  resourceLimits?: Record<string, number>;
  /** Arguments after `--`, for Firecracker (the jailer adds `--id` itself). */
  firecrackerArgs?: string[];
}

/**
 * The jailer command line. No `--daemonize`: the jailer execs Firecracker in
 * place, so the pid we spawned is Firecracker's pid, and Firecracker's stdout
 * (the guest serial console) stays ours.
 */
export function buildJailerArgs(i: JailerArgsInput): string[] {
  validateJailId(i.id);
  const args = [
    '--id', i.id,
    '--exec-file', i.execFile,
    '--uid', String(i.uid),
    '--gid', String(i.gid),
    '--chroot-base-dir', i.chrootBaseDir,
    '--cgroup-version', String(i.cgroupVersion),
  ];
  if (i.parentCgroup) args.push('--parent-cgroup', i.parentCgroup);
  for (const c of i.cgroups) args.push('--cgroup', c);
  if (i.netns) args.push('--netns', i.netns);
  for (const [k, v] of Object.entries(i.resourceLimits ?? {})) args.push('--resource-limit', `${k}=${v}`);
  args.push('--', '--api-sock', JAIL_API_SOCK, ...(i.firecrackerArgs ?? []));
  return args;
}

// ---- uid/gid allocation (the same leases as the QEMU VMMs' per-VM users: src/vmm/identity.ts) ----

/** The uids a VM tries, in order: a deterministic start derived from its id, then every other uid of the range. */
export const uidCandidates = (id: string, range: { start: number; size: number }): number[] => candidates(id, range, 'jailer.uidRange');

/**
 * Lease a uid for `id`: a `<leaseDir>/<uid>` file holding the VM id, created
 * exclusively (O_EXCL), so two VMs can never hold the same uid. A lease whose
 * owner is no longer live (its jail is gone) is taken over. Idempotent per id.
 */
export const allocateUid = (id: string, range: { start: number; size: number }, leaseDir: string, isLive: (ownerId: string) => boolean): number =>
  leaseUid(id, range, leaseDir, isLive, { what: 'jailed VM' });

/** Release every lease held by `id`. */
export const releaseUid = (id: string, leaseDir: string): void => releaseUidLeases(id, leaseDir);

// ---- Path rewriting ----

export type JailFileKind = 'input' | 'fifo' | 'socket' | 'output';

export interface JailFile {
  kind: JailFileKind;
  /** Path on the host (the file we link or copy in, or where an output / socket lands seen from the host). */
  host: string;
  /** Path inside the chroot, as Firecracker sees it. */
  jail: string;
  /** The jailed user must be able to write it (a read-write drive). */
  writable: boolean;
}

/**
 * Rewrite every path in the calls relative to the chroot, and list the files
 * the chroot needs. Every path field Firecracker's API has in these calls is
 * handled; any other field holding a path would escape the jail, so a call we
 * do not know is refused.
 */
/**
 * The logger and metrics FIFOs in the jail: the files to create (owned by the jailed user) and the
 * jail paths Firecracker is given on its command line (config.ts `loggingArgs`).
 */
export function jailSinks(host: { logFifo: string; metricsFifo: string }): { files: JailFile[]; sinks: { logFifo: string; metricsFifo: string } } {
  const sinks = { logFifo: `/${basename(host.logFifo)}`, metricsFifo: `/${basename(host.metricsFifo)}` };
  return {
    sinks,
    files: [
      { kind: 'fifo', host: host.logFifo, jail: sinks.logFifo, writable: true },
      { kind: 'fifo', host: host.metricsFifo, jail: sinks.metricsFifo, writable: true },
    ],
  };
}

export function jailCalls(calls: ApiCall[]): { calls: ApiCall[]; files: JailFile[] } {
  const files: JailFile[] = [];
  const seen = new Map<string, string>();
  const put = (kind: JailFileKind, host: string, jail: string, writable: boolean): string => {
    const prev = seen.get(jail);
    if (prev !== undefined && prev !== host) throw new MvmError(ErrorCodes.INTERNAL, `two host files map to ${jail} in the jail: ${prev} and ${host}`);
    if (prev === undefined) files.push({ kind, host, jail, writable });
    seen.set(jail, host);
    return jail;
  };
  const out = calls.map((c): ApiCall => {
    const b = c.body as Record<string, unknown> | undefined;
    if (!b || c.method === 'GET') return c;
    switch (c.path) {
      case '/boot-source': {
        const nb = { ...b };
        nb.kernel_image_path = put('input', String(b.kernel_image_path), '/boot/kernel', false);
        if (b.initrd_path) nb.initrd_path = put('input', String(b.initrd_path), '/boot/initrd', false);
        return { ...c, body: nb };
      }
      case '/logger':
        return b.log_path ? { ...c, body: { ...b, log_path: put('fifo', String(b.log_path), `/${basename(String(b.log_path))}`, true) } } : c;
      case '/metrics':
        return { ...c, body: { ...b, metrics_path: put('fifo', String(b.metrics_path), `/${basename(String(b.metrics_path))}`, true) } };
      case '/vsock':
        return { ...c, body: { ...b, uds_path: put('socket', String(b.uds_path), '/vsock.sock', true) } };
      case '/snapshot/create': {
        const p = b as unknown as SnapshotCreateParams;
        return {
          ...c,
          body: { ...b, snapshot_path: put('output', p.snapshot_path, '/snapshot/vm.state', true), mem_file_path: put('output', p.mem_file_path, '/snapshot/memory', true) },
        };
      }
      case '/snapshot/load': {
        const p = b as unknown as SnapshotLoadParams;
        const nb: SnapshotLoadParams = { ...p, snapshot_path: put('input', p.snapshot_path, '/snapshot/vm.state', false) };
        if (p.mem_backend) {
          if (p.mem_backend.backend_type !== 'File') throw new MvmError(ErrorCodes.CAPABILITY_UNSUPPORTED, 'only File memory backends are supported when jailed');
          nb.mem_backend = { ...p.mem_backend, backend_path: put('input', p.mem_backend.backend_path, '/snapshot/memory', false) };
        }
        if (p.mem_file_path) nb.mem_file_path = put('input', p.mem_file_path, '/snapshot/memory', false);
        if (p.vsock_override) nb.vsock_override = { uds_path: put('socket', p.vsock_override.uds_path, '/vsock.sock', true) };
        return { ...c, body: nb };
      }
      default:
        if (c.path.startsWith('/drives/')) {
          const d = b as unknown as Partial<Drive>;
          if (!d.path_on_host) return c;
          const id = c.path.slice('/drives/'.length);
          return { ...c, body: { ...b, path_on_host: put('input', d.path_on_host, `/drives/${id}`, d.is_read_only !== true) } };
        }
        if (
          c.path === '/machine-config' || c.path === '/actions' || c.path === '/vm' || c.path === '/balloon' || c.path === '/entropy' ||
          c.path.startsWith('/mmds') || c.path.startsWith('/network-interfaces/') || c.path.startsWith('/balloon/')
        ) {
          return c; // no host paths in these bodies
        }
        throw new MvmError(ErrorCodes.INTERNAL, `cannot jail ${c.method} ${c.path}: unknown path fields`);
    }
  });
  return { calls: out, files };
}

// ---- Chroot preparation ----

/** File-system operations the chroot preparation needs (injectable for tests). */
export interface JailFs {
  link(src: string, dest: string): void;
  copyFile(src: string, dest: string): void;
  chown(path: string, uid: number, gid: number): void;
  chmod(path: string, mode: number): void;
  mkdir(path: string): void;
  mkfifo(path: string): void;
  rm(path: string): void;
  stat(path: string): { mode: number; uid: number; gid: number };
}

export const nodeJailFs: JailFs = {
  link: (s, d) => linkSync(s, d),
  copyFile: (s, d) => copyFileSync(s, d),
  chown: (p, u, g) => chownSync(p, u, g),
  chmod: (p, m) => chmodSync(p, m),
  mkdir: (p) => mkdirSync(p, { recursive: true }),
  mkfifo: (p) => {
    const r = spawnSync('mkfifo', ['-m', '600', p], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`mkfifo ${p}: ${(r.stderr || r.error?.message || '').trim()}`);
  },
  rm: (p) => rmSync(p, { force: true, recursive: true }),
  stat: (p) => statSync(p),
};

export interface PreparedFile {
  file: JailFile;
  how: 'linked' | 'copied' | 'created' | 'dir';
}

/**
 * Put every file the calls need into the chroot: inputs hard-linked (copied
 * when the link would cross filesystems, EXDEV, or a read-only input is not
 * readable by the jailed user), FIFOs created and owned by the VM's uid,
 * directories for sockets and outputs owned by it. A read-write drive is
 * never silently copied: the guest would write to the copy, not the disk.
 */
export function prepareChroot(chrootDir: string, files: JailFile[], uid: number, gid: number, fs: JailFs = nodeJailFs): PreparedFile[] {
  const done: PreparedFile[] = [];
  fs.mkdir(chrootDir);
  const runDir = jailHostPath(chrootDir, dirname(JAIL_API_SOCK));
  fs.mkdir(runDir);
  fs.chown(runDir, uid, gid);
  for (const f of files) {
    const dest = jailHostPath(chrootDir, f.jail);
    const parent = dirname(dest);
    if (parent !== chrootDir) {
      fs.mkdir(parent);
      fs.chown(parent, uid, gid);
    }
    switch (f.kind) {
      case 'input': {
        fs.rm(dest);
        let how: PreparedFile['how'] = 'linked';
        const st = fs.stat(f.host);
        const readableByJail = (st.mode & 0o004) !== 0 || (st.uid === uid && (st.mode & 0o400) !== 0) || (st.gid === gid && (st.mode & 0o040) !== 0);
        if (!f.writable && !readableByJail) {
          fs.copyFile(f.host, dest); // do not chmod a shared image; give the VM its own readable copy
          how = 'copied';
        } else {
          try {
            fs.link(f.host, dest);
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
            if (f.writable) {
              throw new MvmError(
                ErrorCodes.VMM_ERROR,
                `read-write drive ${f.host} is on another filesystem than the jail ${chrootDir}; a copy would lose the guest's writes (put the jailer's chroot base on the VM data filesystem)`,
                { details: { step: 'jail', file: f.host, errno: 'EXDEV' } },
              );
            }
            fs.copyFile(f.host, dest);
            how = 'copied';
          }
        }
        if (f.writable) fs.chown(dest, uid, gid); // per-VM disk: the jailed user reads and writes it
        else if (how === 'copied') {
          fs.chown(dest, uid, gid);
          fs.chmod(dest, 0o400);
        }
        done.push({ file: f, how });
        break;
      }
      case 'fifo':
        fs.rm(dest);
        fs.mkfifo(dest);
        fs.chown(dest, uid, gid);
        fs.chmod(dest, 0o600);
        done.push({ file: f, how: 'created' });
        break;
      case 'socket':
        fs.rm(dest); // Firecracker refuses to bind over an existing file
        done.push({ file: f, how: 'dir' });
        break;
      case 'output':
        fs.rm(dest);
        done.push({ file: f, how: 'dir' });
        break;
    }
  }
  return done;
}

/**
 * Remove a VM's jail: the jail directory (chroot with its links, FIFOs and
 * device nodes; hard links go, the VM's disks stay), the jailer's cgroup
 * directories and the uid lease. Idempotent; call once the process is gone.
 */
export async function cleanupJail(p: { jailDir: string; leaseDir: string; id: string; cgroupDirs: string[] }): Promise<void> {
  if (existsSync(p.jailDir)) rmSync(p.jailDir, { recursive: true, force: true });
  for (const d of p.cgroupDirs) {
    for (let i = 0; i < 20 && existsSync(d); i++) {
      try {
        rmdirSync(d);
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
  releaseUid(p.id, p.leaseDir);
}
