import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../../src/store/sqlite/sqlite-store.js';
import { storeContract, vmFixture } from '../contract/store.contract.js';

const dir = mkdtempSync(join(tmpdir(), 'mvm-store-'));
let n = 0;
storeContract('sqlite', async () => new SqliteStore(join(dir, `s${n++}.db`)));

test('sqlite: an acknowledged write survives kill -9 of the writer', async () => {
  const path = join(dir, 'crash.db');
  const storeUrl = new URL('../../src/store/sqlite/sqlite-store.js', import.meta.url).href;
  const vm = vmFixture({ name: 'durable' });
  // The child writes, prints "acked", and is SIGKILLed by itself right after.
  const script = `import { SqliteStore } from ${JSON.stringify(storeUrl)};
    const s = new SqliteStore(${JSON.stringify(path)});
    await s.createVm(${JSON.stringify(vm)});
    process.stdout.write('acked');
    process.kill(process.pid, 'SIGKILL');`;
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  assert.equal(r.signal, 'SIGKILL');
  assert.equal(r.stdout, 'acked');
  const s = new SqliteStore(path);
  assert.equal((await s.getVm(vm.id))?.name, 'durable');
  await s.close();
});

test.after(() => rmSync(dir, { recursive: true, force: true }));
