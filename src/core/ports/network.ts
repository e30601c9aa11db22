/**
 * The network manager port: everything a node does so that a microVM has a
 * network — a network namespace per VM, CNI-attached interfaces with IPAM, a tap
 * device per NIC that the VMM opens, security groups and tenant isolation,
 * published ports and egress policy. Adapter: src/network/manager.ts
 * (`CniNetworkManager`, CNI bridge + host-local + nftables).
 *
 * Contract:
 * - Every method is idempotent and safe to repeat after a crash at any point.
 * - `setup` validates everything before it changes anything; invalid input is
 *   VALIDATION_FAILED with `violations[].field` naming the offending field, a
 *   host port or requested IP already taken is CONFLICT.
 * - Policy changes (`applyPolicy`, `update`) apply to running VMs at once, in one
 *   atomic ruleset transaction, without restarting them.
 * - The VMM must run inside the VM's network namespace (`NicAttachment.netnsPath`),
 *   because that is where the tap lives: wrap its argv with `wrapInNetns`
 *   (QEMU) or pass the path to the jailer's `--netns` (Firecracker).
 */

export type Protocol = 'tcp' | 'udp' | 'icmp' | 'any';

export interface SecurityRule {
  direction: 'ingress' | 'egress';
  protocol: Protocol;
  /** Port or range, "22" / 22 / "8000-8100"; only with tcp/udp. Absent = all ports. */
  ports?: string | number;
  /** The remote side as a CIDR (IPv4). Absent (and no `group`) = anywhere. */
  cidr?: string;
  /** The remote side as the members of another security group of the same tenant. */
  group?: string;
  /** Default 'accept'. First matching rule of a VM's groups wins, in order. */
  action?: 'accept' | 'drop';
  description?: string;
}

export interface SecurityGroup {
  /** Unique per node catalogue: ^[a-z0-9][a-z0-9_.-]{0,62}$ */
  id: string;
  tenant: string;
  description?: string;
  rules: SecurityRule[];
}

/**
 * Where a VM may open connections to (besides same-tenant VMs, which are always
 * reachable unless a `deny` CIDR or a security-group drop rule says otherwise).
 * Evaluated: deny CIDRs, allow CIDRs, security-group egress rules, same tenant, default.
 */
export interface EgressPolicy {
  /** Default 'allow'. 'deny' with no `allow` is deny-all. */
  default?: 'allow' | 'deny';
  allow?: string[];
  deny?: string[];
}

export interface PortMapping {
  protocol?: 'tcp' | 'udp';
  /** Host port to publish on (1-65535), unique per node and protocol (and hostIp). */
  hostPort: number;
  guestPort: number;
  /** Only on this host address; default every local address except loopback. */
  hostIp?: string;
  /** Which NIC of the VM (by name); default its first. */
  nic?: string;
}

export interface NicRequest {
  /** Interface name of the spec (e.g. "eth0", "net0"); becomes the VMM's netdev id. */
  name: string;
  /** Requested guest MAC; default a stable one derived from the VM id and NIC name. */
  mac?: string;
  /** Requested IPv4 address (no prefix); default the next free one of the network. */
  ip?: string;
  /** Name of a configured network; default the first one. */
  network?: string;
}

export interface VmNetworkSpec {
  id: string;
  tenant: string;
  /** Guest host name put into the kernel `ip=` argument (optional). */
  hostname?: string;
  nics: NicRequest[];
  /** Ids of security groups (of the VM's tenant) that apply to every NIC. */
  securityGroups?: string[];
  /** Overrides the tenant's egress policy. */
  egress?: EgressPolicy;
  ports?: PortMapping[];
}

export interface VmNetworkPatch {
  securityGroups?: string[];
  /** null removes the VM's own policy (the tenant's applies again). */
  egress?: EgressPolicy | null;
  ports?: PortMapping[];
}

export interface NicAttachment {
  /** NicRequest.name */
  name: string;
  network: string;
  /** Tap device name inside the VM's netns (what the VMM opens). */
  tap: string;
  /** Guest MAC (equal to the CNI interface's MAC, so the bridge and ARP see the guest). */
  mac: string;
  ip: string;
  prefix: number;
  gateway: string;
  dns: string[];
  /** Network namespace name (`ip netns` name) and path. */
  netns: string;
  netnsPath: string;
  /** Host-side veth port on the bridge (for diagnostics). */
  hostVeth: string;
}

export interface NetworkPolicy {
  securityGroups: SecurityGroup[];
  /** Egress policy per tenant, for VMs without their own. */
  tenantEgress?: Record<string, EgressPolicy>;
}

export interface NicStats {
  /** Tap device name; counters from the guest's point of view (rx = delivered to the guest). */
  device: string;
  rxBytes: number;
  txBytes: number;
  rxPackets: number;
  txPackets: number;
}

export interface NetworkManager {
  /** Create the VM's network (or return it when it exists and is healthy; re-create it, same IPs and MACs, when it is not). */
  setup(vm: VmNetworkSpec): Promise<NicAttachment[]>;
  /** The attachments of a VM with network resources, or undefined. */
  get(id: string): Promise<NicAttachment[] | undefined>;
  /** Change a running VM's security groups, egress policy or published ports. */
  update(id: string, patch: VmNetworkPatch): Promise<void>;
  /** Remove everything of the VM: rules, published ports, CNI attachment, IP allocation, tap, netns. */
  teardown(id: string): Promise<void>;
  /** Ids of VMs that have any network resource on this node (records, namespaces, IP allocations). */
  list(): Promise<string[]>;
  /** Replace the security-group catalogue and tenant egress defaults; re-applied to all VMs at once. */
  applyPolicy(policy: NetworkPolicy): Promise<void>;
  getPolicy(): Promise<NetworkPolicy>;
  /** Per-tap traffic counters. */
  stats(id: string): Promise<NicStats[]>;
}

export function prefixToNetmask(prefix: number): string {
  const m = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return [24, 16, 8, 0].map((s) => (m >>> s) & 255).join('.');
}

/**
 * The guest kernel command-line arguments for the attachments, in the format the
 * default guest understands: `ip=<ip>::<gw>:<netmask>:<hostname>:eth0:off` for the
 * first NIC, `mvm.ip1=` (…`mvm.ip3=`) in the same format for the others, and
 * `mvm.dns=<ip>[,<ip>]`.
 */
export function kernelIpArgs(attachments: NicAttachment[], opts: { hostname?: string } = {}): string {
  const host = opts.hostname ?? '';
  const out: string[] = [];
  attachments.forEach((a, i) => {
    const v = `${a.ip}::${a.gateway}:${prefixToNetmask(a.prefix)}:${host}:eth${i}:off`;
    out.push(i === 0 ? `ip=${v}` : `mvm.ip${i}=${v}`);
  });
  const dns = [...new Set(attachments.flatMap((a) => a.dns))];
  if (dns.length) out.push(`mvm.dns=${dns.join(',')}`);
  return out.join(' ');
}

/**
 * argv that runs `argv` inside a network namespace (by path, e.g.
 * NicAttachment.netnsPath). `nsenter` only switches the network namespace and
 * execs, so the pid stays the VMM's pid and the mount namespace is the host's.
 */
export function wrapInNetns(netnsPath: string, argv: string[]): string[] {
  return ['nsenter', `--net=${netnsPath}`, '--', ...argv];
}
