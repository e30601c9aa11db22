/**
 * The chaos target of standalone mode: the real service as a separate process (its own process
 * group, a private data dir), killed (-9, the whole group) and restarted on the same data dir. The
 * iteration itself (the plan, the kill, the checks) is runner.ts's.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { destroyDataDir, hostNetnsOf, startService, type TestService } from '../support/service.js';
import { takeInventory, type Inventory, type InventoryScope } from './inventory.js';
import { planIteration, type Victim } from './plan.js';
import { restCall, runPlan, type Answer, type ChaosTarget, type IterationResult } from './runner.js';

export { summarize, killedReason, type IterationResult } from './runner.js';

/** The service under test: started once per run, killed and restarted on the same data dir. */
export class StandaloneTarget implements ChaosTarget {
  readonly mode = 'standalone' as const;

  private constructor(
    public svc: TestService,
    readonly dataDir: string,
    readonly scope: InventoryScope,
    private readonly env: Record<string, string>,
  ) {}

  static async start(): Promise<StandaloneTarget> {
    const dataDir = mkdtempSync(join(tmpdir(), 'mvm-chaos-'));
    const env = { MVM_CGROUP_PARENT: `mvm-chaos-${dataDir.slice(-6)}` };
    const svc = await startService({ dataDir, env });
    return new StandaloneTarget(svc, dataDir, { dataDir, hostNetns: hostNetnsOf(dataDir), cgroupParent: env.MVM_CGROUP_PARENT, uidLeaseDir: process.env.MVM_VMM_UID_LEASE_DIR ?? '/var/lib/mvm/vmm-uids' }, env);
  }

  get vmmDataDir(): string {
    return this.dataDir;
  }

  async kill9(victim: Victim = 'service'): Promise<void> {
    if (victim !== 'service') throw new Error(`standalone mode has no ${victim} to kill`);
    await this.svc.kill9();
  }

  graceMs(): number {
    return 0;
  }

  /** Start the service again on the same data dir; ms until it answers. */
  async restart(): Promise<number> {
    const t0 = Date.now();
    this.svc = await startService({ dataDir: this.dataDir, env: this.env });
    return Date.now() - t0;
  }

  call(method: string, path: string, body?: unknown, timeoutMs?: number): Promise<Answer> {
    return restCall(this.svc.url, this.svc.token, method, path, body, timeoutMs);
  }

  inventory(): Inventory {
    return takeInventory(this.scope);
  }

  async close(): Promise<void> {
    await this.svc.kill9();
    // Whatever a failed iteration left: guests, namespaces, cgroups (our parent), the data dir.
    await destroyDataDir(this.dataDir);
    const { rmdirSync, readdirSync, existsSync, writeFileSync } = await import('node:fs');
    for (const root of ['/sys/fs/cgroup', ...['cpu', 'memory', 'pids'].map((c) => `/sys/fs/cgroup/${c}`)]) {
      const p = join(root, this.scope.cgroupParent);
      if (!existsSync(p)) continue;
      for (const c of readdirSync(p, { withFileTypes: true }).filter((e) => e.isDirectory())) {
        try {
          writeFileSync(join(p, c.name, 'cgroup.kill'), '1');
        } catch {
          /* v1 */
        }
        try {
          rmdirSync(join(p, c.name));
        } catch {
          /* busy */
        }
      }
      try {
        rmdirSync(p);
      } catch {
        /* busy */
      }
    }
  }
}
/** Run one iteration (its seed's plan) against the service; never throws for a failed check. */
export async function runIteration(t: StandaloneTarget, seed: number, log: (s: string) => void = () => {}): Promise<IterationResult> {
  return runPlan(t, planIteration(seed, 'standalone'), log);
}
