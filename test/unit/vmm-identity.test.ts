import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VmmIdentities, parseUidRange, runAsIds, leaseUid } from '../../src/vmm/identity.js';
import { MvmError } from '../../src/core/errors.js';

test('MVM_VMM_UIDS parses a range and names the setting when it is wrong', () => {
  assert.deepEqual(parseUidRange('200000-265535'), { start: 200000, size: 65536 });
  for (const bad of ['0-10', '300-200', 'abc', '200000', '500-400']) {
    assert.throws(() => parseUidRange(bad), (e: MvmError) => e.violations[0]?.field === 'MVM_VMM_UIDS', bad);
  }
});

test('runAs values: uid:gid or a passwd user', () => {
  assert.deepEqual(runAsIds('200001:200001'), { uid: 200001, gid: 200001 });
  assert.deepEqual(runAsIds('root'), { uid: 0, gid: 0 });
  assert.equal(runAsIds(undefined), undefined);
});

test('every VM gets its own uid, the same one again, and a directory only root and its group reach', { skip: process.getuid?.() !== 0 ? 'chown needs root' : undefined }, () => {
  const tmp = mkdtempSync(join(tmpdir(), 'mvm-ids-'));
  try {
    const ids = new VmmIdentities({ range: { start: 300000, size: 3 }, leaseDir: join(tmp, 'leases') });
    const a = ids.assign('vm-a', join(tmp, 'a'));
    const b = ids.assign('vm-b', join(tmp, 'b'));
    assert.notEqual(a.uid, b.uid);
    assert.equal(a.gid, a.uid);
    assert.deepEqual(ids.assign('vm-a', join(tmp, 'a')), a, 'idempotent per VM');
    const st = statSync(join(tmp, 'a'));
    assert.equal(st.uid, 0);
    assert.equal(st.gid, a.gid);
    assert.equal(st.mode & 0o777, 0o710);
    // A second instance sharing the lease folder never hands out a live VM's uid.
    const other = new VmmIdentities({ range: { start: 300000, size: 3 }, leaseDir: join(tmp, 'leases') });
    const c = other.assign('vm-c', join(tmp, 'c'));
    assert.ok(![a.uid, b.uid].includes(c.uid));
    assert.throws(() => other.assign('vm-d', join(tmp, 'd')), /no free uid/);
    // Released, or its directory gone: the uid is free again.
    ids.release('vm-a');
    assert.equal(other.assign('vm-d', join(tmp, 'd')).uid, a.uid);
    rmSync(join(tmp, 'b'), { recursive: true });
    assert.equal(new VmmIdentities({ range: { start: 300000, size: 3 }, leaseDir: join(tmp, 'leases') }).pruneStale(), 0, 'pruned already by the constructor');
    assert.equal(readdirSync(join(tmp, 'leases')).length, 2);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});

test('a lease held by a plain id (the jailer) is honoured by id', () => {
  const tmp = mkdtempSync(join(tmpdir(), 'mvm-ids-'));
  try {
    mkdirSync(join(tmp, 'l'));
    writeFileSync(join(tmp, 'l', '400000'), 'vm-x');
    assert.equal(leaseUid('vm-x', { start: 400000, size: 1 }, join(tmp, 'l'), () => true), 400000);
    assert.throws(() => leaseUid('vm-y', { start: 400000, size: 1 }, join(tmp, 'l'), () => true), /no free uid/);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
});
