/**
 * Container images of the cluster components: every image the manifests in deploy/ name is built by
 * `make container-images` from a stage of deploy/images/Dockerfile whose entrypoint is that
 * component's binary; the node agent's stage installs the Debian packages scripts/setup.sh installs
 * for running VMs; without a container engine the target fails with a clear message. The engine is
 * faked (a script on PATH recording its arguments), so this runs without docker/podman/buildah.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { REPO } from '../support/service.js';

/** Images of other projects the manifests may use (not built here). */
const UPSTREAM = [/^cr\.fluentbit\.io\/fluent\/fluent-bit:/, /^redis:/];
/** The binary each of our images must run (README "Run on Kubernetes", "What runs where"). */
const ENTRYPOINT: Record<string, string> = {
  'microvm-service/api': 'dist/src/cmd/mvm-server.js',
  'microvm-service/operator': 'dist/src/cmd/mvm-operator.js',
  'microvm-service/firecracker-runtime': 'dist/src/cmd/mvm-agent.js',
};
/** scripts/setup.sh packages the running service does not need (tests and development only: metrics and dashboard tests, the test registry, the Python SDK's tests, the tests' Redis; deploy/api/redis.yaml runs the upstream image). */
const DEV_ONLY = ['prometheus', 'chromium', 'fonts-dejavu-core', 'docker-registry', 'python3', 'python3-venv', 'redis-server'];

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((e) => {
    const p = join(dir, e);
    return statSync(p).isDirectory() ? yamlFiles(p) : /\.ya?ml$/.test(e) ? [p] : [];
  });
}

/** Every container image of every pod template (or pod) in deploy/. */
function manifestImages(): string[] {
  const out = new Set<string>();
  const walk = (o: unknown): void => {
    if (Array.isArray(o)) return o.forEach(walk);
    if (!o || typeof o !== 'object') return;
    const r = o as Record<string, unknown>;
    for (const k of ['containers', 'initContainers']) {
      if (Array.isArray(r[k])) for (const c of r[k] as Array<{ image?: unknown }>) if (typeof c.image === 'string') out.add(c.image);
    }
    Object.values(r).forEach(walk);
  };
  for (const f of yamlFiles(join(REPO, 'deploy'))) for (const d of parseAllDocuments(readFileSync(f, 'utf8'))) walk(d.toJS());
  return [...out].sort();
}

