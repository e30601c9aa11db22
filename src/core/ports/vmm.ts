/**
 * The VMM driver port. Adapters: src/vmm/qemu (QEMU microvm + QMP) and
 * src/vmm/firecracker (Firecracker API + jailer). One contract suite
 * (test/contract/vmm.contract.ts) runs against every adapter; a driver declares
 * what it supports in `capabilities`, and tests of missing capabilities skip.
 */

export interface VmmCapabilities {
  /** Driver name: 'qemu' | 'firecracker'. */
  driver: string;
  /** Acceleration this driver will use on this host ('kvm' | 'tcg' | 'none' when it cannot run). */
  accel: string;
  /** The driver can run guests on this host at all (binary present, KVM usable where required). */
  available: boolean;
  /** Why not available, when available=false. */
  unavailableReason?: string;
  pause: boolean;
  snapshot: boolean;
  /** Disk formats the driver can attach. */
  diskFormats: Array<'qcow2' | 'raw'>;
  /** VMM version string (recorded in snapshots). */
  version: string;
}

export interface DriveSpec {
  id: string;
  path: string;
  format: 'qcow2' | 'raw';
  readOnly: boolean;
  /** The root device (becomes /dev/vda). */
  root: boolean;
}

export interface NicSpec {
  id: string;
  /** Host tap device name. */
  tap: string;
  mac: string;
}

export interface LaunchSpec {
  id: string;
  name: string;
  vcpu: number;
  memoryMiB: number;
  kernelPath: string;
  initrdPath?: string;
  /** Full kernel command line (the agent builds it). */
  cmdline: string;
  drives: DriveSpec[];
  nics: NicSpec[];
  /** The VM's own directory: sockets, console log, pid file, VMM log live here. */
  vmDir: string;
  /**
   * cgroup `cgroup.procs` files the VMM process must join before it allocates
   * guest memory (the driver joins them in a wrapper before exec).
   */
  cgroupProcs: string[];
  /** Network namespace (path) the VMM must run in, where its tap devices live. */
  netnsPath?: string;
  /** Restore from this snapshot instead of a cold boot. */
  restoreFrom?: SnapshotFiles;
  /**
   * Guest RAM in a file (on tmpfs): `shared` — the VM's RAM is the file (a template being built, a VM
   * that may be forked: its memory can be snapshotted without copying it through a stream);
   * private — a copy-on-write view of the file (a clone of a template). A restore takes this from
   * its snapshot.
   */
  memoryFile?: { path: string; shared: boolean };
  /**
   * Attach the guest agent's channel (docs/guest-agent-protocol.md): a virtio-serial port under
   * QEMU, a vsock device under Firecracker. A restore follows its snapshot (the devices are part of
   * the saved machine), whatever this says.
   */
  guestAgent?: boolean;
  /**
   * The VM's own VMM user (ADR 0023): the VMM drops to this uid/gid once set up. Absent: the
   * driver's default (the shared VMM user, or the jailer's per-VM uid under Firecracker).
   */
  runAs?: { uid: number; gid: number };
}

/** How the host reaches a VM's guest agent. */
export type GuestChannel =
  /** A Unix socket whose other end is the guest's virtio-serial port (QEMU chardev). */
  | { kind: 'unix'; path: string }
  /** Firecracker's hybrid vsock: connect to `path`, write `CONNECT <port>\n`, read `OK <port>\n`. */
  | { kind: 'firecracker-vsock'; path: string; port: number };

export interface SnapshotFiles {
  /** Directory holding the snapshot's files. */
  dir: string;
  /**
   * The guest RAM is not in the snapshot's stream but in this file (a template's or a fork's
   * frozen memory): a restore maps it copy-on-write instead of reading it.
   */
  sharedMemoryFile?: string;
  /** Driver-specific files (memory/state). */
  memoryFile: string;
  stateFile?: string;
}

export type VmmState = 'booting' | 'running' | 'paused' | 'shutdown' | 'exited';

