/**
 * The README's "Try the cluster mode" walkthrough, run as written (issue 17). The shell block after
 * the marker `<!-- cluster-walkthrough` is read from README.md at test time, so the README and
 * what runs cannot drift: `make cluster-up`, `kubectl apply` of a MicroVM, the `mvm` CLI against
 * the API in cluster mode, the kubectl plugin (`kubectl mvm console|metrics|exec`), `kubectl
 * drain`, `make cluster-down`. Two changes, both said here: a `kubectl get mvm … -w` line (a
 * watch you end with Ctrl-C once READY is True) becomes the bounded `kubectl wait
 * --for=condition=GuestReady mvm --all …` plus one `kubectl get mvm …`; and the environment makes make skip the set-up and
 * build (MVM_NO_BUILD=1: `make test` built everything first), install the tools into a temporary
 * BIN_DIR on PATH rather than /usr/local/bin, and put the control plane's kubectl first on PATH.
 *
 * Between `make cluster-up`'s last command and `make cluster-down`, the test checks what the
 * walkthrough printed, that the plugin refuses a token the node agent cannot review, and lists
 * processes, network namespaces, links, nftables tables, cgroups and /dev/shm; the same listing
 * before and after must be equal (nothing left behind), and the one in between must show the
 * cluster (so the listing can see a leak). Prints cluster-up → first MicroVM ready, and cluster-down.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO } from '../support/k8s-control-plane.js';

const STATE_DIR = '/run/mvm-cluster';
const MARKER = '<!-- cluster-walkthrough';

/** The walkthrough's shell block, as commands (a heredoc stays with the line that opens it). */
export function walkthroughCommands(readme: string): string[] {
  const at = readme.indexOf(MARKER);
  assert.ok(at >= 0, `README.md has no ${MARKER}`);
  const m = /```sh\n([\s\S]*?)```/.exec(readme.slice(at));
  assert.ok(m, 'no ```sh block after the marker');
  const out: string[] = [];
  const lines = m[1]!.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let cmd = lines[i]!;
    if (!cmd.trim() || cmd.trim().startsWith('#')) continue;
    const here = /<<-?\s*'?(\w+)'?/.exec(cmd);
    if (here) {
      while (++i < lines.length) {
        cmd += `\n${lines[i]}`;
        if (lines[i]!.trim() === here[1]) break;
      }
    }
    out.push(cmd);
  }
  return out;
}

/** A watch that ends with Ctrl-C (once READY is True) → a bounded wait for GuestReady, then one listing. */
function bounded(cmd: string): string {
  const w = /^kubectl get (mvm|microvms?)\b(.*?)\s+(?:-w|--watch)\b(.*)$/.exec(cmd.replace(/\s+#.*$/, ''));
  if (!w) return cmd;
  const args = `${w[2]}${w[3]}`.trim();
  return `kubectl wait --for=condition=GuestReady mvm --all ${args} --timeout=300s >/dev/null && kubectl get mvm ${args}`;
}

const portTaken = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = connect(port, '127.0.0.1');
    s.once('connect', () => (s.destroy(), resolve(true)));
    s.once('error', () => resolve(false));
  });

interface Listing {
  processes: string[];
  netns: string[];
  links: string[];
  nftTables: string[];
  cgroups: string[];
  shm: string[];
}

const sh = (cmd: string, args: string[]): string => spawnSync(cmd, args, { encoding: 'utf8' }).stdout ?? '';

/** What a cluster could leave behind on this host. */
function listing(): Listing {
  const processes: string[] = [];
  for (const pid of readdirSync('/proc').filter((p) => /^\d+$/.test(p))) {
    let cmd = '';
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
    } catch {
      continue;
    }
    if (/qemu-system|kube-apiserver|(^|\/)etcd |dist\/src\/cmd\/(mvm|kubectl-mvm)|\/run\/mvm-cluster/.test(cmd)) processes.push(`${pid} ${cmd.slice(0, 160)}`);
  }
  const cgroups: string[] = [];
  const roots = ['/sys/fs/cgroup', ...readdirSync('/sys/fs/cgroup').map((c) => `/sys/fs/cgroup/${c}`)].filter((r) => {
    try {
      return statSync(r).isDirectory();
    } catch {
      return false;
    }
  });
  for (const r of roots) {
    let top: string[] = [];
    try {
      top = readdirSync(r, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name);
    } catch {
      continue;
    }
    for (const t of top) {
      cgroups.push(`${r}/${t}`);
      if (!t.startsWith('mvm')) continue;
      try {
        for (const c of readdirSync(`${r}/${t}`, { withFileTypes: true })) if (c.isDirectory()) cgroups.push(`${r}/${t}/${c.name}`);
      } catch {
        /* gone meanwhile */
      }
    }
  }
  return {
    processes,
    netns: existsSync('/var/run/netns') ? readdirSync('/var/run/netns').sort() : [],
    links: sh('ip', ['-o', 'link', 'show']).split('\n').map((l) => /^\d+:\s+([^:@]+)/.exec(l)?.[1] ?? '').filter(Boolean).sort(),
    nftTables: sh('nft', ['list', 'tables']).split('\n').map((l) => l.trim()).filter(Boolean).sort(),
    cgroups: cgroups.sort(),
    shm: readdirSync('/dev/shm').filter((f) => f.startsWith('mvm')).sort(),
  };
}

