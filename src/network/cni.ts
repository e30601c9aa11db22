/**
 * A small CNI client (CNI spec 1.0.0): executes plugin binaries found on a path
 * list with CNI_COMMAND=ADD/CHECK/DEL, network configuration lists with
 * prevResult chaining and capability (runtimeConfig) injection as libcni does,
 * and turns plugin error JSON into typed errors.
 *
 * There is no maintained CNI library on npm; this mirrors libcni's
 * AddNetworkList/CheckNetworkList/DelNetworkList.
 */
import { accessSync, constants } from 'node:fs';
import { join } from 'node:path';
import { ErrorCodes, MvmError, type ErrorCode } from '../core/errors.js';
import { run } from './exec.js';

export const DEFAULT_CNI_PATH = ['/usr/lib/cni', '/opt/cni/bin'];

export interface CniPluginConf {
  type: string;
  capabilities?: Record<string, boolean>;
  [key: string]: unknown;
}

export interface CniNetworkConfList {
  cniVersion: string;
  name: string;
  plugins: CniPluginConf[];
  disableCheck?: boolean;
}

export interface CniRuntimeConf {
  containerId: string;
  /** Path of the network namespace, e.g. /var/run/netns/mvm-vm-1. */
  netns: string;
  ifName: string;
  /** CNI_ARGS key/value pairs. */
  args?: Array<[string, string]>;
  /** Values for plugin capabilities (e.g. { mac: "02:..", ips: ["10.0.0.5/24"], portMappings: [...] }). */
  capabilityArgs?: Record<string, unknown>;
}

export interface CniInterface {
  name: string;
  mac?: string;
  mtu?: number;
  sandbox?: string;
}

export interface CniIpConfig {
  address: string;
  gateway?: string;
  interface?: number;
}

export interface CniResult {
  cniVersion: string;
  interfaces?: CniInterface[];
  ips?: CniIpConfig[];
  routes?: Array<{ dst: string; gw?: string }>;
  dns?: { nameservers?: string[]; domain?: string; search?: string[]; options?: string[] };
  [key: string]: unknown;
}

/** Well-known CNI error codes (spec "Error" section). */
export const CniErrorCodes = {
  INCOMPATIBLE_VERSION: 1,
  UNSUPPORTED_FIELD: 2,
  CONTAINER_UNKNOWN: 3,
  INVALID_ENV: 4,
  IO_FAILURE: 5,
  DECODE_FAILURE: 6,
  INVALID_CONFIG: 7,
  TRY_AGAIN_LATER: 11,
} as const;

export class CniError extends MvmError {
  /** CNI error code from the plugin (0 when the plugin gave none). */
  readonly cniCode: number;
  readonly cniMsg: string;
  readonly cniDetails: string;
  readonly plugin: string;
  readonly command: string;

  constructor(o: { command: string; plugin: string; cniCode: number; msg: string; details?: string; stderr?: string }) {
    const code: ErrorCode =
      o.cniCode === CniErrorCodes.TRY_AGAIN_LATER ? ErrorCodes.UNAVAILABLE : o.cniCode === CniErrorCodes.CONTAINER_UNKNOWN ? ErrorCodes.NOT_FOUND : ErrorCodes.INTERNAL;
    super(code, `CNI ${o.command} ${o.plugin}: ${o.msg}${o.details ? ` (${o.details})` : ''}`, {
      details: { cniCode: o.cniCode, cniMsg: o.msg, cniDetails: o.details ?? '', plugin: o.plugin, command: o.command, ...(o.stderr ? { stderr: o.stderr } : {}) },
    });
    this.name = 'CniError';
    this.cniCode = o.cniCode;
    this.cniMsg = o.msg;
    this.cniDetails = o.details ?? '';
    this.plugin = o.plugin;
    this.command = o.command;
  }
}

export interface CniClientOptions {
  /** Directories searched for plugin binaries, in order (also passed as CNI_PATH). */
  pluginDirs?: string[];
  /** Run plugins inside this `ip netns` namespace (the "host" side of the network). */
  hostNetns?: string;
  timeoutMs?: number;
}

type Command = 'ADD' | 'CHECK' | 'DEL' | 'VERSION';

export class CniClient {
  readonly pluginDirs: string[];
  private readonly hostNetns: string | undefined;
  private readonly timeoutMs: number;
  private readonly found = new Map<string, string>();

  constructor(o: CniClientOptions = {}) {
    this.pluginDirs = o.pluginDirs ?? DEFAULT_CNI_PATH;
    this.hostNetns = o.hostNetns;
    this.timeoutMs = o.timeoutMs ?? 30_000;
  }

