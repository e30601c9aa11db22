/**
 * scripts/k8s/ensure-go.sh (issue 12 item 8, set-up on a fresh machine): with no Go on PATH it fetches
 * the toolchain k8s.io/kubernetes's go.mod asks for from the Go module proxy, proves it against the Go
 * checksum database, caches it by version, reuses the cache without any network, rebuilds a broken
 * entry from the verified download, and refuses what the checksum database does not prove.
 *
 * The real toolchain zip (~70 MB) is downloaded once, into ${MVM_CACHE_DIR}/go-downloads where the script
 * keeps it anyway. Every case runs with fresh temp caches, through a module proxy on loopback that serves
 * that zip (or a forged toolchain), forwards the checksum database (or forges it) and counts requests;
 * only two cases unpack the real toolchain.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { accessSync, constants, createReadStream, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REPO = fileURLToPath(new URL('../../..', import.meta.url));
const SCRIPT = join(REPO, 'scripts/k8s/ensure-go.sh');
const KUBE = process.env.MVM_KUBE_VERSION || 'v1.37.2';
const SHARED_DL = join(process.env.MVM_CACHE_DIR || '/var/cache/mvm', 'go-downloads');
const PROXY = (process.env.GOPROXY ?? '').split(/[,|]/).find((e) => /^https?:\/\//.test(e))?.replace(/\/+$/, '') ?? 'https://proxy.golang.org';
const ARCH = process.arch === 'x64' ? 'amd64' : process.arch;

// The version the script must pick: k8s.io/kubernetes's go.mod `toolchain` line, else its `go` line
// (1.26.0 → go1.26.0), read here independently of the script.
let WANT = '';
let skip: string | false = false;
if (process.platform !== 'linux' || !['amd64', 'arm64'].includes(ARCH)) skip = `ensure-go.sh fetches Go for linux/amd64 and linux/arm64 only (this is ${process.platform}/${process.arch})`;
else {
  try {
    const res = await fetch(`${PROXY}/k8s.io/kubernetes/@v/${KUBE}.mod`, { signal: AbortSignal.timeout(20_000) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const mod = await res.text();
    const go = /^go (\S+)\s*$/m.exec(mod)?.[1];
    const tc = /^toolchain (go\S+)\s*$/m.exec(mod)?.[1];
    assert.ok(go, `no go line in k8s.io/kubernetes@${KUBE}'s go.mod`);
    WANT = tc ?? `go${/^1\.\d+$/.test(go) && Number(go.split('.')[1]) >= 21 ? `${go}.0` : go}`;
  } catch (e) {
    skip = `the Go module proxy ${PROXY} cannot be reached (${(e as Error).message}): nothing to fetch Go from`;
  }
}
const MODV = `v0.0.1-${WANT}.linux-${ARCH}`;

const tmp = mkdtempSync(join(tmpdir(), 'mvm-setup-go-'));
// PATH without any `go` on it (this machine has one in /usr/local/go/bin), but with node, which the
// script needs to verify downloads.
const nodeDir = join(tmp, 'node-bin');
mkdirSync(nodeDir);
symlinkSync(process.execPath, join(nodeDir, 'node'));
const hasGo = (d: string): boolean => {
  try {
    accessSync(join(d, 'go'), constants.X_OK);
    return true;
  } catch {
    return false;
  }
};
const PATH = [nodeDir, ...(process.env.PATH ?? '/usr/bin:/bin').split(delimiter).filter((d) => d && !hasGo(d))].join(delimiter);

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}
function ensureGo(cache: string, extra: Record<string, string> = {}): Promise<Run> {
  const env: NodeJS.ProcessEnv = { ...process.env, PATH, MVM_CACHE_DIR: cache, MVM_GO_DOWNLOAD_DIR: SHARED_DL, MVM_GOPROXY: PROXY, MVM_KUBE_VERSION: KUBE, ...extra };
  for (const k of ['GOROOT', 'GOTOOLCHAIN', 'GOFLAGS', 'MVM_GO_SUMDB', ...(extra.MVM_GO_VERSION ? [] : ['MVM_GO_VERSION'])]) delete env[k];
  return new Promise((resolve) => {
    execFile(SCRIPT, [], { env, maxBuffer: 16 << 20, timeout: 600_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
  });
}
const goVersion = (bin: string): Promise<string> =>
  new Promise((resolve, reject) => {
    const env: NodeJS.ProcessEnv = { ...process.env, PATH, GOTOOLCHAIN: 'local' };
    delete env.GOROOT;
    execFile(join(bin, 'go'), ['version'], { env }, (err, stdout) => (err ? reject(err as Error) : resolve(stdout.trim())));
  });
const entryOf = (cache: string): string => join(cache, 'go', WANT);

// ---- a forged toolchain: a zip of shell scripts that claim to be the right Go -------------------
// Everything a check of `go version` alone would accept; only the h1 hash gives it away.
const CRC = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
const crc32 = (b: Buffer): number => {
  let c = 0xffffffff;
  for (const x of b) c = CRC[(c ^ x) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
};
/** A zip of uncompressed files (method 0) with unix modes. */
function zipOf(files: Array<[name: string, data: string, mode: number]>): Buffer {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const [name, text, mode] of files) {
    const n = Buffer.from(name);
    const d = Buffer.from(text);
    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt32LE(crc32(d), 14);
    local.writeUInt32LE(d.length, 18);
    local.writeUInt32LE(d.length, 22);
    local.writeUInt16LE(n.length, 26);
    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE((3 << 8) | 20, 4); // made by unix: external attributes hold the mode
    central.writeUInt16LE(20, 6);
    central.writeUInt32LE(crc32(d), 16);
    central.writeUInt32LE(d.length, 20);
    central.writeUInt32LE(d.length, 24);
    central.writeUInt16LE(n.length, 28);
    central.writeUInt32LE(((0o100000 | mode) << 16) >>> 0, 38);
    central.writeUInt32LE(offset, 42);
    locals.push(local, n, d);
    centrals.push(central, n);
    offset += local.length + n.length + d.length;
  }
  const cd = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(files.length, 8);
  end.writeUInt16LE(files.length, 10);
  end.writeUInt32LE(cd.length, 12);
  end.writeUInt32LE(offset, 16);
  return Buffer.concat([...locals, cd, end]);
}
function forgedToolchainZip(): Buffer {
  const dir = `golang.org/toolchain@${MODV}`;
  const go = `#!/bin/sh\ncase "$*" in\n  "env GOVERSION") echo ${WANT} ;;\n  version) echo "go version ${WANT} linux/${ARCH}" ;;\n  *) echo forged ;;\nesac\n`;
  const tool = '#!/bin/sh\necho forged\n';
  return zipOf([
    [`${dir}/VERSION`, `${WANT}\n`, 0o644],
    [`${dir}/bin/go`, go, 0o755],
    [`${dir}/bin/gofmt`, tool, 0o755],
    ...['compile', 'link', 'asm'].map((t): [string, string, number] => [`${dir}/pkg/tool/linux_${ARCH}/${t}`, tool, 0o755]),
  ]);
}