export interface VmmExit {
  code: number | null;
  signal: string | null;
  /** Human-readable reason, e.g. "VMM process 1234 was killed by SIGKILL". */
  reason: string;
}

export interface VmmStats {
  cpuSeconds: number;
  memoryRssBytes: number;
  /** The guest's memory size as the VMM reports it (QMP query-memory-size-summary); undefined when it cannot tell. */
  guestMemoryBytes?: number;
  block: Array<{ device: string; readBytes: number; writeBytes: number; readOps: number; writeOps: number }>;
}

/** A running (or adopted) VMM process. */
export interface VmmInstance {
  readonly id: string;
  readonly pid: number;
  readonly accel: string;
  readonly driver: string;
  /** The file the guest's serial console is written to. */
  readonly consolePath: string;
  /** The guest agent's channel, when the VM has one. */
  readonly guestChannel?: GuestChannel;
  /** Effective VMM configuration (QEMU argv, or the Firecracker API calls), for inspection. */
  readonly config: Record<string, unknown>;
  state(): Promise<VmmState>;
  /** Graceful stop (ACPI power-down / Ctrl-Alt-Del), then kill after timeoutMs. */
  stop(timeoutMs: number): Promise<void>;
  kill(): Promise<void>;
  /** Resolves when the VMM process is gone (however it went). */
  readonly exited: Promise<VmmExit>;
  stats(): Promise<VmmStats>;
  pause?(): Promise<void>;
  resume?(): Promise<void>;
  /**
   * Write memory + device state into `dir`; the VM is left paused. A VM whose RAM is a shared file
   * (LaunchSpec.memoryFile) writes only its device state when `memoryTo` is given: its RAM file is
   * copied to `memoryTo` while paused (a fork), or, with `memoryTo` equal to its own RAM file, left
   * where it is (a template whose VM is discarded afterwards).
   */
  snapshot?(dir: string, opts?: SnapshotOptions): Promise<SnapshotFiles>;
}

export interface SnapshotOptions {
  memoryTo?: string;
  /**
   * Suspend to disk: no disk copies (the VM's own disks stay where they are, the VMM exits after
   * this and a resume reopens them), and the VM is left as the migration left it (QEMU
   * `postmigrate`, disks inactive: the guest never runs again in this process).
   */
  inPlace?: boolean;
  /** Abort the write (QEMU `migrate_cancel`): the snapshot fails with CONFLICT and the VM runs as before. */
  signal?: AbortSignal;
}

export interface VmmDriver {
  readonly name: string;
  capabilities(): Promise<VmmCapabilities>;
  /** Spawn the VMM detached from the service and boot (or restore) the guest. */
  launch(spec: LaunchSpec): Promise<VmmInstance>;
  /**
   * Re-attach to a VMM left running by an earlier service process, found by
   * its vmDir. Returns null when no live VMM of this VM exists.
   */
  adopt(id: string, vmDir: string): Promise<VmmInstance | null>;
  /**
   * Give a VM restored from a snapshot its own writable root disk backed by the
   * snapshot's disk copy (two clones never share a writable disk).
   */
  prepareRestoreDisk?(snapshotDir: string, vmDir: string, owner?: { uid: number; gid: number }): Promise<DriveSpec>;
  /** The SnapshotFiles of a snapshot directory written by `VmmInstance.snapshot`. */
  snapshotFiles?(snapshotDir: string): SnapshotFiles;
  /**
   * Why this host cannot restore the snapshot in `snapshotDir` whatever the VM (another VMM
   * version, CPU, acceleration, jailed vs un-jailed), or undefined: checked at admission, so an
   * incompatible restore is refused before a VM is created.
   */
  restoreRefusal?(snapshotDir: string): Promise<string | undefined>;
  /** Pids of live VMM processes of this driver whose VM directory lies under `root`. */
  findProcesses(root: string): Promise<Array<{ pid: number; id: string; vmDir: string }>>;
}
