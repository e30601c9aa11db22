/**
 * A real kube-apiserver + etcd for a test file (scripts/k8s/start-control-plane.sh, ADR 0007), in a
 * temp workdir, watched by the test process (MVM_CONTROL_PLANE_OWNER_PID): it is stopped by
 * `stop()` and, if the test process dies first, by the script's watchdog.
 */
import { execFile, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KubeConfig } from '@kubernetes/client-node';

export const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const SCRIPTS = join(REPO, 'scripts/k8s');

export interface ControlPlane {
  dir: string;
  kubeconfig: string;
  env: Record<string, string>;
  kubeConfig(): KubeConfig;
  /** kubectl with this control plane's kubeconfig; never throws. */
  kubectl(args: string[], input?: string): SpawnSyncReturns<string>;
  /** kubectl that must succeed; returns stdout. */
  kubectlOk(args: string[], input?: string): string;
  stop(): Promise<void>;
}

const run = (cmd: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    execFile(cmd, args, { env, maxBuffer: 16 << 20 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });

export async function startControlPlane(): Promise<ControlPlane> {
  const dir = mkdtempSync(join(tmpdir(), 'mvm-k8s-'));
  const work = join(dir, 'cp');
  const env = { ...process.env, MVM_CONTROL_PLANE_OWNER_PID: String(process.pid) };
  let r = await run(join(SCRIPTS, 'start-control-plane.sh'), [work], env);
  // A port picked free can still be taken before etcd or the apiserver binds it: pick again.
  for (let attempt = 1; r.code !== 0 && /address already in use/.test(r.stderr) && attempt < 3; attempt++) {
    await run(join(SCRIPTS, 'stop-control-plane.sh'), [work], process.env);
    rmSync(work, { recursive: true, force: true });
    r = await run(join(SCRIPTS, 'start-control-plane.sh'), [work], env);
  }
  if (r.code !== 0) {
    await run(join(SCRIPTS, 'stop-control-plane.sh'), [work], process.env);
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`start-control-plane.sh failed (${r.code}):\n${r.stderr.slice(-4000)}`);
  }
  const cpEnv: Record<string, string> = {};
  for (const line of readFileSync(join(work, 'env'), 'utf8').split('\n')) {
    const m = /^([A-Z0-9_]+)=(.*)$/.exec(line.trim());
    if (m) cpEnv[m[1]!] = m[2]!.replace(/^'(.*)'$/, '$1');
  }
  const kubeconfig = join(work, 'kubeconfig');
  const kubectlBin = join(cpEnv.MVM_KUBE_BIN!, 'kubectl');
  let stopped = false;
  const kubectl = (args: string[], input?: string): SpawnSyncReturns<string> =>
    spawnSync(kubectlBin, ['--kubeconfig', kubeconfig, ...args], { encoding: 'utf8', input, timeout: 60_000 });
  return {
    dir: work,
    kubeconfig,
    env: cpEnv,
    kubeConfig() {
      const kc = new KubeConfig();
      kc.loadFromFile(kubeconfig);
      return kc;
    },
    kubectl,
    kubectlOk(args, input) {
      const res = kubectl(args, input);
      if (res.status !== 0) throw new Error(`kubectl ${args.join(' ')} failed (${res.status}): ${res.stderr || res.error?.message}`);
      return res.stdout;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await run(join(SCRIPTS, 'stop-control-plane.sh'), [work], process.env);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Apply deploy/crds for real and wait until the apiserver serves them. */
export function installCrds(cp: ControlPlane): void {
  cp.kubectlOk(['apply', '-f', join(REPO, 'deploy/crds')]);
  cp.kubectlOk(['wait', '--for=condition=Established', '--timeout=60s', 'crd/microvms.microvm.service', 'crd/securitygroups.microvm.service', 'crd/microvmpools.microvm.service']);
  // Established can precede the REST endpoint by a moment.
  for (let i = 0; cp.kubectl(['get', 'microvms', '-A']).status !== 0; i++) {
    if (i > 100) throw new Error('microvms.microvm.service is not served');
    spawnSync('sleep', ['0.1']);
  }
}