// ---- a Go module proxy on loopback ------------------------------------------------------------
type Mode = 'forward' | 'dead' | 'forge-record' | 'forge-signature' | 'forge-zip';
let mode: Mode = 'forward';
let requests: string[] = [];
const server: Server = createServer((req, res) => {
  const url = req.url ?? '/';
  requests.push(url);
  void (async () => {
    if (mode === 'dead') {
      res.writeHead(404).end('no network in this test\n');
      return;
    }
    const zip = /^\/golang\.org\/toolchain\/@v\/([^/]+\.zip)$/.exec(url);
    if (zip && mode === 'forge-zip') return void res.writeHead(200).end(forgedToolchainZip());
    if (zip) {
      const file = join(SHARED_DL, zip[1]!);
      if (!existsSync(file)) return void res.writeHead(404).end();
      res.writeHead(200, { 'content-length': statSync(file).size });
      createReadStream(file).pipe(res);
      return;
    }
    const up = await fetch(PROXY + url, { signal: AbortSignal.timeout(60_000) });
    let body = Buffer.from(await up.arrayBuffer());
    if (up.ok && url.includes('/sumdb/sum.golang.org/lookup/')) {
      let text = body.toString('utf8');
      if (mode === 'forge-record') {
        // Claim the zip hash is another real hash (the go.mod line's): the signed tree head stays valid.
        const [zipLine, modLine] = text.split('\n').slice(1, 3);
        text = text.replace(zipLine!, zipLine!.replace(/h1:\S+/, /h1:\S+/.exec(modLine!)![0]));
      } else if (mode === 'forge-signature') {
        // Change the signed tree size's last digit; the signature no longer matches.
        text = text.replace(/(go\.sum database tree\n\d*)(\d)\n/, (_, a: string, d: string) => `${a}${(Number(d) + 1) % 10}\n`);
      }
      body = Buffer.from(text, 'utf8');
    }
    res.writeHead(up.status, { 'content-type': up.headers.get('content-type') ?? 'text/plain' }).end(body);
  })().catch((e: Error) => {
    if (!res.headersSent) res.writeHead(502);
    res.end(String(e));
  });
});
await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
const address = server.address();
const LOCAL = `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`;

