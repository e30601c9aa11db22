/**
 * Migration with memory between node agents (docs/adr/0034). The operator writes the plan
 * (annotation microvm.service/migration: id, source, target) on a running MicroVM; the source
 * node's agent carries it out as named steps (src/core/steps.ts) and answers with the condition
 * Migrated (True, or False with the failed step as its reason) and an event:
 *
 *   check     the VM runs here and can move (migrationRefusal)
 *   prepare-target  while the guest runs: the target resolves the images, makes the cgroup and the
 *             network (asking for the same address), so the pause does not wait for them
 *   pause     vCPUs stopped (the controller still sees it running: it must not resume it)
 *   snapshot  memory, device state and the disk copy into <dataDir>/migrations/<id>, each file's sha256
 *   transfer  the target's agent pulls the files from this agent's endpoint, file by file, verifying
 *             each checksum; an interrupted file continues where it stopped (HTTP Range)
 *   restore   the target restores the VM from them: same disk contents, memory, MAC; the same
 *             address when its network can give it (otherwise a new one, said so)
 *   resume    the guest runs on the target: its agent answers there (new addresses only if they changed)
 *   switch    the binding moves: status.node = target (one status write), Migrated=True
 *   cleanup   the files here go; the paused VMM here is removed by the controller (no longer bound here)
 *
 * A failure undoes in reverse: the target removes everything of the VM (VMM, tap, files), the files
 * here go, and the guest resumes here. Every call between agents goes through the authenticated
 * agent endpoint (TokenReview + SubjectAccessReview of `microvms/migration`).
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { Logger } from 'pino';
import { ErrorCodes, MvmError, asMvmError } from '../core/errors.js';
import { setCondition, type MicroVM } from '../core/microvm.js';
import { failedStep, runSteps, type Step } from '../core/steps.js';
import { ANN_MIGRATION, ClusterConditions, migrationMessage, migrationOf, migrationRefusal, parseMigrationPlan, type MigrationPlan } from '../k8s/cluster.js';
import type { KubernetesStore } from '../store/kubernetes/k8s-store.js';
import { sleep } from '../vmm/proc.js';
import type { LocalAgent } from './agent.js';
import type { NodeScopedStore } from './cluster-agent.js';
import type { AgentSend } from './endpoint/client.js';
import { agentError, agentResult, answerError, answerJson, readText, type EndpointRouteGroup } from './endpoint/http.js';

/** A file of a migration, as the source lists it and the target checks it. */
export interface MigrationFile {
  name: string;
  size: number;
  sha256: string;
}

export interface TransferResult {
  bytes: number;
  ms: number;
  /** Requests that continued a file where an interrupted one stopped. */
  resumes: number;
}

export interface RestoreResult {
  ip?: string;
  interfaces?: Array<{ name: string; ip: string; prefix: number; gateway: string; mac: string; tap: string }>;
  ipChange?: string;
  resumedAt: number;
  pid?: number;
  timings: Record<string, number>;
}

const ID = /^[a-z0-9][-a-z0-9]{0,62}$/;
const FILE = /^[A-Za-z0-9][-A-Za-z0-9_.]{0,127}$/;
const ROUTE = /^\/v1\/migrations\/([a-z0-9][-a-z0-9]{0,62})(?:\/(files|prepare|transfer|restore|resume)(?:\/([^/]+))?)?$/;

export const migrationDir = (dataDir: string, id: string): string => join(dataDir, 'migrations', id);

async function sha256File(path: string): Promise<string> {
  const h = createHash('sha256');
  await pipeline(createReadStream(path), h);
  return h.digest('hex');
}

/** The regular files of a migration's directory with their sizes and checksums. */
export async function listMigrationFiles(dir: string): Promise<MigrationFile[]> {
  const out: MigrationFile[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (!e.isFile() || !FILE.test(e.name)) continue;
    const p = join(dir, e.name);
    out.push({ name: e.name, size: statSync(p).size, sha256: await sha256File(p) });
  }
  return out;
}

async function readJson<T>(req: IncomingMessage | undefined): Promise<T> {
  if (!req) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'a JSON body is required');
  const text = await readText(req);
  try {
    return JSON.parse(text || '{}') as T;
  } catch {
    throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'the body is not JSON');
  }
}

