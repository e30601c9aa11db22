/**
 * `CniNetworkManager`, the adapter of the NetworkManager port.
 *
 * Per VM: a network namespace `<prefix><id>`; per NIC a CNI attachment (bridge +
 * host-local IPAM, `eth<i>` inside the namespace, a veth port on the bridge
 * outside), then a tap `tap<i>` in the same namespace joined to `eth<i>` with
 * tc ingress qdiscs and `mirred egress redirect` both ways (tc-redirect-tap).
 * The guest MAC is the CNI interface's MAC: we ask the bridge plugin for it (the
 * `mac` capability), a stable one derived from the VM id and NIC name unless the
 * spec gives one, so the bridge's FDB and everybody's ARP cache see the guest.
 * The VMM runs inside the namespace and opens `tap<i>` there.
 *
 * Policy: the nftables ruleset (src/network/policy.ts) is compiled from all VM
 * records plus the security-group catalogue and replaced in one transaction on
 * every change. State lives under `<dataDir>/network/`: `vms/<id>.json` (the VM
 * record, written before anything is created so a crash leaves a trail),
 * `policy.json`, and `ipam/` (host-local's allocations, which therefore survive
 * restarts and are never handed out twice).
 *
 * Host side: by default the bridge, the veth ports and the tables live in the
 * namespace the service runs in. `hostNetns` moves all of that into a named
 * namespace (tests and benchmarks keep their whole world in one); it is made
 * when missing.
 *
 * Everything host-global carries the instance's names (ADR 0027): the tables,
 * the bridges and the VM namespace prefix are given by the caller, and this
 * manager touches no table, bridge or namespace but those. `release()` (a clean
 * stop) removes the tables, and the bridges and host namespace it made, once no
 * VM of this instance has a network any more (`<dataDir>/network/made.json`
 * says what it made).
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { ErrorCodes, MvmError, asMvmError } from '../core/errors.js';
import type {
  EgressPolicy,
  NetworkManager,
  NetworkPolicy,
  NicAttachment,
  NicStats,
  PortMapping,
  VmNetworkPatch,
  VmNetworkSpec,
} from '../core/ports/network.js';
import { CniClient, DEFAULT_CNI_PATH, type CniNetworkConfList, type CniResult } from './cni.js';
import { run, runOk } from './exec.js';
import { parseCidr, parseIp } from './ipv4.js';
import { NftApplier } from './nft.js';
import {
  DEFAULT_NETWORK,
  Violations,
  compileRemoval,
  compileRuleset,
  portsCollide,
  validateEgress,
  checkNicAddress,
  validateNetworks,
  validatePolicy,
  validatePorts,
  type NetworkConfig,
  type PolicyVm,
} from './policy.js';

export const NETNS_DIR = '/var/run/netns';
const VM_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;
const MAX_NICS = 4;
const POLICY_LOCK = '\0policy';

export interface CniNetworkManagerOptions {
  /** Service data directory; state goes to `<dataDir>/network`. */
  dataDir: string;
  /** Networks VMs can attach to; the first is the default. Default: bridge fc-br0, 10.100.0.0/16, gateway 10.100.0.1. */
  networks?: NetworkConfig[];
  /** CNI plugin directories. Default /usr/lib/cni, /opt/cni/bin. */
  cniPath?: string[];
  /** Host side (bridge, veth ports, nftables) in this `ip netns` namespace instead of the service's own. */
  hostNetns?: string;
  /** Prefix of VM namespace names. Default "mvm-". Must be unique per manager instance on a host (src/instance.ts). */
  netnsPrefix?: string;
  /** Name of our nftables tables (inet, bridge, ip). Default "mvm". */
  table?: string;
  log?: Pick<Logger, 'info' | 'warn'>;
  /** Called with the duration of each setup step (netns, cni-add <nic>, tap, tc-redirect, rules) for metrics. */
  onStep?: (vm: string, step: string, ms: number) => void;
  /** Owner (user name or uid) of the tap devices, for a VMM that opens them without root. */
  tapUser?: string | number;
  /**
   * Host addresses published ports may bind to (MVM_HOST_PORT_ADDRESS); a mapping without `hostIp`
   * binds to the first. `0.0.0.0` (or absent) = every local address except loopback. A mapping
   * naming another address is refused (VALIDATION_FAILED), as the API does at admission.
   */
  hostPortAddresses?: string[];
}

interface NicRecord {
  name: string;
  network: string;
  ifName: string;
  tap: string;
  mac: string;
  ip?: string;
  prefix?: number;
  gateway?: string;
  dns: string[];
  hostVeth?: string;
  /** The conflist used for ADD (DEL and CHECK need the same), and ADD's result (their prevResult). */
  conf: CniNetworkConfList;
  result?: CniResult;
}

