/**
 * The store port's contract. Every adapter (SQLite now, Kubernetes in cluster
 * mode) runs this same suite: `storeContract('sqlite', () => new SqliteStore(...))`.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { MvmError } from '../../src/core/errors.js';
import { newId, type MicroVM } from '../../src/core/microvm.js';
import type { Store, StoreChange } from '../../src/core/ports/store.js';

export function vmFixture(over: Partial<MicroVM> = {}): MicroVM {
  const now = new Date().toISOString();
  return {
    id: newId('vm'),
    name: `vm-${Math.random().toString(36).slice(2, 8)}`,
    tenant: 'default',
    spec: { vcpu: 1, memory: '128Mi', labels: {} },
    desiredState: 'Running',
    status: { phase: 'Pending', conditions: [] },
    generation: 1,
    resourceVersion: '0',
    createdAt: now,
    updatedAt: now,
    ...over,
  };
}

/**
 * What an adapter declares it does differently from the reference semantics (SQLite); each one
 * gates exactly the assertions it names. Absent = the reference behaviour.
 */
export interface StoreContractCapabilities {
  /**
   * Cursor pages are a consistent snapshot taken at the first page (Kubernetes limit/continue):
   * an insert after the first page is not part of that listing (it still never shifts pages).
   */
  listSnapshot?: boolean;
  /** false: quota admission is check-then-write, so concurrent creates may pass a limit together. */
  atomicAdmission?: boolean;
}

