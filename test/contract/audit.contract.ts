/**
 * The contract of the audit port (src/core/ports/audit.ts): append-only entries with an increasing
 * `seq`, queried in seq order with filters and cursor pages. Written once; run by
 * test/unit/store-ports-sqlite.test.ts (SQLite) and test/integration/store-ports-k8s.test.ts
 * (core/v1 Events of a real kube-apiserver).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCodes } from '../../src/core/errors.js';
import type { AuditEntry, AuditLog, AuditQuery, NewAuditEntry } from '../../src/core/ports/audit.js';
import { isCode } from './tenants.contract.js';

export interface AuditContractFixture {
  log: AuditLog;
  close(): Promise<void>;
}

let n = 0;
export function auditFixture(over: Partial<NewAuditEntry> = {}): NewAuditEntry {
  n++;
  return {
    time: new Date(Date.UTC(2030, 0, 1, 0, 0, n)).toISOString(),
    requestId: `req-${n}`,
    transport: 'rest',
    subject: 'user:alice',
    tenant: 'acme',
    role: 'member',
    authMethod: 'jwt',
    operation: 'microvms.create',
    verb: 'create',
    resource: 'microvms',
    method: 'POST /api/v1/microvms',
    sourceIp: '127.0.0.1',
    userAgent: 'mvm-cli/1.0',
    result: 'allowed',
    status: 201,
    ...over,
  };
}

/** An entry of no tenant and no subject (an unauthenticated request). */
function anonymous(over: Partial<NewAuditEntry>): NewAuditEntry {
  const { tenant: _t, subject: _s, role: _r, authMethod: _m, ...rest } = auditFixture(over);
  return rest;
}

