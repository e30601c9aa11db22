/**
 * Placement: filter nodes that can take the VM, then score the rest (seed §2.2.2).
 * Pure and synchronous so it can be benchmarked over thousands of nodes; fed by
 * the VMs already placed (requests) and, when known, real usage.
 */
import { memoryMiB, type MicroVM } from '../core/microvm.js';
import type { NodeInfo } from '../core/ports/agent.js';

export interface SchedulerOptions {
  /** vCPUs that may be placed per host CPU (microVMs are mostly idle). */
  cpuOvercommit?: number;
  /** Guest memory that may be placed per MiB of host memory. */
  memoryOvercommit?: number;
  /** Memory per VM on top of guest RAM (VMM overhead), MiB. */
  vmmOverheadMiB?: number;
  strategy?: 'spread' | 'binpack';
}

export interface Placement {
  node?: string;
  /** Why no node fits, per node (when node is undefined). */
  reasons: Record<string, string>;
}

export class Scheduler {
  private readonly cpuOvercommit: number;
  private readonly memOvercommit: number;
  private readonly overhead: number;
  private readonly strategy: 'spread' | 'binpack';

  constructor(o: SchedulerOptions = {}) {
    this.cpuOvercommit = o.cpuOvercommit ?? 16;
    this.memOvercommit = o.memoryOvercommit ?? 1;
    this.overhead = o.vmmOverheadMiB ?? 64;
    this.strategy = o.strategy ?? 'spread';
  }

  place(vm: MicroVM, nodes: NodeInfo[], placed: MicroVM[]): Placement {
    const reasons: Record<string, string> = {};
    const need = { cpu: vm.spec.vcpu, mem: memoryMiB(vm.spec) + this.overhead };
    const used = new Map<string, { cpu: number; mem: number }>();
    for (const p of placed) {
      const n = p.status.node;
      if (!n || p.id === vm.id) continue;
      const u = used.get(n) ?? { cpu: 0, mem: 0 };
      u.cpu += p.spec.vcpu;
      u.mem += memoryMiB(p.spec) + this.overhead;
      used.set(n, u);
    }
    let best: { node: string; score: number } | undefined;
    for (const n of nodes) {
      if (!n.ready) {
        reasons[n.name] = 'node not ready';
        continue;
      }
      if (n.drivers.length === 0) {
        reasons[n.name] = 'no usable VMM driver on node';
        continue;
      }
      const u = used.get(n.name) ?? { cpu: 0, mem: 0 };
      const cpuCap = n.cpus * this.cpuOvercommit;
      const memCap = n.memoryMiB * this.memOvercommit;
      if (u.cpu + need.cpu > cpuCap) {
        reasons[n.name] = `insufficient cpu (${u.cpu}+${need.cpu} > ${cpuCap})`;
        continue;
      }
      if (u.mem + need.mem > memCap) {
        reasons[n.name] = `insufficient memory (${u.mem}+${need.mem} MiB > ${memCap} MiB)`;
        continue;
      }
      const free = 1 - (u.mem + need.mem) / memCap + (1 - (u.cpu + need.cpu) / cpuCap);
      const score = this.strategy === 'spread' ? free : -free;
      if (!best || score > best.score) best = { node: n.name, score };
    }
    return best ? { node: best.node, reasons } : { reasons };
  }
}
