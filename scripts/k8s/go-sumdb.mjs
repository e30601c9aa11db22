#!/usr/bin/env node
// go-sumdb.mjs — the two checks `go` itself makes on a module zip, for ensure-go.sh (which has no
// Go yet to make them with). Node built-ins only; HTTP through curl, like the rest of the set-up.
//
//   node go-sumdb.mjs lookup <proxy-url> <module> <version>
//       Prints the zip's `h1:` hash as the Go checksum database (sum.golang.org) records it, after
//       checking what `go` checks: the Ed25519 signature of the signed tree head (sum.golang.org's
//       public key is below) and the record's inclusion in that tree (a Merkle proof recomputed
//       from the log's tiles). The database is reached through <proxy-url>/sumdb/sum.golang.org
//       when the proxy supports that (proxy.golang.org does), else directly at
//       https://sum.golang.org, as `go` does. Exit status 1 with a reason on any failure.
//       Not done (go does it with state kept in GOPATH/pkg/sumdb): checking that the tree is
//       consistent with trees seen before.
//   node go-sumdb.mjs dirhash <dir>
//       Prints the `h1:` hash (golang.org/x/mod/sumdb/dirhash Hash1) of the files under <dir>,
//       named by their path relative to <dir>: for an unpacked module zip, <dir> is the directory
//       that holds `<module>@<version>/`, and the result equals the hash of the zip itself.
import { createHash, createPublicKey, verify } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { lstatSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';

// The key `go` has built in (cmd/go/internal/modfetch/key.go).
const SUMDB_KEY = 'sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8';
const TILE_H = 8; // tile height of sum.golang.org (tlog tiles of 2^8 hashes)

const fail = (msg) => {
  process.stderr.write(`go-sumdb: ${msg}\n`);
  process.exit(1);
};
const sha256 = (...parts) => {
  const h = createHash('sha256');
  for (const p of parts) h.update(p);
  return h.digest();
};

function curl(url) {
  try {
    return execFileSync('curl', ['-fsSL', '--retry', '2', '--max-time', '60', url], { maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    const why = String(e.stderr || e.message).trim().split('\n').pop();
    throw new Error(`GET ${url}: ${why}`);
  }
}

// ---- signed note (golang.org/x/mod/sumdb/note) ----------------------------------------------
function verifier(vkey) {
  const [name, hashHex, ...rest] = vkey.split('+');
  const keyB64 = rest.join('+'); // base64 has '+' in it too
  const key = Buffer.from(keyB64, 'base64');
  if (key.length !== 33 || key[0] !== 1) fail(`unsupported verifier key ${vkey}`);
  const id = sha256(`${name}\n`, key).subarray(0, 4);
  if (id.toString('hex') !== hashHex) fail(`verifier key ${vkey} does not match its hash`);
  // Ed25519 public key as SubjectPublicKeyInfo DER: fixed prefix + the 32 raw bytes.
  const pub = createPublicKey({ key: Buffer.concat([Buffer.from('302a300506032b6570032100', 'hex'), key.subarray(1)]), format: 'der', type: 'spki' });
  return { name, id, pub };
}

/** Returns the note text if a signature by `v` over it verifies; throws otherwise. */
function openNote(msg, v) {
  const s = msg.toString('utf8');
  const split = s.lastIndexOf('\n\n');
  if (split < 0) throw new Error('signed tree head: no signature block');
  const text = s.slice(0, split + 1);
  for (const line of s.slice(split + 2).split('\n')) {
    const m = /^\u2014 (\S+) (\S+)$/.exec(line);
    if (!m || m[1] !== v.name) continue;
    const sig = Buffer.from(m[2], 'base64');
    if (sig.length !== 68 || !sig.subarray(0, 4).equals(v.id)) continue;
    if (verify(null, Buffer.from(text, 'utf8'), v.pub, sig.subarray(4))) return text;
    throw new Error(`signed tree head: the ${v.name} signature does not verify`);
  }
  throw new Error(`signed tree head: no signature by ${v.name}`);
}

// ---- transparency log (golang.org/x/mod/sumdb/tlog) ------------------------------------------
const leafHash = (data) => sha256(Buffer.from([0]), data);
const nodeHash = (l, r) => sha256(Buffer.from([1]), l, r);
const shr = (x, k) => Math.floor(x / 2 ** k); // x >> k without 32-bit overflow

function tilePath(level, index, width) {
  let n = index;
  let s = String(n % 1000).padStart(3, '0');
  while (n >= 1000) {
    n = Math.floor(n / 1000);
    s = `x${String(n % 1000).padStart(3, '0')}/${s}`;
  }
  return `tile/${TILE_H}/${level}/${s}${width === 2 ** TILE_H ? '' : `.p/${width}`}`;
}

/** Hashes of complete subtrees of a tree of `size` records, read from the log's tiles (untrusted:
 *  every hash ends up in the root that is compared against the signed one). */
function tileReader(base, size) {
  const tiles = new Map();
  const tile = (level, index) => {
    const stored = shr(size, level * TILE_H); // complete subtrees at level level*H
    const width = Math.min(2 ** TILE_H, stored - index * 2 ** TILE_H);
    const key = `${level}/${index}`;
    let data = tiles.get(key);
    if (!data) {
      try {
        data = curl(`${base}/${tilePath(level, index, width)}`);
      } catch (e) {
        if (width === 2 ** TILE_H) throw e;
        data = curl(`${base}/${tilePath(level, index, 2 ** TILE_H)}`); // the partial tile may be gone once the full one exists
      }
      if (data.length < width * 32) throw new Error(`tile ${tilePath(level, index, width)}: ${data.length} bytes, want ${width * 32}`);
      data = data.subarray(0, width * 32);
      tiles.set(key, data);
    }
    return data;
  };
  /** Hash of the complete subtree at tree level `k`, index `i` (records i*2^k .. (i+1)*2^k-1). */
  return (k, i) => {
    const level = Math.floor(k / TILE_H);
    const sub = k - level * TILE_H;
    const first = i * 2 ** sub; // index of its first hash at level level*H
    const data = tile(level, Math.floor(first / 2 ** TILE_H));
    const off = first % 2 ** TILE_H;
    let hs = [];
    for (let j = 0; j < 2 ** sub; j++) hs.push(data.subarray((off + j) * 32, (off + j + 1) * 32));
    while (hs.length > 1) {
      const up = [];
      for (let j = 0; j < hs.length; j += 2) up.push(nodeHash(hs[j], hs[j + 1]));
      hs = up;
    }
    return hs[0];
  };
}

/** The root of a tree of `size` records in which record `n` has hash `leaf`, taking every other
 *  hash from the tiles: equal to the signed root only if record n really is `leaf`. */
function rootWith(size, n, leaf, stored) {
  const subtrees = []; // the complete subtrees the tree is made of, largest (leftmost) first
  let start = 0;
  for (let k = Math.floor(Math.log2(size)) + 1; k >= 0; k--) {
    if (start + 2 ** k <= size) {
      if (n >= start && n < start + 2 ** k) {
        let h = leaf;
        for (let j = 0; j < k; j++) {
          const idx = shr(n, j);
          const sib = stored(j, idx % 2 === 0 ? idx + 1 : idx - 1);
          h = idx % 2 === 0 ? nodeHash(h, sib) : nodeHash(sib, h);
        }
        subtrees.push(h);
      } else subtrees.push(stored(k, start / 2 ** k));
      start += 2 ** k;
    }
  }
  let root = subtrees.pop();
  while (subtrees.length) root = nodeHash(subtrees.pop(), root);
  return root;
}

function escapePath(p) {
  return p.replace(/[A-Z]/g, (c) => `!${c.toLowerCase()}`);
}

function lookup(proxy, mod, version) {
  const v = verifier(SUMDB_KEY);
  let base = `${proxy.replace(/\/+$/, '')}/sumdb/${v.name}`;
  let viaProxy = '';
  try {
    curl(`${base}/supported`);
  } catch (e) {
    viaProxy = ` (and not through the proxy: ${e.message})`;
    base = `https://${v.name}`;
  }
  let resp;
  try {
    resp = curl(`${base}/lookup/${escapePath(mod)}@${escapePath(version)}`);
  } catch (e) {
    throw new Error(`${e.message}${viaProxy}`);
  }
  // id\nrecord text\n\nsigned tree note
  const s = resp.toString('utf8');
  const nl = s.indexOf('\n');
  const end = s.indexOf('\n\n', nl + 1);
  if (nl < 0 || end < 0 || !/^\d+$/.test(s.slice(0, nl))) throw new Error(`lookup ${mod}@${version}: malformed response`);
  const id = Number(s.slice(0, nl));
  const text = s.slice(nl + 1, end + 1);
  const tree = openNote(Buffer.from(s.slice(end + 2), 'utf8'), v);
  const t = /^go\.sum database tree\n(\d+)\n(\S+)\n$/.exec(tree);
  if (!t) throw new Error('signed tree head: malformed');
  const size = Number(t[1]);
  const root = Buffer.from(t[2], 'base64');
  if (!(id < size)) throw new Error(`record ${id} is not in the signed tree of ${size} records`);
  const got = rootWith(size, id, leafHash(Buffer.from(text, 'utf8')), tileReader(base, size));
  if (!got.equals(root)) throw new Error(`lookup ${mod}@${version}: record ${id} is not in the signed tree (inclusion proof fails): forged or corrupted response`);
  let h1;
  for (const line of text.split('\n')) {
    const f = line.split(' ');
    if (f.length === 3 && f[0] === mod && f[1] === version && f[2].startsWith('h1:')) h1 = f[2];
  }
  if (!h1) throw new Error(`lookup ${mod}@${version}: the record is for something else:\n${text}`);
  process.stderr.write(`go-sumdb: ${mod}@${version} ${h1}: record ${id}, proven to be in the tree of ${size} records signed by ${v.name}\n`);
  return h1;
}

function dirhash(dir) {
  const files = [];
  (function walk(rel) {
    for (const e of readdirSync(join(dir, rel))) {
      const r = rel ? `${rel}/${e}` : e;
      const st = lstatSync(join(dir, r));
      if (st.isDirectory()) walk(r);
      else if (st.isFile()) files.push(r);
      else throw new Error(`${join(dir, r)}: not a regular file (module zips hold only files)`);
    }
  })('');
  files.sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  const sum = createHash('sha256');
  for (const f of files) {
    if (f.includes('\n')) throw new Error(`file name with a newline: ${JSON.stringify(f)}`);
    sum.update(`${sha256(readFileSync(join(dir, f))).toString('hex')}  ${f}\n`);
  }
  return `h1:${sum.digest('base64')}`;
}

const [cmd, ...args] = process.argv.slice(2);
try {
  if (cmd === 'lookup' && args.length === 3) console.log(lookup(args[0], args[1], args[2]));
  else if (cmd === 'dirhash' && args.length === 1) console.log(dirhash(args[0]));
  else fail('usage: go-sumdb.mjs lookup <proxy-url> <module> <version> | dirhash <dir>');
} catch (e) {
  fail(e.message);
}
