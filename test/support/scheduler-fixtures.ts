/** Nodes and microVMs for the scheduler's unit tests and benchmark (no agents, no store). */
import type { MicroVM } from '../../src/core/microvm.js';
import type { NodeInfo } from '../../src/core/ports/agent.js';
import type { MicroVMSpecT } from '../../src/core/schema.js';

export function node(name: string, o: Partial<NodeInfo> = {}): NodeInfo {
  return { name, cpus: 4, memoryMiB: 16384, drivers: ['qemu'], accel: 'tcg', labels: {}, ready: true, ...o };
}

let seq = 0;
export function vm(name: string, o: Partial<MicroVMSpecT> & { tenant?: string; node?: string; id?: string } = {}): MicroVM {
  const { tenant, node: at, id, ...spec } = o;
  const now = new Date(0).toISOString();
  return {
    id: id ?? `vm-${name}-${++seq}`,
    name,
    tenant: tenant ?? 't1',
    spec: { vcpu: 1, memory: '1Gi', labels: {}, ...spec },
    desiredState: 'Running',
    status: { phase: at ? 'Running' : 'Pending', conditions: [], ...(at ? { node: at } : {}) },
    generation: 1,
    resourceVersion: '1',
    createdAt: now,
    updatedAt: now,
  };
}
