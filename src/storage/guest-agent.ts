/**
 * The guest agent binary that every guest image carries at /.mvm/mvm-agent (issue 13,
 * docs/guest-agent-protocol.md): built from images/guest/agent by scripts/build-guest-agent.sh
 * into the cache (keyed by a hash of its sources), or given by MVM_GUEST_AGENT. Image builds put its
 * digest in their cache key, so a changed agent rebuilds the images that carry it.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Where the guest images keep the agent, and what their init starts. */
export const GUEST_AGENT_PATH = '/.mvm/mvm-agent';

export type GuestAgentBinary = { path: string; digest: string } | { missing: string };

let cached: { key: string; value: GuestAgentBinary } | undefined;

function findScript(): string | undefined {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const p = join(dir, 'scripts', 'build-guest-agent.sh');
    if (existsSync(p)) return p;
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return undefined;
}

/**
 * The agent binary to put into images: MVM_GUEST_AGENT (a path), else the build script's output
 * (built once, then found in the cache). `missing` says why there is none; images are then built
 * without it and the service falls back to the console readiness marker for their VMs.
 */
export function guestAgentBinary(opts: { cacheDir?: string; env?: NodeJS.ProcessEnv } = {}): GuestAgentBinary {
  const env = opts.env ?? process.env;
  const key = `${env.MVM_GUEST_AGENT ?? ''}\0${opts.cacheDir ?? env.MVM_CACHE_DIR ?? ''}`;
  if (cached?.key === key) return cached.value;
  let value: GuestAgentBinary;
  let path = env.MVM_GUEST_AGENT;
  if (!path) {
    const script = findScript();
    if (!script) value = { missing: 'scripts/build-guest-agent.sh not found beside the service' };
    else {
      try {
        path = execFileSync(script, [], {
          encoding: 'utf8',
          stdio: ['ignore', 'pipe', 'pipe'],
          env: { ...env, ...(opts.cacheDir ? { MVM_CACHE_DIR: opts.cacheDir } : {}) },
          timeout: 15 * 60_000,
        })
          .trim()
          .split('\n')
          .pop();
      } catch (e) {
        const err = e as { stderr?: string; message: string };
        value = { missing: `building the guest agent failed: ${(err.stderr || err.message).trim().slice(-500)}` };
      }
    }
  }
  if (path) {
    value = existsSync(path) ? { path, digest: `sha256:${createHash('sha256').update(readFileSync(path)).digest('hex')}` } : { missing: `no guest agent binary at ${path}` };
  }
  cached = { key, value: value! };
  return value!;
}
