/**
 * Validation of network input and the pure compiler from (networks, VMs, security
 * groups, tenant egress) to one nftables ruleset text that replaces our three
 * tables in a single `nft -f` transaction.
 *
 * Tables (per node, per network namespace that hosts the bridges):
 * - `table bridge <name>`: stateless anti-spoofing on each VM's bridge port
 *   (source MAC, source IPv4, ARP sender; only IPv4 and ARP in or out of a VM
 *   port). It makes the IP-keyed rules below trustworthy.
 * - `table inet <name>`: the stateful policy. With br_netfilter
 *   (net.bridge.bridge-nf-call-iptables=1) bridged VM-to-VM IPv4 traffic passes
 *   the inet forward hook, so one place filters VM<->VM, VM<->host and
 *   VM<->outside. Each VM has an `_out` chain (its egress, entered by source
 *   address) and an `_in` chain (its ingress, entered by destination address);
 *   a packet between two VMs walks the sender's `_out` then the receiver's `_in`.
 *   (A bridge-family stateful filter would need nf_conntrack_bridge, which not
 *   every kernel has; this one has not.)
 * - `table ip <name>`: DNAT of published host ports to guest ports.
 */
import { createHash } from 'node:crypto';
import { ErrorCodes, MvmError, type FieldViolation } from '../core/errors.js';
import type { EgressPolicy, NetworkPolicy, PortMapping, SecurityGroup, SecurityRule } from '../core/ports/network.js';
import { broadcast, cidrContains, cidrsOverlap, parseCidr, parseIp, type Cidr } from './ipv4.js';

export interface NetworkConfig {
  /** Name of the network (CNI network name, IPAM directory); ^[a-z0-9][a-z0-9_.-]{0,62}$ */
  name: string;
  /** Linux bridge (≤15 characters). */
  bridge: string;
  subnet: string;
  gateway: string;
  /** Limit host-local allocation to this range (inclusive). */
  rangeStart?: string;
  rangeEnd?: string;
  dns?: string[];
  mtu?: number;
  /** The bridge holds the gateway address (CNI isGateway). Default true. */
  isGateway?: boolean;
  /**
   * Masquerade guest traffic leaving the host (CNI ipMasq). Default false: an
   * operator must opt in; nothing is NATed off the host otherwise.
   */
  ipMasq?: boolean;
}

export const DEFAULT_NETWORK: NetworkConfig = { name: 'mvm', bridge: 'fc-br0', subnet: '10.100.0.0/16', gateway: '10.100.0.1' };

export const ID_PATTERN = /^[a-z0-9][a-z0-9_.-]{0,62}$/;
const IFNAME_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/;
const MAC_PATTERN = /^([0-9a-f]{2}:){5}[0-9a-f]{2}$/;
const PROTOCOLS = ['tcp', 'udp', 'icmp', 'any'] as const;

export class Violations {
  readonly list: FieldViolation[] = [];
  /** How many of them break a rule the published schema cannot state (a relation between fields, the node's network). */
  private semantic = 0;
  add(field: string, message: string): void {
    this.list.push({ field, message });
  }
  /** A violation of a rule beyond the schema: when every violation is one, the answer is 422 UNPROCESSABLE, else 400. */
  addRule(field: string, message: string): void {
    this.list.push({ field, message });
    this.semantic++;
  }
  get empty(): boolean {
    return this.list.length === 0;
  }
  throwIfAny(what: string): void {
    if (this.list.length) {
      const first = this.list[0]!;
      throw new MvmError(this.semantic === this.list.length ? ErrorCodes.UNPROCESSABLE : ErrorCodes.VALIDATION_FAILED, `invalid ${what}: ${first.field}: ${first.message}${this.list.length > 1 ? ` (and ${this.list.length - 1} more)` : ''}`, {
        violations: this.list,
      });
    }
  }
}

// ---------------------------------------------------------------------------
// Validation

