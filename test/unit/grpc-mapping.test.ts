/**
 * The gRPC mapping (src/grpc/mapping.ts) against the one schema (src/core/schema.ts) and the proto:
 * every spec field of the TypeBox schema is either mapped to a proto MicroVMSpec field or listed as
 * not carried, every proto field is mapped, and a spec with every mapped field set round-trips
 * proto → REST request → proto unchanged. A field added to the schema or the proto without the
 * mapping fails here.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as protoLoader from '@grpc/proto-loader';
import { CreateMicroVMRequest, MicroVMSpec, UpdateMicroVMRequest } from '../../src/core/schema.js';
import type { MicroVM } from '../../src/core/microvm.js';
import { MvmError } from '../../src/core/errors.js';
import { NOT_SPEC_FIELDS, PROTO_FIELD, createRequestFromProto, specToProto, updateRequestFromProto } from '../../src/grpc/mapping.js';
import { PROTO_FILE, protoRoot } from '../../src/grpc/loader.js';
import type { CreateMicroVMRequest__Output } from '../../src/grpc/generated/microvm/service/v1alpha1/CreateMicroVMRequest.js';
import type { MicroVMSpec__Output } from '../../src/grpc/generated/microvm/service/v1alpha1/MicroVMSpec.js';
import type { UpdateMicroVMRequest__Output } from '../../src/grpc/generated/microvm/service/v1alpha1/UpdateMicroVMRequest.js';

/** The proto's MicroVMSpec field names as written in the .proto (snake_case). */
function protoSpecFields(): string[] {
  const def = protoLoader.loadSync(PROTO_FILE, { keepCase: true, includeDirs: [protoRoot()] });
  const t = def['microvm.service.v1alpha1.MicroVMSpec'] as unknown as { type: { field: Array<{ name: string }> } };
  return t.type.field.map((f) => f.name).sort();
}

/** A proto spec with every field the gRPC API carries set to a non-default value. */
const fullSpec: MicroVMSpec__Output = {
  name: 'full',
  vcpuCount: 2,
  memorySize: '256Mi',
  kernel: { image: 'default', cmdline: 'quiet' },
  rootfs: { image: 'default', size: '1Gi', readOnly: true },
  networkInterfaces: [{ name: 'eth0', mac: '02:00:00:00:00:01', ip: '10.0.0.5' }],
  volumes: [
    { name: 'data', mountPath: '/data', readOnly: true, size: '2Gi' },
    { name: 'scratch', mountPath: '/scratch', readOnly: false, size: '' },
  ],
  labels: { app: 'db', tier: 'backend' },
  securityGroups: ['web'],
  nodeSelector: { 'topology.kubernetes.io/zone': 'z1', disk: 'ssd' },
  tolerations: [
    { key: 'dedicated', operator: 'Equal', value: 'vm', effect: 'NoSchedule' },
    { key: 'maintenance', operator: 'Exists', value: '', effect: 'NoExecute' },
    { key: '', operator: 'Exists', value: '', effect: '' },
  ],
  affinity: {
    vmAffinity: {
      required: [{ labelSelector: { matchLabels: { app: 'cache' }, matchExpressions: [] }, topologyKey: 'topology.kubernetes.io/zone' }],
      preferred: [
        {
          weight: 50,
          vmAffinityTerm: { labelSelector: { matchLabels: {}, matchExpressions: [{ key: 'tier', operator: 'In', values: ['backend', 'cache'] }] }, topologyKey: '' },
        },
      ],
    },
    vmAntiAffinity: {
      required: [{ labelSelector: { matchLabels: { app: 'db' }, matchExpressions: [{ key: 'canary', operator: 'DoesNotExist', values: [] }] }, topologyKey: '' }],
      preferred: [],
    },
  },
  ports: [
    { hostPort: 8080, guestPort: 80, protocol: 'tcp', hostIp: '192.0.2.10', nic: 'eth0' },
    { hostPort: 5353, guestPort: 53, protocol: 'udp', hostIp: '', nic: '' },
  ],
  egress: { default: 'deny', allow: ['10.0.0.0/8', '192.168.1.0/24'], deny: ['10.1.0.0/16'] },
  lifecycle: { bootTimeout: '90s', timeout: '1h', onTimeout: 'suspend', idleTimeout: '10m', onIdle: 'stop' },
  env: { GREETING: 'hello', LANG: 'C.UTF-8' },
  files: [
    { path: '/etc/app.conf', content: 'port=8080\n', encoding: '', mode: 0o600 },
    { path: '/opt/blob', content: 'AAEC', encoding: 'base64', mode: 0 },
  ],
};

