/**
 * Per-VM cgroups (seed §3.3.2), on cgroup v2 (modern hosts) and on the v1/hybrid
 * layout of our machines. Everything lives under one parent of ours (`mvm/`);
 * no other cgroup on the machine is touched.
 */
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

export interface CgroupLimits {
  vcpu: number;
  memoryBytes: number;
  pidsMax?: number;
}

export interface CgroupManager {
  readonly version: 'v1' | 'v2' | 'none';
  /** The parent of the VMs' cgroups (MVM_CGROUP_PARENT), relative to each hierarchy's root. */
  readonly parent: string;
  /** Create (or update) the VM's cgroups; returns the `cgroup.procs` files to join. */
  ensure(id: string, limits: CgroupLimits): string[];
  /** Pids currently in the VM's cgroups. */
  pids(id: string): number[];
  /** Remove the VM's cgroups (kills stragglers first). Idempotent. */
  remove(id: string): Promise<void>;
  /** Ids that have a cgroup under our parent. */
  list(): string[];
  /**
   * A clean stop: remove the parent's last path segment in every hierarchy when no VM cgroup is
   * left under it (a parent with VMs stays: they keep running, ADR 0003). Returns the removed dirs.
   */
  removeParent(): string[];
}

/** rmdir the parent dirs that have no child cgroup (rmdir of a cgroup with children or processes fails anyway). */
function removeEmpty(dirs: string[]): string[] {
  const removed: string[] = [];
  for (const d of dirs) {
    if (!existsSync(d)) continue;
    if (readdirSync(d, { withFileTypes: true }).some((e) => e.isDirectory())) continue;
    try {
      rmdirSync(d);
      removed.push(d);
    } catch {
      /* busy: leave it */
    }
  }
  return removed;
}

const V1_CONTROLLERS = ['cpu', 'memory', 'pids'] as const;

function tryWrite(path: string, value: string): boolean {
  try {
    writeFileSync(path, value);
    return true;
  } catch {
    return false;
  }
}

export function detectCgroups(root = '/sys/fs/cgroup', parent = 'mvm'): CgroupManager {
  const v2controllers = join(root, 'cgroup.controllers');
  if (existsSync(v2controllers) && readFileSync(v2controllers, 'utf8').includes('memory')) {
    return new CgroupV2(root, parent);
  }
  if (existsSync(join(root, 'memory', 'memory.limit_in_bytes')) || existsSync(join(root, 'memory'))) {
    return new CgroupV1(root, parent);
  }
  return new NoCgroups(parent);
}

async function drain(dirs: string[], readPids: () => number[]): Promise<void> {
  for (let i = 0; i < 50; i++) {
    const pids = readPids();
    if (pids.length === 0) break;
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        /* gone */
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  for (const d of dirs) {
    for (let i = 0; i < 20 && existsSync(d); i++) {
      try {
        rmdirSync(d);
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
}

function readPidsFile(f: string): number[] {
  try {
    return readFileSync(f, 'utf8').split('\n').filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

class CgroupV2 implements CgroupManager {
  readonly version = 'v2' as const;
  constructor(
    private readonly root: string,
    readonly parent: string,
  ) {}

  removeParent(): string[] {
    return this.list().length ? [] : removeEmpty([join(this.root, this.parent)]);
  }

  private dir(id: string): string {
    return join(this.root, this.parent, id);
  }

  ensure(id: string, l: CgroupLimits): string[] {
    const p = join(this.root, this.parent);
    mkdirSync(p, { recursive: true });
    tryWrite(join(this.root, 'cgroup.subtree_control'), '+cpu +memory +pids');
    tryWrite(join(p, 'cgroup.subtree_control'), '+cpu +memory +pids');
    const d = this.dir(id);
    mkdirSync(d, { recursive: true });
    tryWrite(join(d, 'cpu.max'), `${l.vcpu * 100000} 100000`);
    tryWrite(join(d, 'memory.max'), String(l.memoryBytes));
    tryWrite(join(d, 'memory.swap.max'), '0');
    if (l.pidsMax) tryWrite(join(d, 'pids.max'), String(l.pidsMax));
    return [join(d, 'cgroup.procs')];
  }

  pids(id: string): number[] {
    return readPidsFile(join(this.dir(id), 'cgroup.procs'));
  }

  async remove(id: string): Promise<void> {
    const d = this.dir(id);
    if (!existsSync(d)) return;
    tryWrite(join(d, 'cgroup.kill'), '1');
    await drain([d], () => this.pids(id));
  }

  list(): string[] {
    const p = join(this.root, this.parent);
    if (!existsSync(p)) return [];
    return readdirSync(p, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
  }
}

class CgroupV1 implements CgroupManager {
  readonly version = 'v1' as const;
  private readonly controllers: string[];
  constructor(
    private readonly root: string,
    readonly parent: string,
  ) {
    this.controllers = V1_CONTROLLERS.filter((c) => existsSync(join(root, c)));
  }

  removeParent(): string[] {
    return this.list().length ? [] : removeEmpty(this.controllers.map((c) => join(this.root, c, this.parent)));
  }

  private dir(c: string, id: string): string {
    return join(this.root, c, this.parent, id);
  }

  ensure(id: string, l: CgroupLimits): string[] {
    const procs: string[] = [];
    for (const c of this.controllers) {
      const d = this.dir(c, id);
      mkdirSync(d, { recursive: true });
      if (c === 'cpu') {
        tryWrite(join(d, 'cpu.cfs_period_us'), '100000');
        tryWrite(join(d, 'cpu.cfs_quota_us'), String(l.vcpu * 100000));
      } else if (c === 'memory') {
        tryWrite(join(d, 'memory.limit_in_bytes'), String(l.memoryBytes));
      } else if (c === 'pids' && l.pidsMax) {
        tryWrite(join(d, 'pids.max'), String(l.pidsMax));
      }
      procs.push(join(d, 'cgroup.procs'));
    }
    return procs;
  }

  pids(id: string): number[] {
    const all = new Set<number>();
    for (const c of this.controllers) for (const p of readPidsFile(join(this.dir(c, id), 'cgroup.procs'))) all.add(p);
    return [...all];
  }

  async remove(id: string): Promise<void> {
    const dirs = this.controllers.map((c) => this.dir(c, id)).filter((d) => existsSync(d));
    if (dirs.length === 0) return;
    await drain(dirs, () => this.pids(id));
  }

  list(): string[] {
    const ids = new Set<string>();
    for (const c of this.controllers) {
      const p = join(this.root, c, this.parent);
      if (!existsSync(p)) continue;
      for (const e of readdirSync(p, { withFileTypes: true })) if (e.isDirectory()) ids.add(e.name);
    }
    return [...ids];
  }
}

class NoCgroups implements CgroupManager {
  readonly version = 'none' as const;
  constructor(readonly parent = 'mvm') {}
  removeParent(): string[] {
    return [];
  }
  ensure(): string[] {
    return [];
  }
  pids(): number[] {
    return [];
  }
  async remove(): Promise<void> {}
  list(): string[] {
    return [];
  }
}