  /** Absolute path of a plugin binary, or a CniError naming the directories searched. */
  findPlugin(type: string): string {
    const hit = this.found.get(type);
    if (hit) return hit;
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(type)) {
      throw new CniError({ command: 'FIND', plugin: type, cniCode: CniErrorCodes.INVALID_CONFIG, msg: 'invalid plugin type' });
    }
    for (const d of this.pluginDirs) {
      const p = join(d, type);
      try {
        accessSync(p, constants.X_OK);
        this.found.set(type, p);
        return p;
      } catch {
        /* next */
      }
    }
    throw new CniError({ command: 'FIND', plugin: type, cniCode: CniErrorCodes.INVALID_CONFIG, msg: `plugin not found in ${this.pluginDirs.join(':')}` });
  }

  /** ADD every plugin of the list in order, each given the previous one's result. */
  async add(list: CniNetworkConfList, rt: CniRuntimeConf): Promise<CniResult> {
    let prev: CniResult | undefined;
    for (const p of list.plugins) {
      const out = await this.exec('ADD', list, p, rt, prev);
      prev = parseResult(out, p.type);
    }
    if (!prev) throw new CniError({ command: 'ADD', plugin: list.name, cniCode: CniErrorCodes.INVALID_CONFIG, msg: 'network list has no plugins' });
    return prev;
  }

  /** CHECK every plugin in order against the cached ADD result. */
  async check(list: CniNetworkConfList, rt: CniRuntimeConf, prevResult: CniResult): Promise<void> {
    if (list.disableCheck) return;
    for (const p of list.plugins) await this.exec('CHECK', list, p, rt, prevResult);
  }

  /**
   * DEL every plugin in reverse order. Plugins must treat missing resources as
   * success (spec), so repeating a DEL is harmless; a DEL whose netns is already
   * gone is passed on as such (the plugins clean their host side and IPAM).
   */
  async del(list: CniNetworkConfList, rt: CniRuntimeConf, prevResult?: CniResult): Promise<void> {
    for (const p of [...list.plugins].reverse()) await this.exec('DEL', list, p, rt, prevResult);
  }

  async version(type: string): Promise<{ cniVersion: string; supportedVersions: string[] }> {
    const out = await this.exec('VERSION', { cniVersion: '1.0.0', name: 'version', plugins: [] }, { type }, { containerId: '', netns: '', ifName: '' }, undefined);
    return JSON.parse(out) as { cniVersion: string; supportedVersions: string[] };
  }

  /** The exact JSON a plugin gets on stdin (exported for tests and debugging). */
  static pluginConfig(list: CniNetworkConfList, p: CniPluginConf, rt: CniRuntimeConf, prevResult?: CniResult): Record<string, unknown> {
    const conf: Record<string, unknown> = { ...p, cniVersion: list.cniVersion, name: list.name };
    const runtimeConfig: Record<string, unknown> = {};
    for (const [cap, on] of Object.entries(p.capabilities ?? {})) {
      if (on && rt.capabilityArgs && cap in rt.capabilityArgs) runtimeConfig[cap] = rt.capabilityArgs[cap];
    }
    if (Object.keys(runtimeConfig).length) conf.runtimeConfig = runtimeConfig;
    else delete conf.runtimeConfig;
    if (prevResult) conf.prevResult = prevResult;
    return conf;
  }

  private async exec(cmd: Command, list: CniNetworkConfList, p: CniPluginConf, rt: CniRuntimeConf, prev: CniResult | undefined): Promise<string> {
    const bin = this.findPlugin(p.type);
    const env: NodeJS.ProcessEnv = {
      PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
      CNI_COMMAND: cmd,
      CNI_CONTAINERID: rt.containerId,
      CNI_NETNS: rt.netns,
      CNI_IFNAME: rt.ifName,
      CNI_PATH: this.pluginDirs.join(':'),
    };
    if (rt.args?.length) env.CNI_ARGS = rt.args.map(([k, v]) => `${k}=${v}`).join(';');
    const input = cmd === 'VERSION' ? JSON.stringify({ cniVersion: list.cniVersion }) : JSON.stringify(CniClient.pluginConfig(list, p, rt, prev));
    const r = await run(bin, [], { input, env, timeoutMs: this.timeoutMs, ...(this.hostNetns ? { netns: this.hostNetns } : {}) });
    if (r.code === 0) return r.stdout;
    if (r.signal) {
      throw new CniError({ command: cmd, plugin: p.type, cniCode: CniErrorCodes.TRY_AGAIN_LATER, msg: `plugin killed by ${r.signal} (timeout ${this.timeoutMs} ms?)`, stderr: r.stderr.trim() });
    }
    throw parseError(cmd, p.type, r.stdout, r.stderr);
  }
}

function parseResult(out: string, plugin: string): CniResult {
  try {
    const r = JSON.parse(out) as CniResult;
    if (typeof r !== 'object' || r === null) throw new Error('not an object');
    return r;
  } catch (e) {
    throw new CniError({ command: 'ADD', plugin, cniCode: CniErrorCodes.DECODE_FAILURE, msg: `cannot parse plugin result: ${(e as Error).message}`, details: out.slice(0, 200) });
  }
}

function parseError(cmd: string, plugin: string, stdout: string, stderr: string): CniError {
  try {
    const e = JSON.parse(stdout) as { code?: number; msg?: string; details?: string };
    if (typeof e.code === 'number' || typeof e.msg === 'string') {
      return new CniError({ command: cmd, plugin, cniCode: e.code ?? 0, msg: e.msg ?? 'unknown error', ...(e.details ? { details: e.details } : {}), stderr: stderr.trim() });
    }
  } catch {
    /* not JSON */
  }
  return new CniError({ command: cmd, plugin, cniCode: 0, msg: (stderr || stdout).trim() || 'plugin failed without output' });
}
