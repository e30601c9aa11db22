#!/usr/bin/env node
/**
 * Regenerates test/fixtures/db/v<N>.sqlite: a state database made by the service of an earlier
 * schema version, through its own REST API (so the rows are what that version really wrote).
 *
 * For each entry below: `git worktree add` the commit into a temp dir, transpile it (`tsc --noCheck`,
 * node_modules borrowed from this checkout), start its `mvm-server` on a throwaway data dir and port
 * (no guest boots: every VM is created with `start: false`), make some records, stop it, and copy
 * its database compacted to one file (`VACUUM INTO`). A JSON sidecar holds what the test needs to
 * know (names, ids, an API key's token).
 *
 * Starts services: run under the shared lock, e.g.
 *   flock /tmp/mvm-heavy.lock node scripts/gen-db-fixtures.mjs [version...]
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import Database from 'better-sqlite3';

const REPO = resolve(new URL('..', import.meta.url).pathname);
const OUT = join(REPO, 'test/fixtures/db');

/** The last commit that wrote each schema version (user_version), and what to create through its API. */
const VERSIONS = [
  { version: 1, commit: '424bd8d', gateway: false },
  { version: 3, commit: 'd1ad556', gateway: true },
];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function call(url, token, method, path, body) {
  const r = await fetch(`${url}/api/v1${path}`, {
    method,
    headers: { authorization: `Bearer ${token}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await r.text();
  if (r.status >= 300) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

async function generate({ version, commit, gateway }) {
  const tmp = mkdtempSync(join(tmpdir(), `mvm-fx-v${version}-`));
  const src = join(tmp, 'src');
  const data = join(tmp, 'data');
  const netns = `mvmfx${version}-${process.pid % 10000}`;
  let proc;
  try {
    execFileSync('git', ['-C', REPO, 'worktree', 'add', '--detach', src, commit], { stdio: 'ignore' });
    symlinkSync(join(REPO, 'node_modules'), join(src, 'node_modules'));
    execFileSync(process.execPath, [join(REPO, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json', '--noCheck'], { cwd: src, stdio: 'inherit' });
    execFileSync('ip', ['netns', 'add', netns]);
    const token = `fixture-admin-${version}`;
    const port = 18900 + version;
    const url = `http://127.0.0.1:${port}`;
    proc = spawn(process.execPath, [join(src, 'dist/src/cmd/mvm-server.js')], {
      stdio: ['ignore', 'inherit', 'inherit'],
      env: { ...process.env, MVM_DATA_DIR: data, MVM_LISTEN: `127.0.0.1:${port}`, MVM_ADMIN_TOKEN: token, MVM_LOG_LEVEL: 'warn', MVM_NET_HOST_NETNS: netns, MVM_GRPC_LISTEN: 'off' },
    });
    for (let i = 0; ; i++) {
      if (proc.exitCode !== null) throw new Error(`the v${version} service exited`);
      if (await fetch(`${url}/healthz`).then((r) => r.ok, () => false)) break;
      if (i > 1200) throw new Error(`the v${version} service did not start`);
      await sleep(100);
    }
    const meta = { version, commit, vms: [] };
    if (gateway) {
      await call(url, token, 'POST', '/tenants', { id: 'acme', quotas: { vms: 5 } });
      const key = await call(url, token, 'POST', '/apikeys?tenant=acme', { name: 'ci', role: 'member' });
      meta.tenant = 'acme';
      meta.apiKey = { id: key.key?.id ?? key.id, token: key.token };
      const sg = await call(url, token, 'POST', '/securitygroups', { name: 'web', rules: [{ direction: 'ingress', protocol: 'tcp', ports: '80', cidr: '0.0.0.0/0' }] });
      meta.securityGroup = { id: sg.id, name: sg.name };
    }
    for (const [name, labels] of [['old-a', { app: 'web' }], ['old-b', { app: 'db' }]]) {
      const vm = await call(url, token, 'POST', '/microvms', { name, start: false, labels });
      meta.vms.push({ id: vm.id, name, tenant: vm.tenant });
    }
    proc.kill('SIGTERM');
    await new Promise((r) => proc.once('exit', r));
    proc = undefined;
    mkdirSync(OUT, { recursive: true });
    const dst = join(OUT, `v${version}.sqlite`);
    rmSync(dst, { force: true });
    const db = new Database(join(data, 'state.db'));
    const uv = db.pragma('user_version', { simple: true });
    if (uv !== version) throw new Error(`commit ${commit} wrote schema version ${uv}, expected ${version}`);
    db.exec(`VACUUM INTO '${dst.replace(/'/g, "''")}'`);
    db.close();
    writeFileSync(join(OUT, `v${version}.json`), JSON.stringify(meta, null, 2) + '\n');
    process.stdout.write(`v${version}: ${dst} from ${commit}\n`);
  } finally {
    if (proc && proc.exitCode === null) proc.kill('SIGKILL');
    if (existsSync(src)) execFileSync('git', ['-C', REPO, 'worktree', 'remove', '--force', src], { stdio: 'ignore' });
    try {
      execFileSync('ip', ['netns', 'del', netns], { stdio: 'ignore' });
    } catch {
      /* not made */
    }
    rmSync(tmp, { recursive: true, force: true });
  }
}

const wanted = process.argv.slice(2).map(Number);
for (const v of VERSIONS) if (!wanted.length || wanted.includes(v.version)) await generate(v);