describe('gRPC mapping covers the one schema', () => {
  test('every spec field of the TypeBox schema has a row in the mapping table, and every proto MicroVMSpec field is mapped', () => {
    const schemaFields = new Set([...Object.keys(MicroVMSpec.properties), ...Object.keys(CreateMicroVMRequest.properties)]);
    for (const f of NOT_SPEC_FIELDS) schemaFields.delete(f);
    assert.deepEqual(Object.keys(PROTO_FIELD).sort(), [...schemaFields].sort(), 'src/grpc/mapping.ts PROTO_FIELD must list every schema field (mapped, or null if gRPC does not carry it)');
    // gRPC carries every spec field REST does: a field without a mapping is a decision to make here.
    const notCarried = Object.entries(PROTO_FIELD).filter(([, v]) => v === null).map(([k]) => k).sort();
    assert.deepEqual(notCarried, [], 'schema fields without a gRPC mapping');
    const mappedProto = Object.values(PROTO_FIELD).filter((v): v is string => v !== null).map((v) => v.replace(/^spec\./, '')).sort();
    assert.deepEqual(mappedProto, protoSpecFields(), 'the mapping table and proto MicroVMSpec name the same fields');
  });

  test('a spec with every mapped field set round-trips proto → create request → proto', () => {
    const req = createRequestFromProto({ spec: fullSpec, noStart: true, tenant: '' } as CreateMicroVMRequest__Output);
    // Every mapped schema field arrived in the REST-shaped request.
    for (const [k, v] of Object.entries(PROTO_FIELD)) if (v !== null) assert.ok((req as Record<string, unknown>)[k] !== undefined, `${k} (${v}) is not mapped from proto`);
    assert.equal(req.start, false);
    assert.deepEqual(req.nodeSelector, { 'topology.kubernetes.io/zone': 'z1', disk: 'ssd' });
    assert.deepEqual(req.tolerations, [{ key: 'dedicated', operator: 'Equal', value: 'vm', effect: 'NoSchedule' }, { key: 'maintenance', operator: 'Exists', effect: 'NoExecute' }, { operator: 'Exists' }]);
    assert.deepEqual(req.affinity, {
      vmAffinity: {
        required: [{ labelSelector: { matchLabels: { app: 'cache' } }, topologyKey: 'topology.kubernetes.io/zone' }],
        preferred: [{ weight: 50, vmAffinityTerm: { labelSelector: { matchExpressions: [{ key: 'tier', operator: 'In', values: ['backend', 'cache'] }] } } }],
      },
      vmAntiAffinity: { required: [{ labelSelector: { matchLabels: { app: 'db' }, matchExpressions: [{ key: 'canary', operator: 'DoesNotExist' }] } }] },
    });
    assert.deepEqual(req.volumes, [{ name: 'data', mountPath: '/data', readOnly: true, size: '2Gi' }, { name: 'scratch', mountPath: '/scratch' }]);
    assert.deepEqual(req.ports, [{ hostPort: 8080, guestPort: 80, protocol: 'tcp', hostIp: '192.0.2.10', nic: 'eth0' }, { hostPort: 5353, guestPort: 53, protocol: 'udp' }]);
    assert.deepEqual(req.egress, { default: 'deny', allow: ['10.0.0.0/8', '192.168.1.0/24'], deny: ['10.1.0.0/16'] });
    assert.equal(req.snapshot, undefined);
    const { name, start: _start, ...spec } = req;
    const back = specToProto({ name, spec } as unknown as MicroVM);
    assert.deepEqual(back, fullSpec);
  });

  test('an empty spec maps to no optional fields, and back to proto defaults', () => {
    const empty: MicroVMSpec__Output = { name: 'e', vcpuCount: 0, memorySize: '', kernel: null, rootfs: null, networkInterfaces: [], volumes: [], labels: {}, securityGroups: [], nodeSelector: {}, tolerations: [], affinity: null, ports: [], egress: null, lifecycle: null, env: {}, files: [] };
    const req = createRequestFromProto({ spec: empty, noStart: false, tenant: '' } as CreateMicroVMRequest__Output);
    assert.deepEqual(req, { name: 'e' });
    assert.deepEqual(specToProto({ name: 'e', spec: { vcpu: 1, memory: '128Mi' } } as unknown as MicroVM), { ...empty, vcpuCount: 1, memorySize: '128Mi' });
  });

  test('violations in the scheduling fields name the proto fields', () => {
    const bad: MicroVMSpec__Output = {
      ...fullSpec,
      tolerations: [{ key: 'not a key!', operator: 'Exists', value: '', effect: '' }],
      affinity: { vmAffinity: null, vmAntiAffinity: { required: [{ labelSelector: { matchLabels: {}, matchExpressions: [] }, topologyKey: 'not a key!' }], preferred: [] } },
    };
    assert.throws(
      () => createRequestFromProto({ spec: bad, noStart: true, tenant: '' } as CreateMicroVMRequest__Output),
      (e: unknown) => {
        assert.ok(e instanceof MvmError);
        const fields = e.violations.map((v) => v.field);
        assert.ok(fields.includes('spec.tolerations[0].key'), fields.join(', '));
        assert.ok(fields.some((f) => f.includes('spec.affinity') && f.includes('vm_anti_affinity') && f.includes('topology_key')), fields.join(', '));
        return true;
      },
    );
  });

  test('create from a snapshot: CreateMicroVMRequest.snapshot is the REST "snapshot" field; empty means none', () => {
    const empty: MicroVMSpec__Output = { ...fullSpec, name: 'clone', vcpuCount: 0, memorySize: '', kernel: null, rootfs: null, networkInterfaces: [], volumes: [], affinity: null };
    const req = createRequestFromProto({ spec: empty, noStart: false, tenant: '', snapshot: 'snap1' } as CreateMicroVMRequest__Output);
    assert.equal(req.snapshot, 'snap1');
    assert.equal(req.name, 'clone');
    assert.equal(createRequestFromProto({ spec: empty, noStart: false, tenant: '', snapshot: '' } as CreateMicroVMRequest__Output).snapshot, undefined);
    // The same schema limits apply (REST: 1-128 characters).
    assert.throws(
      () => createRequestFromProto({ spec: empty, noStart: false, tenant: '', snapshot: 'x'.repeat(129) } as CreateMicroVMRequest__Output),
      (e: unknown) => e instanceof MvmError && e.violations.some((v) => v.field === 'snapshot'),
    );
  });

  test('ports and egress violations name the proto fields', () => {
    const bad: MicroVMSpec__Output = { ...fullSpec, ports: [{ hostPort: 70000, guestPort: 0, protocol: 'sctp', hostIp: '', nic: '' }], egress: { default: 'maybe', allow: [], deny: [] } };
    assert.throws(
      () => createRequestFromProto({ spec: bad, noStart: true, tenant: '' } as CreateMicroVMRequest__Output),
      (e: unknown) => {
        assert.ok(e instanceof MvmError);
        const fields = e.violations.map((v) => v.field);
        assert.ok(fields.some((f) => f.startsWith('spec.ports[0].host_port')), fields.join(', '));
        assert.ok(fields.some((f) => f.startsWith('spec.ports[0]') && f !== 'spec.ports[0].host_port'), fields.join(', '));
        assert.ok(fields.some((f) => f.startsWith('spec.egress')), fields.join(', '));
        return true;
      },
    );
  });

  test('update: every field REST update can change is carried; message presence decides replace vs keep', () => {
    const none = { id: 'vm-1', vcpuCount: null, memorySize: null, kernel: null, labels: null, resourceVersion: '', securityGroups: null, ports: null, egress: null, nodeSelector: null, tolerations: null, affinity: null, lifecycle: null };
    // Only absent fields: nothing to change, which the schema (minProperties: 1) rejects, as REST does.
    assert.throws(() => updateRequestFromProto(none as unknown as UpdateMicroVMRequest__Output), (e: unknown) => e instanceof MvmError && e.code === 'VALIDATION_FAILED');
    const full = updateRequestFromProto({
      ...none,
      securityGroups: { values: ['web'] },
      ports: { values: [{ hostPort: 8080, guestPort: 80, protocol: '', hostIp: '', nic: '' }] },
      egress: { default: 'deny', allow: ['10.0.0.0/8'], deny: [] },
      nodeSelector: { values: { disk: 'ssd' } },
      tolerations: { values: [{ key: 'dedicated', operator: 'Exists', value: '', effect: 'NoSchedule' }] },
      affinity: fullSpec.affinity,
      lifecycle: { bootTimeout: '2m' },
    } as unknown as UpdateMicroVMRequest__Output);
    const all = updateRequestFromProto({ ...none, vcpuCount: 2, memorySize: '256Mi', kernel: { image: 'default', cmdline: '' }, labels: { values: {} } } as unknown as UpdateMicroVMRequest__Output);
    // REST update's schema minus the fields that are immutable after creation (service.update
    // rejects any change to them, so gRPC leaves them out).
    const immutable = ['rootfs', 'networkInterfaces', 'volumes'];
    assert.deepEqual(
      [...Object.keys(all), ...Object.keys(full)].sort(),
      Object.keys(UpdateMicroVMRequest.properties).filter((k) => !immutable.includes(k)).sort(),
      'UpdateMicroVMRequest (proto) carries every mutable field of the REST update',
    );
    assert.deepEqual(full, {
      securityGroups: ['web'],
      ports: [{ hostPort: 8080, guestPort: 80 }],
      egress: { default: 'deny', allow: ['10.0.0.0/8'] },
      nodeSelector: { disk: 'ssd' },
      tolerations: [{ key: 'dedicated', operator: 'Exists', effect: 'NoSchedule' }],
      lifecycle: { bootTimeout: '2m' },
      affinity: createRequestFromProto({ spec: fullSpec, noStart: true, tenant: '' } as CreateMicroVMRequest__Output).affinity,
    });
    // Present but empty: clears the field.
    const cleared = updateRequestFromProto({
      ...none,
      securityGroups: { values: [] },
      ports: { values: [] },
      egress: { default: '', allow: [], deny: [] },
      nodeSelector: { values: {} },
      tolerations: { values: [] },
      affinity: { vmAffinity: null, vmAntiAffinity: null },
    } as unknown as UpdateMicroVMRequest__Output);
    assert.deepEqual(cleared, { securityGroups: [], ports: [], egress: {}, nodeSelector: {}, tolerations: [], affinity: {} });
    // Scheduling-only update, the rest absent.
    assert.deepEqual(updateRequestFromProto({ ...none, nodeSelector: { values: { zone: 'z2' } } } as unknown as UpdateMicroVMRequest__Output), { nodeSelector: { zone: 'z2' } });
    // Violations name the update request's proto fields.
    assert.throws(
      () => updateRequestFromProto({ ...none, tolerations: { values: [{ key: 'not a key!', operator: 'Exists', value: '', effect: '' }] } } as unknown as UpdateMicroVMRequest__Output),
      (e: unknown) => e instanceof MvmError && e.violations.some((v) => v.field === 'tolerations[0].key'),
    );
  });
});
