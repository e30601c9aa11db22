/**
 * A QEMU that dies while it loads a snapshot: the error names how it ended (found by the chaos
 * harness, seed 3: a VMM killed -9 140 ms into a restore left the VM Failed with "QEMU exited
 * while loading the snapshot (stream: read ECONNRESET)", which reads like a broken snapshot, not
 * a killed process). A fake QMP server on a unix socket stands in for QEMU; the VMM is "gone" at
 * the first look.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SNAPSHOT_FORMAT, SNAPSHOT_RECORD_FILE, restoreIncoming } from '../../src/vmm/qemu/snapshot.js';

/** Greets like QEMU and answers every command with an empty return (or, `dieOn`, resets the connection). */
function fakeQmp(path: string, dieOn?: string): Promise<Server> {
  const srv = createServer((sock) => {
    sock.write(JSON.stringify({ QMP: { version: { qemu: { major: 9, minor: 0, micro: 0 } }, capabilities: [] } }) + '\r\n');
    let buf = '';
    sock.on('data', (d) => {
      buf += d.toString();
      for (let i = buf.indexOf('\n'); i >= 0; i = buf.indexOf('\n')) {
        const line = buf.slice(0, i).trim();
        buf = buf.slice(i + 1);
        if (!line) continue;
        const cmd = JSON.parse(line) as { id?: string; execute: string };
        if (cmd.execute === dieOn) {
          sock.destroy();
          return;
        }
        sock.write(JSON.stringify({ return: { status: 'inmigrate' }, id: cmd.id }) + '\r\n');
      }
    });
    sock.on('error', () => undefined);
  });
  return new Promise((resolve) => srv.listen(path, () => resolve(srv)));
}

test('a QEMU killed while it loads a snapshot: the error says it was killed, by which signal', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-restore-exit-'));
  const srv = await fakeQmp(join(dir, 'qmp.sock'));
  try {
    writeFileSync(join(dir, SNAPSHOT_RECORD_FILE), JSON.stringify({ driver: 'qemu', format: SNAPSHOT_FORMAT, stateFile: 'state.bin' }));
    writeFileSync(join(dir, 'state.bin'), 'x');
    await assert.rejects(
      restoreIncoming({ id: 'vm-1', qmpPath: join(dir, 'qmp.sock'), args: [], snapshot: { dir } as never, alive: () => false, exitReason: async () => 'VMM process 4242 was killed by SIGKILL' }),
      (e: Error) => {
        assert.match(e.message, /^QEMU exited while loading the snapshot: VMM process 4242 was killed by SIGKILL/);
        return true;
      },
    );
  } finally {
    srv.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a QEMU killed while a QMP call is in flight (the call fails first): the error still says it was killed', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-restore-exit-'));
  const srv = await fakeQmp(join(dir, 'qmp.sock'), 'query-status');
  let alive = true;
  try {
    writeFileSync(join(dir, SNAPSHOT_RECORD_FILE), JSON.stringify({ driver: 'qemu', format: SNAPSHOT_FORMAT, stateFile: 'state.bin' }));
    writeFileSync(join(dir, 'state.bin'), 'x');
    const p = restoreIncoming({ id: 'vm-1', qmpPath: join(dir, 'qmp.sock'), args: [], snapshot: { dir } as never, alive: () => alive, exitReason: async () => 'VMM process 4242 was killed by SIGKILL' });
    setTimeout(() => (alive = false), 50);
    await assert.rejects(p, (e: Error) => {
      assert.match(e.message, /^QEMU exited while loading the snapshot: VMM process 4242 was killed by SIGKILL \(/);
      return true;
    });
  } finally {
    srv.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
