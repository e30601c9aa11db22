/**
 * The store contract against the Kubernetes adapter and a real kube-apiserver (ADR 0007, ADR 0010),
 * plus what only this adapter has: objects kubectl sees, optimistic-concurrency retries, a watch
 * that reports other writers, expired cursors.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { MvmError } from '../../src/core/errors.js';
import type { StoreChange } from '../../src/core/ports/store.js';
import { KUBERNETES_STORE_CAPABILITIES, KubernetesStore } from '../../src/store/kubernetes/k8s-store.js';
import { storeContract, vmFixture } from '../contract/store.contract.js';
import { installCrds, startControlPlane } from '../support/k8s-control-plane.js';

const cp = await startControlPlane();
after(() => cp.stop());
installCrds(cp);

let n = 0;
const make = (partition = `c${n++}`): KubernetesStore => new KubernetesStore({ kubeConfig: cp.kubeConfig(), partition });

storeContract('kubernetes', async () => make(), KUBERNETES_STORE_CAPABILITIES);

const until = async (what: string, ok: () => boolean, ms = 10_000): Promise<void> => {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
};

test('kubernetes: a VM is a MicroVM object in its tenant namespace, created on demand', async () => {
  const s = make('kv');
  const vm = await s.createVm(vmFixture({ name: 'web', tenant: 'acme', spec: { vcpu: 2, memory: '256Mi', labels: { app: 'web' } } }));
  await s.updateVm(vm.id, (v) => ({ ...v, status: { ...v.status, phase: 'Running', ip: '10.100.0.7', node: 'n1', conditions: [{ type: 'GuestReady', status: 'True', lastTransitionTime: new Date().toISOString() }] } }));
  const obj = JSON.parse(cp.kubectlOk(['get', 'microvm', 'web', '-n', 'kv-acme', '-o', 'json'])) as { metadata: { labels: Record<string, string> }; spec: Record<string, unknown>; status: Record<string, unknown> };
  assert.equal(obj.metadata.labels['microvm.service/id'], vm.id);
  assert.equal(obj.metadata.labels['microvm.service/tenant'], 'acme');
  assert.equal(obj.metadata.labels.app, 'web');
  assert.equal(obj.spec.desiredState, 'Running');
  assert.equal(obj.status.phase, 'Running');
  const table = cp.kubectlOk(['get', 'mvm', '-n', 'kv-acme']);
  assert.match(table, /^NAME\s+PHASE\s+IP\s+NODE\s+VCPU\s+MEMORY\s+READY\s+AGE\n/);
  assert.match(table, /\nweb\s+Running\s+10\.100\.0\.7\s+n1\s+2\s+256Mi\s+True\s+/);
  // A write by someone else (kubectl) is what the store reads next.
  cp.kubectlOk(['patch', 'microvm', 'web', '-n', 'kv-acme', '--type=merge', '-p', '{"spec":{"desiredState":"Stopped"}}']);
  assert.equal((await s.getVm(vm.id))?.desiredState, 'Stopped');
  await s.close();
});

test('kubernetes: concurrent read-modify-writes are retried on 409, none is lost', async () => {
  const a = make('rmw');
  const b = make('rmw');
  const vm = await a.createVm(vmFixture({ tenant: 't' }));
  const bump = (s: KubernetesStore) => s.updateVm(vm.id, (v) => ({ ...v, spec: { ...v.spec, labels: { ...v.spec.labels, n: String(Number(v.spec.labels?.n ?? 0) + 1) } } }));
  await Promise.all([...Array.from({ length: 5 }, () => bump(a)), ...Array.from({ length: 5 }, () => bump(b))]);
  assert.equal((await a.getVm(vm.id))?.spec.labels?.n, '10');
  // With an expected version, a 409 is the caller's CONFLICT, not a retry.
  const cur = (await a.getVm(vm.id))!;
  await b.updateVm(vm.id, (v) => ({ ...v, desiredState: 'Stopped' }));
  await assert.rejects(a.updateVm(vm.id, (v) => ({ ...v, desiredState: 'Paused' }), cur.resourceVersion), (e: unknown) => e instanceof MvmError && e.code === 'CONFLICT');
  await Promise.all([a.close(), b.close()]);
});

test('kubernetes: watch reports other writers once, including kubectl deletes', async () => {
  const writer = make('w');
  const reader = make('w');
  const seen: StoreChange[] = [];
  const unsub = reader.watch((c) => seen.push(c));
  // The reader's watch is up once it reports a write of the writer (it lists first, then watches).
  const probe = await writer.createVm(vmFixture({ tenant: 't', name: 'probe' }));
  for (let i = 0; !seen.some((c) => c.id === probe.id); i++) {
    await writer.updateVm(probe.id, (v) => ({ ...v, spec: { ...v.spec, labels: { i: String(i) } } }));
    await new Promise((r) => setTimeout(r, 50));
    assert.ok(i < 200, 'the watch never came up');
  }
  const vm = await writer.createVm(vmFixture({ tenant: 't', name: 'watched' }));
  await until('create', () => seen.some((c) => c.id === vm.id));
  await writer.updateVm(vm.id, (v) => ({ ...v, status: { ...v.status, phase: 'Scheduled' } }));
  await until('update', () => seen.filter((c) => c.id === vm.id).length >= 2);
  cp.kubectlOk(['delete', 'microvm', 'watched', '-n', 'w-t']);
  await until('delete', () => seen.some((c) => c.id === vm.id && c.deleted));
  assert.deepEqual(seen.filter((c) => c.id === vm.id).map((c) => c.deleted), [false, false, true]);
  assert.equal(await reader.getVm(vm.id), undefined);
  unsub();
  await Promise.all([writer.close(), reader.close()]);
});

test('kubernetes: events are core/v1 Events on the MicroVM', async () => {
  const s = make('ev');
  const vm = await s.createVm(vmFixture({ tenant: 't', name: 'noisy' }));
  await s.appendEvent({ vmId: vm.id, tenant: 't', time: '2030-01-02T03:04:05.678Z', type: 'Warning', reason: 'BootFailed', message: 'no kernel' });
  const ev = JSON.parse(cp.kubectlOk(['get', 'events', '-n', 'ev-t', '--field-selector', 'involvedObject.kind=MicroVM,involvedObject.name=noisy', '-o', 'json'])) as { items: Array<{ reason: string; type: string; involvedObject: { uid?: string } }> };
  assert.equal(ev.items.length, 1);
  assert.equal(ev.items[0]!.reason, 'BootFailed');
  assert.ok(ev.items[0]!.involvedObject.uid);
  const listed = await s.listEvents({ vmId: vm.id });
  assert.equal(listed.length, 1);
  assert.equal(listed[0]!.time, '2030-01-02T03:04:05.678Z');
  assert.equal(listed[0]!.type, 'Warning');
  assert.equal(listed[0]!.tenant, 't');
  assert.deepEqual(await s.listEvents({ tenant: 't' }), listed);
  await s.close();
});

test('kubernetes: the API server refuses what the CRD schema refuses, naming the field', async () => {
  const s = make('val');
  await assert.rejects(s.createVm(vmFixture({ tenant: 't', spec: { vcpu: 9, memory: '64Gi' } })), (e: unknown) => {
    assert.ok(e instanceof MvmError);
    assert.equal(e.code, 'VALIDATION_FAILED');
    assert.deepEqual([...new Set(e.violations.map((v) => v.field))].sort(), ['memory', 'vcpu']); // memory may break more than one rule (pattern and range)
    return true;
  });
  await s.close();
});
