/**
 * Volumes without guests: the VolumeService rules (names, tenancy, quotas, one writer, delete
 * refusals, restore), crash recovery by reconcile, the nfs backend's NFS-specific semantics, the
 * ceph-rbd backend's rbd argument building (fake `rbd` on PATH recording calls), and the guest
 * mount fragment being the same in the default image's init and the OCI init.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MvmError } from '../../src/core/errors.js';
import type { Principal } from '../../src/core/authz.js';
import { VOLUME_KIND, VolumeService, type VolumeSpec } from '../../src/core/volumes.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { SqliteResourceStore } from '../../src/store/sqlite/resources.js';
import { SqliteTenantStore } from '../../src/store/sqlite/tenant-store.js';
import { CephRbdVolumeBackend, LocalVolumeBackend, NfsVolumeBackend } from '../../src/storage/volumes/index.js';
import { mountTypeOf } from '../../src/storage/volumes/nfs.js';
import { VOLUME_MOUNT_SH } from '../../src/storage/volumes/guest-mount.js';
import { OCI_INIT_SCRIPT } from '../../src/storage/oci/init-script.js';
import { installFakeRbd } from '../support/fake-rbd.js';
import { vmFixture } from '../contract/store.contract.js';
import { REPO } from '../support/service.js';

const dir = mkdtempSync(join(tmpdir(), 'mvm-vol-unit-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const alice: Principal = { subject: 'alice', tenant: 'ta', role: 'member' };
const bob: Principal = { subject: 'bob', tenant: 'tb', role: 'member' };
const code = (c: string, field?: string) => (e: unknown) => e instanceof MvmError && e.code === c && (field === undefined || e.violations[0]?.field === field);

describe('VolumeService (SQLite + local backend)', () => {
  let store: SqliteStore;
  let resources: SqliteResourceStore;
  let tenants: SqliteTenantStore;
  let svc: VolumeService;
  let backend: LocalVolumeBackend;
  const now = new Date().toISOString();

  before(async () => {
    store = new SqliteStore(join(dir, 'state.db'));
    resources = new SqliteResourceStore(store.database);
    tenants = new SqliteTenantStore(store);
    backend = new LocalVolumeBackend({ dir: join(dir, 'local') });
    await tenants.createTenant({ id: 'ta', quotas: { disk: '256Mi', volumes: 3, snapshots: 1 }, resourceVersion: '0', createdAt: now, updatedAt: now });
    await tenants.createTenant({ id: 'tb', quotas: {}, resourceVersion: '0', createdAt: now, updatedAt: now });
    svc = new VolumeService({ resources, store, backends: [backend], tenants, claimGraceMs: 0 });
  });
  after(async () => {
    svc.stop();
    await store.close();
  });

  test('create, unique names, tenant isolation, quotas', async () => {
    const v = await svc.create(alice, { name: 'data', size: '64Mi' });
    assert.equal(v.spec.phase, 'Available');
    assert.ok(existsSync(backend.volumePath(v.id)));
    await assert.rejects(svc.create(alice, { name: 'data', size: '16Mi' }), code('ALREADY_EXISTS', 'name'));
    await svc.create(bob, { name: 'data', size: '16Mi' }); // another tenant may use the name
    await assert.rejects(svc.get(bob, v.id), code('NOT_FOUND'));
    await assert.rejects(svc.delete(bob, v.id), code('NOT_FOUND'));
    assert.equal((await svc.list(bob)).length, 1);
    await assert.rejects(svc.create(alice, { name: 'huge', size: '1Gi' }), code('QUOTA_EXCEEDED'));
    await assert.rejects(svc.create(alice, { name: 'tiny', size: '8Mi' }), code('VALIDATION_FAILED', 'size'));
    assert.equal((await svc.list(alice)).length, 1, 'a refused create leaves no record');
    const u = await tenants.usage('ta');
    assert.equal(u.volumes, 1);
    assert.equal(u.diskMiB, 64);
  });

  test('VM claims: unknown names the field, size creates, one writer, readers exclude a writer, delete refused while attached', async () => {
    const spec = (volumes: any[]) => ({ vcpu: 1, memory: '128Mi', volumes }) as any;
    await assert.rejects(svc.claim(alice, spec([{ name: 'nope', mountPath: '/x' }]), 'ta', 'vm-1'), code('NOT_FOUND', 'volumes[0].name'));
    await assert.rejects(svc.claim(alice, spec([{ name: 'data', mountPath: '/a b' }]), 'ta', 'vm-1'), code('VALIDATION_FAILED', 'volumes[0].mountPath'));
    await svc.claim(alice, spec([{ name: 'data', mountPath: '/data' }, { name: 'auto', mountPath: '/auto', size: '16Mi' }]), 'ta', 'vm-1');
    const data = await svc.get(alice, 'data');
    assert.equal(data.spec.phase, 'InUse');
    assert.deepEqual(data.spec.attachedTo.map(({ attachedAt, ...a }) => (assert.ok(Date.parse(attachedAt!) > 0), a)), [{ vmId: 'vm-1', readOnly: false, mountPath: '/data' }]);
    assert.equal((await svc.get(alice, 'auto')).spec.sizeBytes, 16 * 1024 * 1024);
    await assert.rejects(svc.claim(alice, spec([{ name: 'data', mountPath: '/d', readOnly: true }]), 'ta', 'vm-2'), code('CONFLICT', 'volumes[0].name'));
    await assert.rejects(svc.delete(alice, 'data'), (e: unknown) => e instanceof MvmError && e.code === 'CONFLICT' && /attached to microVM/.test(e.message));
    // All or nothing: a failing second entry rolls back the first claim.
    await svc.releaseVm('vm-1');
    await assert.rejects(svc.claim(alice, spec([{ name: 'data', mountPath: '/d', readOnly: true }, { name: 'missing', mountPath: '/m' }]), 'ta', 'vm-2'), code('NOT_FOUND', 'volumes[1].name'));
    assert.deepEqual((await svc.get(alice, 'data')).spec.attachedTo, []);
    assert.equal((await svc.get(alice, 'data')).spec.phase, 'Available');
    await svc.claim(alice, spec([{ name: 'data', mountPath: '/d', readOnly: true }]), 'ta', 'vm-2');
    await svc.claim(alice, spec([{ name: 'data', mountPath: '/d', readOnly: true }]), 'ta', 'vm-3');
    await assert.rejects(svc.claim(alice, spec([{ name: 'data', mountPath: '/d' }]), 'ta', 'vm-4'), code('CONFLICT'));
    const drives = await svc.attachForVm({ id: 'vm-2', tenant: 'ta', spec: spec([{ name: 'data', mountPath: '/d', readOnly: true }]) }, 'n1');
    assert.deepEqual(drives.map((d) => [d.path, d.readOnly, d.mountPath]), [[backend.volumePath(data.id), true, '/d']]);
    // VMs that no longer exist lose their claims on reconcile, but not while the claim is young (the create writes the VM right after).
    const young = new VolumeService({ resources, store, backends: [backend], tenants });
    assert.deepEqual((await young.reconcile()).released, []);
    const r = await svc.reconcile();
    assert.ok(r.released.includes(`${data.id}:vm-2`) && r.released.includes(`${data.id}:vm-3`));
    assert.equal((await svc.get(alice, 'data')).spec.phase, 'Available');
  });

  test('snapshot + restore keep the data; quotas count snapshots; a volume with snapshots is not deleted', async () => {
    const data = await svc.get(alice, 'data');
    writeFileSync(join(dir, 'payload'), 'kept');
    const { execFileSync } = await import('node:child_process');
    execFileSync('debugfs', ['-w', '-R', `write ${join(dir, 'payload')} /p.txt`, backend.volumePath(data.id)], { stdio: 'ignore' });
    const s = await svc.snapshot(alice, 'data', 'snap1');
    assert.equal(s.spec.phase, 'Ready');
    await assert.rejects(svc.snapshot(alice, 'data', 'snap2'), code('QUOTA_EXCEEDED'));
    await assert.rejects(svc.getSnapshot(bob, s.id), code('NOT_FOUND'));
    await assert.rejects(svc.create(bob, { name: 'steal', fromSnapshot: s.id }), code('NOT_FOUND', 'fromSnapshot'));
    await assert.rejects(svc.delete(alice, 'data'), code('CONFLICT'));
    const restored = await svc.create(alice, { name: 'restored', fromSnapshot: 'snap1' });
    assert.equal(restored.spec.sizeBytes, data.spec.sizeBytes);
    assert.equal(restored.spec.fromSnapshot, s.id);
    assert.equal(execFileSync('debugfs', ['-R', 'cat /p.txt', backend.volumePath(restored.id)], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }), 'kept');
    await svc.deleteSnapshot(alice, 'snap1');
    assert.equal((await tenants.usage('ta')).snapshots, 0);
    for (const n of ['restored', 'auto', 'data']) await svc.delete(alice, n);
    assert.equal((await tenants.usage('ta')).volumes, 0);
    assert.equal((await tenants.usage('ta')).diskMiB, 0);
  });

  test('crash safety: a half-created volume, a .tmp leftover and an unrecorded file are cleaned by reconcile', async () => {
    // What a process killed during mkfs leaves: a Creating record with its reservation, and a .tmp file.
    await tenants.reserve('ta', { kind: 'volume', id: 'vol-halfdone000000', diskMiB: 64 }, {});
    await resources.create<VolumeSpec>({ kind: VOLUME_KIND, id: 'vol-halfdone000000', tenant: 'ta', name: 'half', spec: { size: '64Mi', sizeBytes: 64 << 20, backend: 'local', readOnly: false, phase: 'Creating', attachedTo: [] } });
    writeFileSync(`${backend.volumePath('vol-halfdone000000')}.tmp`, 'partial');
    writeFileSync(backend.volumePath('vol-orphan00000000'), 'no record');
    writeFileSync(join(dir, 'local', 'snapshots', 'vsnap-orphan000000.img.tmp'), 'partial');
    // A restarted process: a new service over the same state.
    const again = new VolumeService({ resources, store, backends: [backend], tenants, claimGraceMs: 0 });
    await again.start(60_000);
    again.stop();
    assert.equal(await resources.get(VOLUME_KIND, 'vol-halfdone000000'), undefined);
    const left = [...readdirSync(join(dir, 'local', 'volumes')), ...readdirSync(join(dir, 'local', 'snapshots'))];
    const bobs = (await svc.list(bob)).map((v) => `${v.id}.img`);
    assert.deepEqual(left, bobs, 'only the files of live volumes remain');
    assert.equal((await tenants.usage('ta')).diskMiB, 0, 'the reservation is released');
  });

  test('a deleted VM releases its volumes through the store watch; the volume outlives it', async () => {
    await svc.create(alice, { name: 'w', size: '16Mi' });
    await svc.start(60_000);
    try {
      const vm = vmFixture({ tenant: 'ta', spec: { vcpu: 1, memory: '128Mi', labels: {}, volumes: [{ name: 'w', mountPath: '/w' }] } });
      await svc.claim(alice, vm.spec, 'ta', vm.id);
      await store.createVm(vm);
      assert.equal((await svc.get(alice, 'w')).spec.phase, 'InUse');
      await store.deleteVm(vm.id);
      for (let i = 0; i < 50 && (await svc.get(alice, 'w')).spec.phase !== 'Available'; i++) await new Promise((r) => setTimeout(r, 20));
      assert.equal((await svc.get(alice, 'w')).spec.phase, 'Available', 'the volume outlives the VM and is free again');
    } finally {
      svc.stop();
    }
    await svc.delete(alice, 'w');
  });
});

describe('VolumeService with node-local volumes on several nodes (cluster mode wiring, fakes of the placement)', () => {
  test('placed at create, recorded; snapshot/restore/delete run on that node; attach elsewhere is refused', async () => {
    const store = new SqliteStore(join(dir, 'nodes.db'));
    const resources = new SqliteResourceStore(store.database);
    // Two "nodes", each its own directory: what the agents' endpoints front in cluster mode.
    const perNode = new Map(['n1', 'n2'].map((n) => [n, new LocalVolumeBackend({ dir: join(dir, `node-${n}`) })]));
    const calls: string[] = [];
    const svc = new VolumeService({
      resources,
      store,
      backends: [new LocalVolumeBackend({ dir: join(dir, 'node-none') })],
      placeVolume: async () => 'n2',
      backendOn: (_b, node) => {
        calls.push(node);
        return perNode.get(node)!;
      },
    });
    try {
      const v = await svc.create(alice, { name: 'pinned', size: '16Mi' });
      assert.equal(v.spec.node, 'n2');
      assert.ok(existsSync(perNode.get('n2')!.volumePath(v.id)) && !existsSync(perNode.get('n1')!.volumePath(v.id)));
      const s = await svc.snapshot(alice, 'pinned', 's');
      assert.equal(s.spec.node, 'n2');
      const r = await svc.create(alice, { name: 'copy', fromSnapshot: 's' });
      assert.equal(r.spec.node, 'n2', 'a restore lives where its snapshot is');
      assert.ok(existsSync(perNode.get('n2')!.volumePath(r.id)));
      const vm = { id: 'vm-p', tenant: 'ta', spec: { vcpu: 1, memory: '128Mi', labels: {}, volumes: [{ name: 'pinned', mountPath: '/p' }] } };
      await svc.claim(alice, vm.spec as never, 'ta', vm.id);
      await assert.rejects(svc.attachForVm(vm, 'n1'), (e: unknown) => e instanceof MvmError && e.code === 'CONFLICT' && /lives on node n2/.test(e.message));
      // On n2 the node agent's own VolumeService (its local backend) maps it (test/e2e/k8s-volumes.test.ts).
      await svc.releaseVm(vm.id);
      await svc.deleteSnapshot(alice, 's');
      for (const n of ['copy', 'pinned']) await svc.delete(alice, n);
      assert.deepEqual(readdirSync(join(dir, 'node-n2', 'volumes')), []);
      assert.ok(calls.length >= 5 && calls.every((n) => n === 'n2'));
    } finally {
      await store.close();
    }
  });
});

describe('nfs backend semantics', () => {
  test('refuses a directory that is not an NFS mount, naming what it is', async () => {
    const b = new NfsVolumeBackend({ dir: join(dir, 'not-nfs') });
    const caps = await b.capabilities();
    assert.equal(caps.available, false);
    assert.match(caps.reason ?? '', /is not on an NFS mount \(it is on \S+ at \//);
    assert.equal(caps.shared, true);
  });

  test('mount detection reads mountinfo (longest prefix wins)', () => {
    const info = [
      '22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw',
      '90 22 0:50 / /mnt/nfs rw,relatime shared:40 - nfs4 10.0.0.1:/export rw,vers=4.2',
    ].join('\n');
    assert.equal(mountTypeOf('/mnt/nfs/mvm', info)?.fsType, 'nfs4');
    assert.equal(mountTypeOf('/mnt/nfsother', info)?.fsType, 'ext4');
  });

  test('a read-write attach takes an exclusive lock file; another holder is refused until detach', async () => {
    const d = join(dir, 'nfs');
    mkdirSync(d, { recursive: true });
    const mountinfo = () => `1 0 0:1 / ${d} rw - nfs4 server:/x rw`;
    const b = new NfsVolumeBackend({ dir: d, node: 'n1', mountinfo });
    assert.equal((await b.capabilities()).available, true);
    await b.create('vol-nfs1', 16 << 20);
    await b.attach('vol-nfs1', 'n1', { readOnly: false, holder: 'vm-a' });
    const lock = JSON.parse(readFileSync(b.lockPath('vol-nfs1'), 'utf8'));
    assert.equal(lock.holder, 'vm-a');
    assert.equal(lock.node, 'n1');
    await b.attach('vol-nfs1', 'n1', { readOnly: false, holder: 'vm-a' }); // idempotent
    await assert.rejects(b.attach('vol-nfs1', 'n2', { readOnly: false, holder: 'vm-b' }), /locked for writing by vm-a on node n1/);
    await assert.rejects(b.attach('vol-nfs1', 'n2', { readOnly: true, holder: 'vm-b' }), /locked/);
    await b.detach('vol-nfs1', 'n2', { holder: 'vm-b' }); // not the holder: the lock stays
    assert.ok(existsSync(b.lockPath('vol-nfs1')));
    await b.detach('vol-nfs1', 'n1', { holder: 'vm-a' });
    assert.ok(!existsSync(b.lockPath('vol-nfs1')));
    await b.attach('vol-nfs1', 'n2', { readOnly: false, holder: 'vm-b' });
    await b.delete('vol-nfs1');
    assert.deepEqual(readdirSync(join(d, 'volumes')), []);
  });
});

describe('ceph-rbd backend: rbd argument building (fake rbd on PATH)', () => {
  test('create, attach read-only, snapshot, clone grown, delete with children flattens', async () => {
    const fake = installFakeRbd(join(dir, 'rbd'));
    const undo = fake.activate();
    try {
      const b = new CephRbdVolumeBackend({ pool: 'p1', user: 'mvm', conf: '/etc/ceph/test.conf' });
      assert.equal((await b.capabilities()).available, true);
      await b.create('vol-a', 32 << 20);
      const calls = fake.calls();
      const common = ['--conf', '/etc/ceph/test.conf', '--id', 'mvm'];
      for (const c of calls.filter((x) => x[0] !== '--version')) assert.deepEqual(c.slice(0, 4), common, `every call carries --conf/--id: ${c.join(' ')}`);
      const strip = (c: string[]) => c.slice(4).join(' ');
      const seen = calls.map(strip);
      assert.ok(seen.includes('create --size 32M --image-feature layering p1/vol-a'), seen.join('\n'));
      assert.ok(seen.includes('device map p1/vol-a'));
      assert.ok(seen.some((c) => /^device unmap \//.test(c)), 'unmapped after mkfs');
      assert.ok(seen.includes('image-meta set p1/vol-a mvm.state ready'));
      const before = fake.calls().length;
      const ro = await b.attach('vol-a', 'n1', { readOnly: true, holder: 'vm-1' });
      assert.equal(ro.kind, 'block');
      assert.ok(fake.calls().slice(before).map(strip).includes('device map --read-only p1/vol-a'));
      await b.detach('vol-a', 'n1', { holder: 'vm-1' });
      await b.snapshot('vol-a', 'vsnap-1');
      await b.cloneFromSnapshot('vol-a', 'vsnap-1', 'vol-b', 48 << 20);
      await b.deleteSnapshot('vol-a', 'vsnap-1');
      const all = fake.calls().map(strip);
      for (const want of ['snap create p1/vol-a@vsnap-1', 'snap protect p1/vol-a@vsnap-1', 'clone p1/vol-a@vsnap-1 p1/vol-b', 'resize --no-progress --size 48M p1/vol-b', 'children p1/vol-a@vsnap-1 --format json', 'flatten --no-progress p1/vol-b', 'snap unprotect p1/vol-a@vsnap-1', 'snap rm --no-progress p1/vol-a@vsnap-1']) {
        assert.ok(all.includes(want), `expected rbd ${want}\n${all.join('\n')}`);
      }
      assert.ok(all.indexOf('flatten --no-progress p1/vol-b') < all.indexOf('snap unprotect p1/vol-a@vsnap-1'), 'children are flattened before the snapshot goes');
      await b.delete('vol-b');
      await b.delete('vol-a');
      await b.delete('vol-a'); // absent is fine
      assert.deepEqual((await b.list()).volumes, []);
    } finally {
      undo();
    }
  });

  test('without the rbd CLI the backend says so', async () => {
    const b = new CephRbdVolumeBackend({ rbd: join(dir, 'no-such-rbd') });
    const caps = await b.capabilities();
    assert.equal(caps.available, false);
    assert.match(caps.reason ?? '', /rbd CLI is not installed/);
  });
});

test('the guest mount fragment is in the default image init and the OCI init', () => {
  const rootfsInit = readFileSync(join(REPO, 'images/guest/rootfs-init'), 'utf8');
  assert.ok(rootfsInit.includes(VOLUME_MOUNT_SH), 'images/guest/rootfs-init carries VOLUME_MOUNT_SH verbatim');
  assert.ok(OCI_INIT_SCRIPT.includes(VOLUME_MOUNT_SH));
  assert.ok(OCI_INIT_SCRIPT.indexOf(VOLUME_MOUNT_SH) < OCI_INIT_SCRIPT.indexOf('MVM-READY'), 'volumes are mounted before readiness');
});

test('a size the backend filesystem cannot hold is a validation error on size, leaving nothing', async () => {
  const d = join(dir, 'efbig');
  const b = new LocalVolumeBackend({ dir: d });
  // ext4 (our hosts) caps files at 16 TiB; other filesystems may take it.
  await b.create('vol-efbig', 17 * 1024 ** 4).then(
    () => b.delete('vol-efbig'),
    (e: unknown) => {
      assert.ok(e instanceof MvmError && e.code === 'VALIDATION_FAILED' && e.violations[0]?.field === 'size', String(e));
    },
  );
  assert.deepEqual(readdirSync(join(d, 'volumes')), []);
});

describe('volume drives in both VMM drivers', () => {
  const spec = {
    id: 'vm-x',
    name: 'x',
    vcpu: 1,
    memoryMiB: 128,
    kernelPath: '/k/vmlinux',
    cmdline: 'console=ttyS0 root=/dev/vda mvm.vol=vdb:rw:/data mvm.vol=vdc:ro:/ref',
    drives: [
      { id: 'root', path: '/d/root.raw', format: 'raw' as const, readOnly: false, root: true },
      { id: 'vol0', path: '/v/volumes/vol-a.img', format: 'raw' as const, readOnly: false, root: false },
      { id: 'vol1', path: '/dev/rbd3', format: 'raw' as const, readOnly: true, root: false },
    ],
    nics: [],
    vmDir: '/d',
    cgroupProcs: [],
  };

  test('Firecracker: root first, then the volumes in order, read-only where asked', async () => {
    const { buildBootCalls } = await import('../../src/vmm/firecracker/config.js');
    const drives = buildBootCalls(spec, { logFifo: '/d/log.fifo', metricsFifo: '/d/metrics.fifo' })
      .filter((c) => c.path.startsWith('/drives/'))
      .map((c) => c.body as { drive_id: string; path_on_host: string; is_root_device: boolean; is_read_only: boolean });
    assert.deepEqual(
      drives.map((d) => [d.drive_id, d.path_on_host, d.is_root_device, d.is_read_only]),
      [
        ['root', '/d/root.raw', true, false],
        ['vol0', '/v/volumes/vol-a.img', false, false],
        ['vol1', '/dev/rbd3', false, true],
      ],
    );
  });

  test('QEMU: virtio-blk devices in the same order (vda, vdb, vdc in the guest), read-only=on for readers', async () => {
    const { buildQemuArgs } = await import('../../src/vmm/qemu/qemu-driver.js');
    const args = buildQemuArgs(spec, { accel: 'tcg', sandbox: false, tbSizeMiB: 32 });
    const drives = args.filter((_a, i) => args[i - 1] === '-drive');
    assert.equal(drives.length, 3);
    assert.match(drives[0]!, /^id=root,file=\/d\/root.raw,format=raw/);
    assert.match(drives[1]!, /^id=vol0,file=\/v\/volumes\/vol-a.img,format=raw(?!.*read-only)/);
    assert.match(drives[2]!, /^id=vol1,file=\/dev\/rbd3,format=raw.*read-only=on/);
    assert.ok(args.indexOf('virtio-blk-device,drive=root') < args.indexOf('virtio-blk-device,drive=vol0'));
    assert.ok(args.indexOf('virtio-blk-device,drive=vol0') < args.indexOf('virtio-blk-device,drive=vol1'));
  });
});
