/**
 * The WebSocket echo server the tests run inside a guest (test/fixtures/ws-echo/main.go), built
 * static with the Go toolchain the set-up already has (scripts/k8s/ensure-go.sh, as the guest
 * agent's build) and cached by source hash in $MVM_CACHE_DIR/test-bin/. Answers the binary's
 * path, or why it cannot be built (the tests skip with that reason).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { defaultCacheDir } from '../../src/storage/default-images.js';
import { REPO } from './service.js';

export function buildWsEcho(): { path: string } | { skip: string } {
  const src = join(REPO, 'test/fixtures/ws-echo/main.go');
  const hash = createHash('sha256').update(readFileSync(src)).digest('hex').slice(0, 16);
  const dir = join(defaultCacheDir(), 'test-bin');
  const out = join(dir, `ws-echo-${hash}`);
  if (existsSync(out)) return { path: out };
  let goBin: string;
  try {
    goBin = execFileSync(join(REPO, 'scripts/k8s/ensure-go.sh'), { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch (e) {
    return { skip: `no Go toolchain to build the guest's WebSocket echo server (scripts/k8s/ensure-go.sh: ${(e as Error).message})` };
  }
  mkdirSync(dir, { recursive: true });
  const tmp = `${out}.tmp-${process.pid}`;
  execFileSync(join(goBin, 'go'), ['build', '-trimpath', '-ldflags', '-s -w', '-o', tmp, src], {
    cwd: join(REPO, 'test/fixtures/ws-echo'),
    env: { ...process.env, CGO_ENABLED: '0', GOOS: 'linux', GOARCH: 'amd64', GOTOOLCHAIN: 'local', GOFLAGS: '' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  renameSync(tmp, out);
  return { path: out };
}
