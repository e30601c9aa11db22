/**
 * The controller measures the vCPU state on the VMM and corrects both the VMM and the phase (found
 * by the chaos harness, seed 552: a service killed while a snapshot held the guest paused re-adopted
 * the VMM paused, and the VM stayed "Running" with a frozen guest forever). Real SQLite store, a
 * hand-written fake of the agent port that reports the state it is given and records calls.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { pino } from 'pino';
import { Controller } from '../../src/controller/controller.js';
import type { ActualVm, NodeAgent } from '../../src/core/ports/agent.js';
import type { MicroVM } from '../../src/core/microvm.js';
import { Scheduler } from '../../src/scheduler/scheduler.js';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { vmFixture } from '../contract/store.contract.js';

function fakeAgent(state: { vcpus: 'running' | 'paused' }, calls: string[]): NodeAgent {
  const agent: Partial<NodeAgent> = {
    nodeName: 'n1',
    observe: (id: string): ActualVm => ({ id, state: state.vcpus, ready: true, pid: 42, driver: 'qemu', accel: 'tcg' }),
    known: async () => [],
    pause: async () => {
      calls.push('pause');
      state.vcpus = 'paused';
    },
    resume: async () => {
      calls.push('resume');
      state.vcpus = 'running';
    },
  };
  return agent as NodeAgent;
}

async function scenario(phase: 'Running' | 'Paused', desiredState: MicroVM['desiredState'], vcpus: 'running' | 'paused'): Promise<{ phase: string; vcpus: string; calls: string[] }> {
  const store = new SqliteStore(':memory:');
  const state = { vcpus };
  const calls: string[] = [];
  const c = new Controller({ store, agent: fakeAgent(state, calls), scheduler: new Scheduler(), log: pino({ level: 'silent' }) });
  await c.stop(); // reconcile() runs only when called here
  try {
    const vm = await store.createVm(vmFixture({ desiredState, status: { phase, conditions: [], node: 'n1', pid: 42 } }));
    await c.reconcile(vm.id);
    await c.reconcile(vm.id); // a second pass changes nothing more
    return { phase: (await store.getVm(vm.id))!.status.phase, vcpus: state.vcpus, calls };
  } finally {
    await store.close();
  }
}

test('a VMM re-adopted paused while the VM is Running (service killed mid-snapshot) is resumed', async () => {
  assert.deepEqual(await scenario('Running', 'Running', 'paused'), { phase: 'Running', vcpus: 'running', calls: ['resume'] });
});

test('a pause whose phase write was lost: the VMM is paused, the phase becomes Paused', async () => {
  assert.deepEqual(await scenario('Running', 'Paused', 'paused'), { phase: 'Paused', vcpus: 'paused', calls: [] });
});

test('a resume whose phase write was lost: the VMM runs, the phase becomes Running', async () => {
  assert.deepEqual(await scenario('Paused', 'Running', 'running'), { phase: 'Running', vcpus: 'running', calls: [] });
});

test('the ordinary moves still happen: pause a running VM, resume a paused one, leave settled ones alone', async () => {
  assert.deepEqual(await scenario('Running', 'Paused', 'running'), { phase: 'Paused', vcpus: 'paused', calls: ['pause'] });
  assert.deepEqual(await scenario('Paused', 'Running', 'paused'), { phase: 'Running', vcpus: 'running', calls: ['resume'] });
  assert.deepEqual(await scenario('Running', 'Running', 'running'), { phase: 'Running', vcpus: 'running', calls: [] });
  assert.deepEqual(await scenario('Paused', 'Paused', 'paused'), { phase: 'Paused', vcpus: 'paused', calls: [] });
});

test('a spec change that needs no act (a label update of a Running VM) is observed: observedGeneration catches up (chaos, cluster seed 224)', async () => {
  const store = new SqliteStore(':memory:');
  const calls: string[] = [];
  const c = new Controller({ store, agent: fakeAgent({ vcpus: 'running' }, calls), scheduler: new Scheduler(), log: pino({ level: 'silent' }) });
  await c.stop();
  try {
    const vm = await store.createVm(vmFixture({ desiredState: 'Running', status: { phase: 'Running', conditions: [], node: 'n1', pid: 42, observedGeneration: 1 } }));
    await c.reconcile(vm.id);
    const relabelled = await store.updateVm(vm.id, (x) => {
      // As the service's update does (src/core/service.ts): a spec change bumps the generation.
      x.spec = { ...x.spec, labels: { team: 'b' } };
      x.generation += 1;
      return x;
    });
    assert.equal(relabelled.generation, vm.generation + 1);
    assert.equal((await store.getVm(vm.id))!.status.observedGeneration, vm.generation);
    await c.reconcile(vm.id);
    const after = (await store.getVm(vm.id))!;
    assert.equal(after.status.observedGeneration, relabelled.generation);
    assert.equal(after.status.phase, 'Running');
    assert.deepEqual(calls, []);
  } finally {
    await store.close();
  }
});