/** Stages of the Dockerfile: name → { entrypoint, text }. */
function dockerfileStages(): Map<string, { entrypoint: string[] | undefined; text: string }> {
  const text = readFileSync(join(REPO, 'deploy/images/Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const stages = new Map<string, { entrypoint: string[] | undefined; text: string }>();
  for (const block of text.split(/^(?=FROM\s)/m).filter((b) => b.startsWith('FROM'))) {
    const m = /^FROM\s+(\S+)\s+AS\s+(\S+)/i.exec(block);
    assert.ok(m, `every stage is named: ${block.split('\n')[0]}`);
    const ep = /^ENTRYPOINT\s+(\[.*\])\s*$/m.exec(block);
    stages.set(m[2]!, { entrypoint: ep ? (JSON.parse(ep[1]!) as string[]) : undefined, text: block });
  }
  return stages;
}

function whichMake(): string {
  for (const d of (process.env.PATH ?? '').split(delimiter)) if (d && existsSync(join(d, 'make'))) return join(d, 'make');
  assert.fail('make is not on PATH');
}

/** `make container-images` with PATH holding only `bin` (so no real engine is found). */
function makeContainerImages(bin: string): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(whichMake(), ['-C', REPO, '--no-print-directory', 'container-images'], { encoding: 'utf8', env: { PATH: bin, HOME: bin } });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('every image in deploy/ is built and tagged by `make container-images` from a Dockerfile stage running that component', () => {
  const images = manifestImages();
  const ours = images.filter((i) => !UPSTREAM.some((u) => u.test(i)));
  assert.deepEqual(ours, ['microvm-service/api:0.1.0', 'microvm-service/firecracker-runtime:0.1.0', 'microvm-service/operator:0.1.0']);

  const bin = mkdtempSync(join(tmpdir(), 'mvm-fake-engine-'));
  try {
    const log = join(bin, 'calls');
    writeFileSync(join(bin, 'podman'), `#!/bin/sh\necho "$*" >> '${log}'\n`);
    chmodSync(join(bin, 'podman'), 0o755);
    const r = makeContainerImages(bin);
    assert.equal(r.status, 0, r.stderr + r.stdout);
    const builds = readFileSync(log, 'utf8')
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('build '))
      .map((l) => {
        const m = /^build -f deploy\/images\/Dockerfile --target (\S+) -t (\S+) \.$/.exec(l);
        assert.ok(m, `unexpected engine call: ${l}`);
        return { target: m[1]!, tag: m[2]! };
      });
    const stages = dockerfileStages();
    for (const image of ours) {
      const b = builds.find((x) => x.tag === image);
      assert.ok(b, `${image} (deploy/) is not tagged by make container-images: ${JSON.stringify(builds)}`);
      const stage = stages.get(b.target);
      assert.ok(stage, `make builds --target ${b.target}, which deploy/images/Dockerfile does not define (stages: ${[...stages.keys()].join(', ')})`);
      const want = ENTRYPOINT[image.replace(/:[^:]+$/, '')]!;
      assert.deepEqual(stage.entrypoint, ['node', want], `${image}: stage ${b.target} runs ${want}`);
      assert.ok(existsSync(join(REPO, want.replace(/^dist\//, '').replace(/\.js$/, '.ts'))), `${want} is built from a source file`);
    }
    assert.equal(builds.length, ours.length, 'no image is built that no manifest uses');
  } finally {
    rmSync(bin, { recursive: true, force: true });
  }
});

test('the node agent stage installs what scripts/setup.sh installs for running VMs', () => {
  const setup = readFileSync(join(REPO, 'scripts/setup.sh'), 'utf8');
  const m = /APT_PACKAGES=\(([^)]*)\)/.exec(setup);
  assert.ok(m, 'APT_PACKAGES in scripts/setup.sh');
  const wanted = m[1]!.split(/\s+/).filter(Boolean).filter((p) => !DEV_ONLY.includes(p));
  const stages = dockerfileStages();
  const agent = stages.get('agent');
  assert.ok(agent, 'stage agent');
  const install = /apt-get install[^&]*/.exec(agent.text);
  assert.ok(install, 'the agent stage runs apt-get install');
  const installed = install[0].split(/\s+/).filter((w) => /^[a-z0-9][a-z0-9.+-]+$/.test(w));
  for (const p of wanted) assert.ok(installed.includes(p), `agent image lacks ${p} (scripts/setup.sh installs it)`);
  for (const p of ['qemu-system-x86', 'qemu-utils', 'e2fsprogs', 'containernetworking-plugins', 'nftables', 'iproute2', 'busybox-static', 'lz4']) assert.ok(installed.includes(p), p);
  // The unprivileged stages run as the image's node user; the agent (privileged pod) as root.
  for (const s of ['api', 'operator']) assert.match(stages.get(s)!.text, /^USER node$/m, s);
  assert.doesNotMatch(agent.text, /^USER /m);
  assert.match(stages.get('build')!.text, /^FROM node:20-bookworm AS build/m);
  for (const s of ['api', 'operator', 'agent']) assert.ok(/^FROM (runtime|node:20-bookworm-slim) AS /m.test(stages.get(s)!.text), s);
  assert.match(stages.get('runtime')!.text, /^FROM node:20-bookworm-slim AS runtime/m);
});

test('without docker, podman or buildah `make container-images` fails with a clear message', () => {
  const empty = mkdtempSync(join(tmpdir(), 'mvm-no-engine-'));
  try {
    const r = makeContainerImages(empty);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, /no container engine found: install docker, podman or buildah/);
  } finally {
    rmSync(empty, { recursive: true, force: true });
  }
});