export function validateNetworks(networks: NetworkConfig[], field = 'networks'): void {
  const v = new Violations();
  if (!Array.isArray(networks) || networks.length === 0) v.add(field, 'at least one network is required');
  const names = new Set<string>();
  const bridges = new Set<string>();
  const subnets: Array<{ c: Cidr; i: number }> = [];
  (networks ?? []).forEach((n, i) => {
    const f = `${field}[${i}]`;
    if (!ID_PATTERN.test(n.name ?? '')) v.add(`${f}.name`, 'must match ^[a-z0-9][a-z0-9_.-]{0,62}$');
    else if (names.has(n.name)) v.add(`${f}.name`, `duplicate network ${n.name}`);
    names.add(n.name);
    if (!IFNAME_PATTERN.test(n.bridge ?? '')) v.add(`${f}.bridge`, 'must be a Linux interface name of at most 15 characters');
    else if (bridges.has(n.bridge)) v.add(`${f}.bridge`, `bridge ${n.bridge} used by two networks`);
    bridges.add(n.bridge);
    const c = parseCidr(n.subnet, { strict: true });
    if (!c) {
      v.add(`${f}.subnet`, `not an IPv4 network in CIDR form (host bits clear): ${JSON.stringify(n.subnet)}`);
      return;
    }
    if (c.prefix > 30 || c.prefix < 8) v.add(`${f}.subnet`, 'prefix length must be between /8 and /30');
    for (const o of subnets) if (cidrsOverlap(o.c, c)) v.add(`${f}.subnet`, `overlaps ${field}[${o.i}].subnet ${o.c.text}`);
    subnets.push({ c, i });
    const inHostRange = (s: string | undefined, sub: string): void => {
      if (s === undefined) return;
      const ip = parseIp(s);
      if (ip === undefined) v.add(`${f}.${sub}`, `not an IPv4 address: ${JSON.stringify(s)}`);
      else if (!cidrContains(c, ip) || ip === c.base || ip === broadcast(c)) v.add(`${f}.${sub}`, `must be a host address inside ${c.text}`);
    };
    inHostRange(n.gateway, 'gateway');
    if (n.gateway === undefined) v.add(`${f}.gateway`, 'required');
    inHostRange(n.rangeStart, 'rangeStart');
    inHostRange(n.rangeEnd, 'rangeEnd');
    if (n.rangeStart && n.rangeEnd && (parseIp(n.rangeStart) ?? 0) > (parseIp(n.rangeEnd) ?? 0)) v.add(`${f}.rangeEnd`, 'must not be below rangeStart');
    (n.dns ?? []).forEach((d, j) => {
      if (parseIp(d) === undefined) v.add(`${f}.dns[${j}]`, `not an IPv4 address: ${JSON.stringify(d)}`);
    });
    if (n.mtu !== undefined && (!Number.isInteger(n.mtu) || n.mtu < 576 || n.mtu > 65535)) v.add(`${f}.mtu`, 'must be an integer between 576 and 65535');
  });
  v.throwIfAny('network configuration');
}

/**
 * One NIC's MAC and requested address, as the network step checks them when the VM starts and as
 * admission checks them when it is created (src/network/admission.ts): a unicast MAC; an IPv4
 * address inside the network's subnet other than its network, broadcast and gateway addresses,
 * requested once (`wanted`: `<network>/<ip>` → field, across the VM's NICs).
 */
export function checkNicAddress(v: Violations, f: string, n: { mac?: string; ip?: string }, net: NetworkConfig | undefined, wanted: Map<string, string>): void {
  if (n.mac !== undefined && !validateMac(String(n.mac).toLowerCase())) v.add(`${f}.mac`, 'must be a unicast MAC like 02:00:00:00:00:01');
  if (n.ip === undefined) return;
  const ip = parseIp(n.ip);
  if (ip === undefined) return v.add(`${f}.ip`, `not an IPv4 address: ${JSON.stringify(n.ip)}`);
  if (!net) return;
  const sub = parseCidr(net.subnet)!;
  if (!cidrContains(sub, ip) || ip === sub.base || ip === broadcast(sub) || n.ip === net.gateway) {
    return v.addRule(`${f}.ip`, `must be a free host address inside ${net.subnet} other than the gateway`);
  }
  const key = `${net.name}/${n.ip}`;
  if (wanted.has(key)) v.addRule(`${f}.ip`, `requested twice`);
  wanted.set(key, f);
}

/** Parse "80", 80 or "8000-8100" into a range; undefined when invalid. */
export function parsePortRange(p: string | number): { from: number; to: number } | undefined {
  const ok = (n: number): boolean => Number.isInteger(n) && n >= 1 && n <= 65535;
  if (typeof p === 'number') return ok(p) ? { from: p, to: p } : undefined;
  if (typeof p !== 'string') return undefined;
  // As the schema's PORT_RANGE_PATTERN: no leading zeros, no blanks.
  const m = /^([1-9][0-9]{0,4})(?:-([1-9][0-9]{0,4}))?$/.exec(p);
  if (!m) return undefined;
  const from = Number(m[1]);
  const to = m[2] !== undefined ? Number(m[2]) : from;
  return ok(from) && ok(to) && from <= to ? { from, to } : undefined;
}

