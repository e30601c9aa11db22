/**
 * Defects a fuzz run found (issue 14), below the API: snapshot chains (ADR 0030), NIC addresses at
 * admission, API key lifetimes, one `?tenant=` rule for every list, empty gRPC ids, and the field
 * named by a rule between fields. Real SQLite stores; the node agent is a hand-written fake of its port.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import AjvModule from 'ajv';
import addFormatsModule from 'ajv-formats';
import { listTenant, type Principal } from '../../src/core/authz.js';
import { MvmError } from '../../src/core/errors.js';
import type { MicroVM } from '../../src/core/microvm.js';
import type { NodeAgent } from '../../src/core/ports/agent.js';
import { CreateMicroVMRequest, CreateVolumeRequest, SecurityRule } from '../../src/core/schema.js';
import { CreateApiKeyRequest } from '../../src/core/tenancy-schema.js';
import type { SecurityGroupService } from '../../src/core/security-groups.js';
import { MicroVMService } from '../../src/core/service.js';
import { SNAPSHOT_KIND, SnapshotService } from '../../src/core/snapshots.js';
import { TEMPLATE_KIND, TemplateService } from '../../src/core/templates.js';
import { TenantService } from '../../src/core/tenancy.js';
import { ajvToMvmError } from '../../src/gateway/problem.js';
import { requiredId } from '../../src/grpc/mapping.js';
import { networkAdmission } from '../../src/network/admission.js';
import { SqliteResourceStore } from '../../src/store/sqlite/resources.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { SqliteTenantStore } from '../../src/store/sqlite/tenant-store.js';

const Ajv = AjvModule.default;
const addFormats = addFormatsModule.default;

const admin: Principal = { subject: 'admin', tenant: 'default', role: 'admin' };
const member: Principal = { subject: 'm', tenant: 'acme', role: 'member' };

/** The node agent's port: snapshots succeed at once, deletes are recorded. */
function fakeAgent(): NodeAgent & { deleted: string[] } {
  const deleted: string[] = [];
  const impl = {
    deleted,
    nodeName: 'n1',
    snapshot: async () => ({ sizeBytes: 1, driver: 'qemu', durationMs: 1 }),
    deleteSnapshot: async (id: string) => void deleted.push(id),
    deleteTemplate: async (id: string) => void deleted.push(id),
  };
  return new Proxy(impl, { get: (t, k) => (k in t ? t[k as keyof typeof t] : async () => undefined) }) as unknown as NodeAgent & { deleted: string[] };
}

async function world(): Promise<{ store: SqliteStore; snaps: SnapshotService; vms: MicroVMService; templates: TemplateService; resources: SqliteResourceStore; agent: ReturnType<typeof fakeAgent>; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-rel-'));
  const store = new SqliteStore(join(dir, 'state.db'));
  const resources = new SqliteResourceStore(store.database);
  const agent = fakeAgent();
  const vms = new MicroVMService(store, agent);
  const snaps = new SnapshotService(store, resources, agent, vms);
  vms.restoreResolver = (p, req) => snaps.restoreRequest(p, req);
  const templates = new TemplateService(store, resources, agent);
  return { store, snaps, vms, templates, resources, agent, dir };
}

async function running(store: SqliteStore, vm: MicroVM): Promise<MicroVM> {
  return store.updateVm(vm.id, (cur) => ({ ...cur, status: { ...cur.status, phase: 'Running' } }));
}

function code(e: unknown): string {
  assert.ok(e instanceof MvmError, String(e));
  return e.code;
}

