/**
 * The contract of the generic resource port (src/core/ports/resources.ts): tenant-scoped records
 * of a kind (security groups, snapshots, volumes...) with names unique per tenant, optimistic
 * concurrency by resourceVersion and change notifications. Written once; run by
 * test/unit/store-ports-sqlite.test.ts (SQLite) and test/integration/store-ports-k8s.test.ts
 * (SecurityGroup and Snapshot objects of a real kube-apiserver).
 *
 * The suite stores kinds that have a CRD (security groups, snapshots) with specs their CRD
 * schemas accept, so both adapters store the same records.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { ErrorCodes } from '../../src/core/errors.js';
import { newId } from '../../src/core/microvm.js';
import type { ResourceStore, StoredResource } from '../../src/core/ports/resources.js';
import { SG_KIND, type SecurityGroupSpec } from '../../src/core/security-groups.js';
import { SNAPSHOT_KIND } from '../../src/core/snapshots.js';
import { isCode } from './tenants.contract.js';

export interface ResourceContractFixture {
  store: ResourceStore;
  /** Make a tenant exist where the adapter keeps resources (Kubernetes: its namespace). */
  ensureTenant(tenant: string): Promise<void>;
  close(): Promise<void>;
}

export interface ResourceContractCapabilities {
  /**
   * Order of `list`: 'created' = by createdAt, then id (reference); 'tenant-name' = by tenant, then
   * name (Kubernetes lists objects by namespace and name).
   */
  listOrder?: 'created' | 'tenant-name';
  /** Only these kinds are stored; any other is CAPABILITY_UNSUPPORTED. Reference: any kind. */
  kinds?: string[];
  /** Resources live in a tenant that exists (`ensureTenant`); creating one elsewhere is NOT_FOUND. Reference: any tenant. */
  tenantMustExist?: boolean;
  /**
   * false: ids are not checked for uniqueness by the adapter (they come from newId, 140 random
   * bits); a taken id is the caller's bug. Reference: ALREADY_EXISTS.
   */
  uniqueIds?: boolean;
}

type Snap = { vmId: string; phase: 'Creating' | 'Ready' | 'Failed'; driver: string; node: string; vmSpec: { vcpu: number; memory: string }; message?: string };

export const sgSpec = (description = 'web tier'): SecurityGroupSpec => ({
  description,
  rules: [
    { direction: 'ingress', protocol: 'tcp', ports: '80', cidr: '0.0.0.0/0', action: 'accept' },
    { direction: 'ingress', protocol: 'udp', ports: 53, group: 'dns', description: 'resolver' },
    { direction: 'egress', protocol: 'any' },
  ],
});

const snapSpec = (): Snap => ({ vmId: newId('vm'), phase: 'Creating', driver: 'qemu', node: 'node-1', vmSpec: { vcpu: 1, memory: '128Mi' } });

const nearNow = (iso: string): boolean => Math.abs(Date.parse(iso) - Date.now()) < 60_000;