/** Serve one file of a migration, from `Range: bytes=<start>-` when asked (206), whole otherwise (200). */
function serveFile(path: string, range: string | undefined, res: ServerResponse): void {
  const size = statSync(path).size;
  const m = /^bytes=(\d+)-$/.exec(range ?? '');
  const start = m ? Number(m[1]) : 0;
  if (start > size) {
    res.writeHead(416, { 'content-range': `bytes */${size}` });
    res.end();
    return;
  }
  res.writeHead(m ? 206 : 200, {
    'content-type': 'application/octet-stream',
    'content-length': String(size - start),
    'accept-ranges': 'bytes',
    ...(m ? { 'content-range': `bytes ${start}-${Math.max(start, size - 1)}/${size}` } : {}),
  });
  if (start === size) {
    res.end();
    return;
  }
  const rs = createReadStream(path, { start });
  rs.on('error', () => res.destroy());
  rs.pipe(res);
}

export interface MigrationRoutesOptions {
  nodeName: string;
  dataDir: string;
  agent: LocalAgent;
  /** The VM by id (the Kubernetes store: a VM arriving here is not bound here yet). */
  lookup: (id: string) => Promise<MicroVM | undefined>;
  /** Requests to other nodes' agents (the target pulls the files from the source's endpoint). */
  send: AgentSend;
  log?: Logger;
  /** Attempts per file before the transfer fails (default 6). */
  attempts?: number;
}

/**
 * The endpoint's migration routes, authorised by a SubjectAccessReview of `microvms/migration`:
 *   GET    /v1/migrations/{id}/files/{name}  (get)    the source serves a file (Range: bytes=N-)
 *   POST   /v1/migrations/{id}/prepare       (create) the target prepares {vmId, sourceNode, ips}: images, cgroup, network
 *   POST   /v1/migrations/{id}/transfer      (create) the target pulls {vmId, sourceNode, files}
 *   POST   /v1/migrations/{id}/restore       (create) the target restores {vmId}: disk, VMM from the memory, resumed
 *   POST   /v1/migrations/{id}/resume        (create) the target's guest answers {vmId}
 *   DELETE /v1/migrations/{id}?vm=<vmId>     (delete) the target removes everything of it
 */
export function migrationRoutes(o: MigrationRoutesOptions): EndpointRouteGroup<'get' | 'create' | 'delete'> {
  return {
    resource: 'microvms',
    subresource: 'migration',
    async handle(req, access, res) {
      const m = ROUTE.exec(req.path);
      if (!m) return false;
      const [, id, what, name] = m as unknown as [string, string, string | undefined, string | undefined];
      const verb = req.method === 'GET' ? 'get' : req.method === 'DELETE' ? 'delete' : 'create';
      const ok = (what === 'files' && req.method === 'GET' && name) || (what && what !== 'files' && req.method === 'POST') || (!what && req.method === 'DELETE');
      if (!ok) return false;
      if (!(await access(verb))) {
        answerJson(res, 403, { status: 403, message: `the caller may not ${verb} microvms/migration` });
        return true;
      }
      const dir = migrationDir(o.dataDir, id);
      try {
        if (what === 'files') {
          const file = decodeURIComponent(name!);
          if (!FILE.test(file) || !existsSync(join(dir, file))) throw new MvmError(ErrorCodes.NOT_FOUND, `migration ${id} has no file ${file} on node ${o.nodeName}`);
          serveFile(join(dir, file), req.raw?.headers.range, res);
          return true;
        }
        if (!what) {
          const vmId = req.query.get('vm') ?? '';
          if (vmId && ID.test(vmId)) await o.agent.abortIncoming(vmId);
          rmSync(dir, { recursive: true, force: true });
          res.writeHead(204);
          res.end();
          return true;
        }
        const body = await readJson<{ vmId?: string; sourceNode?: string; files?: MigrationFile[]; ips?: Record<string, string> }>(req.raw);
        if (!body.vmId || !ID.test(body.vmId)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'vmId is required', { violations: [{ field: 'vmId', message: 'required' }] });
        if (what === 'transfer') {
          if (!body.sourceNode || !Array.isArray(body.files)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'sourceNode and files are required');
          const out = await pullFiles({ ...o, id, dir, sourceNode: body.sourceNode, files: body.files });
          answerJson(res, 200, out);
          return true;
        }
        if (what === 'prepare') {
          const vm = await o.lookup(body.vmId);
          if (!vm) throw new MvmError(ErrorCodes.NOT_FOUND, `microVM ${body.vmId} not found`);
          if (!body.sourceNode || vm.status.node !== body.sourceNode) throw new MvmError(ErrorCodes.CONFLICT, `microVM ${body.vmId} is not bound to ${body.sourceNode ?? '(no source given)'}`);
          const out = await o.agent.migratePrepare(vm, { dir, sourceNode: body.sourceNode, ips: body.ips ?? {} });
          answerJson(res, 200, out);
          return true;
        }
        if (what === 'restore') {
          answerJson(res, 200, await o.agent.migrateIn(body.vmId));
          return true;
        }
        // resume
        const out = await o.agent.resumeIncoming(body.vmId);
        rmSync(dir, { recursive: true, force: true });
        answerJson(res, 200, out);
        return true;
      } catch (e) {
        o.log?.warn({ migration: id, what, err: asMvmError(e).message }, 'migration request failed');
        answerError(res, e);
        return true;
      }
    },
  };
}