after(() => {
  server.close();
  rmSync(tmp, { recursive: true, force: true });
});

const keptZip = join(SHARED_DL, `${MODV}.zip`);
const isZip = (u: string): boolean => u.endsWith(`/golang.org/toolchain/@v/${MODV}.zip`);
const A = join(tmp, 'a');

test('without Go on PATH: fetches the Go that k8s.io/kubernetes needs, proven by sum.golang.org, into a cache entry', { skip, timeout: 600_000 }, async () => {
  if (!existsSync(keptZip) || !existsSync(`${keptZip}.ziphash`)) {
    // First run on this machine: through the real proxy, which also keeps the zip in SHARED_DL.
    const r = await ensureGo(join(tmp, 'first'));
    assert.equal(r.code, 0, r.stderr);
    rmSync(join(tmp, 'first'), { recursive: true, force: true });
  }
  const ziphash = readFileSync(`${keptZip}.ziphash`, 'utf8').trim();
  assert.match(ziphash, /^h1:[A-Za-z0-9+/]{43}=$/);
  mode = 'forward';
  requests = [];
  const r = await ensureGo(A, { MVM_GOPROXY: LOCAL, MVM_GO_DOWNLOAD_DIR: join(tmp, 'a-dl') });
  assert.equal(r.code, 0, r.stderr);
  const bin = join(entryOf(A), 'bin');
  assert.equal(r.stdout.trim(), bin);
  assert.match(await goVersion(bin), new RegExp(`^go version ${WANT} linux/${ARCH}$`));
  // What it did: read the kubernetes go.mod, proved the zip's record in the checksum database
  // (signed tree head + tiles), downloaded the zip once.
  assert.ok(requests.includes(`/k8s.io/kubernetes/@v/${KUBE}.mod`), requests.join('\n'));
  assert.ok(requests.includes(`/sumdb/sum.golang.org/lookup/golang.org/toolchain@${MODV}`), requests.join('\n'));
  assert.ok(requests.some((u) => u.startsWith('/sumdb/sum.golang.org/tile/8/')), requests.join('\n'));
  assert.equal(requests.filter(isZip).length, 1);
  assert.match(r.stderr, new RegExp(`proven to be in the tree of \\d+ records signed by sum\\.golang\\.org`));
  const manifest = readFileSync(join(entryOf(A), 'mvm-manifest'), 'utf8');
  assert.match(manifest, new RegExp(`^version=${WANT}$`, 'm'));
  assert.ok(manifest.includes(`\nh1=${ziphash}\n`), manifest);
  assert.equal(readFileSync(join(tmp, 'a-dl', `${MODV}.zip.ziphash`), 'utf8').trim(), ziphash, 'the zip is kept with its proven hash');
  assert.deepEqual(readdirSync(join(A, 'go')).filter((e) => e.startsWith('.tmp-')), [], 'no temp dir left');
});

test('a rerun says "cached" and touches no network and no download', { skip, timeout: 60_000 }, async () => {
  mode = 'dead';
  requests = [];
  const noDl = join(tmp, 'no-downloads');
  const t0 = Date.now();
  const r = await ensureGo(A, { MVM_GOPROXY: LOCAL, MVM_GO_DOWNLOAD_DIR: noDl });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), join(entryOf(A), 'bin'));
  assert.match(r.stderr, new RegExp(`^ensure-go: cached ${entryOf(A)}$`, 'm'));
  assert.deepEqual(requests, [], 'no request to the module proxy (the version needed is remembered too)');
  assert.equal(existsSync(noDl), false);
  assert.ok(Date.now() - t0 < 10_000, `${Date.now() - t0} ms`);
});

test('a corrupt entry (truncated bin/go) is removed and rebuilt from the kept zip, offline', { skip, timeout: 300_000 }, async () => {
  writeFileSync(join(entryOf(A), 'bin/go'), '');
  const leftover = join(A, 'go', `.tmp-${WANT}.KILLED`);
  mkdirSync(leftover);
  writeFileSync(join(leftover, 'half.zip'), 'x');
  mode = 'dead';
  requests = [];
  const r = await ensureGo(A, { MVM_GOPROXY: LOCAL, MVM_GO_DOWNLOAD_DIR: join(tmp, 'a-dl') });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /removing incomplete or broken entry/);
  assert.deepEqual(requests, []);
  assert.equal(existsSync(leftover), false, 'the temp dir of an interrupted run is removed');
  assert.match(await goVersion(r.stdout.trim()), new RegExp(`^go version ${WANT} `));
});

