/**
 * One chaos iteration, planned from its seed alone (pure: no clock, no I/O): the operations, the
 * victim of the kill -9, the operation it hits, when (a delay after issuing it, or after it
 * settled), and which VMM when there are several. `planIteration(seed)` is the whole replay:
 * the same seed gives the same plan on every run (test/unit/chaos-plan.test.ts).
 *
 * The planner keeps a small model of what exists so that it plans mostly legal operations; what
 * the kill changes at run time (a VM Failed, a create that never happened) is the runner's to
 * handle (it refuses nothing: an operation the service answers 4xx is recorded as refused).
 */
import { rng, type Rng } from './rng.js';

export type Victim = 'service' | 'vmm' | 'agent' | 'operator';
export type Mode = 'standalone' | 'cluster';

export type OpKind =
  | 'create'
  | 'stop'
  | 'start'
  | 'pause'
  | 'resume'
  | 'snapshot'
  | 'restore'
  | 'delete'
  | 'update'
  | 'volume-create'
  | 'volume-delete'
  | 'snapshot-delete';

export interface Op {
  kind: OpKind;
  /** The VM it acts on, or creates (a name of this iteration). */
  vm?: string;
  /** snapshot: the snapshot it takes; restore: the one it restores; snapshot-delete. */
  snapshot?: string;
  /** volume-create/-delete; create: the volume attached through the VM spec. */
  volume?: string;
  /** create: the attached volume is created by the spec (`size`) instead of named. */
  volumeSize?: string;
  /** create: grow the root disk (the qemu-storage-daemon FUSE path). */
  rootfsSize?: string;
  /** update: the labels it sets. */
  labels?: Record<string, string>;
}

export interface KillPlan {
  victim: Victim;
  /** Index of the operation the kill hits. */
  at: number;
  /** during: `delayMs` after issuing the operation; after: once it settled, `delayMs` later. */
  when: 'during' | 'after';
  delayMs: number;
  /** [0, 1): which VMM dies when several run and the operation names none. */
  pick: number;
}

export interface Plan {
  seed: number;
  mode: Mode;
  /** Prefix of every name this iteration makes (unique per seed). */
  prefix: string;
  ops: Op[];
  kill: KillPlan;
}

/**
 * How much more likely the kill is to hit an operation of this kind than a create, when the plan
 * holds several: every operation the issue names (create, stop, pause, snapshot, restore, delete,
 * the volume operations) must be hit by kills of each victim in a 100-seed run, and creates are
 * in every plan anyway.
 */
const HIT_WEIGHT: Record<OpKind, number> = {
  create: 1,
  restore: 6,
  start: 1.5,
  stop: 2,
  delete: 2,
  snapshot: 3,
  pause: 3,
  resume: 1.5,
  update: 0.5,
  'volume-create': 3,
  'volume-delete': 6,
  'snapshot-delete': 1.5,
};

interface ModelVm {
  state: 'Running' | 'Stopped' | 'Paused';
  volume?: string;
  fromSnapshot?: string;
}

/** How long after issuing an operation its work may still be going on (the kill delay's range). */
const WINDOW_MS: Record<OpKind, number> = {
  create: 2500,
  restore: 1500,
  start: 2000,
  stop: 1500,
  delete: 1500,
  snapshot: 400,
  pause: 300,
  resume: 300,
  update: 100,
  'volume-create': 400,
  'volume-delete': 200,
  'snapshot-delete': 200,
};

const MAX_VMS = 2;
/** A restore may add a third VM: restores need a snapshot first, so they come late in a plan. */
const MAX_VMS_RESTORE = 3;
const MAX_SNAPSHOTS = 2;
const MAX_VOLUMES = 2;

