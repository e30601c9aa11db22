/**
 * The chaos target of cluster mode: a real kube-apiserver, the operator and one node agent as
 * processes (test/support/k8s-operator-cluster.ts), and the cluster-mode REST API in this process
 * as its own ServiceAccount (test/support/k8s-cluster-api.ts), driven with a tenant's API key. The
 * iteration is runner.ts's, as in standalone mode: the same operations (create with volumes, stop,
 * start, pause, resume, snapshot, restore, delete, label update, volume create/delete, snapshot
 * delete) through the same routes, the same checks; the victims are the node agent (restarted on
 * its data dir), the operator (a new replica: it takes the Lease once the old holder's expired) and
 * a VMM. The API and the API server are never killed. Beyond the API's view the MicroVM objects
 * must converge too (observedGeneration = generation, no deletion left hanging).
 *
 * The convergence deadline: 10 s from the restart (agent, operator) or the kill (VMM), plus the
 * operator's Lease duration (4 s here) after an operator kill.
 */
import { hostNetnsOf } from '../support/service.js';
import type { NodeAgentProc, Proc } from '../support/k8s-operator-cluster.js';
import { startClusterApiHarness, type ClusterApiHarness } from '../support/k8s-cluster-api.js';
import { takeInventory, type Inventory, type InventoryScope } from './inventory.js';
import { planIteration, type Victim } from './plan.js';
import { restCall, runPlan, type Answer, type ChaosTarget, type IterationResult } from './runner.js';

const TENANT = 'chaos';
const NODE = 'node-a';
const LEASE_MS = 4000;
const ADMIN = 'adm_chaos_cluster_token_0123456789';

export class ClusterTarget implements ChaosTarget {
  readonly mode = 'cluster' as const;
  private operatorSeq = 0;
  private constructor(
    readonly k: ClusterApiHarness,
    public agent: NodeAgentProc,
    public operator: Proc,
    private readonly token: string,
  ) {}

  static async start(): Promise<ClusterTarget> {
    const k = await startClusterApiHarness({ admin: ADMIN, nodes: [NODE], waitAgentEndpoints: true });
    try {
      await k.tenant(TENANT);
      const token = await k.apiKey(TENANT, 'member', 'chaos');
      return new ClusterTarget(k, k.c.agents[0]!, k.c.operators[0]!, token);
    } catch (e) {
      await k.stop();
      throw e;
    }
  }

  get vmmDataDir(): string {
    return this.agent.dataDir;
  }

  get scope(): InventoryScope {
    return { dataDir: this.agent.dataDir, hostNetns: hostNetnsOf(this.agent.dataDir), cgroupParent: `mvm-test-${NODE}`, uidLeaseDir: process.env.MVM_VMM_UID_LEASE_DIR ?? '/var/lib/mvm/vmm-uids' };
  }

  call(method: string, path: string, body?: unknown, timeoutMs?: number): Promise<Answer> {
    return restCall(this.k.api.url, this.token, method, path, body, timeoutMs);
  }

  inventory(): Inventory {
    return takeInventory(this.scope);
  }

  async kill9(victim: Victim): Promise<void> {
    if (victim === 'agent') await this.agent.kill9();
    else if (victim === 'operator') await this.operator.kill9();
    else throw new Error(`cluster mode has no ${victim} to kill`);
  }

  async restart(victim: Victim): Promise<number> {
    const t0 = Date.now();
    const c = this.k.c;
    if (victim === 'agent') {
      c.agents.splice(c.agents.indexOf(this.agent), 1);
      this.agent = await c.startAgent(NODE, { dataDir: this.agent.dataDir });
    } else {
      c.operators.splice(c.operators.indexOf(this.operator), 1);
      this.operator = await c.startOperator(`op-${++this.operatorSeq}`);
    }
    return Date.now() - t0;
  }

  graceMs(victim: Victim): number {
    return victim === 'operator' ? LEASE_MS : 0;
  }

  /** The MicroVM objects beyond the API's view: every one observed at its generation, none left mid-deletion. */
  extraChecks(): string[] {
    const r = this.k.c.cp.kubectl(['get', 'mvm', '-n', TENANT, '-o', 'json']);
    if (r.status !== 0) return [`kubectl get mvm: ${r.stderr.trim().slice(0, 200)}`];
    const why: string[] = [];
    for (const o of JSON.parse(r.stdout).items as any[]) {
      if (o.metadata.deletionTimestamp) why.push(`MicroVM ${o.metadata.name} is being deleted`);
      else if (o.status?.observedGeneration !== o.metadata.generation) why.push(`MicroVM ${o.metadata.name}: observedGeneration ${o.status?.observedGeneration} of ${o.metadata.generation}`);
    }
    return why;
  }

  async close(): Promise<void> {
    await this.k.stop();
  }
}

export async function runClusterIteration(t: ClusterTarget, seed: number, log: (s: string) => void = () => {}): Promise<IterationResult> {
  return runPlan(t, planIteration(seed, 'cluster'), log);
}