/**
 * The target's pull: each file from the source's endpoint into `<dir>/<name>.part`, continued from
 * its size after an interruption (Range), renamed into place once its size and sha256 match.
 */
async function pullFiles(o: MigrationRoutesOptions & { id: string; dir: string; sourceNode: string; files: MigrationFile[] }): Promise<TransferResult> {
  const t0 = Date.now();
  mkdirSync(o.dir, { recursive: true });
  let bytes = 0;
  let resumes = 0;
  const max = o.attempts ?? 6;
  for (const f of o.files) {
    if (!FILE.test(f.name) || !Number.isSafeInteger(f.size) || f.size < 0 || !/^[0-9a-f]{64}$/.test(f.sha256)) {
      throw new MvmError(ErrorCodes.VALIDATION_FAILED, `files: ${JSON.stringify(f.name)} is not a valid file entry`);
    }
    const dest = join(o.dir, f.name);
    const part = `${dest}.part`;
    let failures = 0;
    let lastError = '';
    // The checksum follows the bytes as they are written; after a cut it is taken again from the file.
    let hash = createHash('sha256');
    let hashed = 0;
    for (;;) {
      let have = existsSync(part) ? statSync(part).size : 0;
      if (have > f.size) {
        rmSync(part, { force: true });
        have = 0;
      }
      if (have < f.size) {
        try {
          const res = await o.send(o.sourceNode, 'GET', `/v1/migrations/${o.id}/files/${encodeURIComponent(f.name)}`, { headers: { connection: 'close', ...(have ? { range: `bytes=${have}-` } : {}) }, timeoutMs: 30_000 });
          if (res.statusCode !== 200 && res.statusCode !== 206) {
            const err = await agentError(o.sourceNode, res, `file ${f.name} of migration ${o.id}`);
            // Refused or gone (401/403/404): no retry helps.
            if ([401, 403, 404].includes(res.statusCode ?? 0)) throw Object.assign(err, { final: true });
            throw err;
          }
          const append = have > 0 && res.statusCode === 206;
          if (append) {
            resumes++;
            o.log?.info({ migration: o.id, file: f.name, from: have }, 'transfer continues where it stopped');
          }
          if (!append || hashed !== have) {
            hash = createHash('sha256');
            hashed = 0;
            if (append) {
              await pipeline(createReadStream(part), new Writable({ write: (chunk: Buffer, _e, cb) => (hash.update(chunk), cb()) }));
              hashed = have;
            }
          }
          const follow = new Transform({
            transform: (chunk: Buffer, _e, cb) => {
              hash.update(chunk);
              hashed += chunk.length;
              cb(null, chunk);
            },
          });
          await pipeline(res, follow, createWriteStream(part, { flags: append ? 'a' : 'w' }));
        } catch (e) {
          if ((e as { final?: boolean }).final) throw e;
          lastError = (e as Error).message;
        }
        const now = existsSync(part) ? statSync(part).size : 0;
        if (now < f.size) {
          // Cut short: continue from here (a request that made progress does not count as a failure).
          if (now <= have) failures++;
          if (failures >= max) {
            throw new MvmError(ErrorCodes.UNAVAILABLE, `the transfer of ${f.name} from node ${o.sourceNode} stopped at byte ${now} of ${f.size} after ${failures} failed attempts: ${lastError || 'connection closed'}`);
          }
          await sleep(Math.min(2000, 100 * 2 ** failures));
          continue;
        }
      }
      const size = statSync(part).size;
      const sum = hashed === size ? hash.digest('hex') : await sha256File(part);
      hashed = -1; // digested: a retry starts a new one
      if (size === f.size && sum === f.sha256) {
        renameSync(part, dest);
        bytes += f.size;
        break;
      }
      rmSync(part, { force: true });
      if (++failures >= max) throw new MvmError(ErrorCodes.UNAVAILABLE, `${f.name} from node ${o.sourceNode} does not match its checksum (sha256 ${sum}, expected ${f.sha256})`);
    }
  }
  return { bytes, ms: Date.now() - t0, resumes };
}

