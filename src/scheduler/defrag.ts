/**
 * Defragmentation planner: which VMs to move, and where, so that one node gets a free slot of a
 * given size (a large VM that fits nowhere although the cluster has room in pieces). It only plans:
 * the operator executes the moves (stop/start or snapshot/restore) in order, each destination being
 * valid after the moves before it.
 *
 * For each node that could hold the slot once emptied enough, it evicts the VMs there largest-first
 * (relative to what is missing) — the fewest moves for one resource — and re-places each with the
 * scheduler's own filters and scores (never onto the node being freed); VMs that fit nowhere else are
 * skipped. The plan with the fewest moves (then the least memory moved) wins; a node that already
 * has the slot is a plan of zero moves. Finally the slot itself is checked with every filter (taints,
 * selectors and affinity of `vm` when given). O(candidate nodes × moves × nodes).
 */
import type { MicroVM } from '../core/microvm.js';
import type { ClusterState, PlacedVm } from './state.js';
import { Scheduler, type SlotSize } from './scheduler.js';

export interface DefragMove {
  vm: string;
  name: string;
  tenant: string;
  from: string;
  to: string;
  vcpu: number;
  memoryMiB: number;
}

export interface DefragPlan {
  /** The node that will have the slot free (undefined: no plan within the limits). */
  node?: string;
  moves: DefragMove[];
  message: string;
}

export interface DefragOptions {
  /** The slot to free: vCPUs and guest memory (MiB; the VMM overhead is added). */
  targetSlot: SlotSize;
  /** The VM the slot is for: its tolerations, nodeSelector and affinity then apply to the freed node. */
  vm?: MicroVM;
  scheduler?: Scheduler;
  /** Give up on plans longer than this (default 8). */
  maxMoves?: number;
  /** VMs that may be moved (default all). */
  movable?: (vm: PlacedVm) => boolean;
}

export function planDefrag(state: ClusterState, o: DefragOptions): DefragPlan {
  const sched = o.scheduler ?? new Scheduler();
  const maxMoves = o.maxMoves ?? 8;
  const slot = o.targetSlot;
  const probe = probeVm(slot, o.vm);
  const want = `${slot.vcpu} vCPU / ${slot.memoryMiB} MiB`;

  const direct = sched.schedule(probe, state);
  if (direct.node) return { node: direct.node, moves: [], message: `a ${want} slot is already free on ${direct.node}` };

  // Only nodes refused for capacity can be helped by moving VMs away.
  const slotMem = slot.memoryMiB + sched.overhead;
  const candidates: Array<{ name: string; needCpu: number; needMem: number }> = [];
  for (const [name, reason] of Object.entries(direct.reasons)) {
    if (!reason.startsWith('insufficient ')) continue;
    const n = state.node(name)!;
    const cap = sched.capacity(n.info);
    if (cap.vcpu < slot.vcpu || cap.memoryMiB < slotMem) continue;
    const free = sched.free(state, name);
    candidates.push({ name, needCpu: Math.max(0, slot.vcpu - free.vcpu), needMem: Math.max(0, slotMem - free.memoryMiB) });
  }
  // Smallest deficit first: the likeliest short plans are tried early.
  candidates.sort((a, b) => a.needMem / slotMem + a.needCpu / slot.vcpu - (b.needMem / slotMem + b.needCpu / slot.vcpu));

  const work = state.clone();
  let best: { node: string; moves: DefragMove[]; moved: number } | undefined;
  for (const c of candidates) {
    if (best && best.moves.length <= 1) break;
    const limit = Math.min(maxMoves, best ? best.moves.length : maxMoves);
    const exclude = new Set([c.name]);
    const size = (p: PlacedVm): number =>
      (c.needCpu > 0 ? Math.min(1, p.vcpu / c.needCpu) : 0) + (c.needMem > 0 ? Math.min(1, (p.memoryMiB + sched.overhead) / c.needMem) : 0);
    const vms = work.vmsOn(c.name).filter((p) => o.movable?.(p) ?? true).sort((a, b) => size(b) - size(a) || b.memoryMiB - a.memoryMiB);
    const moves: DefragMove[] = [];
    let needCpu = c.needCpu;
    let needMem = c.needMem;
    for (const p of vms) {
      if (needCpu <= 0 && needMem <= 0) break;
      if (moves.length >= limit) break;
      const to = sched.schedule(p.vm, work, { exclude }).node;
      if (!to) continue;
      work.assume(p.vm, to);
      moves.push({ vm: p.id, name: p.name, tenant: p.tenant, from: c.name, to, vcpu: p.vcpu, memoryMiB: p.memoryMiB });
      needCpu -= p.vcpu;
      needMem -= p.memoryMiB + sched.overhead;
    }
    const freed = needCpu <= 0 && needMem <= 0 && sched.schedule(probe, work, { only: c.name }).node === c.name;
    const moved = moves.reduce((a, m) => a + m.memoryMiB, 0);
    if (freed && (!best || moves.length < best.moves.length || (moves.length === best.moves.length && moved < best.moved))) {
      best = { node: c.name, moves, moved };
    }
    for (const m of [...moves].reverse()) work.assume(state.get(m.vm)!.vm, m.from);
  }
  if (!best) {
    return { moves: [], message: `no plan frees a ${want} slot with at most ${maxMoves} moves (${direct.message})` };
  }
  return { node: best.node, moves: best.moves, message: `${best.moves.length} move(s) free a ${want} slot on ${best.node}` };
}

/** A stand-in VM of the slot's size, carrying the constraints of `vm` when given. */
function probeVm(slot: SlotSize, vm: MicroVM | undefined): MicroVM {
  const now = new Date(0).toISOString();
  return {
    id: vm?.id ?? 'defrag-probe',
    name: vm?.name ?? 'defrag-probe',
    tenant: vm?.tenant ?? '',
    spec: { ...(vm?.spec ?? { labels: {} }), vcpu: slot.vcpu, memory: `${slot.memoryMiB}Mi` },
    desiredState: 'Running',
    status: { phase: 'Pending', conditions: [] },
    generation: 1,
    resourceVersion: '0',
    createdAt: now,
    updatedAt: now,
  };
}
