/**
 * OCI image pipeline against a real local registry (docker-registry on a free
 * loopback port): build an image with umoci, push with skopeo, then pull,
 * unpack, inject /.mvm and mkfs.ext4 through src/storage/oci, with the cache,
 * concurrency, crash-safety and error cases.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, copyFile, lstat, mkdir, mkdtemp, readdir, readFile, readlink, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import { clearLeases, OciImageCache } from '../../src/storage/oci/cache.js';
import { OCI_INIT_PATH } from '../../src/storage/oci/init-script.js';
import { parseImageReference } from '../../src/storage/oci/reference.js';
import { OciImageResolver } from '../../src/storage/oci/resolver.js';
import { buildOciImage, execFileP, pushImage, startRegistry, type TestRegistry } from '../support/registry.js';

const AUTH = { username: 'mvm', password: 'secret-pass' };

let work: string;
let reg: TestRegistry;
let authReg: TestRegistry;
let srcRootfs: string;

async function tree(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      const rel = relative(dir, p);
      const st = await lstat(p);
      const mode = (st.mode & 0o7777).toString(8);
      if (e.isSymbolicLink()) out.set(rel, `link:${await readlink(p)}`);
      else if (e.isDirectory()) {
        out.set(rel, `dir:${mode}`);
        await walk(p);
      } else out.set(rel, `file:${mode}:${createHash('sha256').update(await readFile(p)).digest('hex')}`);
    }
  };
  await walk(dir);
  return out;
}

async function dumpExt4(img: string, out: string): Promise<Map<string, string>> {
  await mkdir(out, { recursive: true });
  await execFileP('debugfs', ['-R', `rdump / ${out}`, img]);
  return tree(out);
}

const isMvm = (code: string, reason?: string) => (e: unknown): boolean => {
  assert.ok(e instanceof MvmError, `expected MvmError, got ${String(e)}`);
  assert.equal(e.code, code, e.message);
  if (reason) assert.equal(e.details['reason'], reason, e.message);
  return true;
};

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'mvm-oci-test-'));
  srcRootfs = join(work, 'src-rootfs');
  for (const d of ['bin', 'etc', 'app', 'var/empty']) await mkdir(join(srcRootfs, d), { recursive: true });
  await copyFile('/bin/busybox', join(srcRootfs, 'bin/busybox'));
  await symlink('busybox', join(srcRootfs, 'bin/sh'));
  await writeFile(join(srcRootfs, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  await writeFile(join(srcRootfs, 'etc/hello.txt'), 'hello from the image\n');
  await writeFile(join(srcRootfs, 'app/run.sh'), '#!/bin/sh\necho "app: $FOO $*"\n');
  await chmod(join(srcRootfs, 'app/run.sh'), 0o750);
  await writeFile(join(srcRootfs, 'app/data.bin'), randomBytes(200_000));
  await writeFile(join(srcRootfs, 'app/removed-later.txt'), 'whited out in layer 2\n');
  const layout = join(work, 'layout');
  await buildOciImage({
    rootfsDir: srcRootfs,
    layoutDir: layout,
    tag: 'app',
    workDir: join(work, 'umoci'),
    removeInSecondLayer: ['app/removed-later.txt'],
    spec: { entrypoint: ['/app/run.sh'], cmd: ['--flag', "it's quoted"], env: ['FOO=bar baz', 'PATH=/bin'], workingDir: '/app' },
  });
  await rm(join(srcRootfs, 'app/removed-later.txt'));
  // an image without layers
  await execFileP('umoci', ['new', '--image', `${layout}:empty`]);
  [reg, authReg] = await Promise.all([startRegistry(), startRegistry({ auth: AUTH })]);
  await Promise.all([
    pushImage(layout, 'app', reg.addr, 'test/app:1'),
    pushImage(layout, 'empty', reg.addr, 'test/empty:1'),
    pushImage(layout, 'app', authReg.addr, 'private/app:1', AUTH),
  ]);
});

after(async () => {
  await Promise.all([reg?.stop(), authReg?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

describe('image references', () => {
  it('parses and normalizes', () => {
    assert.deepEqual(parseImageReference('alpine:3.20'), {
      registry: 'docker.io', repository: 'library/alpine', tag: '3.20', canonical: 'docker.io/library/alpine:3.20', raw: 'alpine:3.20',
    });
    const r = parseImageReference('127.0.0.1:5000/busybox:1');
    assert.equal(r.registry, '127.0.0.1:5000');
    assert.equal(r.repository, 'busybox');
    assert.equal(r.tag, '1');
    const d = 'sha256:' + 'a'.repeat(64);
    const p = parseImageReference(`name@${d}`);
    assert.equal(p.digest, d);
    assert.equal(p.tag, undefined);
    assert.equal(parseImageReference('localhost/x/y').tag, 'latest');
  });
  it('rejects bad syntax with VALIDATION_FAILED on rootfs.image', () => {
    for (const bad of ['', 'UPPER/case', 'a b', 'name@sha256:xyz', 'name:bad tag', 'name:', 'x//y', ':tag', 'host:99999/x']) {
      assert.throws(
        () => parseImageReference(bad),
        (e: unknown) => {
          assert.ok(e instanceof MvmError);
          assert.equal(e.code, ErrorCodes.VALIDATION_FAILED);
          assert.equal(e.violations[0]?.field, 'rootfs.image');
          return true;
        },
        bad,
      );
    }
  });
});

describe('pull + build + cache', () => {
  let cacheDir: string;
  before(async () => {
    cacheDir = await mkdtemp(join(work, 'cache-'));
  });

  it('builds an ext4 holding the user files unchanged plus /.mvm', async () => {
    const pulls: string[] = [];
    const cache = new OciImageCache({ cacheDir, log: (m) => m.startsWith('pulling') && pulls.push(m) });
    const t0 = Date.now();
    const e = await cache.resolve(`${reg.addr}/test/app:1`);
    console.log(`cold pull+build: ${Date.now() - t0} ms (${e.sizeBytes >> 20} MiB ext4)`);
    assert.equal(e.cacheHit, false);
    assert.equal(pulls.length, 1);
    assert.match(e.digest, /^sha256:[0-9a-f]{64}$/);
    // one directory per image digest and builder (builder version, init script, guest agent)
    assert.ok(e.rootfsPath.startsWith(join(cacheDir, 'oci', `${e.digest.replace(':', '-')}-`)), e.rootfsPath);
    assert.match(e.rootfsPath, /-b[0-9a-f]{8}\/rootfs\.ext4$/);
    assert.deepEqual(e.config, { entrypoint: ['/app/run.sh'], cmd: ['--flag', "it's quoted"], env: ['FOO=bar baz', 'PATH=/bin'], workingDir: '/app', user: '' });
    assert.deepEqual(e.process.args, ['/app/run.sh', '--flag', "it's quoted"]);
    assert.equal(e.process.cwd, '/app');
    assert.equal(e.init, OCI_INIT_PATH);

    const dumped = await dumpExt4(e.rootfsPath, join(work, 'dump1'));
    const want = await tree(srcRootfs);
    for (const [p, v] of want) assert.equal(dumped.get(p), v, `user file ${p} changed`);
    assert.equal(dumped.has('app/removed-later.txt'), false, 'whiteout not applied');
    const extra = [...dumped.keys()].filter((p) => !want.has(p) && p !== 'lost+found' && !p.startsWith('.mvm'));
    assert.deepEqual(extra.sort(), e.addedDirs.map((d) => d.slice(1)).sort(), 'only missing mount points are added');
    for (const f of ['.mvm/init', '.mvm/busybox', '.mvm/run', '.mvm/config.json']) assert.ok(dumped.has(f), f);
    assert.equal(dumped.get('.mvm/bin/sh'), 'link:/.mvm/busybox');
    const cfg = JSON.parse(await readFile(join(work, 'dump1', '.mvm/config.json'), 'utf8')) as { process: { args: string[]; env: string[] } };
    assert.deepEqual(cfg.process.args, e.process.args);
    assert.ok(cfg.process.env.includes('FOO=bar baz'));
    const run = await readFile(join(work, 'dump1', '.mvm/run'), 'utf8');
    assert.match(run, /cd '\/app'/);
    assert.match(run, /'it'\\''s quoted'/);
    const init = await readFile(join(work, 'dump1', '.mvm/init'), 'utf8');
    assert.match(init, /^#!\/\.mvm\/busybox sh\n/);
    assert.match(init, /MVM-READY id=\$id/);
    await execFileP('/bin/busybox', ['sh', '-n', join(work, 'dump1', '.mvm/init')]);
    await execFileP('/bin/busybox', ['sh', '-n', join(work, 'dump1', '.mvm/run')]);
    // the generated launcher really runs the process with exactly the image env
    const { stdout } = await execFileP('/bin/busybox', ['sh', '-c', run.replace(/\/\.mvm\/busybox/g, '/bin/busybox').replace("cd '/app'", `cd '${join(work, 'dump1', 'app')}'`).replace("'/app/run.sh'", `'${join(work, 'dump1', 'app/run.sh')}'`)], {
      env: { PATH: '/bin:/usr/bin', NOT_PASSED: '1' },
    });
    assert.equal(stdout, "app: bar baz --flag it's quoted\n");

    const list = await cache.list();
    assert.equal(list.length, 1);
    assert.equal(list[0]?.digest, e.digest);
  });

  it('a second request is a cache hit without a pull', async () => {
    const pulls: string[] = [];
    const cache = new OciImageCache({ cacheDir, log: (m) => m.startsWith('pulling') && pulls.push(m) });
    let t0 = Date.now();
    const e = await cache.resolve(`${reg.addr}/test/app:1`);
    const byTag = Date.now() - t0;
    assert.equal(e.cacheHit, true);
    assert.equal(pulls.length, 0);
    t0 = Date.now();
    const e2 = await cache.resolve(`${reg.addr}/test/app@${e.digest}`);
    const byDigest = Date.now() - t0;
    assert.equal(e2.cacheHit, true);
    assert.equal(e2.rootfsPath, e.rootfsPath);
    console.log(`cache hit: ${byTag} ms by tag (one manifest request), ${byDigest} ms by digest (no network)`);
  });

  it('the resolver adapter returns a RootfsImage and falls back for "default"', async () => {
    const fallback = {
      resolveKernel: async () => ({ kernelPath: '/k', version: 'x' }),
      resolveRootfs: async () => ({ path: '/default.ext4', format: 'raw' as const, sizeBytes: 1, digest: 'sha256:0' }),
    };
    const r = new OciImageResolver(fallback, { cacheDir });
    assert.equal((await r.resolveRootfs(undefined)).path, '/default.ext4');
    assert.equal((await r.resolveRootfs('default')).path, '/default.ext4');
    const img = await r.resolveRootfs(`${reg.addr}/test/app:1`);
    assert.equal(img.format, 'raw');
    assert.match(img.path, /rootfs\.ext4$/);
    assert.equal(OciImageResolver.initFor(`${reg.addr}/test/app:1`), '/.mvm/init');
    assert.equal(OciImageResolver.initFor(undefined), undefined);
  });

  it('gc removes unused entries and keeps those in use', async () => {
    const cache = new OciImageCache({ cacheDir });
    const [e] = await cache.list();
    assert.ok(e);
    assert.deepEqual((await cache.gc({ inUse: [e.digest] })).removed, []);
    assert.deepEqual((await cache.gc({ minIdleMs: 3600_000 })).removed, []);
    assert.deepEqual((await cache.gc()).removed, [], 'just resolved: leased for a create in progress');
    clearLeases();
    assert.deepEqual((await cache.gc()).removed, [e.dir]);
    assert.deepEqual(await cache.list(), []);
  });

  it('concurrent requests for one digest build once', async () => {
    const dir = await mkdtemp(join(work, 'cache-conc-'));
    const pulls: string[] = [];
    const cache = new OciImageCache({ cacheDir: dir, log: (m) => m.startsWith('pulling') && pulls.push(m) });
    const all = await Promise.all([1, 2, 3, 4].map(() => cache.resolve(`${reg.addr}/test/app:1`)));
    assert.equal(pulls.length, 1);
    assert.equal(new Set(all.map((e) => e.rootfsPath)).size, 1);
    assert.equal(new Set(all.map((e) => e.builtAt)).size, 1);
    assert.deepEqual((await readdir(join(dir, 'oci'))).filter((n) => n.startsWith('.')), []);
  });

  it('a killed build leaves no half entry and the next build cleans up', async () => {
    const dir = await mkdtemp(join(work, 'cache-kill-'));
    const cacheJs = fileURLToPath(new URL('../../src/storage/oci/cache.js', import.meta.url));
    const child = spawn(
      process.execPath,
      ['--input-type=module', '-e', `import { OciImageCache } from ${JSON.stringify(cacheJs)}; await new OciImageCache({ cacheDir: ${JSON.stringify(dir)} }).resolve(${JSON.stringify(`${reg.addr}/test/app:1`)});`],
      { detached: true, stdio: 'ignore' },
    );
    const ociDir = join(dir, 'oci');
    const deadline = Date.now() + 20_000;
    let tmpName: string | undefined;
    while (!tmpName && Date.now() < deadline) {
      // wait until the build wrote into its temp dir (layout pulled or unpacking)
      const names = await readdir(ociDir).catch(() => [] as string[]);
      for (const n of names.filter((x) => x.includes('.tmp-'))) {
        const inside = await readdir(join(ociDir, n)).catch(() => [] as string[]);
        if (inside.includes('layout')) tmpName = n;
      }
      if (!tmpName) await new Promise((r) => setTimeout(r, 10));
    }
    assert.ok(tmpName, 'the child build never started');
    process.kill(-child.pid!, 'SIGKILL');
    await new Promise<void>((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', () => r())));
    const cache = new OciImageCache({ cacheDir: dir });
    assert.deepEqual(await cache.list(), [], 'a killed build must not leave an entry');
    const e = await cache.resolve(`${reg.addr}/test/app:1`);
    assert.equal(e.cacheHit, false);
    const left = (await readdir(ociDir)).filter((n) => n.startsWith('.'));
    assert.deepEqual(left, [], 'the dead build’s temp dir is removed');
  });
});

describe('errors', () => {
  let cacheDir: string;
  before(async () => {
    cacheDir = await mkdtemp(join(work, 'cache-err-'));
  });

  it('bad reference syntax', async () => {
    await assert.rejects(new OciImageCache({ cacheDir }).resolve('Bad/Ref'), (e: unknown) => {
      isMvm(ErrorCodes.VALIDATION_FAILED)(e);
      assert.match((e as Error).message, /rootfs\.image/);
      return true;
    });
  });

  it('unknown image and unknown tag', async () => {
    const cache = new OciImageCache({ cacheDir });
    await assert.rejects(cache.resolve(`${reg.addr}/test/nope:1`), isMvm(ErrorCodes.IMAGE_ERROR, 'not_found'));
    await assert.rejects(cache.resolve(`${reg.addr}/test/app:nope`), (e: unknown) => {
      isMvm(ErrorCodes.IMAGE_ERROR, 'not_found')(e);
      assert.match((e as Error).message, /not found/);
      return true;
    });
  });

  it('unreachable registry', async () => {
    const { freePort } = await import('../support/registry.js');
    const port = await freePort();
    await assert.rejects(new OciImageCache({ cacheDir }).resolve(`127.0.0.1:${port}/x/y:1`), isMvm(ErrorCodes.UNAVAILABLE, 'unreachable'));
  });

  it('image without filesystem content', async () => {
    await assert.rejects(new OciImageCache({ cacheDir }).resolve(`${reg.addr}/test/empty:1`), (e: unknown) => {
      isMvm(ErrorCodes.IMAGE_ERROR)(e);
      assert.match((e as Error).message, /no filesystem content/);
      return true;
    });
    assert.deepEqual(await readdir(join(cacheDir, 'oci')), []);
  });

  it('auth: missing and wrong credentials fail, right ones pull', async () => {
    const ref = `${authReg.addr}/private/app:1`;
    await assert.rejects(new OciImageCache({ cacheDir }).resolve(ref), isMvm(ErrorCodes.IMAGE_ERROR, 'unauthorized'));
    await assert.rejects(
      new OciImageCache({ cacheDir, credentials: { username: 'mvm', password: 'wrong' } }).resolve(ref),
      isMvm(ErrorCodes.IMAGE_ERROR, 'unauthorized'),
    );
    const e = await new OciImageCache({ cacheDir, credentials: { [authReg.addr]: AUTH } }).resolve(ref);
    assert.equal(e.cacheHit, false);
    assert.deepEqual(e.process.args, ['/app/run.sh', '--flag', "it's quoted"]);
  });
});
