/**
 * `mvm exec`, `mvm cp` and `mvm port-forward` (issue 13) against the real service and a real
 * guest with its agent: exit codes and both output streams, stdin, env/cwd, a TTY, a 5 MiB file
 * both ways (same sha256), a directory tree both ways (tar), an HTTP server in the guest fetched
 * through a forwarded port, and the errors of a missing path and a stopped VM.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync, chmodSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { CLI_BIN, destroyDataDir, startService, type TestService } from '../support/service.js';
import { cliRunner, type CliResult } from '../support/cli.js';

let svc: TestService;
let vmId = '';
const VM = 'guest-cli';
const home = mkdtempSync(join(tmpdir(), 'mvm-cliguest-home-'));
const work = mkdtempSync(join(tmpdir(), 'mvm-cliguest-work-'));

const mvm = cliRunner(() => svc, home, 180_000);

function cliEnv(): NodeJS.ProcessEnv {
  return { PATH: process.env.PATH, HOME: home, XDG_CONFIG_HOME: join(home, '.config'), MVM_DATA_DIR: svc.dataDir };
}

/** The CLI with bytes on its stdin. */
function mvmInput(input: string, ...args: string[]): CliResult {
  const r = spawnSync(process.execPath, [CLI_BIN, '--server', svc.url, ...args], { encoding: 'utf8', env: cliEnv(), input, timeout: 120_000 });
  return { code: r.status ?? -1, out: r.stdout, err: r.stderr };
}

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `expected success, got ${r.code}: ${r.out}${r.err}`);
  return r.out;
}

const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

/** path → sha256 (files), 'dir' (directories), mode bits, of every entry under root. */
function tree(root: string): Record<string, string> {
  const out: Record<string, string> = {};
  const walk = (d: string): void => {
    for (const e of readdirSync(d).sort()) {
      const p = join(d, e);
      const st = statSync(p);
      const rel = relative(root, p);
      if (st.isDirectory()) {
        out[rel] = 'dir';
        walk(p);
      } else out[rel] = `${sha256(p)} ${(st.mode & 0o777).toString(8)}`;
    }
  };
  walk(root);
  return out;
}

before(async () => {
  svc = await startService();
  const vm = await svc.client.microvms.create({ name: VM, memory: '256Mi' } as never);
  vmId = vm.id;
  await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 240_000 });
});

after(async () => {
  try {
    if (svc && vmId) await svc.client.microvms.delete(vmId).catch(() => undefined);
    if (svc && vmId) await svc.client.microvms.waitDeleted(vmId, { timeoutMs: 60_000 }).catch(() => undefined);
  } finally {
    await svc?.stop();
    if (svc) await destroyDataDir(svc.dataDir);
    rmSync(home, { recursive: true, force: true });
    rmSync(work, { recursive: true, force: true });
  }
});

