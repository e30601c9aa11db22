/**
 * The agent does not re-adopt a VMM whose restore was cut short (found by the chaos harness,
 * seed 7: the service killed 295 ms into a restore; the restarted agent re-adopted the VMM, the
 * controller marked the VM Running, and the restored guest, which never got this VM's identity,
 * never became ready). A VM directory still holding RESTORE_PENDING with a live VMM: the VMM is
 * stopped and the VM is `stopped`, so the controller runs the restore again. A fake VMM driver
 * (adopt returns a live instance and records stop/kill); a real directory tree.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { LocalAgent } from '../../src/agent/agent.js';
import { RESTORE_PENDING } from '../../src/agent/launch-steps.js';
import type { CgroupManager } from '../../src/agent/cgroups.js';
import type { VmmDriver, VmmExit, VmmInstance } from '../../src/core/ports/vmm.js';

function fakeInstance(id: string, dir: string, calls: string[]): VmmInstance {
  let exit!: (e: VmmExit) => void;
  const exited = new Promise<VmmExit>((r) => (exit = r));
  return {
    id,
    pid: 4242,
    accel: 'tcg',
    driver: 'fake',
    consolePath: join(dir, 'console.log'),
    config: {},
    state: async () => 'running',
    stop: async () => {
      calls.push(`stop ${id}`);
      exit({ code: null, signal: 'SIGKILL' } as unknown as VmmExit);
    },
    kill: async () => {
      calls.push(`kill ${id}`);
      exit({ code: null, signal: 'SIGKILL' } as unknown as VmmExit);
    },
    exited,
    stats: async () => ({}) as never,
  };
}

async function adoptAfterRestart(restorePending: boolean): Promise<{ state: string; calls: string[]; socketLeft: boolean }> {
  const dataDir = mkdtempSync(join(tmpdir(), 'mvm-agent-adopt-'));
  const id = 'vm-restored';
  const dir = join(dataDir, 'vms', id);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'qmp.sock'), '');
  if (restorePending) writeFileSync(join(dir, RESTORE_PENDING), 'snap-1\n');
  const calls: string[] = [];
  const driver = {
    name: 'fake',
    adopt: async (vmId: string, vmDir: string) => fakeInstance(vmId, vmDir, calls),
    findProcesses: async () => [],
  } as unknown as VmmDriver;
  const cgroups = { version: 'none', parent: 'mvm-test-adopt', remove: async (x: string) => void calls.push(`cgroup remove ${x}`), list: () => [], pids: () => [], ensure: () => [] } as unknown as CgroupManager;
  const agent = new LocalAgent({ dataDir, log: pino({ level: 'silent' }), nodeName: 'n1', driver, cgroups, images: {} as never });
  try {
    await agent.start();
    return { state: agent.observe(id).state, calls, socketLeft: existsSync(join(dir, 'qmp.sock')) };
  } finally {
    await agent.shutdown();
    rmSync(dataDir, { recursive: true, force: true });
  }
}

test('a VMM whose restore was cut short is stopped on the agent start, not adopted: the restore runs again', async () => {
  const r = await adoptAfterRestart(true);
  assert.equal(r.state, 'stopped');
  assert.deepEqual(r.calls, ['stop vm-restored', 'cgroup remove vm-restored']);
  assert.equal(r.socketLeft, false, 'its sockets are cleaned up like any stop');
});

test('a VMM whose restore had finished (or an ordinary boot) is re-adopted running', async () => {
  const r = await adoptAfterRestart(false);
  assert.equal(r.state, 'running');
  assert.deepEqual(r.calls, []);
});
