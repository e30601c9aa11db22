/**
 * The service's whole snapshot path with the Firecracker driver: the real
 * standalone service (REST API, controller, agent, CNI networking) with
 * MVM_DRIVER=firecracker, and the Firecracker test peer as the `firecracker`
 * on its PATH (MVM_ACCEL=kvm stands in for a host whose KVM boots guests; the
 * peer needs none). Twice: un-jailed, and jailed (MVM_FIRECRACKER_JAILER = the
 * jailer stand-in of test/support/firecracker-harness.ts).
 *
 * pause → snapshot → delete → restore twice: both clones carry the guest
 * memory (a "tmpfs" file written before the snapshot), each has its own raw
 * disk, tap, MAC and IP, and the agent re-identified each guest over the
 * console input FIFO. The VMM runs in the VM's network namespace.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import type { MicroVM } from '../../sdk/typescript/src/index.js';
import { destroyDataDir, apiCall, startService, type TestService } from '../support/service.js';
import { fakeJailer, peerBinary, peerRun } from '../support/firecracker-harness.js';
import { listPids, readCmdline, sleep } from '../../src/vmm/proc.js';

for (const mode of ['un-jailed', 'jailed'] as const) describe(`firecracker through the service (${mode})`, () => {
  let svc: TestService | undefined;
  let binDir: string;
  let skip: string | undefined;

  const api = (method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> => apiCall(svc!, method, path, body);
  const vmDir = (vm: MicroVM): string => join(svc!.dataDir, 'vms', vm.id);
  const run = (vm: MicroVM, cmd: string): Promise<string> => peerRun(vmDir(vm), cmd, 15_000);

  before(async () => {
    if (process.getuid?.() !== 0) {
      skip = 'needs root (CNI networking in network namespaces)';
      return;
    }
    binDir = mkdtempSync(join(tmpdir(), 'fc-svc-bin-'));
    const bin = peerBinary(binDir);
    svc = await startService({
      env: {
        MVM_DRIVER: 'firecracker',
        MVM_ACCEL: 'kvm',
        PATH: `${dirname(bin)}:${process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin'}`,
        ...(mode === 'jailed' ? { MVM_FIRECRACKER_JAILER: fakeJailer(join(binDir, 'jbin')) } : {}),
      },
    });
  });

  after(async () => {
    await svc?.stop().catch(() => undefined);
    // Even after a failure: the service leaves guests running on stop, and destroyDataDir only knows
    // QEMU; every VMM of this test runs our peer binary (jailed ones included).
    for (const pid of binDir ? listPids() : []) {
      if (readCmdline(pid)?.some((a) => a.startsWith(binDir))) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          /* gone */
        }
      }
    }
    await sleep(200);
    if (svc) await destroyDataDir(svc.dataDir);
    if (binDir) rmSync(binDir, { recursive: true, force: true });
  });

  test(`firecracker (${mode}) through the service: pause, snapshot, delete, restore twice; memory survives, identity is fresh`, async (t) => {
    if (skip) return t.skip(skip);
    const s = svc!;
    const created = await s.client.microvms.create({ name: 'fc-origin' });
    const a = await s.client.microvms.waitFor(created.id, { phase: 'Running', ready: true, timeoutMs: 60_000 });
    assert.equal(a.status.driver, 'firecracker');
    // The effective configuration is inspectable: the Firecracker API calls, the VM's own disk by a relative path.
    const full = await api('GET', `/microvms/${a.id}?view=full`);
    assert.ok(full.json.vmm, `GET ?view=full shows the VMM configuration: ${JSON.stringify(full.json).slice(0, 300)}`);
    const calls = full.json.vmm.calls as Array<{ path: string; body: Record<string, unknown> }>;
    assert.equal(calls.find((c) => c.path === '/drives/root')?.body.path_on_host, mode === 'jailed' ? '/drives/root' : 'root.raw');
    assert.equal(full.json.vmm.jailed, mode === 'jailed');
    // The VMM runs in the VM's network namespace (where its tap is).
    const launch = JSON.parse(readFileSync(join(vmDir(a), 'launch.json'), 'utf8')) as { pid: number; netns?: string };
    assert.ok(launch.netns, 'the VM has a network namespace');
    assert.equal(statSync(`/proc/${launch.pid}/ns/net`).ino, statSync(launch.netns).ino, 'Firecracker runs in the VM netns');

    const secret = `secret-${process.pid}-${Date.now()}`;
    assert.match(await run(a, `echo ${secret} > /tmp/mem.txt && echo W$((6*7))`), /W42/, 'the write ran (W42 is computed; the echoed command shows W$((6*7)))');
    const ipA = await run(a, 'ip -4 addr show eth0; hostname');
    assert.ok(ipA.includes(`inet ${a.status.ip}/`), `the guest booted with its address: ${ipA}`);

    assert.equal((await api('POST', `/microvms/${a.id}/resume`)).json.code, 'ILLEGAL_TRANSITION');
    assert.equal((await api('POST', `/microvms/${a.id}/pause`)).status, 202);
    await s.client.microvms.waitFor(a.id, { phase: 'Paused', timeoutMs: 30_000 });

    const t0 = Date.now();
    const snap = await api('POST', `/microvms/${a.id}/snapshots`, { name: 'fc-snap' });
    assert.equal(snap.status, 201, JSON.stringify(snap.json));
    assert.equal(snap.json.phase, 'Ready');
    assert.equal(snap.json.driver, 'firecracker');
    const snapMs = Date.now() - t0;
    const snapDir = join(s.dataDir, 'snapshots', snap.json.id);
    const meta = JSON.parse(readFileSync(join(snapDir, 'snapshot.json'), 'utf8')) as Record<string, any>;
    assert.equal(meta.driver, 'firecracker');
    assert.match(meta.vmmVersion, /^v\d+\.\d+/);
    assert.ok(meta.cpuModel && meta.kernel?.sizeBytes > 0, 'CPU model and kernel recorded');
    assert.ok(existsSync(join(snapDir, 'disk-root.raw')), 'a copy of the disk taken while paused');

    await s.client.microvms.delete(a.id);
    await s.client.microvms.waitDeleted(a.id, { timeoutMs: 60_000 });

    const t1 = Date.now();
    const r1 = await api('POST', `/snapshots/${snap.json.id}/restore`, { name: 'fc-clone-1' });
    assert.equal(r1.status, 201, JSON.stringify(r1.json));
    const r2 = await api('POST', '/microvms', { name: 'fc-clone-2', snapshot: 'fc-snap' });
    assert.equal(r2.status, 201, JSON.stringify(r2.json));
    const [c1, c2] = await Promise.all([r1.json.id, r2.json.id].map((id: string) => s.client.microvms.waitFor(id, { phase: 'Running', ready: true, timeoutMs: 60_000 })));
    const restoreMs = Date.now() - t1;
    const netnsInodes = new Set<number>();
    for (const c of [c1!, c2!]) {
      const load = JSON.parse(readFileSync(join(vmDir(c), 'launch.json'), 'utf8')) as { pid: number; netns: string; mode: string; calls: Array<{ path: string; body: any }> };
      assert.equal(load.mode, 'restore', `${c.name} was restored, not cold-booted`);
      // Each VM has its own netns whose tap has the same name as the source's, so no network override is
      // needed: the clone's Firecracker runs in the clone's netns and opens the tap there.
      const body = load.calls.find((x) => x.path === '/snapshot/load')!.body;
      assert.equal(body.network_overrides, undefined);
      assert.equal(statSync(`/proc/${load.pid}/ns/net`).ino, statSync(load.netns).ino, `${c.name}'s Firecracker runs in its netns`);
      netnsInodes.add(statSync(load.netns).ino);
      assert.match(await run(c, 'cat /tmp/mem.txt'), new RegExp(secret), `memory state survived in ${c.name}`);
      const id = await run(c, 'ip -4 addr show eth0; hostname; cat /etc/machine-id');
      assert.ok(id.includes(`inet ${c.status.ip}/`), `guest uses its new address ${c.status.ip}: ${id}`);
      assert.ok(id.includes(`link/ether ${c.status.interfaces![0]!.mac.toLowerCase()}`), `guest uses its new MAC: ${id}`);
      assert.match(id, new RegExp(`^${c.name}$`, 'm'));
    }
    assert.notEqual(c1!.status.ip, c2!.status.ip);
    assert.notEqual(c1!.status.interfaces![0]!.mac, c2!.status.interfaces![0]!.mac);
    assert.equal(netnsInodes.size, 2, 'two clones, two network namespaces');
    // Own disks: three different files (two clones, the snapshot's copy).
    const inodes = new Set([join(vmDir(c1!), 'root.raw'), join(vmDir(c2!), 'root.raw'), join(snapDir, 'disk-root.raw')].map((p) => statSync(p).ino));
    assert.equal(inodes.size, 3);
    // Guest writes stay in their clone.
    await run(c1!, 'echo only-in-1 > /tmp/own.txt');
    assert.doesNotMatch(await run(c2!, 'cat /tmp/own.txt'), /only-in-1/);

    assert.equal((await api('DELETE', `/snapshots/${snap.json.id}`)).status, 409);
    for (const c of [c1!, c2!]) await s.client.microvms.delete(c.id);
    for (const c of [c1!, c2!]) await s.client.microvms.waitDeleted(c.id, { timeoutMs: 60_000 });
    assert.equal((await api('DELETE', `/snapshots/${snap.json.id}`)).status, 204);
    assert.equal(existsSync(snapDir), false);
    const jails = join(s.dataDir, 'jailer', 'firecracker');
    if (mode === 'jailed') assert.deepEqual(existsSync(jails) ? readdirSync(jails).filter((f) => !f.startsWith('.')) : [], [], 'every jail is removed');
    t.diagnostic(`firecracker (${mode}, peer) through the service: snapshot ${snapMs} ms; two restores to ready ${restoreMs} ms`);
  });
});
