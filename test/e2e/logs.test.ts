/**
 * Logs end to end with a real guest: the Fluent Bit parsers of
 * deploy/monitoring/fluent-bit.yaml run (as JavaScript regexes with the same
 * named groups) against lines our service and guest really wrote; the service's
 * logs are structured JSON with request id, tenant and VM id; and a guest that
 * floods its serial console is capped by size-based rotation while it keeps
 * running and its console stream keeps following.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import YAML from 'yaml';
import { sleep } from '../../src/vmm/proc.js';
import { REPO, destroyDataDir, startService, type TestService } from '../support/service.js';

const BOOT_TIMEOUT = 150_000;
const MAX = 64 * 1024;
let svc: TestService;

/** [PARSER] sections of parsers.conf -> name -> { format, regex }. */
function fluentBitParsers(): Map<string, { format: string; regex?: RegExp }> {
  const docs = YAML.parseAllDocuments(readFileSync(join(REPO, 'deploy/monitoring/fluent-bit.yaml'), 'utf8')).map((d) => d.toJS());
  const cm = docs.find((d) => d.kind === 'ConfigMap') as { data: Record<string, string> };
  const out = new Map<string, { format: string; regex?: RegExp }>();
  for (const section of cm.data['parsers.conf']!.split('[PARSER]').slice(1)) {
    const kv = Object.fromEntries(
      section
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l && !l.startsWith('#'))
        .map((l) => {
          const m = /^(\S+)\s+(.*)$/.exec(l)!;
          return [m[1]!.toLowerCase(), m[2]!];
        }),
    ) as Record<string, string>;
    // Onigmo (Fluent Bit) and JavaScript share this syntax: (?<name>...), \d, \s, \S, anchors.
    out.set(kv.name!, { format: kv.format!, ...(kv.regex ? { regex: new RegExp(kv.regex) } : {}) });
  }
  return out;
}

function tagRegex(): RegExp {
  const docs = YAML.parseAllDocuments(readFileSync(join(REPO, 'deploy/monitoring/fluent-bit.yaml'), 'utf8')).map((d) => d.toJS());
  const conf = (docs.find((d) => d.kind === 'ConfigMap') as { data: Record<string, string> }).data['fluent-bit.conf']!;
  const re = /Tag_Regex\s+(\^\/var\/lib\/mvm\/vms\/.*)$/m.exec(conf)![1]!;
  return new RegExp(re.replace('/var/lib/mvm/', `${svc.dataDir}/`));
}

before(async () => {
  svc = await startService({ env: { MVM_LOG_MAX_BYTES: String(MAX), MVM_LOG_KEEP: '2', MVM_LOG_LEVEL: 'debug' } });
});

after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

