/**
 * A fake `rbd` executable for unit tests of the ceph-rbd volume backend: it records every call
 * (argv, one JSON line per call) and keeps a small model of a pool in a directory — images are
 * sparse files, `device map` "maps" an image to its own file (so mkfs.ext4/debugfs work on it),
 * snapshots are copies, clones remember their parent until flattened. Its error texts and exit
 * codes follow the real CLI's (ENOENT = 2 with "No such file or directory", ...).
 */
import { chmodSync, mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';

const SCRIPT = String.raw`#!/usr/bin/env node
const fs = require('fs');
const path = require('path');
const dir = process.env.RBD_FAKE_DIR;
const argv = process.argv.slice(2);
fs.appendFileSync(path.join(dir, 'calls.jsonl'), JSON.stringify(argv) + '\n');
const die = (code, msg) => { process.stderr.write('rbd: ' + msg + '\n'); process.exit(code); };
const args = [];
let readOnly = false;
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--conf' || a === '--id' || a === '--format' || a === '--image-feature') { i++; continue; }
  if (a === '--no-progress') continue;
  if (a === '--read-only') { readOnly = true; continue; }
  if (a === '--size') { args.push('SIZE=' + argv[++i]); continue; }
  if (a === '--pool') { args.push('POOL=' + argv[++i]); continue; }
  args.push(a);
}
const stateFile = path.join(dir, 'state.json');
const st = fs.existsSync(stateFile) ? JSON.parse(fs.readFileSync(stateFile, 'utf8')) : { images: {}, maps: [] };
const save = () => fs.writeFileSync(stateFile, JSON.stringify(st));
const file = (spec) => path.join(dir, spec.replace(/[\/@]/g, '__') + '.img');
const img = (spec) => { const m = /^([^\/]+)\/([^@]+)$/.exec(spec); if (!m) die(22, 'bad image spec ' + spec); return { pool: m[1], name: m[2], key: spec }; };
const snapOf = (spec) => { const m = /^([^\/]+)\/([^@]+)@(.+)$/.exec(spec); if (!m) die(22, 'bad snap spec ' + spec); return { image: m[1] + '/' + m[2], snap: m[3] }; };
const need = (key) => { const i = st.images[key]; if (!i) die(2, 'error opening image ' + key + ': (2) No such file or directory'); return i; };
const sizeOf = (s) => { const m = /^SIZE=(\d+)M$/.exec(s || ''); if (!m) die(22, 'bad size'); return Number(m[1]) * 1024 * 1024; };
const sizeArg = () => args.find((a) => a.startsWith('SIZE='));
const rest = args.filter((a) => !a.startsWith('SIZE=') && !a.startsWith('POOL='));
const [cmd, sub] = rest;
const out = (v) => process.stdout.write(typeof v === 'string' ? v : JSON.stringify(v));
switch (cmd) {
  case '--version': out('ceph version 16.2.11 (fake) pacific (stable)\n'); break;
  case 'ls': { const pool = (args.find((a) => a.startsWith('POOL=')) || 'POOL=rbd').slice(5); out(Object.values(st.images).filter((i) => i.pool === pool).map((i) => i.name)); break; }
  case 'create': { const i = img(rest[1]); if (st.images[i.key]) die(17, 'create error: (17) File exists'); fs.writeFileSync(file(i.key), ''); fs.truncateSync(file(i.key), sizeOf(sizeArg())); st.images[i.key] = { ...i, meta: {}, snaps: {} }; save(); break; }
  case 'info': { const i = need(img(rest[1]).key); out({ name: i.name, size: fs.statSync(file(i.key)).size, parent: i.parent }); break; }
  case 'image-meta': { const i = need(img(rest[2]).key); if (sub === 'get') { if (!(rest[3] in i.meta)) die(2, 'failed to get metadata ' + rest[3] + ' of image : (2) No such file or directory'); out(i.meta[rest[3]] + '\n'); } else if (sub === 'set') { i.meta[rest[3]] = rest[4]; save(); } break; }
  case 'rm': { const i = need(img(rest[1]).key); if (Object.keys(i.snaps).length) die(39, 'image has snapshots - these must be deleted with rbd snap purge before the image can be removed.'); if (st.maps.some((m) => m.key === i.key)) die(16, 'error: image still has watchers'); delete st.images[i.key]; fs.rmSync(file(i.key), { force: true }); save(); break; }
  case 'resize': { const i = need(img(rest[1]).key); fs.truncateSync(file(i.key), sizeOf(sizeArg())); break; }
  case 'device': {
    if (sub === 'list') { out(st.maps.map((m, n) => ({ id: String(n), pool: m.pool, namespace: '', name: m.name, snap: '-', device: m.device }))); break; }
    if (sub === 'map') { const i = need(img(rest[2]).key); const dev = file(i.key); st.maps.push({ key: i.key, pool: i.pool, name: i.name, device: dev, readOnly }); save(); out(dev + '\n'); break; }
    if (sub === 'unmap') { const n = st.maps.findIndex((m) => m.device === rest[2]); if (n < 0) die(22, 'unmap: ' + rest[2] + ': not mapped'); st.maps.splice(n, 1); save(); break; }
    die(22, 'unknown device command ' + sub); break;
  }
  case 'snap': {
    const s = snapOf(rest[2]); const i = need(s.image);
    if (sub === 'create') { if (i.snaps[s.snap]) die(17, 'failed to create snapshot: (17) File exists'); fs.copyFileSync(file(i.key), file(rest[2])); i.snaps[s.snap] = { protected: false }; }
    else if (sub === 'protect') { if (!i.snaps[s.snap]) die(2, 'protecting snap failed: (2) No such file or directory'); if (i.snaps[s.snap].protected) die(16, 'protecting snap failed: (16) Device or resource busy'); i.snaps[s.snap].protected = true; }
    else if (sub === 'unprotect') { if (!i.snaps[s.snap]) die(2, 'unprotecting snap failed: (2) No such file or directory'); if (Object.values(st.images).some((c) => c.parent === rest[2])) die(16, 'unprotecting snap failed: (16) Device or resource busy'); if (!i.snaps[s.snap].protected) die(22, 'snap is already unprotected / not protected'); i.snaps[s.snap].protected = false; }
    else if (sub === 'rm') { if (!i.snaps[s.snap]) die(2, 'failed to remove snapshot: (2) No such file or directory'); if (i.snaps[s.snap].protected) die(16, 'snapshot is protected'); delete i.snaps[s.snap]; fs.rmSync(file(rest[2]), { force: true }); }
    else die(22, 'unknown snap command ' + sub);
    save(); break;
  }
  case 'children': { const s = snapOf(rest[1]); const i = need(s.image); if (!i.snaps[s.snap]) die(2, 'error: (2) No such file or directory'); out(Object.values(st.images).filter((c) => c.parent === rest[1]).map((c) => ({ pool: c.pool, pool_namespace: '', image: c.name }))); break; }
  case 'clone': { const s = snapOf(rest[1]); const p = need(s.image); if (!p.snaps[s.snap] || !p.snaps[s.snap].protected) die(22, 'parent snapshot must be protected'); const c = img(rest[2]); if (st.images[c.key]) die(17, 'clone error: (17) File exists'); fs.copyFileSync(file(rest[1]), file(c.key)); st.images[c.key] = { ...c, meta: {}, snaps: {}, parent: rest[1] }; save(); break; }
  case 'flatten': { const i = need(img(rest[1]).key); delete i.parent; save(); break; }
  default: die(22, 'fake rbd: unsupported command ' + JSON.stringify(argv));
}
`;

export interface FakeRbd {
  binDir: string;
  stateDir: string;
  /** Every call so far, as argv arrays. */
  calls(): string[][];
  /** Put the fake first on PATH and point it at its state (returns an undo). */
  activate(): () => void;
}

export function installFakeRbd(root: string): FakeRbd {
  const binDir = join(root, 'bin');
  const stateDir = join(root, 'state');
  mkdirSync(binDir, { recursive: true });
  mkdirSync(stateDir, { recursive: true });
  writeFileSync(join(binDir, 'rbd'), SCRIPT);
  chmodSync(join(binDir, 'rbd'), 0o755);
  return {
    binDir,
    stateDir,
    calls: () => {
      const f = join(stateDir, 'calls.jsonl');
      return existsSync(f) ? readFileSync(f, 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l) as string[]) : [];
    },
    activate() {
      const oldPath = process.env.PATH;
      const oldDir = process.env.RBD_FAKE_DIR;
      process.env.PATH = `${binDir}:${oldPath ?? ''}`;
      process.env.RBD_FAKE_DIR = stateDir;
      return () => {
        process.env.PATH = oldPath;
        if (oldDir === undefined) delete process.env.RBD_FAKE_DIR;
        else process.env.RBD_FAKE_DIR = oldDir;
      };
    },
  };
}