export function resourceContract(name: string, make: () => Promise<ResourceContractFixture>, caps: ResourceContractCapabilities = {}): void {
  const order = caps.listOrder ?? 'created';
  const sorted = <T>(rs: Array<StoredResource<T>>): string[] =>
    [...rs]
      .sort((a, b) => (order === 'created' ? a.createdAt.localeCompare(b.createdAt) || a.id.localeCompare(b.id) : a.tenant.localeCompare(b.tenant) || a.name.localeCompare(b.name)))
      .map((r) => r.id);
  const setup = async (...tenants: string[]): Promise<ResourceContractFixture> => {
    const f = await make();
    for (const t of tenants) await f.ensureTenant(t);
    return f;
  };

  describe(`resource store contract: ${name}`, () => {
    test('create returns the stored resource; get and getByName read it back; unknown ids, names and kinds are undefined', async () => {
      const f = await setup('acme', 'globex');
      const s = f.store;
      const id = newId('sg');
      const a = await s.create<SecurityGroupSpec>({ kind: SG_KIND, id, tenant: 'acme', name: 'web', spec: sgSpec() });
      assert.deepEqual({ kind: a.kind, id: a.id, tenant: a.tenant, name: a.name, spec: a.spec }, { kind: SG_KIND, id, tenant: 'acme', name: 'web', spec: sgSpec() });
      assert.ok(a.resourceVersion, 'a resourceVersion');
      assert.ok(nearNow(a.createdAt), a.createdAt);
      assert.equal(a.updatedAt, a.createdAt);
      assert.deepEqual(await s.get(SG_KIND, id), a);
      assert.deepEqual(await s.getByName(SG_KIND, 'acme', 'web'), a);
      assert.equal(await s.get(SG_KIND, newId('sg')), undefined);
      assert.equal(await s.get(SNAPSHOT_KIND, id), undefined, 'an id is of its kind');
      assert.equal(await s.getByName(SNAPSHOT_KIND, 'acme', 'web'), undefined);
      assert.equal(await s.getByName(SG_KIND, 'globex', 'web'), undefined, 'a name is of its tenant');
      assert.equal(await s.getByName(SG_KIND, 'acme', 'nope'), undefined);
      assert.equal(await s.get(SG_KIND, 'Not An Id!'), undefined);
      assert.equal(await s.getByName(SG_KIND, 'acme', 'Not A Name!'), undefined);
      await f.close();
    });

    test('a name is unique per kind and tenant: ALREADY_EXISTS, and the refused create changes nothing; other tenants and kinds may reuse it', async () => {
      const f = await setup('acme', 'globex');
      const s = f.store;
      const a = await s.create({ kind: SG_KIND, id: newId('sg'), tenant: 'acme', name: 'db', spec: sgSpec('first') });
      const dup = newId('sg');
      await assert.rejects(s.create({ kind: SG_KIND, id: dup, tenant: 'acme', name: 'db', spec: sgSpec('second') }), isCode(ErrorCodes.ALREADY_EXISTS, 'name'));
      assert.equal(await s.get(SG_KIND, dup), undefined);
      assert.deepEqual(await s.getByName(SG_KIND, 'acme', 'db'), a);
      const b = await s.create({ kind: SG_KIND, id: newId('sg'), tenant: 'globex', name: 'db', spec: sgSpec('globex') });
      const c = await s.create({ kind: SNAPSHOT_KIND, id: newId('snap'), tenant: 'acme', name: 'db', spec: snapSpec() });
      assert.equal((await s.getByName<SecurityGroupSpec>(SG_KIND, 'globex', 'db'))?.spec.description, 'globex');
      assert.deepEqual(await s.getByName(SNAPSHOT_KIND, 'acme', 'db'), c);
      assert.deepEqual(await s.get(SG_KIND, b.id), b);
      await f.close();
    });

    test('a taken id is ALREADY_EXISTS', { skip: caps.uniqueIds === false ? 'adapter declares uniqueIds: false' : false }, async () => {
      const f = await setup('acme', 'globex');
      const a = await f.store.create({ kind: SG_KIND, id: newId('sg'), tenant: 'acme', name: 'one', spec: sgSpec() });
      await assert.rejects(f.store.create({ kind: SG_KIND, id: a.id, tenant: 'globex', name: 'two', spec: sgSpec() }), isCode(ErrorCodes.ALREADY_EXISTS));
      assert.deepEqual(await f.store.get(SG_KIND, a.id), a);
      assert.deepEqual(await f.store.list(SG_KIND), [a]);
      await f.close();
    });

    test('list returns the resources of a kind, of one tenant or all, in the declared order', async () => {
      const f = await setup('t1', 't2', 'empty');
      const s = f.store;
      const made: Array<StoredResource<SecurityGroupSpec>> = [];
      // Creation order differs from name order.
      for (const [tenant, nm] of [['t2', 'mango'], ['t1', 'pear'], ['t2', 'apple'], ['t1', 'fig'], ['t1', 'kiwi']] as const) {
        made.push(await s.create({ kind: SG_KIND, id: newId('sg'), tenant, name: nm, spec: sgSpec(nm) }));
      }
      const snap = await s.create({ kind: SNAPSHOT_KIND, id: newId('snap'), tenant: 't1', name: 'pear', spec: snapSpec() });
      const all = await s.list<SecurityGroupSpec>(SG_KIND);
      assert.deepEqual(all.map((r) => r.id), sorted(made));
      assert.deepEqual(all, sorted(made).map((id) => made.find((r) => r.id === id)), 'list items are the records');
      const t1 = made.filter((r) => r.tenant === 't1');
      assert.deepEqual((await s.list(SG_KIND, { tenant: 't1' })).map((r) => r.id), sorted(t1));
      assert.deepEqual((await s.list(SG_KIND, { tenant: 'empty' })), []);
      assert.deepEqual((await s.list(SG_KIND, { tenant: 'never-heard-of' })), []);
      assert.deepEqual(await s.list(SNAPSHOT_KIND), [snap]);
      await f.close();
    });

    test('update is read-modify-write of the spec: new resourceVersion and updatedAt, the rest kept; a stale version is CONFLICT; unknown is NOT_FOUND; a throwing mutate changes nothing', async () => {
      const f = await setup('acme');
      const s = f.store;
      const a = await s.create<SecurityGroupSpec>({ kind: SG_KIND, id: newId('sg'), tenant: 'acme', name: 'web', spec: sgSpec('v1') });
      await sleep(5); // so that updatedAt can differ from createdAt
      const b = await s.update<SecurityGroupSpec>(SG_KIND, a.id, (spec) => ({ ...spec, description: 'v2', rules: spec.rules.slice(0, 1) }));
      assert.deepEqual(b.spec, { description: 'v2', rules: sgSpec().rules.slice(0, 1) });
      assert.deepEqual({ kind: b.kind, id: b.id, tenant: b.tenant, name: b.name, createdAt: b.createdAt }, { kind: a.kind, id: a.id, tenant: a.tenant, name: a.name, createdAt: a.createdAt });
      assert.notEqual(b.resourceVersion, a.resourceVersion);
      assert.ok(b.updatedAt > a.createdAt && nearNow(b.updatedAt), `updatedAt ${b.updatedAt} after createdAt ${a.createdAt}`);
      assert.deepEqual(await s.get(SG_KIND, a.id), b);
      const c = await s.update<SecurityGroupSpec>(SG_KIND, a.id, (spec) => ({ ...spec, description: 'v3' }), b.resourceVersion);
      assert.equal(c.spec.description, 'v3');
      await assert.rejects(s.update<SecurityGroupSpec>(SG_KIND, a.id, (spec) => ({ ...spec, description: 'stale' }), b.resourceVersion), isCode(ErrorCodes.CONFLICT));
      await assert.rejects(s.update(SG_KIND, a.id, () => {
        throw new Error('boom');
      }), /boom/);
      assert.deepEqual(await s.get(SG_KIND, a.id), c);
      await assert.rejects(s.update(SG_KIND, newId('sg'), (x) => x), isCode(ErrorCodes.NOT_FOUND));
      await assert.rejects(s.update(SG_KIND, newId('sg'), (x) => x, '1'), isCode(ErrorCodes.NOT_FOUND));
      await assert.rejects(s.update(SNAPSHOT_KIND, a.id, (x) => x), isCode(ErrorCodes.NOT_FOUND), 'an id is of its kind');
      await f.close();
    });

    test('concurrent read-modify-writes lose nothing', async () => {
      const f = await setup('acme');
      const a = await f.store.create<SecurityGroupSpec>({ kind: SG_KIND, id: newId('sg'), tenant: 'acme', name: 'counter', spec: { description: '0', rules: [] } });
      await Promise.all(Array.from({ length: 5 }, () => f.store.update<SecurityGroupSpec>(SG_KIND, a.id, (spec) => ({ ...spec, description: String(Number(spec.description) + 1) }))));
      assert.equal((await f.store.get<SecurityGroupSpec>(SG_KIND, a.id))?.spec.description, '5');
      await f.close();
    });

    test('delete is true once, then false; the resource is gone from get, getByName and list, and its name is free again', async () => {
      const f = await setup('acme');
      const s = f.store;
      const a = await s.create({ kind: SG_KIND, id: newId('sg'), tenant: 'acme', name: 'tmp', spec: sgSpec() });
      const keep = await s.create({ kind: SG_KIND, id: newId('sg'), tenant: 'acme', name: 'keep', spec: sgSpec() });
      assert.equal(await s.delete(SNAPSHOT_KIND, a.id), false, 'an id is of its kind');
      assert.equal(await s.delete(SG_KIND, a.id), true);
      assert.equal(await s.delete(SG_KIND, a.id), false);
      assert.equal(await s.delete(SG_KIND, newId('sg')), false);
      assert.equal(await s.get(SG_KIND, a.id), undefined);
      assert.equal(await s.getByName(SG_KIND, 'acme', 'tmp'), undefined);
      assert.deepEqual(await s.list(SG_KIND), [keep]);
      await assert.rejects(s.update(SG_KIND, a.id, (x) => x), isCode(ErrorCodes.NOT_FOUND));
      const again = await s.create({ kind: SG_KIND, id: newId('sg'), tenant: 'acme', name: 'tmp', spec: sgSpec('again') });
      assert.deepEqual(await s.getByName(SG_KIND, 'acme', 'tmp'), again);
      await f.close();
    });

    test('watch tells each subscriber of every create, update and delete before the write returns, and nothing else; a throwing subscriber fails neither the write nor the others', async () => {
      const f = await setup('acme');
      const s = f.store;
      const seen: string[] = [];
      const unsub = s.watch((kind, id) => seen.push(`${kind}/${id}`));
      const a = await s.create<SecurityGroupSpec>({ kind: SG_KIND, id: newId('sg'), tenant: 'acme', name: 'w', spec: sgSpec() });
      assert.deepEqual(seen, [`${SG_KIND}/${a.id}`]);
      await s.update<SecurityGroupSpec>(SG_KIND, a.id, (spec) => ({ ...spec, description: 'changed' }));
      assert.equal(seen.length, 2);
      await assert.rejects(s.create({ kind: SG_KIND, id: newId('sg'), tenant: 'acme', name: 'w', spec: sgSpec() }));
      await assert.rejects(s.update(SG_KIND, newId('sg'), (x) => x));
      await assert.rejects(s.update(SG_KIND, a.id, (x) => x, 'stale-version'));
      assert.equal(seen.length, 2, 'refused writes tell nothing');
      assert.equal(await s.delete(SG_KIND, a.id), true);
      assert.equal(await s.delete(SG_KIND, a.id), false);
      assert.deepEqual(seen, [`${SG_KIND}/${a.id}`, `${SG_KIND}/${a.id}`, `${SG_KIND}/${a.id}`]);
      // A subscriber that throws, registered before another one.
      const bad = s.watch(() => {
        throw new Error('subscriber bug');
      });
      const second: string[] = [];
      const unsub2 = s.watch((kind, id) => second.push(`${kind}/${id}`));
      const b = await s.create<SecurityGroupSpec>({ kind: SG_KIND, id: newId('sg'), tenant: 'acme', name: 'w2', spec: sgSpec() });
      await s.update<SecurityGroupSpec>(SG_KIND, b.id, (spec) => ({ ...spec, description: 'x' }));
      assert.equal(await s.delete(SG_KIND, b.id), true);
      assert.deepEqual(second, [`${SG_KIND}/${b.id}`, `${SG_KIND}/${b.id}`, `${SG_KIND}/${b.id}`]);
      assert.equal(seen.length, 6);
      unsub();
      bad();
      unsub2();
      await s.create({ kind: SNAPSHOT_KIND, id: newId('snap'), tenant: 'acme', name: 'quiet', spec: snapSpec() });
      assert.equal(seen.length, 6, 'unsubscribed');
      assert.equal(second.length, 3);
      await f.close();
    });

    test(`kinds ${caps.kinds ? `other than ${caps.kinds.join(', ')} are CAPABILITY_UNSUPPORTED` : 'are any string'}`, async () => {
      const f = await setup('acme');
      const s = f.store;
      const r = { kind: 'gadget', id: newId('gdg'), tenant: 'acme', name: 'g', spec: { anything: [1, { deep: true }] } };
      if (caps.kinds) {
        for (const k of [SG_KIND, SNAPSHOT_KIND]) assert.ok(caps.kinds.includes(k), `the suite needs kind ${k}`);
        const unsupported = isCode(ErrorCodes.CAPABILITY_UNSUPPORTED);
        await assert.rejects(s.create(r), unsupported);
        await assert.rejects(s.get('gadget', r.id), unsupported);
        await assert.rejects(s.list('gadget'), unsupported);
      } else {
        const a = await s.create(r);
        assert.deepEqual(await s.get('gadget', r.id), a);
        assert.deepEqual(await s.list('gadget', { tenant: 'acme' }), [a]);
        assert.equal(await s.delete('gadget', r.id), true);
      }
      await f.close();
    });

    test(`a resource of a tenant that does not exist ${caps.tenantMustExist ? 'is NOT_FOUND' : 'is stored'}`, async () => {
      const f = await make();
      const r = { kind: SG_KIND, id: newId('sg'), tenant: 'nowhere', name: 'lost', spec: sgSpec() };
      if (caps.tenantMustExist) {
        await assert.rejects(f.store.create(r), isCode(ErrorCodes.NOT_FOUND));
        assert.equal(await f.store.get(SG_KIND, r.id), undefined);
      } else {
        const a = await f.store.create(r);
        assert.deepEqual(await f.store.getByName(SG_KIND, 'nowhere', 'lost'), a);
      }
      await f.close();
    });
  });
}