/** What `b` has that `a` has not, per kind (processes by pid and command line). */
function added(a: Listing, b: Listing): Partial<Record<keyof Listing, string[]>> {
  const out: Partial<Record<keyof Listing, string[]>> = {};
  for (const k of Object.keys(a) as Array<keyof Listing>) {
    const before = new Set(a[k]);
    const extra = b[k].filter((x) => !before.has(x));
    if (extra.length) out[k] = extra;
  }
  return out;
}

/** Run bash with `script`; resolves with the output and status (no throw). */
function bash(script: string, env: NodeJS.ProcessEnv, timeoutMs: number): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const p = spawn('bash', ['-c', script], { cwd: REPO, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const t = setTimeout(() => {
      out += `\n[walkthrough test: timed out after ${timeoutMs / 1000} s]\n`;
      try {
        process.kill(-p.pid!, 'SIGKILL');
      } catch {
        /* gone */
      }
    }, timeoutMs);
    p.once('close', (code) => {
      clearTimeout(t);
      resolve({ code, out });
    });
  });
}

const kubeBin = (): string | undefined => {
  const r = spawnSync(join(REPO, 'scripts/k8s/ensure-control-plane.sh'), { encoding: 'utf8', env: { ...process.env, MVM_VERBOSE: '' }, timeout: 10_000 });
  // Only a cached control plane: building one (10–20 min) is `make control-plane`'s job, not this test's.
  return r.status === 0 && /cached/.test(r.stderr) ? r.stdout.trim() : undefined;
};

const skip = await (async (): Promise<string | false> => {
  if (process.getuid?.() !== 0) return 'needs root (network namespaces, cgroups, QEMU)';
  if (!existsSync(join(REPO, 'dist/src/cmd/kubectl-mvm.js'))) return 'not built (make build)';
  if (existsSync(STATE_DIR)) return `${STATE_DIR} exists: a cluster from make cluster-up is running here (make cluster-down first); the walkthrough uses the README's paths`;
  for (const p of [18080, 18090]) if (await portTaken(p)) return `127.0.0.1:${p} (the walkthrough cluster's API) is in use`;
  return false;
})();
const KUBE_BIN = skip ? undefined : kubeBin();
const binDir = mkdtempSync(join(tmpdir(), 'mvm-walkthrough-bin-'));
after(() => {
  // Whatever happened: nothing of the cluster stays.
  if (existsSync(STATE_DIR) && !skip) spawnSync(join(REPO, 'scripts/k8s/cluster-down.sh'), { stdio: 'inherit', env: { ...process.env, MVM_CLUSTER_DIR: STATE_DIR } });
  rmSync(binDir, { recursive: true, force: true });
});

