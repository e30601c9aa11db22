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

export function storeContract(name: string, make: () => Promise<Store>): void {
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
      assert.deepEqual(seen, ids);
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
  });
}
