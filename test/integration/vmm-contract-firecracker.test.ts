/**
 * The VMM contract against the Firecracker driver, with the test peer standing
 * in for `firecracker` (test/support/firecracker-peer.ts): once jailed (the
 * jailer stand-in: chroot layout, jail-relative paths) and once un-jailed
 * (drive paths relative to the VM directory). Restores go through the
 * driver's own port methods: `prepareRestoreDisk` (a raw per-clone copy of the
 * snapshot's disk) and `snapshotFiles`. The peer guest has a small serial
 * shell on the console input FIFO: memory is marked by a file written to its
 * "tmpfs" before the snapshot and read back after the restore.
 * With a real `firecracker`, a KVM that boots guests (MVM_KVM_USABLE=1) and
 * MVM_FC_KERNEL/MVM_FC_ROOTFS, a third run uses the real binary.
 */
import { after, test } from 'node:test';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LaunchSpec, SnapshotFiles, VmmInstance } from '../../src/core/ports/vmm.js';
import { FirecrackerDriver } from '../../src/vmm/firecracker/firecracker-driver.js';
import { fakeJailer, peerBinary, peerRun, realFirecracker } from '../support/firecracker-harness.js';
import { vmmContract } from '../contract/vmm.contract.js';

const dir = mkdtempSync(join(tmpdir(), 'vmm-ct-fc-'));
const bin = peerBinary(dir);
const jailer = fakeJailer(join(dir, 'jbin'));
const kernel = join(dir, 'vmlinux');
writeFileSync(kernel, Buffer.alloc(8192));
const root = join(dir, 'vms');
mkdirSync(root);

after(() => rmSync(dir, { recursive: true, force: true }));

const peerEnv = { FC_PEER_LOG: join(dir, 'peer.jsonl') };
const jailedDriver = (): FirecrackerDriver =>
  new FirecrackerDriver({
    binary: bin,
    kvm: { kvmUsable: async () => true },
    env: peerEnv,
    jailer: { binary: jailer, chrootBaseDir: join(dir, 'srv'), cgroupRoot: join(dir, 'cg'), cgroupVersion: 2, uidRange: { start: 300_000, size: 100 } },
  });
const plainDriver = (): FirecrackerDriver => new FirecrackerDriver({ binary: bin, kvm: { kvmUsable: async () => true }, env: peerEnv });

function specIn(kernelPath: string, rootfs?: string) {
  return async (id: string, vmDir: string): Promise<LaunchSpec> => {
    mkdirSync(vmDir, { recursive: true });
    const disk = join(vmDir, 'root.raw');
    if (!existsSync(disk)) {
      if (rootfs) copyFileSync(rootfs, disk);
      else writeFileSync(disk, Buffer.alloc(2 * 1024 * 1024));
    }
    return {
      id,
      name: id,
      vcpu: 1,
      memoryMiB: 128,
      kernelPath,
      cmdline: `console=ttyS0 reboot=k panic=1 root=/dev/vda rw mvm.id=${id}`,
      drives: [{ id: 'root', path: disk, format: 'raw', readOnly: false, root: true }],
      nics: [],
      vmDir,
      cgroupProcs: [],
    };
  };
}

/** A restore through the driver's port: its own raw copy of the snapshot's disk, the snapshot's files. */
function restoreVia(make: () => FirecrackerDriver, spec: (id: string, vmDir: string) => Promise<LaunchSpec>) {
  return async (snap: SnapshotFiles, _source: LaunchSpec, id: string, vmDir: string): Promise<LaunchSpec> => {
    const d = make();
    const s = await spec(id, vmDir);
    const disk = await d.prepareRestoreDisk(snap.dir, vmDir);
    return { ...s, drives: [disk], restoreFrom: d.snapshotFiles(snap.dir) };
  };
}

const shellOptions = {
  memory: {
    write: async (_i: VmmInstance, s: LaunchSpec) => {
      const mark = `mem-${Math.random().toString(16).slice(2, 10)}`;
      await peerRun(s.vmDir, `echo ${mark} > /tmp/mvm-mark`);
      return mark;
    },
    read: async (_i: VmmInstance, s: LaunchSpec) => /mem-[0-9a-f]+/.exec(await peerRun(s.vmDir, 'cat /tmp/mvm-mark'))?.[0] ?? '',
  },
  consoleRun: (s: LaunchSpec, cmd: string) => peerRun(s.vmDir, cmd),
};

const ticks = (s: LaunchSpec): number => {
  try {
    return (readFileSync(join(s.vmDir, 'console.log'), 'utf8').match(/^TICK\r?$/gm) ?? []).length;
  } catch {
    return 0;
  }
};
/** Guest progress: a ticker in the guest (the peer's `mvm-tick`; a shell loop in a real guest). */
const progressVia = (startCmd: string, stopCmd: string) => ({
  start: async (_i: VmmInstance, s: LaunchSpec) => void (await peerRun(s.vmDir, startCmd)),
  read: (_i: VmmInstance, s: LaunchSpec) => ticks(s),
  stop: async (_i: VmmInstance, s: LaunchSpec) => void (await peerRun(s.vmDir, stopCmd)),
});

for (const [tag, make] of [
  ['jailed', jailedDriver],
  ['un-jailed', plainDriver],
] as const) {
  const spec = specIn(kernel);
  const vmRoot = join(root, tag);
  vmmContract(`firecracker (test peer, ${tag})`, make, {
    root: vmRoot,
    spec,
    restoreSpec: restoreVia(make, spec),
    ...shellOptions,
    progress: progressVia('mvm-tick start', 'mvm-tick stop'),
    readyTimeoutMs: 5_000,
    stopTimeoutMs: 5_000,
  });
}

// The same contract against the real binary, where it can run.
const real = realFirecracker();
const realKernel = process.env.MVM_FC_KERNEL;
const realRootfs = process.env.MVM_FC_ROOTFS;
if (real && process.env.MVM_KVM_USABLE === '1' && realKernel && realRootfs) {
  const make = (): FirecrackerDriver => new FirecrackerDriver({ binary: real, kvmProbedUsable: true });
  const spec = specIn(realKernel, realRootfs);
  vmmContract('firecracker (real binary)', make, {
    root: join(root, 'real'),
    spec,
    restoreSpec: restoreVia(make, spec),
    ...shellOptions,
    // The tty echo of the typed command reads `TI""CK`, not `TICK`.
    progress: progressVia('(while :; do echo TI""CK; sleep 0.2; done) & echo $! > /tmp/ticker.pid', 'kill $(cat /tmp/ticker.pid)'),
    readyTimeoutMs: 30_000,
    stopTimeoutMs: 10_000,
  });
} else {
  test('VMM contract: firecracker (real binary)', (t) =>
    t.skip(
      !real
        ? 'no firecracker binary on PATH (the contract ran against the test peer)'
        : process.env.MVM_KVM_USABLE !== '1'
          ? 'KVM is not probed usable on this host (set MVM_KVM_USABLE=1 where it boots guests)'
          : 'set MVM_FC_KERNEL (vmlinux) and MVM_FC_ROOTFS (raw ext4 image printing MVM-READY, shell on ttyS0) to run it',
    ));
}
