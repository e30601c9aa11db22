/**
 * The contract of the idempotency port (src/core/ports/idempotency.ts): claims of an
 * `Idempotency-Key` scope, replays of the first response, conflicting reuse, takeover of claims
 * whose request died, expiry. Written once; run by test/unit/store-ports-sqlite.test.ts (SQLite)
 * and test/integration/store-ports-k8s.test.ts (ConfigMaps of a real kube-apiserver).
 *
 * Time is the adapter's injected clock (`make(now)`): nothing here sleeps.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { BeginResult, IdempotencyStore, StoredResponse } from '../../src/core/ports/idempotency.js';

export interface IdempotencyContractFixture {
  store: IdempotencyStore;
  close(): Promise<void>;
}

/** `now` is the clock the adapter must read for every decision. */
export type MakeIdempotencyStore = (now: () => number) => Promise<IdempotencyContractFixture>;

const DAY = 86_400_000;
const OPTS = { ttlMs: DAY, lockMs: 60_000 };

const RESPONSE: StoredResponse = {
  status: 201,
  headers: { location: '/api/v1/microvms/vm-1', 'content-type': 'application/json; charset=utf-8', etag: '"7"' },
  body: JSON.stringify({ id: 'vm-1', name: 'wébserver ☃', note: 'a "quoted" body\nwith lines' }),
};

const state = (r: BeginResult): string => r.state;