interface VmRecord {
  id: string;
  tenant: string;
  hostname?: string;
  phase: 'creating' | 'ready';
  netns: string;
  nics: NicRecord[];
  securityGroups: string[];
  egress?: EgressPolicy;
  ports: PortMapping[];
  createdAt: string;
}

/** Serialises async work per key. */
class KeyedMutex {
  private readonly tails = new Map<string, Promise<unknown>>();
  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    const prev = this.tails.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    this.tails.set(key, tail);
    void tail.then(() => {
      if (this.tails.get(key) === tail) this.tails.delete(key);
    });
    return next;
  }
}

export function stableMac(id: string, nic: string): string {
  const b = createHash('sha256').update(`${id}/${nic}`).digest();
  return ['02', ...[0, 1, 2, 3, 4].map((i) => b[i]!.toString(16).padStart(2, '0'))].join(':');
}

export class CniNetworkManager implements NetworkManager {
  readonly networks: NetworkConfig[];
  readonly stateDir: string;
  readonly ipamDir: string;
  readonly netnsPrefix: string;
  readonly table: string;
  private readonly vmsDir: string;
  private readonly cni: CniClient;
  private readonly nft: NftApplier;
  private readonly hostNetns: string | undefined;
  private readonly log: Pick<Logger, 'info' | 'warn'> | undefined;
  private readonly records = new Map<string, VmRecord>();
  private policy: NetworkPolicy = { securityGroups: [], tenantEgress: {} };
  private readonly locks = new KeyedMutex();
  private initDone: Promise<void> | undefined;
  private readonly bridgesPrepared = new Set<string>();
  private readonly onStep: CniNetworkManagerOptions['onStep'];
  private readonly tapUser: string | number | undefined;
  private readonly hostPortAddresses: string[] | undefined;
  /** Where a mapping without hostIp binds; undefined = every non-loopback address. */
  private readonly defaultHostIp: string | undefined;
  private readonly madeFile: string;