describe('mvm exec', () => {
  test('stdout and stderr go to the CLI\'s, the exit code is the command\'s', () => {
    const r = mvm('exec', VM, '--', 'sh', '-c', 'echo out-$((6*7)); echo err >&2; exit 3');
    assert.equal(r.code, 3, r.err);
    assert.equal(r.out, 'out-42\n');
    assert.equal(r.err, 'err\n');
  });

  test('an unknown binary exits 127; success exits 0', () => {
    const r = mvm('exec', VM, '--', 'no-such-binary-here');
    assert.equal(r.code, 127, `${r.out}${r.err}`);
    assert.equal(ok(mvm('exec', VM, 'true')), '');
  });

  test('--env, --cwd, --user, and -i passes stdin', () => {
    assert.equal(ok(mvm('exec', '--env', 'GREETING=hi there', '--env', 'N=7', '--cwd', '/tmp', VM, '--', 'sh', '-c', 'echo "$GREETING $N $(pwd) $(id -u)"')), 'hi there 7 /tmp 0\n');
    assert.equal(ok(mvm('exec', '--user', 'nobody', VM, '--', 'id', '-un')), 'nobody\n');
    const lines = Array.from({ length: 2000 }, (_, i) => `line ${i}`).join('\n') + '\n';
    const r = mvmInput(lines, 'exec', '-i', VM, '--', 'sh', '-c', 'cat > /tmp/in.txt; wc -l < /tmp/in.txt; md5sum < /tmp/in.txt');
    assert.equal(r.code, 0, r.err);
    const md5 = createHash('md5').update(lines).digest('hex');
    assert.equal(r.out, `2000\n${md5}  -\n`);
    // without -i the command sees no input
    assert.equal(mvmInput('ignored\n', 'exec', VM, '--', 'cat').out, '');
  });

  test('--timeout kills the command', () => {
    const r = mvm('exec', '--timeout', '2s', VM, '--', 'sleep', '30');
    assert.notEqual(r.code, 0);
    assert.match(r.err, /timed out/);
  });

  test('-t: a pseudo-terminal in the guest (CLI and client API)', async () => {
    assert.match(ok(mvm('exec', '-t', VM, '--', 'tty')), /^\/dev\/pts\/\d+\r?\n$/);
    const s = await svc.client.execStream(VM, { cmd: ['sh', '-c', 'stty size; tty'], tty: true, cols: 123, rows: 45 });
    let out = '';
    s.stdout.on('data', (d: Buffer) => (out += d.toString()));
    const exit = await s.result;
    assert.equal(exit.exitCode, 0);
    assert.match(out, /45 123/);
    assert.match(out, /\/dev\/pts\/\d+/);
    // an interactive shell: stdin echoes through the terminal and the shell runs what it reads
    const sh = await svc.client.execStream(VM, { cmd: ['sh'], tty: true, cols: 80, rows: 24 });
    let term = '';
    sh.stdout.on('data', (d: Buffer) => (term += d.toString()));
    sh.stdin.write('echo tty-$((20+22))\n');
    sh.stdin.write('exit 5\n');
    const e2 = await sh.result;
    assert.equal(e2.exitCode, 5);
    assert.match(term, /echo tty-\$\(\(20\+22\)\)/, 'the terminal echoes the input');
    assert.match(term, /\btty-42\b/);
  });

  test('-it under a real local terminal (script(1)): raw mode, and the terminal is restored', { skip: !existsSync('/usr/bin/script') && 'script(1) missing' }, async () => {
    const cmd = `${process.execPath} ${CLI_BIN} --server ${svc.url} exec -it ${VM} sh`;
    const child = spawn('script', ['-qefc', cmd, '/dev/null'], { env: { ...cliEnv(), TERM: 'xterm' }, stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const code = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    const until = async (re: RegExp, ms = 30_000): Promise<void> => {
      const end = Date.now() + ms;
      while (!re.test(out)) {
        if (Date.now() > end) throw new Error(`timed out waiting for ${re}: ${JSON.stringify(out)}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    };
    await until(/[#$] /); // busybox ash's prompt (then it asks for the cursor position: ESC [6n)
    child.stdin.write('echo pty-$((40+2))\r');
    await until(/pty-42/);
    child.stdin.write('exit 4\r');
    const c = await Promise.race([code, new Promise<null>((r) => setTimeout(() => r(null), 30_000))]);
    if (c === null) child.kill('SIGKILL');
    assert.equal(c, 4, out);
  });
});

describe('mvm cp', () => {
  test('a 5 MiB file in and back out: same bytes, mode kept', () => {
    const src = join(work, 'big.bin');
    writeFileSync(src, randomBytes(5 * 1024 * 1024));
    chmodSync(src, 0o751);
    ok(mvm('cp', src, `${VM}:/srv/in/big.bin`));
    const sum = ok(mvm('exec', VM, '--', 'sh', '-c', 'sha256sum /srv/in/big.bin; stat -c %a /srv/in/big.bin'));
    assert.equal(sum, `${sha256(src)}  /srv/in/big.bin\n751\n`);
    const back = join(work, 'back.bin');
    ok(mvm('cp', `${VM}:/srv/in/big.bin`, back));
    assert.equal(sha256(back), sha256(src));
    assert.equal(statSync(back).mode & 0o777, 0o751);
    // into an existing directory, both ways
    ok(mvm('cp', src, `${VM}:/srv/in/`));
    ok(mvm('cp', src, `${VM}:/tmp`));
    assert.match(ok(mvm('exec', VM, '--', 'ls', '/tmp/big.bin')), /big\.bin/);
    const dir = join(work, 'into');
    mkdirSync(dir);
    ok(mvm('cp', `${VM}:/tmp/big.bin`, dir));
    assert.equal(sha256(join(dir, 'big.bin')), sha256(src));
  });

  test('a directory tree in and out (tar both ways)', () => {
    const src = join(work, 'site');
    mkdirSync(join(src, 'a/b/c'), { recursive: true });
    mkdirSync(join(src, 'empty'));
    writeFileSync(join(src, 'index.html'), '<h1>hello</h1>\n');
    writeFileSync(join(src, 'a/one.txt'), 'one\n');
    writeFileSync(join(src, 'a/b/two.bin'), randomBytes(300_000));
    writeFileSync(join(src, 'a/b/c/run.sh'), '#!/bin/sh\necho ran\n');
    chmodSync(join(src, 'a/b/c/run.sh'), 0o755);
    ok(mvm('cp', src, `${VM}:/srv/site`));
    assert.equal(ok(mvm('exec', VM, '--', '/srv/site/a/b/c/run.sh')), 'ran\n');
    assert.equal(ok(mvm('exec', VM, '--', 'cat', '/srv/site/a/one.txt')), 'one\n');
    // out to a new path, and into an existing directory
    const out1 = join(work, 'site-back');
    ok(mvm('cp', `${VM}:/srv/site`, out1));
    assert.deepEqual(tree(out1), tree(src));
    const into = join(work, 'holder');
    mkdirSync(into);
    ok(mvm('cp', `${VM}:/srv/site`, into));
    assert.deepEqual(tree(join(into, 'site')), tree(src));
    // copying into an existing guest directory nests it, like cp -r
    ok(mvm('cp', src, `${VM}:/srv/site`));
    assert.equal(ok(mvm('exec', VM, '--', 'cat', '/srv/site/site/a/one.txt')), 'one\n');
  });

  test('errors: a missing guest path, both sides local, a relative guest path', () => {
    const r = mvm('cp', `${VM}:/no/such/file`, join(work, 'x'));
    assert.equal(r.code, 1);
    assert.match(r.err, /ENOENT/);
    assert.doesNotMatch(r.err, /microVM .* not found/);
    assert.equal(mvm('cp', join(work, 'a'), join(work, 'b')).code, 1);
    assert.match(mvm('cp', join(work, 'a'), `${VM}:relative`).err, /must be absolute/);
  });
});

describe('mvm port-forward', () => {
  test('an HTTP server in the guest through a forwarded local port', async () => {
    // content to serve, then busybox httpd in the foreground as a background process of the agent
    const page = randomBytes(2 * 1024 * 1024);
    const src = join(work, 'page.bin');
    writeFileSync(src, page);
    ok(mvm('cp', src, `${VM}:/srv/www/page.bin`));
    const p = await svc.client.microvms.startProcess(VM, { cmd: ['busybox', 'httpd', '-f', '-p', '8080', '-h', '/srv/www'], tag: 'httpd' });
    assert.ok(p);

    const child = spawn(process.execPath, [CLI_BIN, '--server', svc.url, 'port-forward', VM, ':8080'], { env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    try {
      const end = Date.now() + 30_000;
      let m: RegExpExecArray | null = null;
      while (!(m = /^Forwarding from 127\.0\.0\.1:(\d+) -> 8080$/m.exec(out))) {
        if (Date.now() > end || child.exitCode !== null) throw new Error(`port-forward did not start: ${out}${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const port = Number(m[1]);
      // the server may need a moment to bind: retry the first request
      let res: Response | undefined;
      for (let i = 0; i < 50; i++) {
        try {
          res = await fetch(`http://127.0.0.1:${port}/page.bin`);
          break;
        } catch {
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      assert.ok(res, `no answer through the forward: ${err}`);
      assert.equal(res.status, 200);
      const got = Buffer.from(await res.arrayBuffer());
      assert.equal(got.length, page.length);
      assert.ok(got.equals(page), 'the page arrives unchanged');
      // several connections at once
      const all = await Promise.all([1, 2, 3, 4].map(async () => Buffer.from(await (await fetch(`http://127.0.0.1:${port}/page.bin`)).arrayBuffer())));
      for (const b of all) assert.ok(b.equals(page));
    } finally {
      child.kill('SIGINT');
      const code = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 10_000))]);
      if (code === null) child.kill('SIGKILL');
      assert.equal(code, 0, `port-forward ends cleanly on Ctrl-C: ${err}`);
    }
  });

  test('a port nobody listens on: the connection is closed with the agent\'s error', async () => {
    const child = spawn(process.execPath, [CLI_BIN, '--server', svc.url, 'port-forward', VM, ':9'], { env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const exited = new Promise<number | null>((r) => child.on('close', (c) => r(c)));
    try {
      const end = Date.now() + 30_000;
      let m: RegExpExecArray | null = null;
      while (!(m = /Forwarding from 127\.0\.0\.1:(\d+) -> 9/.exec(out))) {
        if (Date.now() > end || child.exitCode !== null) throw new Error(`port-forward did not start: ${out}${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      await assert.rejects(fetch(`http://127.0.0.1:${m[1]}/`));
      const until = Date.now() + 10_000;
      while (!/cannot forward a connection to port 9/.test(err) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
      assert.match(err, /cannot forward a connection to port 9 .*ECONNREFUSED|refused/i);
    } finally {
      child.kill('SIGINT');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]);
    }
  });
});

describe('mvm fork', () => {
  test('children carry the parent memory, each with its own name; bad input names the option', async () => {
    ok(mvm('exec', VM, '--', 'sh', '-c', 'echo fork-$((6*7)) > /run/marker'));
    const r = ok(mvm('fork', VM, '--count', '2', '--name', 'kid-a', '--name', 'kid-b', '--wait', '-o', 'json'));
    const { children } = JSON.parse(r) as { children: Array<{ id: string; name: string; status: { phase: string } }> };
    try {
      assert.deepEqual(children.map((c) => c.name).sort(), ['kid-a', 'kid-b']);
      for (const c of children) assert.equal(c.status.phase, 'Running');
      assert.equal(ok(mvm('exec', 'kid-a', '--', 'cat', '/run/marker')), 'fork-42\n', 'the child has the parent memory (/run is tmpfs)');
      assert.equal(ok(mvm('exec', 'kid-b', '--', 'hostname')), 'kid-b\n', 'with its own identity');
    } finally {
      for (const c of children) await svc.client.microvms.delete(c.id).catch(() => undefined);
      for (const c of children) await svc.client.microvms.waitDeleted(c.id, { timeoutMs: 60_000 }).catch(() => undefined);
    }
    const bad = mvm('fork', VM, '--count', '0');
    assert.equal(bad.code, 1, bad.err);
    assert.match(bad.err, /--count/);
  });
});

describe('errors', () => {
  test('an unknown VM, then a stopped VM (ILLEGAL_TRANSITION) for exec, cp and port-forward', async () => {
    const nope = mvm('exec', 'no-such-vm', '--', 'true');
    assert.equal(nope.code, 1);
    assert.match(nope.err, /microVM "no-such-vm" not found/);

    await svc.client.microvms.stop(vmId);
    await svc.client.microvms.waitFor(vmId, { phase: 'Stopped', timeoutMs: 120_000 });
    const r = mvm('exec', VM, '--', 'true');
    assert.equal(r.code, 1);
    assert.match(r.err, /ILLEGAL_TRANSITION/);
    assert.doesNotMatch(r.err, /\n\s+at /, 'no stack trace');
    const c = mvm('cp', join(work, 'big.bin'), `${VM}:/tmp/x`);
    assert.equal(c.code, 1);
    assert.match(c.err, /ILLEGAL_TRANSITION/);
    const pf = mvm('port-forward', VM, '8080');
    assert.equal(pf.code, 1);
    assert.match(pf.err, /Stopped/);
  });
});