test(
  "the README's cluster walkthrough runs as written; cluster-down leaves nothing behind",
  { skip: skip || (KUBE_BIN ? false : 'the test control plane is not built (make control-plane)'), timeout: 600_000 },
  async () => {
    const commands = walkthroughCommands(readFileSync(join(REPO, 'README.md'), 'utf8'));
    const down = commands.findIndex((c) => /^make cluster-down\b/.test(c));
    assert.ok(commands[0]?.startsWith('make cluster-up') && down > 0, `the walkthrough starts with make cluster-up and ends with make cluster-down: ${JSON.stringify(commands)}`);
    assert.ok(commands.some((c) => /^kubectl get mvm .*-w\b/.test(c)), 'the walkthrough watches with kubectl get mvm -w');
    assert.ok(commands.some((c) => /^kubectl drain /.test(c)) && commands.some((c) => /^mvm /.test(c)) && commands.some((c) => /^kubectl mvm /.test(c)), 'drain, mvm and kubectl mvm are in it');
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${binDir}:${KUBE_BIN}:${process.env.PATH}`, BIN_DIR: binDir, MVM_NO_BUILD: '1' };
    for (const v of ['KUBECONFIG', 'MVM_SERVER', 'MVM_TOKEN', 'MVM_CLUSTER_DIR', 'MAKEFLAGS', 'MAKELEVEL']) delete env[v];
    // Each command is echoed with a time stamp (the test's own lines start with @@).
    const script = (cmds: string[], first: number): string =>
      ['set -eo pipefail', ...cmds.map((c, i) => `printf '@@ %s %s %s\\n' ${first + i} "$(date +%s.%N)" '${c.split('\n')[0]!.replace(/'/g, "'\\''")}'\n${bounded(c)}`), `echo "@@ end $(date +%s.%N)"`].join('\n');
    const stamps = (out: string): Map<string, number> => new Map([...out.matchAll(/^@@ (\S+) ([\d.]+)/gm)].map((m) => [m[1]!, Number(m[2])]));

    const before = listing();
    const up = await bash(script(commands.slice(0, down), 0), env, 480_000);
    const during = listing();
    assert.equal(up.code, 0, `walkthrough failed:\n${up.out.slice(-12_000)}`);
    const t = stamps(up.out);
    const firstWait = commands.findIndex((c) => bounded(c) !== c);
    const readyS = t.get(String(firstWait + 1))! - t.get('0')!;

    // What the walkthrough printed: make cluster-up's summary, two Ready nodes, the VM Running, the
    // CLI's view, the console, metrics and exec through the node agent, the VM on the other node.
    assert.match(up.out, /kubeconfig: +\/run\/mvm-cluster\/kubeconfig/);
    assert.match(up.out, /API: +http:\/\/127\.0\.0\.1:18080/);
    assert.match(up.out, /admin token: +[0-9a-f]{48}/);
    assert.match(up.out, /node-a +Ready/);
    assert.match(up.out, /node-b +Ready/);
    assert.match(up.out, /web +Running/);
    assert.match(up.out, /"cpuSeconds"/, 'kubectl mvm metrics');
    assert.match(up.out, /Linux /, 'kubectl mvm exec … uname');
    assert.match(up.out, /drained/);

    // The plugin goes through the agent's own authentication: a token it cannot review is refused.
    const envOf = Object.fromEntries(
      readFileSync(join(STATE_DIR, 'env'), 'utf8')
        .split('\n')
        .map((l) => /^export (\w+)=(.*)$/.exec(l))
        .filter((m): m is RegExpExecArray => !!m)
        .map((m) => [m[1]!, m[2]!]),
    );
    const bogus = spawnSync(join(binDir, 'kubectl-mvm'), ['metrics', 'web', '-n', 'demo', '--token', 'not-a-token'], { encoding: 'utf8', env: { ...env, ...envOf } });
    assert.equal(bogus.status, 1, bogus.stdout + bogus.stderr);
    assert.match(bogus.stderr, /answered 401/);
    const unknown = spawnSync(join(binDir, 'kubectl-mvm'), ['console', 'nope', '-n', 'demo'], { encoding: 'utf8', env: { ...env, ...envOf } });
    assert.match(unknown.stderr, /microvm nope not found in namespace demo/);

    // No kubelet: each agent registered its Node (annotated as its own), Ready, without the not-ready taint.
    const kubectl = (args: string[]): string => spawnSync('kubectl', args, { encoding: 'utf8', env: { ...env, ...envOf } }).stdout;
    for (const n of ['node-a', 'node-b']) {
      const node = JSON.parse(kubectl(['get', 'node', n, '-o', 'json'])) as { metadata: { annotations: Record<string, string> }; spec: { taints?: unknown[] }; status: { conditions: Array<{ type: string; status: string; reason: string }> } };
      assert.equal(node.metadata.annotations['microvm.service/registered-by'], 'mvm-agent', n);
      assert.deepEqual(node.spec.taints ?? [], [], `${n} keeps no not-ready taint`);
      assert.deepEqual(node.status.conditions.filter((c) => c.type === 'Ready').map((c) => [c.status, c.reason]), [['True', 'MvmAgentHeartbeat']]);
    }

    const downRun = await bash(script(commands.slice(down), down), env, 120_000);
    assert.equal(downRun.code, 0, `make cluster-down failed:\n${downRun.out}`);
    const td = stamps(downRun.out);
    const downS = td.get('end')! - td.get(String(down))!;
    const afterL = listing();

    // The listing sees a cluster: while it ran, its processes, namespaces and cgroups were there.
    const grew = added(before, during);
    for (const re of [/\/kube-apiserver /, /mvm-agent\.js/, /mvm-operator\.js/, /mvm-server\.js/, /qemu-system/]) {
      assert.ok(grew.processes?.some((p) => re.test(p)), `${re} while the cluster ran: ${JSON.stringify(grew.processes)}`);
    }
    assert.deepEqual(grew.netns?.filter((n) => n.startsWith('mvm-cluster-')).sort(), ['mvm-cluster-node-a', 'mvm-cluster-node-b']);
    assert.ok(grew.cgroups?.some((c) => c.endsWith('/mvm-cluster-node-a') || c.endsWith('/mvm-cluster-node-b')), JSON.stringify(grew.cgroups));
    // And after cluster-down: nothing that was not there before.
    assert.deepEqual(added(before, afterL), {}, `left behind by the cluster:\n${JSON.stringify(added(before, afterL), null, 1)}`);
    assert.equal(existsSync(STATE_DIR), false);
    // Idempotent: a second cluster-down finds nothing.
    const again = spawnSync('make', ['-s', 'cluster-down'], { cwd: REPO, env, encoding: 'utf8' });
    assert.equal(again.status, 0, again.stderr);
    assert.match(again.stderr, /nothing to remove/);

    process.stdout.write(
      `# walkthrough: make cluster-up → first MicroVM Running and ready: ${readyS.toFixed(1)} s; make cluster-down: ${downS.toFixed(1)} s\n` +
        `# listing (processes/netns/links/nft tables/cgroups/shm): before ${Object.values(before).map((v: string[]) => v.length).join('/')}, ` +
        `during ${Object.values(during).map((v: string[]) => v.length).join('/')}, after ${Object.values(afterL).map((v: string[]) => v.length).join('/')}\n`,
    );
  },
);