export function planIteration(seed: number, mode: Mode = 'standalone'): Plan {
  const r = rng(seed);
  const prefix = `c${seed.toString(36)}`;
  const vms = new Map<string, ModelVm>();
  const snaps = new Map<string, { vm: string; volume: boolean }>();
  const vols = new Map<string, { attachedTo?: string }>();
  let nVm = 0;
  let nSnap = 0;
  let nVol = 0;
  const ops: Op[] = [];
  const count = r.int(4, 6);
  for (let i = 0; i < count; i++) {
    const candidates = choices(vms, snaps, vols, i);
    const kind = r.weighted(candidates);
    const op = build(kind, r, { vms, snaps, vols, next: { vm: () => `v${nVm++}`, snap: () => `s${nSnap++}`, vol: () => `d${nVol++}` } }, mode);
    ops.push(op);
  }
  const victim: Victim =
    mode === 'cluster' ? r.weighted<Victim>([['agent', 3], ['operator', 3], ['vmm', 2]]) : r.weighted<Victim>([['service', 3], ['vmm', 2]]);
  // A VMM can only die where one runs: the kill hits an operation on a VM (not a volume's).
  const eligible = ops.map((op, i) => ({ op, i })).filter(({ op }) => victim !== 'vmm' || (op.vm !== undefined && op.kind !== 'update') || op.kind === 'snapshot');
  const at = eligible.length ? r.weighted(eligible.map(({ op, i }) => [i, HIT_WEIGHT[op.kind]] as const)) : 0;
  // After a stop or delete settled its VMM is gone: a VMM kill then hits it on the way.
  const when = r.chance(0.75) || (victim === 'vmm' && ['stop', 'delete'].includes(ops[at]!.kind)) ? 'during' : 'after';
  // During: a delay within the operation's own window (measured under TCG: a create boots for ~3-5 s, a
  // snapshot of a 128 MiB guest takes ~0.2 s, a 16 MiB volume's mkfs ~0.1 s, pause/resume tens of ms).
  const delayMs = when === 'during' ? r.int(0, WINDOW_MS[ops[at]!.kind]) : r.int(0, 300);
  return { seed, mode, prefix, ops, kill: { victim, at, when, delayMs, pick: r.next() } };
}

function choices(
  vms: Map<string, ModelVm>,
  snaps: Map<string, { vm: string; volume: boolean }>,
  vols: Map<string, { attachedTo?: string }>,
  i: number,
): Array<[OpKind, number]> {
  const list = [...vms.values()];
  const out: Array<[OpKind, number]> = [];
  const add = (k: OpKind, w: number, ok: boolean): void => {
    if (ok) out.push([k, w]);
  };
  // A snapshot a VM can be restored from (the VM has no volume: its disk state would be shared).
  const restorable = [...snaps.values()].some((s) => !s.volume);
  add('create', i === 0 ? 10 : 3, vms.size < MAX_VMS);
  add('stop', 2, list.some((v) => v.state !== 'Stopped'));
  add('start', 2, list.some((v) => v.state === 'Stopped'));
  add('pause', 1.5, list.some((v) => v.state === 'Running'));
  add('resume', 2, list.some((v) => v.state === 'Paused'));
  add('snapshot', restorable ? 1.5 : 4, snaps.size < MAX_SNAPSHOTS && list.some((v) => v.state !== 'Stopped'));
  add('restore', 8, vms.size < MAX_VMS_RESTORE && restorable);
  add('delete', i >= 2 ? 2 : 1, vms.size > 0);
  add('update', 1, vms.size > 0);
  add('volume-create', 1, vols.size < MAX_VOLUMES);
  add('volume-delete', 3, [...vols.values()].some((v) => !v.attachedTo));
  add('snapshot-delete', 1, [...snaps.keys()].some((s) => ![...vms.values()].some((v) => v.fromSnapshot === s)));
  if (!out.length) out.push(['create', 1]);
  return out;
}

interface Model {
  vms: Map<string, ModelVm>;
  snaps: Map<string, { vm: string; volume: boolean }>;
  vols: Map<string, { attachedTo?: string }>;
  next: { vm(): string; snap(): string; vol(): string };
}

