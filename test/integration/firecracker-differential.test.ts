/**
 * Differential test of the protocol-enforcing Firecracker peer (test/support/firecracker-peer.ts)
 * against the real Firecracker binary (issue 18): the same request sequences, error cases
 * included, each sent to a fresh peer and to a fresh real process with equivalent files (the
 * default guest's vmlinux, small raw disks made here, FIFOs and sockets in the process's own
 * directory), comparing for every request the HTTP status and whether a `fault_message` came
 * back (not its wording), the `state` of `GET /` and the top-level keys of JSON answers to GETs,
 * whether the process is still running at the end (and its exit code if not), and the exit code
 * of a process that refuses its command line.
 *
 * The real binary is found by the harness's realFirecracker() (MVM_TEST_FIRECRACKER_DIR, else
 * <repo>/../shared/firecracker); the test skips with a reason without it, without /dev/kvm or
 * without root (the taps of the driver's sequences live in a network namespace made here).
 * On this nested-PVM host the guest never boots and a started vCPU spins, so every sequence
 * pauses right after InstanceStart / a resuming snapshot load, the real process runs at the lowest
 * CPU priority, and every process is killed at the end of its sequence (and in `after`).
 *
 * Differences are tolerated only per request with a reason written next to it; every tolerated
 * difference is printed as a diagnostic with both fault texts. MVM_FCDIFF_REPORT=<file> writes
 * every answer of both sides as JSON.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, truncateSync, writeFileSync, closeSync, openSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { LaunchSpec } from '../../src/core/ports/vmm.js';
import type { ApiCall } from '../../src/vmm/firecracker/api-client.js';
import { buildBootCalls, buildRestoreCalls, fcFiles, loggingArgs, type FcConfigExtras } from '../../src/vmm/firecracker/config.js';
import { nodeJailFs } from '../../src/vmm/firecracker/jailer.js';
import { FifoReader } from '../../src/vmm/firecracker/metrics.js';
import { relativizeDrives } from '../../src/vmm/firecracker/snapshot.js';
import { sleep } from '../../src/vmm/proc.js';
import { raw, realFirecracker, startApiProcess, stopApiProcess, type ApiProcess } from '../support/firecracker-harness.js';

const fc = realFirecracker();
const skip = !fc
  ? 'no real firecracker binary (set MVM_TEST_FIRECRACKER_DIR, or put it in ../shared/firecracker)'
  : !existsSync('/dev/kvm')
    ? 'no /dev/kvm (Firecracker needs it to create a VM, even one that never boots)'
    : process.getuid?.() !== 0
      ? 'needs root (the taps of the driver sequences, in a network namespace of the test)'
      : undefined;

// Short: Unix socket paths (API, vsock) must fit in 107 bytes.
const root = mkdtempSync(join(tmpdir(), 'fcd-'));
const NETNS = `fcdiff-${process.pid}`;
let netnsMade = false;
let kernel = '';
const live = new Set<ApiProcess>();

type Kind = 'peer' | 'real';

/** Where a sequence runs for one side. */
interface Ctx {
  kind: Kind;
  /** The sequence's directory for this side: the process's cwd. */
  dir: string;
  /** The side's directory holding every sequence's directory (files another sequence made: snapshots). */
  base: string;
}

interface Step {
  method: string;
  path: string;
  /** A string is sent as is; anything else as JSON. */
  body?: unknown;
  chunked?: boolean;
  /** Why a difference at this request is acceptable; without it any difference fails the test. */
  tolerate?: string;
}

interface Sequence {
  name: string;
  /** Command-line arguments after `--api-sock` (default `--id fcd-<name>`). */
  args?: (c: Ctx) => string[];
  steps: (c: Ctx) => Step[];
  /** FIFOs (relative to the directory) to drain while the process runs, as the driver does. */
  fifos?: string[];
  /** Why a difference in whether the process is running at the end is acceptable. */
  tolerateEnd?: string;
}

interface Answer {
  status: number;
  fault: boolean;
  text: string;
  /** `state` of GET /. */
  state?: string;
  /** Top-level keys of a JSON object answering a GET. */
  keys?: string;
}

interface Run {
  steps: Step[];
  startupExit?: number | string;
  answers: Answer[];
  /** `running`, or `exited <code>`. */
  end: string;
  output: string;
}

// ---------------------------------------------------------------- files

const disk = (c: Ctx, name: string, mib = 4): string => {
  const p = join(c.dir, name);
  if (!existsSync(p)) {
    closeSync(openSync(p, 'w'));
    truncateSync(p, mib * 1024 * 1024);
  }
  return p;
};
const fifo = (c: Ctx, name: string): string => {
  const p = join(c.dir, name);
  if (!existsSync(p)) nodeJailFs.mkfifo(p);
  return p;
};
const file = (c: Ctx, name: string, content: string | Buffer): string => {
  const p = join(c.dir, name);
  writeFileSync(p, content);
  return p;
};

// ---------------------------------------------------------------- steps

const put = (path: string, body?: unknown, more: Partial<Step> = {}): Step => ({ method: 'PUT', path, body, ...more });
const patch = (path: string, body?: unknown, more: Partial<Step> = {}): Step => ({ method: 'PATCH', path, body, ...more });
const get = (path: string, more: Partial<Step> = {}): Step => ({ method: 'GET', path, ...more });
const machine = put('/machine-config', { vcpu_count: 1, mem_size_mib: 128 });
const bootSource = (): Step => put('/boot-source', { kernel_image_path: kernel, boot_args: 'console=ttyS0 reboot=k panic=1' });
const rootDrive = (c: Ctx, readOnly = false): Step => put('/drives/root', { drive_id: 'root', path_on_host: disk(c, 'root.raw'), is_root_device: true, is_read_only: readOnly });
const start = put('/actions', { action_type: 'InstanceStart' });
const pause = patch('/vm', { state: 'Paused' });
const resume = patch('/vm', { state: 'Resumed' });
const action = (t: string): Step => put('/actions', { action_type: t });
/** Configure, start and pause at once (the guest cannot boot on this host: its vCPU would spin). */
const bootAndPause = (c: Ctx): Step[] => [machine, bootSource(), rootDrive(c), start, pause];
const snapCreate = (c: Ctx, name: string, more: Record<string, unknown> = {}): Step =>
  put('/snapshot/create', { snapshot_type: 'Full', snapshot_path: join(c.dir, `${name}.state`), mem_file_path: join(c.dir, `${name}.mem`), ...more });
const fromCall = (a: ApiCall): Step => ({ method: a.method, path: a.path, body: a.body });

