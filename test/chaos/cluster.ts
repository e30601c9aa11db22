/**
 * The chaos runner in cluster mode (the subset: create, stop, start and delete of MicroVM objects
 * on a real kube-apiserver, with kill -9 of the node agent, the operator or a VMM). The operator
 * and one node agent run as processes against the control plane (test/support/k8s-operator-cluster.ts);
 * writes are `kubectl` calls, acknowledged by the API server (which is never killed). After the kill
 * the harness restarts the agent on the same data dir, or a new operator replica (it takes the
 * Lease once the old holder's has expired), then checks what standalone.ts checks: convergence
 * (phase = spec.desiredState, observedGeneration = generation, acked deletes gone, the node's
 * VMMs, namespaces, cgroups and leases exactly the live VMs'), acked writes, and at the end the
 * node's host inventory equal to the one taken before the iteration.
 *
 * The convergence deadline: 10 s from the restart (agent, operator) or the kill (VMM), plus the
 * operator's Lease duration (4 s here) after an operator kill, 30 s when a VM still has to launch.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { hostNetnsOf, qemuProcessesUnder } from '../support/service.js';
import { microVMs, startCluster, type NodeAgentProc, type Proc, type TestCluster } from '../support/k8s-operator-cluster.js';
import { diffInventory, takeInventory, type Inventory, type InventoryScope } from './inventory.js';
import { describePlan, planIteration, type Op, type Plan } from './plan.js';
import { BASE_DEADLINE_MS, LAUNCH_DEADLINE_MS, killedReason, type IterationResult } from './standalone.js';

const NS = 'chaos';
const NODE = 'node-a';
const LEASE_MS = 4000;
const TRANSITIONAL = ['Pending', 'Scheduled', 'Starting', 'Stopping', 'Deleting'];

export class ClusterTarget {
  private operatorSeq = 0;
  private constructor(
    readonly c: TestCluster,
    public agent: NodeAgentProc,
    public operator: Proc,
  ) {}

  static async start(): Promise<ClusterTarget> {
    const c = await startCluster();
    try {
      const operator = await c.startOperator('op-0');
      const agent = await c.startAgent(NODE);
      c.cp.kubectlOk(['create', 'namespace', NS]);
      return new ClusterTarget(c, agent, operator);
    } catch (e) {
      await c.stop();
      throw e;
    }
  }

  get scope(): InventoryScope {
    return { dataDir: this.agent.dataDir, hostNetns: hostNetnsOf(this.agent.dataDir), cgroupParent: `mvm-test-${NODE}`, uidLeaseDir: process.env.MVM_VMM_UID_LEASE_DIR ?? '/var/lib/mvm/vmm-uids' };
  }

  inventory(): Inventory {
    return takeInventory(this.scope);
  }

  async restartAgent(): Promise<number> {
    await this.agent.kill9();
    const t0 = Date.now();
    this.c.agents.splice(this.c.agents.indexOf(this.agent), 1);
    this.agent = await this.c.startAgent(NODE, { dataDir: this.agent.dataDir });
    return Date.now() - t0;
  }

  async restartOperator(): Promise<number> {
    await this.operator.kill9();
    const t0 = Date.now();
    this.c.operators.splice(this.c.operators.indexOf(this.operator), 1);
    this.operator = await this.c.startOperator(`op-${++this.operatorSeq}`);
    return Date.now() - t0;
  }

  async close(): Promise<void> {
    await this.c.stop();
  }
}

export async function runClusterIteration(t: ClusterTarget, seed: number, log: (s: string) => void = () => {}): Promise<IterationResult> {
  return new ClusterIteration(t, planIteration(seed, 'cluster'), log).run();
}

interface Track {
  name: string;
  created: boolean;
  deleted: boolean;
  desired: string;
}

class ClusterIteration {
  private readonly vms = new Map<string, Track>();
  private readonly killed = new Set<string>();
  private readonly failures: string[] = [];
  private acked = 0;
  private refused = 0;
  private r: Partial<IterationResult> = {};

  constructor(
    private readonly t: ClusterTarget,
    private readonly plan: Plan,
    private readonly log: (s: string) => void,
  ) {}

  private fail(s: string): void {
    this.failures.push(s);
    this.log(`  FAIL ${s}`);
  }

  private get mvm() {
    return microVMs(this.t.c, NS);
  }

  private list(): any[] {
    const r = this.t.c.cp.kubectl(['get', 'mvm', '-n', NS, '-o', 'json']);
    return r.status === 0 ? (JSON.parse(r.stdout).items as any[]) : [];
  }

  async run(): Promise<IterationResult> {
    const t0 = Date.now();
    const p = this.plan;
    this.log(`seed ${p.seed} (cluster): ${describePlan(p)}`);
    const before = this.t.inventory();
    try {
      for (const [i, op] of p.ops.entries()) {
        this.issue(op);
        if (i === p.kill.at) {
          if (p.kill.when === 'after') await this.settle(op);
          await sleep(p.kill.delayMs);
          await this.kill(op);
        } else await this.settle(op);
      }
    } catch (e) {
      this.fail(`harness: ${(e as Error).stack ?? String(e)}`);
    }
    await this.teardown(before);
    const k = p.kill;
    return {
      seed: p.seed,
      plan: describePlan(p),
      victim: k.victim,
      op: p.ops[k.at]!.kind,
      when: k.when,
      delayMs: k.delayMs,
      killed: this.r.killed ?? 'nothing',
      didKill: this.r.didKill ?? false,
      ...(this.r.restartMs !== undefined ? { restartMs: this.r.restartMs } : {}),
      ...(this.r.convergenceMs !== undefined ? { convergenceMs: this.r.convergenceMs } : {}),
      ...(this.r.deadlineMs !== undefined ? { deadlineMs: this.r.deadlineMs } : {}),
      acked: this.acked,
      inFlight: 0,
      refused: this.refused,
      durationMs: Date.now() - t0,
      failures: this.failures,
    };
  }

  private issue(op: Op): void {
    const name = `${this.plan.prefix}-${op.vm}`;
    const cp = this.t.c.cp;
    let res;
    switch (op.kind) {
      case 'create':
        res = cp.kubectl(['apply', '-f', '-'], this.mvm.manifest(name, { desiredState: 'Running' }));
        if (res.status === 0) this.vms.set(op.vm!, { name, created: true, deleted: false, desired: 'Running' });
        break;
      case 'stop':
      case 'start':
        if (!this.vms.get(op.vm!)) return;
        res = cp.kubectl(['patch', 'mvm', name, '-n', NS, '--type=merge', '-p', JSON.stringify({ spec: { desiredState: op.kind === 'stop' ? 'Stopped' : 'Running' } })]);
        if (res.status === 0) this.vms.get(op.vm!)!.desired = op.kind === 'stop' ? 'Stopped' : 'Running';
        break;
      case 'delete':
        if (!this.vms.get(op.vm!)) return;
        res = cp.kubectl(['delete', 'mvm', name, '-n', NS, '--wait=false']);
        if (res.status === 0) this.vms.get(op.vm!)!.deleted = true;
        break;
      default:
        return;
    }
    if (res.status === 0) this.acked++;
    else {
      this.refused++;
      this.log(`  ${op.kind} ${op.vm}: kubectl refused: ${res.stderr.trim().slice(0, 200)}`);
    }
  }

  private async settle(op: Op): Promise<void> {
    const v = this.vms.get(op.vm!);
    if (!v) return;
    const ok = await this.until(op.kind === 'delete' ? 60_000 : 180_000, () => {
      const o = this.mvm.get(v.name);
      if (op.kind === 'delete') return !o;
      const ready = o?.status?.conditions?.some((x: any) => x.type === 'GuestReady' && x.status === 'True');
      return o?.status?.phase === v.desired && (v.desired !== 'Running' || ready);
    });
    if (!ok) this.fail(`${op.kind} ${v.name} did not settle: ${JSON.stringify(this.mvm.get(v.name)?.status ?? 'gone')}`);
  }

  private async until(ms: number, f: () => boolean): Promise<boolean> {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      if (f()) return true;
      await sleep(200);
    }
    return false;
  }

  private async kill(op: Op): Promise<void> {
    const k = this.plan.kill;
    let grace = 0;
    if (k.victim === 'agent') {
      this.r.restartMs = await this.t.restartAgent();
      this.r.killed = 'agent';
      this.r.didKill = true;
    } else if (k.victim === 'operator') {
      this.r.restartMs = await this.t.restartOperator();
      this.r.killed = 'operator';
      this.r.didKill = true;
      grace = LEASE_MS;
    } else {
      const target = this.vms.get(op.vm!);
      const id = target ? this.mvm.get(target.name)?.metadata?.labels?.['microvm.service/id'] : undefined;
      const qemus = qemuProcessesUnder(this.t.agent.dataDir).sort((a, b) => a.id.localeCompare(b.id));
      const victim = qemus.find((q) => q.id === id) ?? qemus[Math.floor(k.pick * qemus.length)];
      if (victim) {
        try {
          process.kill(victim.pid, 'SIGKILL');
        } catch {
          /* gone */
        }
        this.killed.add(victim.id);
        this.r.killed = `vmm of ${victim.id}`;
        this.r.didKill = true;
      } else this.r.killed = 'no VMM was running';
    }
    await this.converge(Date.now(), grace);
    for (const v of this.vms.values()) {
      const o = this.mvm.get(v.name);
      if (v.deleted && o) this.fail(`${v.name}: delete acknowledged, still there`);
      if (!v.deleted && !o) this.fail(`${v.name}: create acknowledged, gone (lost write)`);
      if (o && o.spec.desiredState !== v.desired) this.fail(`${v.name}: desiredState ${o.spec.desiredState}, acknowledged ${v.desired} (lost write)`);
    }
  }

  private unconverged(): string[] {
    const why: string[] = [];
    const items = this.list();
    for (const o of items) {
      const ph = o.status?.phase ?? 'none';
      const want = o.spec.desiredState ?? 'Running';
      const id = o.metadata.labels?.['microvm.service/id'];
      if (o.metadata.deletionTimestamp) why.push(`${o.metadata.name} is being deleted`);
      else if (TRANSITIONAL.includes(ph) || ph === 'none') why.push(`${o.metadata.name} is ${ph} (desired ${want})`);
      else if (ph === 'Failed') {
        if (!this.killed.has(id) || !killedReason(o.status.reason, o.status.message)) why.push(`${o.metadata.name} is Failed (${o.status.reason}: ${o.status.message}) though its VMM was not killed`);
      } else if (ph !== want) why.push(`${o.metadata.name} is ${ph}, desired ${want}`);
      else if (o.status.observedGeneration !== o.metadata.generation) why.push(`${o.metadata.name}: observedGeneration ${o.status.observedGeneration} of ${o.metadata.generation}`);
    }
    const live = items.filter((o) => !o.metadata.deletionTimestamp && ['Running', 'Paused'].includes(o.status?.phase)).map((o) => o.metadata.labels['microvm.service/id'] as string).sort();
    const all = new Set(items.map((o) => o.metadata.labels?.['microvm.service/id'] as string));
    const inv = this.t.inventory();
    const same = (what: string, got: string[]): void => {
      if (JSON.stringify([...got].sort()) !== JSON.stringify(live)) why.push(`${what}: ${JSON.stringify([...got].sort())}, expected ${JSON.stringify(live)}`);
    };
    same('QEMU processes', inv.qemu);
    same('VM network namespaces', inv.netns);
    same('cgroups', inv.cgroups);
    same('IPAM lease holders', inv.ipam.map((l) => l.holder));
    if (inv.nft.vmChains !== live.length) why.push(`nftables VM chains: ${inv.nft.vmChains}, expected ${live.length}`);
    const stray = [...inv.vmDirs.filter((d) => !all.has(d)), ...inv.uidLeases.filter((l) => !all.has(l.id)).map((l) => `uid ${l.uid}:${l.id}`)];
    if (stray.length) why.push(`owned by no VM: ${stray.join(', ')}`);
    return why;
  }

  private async converge(from: number, grace: number): Promise<void> {
    let deadline = BASE_DEADLINE_MS + grace;
    let first = true;
    let last: string[] = [];
    for (;;) {
      const why = this.unconverged();
      if (first && why.some((w) => /is (Pending|Scheduled|Starting|none)/.test(w))) deadline = LAUNCH_DEADLINE_MS + grace;
      first = false;
      const elapsed = Date.now() - from;
      if (!why.length) {
        this.r.convergenceMs = elapsed;
        this.r.deadlineMs = deadline;
        this.log(`  converged in ${elapsed} ms (deadline ${deadline / 1000} s)`);
        return;
      }
      last = why;
      if (elapsed > deadline) break;
      await sleep(200);
    }
    this.r.deadlineMs = deadline;
    this.fail(`not converged ${deadline / 1000} s after the ${this.plan.kill.victim === 'vmm' ? 'kill' : 'restart'}: ${last.join('; ')}`);
  }

  private async teardown(before: Inventory): Promise<void> {
    this.t.c.cp.kubectl(['delete', 'mvm', '--all', '-n', NS, '--wait=false']);
    if (!(await this.until(90_000, () => this.list().length === 0))) this.fail(`teardown: MicroVMs left 90 s after their delete: ${JSON.stringify(this.list().map((o) => [o.metadata.name, o.status?.phase]))}`);
    let diff: string[] = [];
    const clean = await this.until(15_000, () => {
      diff = diffInventory(before, this.t.inventory());
      return diff.length === 0;
    });
    if (!clean) this.fail(`leaked after everything was deleted: ${diff.join('; ')}`);
  }
}