  constructor(o: CniNetworkManagerOptions) {
    this.networks = o.networks ?? [DEFAULT_NETWORK];
    validateNetworks(this.networks);
    this.stateDir = join(o.dataDir, 'network');
    this.vmsDir = join(this.stateDir, 'vms');
    this.ipamDir = join(this.stateDir, 'ipam');
    this.madeFile = join(this.stateDir, 'made.json');
    this.hostNetns = o.hostNetns;
    this.netnsPrefix = o.netnsPrefix ?? 'mvm-';
    this.table = o.table ?? 'mvm';
    if (!/^[A-Za-z][A-Za-z0-9_]{0,30}$/.test(this.table)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'bad table name', { violations: [{ field: 'table', message: 'must match ^[A-Za-z][A-Za-z0-9_]{0,30}$' }] });
    this.cni = new CniClient({ pluginDirs: o.cniPath ?? DEFAULT_CNI_PATH, ...(o.hostNetns ? { hostNetns: o.hostNetns } : {}) });
    this.nft = new NftApplier(o.hostNetns ? { netns: o.hostNetns } : {});
    this.log = o.log;
    this.onStep = o.onStep;
    if (o.tapUser !== undefined && !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$/.test(String(o.tapUser))) {
      throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'bad tapUser', { violations: [{ field: 'tapUser', message: 'must be a user name or uid' }] });
    }
    this.tapUser = o.tapUser;
    this.hostPortAddresses = o.hostPortAddresses?.length && !o.hostPortAddresses.includes('0.0.0.0') ? [...o.hostPortAddresses] : undefined;
    this.defaultHostIp = this.hostPortAddresses?.[0];
  }

  /** Load state and re-apply the ruleset (after a service restart or a host reboot). Called lazily by every method. */
  init(): Promise<void> {
    this.initDone ??= this.doInit().catch((e) => {
      this.initDone = undefined;
      throw e;
    });
    return this.initDone;
  }

  private async doInit(): Promise<void> {
    mkdirSync(this.vmsDir, { recursive: true });
    mkdirSync(this.ipamDir, { recursive: true });
    const pol = join(this.stateDir, 'policy.json');
    if (existsSync(pol)) this.policy = JSON.parse(readFileSync(pol, 'utf8')) as NetworkPolicy;
    for (const f of readdirSync(this.vmsDir)) {
      if (!f.endsWith('.json')) continue;
      try {
        const r = JSON.parse(readFileSync(join(this.vmsDir, f), 'utf8')) as VmRecord;
        this.records.set(r.id, r);
      } catch (e) {
        this.log?.warn({ file: f, err: (e as Error).message }, 'ignoring unreadable network record');
      }
    }
    await this.noteWhatWeMake();
    if (!existsSync('/proc/sys/net/bridge')) await run('modprobe', ['br_netfilter']).catch(() => undefined);
    if (!existsSync('/proc/sys/net/bridge')) {
      throw new MvmError(ErrorCodes.UNAVAILABLE, 'br_netfilter is not available: bridged traffic cannot be filtered (load the br_netfilter module)');
    }
    for (const n of this.networks) await this.prepareBridge(n.bridge, true);
    await this.applyRules();
  }

  private made(): { hostNetns?: string; bridges: string[] } {
    try {
      const m = JSON.parse(readFileSync(this.madeFile, 'utf8')) as { hostNetns?: string; bridges?: string[] };
      return { ...(m.hostNetns ? { hostNetns: m.hostNetns } : {}), bridges: m.bridges ?? [] };
    } catch {
      return { bridges: [] };
    }
  }

  private saveMade(m: { hostNetns?: string; bridges: string[] }): void {
    writeFileSync(`${this.madeFile}.tmp`, JSON.stringify(m) + '\n');
    renameSync(`${this.madeFile}.tmp`, this.madeFile);
  }

  /** Make the host namespace when missing, and note it and the bridges not there yet (CNI makes them): ours to remove at release. */
  private async noteWhatWeMake(): Promise<void> {
    const m = this.made();
    if (this.hostNetns && !existsSync(join(NETNS_DIR, this.hostNetns))) {
      await runOk('ip', ['netns', 'add', this.hostNetns], { what: `making the host network namespace ${this.hostNetns}` });
      await runOk('ip', ['-n', this.hostNetns, 'link', 'set', 'lo', 'up']);
      m.hostNetns = this.hostNetns;
      this.log?.info({ netns: this.hostNetns }, 'made the host network namespace');
    }
    for (const n of this.networks) {
      if (!m.bridges.includes(n.bridge) && (await run('ip', ['link', 'show', 'dev', n.bridge], this.hostOpts())).code !== 0) m.bridges.push(n.bridge);
    }
    this.saveMade(m);
  }

  /**
   * A clean stop: when no VM of ours has a network (no record, no namespace with our prefix),
   * remove our tables, the bridges we made and the host namespace we made. Returns what was
   * removed; nothing when VMs remain (they keep running and are re-adopted, ADR 0003).
   */
  async release(): Promise<string[]> {
    await this.init();
    return this.locks.run(POLICY_LOCK, async () => {
      if (this.records.size > 0 || (await this.list()).length > 0) return [];
      const removed: string[] = [];
      const m = this.made();
      if (!this.hostNetns || existsSync(join(NETNS_DIR, this.hostNetns))) {
        await this.nft.apply(compileRemoval(this.table));
        removed.push(`nftables tables inet/bridge/ip ${this.table}`);
        for (const b of m.bridges) {
          if ((await run('ip', ['link', 'del', 'dev', b], this.hostOpts())).code === 0) removed.push(`bridge ${b}`);
        }
      }
      if (m.hostNetns && existsSync(join(NETNS_DIR, m.hostNetns))) {
        await runOk('ip', ['netns', 'del', m.hostNetns]);
        removed.push(`network namespace ${m.hostNetns}`);
      }
      rmSync(this.madeFile, { force: true });
      this.bridgesPrepared.clear();
      this.initDone = undefined;
      this.log?.info({ removed }, 'released the host network objects of this instance');
      return removed;
    });
  }

  /**
   * Bridged IPv4 must traverse the inet hooks (br_netfilter); we switch that on
   * per bridge (nf_call_iptables), leaving the host-wide sysctl alone.
   */
  private async prepareBridge(bridge: string, onlyIfExists = false): Promise<void> {
    if (this.bridgesPrepared.has(bridge)) return;
    const args = ['link', 'set', 'dev', bridge, 'type', 'bridge', 'nf_call_iptables', '1'];
    const r = await run('ip', args, this.hostOpts());
    if (r.code === 0) this.bridgesPrepared.add(bridge);
    else if (!onlyIfExists) throw new MvmError(ErrorCodes.INTERNAL, `cannot enable netfilter on bridge ${bridge}: ${r.stderr.trim()}`);
  }

  private hostOpts(): { netns?: string } {
    return this.hostNetns ? { netns: this.hostNetns } : {};
  }

  netnsName(id: string): string {
    return `${this.netnsPrefix}${id}`;
  }

  private network(name: string | undefined): NetworkConfig | undefined {
    return name === undefined ? this.networks[0] : this.networks.find((n) => n.name === name);
  }

  private confList(n: NetworkConfig): CniNetworkConfList {
    const range: Record<string, string> = { subnet: n.subnet, gateway: n.gateway };
    if (n.rangeStart) range.rangeStart = n.rangeStart;
    if (n.rangeEnd) range.rangeEnd = n.rangeEnd;
    return {
      cniVersion: '1.0.0',
      name: n.name,
      plugins: [
        {
          type: 'bridge',
          bridge: n.bridge,
          isGateway: n.isGateway ?? true,
          ipMasq: n.ipMasq ?? false,
          hairpinMode: false,
          ...(n.mtu ? { mtu: n.mtu } : {}),
          capabilities: { mac: true, ips: true },
          ipam: { type: 'host-local', dataDir: this.ipamDir, ranges: [[range]] },
        },
      ],
    };
  }

  // -------------------------------------------------------------------------
  // Records

  private save(r: VmRecord): void {
    const p = join(this.vmsDir, `${r.id}.json`);
    writeFileSync(`${p}.tmp`, JSON.stringify(r, null, 2));
    renameSync(`${p}.tmp`, p);
    this.records.set(r.id, r);
  }

  private drop(id: string): void {
    rmSync(join(this.vmsDir, `${id}.json`), { force: true });
    this.records.delete(id);
  }

  private attachments(r: VmRecord): NicAttachment[] {
    return r.nics.map((n) => ({
      name: n.name,
      network: n.network,
      tap: n.tap,
      mac: n.mac,
      ip: n.ip!,
      prefix: n.prefix!,
      gateway: n.gateway!,
      dns: n.dns,
      netns: r.netns,
      netnsPath: join(NETNS_DIR, r.netns),
      hostVeth: n.hostVeth!,
    }));
  }

  /** Who holds an IP in host-local's store (its file holds "<containerId>\n<ifname>"). */
  /** The VM holding `ip` of `network` (default the first network), if any (admission refuses a taken address). */
  ipHolderOf(ip: string, network?: string): string | undefined {
    const net = this.network(network);
    return net ? this.ipHolder(net.name, ip) : undefined;
  }

  private ipHolder(network: string, ip: string): string | undefined {
    try {
      return readFileSync(join(this.ipamDir, network, ip), 'utf8').split(/\r?\n/)[0]?.trim();
    } catch {
      return undefined;
    }
  }

  // -------------------------------------------------------------------------
  // Policy

  private policyVms(records: Iterable<VmRecord>): PolicyVm[] {
    const out: PolicyVm[] = [];
    for (const r of records) {
      if (r.phase !== 'ready') continue;
      out.push({
        id: r.id,
        tenant: r.tenant,
        nics: r.nics.map((n) => ({ name: n.name, ip: n.ip!, mac: n.mac, hostVeth: n.hostVeth! })),
        securityGroups: r.securityGroups,
        ...(r.egress ? { egress: r.egress } : {}),
        ports: r.ports.map((p) => (p.hostIp || !this.defaultHostIp ? p : { ...p, hostIp: this.defaultHostIp })),
      });
    }
    return out.sort((a, b) => a.id.localeCompare(b.id));
  }

  /** The ruleset for the given state (pure; exposed for inspection and benchmarks). */
  compile(records: Iterable<VmRecord> = this.records.values(), policy: NetworkPolicy = this.policy): string {
    return compileRuleset({ table: this.table, bridges: this.networks.map((n) => n.bridge), vms: this.policyVms(records), policy });
  }

  /** Replace the whole ruleset from the given state, in one transaction. Callers hold POLICY_LOCK. */
  private applyRules(records?: Iterable<VmRecord>, policy?: NetworkPolicy): Promise<void> {
    return this.nft.apply(this.compile(records, policy));
  }

  /** Re-apply the ruleset from the recorded state (e.g. after someone flushed nftables). */
  async resync(): Promise<void> {
    await this.init();
    await this.locks.run(POLICY_LOCK, () => this.applyRules());
  }

  async getPolicy(): Promise<NetworkPolicy> {
    await this.init();
    return structuredClone(this.policy);
  }

  async applyPolicy(policy: NetworkPolicy): Promise<void> {
    await this.init();
    validatePolicy(policy);
    await this.locks.run(POLICY_LOCK, async () => {
      const v = new Violations();
      const ids = new Map(policy.securityGroups.map((g) => [g.id, g]));
      for (const r of this.records.values()) {
        r.securityGroups.forEach((g, i) => {
          const sg = ids.get(g);
          if (!sg) v.add('securityGroups', `security group ${g} is still used by VM ${r.id} (securityGroups[${i}])`);
          else if (sg.tenant !== r.tenant) v.add('securityGroups', `security group ${g} would move to tenant ${sg.tenant} but VM ${r.id} of tenant ${r.tenant} uses it`);
        });
      }
      v.throwIfAny('network policy');
      const next: NetworkPolicy = { securityGroups: structuredClone(policy.securityGroups), tenantEgress: structuredClone(policy.tenantEgress ?? {}) };
      await this.applyRules(this.records.values(), next);
      const p = join(this.stateDir, 'policy.json');
      writeFileSync(`${p}.tmp`, JSON.stringify(next, null, 2));
      renameSync(`${p}.tmp`, p);
      this.policy = next;
    });
  }

  /** Validate the policy-related fields of a VM (groups, egress, ports) against the catalogue and the other VMs. */
  private checkVmPolicy(v: Violations, id: string, tenant: string, nicNames: string[], p: { securityGroups?: string[]; egress?: EgressPolicy | null; ports?: PortMapping[] }): MvmError | undefined {
    (p.securityGroups ?? []).forEach((g, i) => {
      const sg = this.policy.securityGroups.find((x) => x.id === g);
      if (!sg) v.add(`securityGroups[${i}]`, `security group ${JSON.stringify(g)} does not exist`);
      else if (sg.tenant !== tenant) v.add(`securityGroups[${i}]`, `security group ${g} belongs to another tenant`);
    });
    if (p.egress) validateEgress(v, p.egress, 'egress');
    validatePorts(v, p.ports, nicNames, 'ports');
    const allowed = this.hostPortAddresses;
    if (allowed) {
      (p.ports ?? []).forEach((m, i) => {
        if (m.hostIp && !allowed.includes(m.hostIp)) v.add(`ports[${i}].hostIp`, `ports may only bind to ${allowed.join(', ')} (MVM_HOST_PORT_ADDRESS)`);
      });
    }
    if (!v.empty) return undefined;
    for (const [i, m] of (p.ports ?? []).entries()) {
      for (const o of this.records.values()) {
        if (o.id === id) continue;
        const hit = o.ports.find((x) => portsCollide(x, m));
        if (hit) {
          return new MvmError(ErrorCodes.CONFLICT, `host port ${m.protocol ?? 'tcp'}/${m.hostPort} is already published by VM ${o.id}`, {
            violations: [{ field: `ports[${i}].hostPort`, message: `already published by VM ${o.id}` }],
            details: { hostPort: m.hostPort, vm: o.id },
          });
        }
      }
    }
    return undefined;
  }

  async update(id: string, patch: VmNetworkPatch): Promise<void> {
    await this.init();
    await this.locks.run(id, () => this.updateLocked(id, patch));
  }

  private async updateLocked(id: string, patch: VmNetworkPatch): Promise<void> {
    const r = this.records.get(id);
    if (!r || r.phase !== 'ready') throw new MvmError(ErrorCodes.NOT_FOUND, `VM ${JSON.stringify(id)} has no network`, { details: { kind: 'network', id } });
    await this.locks.run(POLICY_LOCK, async () => {
      const v = new Violations();
      const conflict = this.checkVmPolicy(v, id, r.tenant, r.nics.map((n) => n.name), patch);
      v.throwIfAny('network settings');
      if (conflict) throw conflict;
      const next: VmRecord = { ...r };
      if (patch.securityGroups) next.securityGroups = [...patch.securityGroups];
      if (patch.egress === null) delete next.egress;
      else if (patch.egress) next.egress = structuredClone(patch.egress);
      if (patch.ports) next.ports = structuredClone(patch.ports);
      const all = new Map(this.records);
      all.set(id, next);
      await this.applyRules(all.values());
      this.save(next);
    });
  }

  // -------------------------------------------------------------------------
  // Setup

  private validateSpec(vm: VmNetworkSpec): { v: Violations; conflict?: MvmError } {
    const v = new Violations();
    if (typeof vm?.id !== 'string' || !VM_ID.test(vm.id)) v.add('id', 'must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$');
    if (typeof vm?.tenant !== 'string' || vm.tenant.length === 0 || vm.tenant.length > 253) v.add('tenant', 'required (1-253 characters)');
    if (vm.hostname !== undefined && !/^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/.test(vm.hostname)) v.add('hostname', 'must be a DNS label');
    if (!Array.isArray(vm?.nics)) {
      v.add('nics', 'must be an array');
      return { v };
    }
    if (vm.nics.length > MAX_NICS) v.add('nics', `at most ${MAX_NICS} interfaces`);
    const names = new Set<string>();
    const wanted = new Map<string, string>();
    vm.nics.forEach((n, i) => {
      const f = `nics[${i}]`;
      if (typeof n.name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9_-]{0,14}$/.test(n.name)) v.add(`${f}.name`, 'must be an interface name of at most 15 characters');
      else if (names.has(n.name)) v.add(`${f}.name`, `duplicate interface name ${n.name}`);
      names.add(n.name);
      const net = this.network(n.network);
      if (!net) {
        v.add(`${f}.network`, `unknown network ${JSON.stringify(n.network)} (have ${this.networks.map((x) => x.name).join(', ')})`);
        return;
      }
      checkNicAddress(v, f, n, net, wanted);
    });
    const conflict = v.empty ? this.checkVmPolicy(v, vm.id, vm.tenant, vm.nics.map((n) => n.name), vm) : undefined;
    if (!v.empty || conflict) return { v, ...(conflict ? { conflict } : {}) };
    for (const [key, f] of wanted) {
      const [net, ip] = key.split('/') as [string, string];
      const holder = this.ipHolder(net, ip);
      if (holder && holder !== vm.id) {
        return { v, conflict: new MvmError(ErrorCodes.CONFLICT, `IP ${ip} is already allocated`, { violations: [{ field: `${f}.ip`, message: `already allocated to ${holder}` }] }) };
      }
    }
    return { v };
  }

  /** Everything exists as recorded: namespace, CNI interfaces, taps. */
  private async healthy(r: VmRecord): Promise<boolean> {
    if (r.phase !== 'ready' || !existsSync(join(NETNS_DIR, r.netns))) return false;
    const res = await run('ip', ['-n', r.netns, '-j', 'link', 'show']);
    if (res.code !== 0) return false;
    const names = new Set((JSON.parse(res.stdout || '[]') as Array<{ ifname: string }>).map((l) => l.ifname));
    return r.nics.every((n) => names.has(n.tap) && names.has(n.ifName));
  }

  async setup(vm: VmNetworkSpec): Promise<NicAttachment[]> {
    await this.init();
    const { v, conflict } = this.validateSpec(vm);
    v.throwIfAny('network request');
    if (conflict) throw conflict;
    return this.locks.run(vm.id, async () => {
      const existing = this.records.get(vm.id);
      const keep = new Map<string, { network: string; ip?: string; mac: string }>();
      if (existing) {
        const same =
          existing.tenant === vm.tenant &&
          existing.nics.length === vm.nics.length &&
          vm.nics.every((n, i) => {
            const e = existing.nics[i]!;
            return e.name === n.name && e.network === this.network(n.network)!.name && (!n.ip || n.ip === e.ip) && (!n.mac || n.mac.toLowerCase() === e.mac);
          });
        if (same && (await this.healthy(existing))) {
          await this.updateLocked(vm.id, { securityGroups: vm.securityGroups ?? [], egress: vm.egress ?? null, ports: vm.ports ?? [] });
          return this.attachments(this.records.get(vm.id)!);
        }
        // Broken (e.g. after a host reboot) or changed: rebuild, keeping IPs and MACs of the NICs that stay.
        if (existing.tenant === vm.tenant) for (const n of existing.nics) keep.set(n.name, { network: n.network, ...(n.ip ? { ip: n.ip } : {}), mac: n.mac });
        this.log?.info({ vm: vm.id, same }, 'rebuilding VM network');
        await this.teardownLocked(vm.id);
      }
      if (vm.nics.length === 0) return [];
      return this.create(vm, keep);
    });
  }

  private async create(vm: VmNetworkSpec, keep: Map<string, { network: string; ip?: string; mac: string }>): Promise<NicAttachment[]> {
    const netns = this.netnsName(vm.id);
    const rec: VmRecord = {
      id: vm.id,
      tenant: vm.tenant,
      ...(vm.hostname ? { hostname: vm.hostname } : {}),
      phase: 'creating',
      netns,
      nics: vm.nics.map((n, i) => {
        const net = this.network(n.network)!;
        const kept = keep.get(n.name);
        const ip = n.ip ?? (kept?.network === net.name ? kept.ip : undefined);
        return {
          name: n.name,
          network: net.name,
          ifName: `eth${i}`,
          tap: `tap${i}`,
          mac: (n.mac ?? kept?.mac ?? stableMac(vm.id, n.name)).toLowerCase(),
          ...(ip ? { ip } : {}),
          dns: net.dns ?? [],
          conf: this.confList(net),
        };
      }),
      securityGroups: [...(vm.securityGroups ?? [])],
      ...(vm.egress ? { egress: structuredClone(vm.egress) } : {}),
      ports: structuredClone(vm.ports ?? []),
      createdAt: new Date().toISOString(),
    };
    let step = 'record';
    let t = performance.now();
    const mark = (next: string): void => {
      const now = performance.now();
      this.onStep?.(vm.id, step, now - t);
      t = now;
      step = next;
    };
    try {
      this.save(rec);
      mark('netns');
      if (!existsSync(join(NETNS_DIR, netns))) await runOk('ip', ['netns', 'add', netns]);
      for (const n of rec.nics) {
        mark(`cni-add ${n.name}`);
        const net = this.network(n.network)!;
        const prefix = parseCidr(net.subnet)!.prefix;
        const result = await this.cni.add(n.conf, {
          containerId: vm.id,
          netns: join(NETNS_DIR, netns),
          ifName: n.ifName,
          capabilityArgs: { mac: n.mac, ...(n.ip ? { ips: [`${n.ip}/${prefix}`] } : {}) },
        });
        n.result = result;
        const ifaces = result.interfaces ?? [];
        const inner = ifaces.findIndex((i) => i.sandbox && i.name === n.ifName);
        const ipc = (result.ips ?? []).find((x) => x.interface === inner) ?? result.ips?.[0];
        const host = ifaces.find((i) => !i.sandbox && i.name !== net.bridge);
        if (!ipc || !host) throw new MvmError(ErrorCodes.INTERNAL, `CNI result lacks ${ipc ? 'the host veth' : 'an IP'}: ${JSON.stringify(result)}`);
        const [addr, pfx] = ipc.address.split('/');
        n.ip = addr!;
        n.prefix = Number(pfx);
        n.gateway = ipc.gateway ?? net.gateway;
        n.hostVeth = host.name;
        const mac = ifaces[inner]?.mac?.toLowerCase();
        if (mac && mac !== n.mac) throw new MvmError(ErrorCodes.INTERNAL, `CNI gave ${n.ifName} MAC ${mac}, asked for ${n.mac} (bridge plugin without the mac capability?)`);
        this.save(rec);
        await this.prepareBridge(net.bridge);
      }
      mark('tap');
      const ipBatch: string[] = ['link set dev lo up'];
      const tcBatch: string[] = [];
      for (const n of rec.nics) {
        const mtu = this.network(n.network)!.mtu;
        ipBatch.push(`tuntap add dev ${n.tap} mode tap${this.tapUser !== undefined ? ` user ${this.tapUser}` : ''}`, `link set dev ${n.tap}${mtu ? ` mtu ${mtu}` : ''} up`);
        tcBatch.push(
          `qdisc add dev ${n.ifName} ingress`,
          `filter add dev ${n.ifName} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev ${n.tap}`,
          `qdisc add dev ${n.tap} ingress`,
          `filter add dev ${n.tap} parent ffff: protocol all u32 match u8 0 0 action mirred egress redirect dev ${n.ifName}`,
        );
      }
      await runOk('ip', ['-n', netns, '-batch', '-'], { input: ipBatch.join('\n') + '\n', what: 'tap creation' });
      mark('tc-redirect');
      await runOk('tc', ['-n', netns, '-batch', '-'], { input: tcBatch.join('\n') + '\n', what: 'tc redirect' });
      mark('rules');
      const ready: VmRecord = { ...rec, phase: 'ready' };
      await this.locks.run(POLICY_LOCK, async () => {
        // Re-check against the catalogue and the other VMs as they are now (they may have changed meanwhile).
        const v = new Violations();
        const conflict = this.checkVmPolicy(v, vm.id, vm.tenant, vm.nics.map((n) => n.name), vm);
        v.throwIfAny('network request');
        if (conflict) throw conflict;
        const all = new Map(this.records);
        all.set(vm.id, ready);
        await this.applyRules(all.values());
        this.save(ready);
      });
      mark('done');
      return this.attachments(ready);
    } catch (e) {
      const err = asMvmError(e);
      this.log?.warn({ vm: vm.id, step, err: err.message }, 'network setup failed, rolling back');
      await this.teardownLocked(vm.id).catch((te) => this.log?.warn({ vm: vm.id, err: (te as Error).message }, 'rollback incomplete'));
      throw new MvmError(err.code, `network setup step ${step}: ${err.message}`, { cause: e, violations: err.violations, details: { ...err.details, step } });
    }
  }

  async get(id: string): Promise<NicAttachment[] | undefined> {
    await this.init();
    const r = this.records.get(id);
    return r?.phase === 'ready' ? this.attachments(r) : undefined;
  }

  // -------------------------------------------------------------------------
  // Teardown and reconcile

  async teardown(id: string): Promise<void> {
    await this.init();
    if (typeof id !== 'string' || !VM_ID.test(id)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'bad VM id', { violations: [{ field: 'id', message: 'invalid VM id' }] });
    await this.locks.run(id, () => this.teardownLocked(id));
  }

  private async teardownLocked(id: string): Promise<void> {
    const r = this.records.get(id);
    const netns = r?.netns ?? this.netnsName(id);
    const netnsPath = join(NETNS_DIR, netns);
    // 1. Rules and published ports go first: nothing reaches a half-removed VM. The record leaves the
    //    ruleset (phase creating) and the rules are compiled from the records as they are under the
    //    lock: a snapshot taken before it would put back a VM another teardown removed meanwhile.
    if (r) {
      await this.locks.run(POLICY_LOCK, async () => {
        if (r.phase === 'ready') this.save({ ...r, phase: 'creating' });
        await this.applyRules(this.records.values());
      });
    }
    // 2. CNI DEL (veth, host-local release, and whatever else a plugin keeps, e.g. ipMasq rules).
    //    Without a record (crash before it was written): every network and ifname, if anything is left at all.
    const held = this.ipamEntries().some((e) => e.holder === id);
    const dels: Array<{ conf: CniNetworkConfList; ifName: string; result?: CniResult }> = r
      ? [...r.nics].reverse().map((n) => ({ conf: n.conf, ifName: n.ifName, ...(n.result ? { result: n.result } : {}) }))
      : existsSync(netnsPath) || held
        ? this.networks.flatMap((net) => Array.from({ length: MAX_NICS }, (_, i) => ({ conf: this.confList(net), ifName: `eth${i}` })))
        : [];
    let delFailed = false;
    for (const d of dels) {
      try {
        await this.cni.del(d.conf, { containerId: id, netns: existsSync(netnsPath) ? netnsPath : '', ifName: d.ifName }, d.result);
      } catch (e) {
        delFailed = true;
        this.log?.warn({ vm: id, ifName: d.ifName, err: (e as Error).message }, 'CNI DEL failed; removing the namespace and allocations directly');
      }
    }
    // 3. The namespace (and with it the taps and the veth pairs).
    if (existsSync(netnsPath)) {
      const res = await run('ip', ['netns', 'del', netns]);
      if (res.code !== 0 && existsSync(netnsPath)) throw new MvmError(ErrorCodes.INTERNAL, `cannot delete namespace ${netns}: ${res.stderr.trim()}`);
    }
    // 4. Host veths a failed DEL may have left (a veth pair normally dies with its namespace end).
    if (delFailed) for (const n of r?.nics ?? []) if (n.hostVeth) await run('ip', ['link', 'del', n.hostVeth], this.hostOpts());
    // 5. Any allocation still held by this id.
    this.sweepIpam(id);
    this.drop(id);
  }

  private ipamEntries(): Array<{ network: string; ip: string; holder: string }> {
    const out: Array<{ network: string; ip: string; holder: string }> = [];
    if (!existsSync(this.ipamDir)) return out;
    for (const net of readdirSync(this.ipamDir)) {
      const dir = join(this.ipamDir, net);
      let files: string[];
      try {
        files = readdirSync(dir);
      } catch {
        continue;
      }
      for (const f of files) {
        if (parseIp(f) === undefined) continue;
        const holder = this.ipHolder(net, f);
        if (holder) out.push({ network: net, ip: f, holder });
      }
    }
    return out;
  }

  private sweepIpam(id: string): void {
    for (const e of this.ipamEntries()) if (e.holder === id) rmSync(join(this.ipamDir, e.network, e.ip), { force: true });
  }

  async list(): Promise<string[]> {
    await this.init();
    const ids = new Set(this.records.keys());
    if (existsSync(NETNS_DIR)) {
      for (const n of readdirSync(NETNS_DIR)) if (n.startsWith(this.netnsPrefix) && n.length > this.netnsPrefix.length) ids.add(n.slice(this.netnsPrefix.length));
    }
    for (const e of this.ipamEntries()) ids.add(e.holder);
    return [...ids].sort();
  }

  async stats(id: string): Promise<NicStats[]> {
    await this.init();
    const r = this.records.get(id);
    if (!r || r.phase !== 'ready') return [];
    const res = await run('ip', ['-n', r.netns, '-j', '-s', 'link', 'show']);
    if (res.code !== 0) return [];
    type L = { ifname: string; stats64?: { rx: { bytes: number; packets: number }; tx: { bytes: number; packets: number } } };
    const links = JSON.parse(res.stdout || '[]') as L[];
    return r.nics.flatMap((n) => {
      const s = links.find((l) => l.ifname === n.tap)?.stats64;
      // The tap transmits to the guest: guest rx = tap tx.
      return s ? [{ device: n.tap, rxBytes: s.tx.bytes, txBytes: s.rx.bytes, rxPackets: s.tx.packets, txPackets: s.rx.packets }] : [];
    });
  }

  /** CNI CHECK of every NIC of a VM (throws the plugin's typed error when something drifted). */
  async check(id: string): Promise<void> {
    await this.init();
    const r = this.records.get(id);
    if (!r || r.phase !== 'ready') throw new MvmError(ErrorCodes.NOT_FOUND, `VM ${id} has no network`);
    for (const n of r.nics) await this.cni.check(n.conf, { containerId: id, netns: join(NETNS_DIR, r.netns), ifName: n.ifName }, n.result!);
  }
}