/** One migration carried out by the source node. */
interface Outgoing {
  vm: MicroVM;
  plan: MigrationPlan;
  dir: string;
  pausedAt: number;
  files: MigrationFile[];
  prepared: { ipChange?: string; timings: Record<string, number> };
  transfer: TransferResult;
  restore: RestoreResult;
  resumed: RestoreResult;
}

export interface MigrationSourceOptions {
  nodeName: string;
  dataDir: string;
  store: NodeScopedStore;
  k8s: KubernetesStore;
  agent: LocalAgent;
  send: AgentSend;
  log: Logger;
  /** How often the VMs bound here are looked at for a plan (besides their watch events; default 2 s). */
  resyncMs?: number;
}

/** The source node's side: runs the migrations the operator planned for VMs bound here. */
export class MigrationSource {
  private readonly running = new Set<string>();
  private readonly finished = new Set<string>();
  private timer: NodeJS.Timeout | undefined;
  private unsub: (() => void) | undefined;

  constructor(private readonly o: MigrationSourceOptions) {}

  start(): void {
    this.unsub = this.o.store.watch((c) => this.look(c.id));
    const tick = (): void => {
      for (const id of this.o.store.boundIds()) this.look(id);
      this.timer = setTimeout(tick, this.o.resyncMs ?? 2000);
      this.timer.unref();
    };
    tick();
  }

  stop(): void {
    clearTimeout(this.timer);
    this.unsub?.();
  }

  private look(id: string): void {
    const obj = this.o.store.objectOf(id);
    const plan = parseMigrationPlan(obj?.metadata.annotations?.[ANN_MIGRATION]);
    if (!obj || !plan || plan.source !== this.o.nodeName || obj.status?.node !== this.o.nodeName) return;
    if (this.running.has(plan.id) || this.finished.has(plan.id)) return;
    // Answered already (by this process before a restart, or another): nothing to do.
    if (obj.status?.conditions?.some((c) => c.type === ClusterConditions.Migrated && migrationOf(c.message) === plan.id)) return;
    this.running.add(plan.id);
    void this.migrate(id, plan).finally(() => {
      this.running.delete(plan.id);
      this.finished.add(plan.id);
    });
  }

