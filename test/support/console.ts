/** Drive a guest's serial shell: type a command into console.sock, read its output from console.log. */
import { createConnection } from 'node:net';
import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { sleep } from '../../src/vmm/proc.js';

let seq = 0;

/** Run `cmd` in the guest's shell and return what it printed. */
export async function guestRun(vmDir: string, cmd: string, timeoutMs = 15_000): Promise<string> {
  const n = `${process.pid}x${++seq}`;
  const log = join(vmDir, 'console.log');
  const start = statSync(log).size;
  // The tty echoes the typed line; quoting the marker makes the echo differ from the output.
  const line = `${cmd}; echo "__done_""${n}__"\n`;
  await new Promise<void>((resolve, reject) => {
    const s = createConnection(join(vmDir, 'console.sock'));
    s.on('error', reject);
    s.on('connect', () => {
      s.write('\n' + line, () => {
        setTimeout(() => {
          s.end();
          resolve();
        }, 100);
      });
    });
  });
  const marker = `__done_${n}__`;
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const text = readFileSync(log).subarray(start).toString('utf8');
    const i = text.indexOf(marker);
    if (i >= 0) return text.slice(0, i);
    if (Date.now() > deadline) throw new Error(`guest command timed out: ${cmd}\n--- console ---\n${text.slice(-2000)}`);
    await sleep(100);
  }
}