export function idempotencyContract(name: string, make: MakeIdempotencyStore): void {
  describe(`idempotency store contract: ${name}`, () => {
    /** A store on a manual clock starting at a fixed time. */
    const setup = async (): Promise<{ s: IdempotencyStore; clock: { t: number }; close(): Promise<void> }> => {
      const clock = { t: 1_900_000_000_000 };
      const f = await make(() => clock.t);
      return { s: f.store, clock, close: () => f.close() };
    };

    test('the first begin claims the scope; the same request again is in-progress, another request with the key is mismatch', async () => {
      const { s, close } = await setup();
      assert.deepEqual(await s.begin('t1:k1', 'POST /vms {a}', OPTS), { state: 'new' });
      assert.deepEqual(await s.begin('t1:k1', 'POST /vms {a}', OPTS), { state: 'in-progress' });
      assert.deepEqual(await s.begin('t1:k1', 'POST /vms {b}', OPTS), { state: 'mismatch' });
      assert.deepEqual(await s.begin('t1:k1', 'POST /vms {a}', OPTS), { state: 'in-progress' }, 'a mismatch does not disturb the claim');
      await close();
    });

    test('a completed claim replays the first response exactly to the same request, and is mismatch for another', async () => {
      const { s, clock, close } = await setup();
      assert.equal(state(await s.begin('t1:k', 'fp', OPTS)), 'new');
      await s.complete('t1:k', RESPONSE);
      for (let i = 0; i < 2; i++) {
        clock.t += 3_600_000; // long past lockMs: a done record is no stale claim
        assert.deepEqual(await s.begin('t1:k', 'fp', OPTS), { state: 'done', response: RESPONSE });
      }
      assert.deepEqual(await s.begin('t1:k', 'other', OPTS), { state: 'mismatch' });
      await close();
    });

    test('a claim older than lockMs is taken over (its request died): in-progress until then, new from then, a fresh claim after', async () => {
      const { s, clock, close } = await setup();
      const t0 = clock.t;
      assert.equal(state(await s.begin('k', 'fp', OPTS)), 'new');
      clock.t = t0 + OPTS.lockMs - 1;
      assert.equal(state(await s.begin('k', 'fp', OPTS)), 'in-progress');
      clock.t = t0 + OPTS.lockMs;
      assert.equal(state(await s.begin('k', 'fp', OPTS)), 'new', 'taken over at lockMs');
      clock.t += 1;
      assert.equal(state(await s.begin('k', 'fp', OPTS)), 'in-progress', 'the takeover is a claim of its own, with its own start');
      // A stale claim is only taken over by the same request: another one is still mismatch.
      clock.t += 10 * OPTS.lockMs;
      assert.equal(state(await s.begin('k', 'another', OPTS)), 'mismatch');
      assert.equal(state(await s.begin('k', 'fp', OPTS)), 'new');
      await s.complete('k', RESPONSE);
      assert.deepEqual(await s.begin('k', 'fp', OPTS), { state: 'done', response: RESPONSE });
      await close();
    });

    test('a record expires after ttlMs: replayed up to its expiry, forgotten after it (any request claims anew)', async () => {
      const { s, clock, close } = await setup();
      const t0 = clock.t;
      const o = { ttlMs: 10_000, lockMs: 60_000 };
      assert.equal(state(await s.begin('k', 'fp', o)), 'new');
      await s.complete('k', RESPONSE);
      clock.t = t0 + o.ttlMs;
      assert.deepEqual(await s.begin('k', 'fp', o), { state: 'done', response: RESPONSE }, 'still there at its expiry');
      assert.equal(state(await s.begin('k', 'other', o)), 'mismatch');
      clock.t = t0 + o.ttlMs + 1;
      assert.equal(state(await s.begin('k', 'other', o)), 'new', 'expired: the key is free');
      assert.equal(state(await s.begin('k', 'fp', o)), 'mismatch', 'the new claim is the other request\'s');
      // An expired in-progress claim is free too, even inside lockMs.
      clock.t += o.ttlMs + 1;
      assert.equal(state(await s.begin('k', 'fp', o)), 'new');
      await close();
    });

    test('abandon forgets an in-progress claim, keeps a completed one, and is no error for an unknown scope', async () => {
      const { s, close } = await setup();
      assert.equal(state(await s.begin('a', 'fp', OPTS)), 'new');
      await s.abandon('a');
      assert.equal(state(await s.begin('a', 'other', OPTS)), 'new', 'abandoned: any request may claim it');
      assert.equal(state(await s.begin('b', 'fp', OPTS)), 'new');
      await s.complete('b', RESPONSE);
      await s.abandon('b');
      assert.deepEqual(await s.begin('b', 'fp', OPTS), { state: 'done', response: RESPONSE }, 'a completed response is never abandoned');
      await s.abandon('never-claimed');
      assert.equal(state(await s.begin('never-claimed', 'fp', OPTS)), 'new');
      await close();
    });

    test('complete without a claim stores nothing', async () => {
      const { s, close } = await setup();
      await s.complete('unclaimed', RESPONSE);
      assert.equal(state(await s.begin('unclaimed', 'fp', OPTS)), 'new');
      assert.equal(state(await s.begin('unclaimed', 'fp', OPTS)), 'in-progress');
      await close();
    });

    test('scopes are independent: the same key of two tenants never meets, whatever the scope\'s characters', async () => {
      const { s, close } = await setup();
      const long = `tenant-c:${'k/é:☃ '.repeat(80)}`;
      for (const scope of ['tenant-a:key-1', 'tenant-b:key-1', long]) assert.equal(state(await s.begin(scope, 'fp', OPTS)), 'new', scope.slice(0, 20));
      await s.complete('tenant-a:key-1', RESPONSE);
      assert.equal(state(await s.begin('tenant-b:key-1', 'fp', OPTS)), 'in-progress');
      await s.abandon('tenant-b:key-1');
      assert.deepEqual(await s.begin('tenant-a:key-1', 'fp', OPTS), { state: 'done', response: RESPONSE });
      assert.equal(state(await s.begin(long, 'fp', OPTS)), 'in-progress');
      assert.equal(state(await s.begin(long.slice(0, -1), 'fp', OPTS)), 'new', 'a prefix is another scope');
      await close();
    });

    test('concurrent begins of one scope: exactly one is new', async () => {
      const { s, close } = await setup();
      const results = await Promise.all(Array.from({ length: 6 }, () => s.begin('race', 'fp', OPTS)));
      assert.deepEqual(results.map(state).sort(), ['in-progress', 'in-progress', 'in-progress', 'in-progress', 'in-progress', 'new']);
      await close();
    });

    test('concurrent takeovers of a stale claim: exactly one is new', async () => {
      const { s, clock, close } = await setup();
      assert.equal(state(await s.begin('stale', 'fp', OPTS)), 'new');
      clock.t += OPTS.lockMs + 1;
      const results = await Promise.all(Array.from({ length: 5 }, () => s.begin('stale', 'fp', OPTS)));
      assert.deepEqual(results.map(state).sort(), ['in-progress', 'in-progress', 'in-progress', 'in-progress', 'new']);
      await close();
    });
  });
}