function build(kind: OpKind, r: Rng, m: Model, mode: Mode): Op {
  const vmWhere = (f: (v: ModelVm) => boolean): string => r.pick([...m.vms].filter(([, v]) => f(v)).map(([n]) => n));
  switch (kind) {
    case 'create': {
      const name = m.next.vm();
      const op: Op = { kind, vm: name };
      const vm: ModelVm = { state: 'Running' };
      if (r.chance(0.3)) {
        const free = [...m.vols].filter(([, v]) => !v.attachedTo).map(([n]) => n);
        if (free.length && r.chance(0.6)) op.volume = r.pick(free);
        else {
          op.volume = m.next.vol();
          op.volumeSize = '16Mi';
          m.vols.set(op.volume, {});
        }
        m.vols.get(op.volume)!.attachedTo = name;
        vm.volume = op.volume;
      }
      if (mode === 'standalone' && r.chance(0.2)) op.rootfsSize = '96Mi';
      m.vms.set(name, vm);
      return op;
    }
    case 'stop': {
      const vm = vmWhere((v) => v.state !== 'Stopped');
      m.vms.get(vm)!.state = 'Stopped';
      return { kind, vm };
    }
    case 'start': {
      const vm = vmWhere((v) => v.state === 'Stopped');
      m.vms.get(vm)!.state = 'Running';
      return { kind, vm };
    }
    case 'pause': {
      const vm = vmWhere((v) => v.state === 'Running');
      m.vms.get(vm)!.state = 'Paused';
      return { kind, vm };
    }
    case 'resume': {
      const vm = vmWhere((v) => v.state === 'Paused');
      m.vms.get(vm)!.state = 'Running';
      return { kind, vm };
    }
    case 'snapshot': {
      // Mostly of a VM without a volume: a snapshot to restore from.
      const bare = [...m.vms].filter(([, v]) => v.state !== 'Stopped' && !v.volume).map(([n]) => n);
      const vm = bare.length && r.chance(0.85) ? r.pick(bare) : vmWhere((v) => v.state !== 'Stopped');
      const snapshot = m.next.snap();
      m.snaps.set(snapshot, { vm, volume: m.vms.get(vm)!.volume !== undefined });
      return { kind, vm, snapshot };
    }
    case 'restore': {
      const snapshot = r.pick([...m.snaps].filter(([, s]) => !s.volume).map(([n]) => n));
      const vm = m.next.vm();
      m.vms.set(vm, { state: 'Running', fromSnapshot: snapshot });
      return { kind, vm, snapshot };
    }
    case 'delete': {
      const vm = r.pick([...m.vms.keys()]);
      const v = m.vms.get(vm)!;
      if (v.volume) delete m.vols.get(v.volume)!.attachedTo;
      m.vms.delete(vm);
      return { kind, vm };
    }
    case 'update': {
      const vm = r.pick([...m.vms.keys()]);
      return { kind, vm, labels: { chaos: 'updated', n: String(r.int(0, 999)) } };
    }
    case 'volume-create': {
      const volume = m.next.vol();
      m.vols.set(volume, {});
      return { kind, volume };
    }
    case 'volume-delete': {
      const volume = r.pick([...m.vols].filter(([, v]) => !v.attachedTo).map(([n]) => n));
      m.vols.delete(volume);
      return { kind, volume };
    }
    case 'snapshot-delete': {
      const snapshot = r.pick([...m.snaps.keys()].filter((s) => ![...m.vms.values()].some((v) => v.fromSnapshot === s)));
      m.snaps.delete(snapshot);
      return { kind, snapshot };
    }
  }
}

/** One line per plan, for the log and the report: `seed 7: create v0 → snapshot v0/s0 → … | kill service during #2 +840ms`. */
export function describePlan(p: Plan): string {
  const ops = p.ops.map((o, i) => {
    const what = [o.vm, o.snapshot ? `snap ${o.snapshot}` : '', o.volume ? `vol ${o.volume}${o.volumeSize ? `(new ${o.volumeSize})` : ''}` : '', o.rootfsSize ? `rootfs ${o.rootfsSize}` : '']
      .filter(Boolean)
      .join(' ');
    return `#${i} ${o.kind}${what ? ` ${what}` : ''}`;
  });
  const k = p.kill;
  return `${ops.join(', ')} | kill -9 ${k.victim} ${k.when} #${k.at} (${p.ops[k.at]!.kind}) +${k.delayMs}ms pick ${k.pick.toFixed(3)}`;
}
