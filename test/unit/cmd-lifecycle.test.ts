/**
 * The binaries' shared shutdown (src/cmd/lifecycle.ts), in a real child process: a signal runs
 * the closers in reverse order and exits 0 (1 when one failed, after the others still ran); a
 * second signal while closing exits at once with 128 + its number.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';

const lifecycleJs = new URL('../../src/cmd/lifecycle.js', import.meta.url).href;

/** Start a child with `closers` (JS source of an array of async functions), signal it, collect its output and exit code. */
async function run(closers: string, signals: NodeJS.Signals[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const src = `
    import { shutdownOnSignals } from ${JSON.stringify(lifecycleJs)};
    const log = { info: (fields, msg) => console.log(msg, JSON.stringify(fields)) };
    shutdownOnSignals({ binary: 'test-bin', log, closers: ${closers}, fields: () => ({ extra: 1 }) });
    console.log('ready');
    setInterval(() => undefined, 1000);
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', src], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (b: Buffer) => (stdout += b.toString()));
  child.stderr.on('data', (b: Buffer) => (stderr += b.toString()));
  while (!stdout.includes('ready')) await new Promise((r) => setTimeout(r, 10));
  for (const [i, sig] of signals.entries()) {
    if (i > 0) await new Promise((r) => setTimeout(r, 200));
    child.kill(sig);
  }
  const code = await new Promise<number | null>((r) => child.once('exit', (c) => r(c)));
  return { code, stdout, stderr };
}

test('a signal runs the closers in reverse order, then exits 0', async () => {
  const r = await run(`[async () => console.log('close first-started'), async () => console.log('close last-started')]`, ['SIGTERM']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /shutting down \{"signal":"SIGTERM","extra":1\}\nclose last-started\nclose first-started\n/);
});

test('a failing closer does not stop the others; the exit code is 1', async () => {
  const r = await run(`[async () => console.log('closed'), async () => { throw new Error('boom'); }]`, ['SIGINT']);
  assert.equal(r.code, 1);
  assert.match(r.stdout, /closed/);
  assert.match(r.stderr, /test-bin: shutdown failed: boom/);
});

test('a second signal while closing exits at once with 128 + its number', async () => {
  const r = await run(`[() => new Promise(() => undefined)]`, ['SIGTERM', 'SIGINT']);
  assert.equal(r.code, 130);
  assert.match(r.stderr, /test-bin: SIGINT again, exiting without finishing the shutdown/);
});
