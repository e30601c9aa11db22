/**
 * The short seeded variant of `make chaos` (README "Chaos"): three fixed seeds against the real
 * standalone service, each a kill -9 at a planned point of its operations, then the checks of
 * test/chaos/runner.ts (convergence within the deadlines, no acknowledged write lost, nothing
 * left on the host once everything is deleted). The seeds: 239, the service killed 64 ms into a
 * snapshot of a Running VM (the guest stayed frozen under a "Running" VM before the controller
 * measured the vCPU state), then two restores from that snapshot; 52, a VMM killed 11 ms into a
 * restore (the restored VM ends Failed and boots again on start); 79, the service killed 49 ms
 * into a volume delete, then a VM created with another volume. A
 * failure names the seed; replay it with `make chaos SEED=<seed> ITERATIONS=1`.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { StandaloneTarget, runIteration } from '../chaos/standalone.js';

const SEEDS = [239, 52, 79];
const skip = process.getuid?.() !== 0 ? 'needs root (guests, network namespaces, cgroups)' : false;

let target: StandaloneTarget | undefined;
before(async () => {
  if (!skip) target = await StandaloneTarget.start();
});
after(async () => {
  await target?.close();
});

for (const seed of SEEDS) {
  test(`chaos seed ${seed}: kill -9, restart, converge, nothing lost, nothing leaked`, { skip, timeout: 240_000 }, async () => {
    const lines: string[] = [];
    const r = await runIteration(target!, seed, (s) => lines.push(s));
    assert.ok(r.didKill, `the planned victim existed: ${r.killed}\n${lines.join('\n')}`);
    assert.deepEqual(r.failures, [], `seed ${seed} (replay: make chaos SEED=${seed} ITERATIONS=1)\n${lines.join('\n')}`);
    assert.ok(r.convergenceMs !== undefined && r.convergenceMs <= r.deadlineMs!, `control plane converged in ${r.convergenceMs} ms, deadline ${r.deadlineMs} ms`);
    assert.ok(r.guestMs !== undefined && r.guestMs <= r.guestDeadlineMs!, `guests converged in ${r.guestMs} ms, deadline ${r.guestDeadlineMs} ms`);
  });
}