test('a snapshot that another snapshot is chained to cannot be deleted (409 naming it); leaf first works', async () => {
  const w = await world();
  try {
    const vm1 = await running(w.store, await w.vms.create(admin, { name: 'one', start: false }));
    const a = await w.snaps.create(admin, vm1.id, 'a');
    // Restore A as a new VM, snapshot it (B's disk copy backs onto A's), then delete that VM.
    const vm2 = await running(w.store, await w.vms.create(admin, { name: 'two', snapshot: a.id, start: false }));
    assert.equal(vm2.spec.source?.snapshot, a.id);
    const b = await w.snaps.create(admin, vm2.id, 'b');
    await assert.rejects(w.snaps.delete(admin, a.id), (e: unknown) => code(e) === 'CONFLICT' && (e as MvmError).message.includes(vm2.id) && (e as MvmError).message.includes(b.id));
    await w.store.deleteVm(vm2.id);
    await assert.rejects(w.snaps.delete(admin, a.id), (e: unknown) => {
      assert.equal(code(e), 'CONFLICT');
      assert.match((e as MvmError).message, new RegExp(`snapshot\\(s\\) ${b.id}`));
      assert.deepEqual((e as MvmError).details.snapshots, [b.id]);
      return true;
    });
    assert.deepEqual(w.agent.deleted, [], 'nothing was removed from the node');
    await w.snaps.delete(admin, b.id);
    await w.snaps.delete(admin, a.id);
    assert.deepEqual(w.agent.deleted, [b.id, a.id]);
  } finally {
    await w.store.close();
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test('an admin restores a snapshot into another tenant; that restore pins the snapshot like any other', async () => {
  const w = await world();
  try {
    const vm1 = await running(w.store, await w.vms.create(admin, { name: 'src', start: false }));
    const a = await w.snaps.create(admin, vm1.id, 'a');
    const other = await w.vms.create(admin, { name: 'copy', snapshot: a.id, start: false }, { tenant: 'acme' });
    assert.equal(other.tenant, 'acme');
    assert.equal(other.spec.source?.snapshot, a.id);
    await assert.rejects(w.snaps.delete(admin, a.id), (e: unknown) => code(e) === 'CONFLICT' && (e as MvmError).message.includes(other.id));
    // A non-admin cannot name another tenant.
    await assert.rejects(w.vms.create({ ...member, tenant: 'default' }, { name: 'steal', snapshot: a.id, start: false }, { tenant: 'acme' }), (e: unknown) => code(e) === 'PERMISSION_DENIED');
  } finally {
    await w.store.close();
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test('a template whose clone was snapshotted cannot be deleted while that snapshot exists', async () => {
  const w = await world();
  try {
    const t = await w.resources.create({ kind: TEMPLATE_KIND, id: 'tpl-1', tenant: 'default', name: 'web', spec: { spec: {}, versions: [{ version: 1, phase: 'Ready', startedAt: new Date().toISOString() }] } });
    await w.resources.create({
      kind: SNAPSHOT_KIND,
      id: 'snap-c',
      tenant: 'default',
      name: 'of-a-clone',
      spec: { vmId: 'vm-gone', phase: 'Ready', driver: 'qemu', node: 'n1', vmSpec: { vcpu: 1, memory: '128Mi', source: { template: { id: t.id, version: 1 } } } },
    });
    await assert.rejects(w.templates.delete(admin, t.id), (e: unknown) => code(e) === 'CONFLICT' && (e as MvmError).message.includes('snap-c'));
    await w.snaps.delete(admin, 'snap-c');
    await w.templates.delete(admin, t.id);
  } finally {
    await w.store.close();
    rmSync(w.dir, { recursive: true, force: true });
  }
});

test('NIC addresses are checked at admission as the network step checks them at start', async () => {
  const groups = { resolve: async () => [] } as unknown as SecurityGroupService;
  const network = { name: 'mvm', bridge: 'fc-br0', subnet: '10.100.0.0/16', gateway: '10.100.0.1' };
  const admit = networkAdmission(groups, { network, ipHolder: (ip) => (ip === '10.100.0.9' ? 'vm-other' : undefined) });
  const fieldOf = async (nics: Array<{ name: string; ip?: string; mac?: string }>): Promise<string | undefined> => {
    try {
      await admit(admin, { vcpu: 1, memory: '128Mi', networkInterfaces: nics }, 'default');
      return undefined;
    } catch (e) {
      return `${code(e)} ${(e as MvmError).violations[0]?.field}`;
    }
  };
  assert.equal(await fieldOf([{ name: 'eth0', ip: 'not-an-ip' }]), 'VALIDATION_FAILED networkInterfaces[0].ip');
  assert.equal(await fieldOf([{ name: 'eth0', ip: '010.100.0.5' }]), 'VALIDATION_FAILED networkInterfaces[0].ip');
  // Valid addresses that the node's network rules out: 422 (the published schema cannot know the node's subnet).
  assert.equal(await fieldOf([{ name: 'eth0', ip: '192.168.1.5' }]), 'UNPROCESSABLE networkInterfaces[0].ip', 'outside the subnet');
  assert.equal(await fieldOf([{ name: 'eth0', ip: '10.100.0.1' }]), 'UNPROCESSABLE networkInterfaces[0].ip', 'the gateway');
  assert.equal(await fieldOf([{ name: 'eth0', ip: '10.100.255.255' }]), 'UNPROCESSABLE networkInterfaces[0].ip', 'the broadcast address');
  assert.equal(await fieldOf([{ name: 'eth0', ip: '10.100.0.5' }, { name: 'eth1', ip: '10.100.0.5' }]), 'UNPROCESSABLE networkInterfaces[1].ip');
  assert.equal(await fieldOf([{ name: 'eth0', mac: '01:00:5e:00:00:01' }]), 'VALIDATION_FAILED networkInterfaces[0].mac', 'multicast');
  assert.equal(await fieldOf([{ name: 'eth0', ip: '10.100.0.9' }]), 'CONFLICT networkInterfaces[0].ip', 'held by another VM');
  assert.equal(await fieldOf([{ name: 'eth0', ip: '10.100.0.5', mac: '02:00:00:00:00:05' }]), undefined);
  // Without a node network (MVM_NETWORK=none, the API of cluster mode): the format still.
  assert.equal(await (async () => networkAdmission(groups)(admin, { vcpu: 1, memory: '128Mi', networkInterfaces: [{ name: 'eth0', ip: 'not-an-ip' }] }, 'default').then(() => 'accepted', (e: unknown) => code(e)))(), 'VALIDATION_FAILED');
});

test('an API key lifetime is bounded: 400 naming expiresIn, never a RangeError', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-rel-'));
  const store = new SqliteStore(join(dir, 'state.db'));
  try {
    const ts = new SqliteTenantStore(store);
    const tenants = new TenantService(store, ts, ts);
    if (!(await ts.getTenant('default'))) await tenants.create(admin, { id: 'default' });
    await assert.rejects(tenants.createKey(admin, { name: 'k', expiresIn: '300000000d' }), (e: unknown) => code(e) === 'VALIDATION_FAILED' && (e as MvmError).violations[0]!.field === 'expiresIn');
    const ok = await tenants.createKey(admin, { name: 'k2', expiresIn: '999999d' });
    assert.ok(ok.key.expiresAt && Date.parse(ok.key.expiresAt) > Date.now());
    // The published schema says the same.
    const v = new Ajv({ strict: false });
    addFormats(v);
    assert.equal(v.validate(CreateApiKeyRequest, { name: 'k', expiresIn: '300000000d' }), false);
    assert.equal(v.validate(CreateApiKeyRequest, { name: 'k', expiresIn: '999999d' }), true);
  } finally {
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('one ?tenant= rule for every list: admins any tenant or all, others only their own (403 otherwise)', () => {
  assert.equal(listTenant(admin, undefined), undefined);
  assert.equal(listTenant(admin, 'acme'), 'acme');
  assert.equal(listTenant(member, undefined), 'acme');
  assert.equal(listTenant(member, 'acme'), 'acme');
  assert.throws(() => listTenant(member, 'other'), (e: unknown) => code(e) === 'PERMISSION_DENIED');
});

test('an empty gRPC id is INVALID_ARGUMENT (VALIDATION_FAILED naming id), not NOT_FOUND', () => {
  assert.throws(() => requiredId(''), (e: unknown) => code(e) === 'VALIDATION_FAILED' && (e as MvmError).violations[0]!.field === 'id');
  assert.throws(() => requiredId('x'.repeat(129)), (e: unknown) => code(e) === 'VALIDATION_FAILED');
  assert.equal(requiredId('vm-1'), 'vm-1');
});

test('rules between fields are in the schema and the error names the field', () => {
  const v = new Ajv({ allErrors: true, strict: false, verbose: true });
  addFormats(v);
  const fields = (schema: object, data: unknown): string[] => {
    const f = v.compile(schema);
    if (f(data)) return [];
    return ajvToMvmError(f.errors ?? [], 'body').violations.map((x) => `${x.field}: ${x.message}`);
  };
  assert.deepEqual(fields(CreateApiKeyRequest, { name: 'k', expiresAt: '2030-01-01T00:00:00Z', expiresIn: '1d' }), ['expiresIn: give expiresAt or expiresIn, not both']);
  assert.deepEqual(fields(CreateApiKeyRequest, { name: 'k', expiresIn: '1d' }), []);
  assert.deepEqual(fields(CreateMicroVMRequest, { name: 'a', snapshot: 's', template: 't' }), ['template: give snapshot or template, not both']);
  assert.deepEqual(fields(CreateMicroVMRequest, { name: 'a', template: 't', vcpu: 2 }), ['vcpu: comes from template: omit it']);
  assert.deepEqual(fields(CreateVolumeRequest, { name: 'v' }), ['size: is required unless fromSnapshot is given']);
  assert.deepEqual(fields(CreateVolumeRequest, { name: 'v', fromSnapshot: 's' }), []);
  assert.deepEqual(fields(SecurityRule, { direction: 'ingress', protocol: 'tcp', cidr: '10.0.0.0/8', group: 'g' }), ['group: give cidr or group, not both']);
  assert.deepEqual(fields(CreateMicroVMRequest, { name: 'a', networkInterfaces: [{ name: 'eth0', ip: 'not-an-ip' }] }), ['networkInterfaces[0].ip: must match format "ipv4"']);
  assert.deepEqual(fields(CreateMicroVMRequest, { name: 'a', networkInterfaces: [{ name: 'eth0', mac: '00:00:00:00:00:00' }] }), ['networkInterfaces[0].mac: must not match ^(00:){5}00$']);
});
