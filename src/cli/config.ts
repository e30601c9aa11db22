/** Resolution of the server URL and the token: flag, environment, config file, local admin token. */
import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';

export const DEFAULT_SERVER = 'http://127.0.0.1:8080';

export interface FileConfig {
  server?: string;
  token?: string;
  /** CA certificate file (PEM) trusted for an https:// server. */
  ca?: string;
}

export interface ResolvedConfig {
  server: string;
  token: string | undefined;
  /** Where the token came from (never the token itself). */
  tokenSource: 'flag' | 'env' | 'config' | 'admin-token-file' | 'none';
  configPath: string;
  adminTokenPath: string;
  /** CA file to trust for https (--ca, MVM_CA_CERT, config `ca`). */
  caFile?: string;
  /** Set when the admin token file exists but could not be read (e.g. EACCES). */
  adminTokenError?: string;
}

export class ConfigError extends Error {
  override name = 'ConfigError';
}

type Env = Record<string, string | undefined>;

export function defaultConfigPath(env: Env = process.env): string {
  const base = env.XDG_CONFIG_HOME || join(env.HOME || homedir(), '.config');
  return join(base, 'mvm', 'config.yaml');
}

export function adminTokenPath(env: Env = process.env): string {
  return join(env.MVM_DATA_DIR || '/var/lib/mvm', 'admin.token');
}

/** Whether the URL designates this host by a loopback name/address (decided from the URL alone, no DNS). */
export function isLocalServer(url: string): boolean {
  let host: string;
  try {
    host = new URL(url).hostname.toLowerCase();
  } catch {
    return false;
  }
  if (host.startsWith('[') && host.endsWith(']')) host = host.slice(1, -1);
  if (host === 'localhost' || host.endsWith('.localhost')) return true;
  if (host === '::1' || host === '0:0:0:0:0:0:0:1') return true;
  if (/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)) return true;
  if (host === '::ffff:127.0.0.1' || host === '::ffff:7f00:1') return true;
  return false;
}

export function loadConfigFile(path: string, explicit: boolean): FileConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (!explicit && code === 'ENOENT') return {};
    throw new ConfigError(`cannot read config file ${path}: ${code ?? (e as Error).message}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text);
  } catch (e) {
    throw new ConfigError(`invalid config file ${path}: ${(e as Error).message.split('\n')[0]}`);
  }
  if (doc === null || doc === undefined) return {};
  if (typeof doc !== 'object' || Array.isArray(doc)) throw new ConfigError(`invalid config file ${path}: expected a mapping with keys server, token, ca`);
  const o = doc as Record<string, unknown>;
  const out: FileConfig = {};
  for (const k of ['server', 'token', 'ca'] as const) {
    const v = o[k];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') throw new ConfigError(`invalid config file ${path}: "${k}" must be a string`);
    out[k] = v;
  }
  return out;
}

export function resolveConfig(flags: { server?: string; token?: string; config?: string; ca?: string }, env: Env = process.env): ResolvedConfig {
  const configPath = flags.config || defaultConfigPath(env);
  const file = loadConfigFile(configPath, Boolean(flags.config));
  const server = (flags.server || env.MVM_SERVER || file.server || DEFAULT_SERVER).trim();
  try {
    const u = new URL(server);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('protocol');
  } catch {
    throw new ConfigError(`invalid server URL ${JSON.stringify(server)} (expected e.g. http://127.0.0.1:8080)`);
  }
  const tokPath = adminTokenPath(env);
  const caFile = flags.ca || env.MVM_CA_CERT || file.ca;
  const base: Omit<ResolvedConfig, 'token' | 'tokenSource'> = { server, configPath, adminTokenPath: tokPath, ...(caFile ? { caFile } : {}) };
  if (flags.token) return { ...base, token: flags.token.trim(), tokenSource: 'flag' };
  if (env.MVM_TOKEN) return { ...base, token: env.MVM_TOKEN.trim(), tokenSource: 'env' };
  if (file.token) return { ...base, token: file.token.trim(), tokenSource: 'config' };
  if (isLocalServer(server)) {
    try {
      const t = readFileSync(tokPath, 'utf8').trim();
      if (t) return { ...base, token: t, tokenSource: 'admin-token-file' };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'ENOENT') return { ...base, token: undefined, tokenSource: 'none', adminTokenError: code ?? 'unreadable' };
    }
  }
  return { ...base, token: undefined, tokenSource: 'none' };
}
