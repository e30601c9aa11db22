/**
 * The node agent port: what the controller asks of a node. In standalone mode
 * the agent runs in the service process (src/agent); in cluster mode it is the
 * DaemonSet and the controller reaches it through the store (CR status) and an
 * authenticated endpoint for console and metrics.
 */
import type { MicroVM } from '../microvm.js';
import type { MicroVMSpecT, VmMetricsT } from '../schema.js';
import type { GuestSession } from './guest.js';
import type { Taint } from '../placement.js';

export type { Taint } from '../placement.js';

/** `suspended`: no VMM, the VM's memory and device state complete on disk (a start resumes them). */
export type ActualState = 'absent' | 'starting' | 'running' | 'paused' | 'stopped' | 'failed' | 'suspended';

export interface ActualVm {
  id: string;
  state: ActualState;
  pid?: number;
  accel?: string;
  driver?: string;
  ip?: string;
  interfaces?: Array<{ name: string; ip: string; prefix: number; gateway: string; mac: string; tap: string }>;
  /** Guest printed its readiness marker. */
  ready: boolean;
  startedAt?: string;
  readyAt?: string;
  bootMs?: { vmm: number; guestReady: number; network?: number };
  /** The guest agent that answered in the running guest. */
  guestAgent?: { version: string };
  /** The boot deadline passed and the guest is still not ready (the service keeps such VMs by setting). */
  bootTimedOut?: string;
  /** Why the VM failed (state=failed). */
  reason?: string;
  message?: string;
  config?: Record<string, unknown>;
}

export interface NodeInfo {
  name: string;
  cpus: number;
  memoryMiB: number;
  drivers: string[];
  accel: string;
  /** Node labels (nodeSelector, topology keys); the scheduler adds capability labels from drivers/accel. */
  labels: Record<string, string>;
  ready: boolean;
  /** Cordoned (kubectl cordon / Node.spec.unschedulable): no new VMs, running ones stay. */
  unschedulable?: boolean;
  taints?: Taint[];
  /** What VMs may use (capacity minus system reservations); default cpus / memoryMiB. */
  allocatable?: { cpus: number; memoryMiB: number };
}

/** What a node needs to build one template version (core/templates.ts, ADR 0021). */
export interface TemplateBuildSpec {
  templateId: string;
  version: number;
  tenant: string;
  name: string;
  vcpu: number;
  memory: string;
  kernel?: MicroVMSpecT['kernel'];
  rootfs?: MicroVMSpecT['rootfs'];
  env?: Record<string, string>;
  files?: NonNullable<MicroVMSpecT['files']>;
  command?: string[];
  readiness: { agent: true } | { command: string[]; timeout?: string };
  bootTimeoutMs: number;
}

export interface TemplateBuildResult {
  node: string;
  driver: string;
  memoryBytes: number;
  diskBytes: number;
  /** Build steps and their durations (ms). */
  timings: Array<{ name: string; ms: number }>;
}

export interface AgentEvent {
  id: string;
  kind: 'ready' | 'exited' | 'started' | 'stopped' | 'boot-timeout';
  message: string;
}

export interface NodeAgent {
  readonly nodeName: string;
  info(): Promise<NodeInfo>;
  /** Re-adopt running VMMs and find leftovers; called once at start-up. */
  start(): Promise<void>;
  observe(id: string): ActualVm;
  /** Ids of every VM this node has any resource of (dirs, processes). */
  known(): Promise<string[]>;
  /** Idempotent: boots the VM if it is not running; returns once the VMM runs. */
  ensureRunning(vm: MicroVM): Promise<ActualVm>;
  /** Idempotent: graceful stop, then kill; releases runtime resources (keeps disks). */
  ensureStopped(id: string, timeoutMs?: number): Promise<void>;
  /** Idempotent: removes every resource of the VM on this node (process, cgroup, tap, files). */
  ensureAbsent(id: string): Promise<void>;
  /** Console: read from a byte offset, and follow new output. */
  consolePath(id: string): string | undefined;
  /**
   * Cluster mode (the API's client of the node agents, src/agent/endpoint/client.ts): the console
   * streamed from the VM's node, where no local file exists: `tail` bytes, then (follow) new output.
   */
  streamConsole?(vm: MicroVM, o: { tail: number; follow: boolean; signal?: AbortSignal }): AsyncIterable<Buffer>;
  /** Freeze / unfreeze the guest (vCPUs stop; memory stays). */
  pause(id: string): Promise<void>;
  resume(id: string): Promise<void>;
  /**
   * Suspend to disk: memory and device state into the VM's directory, then the VMM exits (its
   * network stays, so a resume keeps IP and MAC). A later `ensureRunning` resumes it with the same
   * identity. `cancelSuspend` (a resume that arrives meanwhile) makes it fail with CONFLICT
   * (details.cancelled) and leaves the VM as it was. Idempotent once suspended.
   */
  suspend?(id: string): Promise<{ sizeBytes: number; durationMs: number }>;
  cancelSuspend?(id: string): void;
  /** Drop a suspended VM's memory on disk (a stop of a Suspended VM: the next start boots). */
  discardSuspend?(id: string): Promise<void>;
  /** Bytes the VM's NICs moved so far (rx + tx), for the idle clock; undefined when not running here. */
  netBytes?(id: string): number | undefined;
  /**
   * Memory + device state and a copy-on-write copy of the disks into this node's snapshot
   * store under `snapshotId`. The VM ends in the state it was in (running or paused).
   */
  snapshot(id: string, snapshotId: string): Promise<{ sizeBytes: number; driver: string; durationMs: number }>;
  /**
   * The guest agent of a VM running on this node (exec, files, port forwarding): 409
   * ILLEGAL_TRANSITION when it does not run, AGENT_UNAVAILABLE when its guest has no agent.
   */
  guest?(vm: MicroVM): Promise<GuestSession>;
  /** Why this node cannot restore the snapshot (its files, driver, VMM version, jailing), or undefined. */
  restoreRefusal?(snapshotId: string): Promise<string | undefined>;
  /**
   * Build a template version on this node: boot, readiness, command, snapshot of the device state
   * with the RAM kept as a file, VM discarded. A failure raises an error whose details name the
   * step and carry the console tail; nothing of the build is left.
   */
  buildTemplate?(spec: TemplateBuildSpec): Promise<TemplateBuildResult>;
  /** Remove a template's files (one version, or all) from this node. Idempotent. */
  deleteTemplate?(templateId: string, version?: number): Promise<void>;
  /** Whether this node has the files of a template version. */
  hasTemplate?(templateId: string, version: number): Promise<boolean>;
  /** Remove a snapshot's files from this node. Idempotent. */
  deleteSnapshot(snapshotId: string): Promise<void>;
  metrics(vm: MicroVM): Promise<VmMetricsT>;
  onEvent(cb: (e: AgentEvent) => void): () => void;
  shutdown(): Promise<void>;
}
