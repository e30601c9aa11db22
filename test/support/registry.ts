/**
 * A real OCI registry for tests: Debian's `docker-registry serve` on
 * 127.0.0.1:<free port> with its own temp storage (and optional htpasswd
 * basic auth), plus helpers to build an OCI image from a directory with umoci
 * and push it with skopeo.
 */
import { recordSecret } from './ledger.js';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

export const execFileP = promisify(execFile);

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export interface TestRegistry {
  /** host:port */
  addr: string;
  dir: string;
  auth?: { username: string; password: string };
  stop(): Promise<void>;
}

/** bcrypt hash for htpasswd (python3 crypt, cost 4 to stay fast). */
async function bcrypt(password: string): Promise<string> {
  const { stdout } = await execFileP('python3', [
    '-W', 'ignore', '-c',
    'import crypt,sys; print(crypt.crypt(sys.argv[1], crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=16)))',
    password,
  ]);
  return stdout.trim().replace(/^\$2b\$/, '$2a$');
}

export async function startRegistry(o: { auth?: { username: string; password: string } } = {}): Promise<TestRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'mvm-registry-'));
  const port = await freePort();
  const addr = `127.0.0.1:${port}`;
  let authCfg = '';
  recordSecret('registry password', o.auth?.password);
  if (o.auth) {
    await writeFile(join(dir, 'htpasswd'), `${o.auth.username}:${await bcrypt(o.auth.password)}\n`);
    authCfg = `auth:\n  htpasswd:\n    realm: mvm-test\n    path: ${join(dir, 'htpasswd')}\n`;
  }
  await writeFile(
    join(dir, 'config.yml'),
    `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\n  delete:\n    enabled: true\nhttp:\n  addr: ${addr}\n${authCfg}`,
  );
  const child: ChildProcess = spawn('docker-registry', ['serve', join(dir, 'config.yml')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const deadline = Date.now() + 15_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited: ${stderr}`);
    try {
      const r = await fetch(`http://${addr}/v2/`);
      if (r.status === 200 || r.status === 401) break;
    } catch {
      /* not up yet */
    }
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`docker-registry did not start on ${addr}: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    addr,
    dir,
    ...(o.auth ? { auth: o.auth } : {}),
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 3000);
        await exited;
        clearTimeout(t);
      }
      await rm(dir, { recursive: true, force: true });
    },
  };
}

export interface ImageSpec {
  entrypoint?: string[];
  cmd?: string[];
  env?: string[];
  workingDir?: string;
  labels?: Record<string, string>;
}

/**
 * Build an OCI image (layout `layoutDir`, tag `tag`) whose first layer is the
 * content of `rootfsDir`; `removeInSecondLayer` adds a second layer deleting
 * those paths (whiteouts).
 */
export async function buildOciImage(o: { rootfsDir: string; layoutDir: string; tag: string; spec: ImageSpec; removeInSecondLayer?: string[]; workDir: string }): Promise<void> {
  const img = `${o.layoutDir}:${o.tag}`;
  const bundle = join(o.workDir, 'bundle');
  await execFileP('umoci', ['init', '--layout', o.layoutDir]);
  await execFileP('umoci', ['new', '--image', img]);
  await execFileP('umoci', ['unpack', '--image', img, bundle]);
  await execFileP('cp', ['-a', `${o.rootfsDir}/.`, join(bundle, 'rootfs')]);
  await execFileP('umoci', ['repack', '--image', img, bundle]);
  if (o.removeInSecondLayer?.length) {
    for (const p of o.removeInSecondLayer) await rm(join(bundle, 'rootfs', p), { recursive: true, force: true });
    await execFileP('umoci', ['repack', '--image', img, bundle]);
  }
  await rm(bundle, { recursive: true, force: true });
  const args = ['config', '--image', img];
  for (const e of o.spec.entrypoint ?? []) args.push('--config.entrypoint', e);
  for (const c of o.spec.cmd ?? []) args.push('--config.cmd', c);
  for (const e of o.spec.env ?? []) args.push('--config.env', e);
  if (o.spec.workingDir) args.push('--config.workingdir', o.spec.workingDir);
  for (const [k, v] of Object.entries(o.spec.labels ?? {})) args.push('--config.label', `${k}=${v}`);
  await execFileP('umoci', args);
}

/** Push `oci:<layoutDir>:<tag>` to `docker://<addr>/<repo>`. */
export async function pushImage(layoutDir: string, tag: string, addr: string, repo: string, creds?: { username: string; password: string }): Promise<void> {
  await execFileP('skopeo', [
    '--insecure-policy', 'copy', '--quiet', '--dest-tls-verify=false',
    ...(creds ? ['--dest-creds', `${creds.username}:${creds.password}`] : []),
    `oci:${layoutDir}:${tag}`, `docker://${addr}/${repo}`,
  ]);
}