function checkCidr(v: Violations, field: string, s: unknown): void {
  if (typeof s !== 'string') return v.add(field, 'must be a CIDR string');
  if (s.includes(':')) return v.add(field, 'IPv6 is not supported (guests get IPv4 only)');
  if (!parseCidr(s)) v.add(field, `not a valid IPv4 CIDR: ${JSON.stringify(s)}`);
}

export function validateEgress(v: Violations, e: EgressPolicy | undefined, field: string): void {
  if (e === undefined) return;
  if (typeof e !== 'object' || e === null) return v.add(field, 'must be an object');
  if (e.default !== undefined && e.default !== 'allow' && e.default !== 'deny') v.add(`${field}.default`, "must be 'allow' or 'deny'");
  for (const k of ['allow', 'deny'] as const) {
    const l = e[k];
    if (l === undefined) continue;
    if (!Array.isArray(l)) v.add(`${field}.${k}`, 'must be an array of CIDRs');
    else l.forEach((c, i) => checkCidr(v, `${field}.${k}[${i}]`, c));
  }
}

function validateRule(v: Violations, r: SecurityRule, f: string, g: SecurityGroup, byId: Map<string, SecurityGroup>): void {
  if (r.direction !== 'ingress' && r.direction !== 'egress') v.add(`${f}.direction`, "must be 'ingress' or 'egress'");
  if (!(PROTOCOLS as readonly string[]).includes(r.protocol)) v.add(`${f}.protocol`, `unknown protocol ${JSON.stringify(r.protocol)} (tcp, udp, icmp or any)`);
  if (r.ports !== undefined) {
    if (r.protocol !== 'tcp' && r.protocol !== 'udp') v.addRule(`${f}.ports`, 'ports need protocol tcp or udp');
    else if (!parsePortRange(r.ports)) {
      // A well-formed range whose ends are reversed breaks a rule the schema cannot state (it orders nothing): 422.
      const ends = typeof r.ports === 'string' ? /^([1-9][0-9]{0,4})-([1-9][0-9]{0,4})$/.exec(r.ports) : null;
      if (ends && parsePortRange(ends[2]!) && parsePortRange(ends[1]!)) v.addRule(`${f}.ports`, `the range ${r.ports} ends below its start`);
      else v.add(`${f}.ports`, `not a port or range within 1-65535: ${JSON.stringify(r.ports)}`);
    }
  }
  if (r.cidr !== undefined) checkCidr(v, `${f}.cidr`, r.cidr);
  if (r.group !== undefined) {
    if (r.cidr !== undefined) v.add(`${f}.group`, 'give either cidr or group, not both');
    const target = byId.get(r.group);
    if (!target) v.addRule(`${f}.group`, `security group ${JSON.stringify(r.group)} does not exist`);
    else if (target.tenant !== g.tenant) v.addRule(`${f}.group`, `security group ${r.group} belongs to another tenant`);
  }
  if (r.action !== undefined && r.action !== 'accept' && r.action !== 'drop') v.add(`${f}.action`, "must be 'accept' or 'drop'");
}

export function validatePolicy(p: NetworkPolicy, field = ''): void {
  const v = new Violations();
  const pre = field ? `${field}.` : '';
  if (!p || !Array.isArray(p.securityGroups)) {
    v.add(`${pre}securityGroups`, 'must be an array');
    v.throwIfAny('network policy');
  }
  const byId = new Map<string, SecurityGroup>();
  p.securityGroups.forEach((g, i) => {
    const f = `${pre}securityGroups[${i}]`;
    if (!ID_PATTERN.test(g?.id ?? '')) v.add(`${f}.id`, 'must match ^[a-z0-9][a-z0-9_.-]{0,62}$');
    else if (byId.has(g.id)) v.add(`${f}.id`, `duplicate security group ${g.id}`);
    else byId.set(g.id, g);
    if (typeof g?.tenant !== 'string' || g.tenant.length === 0) v.add(`${f}.tenant`, 'required');
  });
  p.securityGroups.forEach((g, i) => {
    const f = `${pre}securityGroups[${i}]`;
    if (!Array.isArray(g?.rules)) return v.add(`${f}.rules`, 'must be an array');
    g.rules.forEach((r, j) => validateRule(v, r, `${f}.rules[${j}]`, g, byId));
  });
  for (const [t, e] of Object.entries(p.tenantEgress ?? {})) validateEgress(v, e, `${pre}tenantEgress.${t}`);
  v.throwIfAny('network policy');
}

