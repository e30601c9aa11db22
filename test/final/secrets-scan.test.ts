/**
 * After the whole suite: no secret in any log line, audit entry, event or error answer the
 * suite's processes wrote. The suite's support code records every secret it makes or uses (admin tokens, API keys,
 * JWTs and their signing secrets, registry passwords) and tees every service, operator and node
 * agent's output into a ledger (test/support/ledger.ts); scripts/run-tests.mjs runs this file
 * last, with the ledger of the run. Besides the recorded values it looks for anything shaped
 * like an API key or a JWT.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const LEDGER = process.env.MVM_TEST_LEDGER;
const why = LEDGER ? undefined : 'no MVM_TEST_LEDGER: the scan runs after the whole suite (node scripts/run-tests.mjs with no filter)';

/** The parts of a secret that must never appear: the whole value, the secret part of a structured one, and their encodings. */
function needles(kind: string, value: string): string[] {
  const out = [value];
  const key = /^mvmk_[^_]+_(.+)$/.exec(value);
  if (key) out.push(key[1]!);
  const jwt = value.split('.');
  if (jwt.length === 3 && jwt[2]) out.push(jwt[2]);
  // Encoded forms too: a browser sends its token base64url-encoded in a WebSocket subprotocol.
  for (const v of [...out]) out.push(Buffer.from(v).toString('base64url'), Buffer.from(v).toString('base64'));
  return out.filter((n) => n.length >= 8).map((n) => `${kind}:${n}`);
}

const SHAPES: Array<[string, RegExp]> = [
  ['API key', /mvmk_[A-Za-z0-9]+_[A-Za-z0-9_-]{16,}/],
  ['JWT', /eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}/],
];

test('no secret in any log line, audit entry, event or error answer written during the suite', { skip: why }, () => {
  const secretsFile = join(LEDGER!, 'secrets.jsonl');
  assert.ok(existsSync(secretsFile), `the suite recorded no secret in ${LEDGER}: is the ledger wired into test/support?`);
  const secrets = new Map<string, string>();
  for (const line of readFileSync(secretsFile, 'utf8').split('\n').filter(Boolean)) {
    const { kind, value } = JSON.parse(line) as { kind: string; value: string };
    for (const n of needles(kind, value)) secrets.set(n.slice(n.indexOf(':') + 1), kind);
  }
  const files = ['logs', 'audit', 'errors'].flatMap((d) => (existsSync(join(LEDGER!, d)) ? readdirSync(join(LEDGER!, d)).map((f) => join(LEDGER!, d, f)) : []));
  const logs = files.filter((f) => f.includes('/logs/'));
  const audits = files.filter((f) => f.includes('/audit/'));
  assert.ok(logs.length > 0 && audits.length > 0, `the ledger holds ${logs.length} logs and ${audits.length} audit dumps`);
  const findings: string[] = [];
  let lines = 0;
  for (const f of files) {
    const text = readFileSync(f, 'utf8');
    for (const [i, line] of text.split('\n').entries()) {
      if (!line) continue;
      lines++;
      for (const [value, kind] of secrets) if (line.includes(value)) findings.push(`${f}:${i + 1}: a ${kind}`);
      for (const [kind, re] of SHAPES) if (re.test(line)) findings.push(`${f}:${i + 1}: something shaped like a ${kind}: ${line.slice(0, 200)}`);
    }
  }
  console.log(`scanned ${lines} lines in ${logs.length} process logs, ${audits.length} audit/event dumps and ${files.length - logs.length - audits.length} files of error answers for ${secrets.size} secrets`);
  assert.deepEqual(findings.slice(0, 20), [], `${findings.length} findings`);
});
