/**
 * Lifetimes (issue 19, ADR 0035) with real QEMU guests: spec.lifecycle.timeout stops or suspends
 * the VM, idleTimeout suspends it and an exec resumes it, the timeout can be extended, and
 * suspended time does not count against it. Each action is an event naming the reason.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { apiCall, destroyDataDir, startService, type TestService, waitForPhase } from '../support/service.js';
import { sleep } from '../../src/vmm/proc.js';

let svc: TestService;
const api = (method: string, path: string, body?: unknown) => apiCall(svc, method, path, body);

const waitPhase = (id: string, phases: string[], timeoutMs?: number, ready?: boolean): Promise<any> => waitForPhase(svc, id, phases, timeoutMs, ready);

const events = async (id: string): Promise<Array<{ reason: string; message: string }>> => (await api('GET', `/microvms/${id}/events`)).json.items;
const create = async (name: string, lifecycle: Record<string, string>): Promise<string> => {
  const r = await api('POST', '/microvms', { name, lifecycle });
  assert.equal(r.status, 201, r.text);
  return r.json.id;
};

const ids: Record<string, string> = {};
before(async () => {
  svc = await startService();
  // These two boot while the others run (TCG boots are slow); their tests only look at the outcome.
  ids.stop = await create('life-stop', { timeout: '4s', onTimeout: 'stop' });
  ids.idle = await create('life-idle', { idleTimeout: '4s' });
});
after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

test('validation: onTimeout and onIdle name the field; the timeout of a VM without one cannot be extended', async () => {
  const bad = await api('POST', '/microvms', { name: 'bad', lifecycle: { timeout: '5s', onTimeout: 'explode' } });
  assert.equal(bad.status, 400, bad.text);
  assert.match(bad.text, /lifecycle\.onTimeout|lifecycle\/onTimeout/);
  const noTimeout = await api('POST', `/microvms/${ids.idle}/timeout`, { timeout: '1m' });
  assert.equal(noTimeout.status, 422, noTimeout.text);
  assert.match(noTimeout.text, /timeout/);
  const badDuration = await api('POST', `/microvms/${ids.extend}/timeout`, { timeout: 'soon' });
  assert.equal(badDuration.status, 400, badDuration.text);
});

test('timeout -> stop after the Running time, with a Timeout event', async () => {
  const stopped = await waitPhase(ids.stop!, ['Stopped'], 180_000);
  assert.equal(stopped.desiredState, 'Stopped');
  assert.equal(stopped.status.lifetime, undefined, 'a stopped VM has no clock (its next start is a new lifetime)');
  const ev = (await events(ids.stop!)).find((e) => e.reason === 'Timeout');
  assert.ok(ev, 'a Timeout event');
  assert.match(ev.message, /lifecycle\.timeout 4s reached: stopping/);
  const ranMs = Date.parse(stopped.status.stoppedAt) - Date.parse(stopped.status.startedAt);
  assert.ok(ranMs >= 3500, `ran ${ranMs} ms before the stop (timeout 4s)`);
});

test('extend: POST /timeout moves the deadline; it holds, then the VM is deleted by onTimeout delete', async () => {
  ids.extend = await create('life-extend', { timeout: '5s', onTimeout: 'delete' });
  await waitPhase(ids.extend, ['Running'], 180_000);
  const r = await api('POST', `/microvms/${ids.extend}/timeout`, { timeout: '12s' });
  assert.equal(r.status, 200, r.text);
  const expires = Date.parse(r.json.status.lifetime.expiresAt);
  assert.ok(Math.abs(expires - (Date.now() + 12_000)) < 2000, r.json.status.lifetime.expiresAt);
  await sleep(7000);
  assert.equal((await api('GET', `/microvms/${ids.extend}`)).json.status.phase, 'Running', 'past the original 5 s, still running');
  const until = Date.now() + 30_000;
  while ((await api('GET', `/microvms/${ids.extend}`)).status !== 404) {
    if (Date.now() > until) throw new Error('not deleted by its timeout');
    await sleep(200);
  }
  assert.ok(Date.now() >= expires - 500, 'not before the extended deadline');
});

test('timeout -> suspend; suspended time does not count: a resume continues with what was left', async () => {
  ids.suspend = await create('life-suspend', { timeout: '6s', onTimeout: 'suspend' });
  await waitPhase(ids.suspend, ['Running'], 180_000);
  await sleep(2000);
  assert.equal((await api('POST', `/microvms/${ids.suspend}/suspend`)).status, 202);
  const s1 = await waitPhase(ids.suspend!, ['Suspended'], 60_000);
  const left = s1.status.lifetime.remainingMs;
  assert.ok(left > 1000 && left <= 4500, `left ${left} ms of 6 s after ~2 s running`);
  await sleep(7000); // longer than the whole timeout
  assert.equal((await api('GET', `/microvms/${ids.suspend}`)).json.status.phase, 'Suspended');
  assert.equal((await api('POST', `/microvms/${ids.suspend}/resume`)).status, 202);
  const back = await waitPhase(ids.suspend!, ['Running'], 60_000);
  const resumedAt = Date.parse(back.status.lifetime?.countingSince ?? new Date().toISOString());
  const s2 = await waitPhase(ids.suspend!, ['Suspended'], 60_000);
  const ran = Date.parse(s2.status.suspendedAt) - resumedAt;
  assert.ok(ran >= left - 1000, `after the resume it ran ${ran} ms, about the ${left} ms left`);
  const ev = await events(ids.suspend!);
  const timeouts = ev.filter((e) => e.reason === 'Timeout');
  assert.equal(timeouts.length, 1, ev.map((e) => e.reason).join(','));
  assert.match(timeouts[0]!.message, /suspending to disk/);
  assert.equal(s2.status.lifetime.remainingMs, 0);
});

test('idle -> suspend; an exec resumes it automatically and answers', async () => {
  // Booted at the start of the file: long idle by now.
  const s = await waitPhase(ids.idle!, ['Suspended'], 180_000);
  assert.equal(s.desiredState, 'Suspended');
  const ev = (await events(ids.idle!)).find((e) => e.reason === 'Idle');
  assert.ok(ev, 'an Idle event');
  assert.match(ev.message, /no activity for lifecycle\.idleTimeout 4s: suspending/);
  // An exec needs the guest: it resumes it and runs.
  const t0 = Date.now();
  const r = await api('POST', `/microvms/${ids.idle}/exec`, { cmd: ['sh', '-c', 'echo awake-$((40+2))'] });
  assert.equal(r.status, 200, r.text);
  assert.equal(r.json.stdout, 'awake-42\n');
  console.log(`exec on a suspended VM (auto-resume) answered in ${Date.now() - t0} ms`);
  assert.equal((await api('GET', `/microvms/${ids.idle}`)).json.status.phase, 'Running');
  // Activity keeps it awake: execs every second for 6 s (longer than the idle timeout).
  for (let i = 0; i < 6; i++) {
    await sleep(1000);
    const x = await api('POST', `/microvms/${ids.idle}/exec`, { cmd: ['true'] });
    assert.equal(x.status, 200, x.text);
    assert.equal((await api('GET', `/microvms/${ids.idle}`)).json.status.phase, 'Running', `still running after ${i + 1} s of activity`);
  }
  // Then idle again.
  await waitPhase(ids.idle!, ['Suspended'], 30_000);
});