export function validateMac(mac: string): boolean {
  if (!MAC_PATTERN.test(mac)) return false;
  const first = parseInt(mac.slice(0, 2), 16);
  return (first & 1) === 0 && mac !== '00:00:00:00:00:00';
}

/** Port mappings of one VM: shape, NIC reference, duplicates within the VM. */
export function validatePorts(v: Violations, ports: PortMapping[] | undefined, nicNames: string[], field: string): void {
  if (ports === undefined) return;
  if (!Array.isArray(ports)) return v.add(field, 'must be an array');
  const seen = new Set<string>();
  ports.forEach((p, i) => {
    const f = `${field}[${i}]`;
    const proto = p.protocol ?? 'tcp';
    if (proto !== 'tcp' && proto !== 'udp') v.add(`${f}.protocol`, "must be 'tcp' or 'udp'");
    for (const k of ['hostPort', 'guestPort'] as const) {
      if (!Number.isInteger(p[k]) || p[k] < 1 || p[k] > 65535) v.add(`${f}.${k}`, 'must be an integer within 1-65535');
    }
    if (p.hostIp !== undefined && (parseIp(p.hostIp) === undefined || p.hostIp.startsWith('127.'))) v.add(`${f}.hostIp`, 'must be a non-loopback IPv4 address');
    if (p.nic !== undefined && !nicNames.includes(p.nic)) v.addRule(`${f}.nic`, `no interface named ${JSON.stringify(p.nic)}`);
    const key = `${proto}/${p.hostIp ?? '*'}/${p.hostPort}`;
    if (seen.has(key)) v.addRule(`${f}.hostPort`, `host port ${proto}/${p.hostPort} published twice`);
    seen.add(key);
  });
}

/** Two mappings collide when protocol and port match and their host addresses can coincide. */
export function portsCollide(a: PortMapping, b: PortMapping): boolean {
  return (a.protocol ?? 'tcp') === (b.protocol ?? 'tcp') && a.hostPort === b.hostPort && (a.hostIp === undefined || b.hostIp === undefined || a.hostIp === b.hostIp);
}

// ---------------------------------------------------------------------------
// Compiler

export interface PolicyVmNic {
  name: string;
  ip: string;
  mac: string;
  /** Host-side veth (bridge port). */
  hostVeth: string;
}

export interface PolicyVm {
  id: string;
  tenant: string;
  nics: PolicyVmNic[];
  securityGroups: string[];
  egress?: EgressPolicy;
  ports: PortMapping[];
}

export interface CompileInput {
  /** Name of our table in each family (default "mvm"). */
  table?: string;
  /** Bridges of the configured networks. */
  bridges: string[];
  vms: PolicyVm[];
  policy: NetworkPolicy;
}

const h = (s: string, n = 8): string => createHash('sha256').update(s).digest('hex').slice(0, n);
const safe = (s: string, max = 32): string => s.replace(/[^A-Za-z0-9_]/g, '_').slice(0, max);
/** nft identifiers for our objects: readable, collision-free, never a keyword. */
export const nftNames = {
  tenantSet: (tenant: string): string => `t_${safe(tenant, 24)}_${h(`t/${tenant}`)}`,
  groupSet: (group: string): string => `g_${safe(group, 24)}_${h(`g/${group}`)}`,
  vmChain: (id: string, dir: 'in' | 'out'): string => `v_${safe(id)}_${h(`v/${id}`)}_${dir}`,
  guardChain: (id: string, nic: number): string => `a_${safe(id)}_${h(`v/${id}`)}_${nic}`,
};

const q = (s: string): string => `"${s.replace(/["\\]/g, '')}"`;
const setOf = (items: string[]): string => (items.length === 1 ? items[0]! : `{ ${items.join(', ')} }`);

function l4(r: { protocol: string; ports?: string | number }): string {
  if (r.protocol === 'tcp' || r.protocol === 'udp') {
    if (r.ports === undefined) return `meta l4proto ${r.protocol}`;
    const pr = parsePortRange(r.ports)!;
    return `${r.protocol} dport ${pr.from === pr.to ? pr.from : `${pr.from}-${pr.to}`}`;
  }
  if (r.protocol === 'icmp') return 'meta l4proto icmp';
  return '';
}

