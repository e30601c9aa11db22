/**
 * Per-VM VMM users (issue 15, ADR 0023): two real QEMU guests run as two different unprivileged
 * uids, under QEMU's seccomp sandbox; one VM's VMM user cannot open the other's disk (or even
 * reach its directory), only its own; the uid is released when the VM is deleted.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { passwdIds } from '../../src/vmm/proc.js';
import { apiCall, destroyDataDir, qemuProcessesUnder, startService, type TestService } from '../support/service.js';

const LEASES = '/var/lib/mvm/vmm-uids';
let svc: TestService;
const ids: string[] = [];

before(async () => {
  svc = await startService({ env: { MVM_NETWORK: 'none' } });
  for (const name of ['iso-a', 'iso-b']) {
    const r = await apiCall(svc, 'POST', '/microvms', { name });
    assert.equal(r.status, 201, r.text);
    ids.push(r.json.id);
  }
  for (const id of ids) await svc.client.microvms.waitFor(id, { phase: 'Running', ready: false, timeoutMs: 180_000 });
});
after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

const status = (pid: number): Record<string, string> =>
  Object.fromEntries(
    readFileSync(`/proc/${pid}/status`, 'utf8')
      .split('\n')
      .filter(Boolean)
      .map((l) => [l.slice(0, l.indexOf(':')), l.slice(l.indexOf(':') + 1).trim()]),
  );
interface Vmm {
  id: string;
  pid: number;
  uid: number;
  gid: number;
  groups: string;
  seccomp?: string;
  disk: string;
}
/** Run `argv` as uid:gid with no supplementary group (what QEMU -runas uid:gid leaves the VMM with). */
const as = (uid: number, argv: string[]) => spawnSync('setpriv', [`--reuid=${uid}`, `--regid=${uid}`, '--clear-groups', '--', ...argv], { encoding: 'utf8' });

test('each VM runs as its own unprivileged uid, under seccomp; one cannot open the other disk', () => {
  const procs = qemuProcessesUnder(svc.dataDir);
  const byId = new Map(procs.map((p) => [p.id, p.pid]));
  const [a, b] = ids.map((id) => {
    const pid = byId.get(id);
    assert.ok(pid, `no QEMU for ${id} among ${JSON.stringify(procs)}`);
    const st = status(pid);
    const uid = Number(st.Uid!.split(/\s+/)[0]);
    return { id, pid, uid, gid: Number(st.Gid!.split(/\s+/)[0]), groups: st.Groups ?? '', seccomp: st.Seccomp, disk: join(svc.dataDir, 'vms', id, 'root.qcow2') };
  }) as [Vmm, Vmm];
  const shared = passwdIds('mvm-vmm')?.uid;
  for (const v of [a, b]) {
    assert.ok(v.uid >= 1000 && v.uid !== shared, `VM ${v.id} runs as uid ${v.uid}`);
    assert.equal(v.gid, v.uid);
    assert.equal(v.groups, String(v.gid), 'no supplementary group but its own');
    assert.equal(v.seccomp, '2', 'the seccomp filter is on');
    assert.ok(existsSync(v.disk));
  }
  assert.notEqual(a.uid, b.uid, 'two VMs, two uids');
  // Its own disk: readable and writable by it (QEMU reopens it as this user after a restore).
  const own = as(a.uid, ['dd', `if=${a.disk}`, 'bs=4', 'count=1', 'status=none']);
  assert.equal(own.status, 0, own.stderr);
  assert.equal(own.stdout.slice(0, 3), 'QFI');
  // The other VM's disk and directory: refused.
  for (const target of [b.disk, join(svc.dataDir, 'vms', b.id, 'console.log'), join(svc.dataDir, 'vms', b.id, 'qmp.sock')]) {
    const r = as(a.uid, ['dd', `if=${target}`, 'bs=1', 'count=1', 'status=none']);
    assert.notEqual(r.status, 0, `uid ${a.uid} opened ${target}`);
    assert.match(r.stderr, /Permission denied/);
  }
  const ls = as(a.uid, ['ls', join(svc.dataDir, 'vms', b.id)]);
  assert.notEqual(ls.status, 0, 'the other VM directory is not even listable');
  // Nor can it plant a file in its own directory (the agent writes there as root).
  const plant = as(a.uid, ['sh', '-c', `: > ${join(svc.dataDir, 'vms', a.id, 'planted')}`]);
  assert.notEqual(plant.status, 0, 'the VMM user created a file in its VM directory');
});

test('deleting a VM releases its uid', async () => {
  const holder = () => readdirSync(LEASES).filter((f) => readFileSync(join(LEASES, f), 'utf8').includes(`"${ids[1]}"`));
  assert.equal(holder().length, 1, 'the running VM holds one lease');
  const del = await apiCall(svc, 'DELETE', `/microvms/${ids[1]}`);
  assert.ok([200, 202, 204].includes(del.status), del.text);
  const deadline = Date.now() + 60_000;
  while (holder().length > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
  assert.equal(holder().length, 0, 'lease released');
});
