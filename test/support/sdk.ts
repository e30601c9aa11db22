/**
 * Helpers of the SDK tests: the Python SDK's virtualenv (made by scripts/setup.sh) and the code
 * blocks of the SDK READMEs, which the tests run as written.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { REPO } from './service.js';

/** $MVM_CACHE_DIR/py-venv-<first 16 hex of sha256(requirements-test.txt)>: the name scripts/setup.sh gives it. */
export function pythonVenv(): string {
  const req = readFileSync(join(REPO, 'sdk/python/requirements-test.txt'));
  const dir = join(process.env.MVM_CACHE_DIR || '/var/cache/mvm', `py-venv-${createHash('sha256').update(req).digest('hex').slice(0, 16)}`);
  if (!existsSync(join(dir, '.complete'))) throw new Error(`no Python virtualenv at ${dir}: run make deps (scripts/setup.sh) first`);
  return join(dir, 'bin/python');
}

/** The first ```<lang> block of a README under the repository. */
export function readmeBlock(path: string, lang: string): string {
  const text = readFileSync(join(REPO, path), 'utf8');
  const m = new RegExp('^```' + lang + '\\n([\\s\\S]*?)^```', 'm').exec(text);
  if (!m) throw new Error(`${path} has no \`\`\`${lang} block`);
  return m[1]!;
}