export function auditContract(name: string, make: () => Promise<AuditContractFixture>): void {
  describe(`audit log contract: ${name}`, () => {
    const all = async (log: AuditLog, q: AuditQuery = {}): Promise<AuditEntry[]> => {
      const out: AuditEntry[] = [];
      let cursor: string | undefined;
      do {
        const page = await log.query({ ...q, ...(cursor ? { cursor } : {}) });
        out.push(...page.items);
        cursor = page.nextCursor;
      } while (cursor);
      return out;
    };

    test('append returns the entry with its seq; seqs increase in append order; query returns exactly what append returned', async () => {
      const { log, close } = await make();
      const full = auditFixture({ keyId: 'key-1', resourceId: 'vm-1', code: 'OK', reason: 'why not', transport: 'grpc', method: '/mvm.v1.MicroVMs/Create' });
      const bare: NewAuditEntry = { time: '2030-02-02T00:00:00.000Z', requestId: 'r-bare', transport: 'rest', operation: 'health.get', verb: 'get', resource: 'health', method: 'GET /healthz', sourceIp: '::1', result: 'failed', status: 500 };
      const appended: AuditEntry[] = [];
      for (const e of [full, bare, auditFixture(), auditFixture()]) {
        const got = await log.append(e);
        assert.ok(Number.isSafeInteger(got.seq) && got.seq > 0, `seq ${got.seq}`);
        const { seq, ...rest } = got;
        assert.deepEqual(rest, e);
        assert.ok(seq !== undefined);
        appended.push(got);
      }
      for (let i = 1; i < appended.length; i++) assert.ok(appended[i]!.seq > appended[i - 1]!.seq, 'seq increases');
      assert.deepEqual(await all(log), appended);
      const bareBack = (await all(log)).find((e) => e.requestId === 'r-bare')!;
      for (const k of ['tenant', 'subject', 'keyId', 'resourceId', 'userAgent', 'code', 'reason'] as const) assert.ok(!(k in bareBack), `${k} stays absent`);
      await close();
    });

    test('query pages in seq order; a cursor never repeats or skips, entries appended meanwhile come on later pages; the last page has no cursor', async () => {
      const { log, close } = await make();
      const seqs: number[] = [];
      for (let i = 0; i < 5; i++) seqs.push((await log.append(auditFixture())).seq);
      const p1 = await log.query({ limit: 2 });
      assert.deepEqual(p1.items.map((e) => e.seq), seqs.slice(0, 2));
      assert.ok(p1.nextCursor);
      seqs.push((await log.append(auditFixture())).seq); // appended between pages
      const p2 = await log.query({ limit: 2, cursor: p1.nextCursor });
      assert.deepEqual(p2.items.map((e) => e.seq), seqs.slice(2, 4));
      const p3 = await log.query({ limit: 2, cursor: p2.nextCursor! });
      assert.deepEqual(p3.items.map((e) => e.seq), seqs.slice(4, 6));
      assert.equal(p3.nextCursor, undefined, 'a page that ends at the last entry carries no cursor');
      assert.deepEqual((await log.query({ limit: 6 })).nextCursor, undefined);
      assert.ok((await log.query({ limit: 5 })).nextCursor);
      assert.deepEqual((await log.query({})).items.map((e) => e.seq), seqs, 'the default limit holds them all');
      // An old cursor is still good, and now sees what was appended after it.
      seqs.push((await log.append(auditFixture())).seq);
      const p4 = await log.query({ limit: 2, cursor: p2.nextCursor! });
      assert.deepEqual(p4.items.map((e) => e.seq), seqs.slice(4, 6));
      assert.ok(p4.nextCursor);
      assert.deepEqual((await log.query({ limit: 2, cursor: p4.nextCursor })).items.map((e) => e.seq), seqs.slice(6));
      await assert.rejects(log.query({ cursor: 'not-a-cursor' }), isCode(ErrorCodes.VALIDATION_FAILED, 'cursor'));
      await close();
    });

    test('each filter selects exactly its entries, and filters combine', async () => {
      const { log, close } = await make();
      const e = {
        a: await log.append(auditFixture({ time: '2030-03-01T10:00:00.000Z', tenant: 'acme', subject: 'user:alice', operation: 'microvms.create', resource: 'microvms', resourceId: 'vm-a', result: 'allowed' })),
        b: await log.append(auditFixture({ time: '2030-03-01T11:00:00.000Z', tenant: 'acme', subject: 'apikey:acme/ci', keyId: 'key-ci', operation: 'microvms.delete', verb: 'delete', resource: 'microvms', resourceId: 'vm-a', result: 'denied', status: 403, code: 'PERMISSION_DENIED' })),
        c: await log.append(auditFixture({ time: '2030-03-01T12:00:00.000Z', tenant: 'globex', subject: 'user:bob', operation: 'snapshots.create', resource: 'snapshots', resourceId: 'snap-1', result: 'failed', status: 500 })),
        d: await log.append(auditFixture({ time: '2030-03-01T13:00:00.000Z', tenant: 'acme', subject: 'apikey:acme/ci', keyId: 'key-ci', operation: 'microvms.create', resource: 'microvms', resourceId: 'vm-b', result: 'allowed' })),
        e: await log.append(anonymous({ time: '2030-03-01T14:00:00.000Z', operation: 'auth.login', verb: 'create', resource: 'sessions', result: 'denied', status: 401 })),
      };
      const ids = async (q: AuditQuery): Promise<string[]> => (await all(log, q)).map((x) => Object.entries(e).find(([, v]) => v.seq === x.seq)![0]);
      assert.deepEqual(await ids({ tenant: 'acme' }), ['a', 'b', 'd']);
      assert.deepEqual(await ids({ tenant: 'globex' }), ['c']);
      assert.deepEqual(await ids({ tenant: 'initech' }), []);
      assert.deepEqual(await ids({ subject: 'apikey:acme/ci' }), ['b', 'd']);
      assert.deepEqual(await ids({ keyId: 'key-ci' }), ['b', 'd']);
      assert.deepEqual(await ids({ result: 'denied' }), ['b', 'e']);
      assert.deepEqual(await ids({ result: 'failed' }), ['c']);
      assert.deepEqual(await ids({ operation: 'microvms.create' }), ['a', 'd']);
      assert.deepEqual(await ids({ resource: 'microvms' }), ['a', 'b', 'd']);
      assert.deepEqual(await ids({ resourceId: 'vm-a' }), ['a', 'b']);
      assert.deepEqual(await ids({ since: '2030-03-01T11:00:00.000Z' }), ['b', 'c', 'd', 'e'], 'since is inclusive');
      assert.deepEqual(await ids({ until: '2030-03-01T11:00:00.000Z' }), ['a'], 'until is exclusive');
      assert.deepEqual(await ids({ since: '2030-03-01T11:00:00.000Z', until: '2030-03-01T13:00:00.000Z' }), ['b', 'c']);
      assert.deepEqual(await ids({ tenant: 'acme', result: 'allowed', operation: 'microvms.create', keyId: 'key-ci' }), ['d']);
      assert.deepEqual(await ids({ tenant: 'acme', result: 'failed' }), []);
      // The matching entries are whole.
      assert.deepEqual(await all(log, { keyId: 'key-ci', result: 'denied' }), [e.b]);
      await close();
    });

    test('filtered queries page over the matching entries only', async () => {
      const { log, close } = await make();
      const want: number[] = [];
      for (let i = 0; i < 9; i++) {
        const x = await log.append(auditFixture({ tenant: i % 3 === 0 ? 'other' : 'mine', result: i % 2 ? 'denied' : 'allowed' }));
        if (x.tenant === 'mine') want.push(x.seq);
      }
      const pages: number[][] = [];
      let cursor: string | undefined;
      do {
        const page = await log.query({ tenant: 'mine', limit: 4, ...(cursor ? { cursor } : {}) });
        pages.push(page.items.map((e) => e.seq));
        cursor = page.nextCursor;
      } while (cursor);
      assert.deepEqual(pages, [want.slice(0, 4), want.slice(4)]);
      await close();
    });

    test('concurrent appends get distinct seqs, and every one is queryable', async () => {
      const { log, close } = await make();
      const got = await Promise.all(Array.from({ length: 8 }, (_, i) => log.append(auditFixture({ requestId: `burst-${i}` }))));
      assert.equal(new Set(got.map((e) => e.seq)).size, 8);
      const listed = await all(log);
      assert.deepEqual(listed.map((e) => e.seq), got.map((e) => e.seq).sort((a, b) => a - b));
      assert.deepEqual(new Set(listed.map((e) => e.requestId)), new Set(got.map((e) => e.requestId)));
      await close();
    });
  });
}
