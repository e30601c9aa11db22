/**
 * The gRPC API (microvm.service.v1alpha1.MicroVMService) against the real service process, with a
 * client typed by the types generated from proto/: the full lifecycle of a real booted guest,
 * including streaming its console; the same tenancy, roles, quotas, validation, idempotency and
 * audit as REST; errors mapped to gRPC status codes from one table.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { ErrorCodes } from '../../src/core/errors.js';
import { HTTP_STATUS } from '../../src/gateway/problem.js';
import { createGrpcClient, unaryCall, type MicroVMServiceClient } from '../../src/grpc/client.js';
import { GRPC_STATUS } from '../../src/grpc/status.js';
import type { MicroVM__Output } from '../../src/grpc/generated/microvm/service/v1alpha1/MicroVM.js';
import { sleep } from '../../src/vmm/proc.js';
import { REPO, destroyDataDir, qemuProcessesUnder } from '../support/service.js';
import { createKey, createTenant, startGatewayService, type GatewayService } from '../support/gateway.js';

const BOOT_TIMEOUT = 180_000;

describe('proto and tables', () => {
  test('the committed TypeScript types are generated from the current proto', () => {
    const out = mkdtempSync(join(tmpdir(), 'mvm-proto-check-'));
    const r = spawnSync(process.execPath, [join(REPO, 'proto/generate.mjs'), out], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    const files = (d: string): string[] => readdirSync(d).flatMap((e) => (statSync(join(d, e)).isDirectory() ? files(join(d, e)) : [join(d, e)]));
    const committed = join(REPO, 'src/grpc/generated');
    const a = files(out).map((f) => relative(out, f)).sort();
    const b = files(committed).map((f) => relative(committed, f)).sort();
    assert.deepEqual(a, b, 'same files (run `npm run proto`)');
    for (const f of a) assert.equal(readFileSync(join(out, f), 'utf8'), readFileSync(join(committed, f), 'utf8'), `${f} is stale: run \`npm run proto\``);
    rmSync(out, { recursive: true, force: true });
  });

  test('every error code has one gRPC status, consistent with its HTTP status', () => {
    for (const code of Object.values(ErrorCodes)) {
      assert.ok(GRPC_STATUS[code] !== undefined && GRPC_STATUS[code] !== grpc.status.UNKNOWN, code);
      if (HTTP_STATUS[code] === 404) assert.equal(GRPC_STATUS[code], grpc.status.NOT_FOUND);
      if (HTTP_STATUS[code] === 401) assert.equal(GRPC_STATUS[code], grpc.status.UNAUTHENTICATED);
    }
    assert.equal(GRPC_STATUS.CONFLICT, grpc.status.ABORTED);
    assert.equal(GRPC_STATUS.QUOTA_EXCEEDED, grpc.status.RESOURCE_EXHAUSTED);
  });
});

describe('gRPC against the real service', () => {
  let svc: GatewayService;
  let member: MicroVMServiceClient;
  let viewer: MicroVMServiceClient;
  let outsider: MicroVMServiceClient;

  before(async () => {
    // Published ports may bind to the default address (the VM network's gateway) or 192.0.2.10.
    svc = await startGatewayService({ MVM_HOST_PORT_ADDRESS: '10.100.0.1,192.0.2.10' });
    await createTenant(svc, 'grpc-t', { vms: 3 });
    await createTenant(svc, 'grpc-other');
    member = createGrpcClient(svc.grpc, (await createKey(svc, 'grpc-t', 'member')).token);
    viewer = createGrpcClient(svc.grpc, (await createKey(svc, 'grpc-t', 'viewer')).token);
    outsider = createGrpcClient(svc.grpc, (await createKey(svc, 'grpc-other', 'tenant-admin')).token);
  });

  after(async () => {
    for (const c of [member, viewer, outsider]) c?.close();
    await svc?.stop();
    if (svc) await destroyDataDir(svc.dataDir);
  });

  const rejectsWith = async (p: Promise<unknown>, code: grpc.status, mvmCode: string, detail?: RegExp): Promise<grpc.ServiceError> => {
    let err: grpc.ServiceError | undefined;
    await assert.rejects(p, (e: grpc.ServiceError) => {
      err = e;
      assert.equal(e.code, code, `${e.code} ${e.details}`);
      assert.equal(e.metadata.get('mvm-error-code')[0], mvmCode);
      if (detail) assert.match(e.details, detail);
      return true;
    });
    return err!;
  };

  async function waitFor(c: MicroVMServiceClient, id: string, pred: (vm: MicroVM__Output) => boolean, ms: number): Promise<MicroVM__Output> {
    const deadline = Date.now() + ms;
    for (;;) {
      const r = await unaryCall(c.GetMicroVM.bind(c), { id });
      if (pred(r.microvm!)) return r.microvm!;
      if (r.microvm!.status!.phase === 'Failed') assert.fail(`VM failed: ${r.microvm!.status!.reason} ${r.microvm!.status!.message}`);
      if (Date.now() > deadline) assert.fail(`timeout; last ${JSON.stringify(r.microvm!.status)}`);
      await sleep(250);
    }
  }

  test('full lifecycle of a real guest: create, stream the console while it boots, get, list, metrics, update, stop, delete', async () => {
    const md = new grpc.Metadata();
    md.set('idempotency-key', 'grpc-create-1');
    const req = { spec: { name: 'g1', vcpuCount: 1, memorySize: '128Mi', labels: { via: 'grpc' } } };
    const created = await unaryCall(member.CreateMicroVM.bind(member), req, md);
    assert.match(created.id, /^vm-/);
    assert.equal(created.microvm!.tenant, 'grpc-t');
    assert.equal(created.microvm!.spec!.name, 'g1');
    assert.equal(created.microvm!.desiredState, 'Running');
    // A retry with the same idempotency key is the same VM.
    const md2 = new grpc.Metadata();
    md2.set('idempotency-key', 'grpc-create-1');
    const replay = await unaryCall(member.CreateMicroVM.bind(member), req, md2);
    assert.equal(replay.id, created.id);

    // Stream the console from the start of the boot until the guest's readiness marker arrives.
    const stream = member.GetConsole({ id: created.id, follow: true });
    let text = '';
    const marker = `MVM-READY id=${created.id}`;
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`no marker in ${BOOT_TIMEOUT} ms; got ${text.slice(-500)}`)), BOOT_TIMEOUT);
      stream.on('data', (m: { data: Buffer }) => {
        text += m.data.toString('utf8');
        if (text.includes(marker)) {
          clearTimeout(t);
          resolve();
        }
      });
      stream.on('error', (e) => {
        clearTimeout(t);
        reject(e);
      });
    });
    assert.match(text, /Linux version/);
    const running = await waitFor(member, created.id, (v) => v.status!.phase === 'Running' && v.status!.ready, 60_000);
    assert.ok(running.status!.pid > 0);
    assert.equal(qemuProcessesUnder(svc.dataDir).filter((p) => p.id === created.id).length, 1);

    // Get: the seed's spec + status, and the whole resource.
    const got = await unaryCall(member.GetMicroVM.bind(member), { id: 'g1' });
    assert.equal(got.spec!.vcpuCount, 1);
    assert.equal(got.spec!.memorySize, '128Mi');
    assert.equal(got.status!.phase, 'Running');
    assert.equal(got.status!.node.length > 0, true);
    const list = await unaryCall(member.ListMicroVMs.bind(member), { labelSelector: { via: 'grpc' } });
    assert.deepEqual(list.microvms.map((v) => v.id), [created.id]);
    const metrics = await unaryCall(member.GetMetrics.bind(member), { id: created.id });
    assert.ok(metrics.cpuSeconds > 0);
    // The gRPC mapping carries the node's measured figure: the same as REST reports for the VM.
    const restMetrics = await svc.call('GET', `/microvms/${created.id}/metrics`);
    assert.equal(restMetrics.status, 200, JSON.stringify(restMetrics.json));
    assert.equal(metrics.guestMemoryBytes, restMetrics.json.guestMemoryBytes);
    assert.equal(metrics.guestMemoryBytes, 128 * 1024 * 1024);
    // Console without follow: the log so far.
    const once = member.GetConsole({ id: created.id, follow: false, tailBytes: 4096 });
    let tail = '';
    for await (const m of once) tail += (m as { data: Buffer }).data.toString();
    assert.ok(tail.length > 0 && tail.length <= 4096);

    // Update labels with the current version; a stale version is ABORTED.
    const v = got.microvm!.resourceVersion;
    const upd = await unaryCall(member.UpdateMicroVM.bind(member), { id: created.id, labels: { values: { via: 'grpc', x: '1' } }, resourceVersion: v });
    assert.deepEqual(upd.microvm!.spec!.labels, { via: 'grpc', x: '1' });
    await rejectsWith(unaryCall(member.UpdateMicroVM.bind(member), { id: created.id, labels: { values: {} }, resourceVersion: v }), grpc.status.ABORTED, 'CONFLICT');
    // Changing vCPUs of a running VM is a failed precondition.
    await rejectsWith(unaryCall(member.UpdateMicroVM.bind(member), { id: created.id, vcpuCount: 2 }), grpc.status.FAILED_PRECONDITION, 'ILLEGAL_TRANSITION');

    // Stop: the following console stream ends by itself.
    const follow = member.GetConsole({ id: created.id, follow: true, tailBytes: 1 });
    const ended = new Promise<void>((resolve, reject) => {
      follow.on('data', () => undefined);
      follow.on('end', () => resolve());
      follow.on('error', reject);
    });
    await unaryCall(member.StopMicroVM.bind(member), { id: created.id });
    await waitFor(member, created.id, (x) => x.status!.phase === 'Stopped', 60_000);
    await ended;
    await rejectsWith(unaryCall(member.StopMicroVM.bind(member), { id: created.id }), grpc.status.FAILED_PRECONDITION, 'ILLEGAL_TRANSITION');
    const started = await unaryCall(member.StartMicroVM.bind(member), { id: created.id });
    assert.equal(started.microvm!.desiredState, 'Running');
    await unaryCall(member.DeleteMicroVM.bind(member), { id: created.id });
    const deadline = Date.now() + 60_000;
    for (;;) {
      try {
        await unaryCall(member.GetMicroVM.bind(member), { id: created.id });
      } catch (e) {
        assert.equal((e as grpc.ServiceError).code, grpc.status.NOT_FOUND);
        break;
      }
      assert.ok(Date.now() < deadline, 'deleted within 60 s');
      await sleep(250);
    }
    assert.deepEqual(qemuProcessesUnder(svc.dataDir).filter((p) => p.id === created.id), []);
  });

  test('create with nodeSelector, tolerations and affinity round-trips over gRPC and is the same resource over REST', async () => {
    await createTenant(svc, 'grpc-sched');
    const c = createGrpcClient(svc.grpc, (await createKey(svc, 'grpc-sched', 'member')).token);
    try {
      const spec = {
        name: 'placed',
        labels: { app: 'db' },
        volumes: [{ name: 'data', mountPath: '/data', readOnly: true, size: '1Gi' }],
        nodeSelector: { 'topology.kubernetes.io/zone': 'z1' },
        tolerations: [
          { key: 'dedicated', operator: 'Equal', value: 'vm', effect: 'NoSchedule' },
          { key: 'maintenance', operator: 'Exists', effect: 'NoExecute' },
        ],
        affinity: {
          vmAffinity: { preferred: [{ weight: 40, vmAffinityTerm: { labelSelector: { matchLabels: { app: 'cache' } }, topologyKey: 'topology.kubernetes.io/zone' } }] },
          vmAntiAffinity: { required: [{ labelSelector: { matchExpressions: [{ key: 'app', operator: 'In', values: ['db'] }] } }] },
        },
      };
      const created = await unaryCall(c.CreateMicroVM.bind(c), { spec, noStart: true });
      const expectProto = (s: MicroVM__Output['spec']): void => {
        assert.deepEqual(s!.nodeSelector, { 'topology.kubernetes.io/zone': 'z1' });
        assert.deepEqual(s!.tolerations, [
          { key: 'dedicated', operator: 'Equal', value: 'vm', effect: 'NoSchedule' },
          { key: 'maintenance', operator: 'Exists', value: '', effect: 'NoExecute' },
        ]);
        assert.deepEqual(s!.affinity, {
          vmAffinity: {
            required: [],
            preferred: [{ weight: 40, vmAffinityTerm: { labelSelector: { matchLabels: { app: 'cache' }, matchExpressions: [] }, topologyKey: 'topology.kubernetes.io/zone' } }],
          },
          vmAntiAffinity: { required: [{ labelSelector: { matchLabels: {}, matchExpressions: [{ key: 'app', operator: 'In', values: ['db'] }] }, topologyKey: '' }], preferred: [] },
        });
        assert.deepEqual(s!.volumes, [{ name: 'data', mountPath: '/data', readOnly: true, size: '1Gi' }]);
      };
      expectProto(created.microvm!.spec);
      const got = await unaryCall(c.GetMicroVM.bind(c), { id: created.id });
      expectProto(got.spec);
      expectProto(got.microvm!.spec);
      expectProto((await unaryCall(c.ListMicroVMs.bind(c), {})).microvms.find((v) => v.id === created.id)!.spec);
      // REST sees the same placement constraints (one resource, two APIs).
      const rest = await svc.call('GET', `/microvms/${created.id}`);
      assert.equal(rest.status, 200, JSON.stringify(rest.json));
      assert.deepEqual(rest.json.spec.nodeSelector, spec.nodeSelector);
      assert.deepEqual(rest.json.spec.tolerations, spec.tolerations);
      assert.deepEqual(rest.json.spec.affinity, spec.affinity);
      // A bad topology key is INVALID_ARGUMENT naming the proto field.
      const bad = await rejectsWith(
        unaryCall(c.CreateMicroVM.bind(c), { spec: { name: 'bad-aff', affinity: { vmAntiAffinity: { required: [{ labelSelector: {}, topologyKey: 'not a key!' }] } } }, noStart: true }),
        grpc.status.INVALID_ARGUMENT,
        'VALIDATION_FAILED',
      );
      assert.ok(
        (JSON.parse(bad.metadata.get('mvm-field-violations')[0] as string) as Array<{ field: string }>).some((v) => v.field === 'spec.affinity.vm_anti_affinity.required[0].topology_key'),
        bad.details,
      );
      await unaryCall(c.DeleteMicroVM.bind(c), { id: created.id });
    } finally {
      c.close();
    }
  });

  test('ports and egress over gRPC are the REST fields; UpdateMicroVM changes scheduling, ports and egress like REST update', async () => {
    await createTenant(svc, 'grpc-net');
    const c = createGrpcClient(svc.grpc, (await createKey(svc, 'grpc-net', 'member')).token);
    try {
      const hostPort = 30000 + (process.pid % 2000);
      const spec = {
        name: 'published',
        ports: [
          { hostPort, guestPort: 80, protocol: 'tcp', hostIp: '192.0.2.10', nic: 'eth0' },
          { hostPort: hostPort + 1, guestPort: 53, protocol: 'udp' },
        ],
        egress: { default: 'deny', allow: ['10.0.0.0/8'], deny: ['10.1.0.0/16'] },
      };
      const created = await unaryCall(c.CreateMicroVM.bind(c), { spec, noStart: true });
      const protoPorts = [
        { hostPort, guestPort: 80, protocol: 'tcp', hostIp: '192.0.2.10', nic: 'eth0' },
        { hostPort: hostPort + 1, guestPort: 53, protocol: 'udp', hostIp: '', nic: '' },
      ];
      assert.deepEqual(created.microvm!.spec!.ports, protoPorts);
      assert.deepEqual(created.microvm!.spec!.egress, spec.egress);
      const got = await unaryCall(c.GetMicroVM.bind(c), { id: created.id });
      assert.deepEqual(got.spec!.ports, protoPorts);
      assert.deepEqual(got.spec!.egress, spec.egress);
      // REST reads the same fields.
      const rest = await svc.call('GET', `/microvms/${created.id}`);
      assert.equal(rest.status, 200, JSON.stringify(rest.json));
      assert.deepEqual(rest.json.spec.ports, spec.ports);
      assert.deepEqual(rest.json.spec.egress, spec.egress);
      // The same admission as REST: a port on a NIC the VM does not have is refused.
      await rejectsWith(
        unaryCall(c.CreateMicroVM.bind(c), { spec: { name: 'bad-port', ports: [{ hostPort: hostPort + 2, guestPort: 80, nic: 'eth7' }] }, noStart: true }),
        grpc.status.INVALID_ARGUMENT,
        'UNPROCESSABLE', // valid by the schema, but the VM has no such NIC (422 over REST)
      );

      // Update the scheduling fields, ports and egress; absent fields are kept.
      const upd = await unaryCall(c.UpdateMicroVM.bind(c), {
        id: created.id,
        nodeSelector: { values: { disk: 'ssd' } },
        tolerations: { values: [{ key: 'dedicated', operator: 'Equal', value: 'vm', effect: 'NoSchedule' }] },
        affinity: { vmAntiAffinity: { required: [{ labelSelector: { matchLabels: { app: 'db' } } }] } },
        egress: { default: 'allow' },
        resourceVersion: got.microvm!.resourceVersion,
      });
      assert.deepEqual(upd.microvm!.spec!.nodeSelector, { disk: 'ssd' });
      assert.deepEqual(upd.microvm!.spec!.tolerations, [{ key: 'dedicated', operator: 'Equal', value: 'vm', effect: 'NoSchedule' }]);
      assert.deepEqual(upd.microvm!.spec!.ports, protoPorts, 'absent ports are kept');
      const afterUpd = await svc.call('GET', `/microvms/${created.id}`);
      assert.deepEqual(afterUpd.json.spec.nodeSelector, { disk: 'ssd' });
      assert.deepEqual(afterUpd.json.spec.tolerations, [{ key: 'dedicated', operator: 'Equal', value: 'vm', effect: 'NoSchedule' }]);
      assert.deepEqual(afterUpd.json.spec.affinity, { vmAntiAffinity: { required: [{ labelSelector: { matchLabels: { app: 'db' } } }] } });
      assert.deepEqual(afterUpd.json.spec.egress, { default: 'allow' });
      assert.deepEqual(afterUpd.json.spec.ports, spec.ports);
      assert.equal(afterUpd.json.generation, got.microvm!.generation + 1);
      // Present but empty clears: the ports, the node selector and the tolerations go; affinity stays.
      const cleared = await unaryCall(c.UpdateMicroVM.bind(c), { id: created.id, ports: { values: [] }, nodeSelector: { values: {} }, tolerations: { values: [] } });
      assert.deepEqual(cleared.microvm!.spec!.ports, []);
      const rest2 = await svc.call('GET', `/microvms/${created.id}`);
      assert.deepEqual(rest2.json.spec.ports ?? [], []);
      assert.deepEqual(rest2.json.spec.nodeSelector ?? {}, {});
      assert.deepEqual(rest2.json.spec.tolerations ?? [], []);
      assert.deepEqual(rest2.json.spec.affinity, { vmAntiAffinity: { required: [{ labelSelector: { matchLabels: { app: 'db' } } }] } });
      // A bad toleration key names the update request's proto field.
      const bad = await rejectsWith(
        unaryCall(c.UpdateMicroVM.bind(c), { id: created.id, tolerations: { values: [{ key: 'not a key!', operator: 'Exists' }] } }),
        grpc.status.INVALID_ARGUMENT,
        'VALIDATION_FAILED',
      );
      assert.ok((JSON.parse(bad.metadata.get('mvm-field-violations')[0] as string) as Array<{ field: string }>).some((v) => v.field === 'tolerations[0].key'), bad.details);
      await unaryCall(c.DeleteMicroVM.bind(c), { id: created.id });
    } finally {
      c.close();
    }
  });

  test('create from a snapshot over gRPC: an unknown snapshot is INVALID_ARGUMENT on `snapshot`; a real one restores a clone', async () => {
    await createTenant(svc, 'grpc-snap');
    const c = createGrpcClient(svc.grpc, (await createKey(svc, 'grpc-snap', 'member')).token);
    try {
      const missing = await rejectsWith(unaryCall(c.CreateMicroVM.bind(c), { spec: { name: 'nope' }, snapshot: 'snap-nope' }), grpc.status.NOT_FOUND, 'NOT_FOUND');
      assert.ok((JSON.parse(missing.metadata.get('mvm-field-violations')[0] as string) as Array<{ field: string }>).some((v) => v.field === 'snapshot'), missing.details);

      const origin = await unaryCall(c.CreateMicroVM.bind(c), { spec: { name: 'origin', labels: { role: 'origin' } } });
      await waitFor(c, origin.id, (v) => v.status!.phase === 'Running' && v.status!.ready, BOOT_TIMEOUT);
      const snap = await svc.call('POST', `/microvms/${origin.id}/snapshots`, { body: { name: 'gsnap' } });
      assert.equal(snap.status, 201, JSON.stringify(snap.json));
      assert.equal(snap.json.phase, 'Ready');
      // vcpu/memory/kernel/rootfs come from the snapshot; a different vcpu count is refused.
      await rejectsWith(unaryCall(c.CreateMicroVM.bind(c), { spec: { name: 'clash', vcpuCount: 2 }, snapshot: 'gsnap' }), grpc.status.INVALID_ARGUMENT, 'UNPROCESSABLE');
      const clone = await unaryCall(c.CreateMicroVM.bind(c), { spec: { name: 'clone', labels: { role: 'clone' } }, snapshot: 'gsnap' });
      assert.notEqual(clone.id, origin.id);
      const ready = await waitFor(c, clone.id, (v) => v.status!.phase === 'Running' && v.status!.ready, BOOT_TIMEOUT);
      assert.deepEqual(ready.spec!.labels, { role: 'clone' });
      const rest = await svc.call('GET', `/microvms/${clone.id}`);
      assert.deepEqual(rest.json.spec.source, { snapshot: snap.json.id });
      for (const id of [clone.id, origin.id]) await unaryCall(c.DeleteMicroVM.bind(c), { id });
    } finally {
      c.close();
    }
  });

  test('another tenant gets NOT_FOUND for every RPC on a foreign VM, exactly like a missing one', async () => {
    const vm = await unaryCall(member.CreateMicroVM.bind(member), { spec: { name: 'private' }, noStart: true });
    const rpcs: Array<[string, (c: MicroVMServiceClient, id: string) => Promise<unknown>]> = [
      ['Get', (c, id) => unaryCall(c.GetMicroVM.bind(c), { id })],
      ['Update', (c, id) => unaryCall(c.UpdateMicroVM.bind(c), { id, labels: { values: { x: 'y' } } })],
      ['Delete', (c, id) => unaryCall(c.DeleteMicroVM.bind(c), { id })],
      ['Start', (c, id) => unaryCall(c.StartMicroVM.bind(c), { id })],
      ['Stop', (c, id) => unaryCall(c.StopMicroVM.bind(c), { id })],
      ['Metrics', (c, id) => unaryCall(c.GetMetrics.bind(c), { id })],
      [
        'Console',
        (c, id) =>
          new Promise((resolve, reject) => {
            const s = c.GetConsole({ id });
            s.on('data', () => undefined);
            s.on('error', reject);
            s.on('end', resolve);
          }),
      ],
    ];
    for (const [name, fn] of rpcs) {
      const foreign = await rejectsWith(fn(outsider, vm.id), grpc.status.NOT_FOUND, 'NOT_FOUND');
      const missing = await rejectsWith(fn(outsider, 'vm-00000000000000'), grpc.status.NOT_FOUND, 'NOT_FOUND');
      assert.equal(foreign.details.replace(vm.id, 'X'), missing.details.replace('vm-00000000000000', 'X'), name);
    }
    const theirs = await unaryCall(outsider.ListMicroVMs.bind(outsider), {});
    assert.ok(!theirs.microvms.some((v) => v.id === vm.id));
    const still = await unaryCall(member.GetMicroVM.bind(member), { id: vm.id });
    assert.deepEqual(still.spec!.labels, {});
  });

  test('roles, validation and quotas map to gRPC status codes; calls are audited with transport grpc', async () => {
    await rejectsWith(unaryCall(viewer.CreateMicroVM.bind(viewer), { spec: { name: 'v' }, noStart: true }), grpc.status.PERMISSION_DENIED, 'PERMISSION_DENIED', /role "viewer"/);
    assert.ok((await unaryCall(viewer.ListMicroVMs.bind(viewer), {})).microvms.length >= 1);
    const bad = await rejectsWith(unaryCall(member.CreateMicroVM.bind(member), { spec: { name: 'x', vcpuCount: 99 } }), grpc.status.INVALID_ARGUMENT, 'VALIDATION_FAILED');
    assert.deepEqual(JSON.parse(bad.metadata.get('mvm-field-violations')[0] as string)[0].field, 'spec.vcpu_count');
    await rejectsWith(unaryCall(member.CreateMicroVM.bind(member), { spec: { name: 'Bad Name' } }), grpc.status.INVALID_ARGUMENT, 'VALIDATION_FAILED', /spec\.name/);
    await rejectsWith(unaryCall(member.CreateMicroVM.bind(member), { spec: { name: 'private' }, noStart: true }), grpc.status.ALREADY_EXISTS, 'ALREADY_EXISTS');
    await rejectsWith(unaryCall(member.ListMicroVMs.bind(member), { pageToken: 'garbage' }), grpc.status.INVALID_ARGUMENT, 'VALIDATION_FAILED');
    // Quota of 3 VMs (one exists): two more fit, the third is RESOURCE_EXHAUSTED.
    for (const n of ['q1', 'q2']) await unaryCall(member.CreateMicroVM.bind(member), { spec: { name: n }, noStart: true });
    await rejectsWith(unaryCall(member.CreateMicroVM.bind(member), { spec: { name: 'q3' }, noStart: true }), grpc.status.RESOURCE_EXHAUSTED, 'QUOTA_EXCEEDED');
    // Pagination over gRPC.
    const p1 = await unaryCall(member.ListMicroVMs.bind(member), { pageSize: 2 });
    assert.equal(p1.microvms.length, 2);
    const p2 = await unaryCall(member.ListMicroVMs.bind(member), { pageSize: 2, pageToken: p1.nextPageToken });
    assert.equal(p2.microvms.length, 1);
    assert.equal(p2.nextPageToken, '');
    const audit = await svc.call('GET', '/audit?limit=1000');
    const grpcEntries = audit.json.items.filter((e: { transport: string }) => e.transport === 'grpc');
    assert.ok(grpcEntries.some((e: { operation: string; result: string }) => e.operation === 'microvms.create' && e.result === 'allowed'));
    assert.ok(grpcEntries.some((e: { code: string; result: string }) => e.code === 'PERMISSION_DENIED' && e.result === 'denied'));
    assert.ok(grpcEntries.every((e: { method: string }) => e.method.startsWith('/microvm.service.v1alpha1.MicroVMService/')));
  });
});
