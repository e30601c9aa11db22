/**
 * A small "cluster" for the operator tests: a real control plane (CRDs, namespace and the RBAC of
 * deploy/), the operator and node agents as local child processes, each running as its own
 * ServiceAccount (kubeconfig impersonation, so the manifests' RBAC is what they really get), each
 * node agent with its own data directory and stand-in host network namespace and a Node object.
 * `stop()` kills everything it started, guests included, even after a failure.
 */
import { recordProcessOutput } from './ledger.js';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { sleep } from '../../src/vmm/proc.js';
import { REPO, installCrds, startControlPlane, type ControlPlane } from './k8s-control-plane.js';
import { destroyDataDir, hostNetnsOf, qemuProcessesUnder } from './service.js';

export const OPERATOR_BIN = join(REPO, 'dist/src/cmd/mvm-operator.js');
export const AGENT_BIN = join(REPO, 'dist/src/cmd/mvm-agent.js');

const cgroupParentOf = (node: string): string => `mvm-test-${node}`;

/** Remove a (test) cgroup parent and its children, on v2 or v1 (kills what is left in them). */
function removeCgroupParent(parent: string): void {
  const roots = ['/sys/fs/cgroup', ...['cpu', 'memory', 'pids'].map((c) => `/sys/fs/cgroup/${c}`)];
  for (const r of roots) {
    const p = join(r, parent);
    if (!existsSync(p)) continue;
    for (const child of readdirSync(p, { withFileTypes: true }).filter((e) => e.isDirectory())) {
      try {
        writeFileSync(join(p, child.name, 'cgroup.kill'), '1');
      } catch {
        /* v1, or gone */
      }
      try {
        rmdirSync(join(p, child.name));
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

export interface Proc {
  name: string;
  proc: ChildProcess;
  logs(): string;
  alive(): boolean;
  kill9(): Promise<void>;
  stop(): Promise<void>;
}

export interface NodeAgentProc extends Proc {
  node: string;
  dataDir: string;
}

export interface TestCluster {
  cp: ControlPlane;
  operators: Proc[];
  agents: NodeAgentProc[];
  startOperator(name: string, env?: Record<string, string>): Promise<Proc>;
  startAgent(node: string, opts?: { labels?: Record<string, string>; dataDir?: string; env?: Record<string, string> }): Promise<NodeAgentProc>;
  kubectlJson(args: string[]): any;
  /** Guests (QEMU processes) of a VM id on each node. */
  guests(id: string): Array<{ node: string; pid: number }>;
  dump(): string;
  stop(): Promise<void>;
}

function spawnProc(name: string, bin: string, env: Record<string, string>): Proc {
  let out = '';
  const proc = spawn(process.execPath, [bin], { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  proc.stdout!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-400_000)));
  proc.stderr!.on('data', (d: Buffer) => (out = (out + d.toString()).slice(-400_000)));
  recordProcessOutput(name, [proc.stdout, proc.stderr]);
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  const alive = (): boolean => proc.exitCode === null && proc.signalCode === null;
  return {
    name,
    proc,
    logs: () => out,
    alive,
    async kill9() {
      try {
        process.kill(-proc.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
      await exited;
    },
    async stop() {
      if (alive()) proc.kill('SIGTERM');
      await Promise.race([exited, sleep(20_000)]);
      if (alive()) {
        try {
          process.kill(-proc.pid!, 'SIGKILL');
        } catch {
          /* gone */
        }
        await exited;
      }
    },
  };
}

export async function startCluster(): Promise<TestCluster> {
  const cp = await startControlPlane();
  const dir = mkdtempSync(join(tmpdir(), 'mvm-k8s-op-'));
  const operators: Proc[] = [];
  const agents: NodeAgentProc[] = [];
  /** A kubeconfig acting as the ServiceAccount (impersonation by the test's admin). */
  const kubeconfigAs = (sa: string): string => {
    const kc = parse(readFileSync(cp.kubeconfig, 'utf8')) as { users: Array<{ user: Record<string, unknown> }> };
    for (const u of kc.users) u.user.as = `system:serviceaccount:microvm-system:${sa}`;
    const f = join(dir, `${sa}.kubeconfig`);
    writeFileSync(f, stringify(kc), { mode: 0o600 });
    return f;
  };
  try {
    installCrds(cp);
    for (const f of ['operator/00-namespace.yaml', 'operator/rbac.yaml', 'firecracker/rbac.yaml', 'firecracker/rbac-heartbeat.yaml']) cp.kubectlOk(['apply', '-f', join(REPO, 'deploy', f)]);
  } catch (e) {
    await cp.stop();
    throw e;
  }
  const opKc = kubeconfigAs('microvm-operator');
  const agentKc = kubeconfigAs('firecracker-runtime');
  // The agents' own token for calling each other (migrations, ADR 0034), as the DaemonSet's
  // projected token: of the agents' audience when they require one (MVM_AGENT_TOKEN_AUDIENCES).
  let peerTokenFile: string | undefined;
  const peerToken = (): string => {
    if (peerTokenFile) return peerTokenFile;
    const aud = process.env.MVM_AGENT_TOKEN_AUDIENCES?.split(',').filter(Boolean) ?? [];
    const t = cp.kubectlOk(['create', 'token', 'firecracker-runtime', '-n', 'microvm-system', '--duration=2h', ...aud.flatMap((a) => ['--audience', a])]).trim();
    peerTokenFile = join(dir, 'agent-peer.token');
    writeFileSync(peerTokenFile, t, { mode: 0o600 });
    return peerTokenFile;
  };
  const level = process.env.MVM_TEST_LOG_LEVEL ?? 'info';
  const c: TestCluster = {
    cp,
    operators,
    agents,
    async startOperator(name, env = {}) {
      const p = spawnProc(name, OPERATOR_BIN, {
        KUBECONFIG: opKc,
        POD_NAME: name,
        POD_NAMESPACE: 'microvm-system',
        MVM_HEALTH_LISTEN: '127.0.0.1:0',
        MVM_LOG_LEVEL: level,
        MVM_RESYNC_SECONDS: '5',
        MVM_LEASE_DURATION_SECONDS: '4',
        MVM_RENEW_DEADLINE_SECONDS: '3',
        MVM_RETRY_PERIOD_SECONDS: '1',
        ...env,
      });
      operators.push(p);
      return p;
    },
    async startAgent(node, opts = {}) {
      const labels = { 'microvm.service/kvm': 'true', ...(opts.labels ?? {}) };
      cp.kubectlOk(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'Node', metadata: { name: node, labels } }));
      // No kubelet here: do what it and the node lifecycle controller would (the admission plugin
      // TaintNodesByCondition gives every new Node the not-ready taint until then).
      cp.kubectl(['taint', 'nodes', node, 'node.kubernetes.io/not-ready:NoSchedule-']);
      const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), `mvm-node-${node}-`));
      const p = spawnProc(`agent/${node}`, AGENT_BIN, {
        KUBECONFIG: agentKc,
        NODE_NAME: node,
        MVM_DATA_DIR: dataDir,
        MVM_NET_HOST_NETNS: hostNetnsOf(dataDir),
        MVM_LOG_LEVEL: level,
        MVM_RESYNC_SECONDS: '2',
        MVM_HEARTBEAT_SECONDS: '2',
        MVM_K8S_SYSTEM_NAMESPACE: 'microvm-system',
        // The agent endpoint (console/metrics for the API) on loopback only.
        MVM_AGENT_LISTEN: '127.0.0.1:0',
        // The "nodes" share this host's cgroup tree: each its own parent, as each real node has its own.
        MVM_CGROUP_PARENT: cgroupParentOf(node),
        MVM_AGENT_TOKEN_FILE: peerToken(),
        ...(opts.env ?? {}),
      }) as NodeAgentProc;
      p.node = node;
      p.dataDir = dataDir;
      // The namespace that stands in for the node's host network.
      const { execFileSync } = await import('node:child_process');
      try {
        execFileSync('ip', ['netns', 'add', hostNetnsOf(dataDir)], { stdio: 'ignore' });
        execFileSync('ip', ['-n', hostNetnsOf(dataDir), 'link', 'set', 'lo', 'up']);
      } catch {
        /* exists */
      }
      agents.push(p);
      // Ready when its heartbeat Lease exists.
      const deadline = Date.now() + 60_000;
      while (cp.kubectl(['get', 'lease', '-n', 'microvm-system', `mvm-node-${node}`]).status !== 0) {
        if (!p.alive()) throw new Error(`node agent ${node} exited:\n${p.logs()}`);
        if (Date.now() > deadline) throw new Error(`node agent ${node} sent no heartbeat in 60 s:\n${p.logs()}`);
        await sleep(200);
      }
      return p;
    },
    kubectlJson(args) {
      return JSON.parse(cp.kubectlOk([...args, '-o', 'json']));
    },
    guests(id) {
      return agents.flatMap((a) => qemuProcessesUnder(a.dataDir).filter((g) => g.id === id).map((g) => ({ node: a.node, pid: g.pid })));
    },
    dump() {
      return [...operators, ...agents].map((p) => `==== ${p.name} (${p.alive() ? 'alive' : 'exited'})\n${p.logs().slice(-6000)}`).join('\n');
    },
    async stop() {
      await Promise.allSettled(operators.map((p) => p.kill9()));
      await Promise.allSettled(agents.map((p) => p.kill9()));
      for (const a of agents) {
        await destroyDataDir(a.dataDir).catch(() => undefined);
        removeCgroupParent(cgroupParentOf(a.node));
      }
      await cp.stop();
      const { rmSync } = await import('node:fs');
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return c;
}

/** Poll `fn` until it returns a truthy value (or throw with `what` and the cluster's logs). */
export async function until<T>(c: TestCluster, what: string, fn: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 120_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ` (last error: ${(last as Error).message})` : ''}\n${c.dump()}`);
    await sleep(250);
  }
}

/** kubectl helpers over the MicroVMs of one namespace (the operator tests' vocabulary). */
export function microVMs(c: TestCluster, namespace = 'demo') {
  const manifest = (name: string, spec: Record<string, unknown> = {}): string =>
    JSON.stringify({ apiVersion: 'microvm.service/v1alpha1', kind: 'MicroVM', metadata: { name, namespace }, spec: { vcpu: 1, memory: '128Mi', ...spec } });
  const get = (name: string): any => {
    const r = c.cp.kubectl(['get', 'mvm', name, '-n', namespace, '-o', 'json']);
    return r.status === 0 ? JSON.parse(r.stdout) : undefined;
  };
  return {
    manifest,
    /** kubectl apply of a MicroVM: 1 vCPU, 128Mi, then `spec`. */
    apply: (name: string, spec: Record<string, unknown> = {}): void => void c.cp.kubectlOk(['apply', '-f', '-'], manifest(name, spec)),
    get,
    idOf: (name: string): string => get(name).metadata.labels['microvm.service/id'],
    /** The object once it is Running on a node. */
    running: (name: string): any => {
      const o = get(name);
      return o?.status?.phase === 'Running' && o.status.node ? o : undefined;
    },
    /** Reasons of the object's Events, oldest first. */
    events: (name: string): string[] => c.kubectlJson(['get', 'events', '-n', namespace, '--field-selector', `involvedObject.name=${name}`]).items.map((e: any) => e.reason),
  };
}
