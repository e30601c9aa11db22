/**
 * Following a console log with backpressure (issue 13): the follower hands over bounded chunks,
 * and a writer that waits for a slow destination stops pulling, so a guest flooding its console
 * while the client reads slowly never makes the service hold the flood.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { FOLLOW_CHUNK, followConsole, writeWithBackpressure } from '../../src/gateway/console-stream.js';

const MiB = 1024 * 1024;

test('a followed console is handed over in bounded chunks, and a full destination stops the reading', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'console-follow-'));
  const log = join(dir, 'console.log');
  writeFileSync(log, '');
  const ac = new AbortController();
  // A destination that takes 64 KiB and then never drains (a client that stopped reading).
  const written: number[] = [];
  const stuck = new Writable({ highWaterMark: 64 * 1024, write: (c: Buffer, _e, cb) => (written.push(c.length), void cb) });
  let pulled = 0;
  const follow = (async () => {
    for await (const buf of followConsole({ tail: 0, path: async () => log, alive: async () => true, pollMs: 10, signal: ac.signal })) {
      assert.ok(buf.length <= FOLLOW_CHUNK, `a chunk of ${buf.length} bytes`);
      pulled += buf.length;
      if (!(await writeWithBackpressure(stuck, buf, ac.signal))) break;
    }
  })();
  try {
    await new Promise((r) => setTimeout(r, 50));
    appendFileSync(log, Buffer.alloc(16 * MiB, 'y')); // the guest floods its console
    await new Promise((r) => setTimeout(r, 300));
    // The first write completes nothing (its callback never runs), so the loop waits for a drain
    // that never comes: at most a chunk or two were read out of the 16 MiB.
    assert.ok(pulled <= 2 * FOLLOW_CHUNK, `pulled ${pulled} bytes of the flood into memory`);
    ac.abort();
    await follow;
  } finally {
    ac.abort();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('writeWithBackpressure waits for drain, and answers false once the destination is gone', async () => {
  let release: (() => void) | undefined;
  const slow = new Writable({ highWaterMark: 4, write: (_c, _e, cb) => (release = () => cb()) });
  assert.equal(await writeWithBackpressure(slow, Buffer.from('ab')), true, 'below the mark: no wait');
  let done = false;
  const p = writeWithBackpressure(slow, Buffer.from('cdefgh')).then((r) => ((done = true), r));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(done, false, 'waits while the buffer is full');
  release!();
  await new Promise((r) => setTimeout(r, 5));
  release!();
  assert.equal(await p, true);
  slow.destroy();
  assert.equal(await writeWithBackpressure(slow, Buffer.from('x')), false);
});