  private steps(): Array<Step<Outgoing>> {
    const { agent, send, nodeName } = this.o;
    const call = async <T>(c: Outgoing, what: string, body: unknown, timeoutMs: number): Promise<T> => {
      const res = await send(c.plan.target, 'POST', `/v1/migrations/${c.plan.id}/${what}`, { body, timeoutMs });
      return agentResult<T>(c.plan.target, res, `${what} of migration ${c.plan.id}`);
    };
    const abortTarget = async (c: Outgoing): Promise<void> => {
      const res = await send(c.plan.target, 'DELETE', `/v1/migrations/${c.plan.id}?vm=${encodeURIComponent(c.vm.id)}`, { timeoutMs: 60_000 });
      if (res.statusCode !== 204) throw await agentError(c.plan.target, res, `abort of migration ${c.plan.id}`);
      res.resume();
    };
    return [
      {
        name: 'check',
        run: (c) => {
          const refusal = migrationRefusal(c.vm);
          if (refusal) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${c.vm.id} cannot migrate: ${refusal}`);
          if (c.plan.target === nodeName) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `the target is the source node ${nodeName}`);
        },
      },
      {
        // While the guest still runs here: the target's images, cgroup and network (with this address if it can).
        name: 'prepare-target',
        run: async (c) => {
          const ips = Object.fromEntries((c.vm.status.interfaces ?? []).map((n) => [n.name, n.ip]));
          c.prepared = await call<{ ipChange?: string; timings: Record<string, number> }>(c, 'prepare', { vmId: c.vm.id, sourceNode: nodeName, ips }, 300_000);
        },
        undo: abortTarget,
      },
      {
        name: 'pause',
        run: async (c) => {
          c.pausedAt = await agent.migrationPause(c.vm.id);
        },
        undo: (c) => agent.migrationResume(c.vm.id),
      },
      {
        name: 'snapshot',
        run: async (c) => {
          await agent.migrationSnapshot(c.vm.id, c.dir);
          c.files = await listMigrationFiles(c.dir);
        },
        undo: (c) => rmSync(c.dir, { recursive: true, force: true }),
      },
      {
        name: 'transfer',
        run: async (c) => {
          c.transfer = await call<TransferResult>(c, 'transfer', { vmId: c.vm.id, sourceNode: nodeName, files: c.files }, 600_000);
        },
        undo: abortTarget,
      },
      {
        name: 'restore',
        run: async (c) => {
          c.restore = await call<RestoreResult>(c, 'restore', { vmId: c.vm.id }, 300_000);
        },
        undo: abortTarget,
      },
      {
        name: 'resume',
        run: async (c) => {
          c.resumed = await call<RestoreResult>(c, 'resume', { vmId: c.vm.id }, 120_000);
        },
      },
      {
        name: 'switch',
        run: async (c) => {
          const now = new Date().toISOString();
          const r = c.restore;
          const downtime = c.restore.resumedAt - c.pausedAt;
          const total = Date.now() - Date.parse(c.plan.startedAt || now);
          const ip = r.ipChange ? `address changed (${r.ipChange})` : r.ip ? `address ${r.ip} kept` : 'no network';
          const message = migrationMessage(c.plan.id, `moved from ${nodeName} to ${c.plan.target} with its memory: downtime ${downtime} ms, total ${total} ms, ${(c.transfer.bytes / 1048576).toFixed(1)} MiB transferred${c.transfer.resumes ? `, transfer resumed ${c.transfer.resumes} time(s)` : ''}, ${ip}`);
          let moved = false;
          await this.o.k8s.updateVm(c.vm.id, (cur) => {
            if (cur.status.node !== nodeName) return cur;
            moved = true;
            cur.status.node = c.plan.target;
            if (r.ip) cur.status.ip = r.ip;
            if (r.interfaces) cur.status.interfaces = r.interfaces;
            if (r.pid !== undefined) cur.status.pid = r.pid;
            cur.status.conditions = setCondition(cur.status.conditions, { type: ClusterConditions.Migrated, status: 'True', reason: 'Migrated', message }, now);
            return cur;
          });
          if (!moved) throw new MvmError(ErrorCodes.CONFLICT, `microVM ${c.vm.id} is no longer bound to ${nodeName}`);
          await this.o.store.appendEvent({ vmId: c.vm.id, tenant: c.vm.tenant, time: now, type: 'Normal', reason: 'Migrated', message });
          if (r.ipChange) await this.o.store.appendEvent({ vmId: c.vm.id, tenant: c.vm.tenant, time: now, type: 'Warning', reason: 'AddressChanged', message: migrationMessage(c.plan.id, r.ipChange) });
          this.o.log.info({ vm: c.vm.id, migration: c.plan.id, target: c.plan.target, downtimeMs: downtime, totalMs: total, transfer: c.transfer, prepare: c.prepared.timings, restore: r.timings }, 'migrated');
        },
      },
      {
        name: 'cleanup',
        run: (c) => {
          rmSync(c.dir, { recursive: true, force: true });
          agent.migrationDone(c.vm.id);
        },
      },
    ];
  }

  private async migrate(id: string, plan: MigrationPlan): Promise<void> {
    const vm = await this.o.store.getVm(id);
    if (!vm) return;
    const c = { vm, plan, dir: migrationDir(this.o.dataDir, plan.id) } as Outgoing;
    this.o.log.info({ vm: id, migration: plan.id, target: plan.target }, 'migration starts');
    try {
      await runSteps(`migration ${plan.id} of ${id}`, this.steps(), c, {
        onUndoError: (step, err) => this.o.log.warn({ vm: id, migration: plan.id, step, err: err.message }, 'undo of a migration step failed'),
      });
    } catch (e) {
      const err = asMvmError(e);
      const step = (failedStep(err) ?? 'unknown').split('.')[0]!;
      const now = new Date().toISOString();
      const message = migrationMessage(plan.id, `failed at step ${step}: ${asMvmError(err.cause ?? err).message}; the microVM runs on ${this.o.nodeName}`);
      this.o.log.warn({ vm: id, migration: plan.id, step, err: err.message }, 'migration failed');
      const reason = step.charAt(0).toUpperCase() + step.slice(1).replace(/-([a-z])/g, (_m, x: string) => x.toUpperCase());
      await this.o.k8s
        .updateVm(id, (cur) => {
          if (cur.status.node !== this.o.nodeName) return cur;
          cur.status.conditions = setCondition(cur.status.conditions, { type: ClusterConditions.Migrated, status: 'False', reason, message }, now);
          return cur;
        })
        .catch((x: Error) => this.o.log.error({ vm: id, err: x.message }, 'cannot record the failed migration'));
      await this.o.store.appendEvent({ vmId: id, tenant: vm.tenant, time: now, type: 'Warning', reason: 'MigrationFailed', message }).catch(() => undefined);
    }
  }
}
