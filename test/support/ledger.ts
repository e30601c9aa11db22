/**
 * The suite's ledger of secrets and of what the service wrote, for the final secret scan
 * (test/final/secrets-scan.test.ts). scripts/run-tests.mjs sets MVM_TEST_LEDGER to a fresh folder
 * when it runs the whole suite; without it every function here does nothing.
 *
 *   <ledger>/secrets.jsonl   {kind, value}: admin tokens, API keys, JWTs, JWT secrets, registry passwords
 *   <ledger>/logs/*.log      stdout+stderr of every service, operator, node agent and cluster API process
 *   <ledger>/audit/*.jsonl   audit entries and events of every data dir, dumped before it is removed
 *   <ledger>/errors/*.jsonl  every error answer (status >= 400) the test helpers received
 */
import { appendFileSync, createWriteStream, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import Database from 'better-sqlite3';

const dir = (): string | undefined => process.env.MVM_TEST_LEDGER || undefined;
let seq = 0;

function sub(name: string): string | undefined {
  const d = dir();
  if (!d) return undefined;
  const p = join(d, name);
  mkdirSync(p, { recursive: true });
  return p;
}

/** Remember a secret the suite made or used; the final scan looks for it everywhere. */
export function recordSecret(kind: string, value: string | undefined): void {
  const d = dir();
  if (!d || !value) return;
  mkdirSync(d, { recursive: true });
  appendFileSync(join(d, 'secrets.jsonl'), JSON.stringify({ kind, value }) + '\n');
}

/** Copy everything a process writes on stdout and stderr into the ledger (as it is written, so a kill -9 of the process loses nothing). */
export function recordProcessOutput(name: string, streams: Array<Readable | null | undefined>): void {
  const d = sub('logs');
  if (!d) return;
  const file = join(d, `${name.replace(/[^A-Za-z0-9_.-]/g, '_')}-${process.pid}-${++seq}.log`);
  const out = createWriteStream(file, { flags: 'a' });
  for (const s of streams) s?.on('data', (b: Buffer) => out.write(b));
  let open = streams.filter(Boolean).length;
  for (const s of streams) s?.once('close', () => --open === 0 && out.end());
}

/** Dump the audit entries and events of a standalone data dir (its state.db) before it is removed. */
export function recordAuditOf(dataDir: string): void {
  const d = sub('audit');
  const db = join(dataDir, 'state.db');
  if (!d || !existsSync(db)) return;
  let h: Database.Database | undefined;
  try {
    h = new Database(db, { readonly: true, fileMustExist: true });
    const lines: string[] = [];
    for (const table of ['audit', 'events']) {
      try {
        for (const row of h.prepare(`SELECT * FROM ${table}`).iterate()) lines.push(JSON.stringify({ table, ...(row as object) }));
      } catch {
        /* a table this database does not have */
      }
    }
    writeFileSync(join(d, `${process.pid}-${++seq}.jsonl`), lines.join('\n') + '\n');
  } catch (e) {
    writeFileSync(join(d, `${process.pid}-${++seq}.error`), `cannot read ${db}: ${(e as Error).message}\n`);
  } finally {
    h?.close();
  }
}

/** Keep an error answer the service gave (its status and body) for the scan. */
export function recordErrorAnswer(method: string, path: string, status: number, body: string): void {
  if (status < 400) return;
  const d = sub('errors');
  if (!d) return;
  appendFileSync(join(d, `${process.pid}.jsonl`), JSON.stringify({ method, path: path.split('?')[0], status, body: body.slice(0, 4000) }) + '\n');
}