export function storeContract(name: string, make: () => Promise<Store>, caps: StoreContractCapabilities = {}): void {
  describe(`store contract: ${name}`, () => {
    test('create, get, names unique per tenant only', async () => {
      const s = await make();
      const a = await s.createVm(vmFixture({ name: 'same', tenant: 't1' }));
      assert.equal((await s.getVm(a.id))?.name, 'same');
      await assert.rejects(s.createVm(vmFixture({ name: 'same', tenant: 't1' })), (e: unknown) => e instanceof MvmError && e.code === 'ALREADY_EXISTS');
      await s.createVm(vmFixture({ name: 'same', tenant: 't2' }));
      assert.equal(await s.getVm('vm-missing'), undefined);
      await s.close();
    });

    test('update is read-modify-write with resourceVersion; conditional update conflicts', async () => {
      const s = await make();
      const a = await s.createVm(vmFixture());
      const b = await s.updateVm(a.id, (v) => ({ ...v, desiredState: 'Stopped' }));
      assert.equal(b.desiredState, 'Stopped');
      assert.notEqual(b.resourceVersion, a.resourceVersion);
      await assert.rejects(s.updateVm(a.id, (v) => v, a.resourceVersion), (e: unknown) => e instanceof MvmError && e.code === 'CONFLICT');
      await assert.rejects(s.updateVm('vm-missing', (v) => v), (e: unknown) => e instanceof MvmError && e.code === 'NOT_FOUND');
      // A mutate that throws changes nothing.
      await assert.rejects(s.updateVm(a.id, () => {
        throw new Error('boom');
      }));
      assert.equal((await s.getVm(a.id))?.resourceVersion, b.resourceVersion);
      await s.close();
    });

    test('list filters by tenant, name, phase and labels; cursor pages are stable under inserts', async () => {
      const s = await make();
      const ids: string[] = [];
      for (let i = 0; i < 7; i++) ids.push((await s.createVm(vmFixture({ name: `p${i}`, tenant: 'pg', spec: { vcpu: 1, memory: '128Mi', labels: { i: String(i % 2) } } }))).id);
      await s.createVm(vmFixture({ tenant: 'other' }));
      const seen: string[] = [];
      let cursor: string | undefined;
      let first = true;
      do {
        const page = await s.listVms({ tenant: 'pg', limit: 3, ...(cursor ? { cursor } : {}) });
        seen.push(...page.items.map((v) => v.id));
        cursor = page.nextCursor;
        if (first) {
          // Inserted after the first page: appears at the end, never shifts pages.
          ids.push((await s.createVm(vmFixture({ name: 'late', tenant: 'pg' }))).id);
          first = false;
        }
      } while (cursor);
      assert.deepEqual(seen, caps.listSnapshot ? ids.slice(0, -1) : ids);
      assert.equal((await s.listVms({ tenant: 'pg', labels: { i: '1' } })).items.length, 3);
      assert.equal((await s.listVms({ tenant: 'pg', name: 'p3' })).items[0]?.id, ids[3]);
      await s.updateVm(ids[0]!, (v) => ({ ...v, status: { ...v.status, phase: 'Running' } }));
      assert.deepEqual((await s.listVms({ tenant: 'pg', phase: 'Running' })).items.map((v) => v.id), [ids[0]]);
      await s.close();
    });

    test('delete, events, and change notifications', async () => {
      const s = await make();
      const changes: StoreChange[] = [];
      const unsub = s.watch((c) => changes.push(c));
      const a = await s.createVm(vmFixture());
      await s.updateVm(a.id, (v) => v);
      await s.appendEvent({ vmId: a.id, tenant: a.tenant, time: new Date().toISOString(), type: 'Normal', reason: 'Created', message: 'x' });
      await s.appendEvent({ vmId: a.id, tenant: a.tenant, time: new Date().toISOString(), type: 'Warning', reason: 'Boom', message: 'y' });
      const ev = await s.listEvents({ vmId: a.id });
      assert.deepEqual(ev.map((e) => e.reason), ['Created', 'Boom']);
      assert.deepEqual((await s.listEvents({ vmId: a.id, afterSeq: ev[0]!.seq! })).map((e) => e.reason), ['Boom']);
      await s.deleteVm(a.id);
      assert.equal(await s.getVm(a.id), undefined);
      unsub();
      assert.deepEqual(changes.map((c) => c.deleted), [false, false, true]);
      await s.close();
    });

    test('conditional update with the current version succeeds; spec and status change together', async () => {
      const s = await make();
      const a = await s.createVm(vmFixture());
      const b = await s.updateVm(
        a.id,
        (v) => ({ ...v, desiredState: 'Stopped', spec: { ...v.spec, vcpu: 2 }, status: { ...v.status, phase: 'Stopped', reason: 'UserStop' } }),
        a.resourceVersion,
      );
      const got = await s.getVm(a.id);
      assert.equal(got?.resourceVersion, b.resourceVersion);
      assert.equal(got?.desiredState, 'Stopped');
      assert.equal(got?.spec.vcpu, 2);
      assert.equal(got?.status.phase, 'Stopped');
      assert.equal(got?.status.reason, 'UserStop');
      // A second writer with the old version loses, whichever part it changes.
      await assert.rejects(s.updateVm(a.id, (v) => ({ ...v, status: { ...v.status, phase: 'Failed' } }), a.resourceVersion), (e: unknown) => e instanceof MvmError && e.code === 'CONFLICT');
      assert.equal((await s.getVm(a.id))?.status.phase, 'Stopped');
      await s.close();
    });

    test('a created VM keeps what it was given: spec, desired state, status, times', async () => {
      const s = await make();
      const vm = vmFixture({
        desiredState: 'Stopped',
        spec: { vcpu: 2, memory: '256Mi', labels: { app: 'web', note: 'hello world, not a label value' }, rootfs: { size: '1Gi', readOnly: false }, ports: [{ hostPort: 8080, guestPort: 80, protocol: 'tcp' }] },
        status: { phase: 'Stopped', reason: 'Created', conditions: [{ type: 'GuestReady', status: 'False', lastTransitionTime: new Date().toISOString() }] },
      });
      const a = await s.createVm(vm);
      const got = await s.getVm(a.id);
      for (const v of [a, got!]) {
        assert.equal(v.id, vm.id);
        assert.equal(v.name, vm.name);
        assert.equal(v.tenant, vm.tenant);
        assert.deepEqual(v.spec, vm.spec);
        assert.equal(v.desiredState, 'Stopped');
        assert.deepEqual(v.status, vm.status);
        assert.equal(v.createdAt, vm.createdAt);
      }
      // Label values that are not Kubernetes label values still select.
      assert.deepEqual((await s.listVms({ tenant: vm.tenant, labels: { note: 'hello world, not a label value' } })).items.map((v) => v.id), [a.id]);
      assert.deepEqual((await s.listVms({ tenant: vm.tenant, labels: { note: 'other' } })).items, []);
      await s.close();
    });

    test('list without a tenant pages over every tenant', async () => {
      const s = await make();
      const ids = new Set<string>();
      for (const t of ['ta', 'tb', 'tc']) for (let i = 0; i < 2; i++) ids.add((await s.createVm(vmFixture({ tenant: t, name: `x${i}` }))).id);
      const seen: string[] = [];
      let cursor: string | undefined;
      do {
        const page = await s.listVms({ limit: 4, ...(cursor ? { cursor } : {}) });
        assert.ok(page.items.length <= 4);
        seen.push(...page.items.map((v) => v.id));
        cursor = page.nextCursor;
      } while (cursor);
      assert.deepEqual(new Set(seen), ids);
      assert.equal(seen.length, ids.size);
      await assert.rejects(s.listVms({ cursor: 'not-a-cursor' }), (e: unknown) => e instanceof MvmError && e.code === 'VALIDATION_FAILED' && e.violations[0]?.field === 'cursor');
      await s.close();
    });

    test('quota admission refuses what passes a limit and changes nothing then', async () => {
      const s = await make();
      const limits = { vms: 2, vcpu: 3 };
      const a = await s.createVm(vmFixture({ tenant: 'q' }), { admission: { limits } });
      await s.createVm(vmFixture({ tenant: 'q' }), { admission: { limits } });
      const extra = vmFixture({ tenant: 'q' });
      await assert.rejects(s.createVm(extra, { admission: { limits } }), (e: unknown) => e instanceof MvmError && e.code === 'QUOTA_EXCEEDED');
      assert.equal(await s.getVm(extra.id), undefined);
      await assert.rejects(s.updateVm(a.id, (v) => ({ ...v, spec: { ...v.spec, vcpu: 3 } }), undefined, { admission: { limits } }), (e: unknown) => e instanceof MvmError && e.code === 'QUOTA_EXCEEDED');
      assert.equal((await s.getVm(a.id))?.spec.vcpu, 1);
      await s.updateVm(a.id, (v) => ({ ...v, spec: { ...v.spec, vcpu: 2 } }), undefined, { admission: { limits } });
      // Another tenant has its own usage.
      await s.createVm(vmFixture({ tenant: 'q2' }), { admission: { limits } });
      await s.close();
    });

    test('the hostPorts quota counts published ports on create and on updates that add ports', async () => {
      const s = await make();
      const limits = { hostPorts: 3 };
      const ports = (n: number, base = 30000) => Array.from({ length: n }, (_, i) => ({ hostPort: base + i, guestPort: 80 }));
      const withPorts = (n: number, base?: number) => vmFixture({ tenant: 'hp', spec: { ...vmFixture().spec, ports: ports(n, base) } });
      const a = await s.createVm(withPorts(2), { admission: { limits } });
      const extra = withPorts(2, 30010);
      await assert.rejects(s.createVm(extra, { admission: { limits } }), (e: unknown) => e instanceof MvmError && e.code === 'QUOTA_EXCEEDED' && e.details.resource === 'hostPorts');
      assert.equal(await s.getVm(extra.id), undefined);
      await s.createVm(withPorts(1, 30020), { admission: { limits } });
      await assert.rejects(s.updateVm(a.id, (v) => ({ ...v, spec: { ...v.spec, ports: ports(3) } }), undefined, { admission: { limits } }), (e: unknown) => e instanceof MvmError && e.code === 'QUOTA_EXCEEDED');
      assert.equal((await s.getVm(a.id))?.spec.ports?.length, 2);
      // Fewer ports, or the same number on other host ports, always pass.
      await s.updateVm(a.id, (v) => ({ ...v, spec: { ...v.spec, ports: ports(2, 30100) } }), undefined, { admission: { limits } });
      await s.updateVm(a.id, (v) => ({ ...v, spec: { ...v.spec, ports: ports(1) } }), undefined, { admission: { limits } });
      await s.close();
    });

    test('concurrent creates never pass a quota together', { skip: caps.atomicAdmission === false ? 'adapter declares atomicAdmission: false' : false }, async () => {
      const s = await make();
      const limits = { vms: 3 };
      const results = await Promise.allSettled(Array.from({ length: 8 }, () => s.createVm(vmFixture({ tenant: 'race' }), { admission: { limits } })));
      assert.equal(results.filter((r) => r.status === 'fulfilled').length, 3);
      assert.equal((await s.listVms({ tenant: 'race' })).items.length, 3);
      await s.close();
    });
  });
}