const join = (...parts: string[]): string => parts.filter(Boolean).join(' ');

/** The complete ruleset text (pure). Apply it with `nft -f -`. */
export function compileRuleset(input: CompileInput): string {
  const table = input.table ?? 'mvm';
  const groups = new Map(input.policy.securityGroups.map((g) => [g.id, g]));
  const tenants = new Map<string, string[]>();
  const groupMembers = new Map<string, string[]>();
  const referenced = new Set<string>();
  for (const g of input.policy.securityGroups) for (const r of g.rules) if (r.group) referenced.add(r.group);
  for (const vm of input.vms) {
    const ips = vm.nics.map((n) => n.ip);
    tenants.set(vm.tenant, [...(tenants.get(vm.tenant) ?? []), ...ips]);
    for (const g of vm.securityGroups) groupMembers.set(g, [...(groupMembers.get(g) ?? []), ...ips]);
  }
  const bridges = setOf(input.bridges.map(q));
  const L: string[] = [];
  const ipSet = (name: string, ips: string[]): void => {
    L.push(`\tset ${name} {`, '\t\ttype ipv4_addr', ...(ips.length ? [`\t\telements = { ${[...new Set(ips)].join(', ')} }`] : []), '\t}');
  };

  // ---- inet: the stateful policy
  L.push(`table inet ${table}`, `delete table inet ${table}`, `table inet ${table} {`);
  for (const [t, ips] of [...tenants].sort(([a], [b]) => a.localeCompare(b))) ipSet(nftNames.tenantSet(t), ips);
  for (const g of [...referenced].sort()) ipSet(nftNames.groupSet(g), groupMembers.get(g) ?? []);
  const src: string[] = [];
  const dst: string[] = [];
  for (const vm of input.vms) {
    const out = nftNames.vmChain(vm.id, 'out');
    const inn = nftNames.vmChain(vm.id, 'in');
    const tset = `@${nftNames.tenantSet(vm.tenant)}`;
    const sgRules = vm.securityGroups.flatMap((gid) => (groups.get(gid)?.rules ?? []).map((r) => ({ r, gid })));
    const remote = (r: SecurityRule, dir: 'saddr' | 'daddr'): string =>
      r.group ? `ip ${dir} @${nftNames.groupSet(r.group)}` : r.cidr !== undefined && parseCidr(r.cidr)!.prefix > 0 ? `ip ${dir} ${parseCidr(r.cidr)!.text}` : '';
    const egress: EgressPolicy = vm.egress ?? input.policy.tenantEgress?.[vm.tenant] ?? {};

    L.push(`\tchain ${out} {`, '\t\tct state established,related return', '\t\tct state invalid drop');
    const deny = (egress.deny ?? []).map((c) => parseCidr(c)!.text);
    const allow = (egress.allow ?? []).map((c) => parseCidr(c)!.text);
    if (deny.length) L.push(`\t\tip daddr ${setOf(deny)} counter drop comment "egress deny"`);
    if (allow.length) L.push(`\t\tip daddr ${setOf(allow)} return comment "egress allow"`);
    for (const { r, gid } of sgRules) {
      if (r.direction !== 'egress') continue;
      L.push(`\t\t${join(remote(r, 'daddr'), l4(r), (r.action ?? 'accept') === 'accept' ? 'return' : 'counter drop')} comment ${q(`sg ${gid}`)}`);
    }
    L.push(`\t\tip daddr ${tset} return comment "same tenant"`);
    L.push(egress.default === 'deny' ? '\t\tcounter drop comment "egress default deny"' : '\t\treturn');
    L.push('\t}');

    L.push(`\tchain ${inn} {`, '\t\tct state established,related accept', '\t\tct state invalid drop');
    for (const { r, gid } of sgRules) {
      if (r.direction !== 'ingress') continue;
      L.push(`\t\t${join(remote(r, 'saddr'), l4(r), (r.action ?? 'accept') === 'accept' ? 'accept' : 'counter drop')} comment ${q(`sg ${gid}`)}`);
    }
    L.push(`\t\tip saddr ${tset} accept comment "same tenant"`);
    for (const p of vm.ports) {
      const nic = vm.nics.find((n) => n.name === p.nic) ?? vm.nics[0];
      if (nic) L.push(`\t\tct status dnat ip daddr ${nic.ip} ${p.protocol ?? 'tcp'} dport ${p.guestPort} accept comment "published ${p.hostPort}"`);
    }
    L.push('\t\tcounter drop', '\t}');
    for (const n of vm.nics) {
      src.push(`${n.ip} : jump ${out}`);
      dst.push(`${n.ip} : jump ${inn}`);
    }
  }
  const vmap = (name: string, els: string[]): void => {
    L.push(`\tmap ${name} {`, '\t\ttype ipv4_addr : verdict', ...(els.length ? [`\t\telements = { ${els.join(', ')} }`] : []), '\t}');
  };
  vmap('vm_src', src);
  vmap('vm_dst', dst);
  L.push(
    '\tchain hk_forward {',
    '\t\ttype filter hook forward priority 0; policy accept;',
    `\t\tiifname ${bridges} ip saddr vmap @vm_src`,
    `\t\toifname ${bridges} ip daddr vmap @vm_dst`,
    '\t}',
    '\tchain hk_input {',
    '\t\ttype filter hook input priority 0; policy accept;',
    `\t\tiifname ${bridges} ip saddr vmap @vm_src`,
    '\t}',
    '\tchain hk_output {',
    '\t\ttype filter hook output priority 0; policy accept;',
    `\t\toifname ${bridges} ip daddr vmap @vm_dst`,
    '\t}',
    '}',
  );

  // ---- bridge: stateless anti-spoofing on VM ports
  L.push(`table bridge ${table}`, `delete table bridge ${table}`, `table bridge ${table} {`);
  const guards: string[] = [];
  const ports: string[] = [];
  for (const vm of input.vms) {
    vm.nics.forEach((n, i) => {
      const c = nftNames.guardChain(vm.id, i);
      L.push(
        `\tchain ${c} {`,
        `\t\tether saddr != ${n.mac} counter drop`,
        `\t\tarp saddr ip != { 0.0.0.0, ${n.ip} } counter drop`,
        `\t\tip saddr != ${n.ip} counter drop`,
        '\t\tmeta protocol != { ip, arp } drop',
        '\t}',
      );
      guards.push(`${q(n.hostVeth)} : jump ${c}`);
      ports.push(q(n.hostVeth));
    });
  }
  L.push('\tset vm_ports {', '\t\ttype ifname', ...(ports.length ? [`\t\telements = { ${ports.join(', ')} }`] : []), '\t}');
  L.push('\tmap port_guard {', '\t\ttype ifname : verdict', ...(guards.length ? [`\t\telements = { ${guards.join(', ')} }`] : []), '\t}');
  L.push(
    '\tchain hk_prerouting {',
    '\t\ttype filter hook prerouting priority -300; policy accept;',
    '\t\tiifname vmap @port_guard',
    '\t}',
    '\tchain hk_postrouting {',
    '\t\ttype filter hook postrouting priority 300; policy accept;',
    '\t\toifname @vm_ports meta protocol != { ip, arp } drop',
    '\t}',
    '}',
  );

  // ---- ip: published ports
  L.push(`table ip ${table}`, `delete table ip ${table}`, `table ip ${table} {`, '\tchain published {');
  for (const vm of input.vms) {
    for (const p of vm.ports) {
      const nic = vm.nics.find((n) => n.name === p.nic) ?? vm.nics[0];
      if (!nic) continue;
      const proto = p.protocol ?? 'tcp';
      L.push(`\t\t${join(p.hostIp ? `ip daddr ${p.hostIp}` : '', `${proto} dport ${p.hostPort}`, `dnat to ${nic.ip}:${p.guestPort}`)} comment ${q(`vm ${vm.id}`)}`);
    }
  }
  L.push(
    '\t}',
    '\tchain hk_prerouting {',
    '\t\ttype nat hook prerouting priority -100; policy accept;',
    '\t\tfib daddr type local ip daddr != 127.0.0.0/8 jump published',
    '\t}',
    '\tchain hk_output {',
    '\t\ttype nat hook output priority -100; policy accept;',
    '\t\tfib daddr type local ip daddr != 127.0.0.0/8 jump published',
    '\t}',
    '}',
  );
  return L.join('\n') + '\n';
}

/** Text that removes our tables (used when the last VM is gone and on uninstall). */
export function compileRemoval(table = 'mvm'): string {
  return ['inet', 'bridge', 'ip'].flatMap((f) => [`table ${f} ${table}`, `delete table ${f} ${table}`]).join('\n') + '\n';
}