test('a partial entry (no manifest, or a tool missing) is not used: it is removed', { skip, timeout: 120_000 }, async () => {
  // Hard-linked copies of the good entry: an intact one, and two with one piece each gone.
  const copies: Record<string, (entry: string) => void> = {
    intact: () => {},
    'no-manifest': (e) => rmSync(join(e, 'mvm-manifest')),
    'no-compile': (e) => rmSync(join(e, `pkg/tool/linux_${ARCH}/compile`)),
  };
  for (const [name, damage] of Object.entries(copies)) {
    const cache = join(tmp, `partial-${name}`);
    mkdirSync(join(cache, 'go'), { recursive: true });
    await new Promise<void>((resolve, reject) => execFile('cp', ['-al', entryOf(A), entryOf(cache)], (err) => (err ? reject(err as Error) : resolve())));
    damage(entryOf(cache));
    mode = 'dead';
    requests = [];
    // No kept zip and no network: a rebuild cannot happen, but a partial entry must not be handed out.
    const r = await ensureGo(cache, { MVM_GOPROXY: LOCAL, MVM_GO_VERSION: WANT, MVM_GO_DOWNLOAD_DIR: join(tmp, 'empty-dl') });
    if (name === 'intact') {
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /cached/);
      continue;
    }
    assert.notEqual(r.code, 0, `${name}: ${r.stdout}`);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /removing incomplete or broken entry/, name);
    assert.match(r.stderr, /cannot verify golang\.org\/toolchain@\S+ against the Go checksum database/, name);
    assert.equal(existsSync(entryOf(cache)), false, name);
  }
  assert.ok(existsSync(join(entryOf(A), 'mvm-manifest')), 'the original entry is untouched');
});

test('nothing is downloaded unless sum.golang.org proves the record', { skip, timeout: 120_000 }, async () => {
  for (const [m, why] of [
    ['forge-record', /not in the signed tree \(inclusion proof fails\)/],
    ['forge-signature', /signature does not verify/],
  ] as const) {
    mode = m;
    requests = [];
    const cache = join(tmp, m);
    const r = await ensureGo(cache, { MVM_GOPROXY: LOCAL, MVM_GO_VERSION: WANT, MVM_GO_DOWNLOAD_DIR: join(tmp, `${m}-dl`) });
    assert.notEqual(r.code, 0, m);
    assert.match(r.stderr, why);
    if (m === 'forge-record') assert.ok(requests.some((u) => u.includes('/tile/')), 'the proof is computed from the log tiles');
    assert.equal(requests.filter(isZip).length, 0, `${m}: no download`);
    assert.equal(existsSync(entryOf(cache)), false);
  }
});

test('a downloaded toolchain that is not the one sum.golang.org records is refused, however it reports its version', { skip, timeout: 120_000 }, async () => {
  mode = 'forge-zip';
  requests = [];
  const cache = join(tmp, 'forged-zip');
  const dl = join(tmp, 'forged-zip-dl');
  const r = await ensureGo(cache, { MVM_GOPROXY: LOCAL, MVM_GO_VERSION: WANT, MVM_GO_DOWNLOAD_DIR: dl });
  assert.notEqual(r.code, 0);
  assert.equal(requests.filter(isZip).length, 1);
  assert.match(r.stderr, /does not match the checksum database; nothing cached/);
  assert.equal(existsSync(entryOf(cache)), false);
  assert.equal(existsSync(join(dl, `${MODV}.zip`)), false, 'not kept');
});

test('a kept zip that no longer hashes to its recorded h1 is not trusted', { skip, timeout: 120_000 }, async () => {
  const dl = join(tmp, 'swapped-dl');
  mkdirSync(dl);
  const zip = join(dl, `${MODV}.zip`);
  writeFileSync(zip, forgedToolchainZip());
  writeFileSync(`${zip}.ziphash`, readFileSync(`${keptZip}.ziphash`)); // the real, proven hash
  mode = 'dead';
  requests = [];
  const cache = join(tmp, 'swapped');
  const r = await ensureGo(cache, { MVM_GOPROXY: LOCAL, MVM_GO_VERSION: WANT, MVM_GO_DOWNLOAD_DIR: dl });
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /holds files that hash to h1:\S+, not the h1:\S+ it must have/);
  assert.match(r.stderr, /not trusting .* any more/);
  assert.equal(existsSync(zip), false);
  assert.equal(existsSync(`${zip}.ziphash`), false);
  assert.equal(existsSync(entryOf(cache)), false);
});