/** The pre-boot calls the driver can make, each valid on a fresh process (net needs its tap: the netns). */
const preBootCalls = (c: Ctx): Step[] => [
  machine,
  patch('/machine-config', { vcpu_count: 1 }),
  bootSource(),
  rootDrive(c),
  put('/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: 'fcdtap9' }),
  put('/vsock', { guest_cid: 3, uds_path: join(c.dir, 'v-after.sock') }),
  put('/entropy', {}),
  put('/balloon', { amount_mib: 1, deflate_on_oom: false }),
  put('/mmds/config', { network_interfaces: ['eth0'] }),
];

// ---------------------------------------------------------------- the driver's own sequences

const BOOT_ID = 'fcd-driver-boot';
function driverSpec(c: Ctx, id: string, tap: string): LaunchSpec {
  return {
    id,
    name: id,
    vcpu: 1,
    memoryMiB: 128,
    kernelPath: kernel,
    cmdline: `console=ttyS0 reboot=k panic=1 root=/dev/vda rw mvm.id=${id}`,
    drives: [
      { id: 'root', path: disk(c, 'root.raw'), format: 'raw', readOnly: false, root: true },
      { id: 'data-1', path: disk(c, 'data.raw', 2), format: 'raw', readOnly: true, root: false },
    ],
    nics: [{ id: 'net-0', tap, mac: '02:FC:00:00:00:42' }],
    vmDir: c.dir,
    cgroupProcs: [],
  };
}
const bucket = { size: 1000, refill_time: 100 };
const driverExtras: FcConfigExtras = {
  vsock: { guestCid: 3 },
  mmds: { data: { latest: { 'meta-data': { 'instance-id': BOOT_ID } } } },
  balloon: { amountMib: 64, deflateOnOom: true, statsPollingIntervalS: 1 },
  driveRateLimiter: { bandwidth: bucket },
  netRxRateLimiter: { ops: bucket },
  netTxRateLimiter: { bandwidth: bucket },
};
const driverFiles = (c: Ctx, vsock = 'vsock.sock') => {
  const f = fcFiles(c.dir);
  fifo(c, 'fc-log.fifo');
  fifo(c, 'fc-metrics.fifo');
  return { logFifo: f.logFifo, metricsFifo: f.metricsFifo, vsockUds: join(c.dir, vsock) };
};
/** The snapshot the driver's cold-boot sequence takes (on the same side). */
const bootSnap = (c: Ctx) => ({ dir: join(c.base, 'driver-cold-boot'), stateFile: join(c.base, 'driver-cold-boot', 'vm.state'), memoryFile: join(c.base, 'driver-cold-boot', 'memory') });
/** A minimal snapshot (no devices but the root drive, no vsock), taken by `phases-after-boot`. */
const plainSnap = (c: Ctx) => ({ state: join(c.base, 'phases-after-boot', 'full.state'), mem: join(c.base, 'phases-after-boot', 'full.mem') });
const loadBody = (state: string, mem: string, more: Record<string, unknown> = {}) => ({ snapshot_path: state, mem_backend: { backend_type: 'File', backend_path: mem }, ...more });

/** A restore's own disks at the paths the snapshot recorded (relative to the cwd), as a clone has them. */
const cloneDisks = (c: Ctx): void => {
  disk(c, 'root.raw');
  disk(c, 'data.raw', 2);
};

const SEQUENCES: Sequence[] = [
  {
    name: 'get-routes-fresh',
    steps: () => [
      get('/'),
      get('/version'),
      get('/machine-config'),
      get('/vm/config'),
      get('/balloon'),
      get('/balloon/statistics'),
      get('/mmds'),
      get('/drives/root'),
      get('/network-interfaces/eth0'),
      get('/logger'),
      get('/metrics'),
      get('/vsock'),
      get('/vm'),
      get('/actions'),
      get('/snapshot/create'),
      get('/nothing'),
      get('/version/x'),
      get('/machine-config/'),
      get('/?x=1'),
      { method: 'DELETE', path: '/vm' },
      { method: 'POST', path: '/actions', body: { action_type: 'InstanceStart' } },
    ],
  },
  {
    name: 'driver-cold-boot',
    // loggingArgs: the driver names its logger and metrics FIFOs on the command line.
    args: (c) => ['--id', BOOT_ID, ...loggingArgs(driverFiles(c), driverExtras)],
    fifos: ['fc-log.fifo', 'fc-metrics.fifo'],
    steps: (c) => {
      const spec = driverSpec(c, BOOT_ID, 'fcdtap0');
      const calls = relativizeDrives(buildBootCalls(spec, driverFiles(c), driverExtras), c.dir);
      return [
        ...calls.map(fromCall),
        pause,
        get('/'),
        get('/machine-config'),
        get('/vm/config'),
        get('/balloon'),
        get('/balloon/statistics'),
        patch('/balloon', {
          amount_mib: 32,
        }, {
          tolerate:
            "guest simulation: the peer's guest has loaded its virtio-balloon driver, which activates the device, so Firecracker takes a new target (204); the real guest never boots on this host, so its device is never activated and the update is refused (\"Device not activated yet\")",
        }),
        patch('/balloon/statistics', { stats_polling_interval_s: 2 }),
        patch('/drives/root', { drive_id: 'root', path_on_host: 'root.raw' }),
        patch('/drives/data_1', { drive_id: 'data_1', rate_limiter: { ops: bucket } }),
        patch('/network-interfaces/net_0', { iface_id: 'net_0', rx_rate_limiter: { bandwidth: bucket } }),
        patch('/drives/root', { drive_id: 'root' }),
        patch('/network-interfaces/net_0', { iface_id: 'net_0' }),
        action('FlushMetrics'),
        get('/mmds'),
        patch('/mmds', { latest: { extra: 'x' } }),
        put('/mmds', { latest: { 'meta-data': { 'instance-id': BOOT_ID } } }),
        resume,
        pause,
        // The driver's snapshot() call, into the sequence directory (the restore sequences load it).
        put('/snapshot/create', { snapshot_type: 'Full', snapshot_path: join(c.dir, 'vm.state'), mem_file_path: join(c.dir, 'memory') }),
        get('/'),
      ];
    },
  },
  {
    name: 'driver-restore',
    args: (c) => ['--id', 'fcd-driver-restore', ...loggingArgs(driverFiles(c, 'vsock2.sock'), { vsock: { guestCid: 3 } })],
    fifos: ['fc-log.fifo', 'fc-metrics.fifo'],
    steps: (c) => {
      cloneDisks(c);
      const spec = driverSpec(c, 'fcd-driver-restore', 'fcdtap1');
      // network_overrides (a new tap) and vsock_override (a new socket), as for a clone.
      const calls = buildRestoreCalls(spec, driverFiles(c, 'vsock2.sock'), bootSnap(c), { vsock: { guestCid: 3 } });
      return [
        ...calls.map(fromCall),
        pause,
        get('/'),
        get('/machine-config'),
        get('/vm/config'),
        get('/balloon'),
        get('/mmds'),
        start,
        put('/snapshot/load', calls[0]!.body),
        machine,
        put('/drives/root', { drive_id: 'root', path_on_host: 'root.raw', is_root_device: true, is_read_only: false }),
        action('FlushMetrics'),
        resume,
        pause,
        snapCreate(c, 'again'),
        get('/'),
      ];
    },
  },
  {
    name: 'phases-before-boot',
    steps: (c) => [
      pause,
      resume,
      action('SendCtrlAltDel'),
      action('FlushMetrics'),
      snapCreate(c, 's'),
      patch('/drives/root', { drive_id: 'root', path_on_host: disk(c, 'root.raw') }),
      patch('/network-interfaces/eth0', { iface_id: 'eth0' }),
      patch('/balloon', { amount_mib: 1 }),
      patch('/balloon/statistics', { stats_polling_interval_s: 1 }),
      get('/balloon/statistics'),
      // InstanceStart without a boot source, also once a machine is configured.
      start,
      machine,
      start,
      get('/'),
    ],
  },
  {
    name: 'phases-after-boot',
    steps: (c) => [
      ...bootAndPause(c),
      get('/'),
      start,
      // Every pre-boot call after boot.
      ...preBootCalls(c),
      put('/snapshot/load', loadBody(join(c.dir, 'none.state'), join(c.dir, 'none.mem'))),
      // The body is parsed before the phase is looked at.
      put('/drives/root-1', { drive_id: 'root-1', path_on_host: disk(c, 'root.raw'), is_root_device: true }),
      put('/machine-config', { vcpu_count: 1 }),
      put('/actions', { action_type: 'InstanceStart', extra: 1 }),
      put('/logger', { log_path: file(c, 'late.log', ''), level: 'Info' }),
      put('/metrics', { metrics_path: file(c, 'late.metrics', '') }),
      // PATCH /vm: both states, twice each; wrong bodies.
      pause,
      resume,
      resume,
      // A snapshot needs a paused microVM.
      snapCreate(c, 'running'),
      pause,
      patch('/vm', { state: 'Running' }),
      patch('/vm', { state: 'paused' }),
      patch('/vm', {}),
      patch('/vm', { state: 'Paused', extra: 1 }),
      patch('/vm'),
      get('/'),
      snapCreate(c, 'full'),
      snapCreate(c, 'diff', { snapshot_type: 'Diff' }),
      snapCreate(c, 'nodir', { snapshot_path: join(c.dir, 'no', 'dir', 'x.state') }),
      snapCreate(c, 'nomemdir', { mem_file_path: join(c.dir, 'no', 'dir', 'x.mem') }),
      put('/snapshot/create', { snapshot_path: join(c.dir, 'x.state') }),
      snapCreate(c, 'badtype', { snapshot_type: 'Partial' }),
      // Post-boot calls on devices that are not there.
      get('/balloon'),
      get('/balloon/statistics'),
      patch('/balloon', { amount_mib: 1 }),
      patch('/drives/nope', { drive_id: 'nope', path_on_host: disk(c, 'root.raw') }),
      patch('/drives/root', { drive_id: 'other', path_on_host: disk(c, 'root.raw') }),
      patch('/drives/root', { drive_id: 'root', path_on_host: join(c.dir, 'missing.raw') }),
      patch('/drives/root', { drive_id: 'root', path_on_host: disk(c, 'root2.raw') }),
      patch('/network-interfaces/nope', { iface_id: 'nope' }),
      // MMDS data store after boot (no MMDS configured).
      get('/mmds'),
      put('/mmds', { a: 1 }),
      patch('/mmds', { b: 2 }),
      get('/mmds'),
      // FlushMetrics without a metrics sink; Ctrl-Alt-Del while paused (the guest cannot react).
      action('FlushMetrics'),
      action('SendCtrlAltDel'),
      action('Nothing'),
      put('/actions', {}),
      get('/'),
    ],
  },
  {
    name: 'phases-metrics-flush',
    args: (c) => ['--id', 'fcd-flush', '--metrics-path', fifo(c, 'm.fifo')],
    fifos: ['m.fifo'],
    steps: (c) => [action('FlushMetrics'), ...bootAndPause(c), action('FlushMetrics'), action('FlushMetrics')],
  },
  {
    name: 'phases-ctrl-alt-del-running',
    steps: (c) => [...bootAndPause(c), resume, action('SendCtrlAltDel')],
    tolerateEnd:
      "guest simulation: the peer's guest reboots on Ctrl-Alt-Del (a booted Linux guest with reboot=k does) and Firecracker then exits; the real guest never boots on this host, so the real process keeps running",
  },
  {
    name: 'phases-boot-without-root',
    steps: (c) => [put('/boot-source', { kernel_image_path: kernel }), start, pause, get('/'), get('/vm/config'), snapCreate(c, 'noroot')],
  },
  {
    name: 'validation-machine-config',
    steps: () => [
      put('/machine-config', { vcpu_count: 2 }),
      put('/machine-config', { mem_size_mib: 128 }),
      put('/machine-config', { vcpu_count: '2', mem_size_mib: 128 }),
      put('/machine-config', { vcpu_count: 1, mem_size_mib: '128' }),
      put('/machine-config', { vcpu_count: -1, mem_size_mib: 128 }),
      put('/machine-config', { vcpu_count: 256, mem_size_mib: 128 }),
      put('/machine-config', { vcpu_count: 1.5, mem_size_mib: 128 }),
      put('/machine-config', { vcpu_count: 0, mem_size_mib: 128 }),
      put('/machine-config', { vcpu_count: 33, mem_size_mib: 128 }),
      put('/machine-config', { vcpu_count: 32, mem_size_mib: 128 }),
      put('/machine-config', { vcpu_count: 3, mem_size_mib: 128, smt: true }),
      put('/machine-config', { vcpu_count: 1, mem_size_mib: 0 }),
      put('/machine-config', { vcpu_count: 1, mem_size_mib: 127, huge_pages: '2M' }),
      put('/machine-config', { vcpu_count: 1, mem_size_mib: 128, huge_pages: '1G' }),
      put('/machine-config', { vcpu_count: 1, mem_size_mib: 128, cpu_template: 'Bogus' }),
      put('/machine-config', { vcpu_count: 1, mem_size_mib: 128, cpu_template: 'None' }),
      put('/machine-config', { vcpu_count: 1, mem_size_mib: 128, smt: 'yes' }),
      put('/machine-config', { vcpu_count: 1, mem_size_mib: 128, track_dirty_pages: true, extra: 1 }),
      put('/machine-config', { vcpu_count: 1, mem_size_mib: 128, track_dirty_pages: null }),
      put('/machine-config', '{"vcpu_count": 1,'),
      put('/machine-config', 'null'),
      put('/machine-config', '[1, 2]'),
      put('/machine-config', ''),
      put('/machine-config'),
      patch('/machine-config', {}),
      patch('/machine-config', { mem_size_mib: 256 }),
      patch('/machine-config', { vcpu_count: 0 }),
      patch('/machine-config', { vcpu_count: 2, smt: true }),
      patch('/machine-config', { bogus: 1 }),
      patch('/machine-config'),
      get('/machine-config'),
      put('/machine-config', { vcpu_count: 2, mem_size_mib: 256, smt: false, track_dirty_pages: true, huge_pages: 'None' }),
      get('/machine-config'),
    ],
  },
  {
    name: 'validation-boot-source',
    steps: (c) => [
      put('/boot-source', {}),
      put('/boot-source', { kernel_image_path: kernel, kernel_args: 'x' }),
      put('/boot-source', { kernel_image_path: 7 }),
      put('/boot-source', { kernel_image_path: join(c.dir, 'nope') }),
      put('/boot-source', { kernel_image_path: c.dir }),
      put('/boot-source', { kernel_image_path: kernel, initrd_path: join(c.dir, 'no-initrd') }),
      put('/boot-source', { kernel_image_path: kernel, boot_args: 42 }),
      // Not an ELF: refused at PUT or at InstanceStart?
      put('/boot-source', { kernel_image_path: file(c, 'not-elf', 'garbage') }),
      put('/boot-source', { kernel_image_path: kernel, initrd_path: file(c, 'initrd', 'x'), boot_args: 'console=ttyS0' }),
      put('/boot-source', { kernel_image_path: kernel }),
      get('/vm/config'),
    ],
  },
  {
    name: 'validation-not-elf-start',
    // A failed InstanceStart leaves the process configurable: a good kernel then boots.
    steps: (c) => [machine, put('/boot-source', { kernel_image_path: file(c, 'not-elf', 'garbage') }), rootDrive(c), start, get('/'), bootSource(), start, pause, get('/')],
  },
  {
    name: 'validation-placeholder-kernel',
    steps: (c) => [
      machine,
      put('/boot-source', { kernel_image_path: file(c, 'zeros', Buffer.alloc(8192)) }),
      rootDrive(c),
      {
        ...start,
        tolerate:
          "test convention: the peer boots its simulated guest from a kernel file of zero bytes, the placeholder the driver's unit and integration tests write (they need no real vmlinux); Firecracker refuses it as not an ELF, as the peer refuses any other non-ELF file (validation-not-elf-start)",
      },
      { ...get('/'), tolerate: 'follows from the placeholder kernel above: the peer runs, Firecracker did not start' },
      { ...pause, tolerate: 'follows from the placeholder kernel above' },
    ],
  },
  {
    name: 'validation-memory-too-small',
    // The default guest vmlinux loads up to ~62 MiB of guest-physical memory.
    steps: (c) => [put('/machine-config', { vcpu_count: 1, mem_size_mib: 32 }), bootSource(), rootDrive(c), start, get('/'), put('/machine-config', { vcpu_count: 1, mem_size_mib: 64 }), start, pause, get('/')],
  },
  {
    name: 'validation-array-bodies',
    steps: () => [
      put('/machine-config', '[1]'),
      put('/machine-config', '[1, 128, false, "None", false, "None", 7]'),
      put('/machine-config', '[2, 256]'),
      get('/machine-config'),
      put('/actions', '["Bogus"]'),
      patch('/vm', '["Paused"]'),
    ],
  },
  {
    name: 'validation-parse-before-phase',
    // Fresh process: the body of a post-boot call is parsed (and refused) before its phase is checked.
    steps: () => [
      patch('/vm', { state: 'Bogus' }),
      patch('/balloon', { amount_mib: 1, bogus: 1 }),
      patch('/balloon/statistics', { bogus: 1 }),
      patch('/balloon/statistics', { stats_polling_interval_s: 1 }),
      patch('/drives/root', { drive_id: 'root', bogus: 1 }),
      patch('/drives/root', { drive_id: 'root' }),
      patch('/network-interfaces/eth0', { iface_id: 'eth0', bogus: 1 }),
      put('/snapshot/create', { snapshot_path: 'a', mem_file_path: 'b', bogus: 1 }),
      put('/snapshot/create', { snapshot_path: 'a' }),
      put('/actions', { action_type: 'FlushMetrics', bogus: 1 }),
      put('/vsock', { guest_cid: 3, uds_path: 'v.sock', bogus: 1 }),
      put('/snapshot/load', { snapshot_path: 'a', mem_backend: { backend_type: 'File', backend_path: 'b', bogus: 1 } }),
      // Boot-specific (a snapshot can no longer be loaded): after the loads.
      put('/entropy', { rate_limiter: { ops: { size: 1, refill_time: 1, bogus: 1 } } }),
      put('/logger', { level: 'warn' }),
      put('/logger', { level: 'TRACE' }),
      put('/logger', { level: 'Warning' }),
      put('/mmds/other', {}),
      put('/snapshot/other', {}),
      get('/balloon/other'),
      get('/balloon/hinting/status'),
      patch('/balloon/hinting/start', {}),
      patch('/balloon/hinting/stop'),
      patch('/balloon/other', { amount_mib: 1 }),
      get('/'),
    ],
  },
  {
    name: 'validation-drives',
    steps: (c) => {
      const d = disk(c, 'root.raw');
      const drive = (id: string, more: Record<string, unknown> = {}) => ({ drive_id: id, path_on_host: d, is_root_device: false, is_read_only: false, ...more });
      return [
        put('/drives/root', drive('other')),
        put('/drives/root-1', drive('root-1')),
        put('/drives/root', drive('root-1')),
        put('/drives/root_1', drive('root-1')),
        put('/drives/', drive('')),
        put('/drives/a/b', drive('a')),
        put('/drives/data', { drive_id: 'data', path_on_host: d, is_read_only: false }),
        put('/drives/data', { drive_id: 'data', path_on_host: d, is_root_device: false }),
        put('/drives/data', { drive_id: 'data', is_root_device: false, is_read_only: false }),
        put('/drives/data', { path_on_host: d, is_root_device: false, is_read_only: false }),
        put('/drives/data', drive('data', { path_on_host: join(c.dir, 'missing.raw') })),
        put('/drives/data', drive('data', { path_on_host: c.dir })),
        put('/drives/data', drive('data', { is_read_only: 'no' })),
        put('/drives/data', drive('data', { cache_type: 'Bogus' })),
        put('/drives/data', drive('data', { io_engine: 'Bogus' })),
        put('/drives/data', drive('data', { rate_limiter: { bandwidth: { size: 1 } } })),
        put('/drives/data', drive('data', { rate_limiter: { bandwidth: { size: 1, refill_time: 1 }, burst: 1 } })),
        put('/drives/data', drive('data', { unknown: 1 })),
        put('/drives/data', drive('data', { socket: join(c.dir, 'vhost.sock') })),
        put('/drives/data', drive('data', { partuuid: 'abc' })),
        put('/drives/data', drive('data', { cache_type: 'Writeback', io_engine: 'Sync' })),
        put('/drives/root', drive('root', { is_root_device: true, is_read_only: true })),
        put('/drives/root', drive('root', { is_root_device: true })),
        put('/drives/root2', drive('root2', { is_root_device: true, path_on_host: disk(c, 'root2.raw') })),
        put('/drives/root', drive('root', { is_root_device: false })),
        put('/drives/root2', drive('root2', { is_root_device: true, path_on_host: disk(c, 'root2.raw') })),
        put('/drives/a1', drive('a1')),
        patch('/drives/a1', { drive_id: 'a1', path_on_host: d }),
        get('/vm/config'),
      ];
    },
  },
  {
    name: 'validation-network',
    steps: () => [
      put('/network-interfaces/eth0', { iface_id: 'eth1', host_dev_name: 'fcdtap2' }),
      put('/network-interfaces/eth-0', { iface_id: 'eth-0', host_dev_name: 'fcdtap2' }),
      put('/network-interfaces/eth0', { iface_id: 'eth0' }),
      put('/network-interfaces/eth0', { host_dev_name: 'fcdtap2' }),
      put('/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: 'fcdtap-name-too-long' }),
      put('/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: '' }),
      put('/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: 'fcdtap2', guest_mac: 'not-a-mac' }),
      put('/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: 'fcdtap2', guest_mac: '02:00:00:00:00:01', bogus: true }),
      put('/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: 'fcdtap2', guest_mac: '02:00:00:00:00:01' }),
      put('/network-interfaces/eth1', { iface_id: 'eth1', host_dev_name: 'fcdtap2' }),
      put('/network-interfaces/eth1', { iface_id: 'eth1', host_dev_name: 'fcdtap3', guest_mac: '02:00:00:00:00:01' }),
      put('/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: 'fcdtap2' }),
      patch('/network-interfaces/eth0', { iface_id: 'eth0' }),
      // MMDS configuration.
      put('/mmds/config', {}),
      put('/mmds/config', { network_interfaces: [] }),
      put('/mmds/config', { network_interfaces: ['nope'] }),
      put('/mmds/config', { network_interfaces: ['eth0'], version: 'V3' }),
      put('/mmds/config', { network_interfaces: ['eth0'], ipv4_address: '10.0.0.1' }),
      put('/mmds/config', { network_interfaces: ['eth0'], ipv4_address: 'nonsense' }),
      put('/mmds/config', { network_interfaces: ['eth0'], bogus: 1 }),
      put('/mmds/config', { network_interfaces: ['eth0'], version: 'V1', ipv4_address: '169.254.170.2' }),
      put('/mmds/config', { network_interfaces: ['eth0'] }),
      get('/vm/config'),
    ],
  },
  {
    name: 'mmds-store-phases',
    // A GET of the data store before boot creates it: it is there after boot.
    steps: (c) => [get('/mmds'), ...bootAndPause(c), get('/mmds'), put('/mmds', { a: 1 }), patch('/mmds', { b: 2 }), get('/mmds')],
  },
  {
    name: 'mmds-store-patched-before-boot',
    // A PATCH before boot creates the (uninitialized) data store, refusing the patch itself.
    steps: (c) => [patch('/mmds', { a: 1 }), ...bootAndPause(c), get('/mmds'), put('/mmds', { a: 1 }), get('/mmds')],
  },
  {
    name: 'mmds-store-put-before-boot',
    steps: (c) => [put('/mmds', { a: 1 }), ...bootAndPause(c), get('/mmds'), patch('/mmds', { b: 2 }), get('/mmds')],
  },
  {
    name: 'mmds-store-configured',
    steps: (c) => [
      put('/network-interfaces/eth0', { iface_id: 'eth0', host_dev_name: 'fcdtap6' }),
      put('/mmds/config', { network_interfaces: ['eth0'] }),
      get('/mmds'),
      patch('/mmds', { a: 1 }),
      ...bootAndPause(c),
      get('/mmds'),
      patch('/mmds', { a: 1 }),
      put('/mmds', { a: 1 }),
      patch('/mmds', { b: { c: null } }),
      get('/mmds'),
    ],
  },
  {
    name: 'balloon-stats-disabled',
    steps: (c) => [
      put('/balloon', { amount_mib: 128, deflate_on_oom: false }),
      ...bootAndPause(c),
      get('/balloon'),
      get('/balloon/statistics'),
      patch('/balloon/statistics', { stats_polling_interval_s: 1 }),
      patch('/balloon/statistics', { stats_polling_interval_s: 0 }),
    ],
  },
  {
    name: 'validation-mmds-store',
    steps: () => [
      get('/mmds'),
      patch('/mmds', { a: 1 }),
      put('/mmds', 'not json'),
      put('/mmds', '"a string"'),
      put('/mmds', '[1,2]'),
      put('/mmds'),
      put('/mmds', { latest: { a: 'b' } }),
      get('/mmds'),
      patch('/mmds', { latest: { c: 'd' } }),
      patch('/mmds', '"str"'),
      get('/mmds'),
      put('/mmds', {}),
      get('/mmds'),
      // The data store is no boot-specific resource... is it?
      get('/'),
    ],
  },
  {
    name: 'validation-vsock-balloon-entropy',
    steps: (c) => [
      put('/vsock', { guest_cid: 3 }),
      put('/vsock', { uds_path: join(c.dir, 'v.sock') }),
      put('/vsock', { guest_cid: 2, uds_path: join(c.dir, 'v.sock') }),
      put('/vsock', { guest_cid: -3, uds_path: join(c.dir, 'v.sock') }),
      put('/vsock', { guest_cid: 3, uds_path: join(c.dir, 'no', 'dir', 'v.sock') }),
      put('/vsock', { guest_cid: 3, uds_path: file(c, 'exists.sock', '') }),
      put('/vsock', { guest_cid: 3, uds_path: join(c.dir, 'v.sock'), vsock_id: 'vsock0' }),
      put('/vsock', { guest_cid: 3, uds_path: join(c.dir, 'v.sock') }),
      put('/vsock', { guest_cid: 4, uds_path: join(c.dir, 'v2.sock') }),
      put('/balloon', { amount_mib: 1 }),
      put('/balloon', { deflate_on_oom: true }),
      put('/balloon', { amount_mib: 1024, deflate_on_oom: true }),
      put('/balloon', { amount_mib: 1, deflate_on_oom: true, stats_polling_interval_s: 70000 }),
      put('/balloon', { amount_mib: 1, deflate_on_oom: true, bogus: 1 }),
      put('/balloon', { amount_mib: 1, deflate_on_oom: true, free_page_hinting: true, free_page_reporting: true }),
      put('/balloon', { amount_mib: 128, deflate_on_oom: true }),
      put('/balloon', { amount_mib: 129, deflate_on_oom: true }),
      put('/balloon', { amount_mib: 1, deflate_on_oom: true, stats_polling_interval_s: 1 }),
      get('/balloon'),
      get('/balloon/statistics'),
      patch('/balloon', { amount_mib: 2 }),
      put('/entropy', { bogus: 1 }),
      put('/entropy', { rate_limiter: { ops: { size: 1 } } }),
      put('/entropy', {}),
      put('/entropy', { rate_limiter: { ops: bucket } }),
      get('/vm/config'),
    ],
  },
  {
    name: 'validation-logger-metrics',
    steps: (c) => [
      put('/logger', { log_path: join(c.dir, 'no', 'dir', 'x.log') }),
      put('/logger', { log_path: join(c.dir, 'x.log'), level: 'Loud' }),
      put('/logger', { log_path: join(c.dir, 'x.log'), bogus: 1 }),
      // A missing file is created (checked by hand on v1.17); lowercase levels.
      put('/logger', { log_path: join(c.dir, 'created.log'), level: 'info', show_level: true, show_log_origin: true }),
      put('/logger', { log_path: join(c.dir, 'created.log'), level: 'Debug' }),
      put('/logger', { level: 'Warning' }),
      put('/logger', {}),
      put('/metrics', {}),
      put('/metrics', { metrics_path: join(c.dir, 'no', 'dir', 'm.json') }),
      put('/metrics', { metrics_path: join(c.dir, 'm.json'), bogus: 1 }),
      put('/metrics', { metrics_path: join(c.dir, 'created.metrics') }),
      put('/metrics', { metrics_path: join(c.dir, 'created.metrics') }),
      get('/vm/config'),
      // Logger and metrics are no boot-specific configuration: a load is still allowed (it then
      // fails on the missing files, which exits the process).
      put('/snapshot/load', loadBody(join(c.dir, 'none.state'), join(c.dir, 'none.mem'))),
    ],
  },
  {
    name: 'validation-actions-routes',
    steps: () => [
      put('/actions', {}),
      put('/actions', { action_type: 'Bogus' }),
      put('/actions', { action_type: 'InstanceStart', extra: 1 }),
      put('/actions', { action_type: 7 }),
      put('/actions'),
      put('/nothing', {}),
      patch('/nothing', {}),
      put('/', {}),
      patch('/', {}),
      put('/version', {}),
      put('/vm', { state: 'Paused' }),
      put('/drives', {}),
      patch('/logger', {}),
      put('/snapshot', {}),
      put('/balloon/statistics', { stats_polling_interval_s: 1 }),
      get('/'),
    ],
  },
  {
    name: 'payload-limits',
    steps: () => [
      put('/mmds', { blob: 'x'.repeat(51_200 - 20) }),
      put('/mmds', { blob: 'x'.repeat(51_300) }),
      put('/machine-config', { vcpu_count: 1, mem_size_mib: 128, pad: 'x'.repeat(60_000) }),
      put('/mmds', { a: 1 }, { chunked: true }),
      get('/'),
    ],
  },
  {
    name: 'cli-max-payload',
    args: () => ['--id', 'fcd-payload', '--http-api-max-payload-size', '1000', '--mmds-size-limit', '500'],
    steps: () => [put('/mmds', { blob: 'x'.repeat(900) }), put('/mmds', { blob: 'x'.repeat(300) }), put('/machine-config', { vcpu_count: 1, mem_size_mib: 128, pad: 'x'.repeat(2000) }), get('/')],
  },
  {
    name: 'cli-driver-logging-then-api',
    args: (c) => ['--id', 'fcd-cli-log', ...loggingArgs({ logFifo: fifo(c, 'log.fifo'), metricsFifo: fifo(c, 'metrics.fifo') })],
    fifos: ['log.fifo', 'metrics.fifo'],
    steps: (c) => [get('/vm/config'), put('/logger', { log_path: file(c, 'api.log', ''), level: 'Info' }), put('/metrics', { metrics_path: file(c, 'api.metrics', '') }), get('/')],
  },
  {
    name: 'cli-sinks-missing-files',
    args: (c) => ['--id', 'fcd-cli-missing', '--log-path', join(c.dir, 'new.log'), '--level', 'Debug', '--metrics-path', join(c.dir, 'new.metrics')],
    steps: () => [get('/')],
  },
  {
    name: 'cli-log-path-no-dir',
    args: (c) => ['--id', 'fcd-cli-nodir', '--log-path', join(c.dir, 'no', 'dir', 'x.log')],
    steps: () => [get('/')],
  },
  {
    name: 'cli-metrics-path-no-dir',
    args: (c) => ['--id', 'fcd-cli-nodir2', '--metrics-path', join(c.dir, 'no', 'dir', 'x.metrics')],
    steps: () => [get('/')],
  },
  { name: 'cli-bad-level', args: (c) => ['--id', 'fcd-cli-level', '--log-path', fifo(c, 'l.fifo'), '--level', 'Loud'], fifos: ['l.fifo'], steps: () => [get('/')] },
  { name: 'cli-lowercase-level', args: (c) => ['--id', 'fcd-cli-level2', '--log-path', fifo(c, 'l.fifo'), '--level', 'warning', '--show-level'], fifos: ['l.fifo'], steps: () => [get('/')] },
  { name: 'cli-bad-id', args: () => ['--id', 'bad_id'], steps: () => [get('/')] },
  { name: 'cli-long-id', args: () => ['--id', 'x'.repeat(65)], steps: () => [get('/')] },
  { name: 'cli-unknown-flag', args: () => ['--id', 'fcd-cli-flag', '--bogus'], steps: () => [get('/')] },
  // ---- restores (each on a fresh process; the snapshots come from the sequences above, same side)
  {
    name: 'restore-configured-process',
    steps: (c) => [
      machine,
      put('/snapshot/load', loadBody(bootSnap(c).stateFile, bootSnap(c).memoryFile)),
      get('/'),
    ],
  },
  {
    name: 'restore-body-errors',
    steps: (c) => {
      const s = plainSnap(c);
      return [
        put('/snapshot/load', {}),
        put('/snapshot/load', { snapshot_path: s.state }),
        put('/snapshot/load', { snapshot_path: s.state, mem_file_path: s.mem, mem_backend: { backend_type: 'File', backend_path: s.mem } }),
        put('/snapshot/load', loadBody(s.state, s.mem, { bogus: 1 })),
        put('/snapshot/load', { snapshot_path: s.state, mem_backend: { backend_type: 'Disk', backend_path: s.mem } }),
        put('/snapshot/load', { snapshot_path: s.state, mem_backend: { backend_path: s.mem } }),
        put('/snapshot/load', loadBody(s.state, s.mem, { network_overrides: [{ iface_id: 'eth0' }] })),
        put('/snapshot/load', loadBody(s.state, s.mem, { vsock_override: {} })),
        put('/snapshot/load', loadBody(s.state, s.mem, { resume_vm: 'yes' })),
        get('/'),
      ];
    },
  },
  {
    name: 'restore-plain-paused',
    steps: (c) => {
      cloneDisks(c);
      const s = plainSnap(c);
      return [
        put('/logger', { log_path: file(c, 'fc.log', ''), level: 'Info' }),
        put('/mmds', { a: 1 }),
        put('/snapshot/load', loadBody(s.state, s.mem, { resume_vm: false, track_dirty_pages: true })),
        get('/'),
        get('/machine-config'),
        resume,
        pause,
        snapCreate(c, 'diff', { snapshot_type: 'Diff' }),
        put('/snapshot/load', loadBody(s.state, s.mem)),
      ];
    },
  },
  {
    name: 'restore-deprecated-mem-file-path',
    steps: (c) => {
      cloneDisks(c);
      const s = plainSnap(c);
      return [put('/snapshot/load', { snapshot_path: s.state, mem_file_path: s.mem, enable_diff_snapshots: false }), get('/')];
    },
  },
  {
    name: 'restore-vsock-override-without-vsock',
    steps: (c) => {
      cloneDisks(c);
      const s = plainSnap(c);
      return [put('/snapshot/load', loadBody(s.state, s.mem, { vsock_override: { uds_path: join(c.dir, 'v.sock') } })), get('/')];
    },
  },
  {
    name: 'restore-unknown-network-override',
    steps: (c) => {
      cloneDisks(c);
      const s = bootSnap(c);
      return [put('/snapshot/load', loadBody(s.stateFile, s.memoryFile, { network_overrides: [{ iface_id: 'nope', host_dev_name: 'fcdtap4' }], vsock_override: { uds_path: join(c.dir, 'v.sock') } })), get('/')];
    },
  },
  {
    name: 'restore-vsock-socket-in-use',
    // No vsock_override: the snapshot's own socket path (the source's file is still there).
    steps: (c) => {
      cloneDisks(c);
      const s = bootSnap(c);
      return [put('/snapshot/load', loadBody(s.stateFile, s.memoryFile, { network_overrides: [{ iface_id: 'net_0', host_dev_name: 'fcdtap5' }] })), get('/')];
    },
  },
  {
    name: 'restore-override-unknown-field-net',
    steps: (c) => {
      cloneDisks(c);
      const s = bootSnap(c);
      return [
        put('/snapshot/load', loadBody(s.stateFile, s.memoryFile, { network_overrides: [{ iface_id: 'net_0', host_dev_name: 'fcdtap8', bogus: 1 }], vsock_override: { uds_path: join(c.dir, 'v.sock') } })),
        pause,
        get('/'),
      ];
    },
  },
  {
    name: 'restore-override-unknown-field-vsock',
    steps: (c) => {
      cloneDisks(c);
      const s = bootSnap(c);
      return [
        put('/snapshot/load', loadBody(s.stateFile, s.memoryFile, { network_overrides: [{ iface_id: 'net_0', host_dev_name: 'fcdtap8' }], vsock_override: { uds_path: join(c.dir, 'v.sock'), bogus: 1 } })),
        pause,
        get('/'),
      ];
    },
  },
  {
    name: 'restore-missing-drive',
    // No disks in this directory: the snapshot's relative drive paths (the driver's) do not resolve.
    steps: (c) => {
      const s = bootSnap(c);
      return [put('/snapshot/load', loadBody(s.stateFile, s.memoryFile, { network_overrides: [{ iface_id: 'net_0', host_dev_name: 'fcdtap7' }], vsock_override: { uds_path: join(c.dir, 'v.sock') } })), get('/')];
    },
  },
  {
    name: 'restore-after-failed-config',
    // A configuration call that reaches the VMM counts as boot-specific even when it fails.
    steps: (c) => {
      cloneDisks(c);
      const s = plainSnap(c);
      return [put('/boot-source', { kernel_image_path: join(c.dir, 'nope') }), put('/snapshot/load', loadBody(s.state, s.mem)), get('/')];
    },
  },
  {
    name: 'restore-after-parse-error',
    // One refused while parsing never reaches it.
    steps: (c) => {
      cloneDisks(c);
      const s = plainSnap(c);
      return [put('/boot-source', {}), put('/drives/a-b', {}), put('/snapshot/load', loadBody(s.state, s.mem)), get('/')];
    },
  },
  {
    name: 'restore-corrupt-state',
    steps: (c) => {
      cloneDisks(c);
      const s = plainSnap(c);
      return [put('/snapshot/load', loadBody(file(c, 'corrupt.state', Buffer.from('garbage, not a snapshot\n'.repeat(40))), s.mem)), get('/')];
    },
  },
  {
    name: 'restore-missing-state',
    steps: (c) => [put('/snapshot/load', loadBody(join(c.dir, 'none.state'), plainSnap(c).mem)), get('/')],
  },
  {
    name: 'restore-missing-memory',
    steps: (c) => {
      cloneDisks(c);
      return [put('/snapshot/load', loadBody(plainSnap(c).state, join(c.dir, 'none.mem'))), get('/')];
    },
  },
  {
    name: 'restore-uffd-no-socket',
    steps: (c) => [put('/snapshot/load', { snapshot_path: plainSnap(c).state, mem_backend: { backend_type: 'Uffd', backend_path: join(c.dir, 'uffd.sock') } }), get('/')],
  },
];

// ---------------------------------------------------------------- running and comparing

async function play(seq: Sequence, kind: Kind): Promise<Run> {
  const base = join(root, kind);
  const dir = join(base, seq.name);
  mkdirSync(dir, { recursive: true });
  const c: Ctx = { kind, dir, base };
  const extra = seq.args?.(c) ?? ['--id', `fcd-${seq.name}`];
  const steps = seq.steps(c);
  const readers: FifoReader[] = [];
  const p = await startApiProcess(kind, dir, extra, { ...(kind === 'real' && netnsMade ? { netns: NETNS } : {}) });
  live.add(p);
  try {
    for (const f of seq.fifos ?? []) readers.push(new FifoReader(join(dir, f), () => undefined).start());
    const answers: Answer[] = [];
    if (p.startupExit !== undefined) return { steps, startupExit: p.startupExit, answers, end: `exited ${String(p.startupExit)}`, output: p.output() };
    for (const s of steps) {
      if (p.proc.exitCode !== null || p.proc.signalCode !== null) {
        answers.push({ status: 0, fault: false, text: `(process exited ${String(p.proc.exitCode ?? p.proc.signalCode)})` });
        continue;
      }
      // Generous: the machine is shared, and the real process runs at a low CPU priority.
      const timeoutMs = s.path.startsWith('/snapshot/') ? 60_000 : 30_000;
      try {
        const r = await raw(p.sock, s.method, s.path, s.body, { timeoutMs, ...(s.chunked ? { chunked: true } : {}) });
        const j = r.json as Record<string, unknown> | undefined;
        const isObj = j !== null && typeof j === 'object' && !Array.isArray(j);
        answers.push({
          status: r.status,
          fault: isObj && typeof j.fault_message === 'string',
          text: r.text.length > 400 ? r.text.slice(0, 400) + '…' : r.text,
          ...(s.method === 'GET' && s.path === '/' && isObj && typeof j.state === 'string' ? { state: j.state } : {}),
          ...(s.method === 'GET' && r.status === 200 && isObj && s.path !== '/mmds' ? { keys: Object.keys(j).sort().join(',') } : {}),
        });
      } catch (e) {
        answers.push({ status: 0, fault: false, text: `(no answer: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message})` });
      }
    }
    // A process that exits after an answer (a failed snapshot load) does so at once.
    await Promise.race([p.exited, sleep(150)]);
    const code = p.proc.exitCode ?? p.proc.signalCode;
    return { steps, answers, end: code === null ? 'running' : `exited ${String(code)}`, output: p.output() };
  } finally {
    await stopApiProcess(p);
    live.delete(p);
    for (const r of readers) r.close();
  }
}

const show = (a: Answer | undefined): string => (a ? `${a.status}${a.fault ? ' fault' : ''}${a.state ? ` state=${a.state}` : ''}${a.keys ? ` keys=${a.keys}` : ''} ${a.text}` : '(none)');
const same = (a: Answer, b: Answer): boolean => a.status === b.status && a.fault === b.fault && a.state === b.state && a.keys === b.keys;

const report: Array<{ sequence: string; steps: Array<{ request: string; peer: Answer; real: Answer; tolerated?: string }>; peer: Omit<Run, 'steps' | 'answers'>; real: Omit<Run, 'steps' | 'answers'> }> = [];
let compared = 0;
let tolerated = 0;

describe('firecracker peer vs the real binary: same requests, same answers', { skip }, () => {
  before(() => {
    const images = '/var/cache/mvm/images';
    const img = existsSync(images) ? readdirSync(images).find((d) => d.startsWith('default-') && existsSync(join(images, d, 'vmlinux'))) : undefined;
    if (!img) throw new Error(`no default guest vmlinux under ${images}: run make images`);
    kernel = join(root, 'vmlinux');
    copyFileSync(join(images, img, 'vmlinux'), kernel);
    // The real Firecracker creates the taps of the driver sequences: in a namespace of ours.
    netnsMade = spawnSync('ip', ['netns', 'add', NETNS]).status === 0;
    if (!netnsMade) throw new Error(`cannot make network namespace ${NETNS}`);
  });

  after(async () => {
    for (const p of live) await stopApiProcess(p);
    if (netnsMade) spawnSync('ip', ['netns', 'del', NETNS]);
    if (process.env.MVM_FCDIFF_REPORT) writeFileSync(process.env.MVM_FCDIFF_REPORT, JSON.stringify(report, null, 2));
    rmSync(root, { recursive: true, force: true });
  });

  for (const seq of SEQUENCES) {
    it(seq.name, async (t) => {
      const peer = await play(seq, 'peer');
      const real = await play(seq, 'real');
      const steps = peer.steps;
      const rows: (typeof report)[number]['steps'] = [];
      const diffs: string[] = [];
      if (peer.startupExit !== undefined || real.startupExit !== undefined) {
        if (peer.startupExit !== real.startupExit) diffs.push(`start: peer ${String(peer.startupExit ?? 'answered')} vs real ${String(real.startupExit ?? 'answered')}\n  peer: ${peer.output.trim()}\n  real: ${real.output.trim()}`);
      } else {
        steps.forEach((s, i) => {
          const a = peer.answers[i]!;
          const b = real.answers[i]!;
          compared++;
          const req = `${s.method} ${s.path}${s.body === undefined ? '' : ' ' + (typeof s.body === 'string' ? s.body : JSON.stringify(s.body)).slice(0, 160)}`;
          rows.push({ request: req, peer: a, real: b, ...(s.tolerate ? { tolerated: s.tolerate } : {}) });
          if (same(a, b)) return;
          if (s.tolerate) {
            tolerated++;
            t.diagnostic(`tolerated #${i} ${req}: ${s.tolerate}\n  peer: ${show(a)}\n  real: ${show(b)}`);
            return;
          }
          diffs.push(`#${i} ${req}\n  peer: ${show(a)}\n  real: ${show(b)}`);
        });
        // Exit codes after a failed load race with the next request (Firecracker aborts when a request arrives while it exits): compare running vs exited.
        const alive = (e: string): string => (e === 'running' ? 'running' : 'exited');
        if (alive(peer.end) !== alive(real.end)) {
          if (seq.tolerateEnd) {
            tolerated++;
            t.diagnostic(`tolerated end state: peer ${peer.end}, real ${real.end}: ${seq.tolerateEnd}`);
          }
          else diffs.push(`end: peer ${peer.end} vs real ${real.end}\n  peer: ${peer.output.trim().slice(-600)}\n  real: ${real.output.trim().slice(-600)}`);
        }
      }
      report.push({ sequence: seq.name, steps: rows, peer: { end: peer.end, output: peer.output.slice(-2000), ...(peer.startupExit !== undefined ? { startupExit: peer.startupExit } : {}) }, real: { end: real.end, output: real.output.slice(-2000), ...(real.startupExit !== undefined ? { startupExit: real.startupExit } : {}) } });
      t.diagnostic(`${steps.length} requests compared${peer.startupExit !== undefined || real.startupExit !== undefined ? ` (start: peer ${String(peer.startupExit ?? 'up')}, real ${String(real.startupExit ?? 'up')})` : ''}`);
      assert.equal(diffs.length, 0, `${seq.name}: the peer answers differently from Firecracker ${diffs.length} time(s):\n${diffs.join('\n')}`);
    });
  }

  it('summary', (t) => {
    t.diagnostic(`${SEQUENCES.length} sequences, ${compared} requests compared, ${tolerated} tolerated difference(s)`);
  });
});
