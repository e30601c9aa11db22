/**
 * The VMM contract against the Firecracker driver, with the test peer standing
 * in for `firecracker` (test/support/firecracker-peer.ts) and the jailer
 * stand-in (clones into new VM directories need jail-relative drive paths;
 * ADR 0005). The peer's guest has no shell: its "memory" is a nonce born at
 * boot and carried through snapshots, which is what the memory hooks compare.
 */
import { after } from 'node:test';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { LaunchSpec, SnapshotFiles } from '../src/core/ports/vmm.js';
import { FirecrackerDriver } from '../src/vmm/firecracker/firecracker-driver.js';
import { fakeJailer, memoryNonce, peerBinary } from './support/firecracker-harness.js';
import { vmmContract } from './contract/vmm.contract.js';

const dir = mkdtempSync(join(tmpdir(), 'vmm-ct-fc-'));
const bin = peerBinary(dir);
const jailer = fakeJailer(join(dir, 'jbin'));
const kernel = join(dir, 'vmlinux');
writeFileSync(kernel, Buffer.alloc(8192));
const root = join(dir, 'vms');
mkdirSync(root);
let snaps = 0;

after(() => rmSync(dir, { recursive: true, force: true }));

const makeDriver = (): FirecrackerDriver =>
  new FirecrackerDriver({
    binary: bin,
    kvm: { kvmUsable: async () => true },
    env: { FC_PEER_LOG: join(dir, 'peer.jsonl') },
    jailer: { binary: jailer, chrootBaseDir: join(dir, 'srv'), cgroupRoot: join(dir, 'cg'), cgroupVersion: 2, uidRange: { start: 300_000, size: 100 } },
  });

async function spec(id: string, vmDir: string): Promise<LaunchSpec> {
  mkdirSync(vmDir, { recursive: true });
  const disk = join(vmDir, 'root.raw');
  if (!existsSync(disk)) writeFileSync(disk, Buffer.alloc(2 * 1024 * 1024));
  return {
    id,
    name: id,
    vcpu: 1,
    memoryMiB: 128,
    kernelPath: kernel,
    cmdline: `console=ttyS0 reboot=k panic=1 root=/dev/vda rw mvm.id=${id}`,
    drives: [{ id: 'root', path: disk, format: 'raw', readOnly: false, root: true }],
    nics: [],
    vmDir,
    cgroupProcs: [],
  };
}

/** Firecracker attaches raw disks only: the clone gets its own copy of the source disk. */
async function restoreSpec(snap: SnapshotFiles, source: LaunchSpec, id: string, vmDir: string): Promise<LaunchSpec> {
  const s = await spec(id, vmDir);
  copyFileSync(source.drives[0]!.path, s.drives[0]!.path);
  return { ...s, restoreFrom: snap };
}

vmmContract('firecracker (test peer, jailed)', makeDriver, {
  root,
  spec,
  restoreSpec,
  memory: {
    // The peer guest's memory is the nonce it printed at boot.
    write: async (inst) => /memory nonce=([0-9a-f]+)/.exec(readFileSync(inst.consolePath, 'utf8'))?.[1] ?? '',
    // A restored peer prints nothing: read its memory through a fresh snapshot.
    read: async (inst) => memoryNonce((await inst.snapshot!(join(dir, `readback-${++snaps}`))).memoryFile),
  },
  readyTimeoutMs: 5_000,
  stopTimeoutMs: 5_000,
});