test('Fluent Bit parsers match real lines; logs are JSON with request id, tenant and VM id; a flooding guest is capped', { timeout: 400_000 }, async () => {
  const vm = await svc.client.microvms.create({ name: 'chatty', vcpu: 1, memory: '128Mi' });
  await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: BOOT_TIMEOUT });
  const dir = join(svc.dataDir, 'vms', vm.id);
  const consoleLog = join(dir, 'console.log');
  const parsers = fluentBitParsers();

  // --- file paths -> tag fields
  const tag = tagRegex();
  for (const f of ['console', 'vmm']) {
    const m = tag.exec(join(dir, `${f}.log`));
    assert.ok(m, `${f}.log matches Tag_Regex`);
    assert.equal(m.groups!.vm_id, vm.id);
    assert.equal(m.groups!.file, f);
    const p = parsers.get('mvm_vm_path')!.regex!.exec(join(dir, `${f}.log.1`));
    assert.deepEqual({ ...p!.groups }, { vm_id: vm.id, file: f, generation: '1' });
  }

  // --- the real boot console
  const lines = readFileSync(consoleLog, 'utf8').split(/\r?\n/);
  const kernel = parsers.get('mvm_console_kernel')!.regex!;
  const kl = lines.filter((l) => l.startsWith('['));
  assert.ok(kl.length > 50, `${kl.length} kernel lines`);
  const parsed = kl.map((l) => kernel.exec(l));
  assert.deepEqual(parsed.filter((m) => !m).length, 0, 'every kernel line parses');
  assert.ok(parsed.every((m) => Number.isFinite(Number(m!.groups!.uptime)) && m!.groups!.message!.length > 0));
  assert.ok(parsed.some((m) => m!.groups!.message!.startsWith('Linux version')));
  const ready = parsers.get('mvm_console_ready')!.regex!;
  const readyLines = lines.map((l) => ready.exec(l)).filter(Boolean);
  assert.equal(readyLines.length, 1);
  assert.equal(readyLines[0]!.groups!.ready_id, vm.id);
  assert.equal(readyLines[0]!.groups!.marker, 'MVM-READY');

  // --- the service's own log lines: JSON, and the CRI wrapper a container runtime adds
  await fetch(`${svc.url}/api/v1/microvms/${vm.id}`, { headers: { authorization: `Bearer ${svc.token}` } });
  await sleep(300);
  const json = svc
    .logs()
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.ok(json.length > 5);
  assert.ok(json.every((r) => typeof r.level === 'number' && typeof r.time === 'number' && typeof r.msg === 'string'));
  assert.ok(json.some((r) => typeof r.reqId === 'string' && r.tenant === vm.tenant && r.vm === vm.id), 'a request line with request id, tenant and VM id');
  assert.ok(json.some((r) => r.vm === vm.id && r.c === 'controller'), 'controller lines carry the VM id');
  const cri = parsers.get('mvm_cri')!.regex!;
  for (const raw of svc.logs().split('\n').filter((l) => l.startsWith('{')).slice(0, 50)) {
    const m = cri.exec(`2026-01-02T03:04:05.123456789Z stdout F ${raw}`);
    assert.ok(m, raw);
    assert.equal(m.groups!.stream, 'stdout');
    assert.equal(m.groups!.logtag, 'F');
    assert.deepEqual(JSON.parse(m.groups!.log!), JSON.parse(raw));
  }
  assert.equal(parsers.get('mvm_json')!.format, 'json');

  // --- a guest that prints forever: type a loop into its serial console.
  const follow = new AbortController();
  let followedTail = '';
  let followedFloods = 0;
  let lastFollowed = 0;
  const stream = (async () => {
    const res = await fetch(`${svc.url}/api/v1/microvms/${vm.id}/console?follow=true&tail=0`, { headers: { authorization: `Bearer ${svc.token}` }, signal: follow.signal });
    const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const text = followedTail + value;
      for (const m of text.matchAll(/flood (\d+) /g)) {
        followedFloods++;
        lastFollowed = Number(m[1]);
      }
      followedTail = text.slice(-64); // a line split across chunks is matched next time
    }
  })().catch(() => undefined);
  const sock = connect(join(dir, 'console.sock'));
  await new Promise<void>((r, j) => sock.once('connect', r).once('error', j));
  sock.on('data', () => undefined);
  sock.write('\n');
  await sleep(500);
  sock.write('i=0; while true; do i=$((i+1)); echo "flood $i 0123456789abcdefghijklmnopqrstuvwxyz"; done\n');
  let peak = 0;
  const t0 = Date.now();
  while (Date.now() - t0 < 120_000 && !existsSync(`${consoleLog}.2`)) {
    await sleep(250);
    const total = ['', '.1', '.2', '.3'].map((s) => (existsSync(consoleLog + s) ? statSync(consoleLog + s).size : 0)).reduce((a, b) => a + b, 0);
    peak = Math.max(peak, total);
  }
  assert.ok(existsSync(`${consoleLog}.2`), `two rotations within 120 s (peak ${peak} bytes)`);
  const floodStart = Date.now();
  while (Date.now() - floodStart < 5000) {
    await sleep(250);
    const total = ['', '.1', '.2', '.3'].map((s) => (existsSync(consoleLog + s) ? statSync(consoleLog + s).size : 0)).reduce((a, b) => a + b, 0);
    peak = Math.max(peak, total);
  }
  sock.write('\x03'); // Ctrl-C ends the loop
  await sleep(1000);
  sock.destroy();
  assert.ok(!existsSync(`${consoleLog}.3`), 'only MVM_LOG_KEEP generations');
  const lastFlood = (f: string) => Math.max(0, ...[...readFileSync(f, 'utf8').matchAll(/^flood (\d+) /gm)].map((m) => Number(m[1])));
  const n = Math.max(lastFlood(consoleLog), lastFlood(`${consoleLog}.1`));
  const written = n * 45;
  // The serial console is slow enough that a 1 s check interval keeps it close to the cap; allow the
  // checker to be a few seconds late on a loaded machine (the bound still holds, it does not grow).
  assert.ok(peak < 3 * MAX + written / ((Date.now() - t0) / 1000) * 6 + 16 * 1024, `peak ${peak} bytes for ${written} bytes written`);
  assert.ok(written > peak, `the guest wrote ${written} bytes, at most ${peak} were kept`);
  // The guest is still fine; the console stream followed across the truncations.
  assert.equal((await svc.client.microvms.get(vm.id)).status.phase, 'Running');
  const deadline = Date.now() + 60_000;
  while (lastFollowed < n - 1000 && Date.now() < deadline) await sleep(250);
  assert.ok(followedFloods > 1000 && lastFollowed >= n - 1000, `followed up to flood ${lastFollowed} of ${n}`);
  const tail = await (await fetch(`${svc.url}/api/v1/microvms/${vm.id}/console?tail=4096`, { headers: { authorization: `Bearer ${svc.token}` } })).text();
  assert.match(tail, /flood \d+ /);
  // The rotation itself is logged (JSON, with the VM id).
  assert.ok(
    svc
      .logs()
      .split('\n')
      .some((l) => l.includes('log rotated (size limit)') && l.includes(vm.id)),
  );
  follow.abort();
  await stream;
});
