/** Configuration by environment, with documented defaults (README "Configuration"). */
import { hostname } from 'node:os';
import { resolve } from 'node:path';
import { loadGatewayConfig, type GatewayConfig } from './gateway/config.js';
import { DEFAULT_VMM_LEASE_DIR, DEFAULT_VMM_UID_RANGE, parseUidRange } from './vmm/identity.js';
import { loadTlsConfig, type TlsConfig } from './tls/server.js';
import { parseHostPortAddresses, parseHostPortRange, type HostPortPolicy } from './core/host-ports.js';
import { firstHost, instanceForDataDir, instanceNames, ROLE_INSTANCE, validateInstanceName, type Role } from './instance.js';
import { parseCidr } from './network/ipv4.js';

export interface Config {
  /**
   * MVM_INSTANCE: names every host-global object of this process (nftables tables, bridge, VM
   * namespaces, cgroup parent, subnet, data dir; src/instance.ts, ADR 0027). Default: from
   * MVM_DATA_DIR when set, else by role: `mvm` (standalone), `agent` (node agent), `api` (API in cluster mode).
   */
  instance: string;
  /** host:port of the REST API. MVM_LISTEN, default 127.0.0.1:8080 (instance `mvm`), 127.0.0.1:8180 (API in cluster mode), 127.0.0.1:0 (other instances). */
  listen: { host: string; port: number };
  /** State, VM directories, admin token. MVM_DATA_DIR, default /var/lib/mvm (instance `mvm`) or /var/lib/mvm-<instance>. */
  dataDir: string;
  /** Built guest images and probe results, shared by instances. MVM_CACHE_DIR, default /var/cache/mvm. */
  cacheDir: string;
  /** MVM_ADMIN_TOKEN; when unset a token is generated into <dataDir>/admin.token. */
  adminToken?: string;
  /** MVM_LOG_LEVEL: trace|debug|info|warn|error, default info. */
  logLevel: string;
  /** MVM_DRIVER: qemu (default) | firecracker (needs the firecracker binary and a KVM that boots guests). */
  driver: 'qemu' | 'firecracker';
  /** MVM_FIRECRACKER_BIN: the firecracker binary (a path, or a name looked up on PATH; default `firecracker`). v1.8 or later. */
  firecrackerBinary?: string;
  /** MVM_FIRECRACKER_JAILER: Firecracker's `jailer` binary; when set, Firecracker runs jailed (chroot under <dataDir>/jailer, per-VM uid/gid, cgroup, the VM's netns). */
  firecrackerJailer?: string;
  /** MVM_CGROUP_PARENT: the cgroup (relative to each hierarchy's root) under which every VM's cgroup is made, jailed or not; default `mvm` (instance `mvm`) or `mvm-<instance>`. */
  cgroupParent: string;
  /**
   * MVM_BOOT_TIMEOUT_SECONDS: how long a started guest may take to become ready (its readiness
   * marker or agent) before the VM goes Failed with reason BootTimeout; 0 disables. Default 300
   * (TCG boots of many guests at once are slow). A VM's `lifecycle.bootTimeout` overrides it.
   * MVM_BOOT_TIMEOUT_ACTION: fail (default: stop the VMM, phase Failed) | keep (only say so: condition and event).
   */
  bootTimeoutSeconds: number;
  bootTimeoutAction: 'fail' | 'keep';
  /** MVM_ACCEL: auto (probe KVM, else TCG) | kvm | tcg. */
  accel: string;
  /** MVM_NODE_NAME, default the host name. */
  nodeName: string;
  /** MVM_SHUTDOWN_POLICY: leave (default: VMs keep running and are re-adopted) | stop (stop every VM). */
  shutdownPolicy: 'leave' | 'stop';
  /** MVM_VMM_USER: unprivileged user QEMU drops to (-runas) when it exists and VMM users are shared, default mvm-vmm. */
  vmmUser: string;
  /** MVM_VMM_USERS: per-vm (default: each QEMU VM runs as a uid/gid of its own, ADR 0023) | shared (every VMM as MVM_VMM_USER). */
  vmmUsers: 'per-vm' | 'shared';
  /** MVM_VMM_UIDS: the uid range per-VM users come from, default 200000-265535 (the gid is the uid). */
  vmmUidRange: { start: number; size: number };
  /** MVM_VMM_UID_LEASE_DIR: host-wide leases of those uids, shared by every instance on the host (default /var/lib/mvm/vmm-uids). */
  vmmUidLeaseDir: string;
  /** MVM_RESYNC_SECONDS: periodic full reconcile, default 10. */
  resyncSeconds: number;
  /** MVM_STOP_TIMEOUT_SECONDS: graceful stop before kill, default 10. */
  stopTimeoutSeconds: number;
  /** MVM_CPU_OVERCOMMIT: vCPUs placed per host CPU (microVMs mostly idle; template clones share memory), default 16. */
  cpuOvercommit: number;
  /** JWT/OIDC, rate limits, gRPC listener (src/gateway/config.ts). */
  gateway?: GatewayConfig;
  /** MVM_STORE: sqlite (default: the standalone service) | kubernetes (the API in cluster mode, src/cluster-api.ts, ADR 0015). */
  store: 'sqlite' | 'kubernetes';
  /** Cluster mode: MVM_K8S_PARTITION (namespaces `<partition>-<tenant>`), MVM_K8S_SYSTEM_NAMESPACE (default microvm-system), MVM_AGENT_CA_FILE (CA of agents serving HTTPS). */
  cluster: {
    partition?: string;
    systemNamespace: string;
    agentCaFile?: string;
    agentTokenFile?: string;
    /**
     * MVM_AGENT_TLS_SERVER_NAME: the name an agent's certificate must carry, `{node}` replaced by
     * its node (default `{node}.agent.microvm.service`, what deploy/tls/gen-agent-certs.sh issues);
     * `address` checks the address of the agent's URL instead.
     */
    agentServerName: string;
  };
  network: {
    /** MVM_NETWORK: cni (default) | none. */
    mode: 'cni' | 'none';
    /** MVM_NET_HOST_NETNS: put bridge, veths and nftables in this `ip netns` namespace instead of the host's (made when missing). */
    hostNetns?: string;
    /** MVM_NET_BRIDGE: default `fc-br0` (instance `mvm`) or `mvm-<instance>`. */
    bridge: string;
    /** MVM_NET_SUBNET: default 10.100.0.0/16 (instance `mvm`); unset for other instances: a free /20 of 10.112.0.0/12 is picked at start. */
    subnet?: string;
    /** MVM_NET_GATEWAY: default the subnet's first host address. */
    gateway?: string;
    /** nftables table name (in each family) and VM namespace prefix, from the instance. */
    table: string;
    netnsPrefix: string;
    /** MVM_NET_IPMASQ=1: masquerade guest traffic leaving the host (off by default). */
    ipMasq: boolean;
    /** MVM_EGRESS_DEFAULT: deny (default: guests reach only their tenant's VMs) | allow. */
    egressDefault: 'allow' | 'deny';
  };
  /**
   * Published host ports (ADR 0025): MVM_HOST_PORT_RANGE (default 30000-32767) and
   * MVM_HOST_PORT_ADDRESS (comma-separated IPv4 addresses ports bind to, the first the default;
   * `0.0.0.0` = every non-loopback address). Default: the VM network's gateway (MVM_NET_GATEWAY),
   * so a published port is reachable from this host only until an admin names an outside address.
   */
  hostPorts: HostPortPolicy;
  /** MVM_TLS_CERT/MVM_TLS_KEY, MVM_TLS_SELF_SIGNED, MVM_TLS_RELOAD_SECONDS (src/tls/server.ts, ADR 0026); absent = plain HTTP. */
  tls?: TlsConfig;
}

function parseListen(s: string): { host: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(s);
  if (!m) throw new Error(`MVM_LISTEN must be host:port, got ${JSON.stringify(s)}`);
  const port = Number(m[2]);
  if (port < 0 || port > 65535) throw new Error(`MVM_LISTEN port out of range: ${port}`);
  return { host: m[1]!.replace(/^\[(.*)\]$/, '$1') || '127.0.0.1', port };
}

/** Default REST address by role and instance: the API in cluster mode and instances other than `mvm` do not take the standalone's ports. */
function defaultListen(role: Role, instance: string, what: 'rest' | 'grpc'): string {
  if (role === 'api') return what === 'rest' ? '127.0.0.1:8180' : '127.0.0.1:9190';
  if (instance === 'mvm') return what === 'rest' ? '127.0.0.1:8080' : '127.0.0.1:9090';
  return '127.0.0.1:0';
}

/**
 * The configuration of `role` (default: `api` when MVM_STORE=kubernetes, else `standalone`) from
 * the environment; a bad value throws an Error naming the variable.
 */
export function loadConfig(env: NodeJS.ProcessEnv = process.env, o: { role?: Role } = {}): Config {
  const role: Role = o.role ?? (env.MVM_STORE === 'kubernetes' ? 'api' : 'standalone');
  const instance = env.MVM_INSTANCE ? validateInstanceName(env.MVM_INSTANCE) : env.MVM_DATA_DIR ? instanceForDataDir(env.MVM_DATA_DIR) : ROLE_INSTANCE[role];
  const names = instanceNames(instance);
  const subnet = env.MVM_NET_SUBNET ?? names.subnet?.subnet;
  if (subnet !== undefined && !parseCidr(subnet, { strict: true })) throw new Error(`MVM_NET_SUBNET must be an IPv4 network in CIDR form (host bits clear), got ${JSON.stringify(subnet)}`);
  if (subnet === undefined && env.MVM_NET_GATEWAY) throw new Error(`MVM_NET_GATEWAY needs MVM_NET_SUBNET (instance ${instance} picks its subnet at start)`);
  const policy = env.MVM_SHUTDOWN_POLICY ?? 'leave';
  if (policy !== 'leave' && policy !== 'stop') throw new Error(`MVM_SHUTDOWN_POLICY must be leave or stop, got ${policy}`);
  const accel = env.MVM_ACCEL ?? 'auto';
  if (!['auto', 'kvm', 'tcg'].includes(accel)) throw new Error(`MVM_ACCEL must be auto, kvm or tcg, got ${accel}`);
  const cfg: Config = {
    instance,
    listen: parseListen(env.MVM_LISTEN ?? defaultListen(role, instance, 'rest')),
    dataDir: resolve(env.MVM_DATA_DIR ?? names.dataDir),
    cacheDir: resolve(env.MVM_CACHE_DIR ?? '/var/cache/mvm'),
    logLevel: env.MVM_LOG_LEVEL ?? 'info',
    accel,
    driver: env.MVM_DRIVER === 'firecracker' ? 'firecracker' : 'qemu',
    ...(env.MVM_FIRECRACKER_BIN ? { firecrackerBinary: env.MVM_FIRECRACKER_BIN } : {}),
    ...(env.MVM_FIRECRACKER_JAILER ? { firecrackerJailer: env.MVM_FIRECRACKER_JAILER } : {}),
    cgroupParent: env.MVM_CGROUP_PARENT ?? names.cgroupParent,
    bootTimeoutSeconds: Number(env.MVM_BOOT_TIMEOUT_SECONDS ?? 300),
    bootTimeoutAction: env.MVM_BOOT_TIMEOUT_ACTION === 'keep' ? 'keep' : 'fail',
    nodeName: env.MVM_NODE_NAME ?? hostname(),
    shutdownPolicy: policy,
    vmmUser: env.MVM_VMM_USER ?? 'mvm-vmm',
    vmmUsers: oneOf('MVM_VMM_USERS', env.MVM_VMM_USERS, ['per-vm', 'shared'] as const, 'per-vm'),
    vmmUidRange: env.MVM_VMM_UIDS ? parseUidRange(env.MVM_VMM_UIDS) : DEFAULT_VMM_UID_RANGE,
    vmmUidLeaseDir: env.MVM_VMM_UID_LEASE_DIR ?? DEFAULT_VMM_LEASE_DIR,
    resyncSeconds: Number(env.MVM_RESYNC_SECONDS ?? 10),
    stopTimeoutSeconds: Number(env.MVM_STOP_TIMEOUT_SECONDS ?? 10),
    cpuOvercommit: positiveNumber('MVM_CPU_OVERCOMMIT', env.MVM_CPU_OVERCOMMIT, 16),
    store: env.MVM_STORE === 'kubernetes' ? 'kubernetes' : 'sqlite',
    cluster: {
      ...(env.MVM_K8S_PARTITION ? { partition: env.MVM_K8S_PARTITION } : {}),
      systemNamespace: env.MVM_K8S_SYSTEM_NAMESPACE ?? 'microvm-system',
      ...(env.MVM_AGENT_CA_FILE ? { agentCaFile: env.MVM_AGENT_CA_FILE } : {}),
      // MVM_AGENT_TOKEN_FILE: token for the node agents (a projected token of audience microvm-agent); default the pod's SA token.
      ...(env.MVM_AGENT_TOKEN_FILE ? { agentTokenFile: env.MVM_AGENT_TOKEN_FILE } : {}),
      agentServerName: env.MVM_AGENT_TLS_SERVER_NAME || '{node}.agent.microvm.service',
    },
    network: {
      mode: env.MVM_NETWORK === 'none' ? 'none' : 'cni',
      ...(env.MVM_NET_HOST_NETNS ? { hostNetns: env.MVM_NET_HOST_NETNS } : {}),
      bridge: env.MVM_NET_BRIDGE ?? names.bridge,
      ...(subnet !== undefined ? { subnet, gateway: env.MVM_NET_GATEWAY ?? firstHost(subnet) } : {}),
      table: names.table,
      netnsPrefix: names.netnsPrefix,
      ipMasq: env.MVM_NET_IPMASQ === '1',
      egressDefault: env.MVM_EGRESS_DEFAULT === 'allow' ? 'allow' : 'deny',
    },
    hostPorts: { ...parseHostPortRange(env.MVM_HOST_PORT_RANGE), addresses: parseHostPortAddresses(env.MVM_HOST_PORT_ADDRESS, (subnet !== undefined ? (env.MVM_NET_GATEWAY ?? firstHost(subnet)) : undefined) ?? '10.100.0.1'), addressDefault: !env.MVM_HOST_PORT_ADDRESS?.trim() },
  };
  if (env.MVM_DRIVER && !['qemu', 'firecracker'].includes(env.MVM_DRIVER)) throw new Error(`MVM_DRIVER must be qemu or firecracker, got ${env.MVM_DRIVER}`);
  if (env.MVM_NETWORK && !['cni', 'none'].includes(env.MVM_NETWORK)) throw new Error(`MVM_NETWORK must be cni or none, got ${env.MVM_NETWORK}`);
  if (!/^[A-Za-z0-9_.-]+(\/[A-Za-z0-9_.-]+)*$/.test(cfg.cgroupParent) || cfg.cgroupParent.split('/').some((p) => p === '..' || p === '.')) {
    throw new Error(`MVM_CGROUP_PARENT must be a relative cgroup path like mvm or mvm/instance-a, got ${JSON.stringify(cfg.cgroupParent)}`);
  }
  if (!Number.isInteger(cfg.bootTimeoutSeconds) || cfg.bootTimeoutSeconds < 0) throw new Error(`MVM_BOOT_TIMEOUT_SECONDS must be a whole number of seconds (0 disables), got ${env.MVM_BOOT_TIMEOUT_SECONDS}`);
  if (env.MVM_BOOT_TIMEOUT_ACTION && !['fail', 'keep'].includes(env.MVM_BOOT_TIMEOUT_ACTION)) throw new Error(`MVM_BOOT_TIMEOUT_ACTION must be fail or keep, got ${env.MVM_BOOT_TIMEOUT_ACTION}`);
  if (env.MVM_ADMIN_TOKEN) cfg.adminToken = env.MVM_ADMIN_TOKEN;
  if (env.MVM_STORE && !['sqlite', 'kubernetes'].includes(env.MVM_STORE)) throw new Error(`MVM_STORE must be sqlite or kubernetes, got ${env.MVM_STORE}`);
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$/.test(cfg.network.bridge)) throw new Error(`MVM_NET_BRIDGE must be a Linux interface name of at most 15 characters, got ${JSON.stringify(cfg.network.bridge)}`);
  if (cfg.network.hostNetns !== undefined && !/^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$/.test(cfg.network.hostNetns)) throw new Error(`MVM_NET_HOST_NETNS must be a network namespace name, got ${JSON.stringify(cfg.network.hostNetns)}`);
  cfg.gateway = loadGatewayConfig(env, { grpcListen: defaultListen(role, instance, 'grpc') });
  const tls = loadTlsConfig(env);
  if (tls) cfg.tls = tls;
  return cfg;
}

export function positiveNumber(name: string, raw: string | undefined, dflt: number): number {
  if (raw === undefined || raw === '') return dflt;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
  return n;
}

export function oneOf<T extends string>(name: string, raw: string | undefined, allowed: readonly T[], dflt: T): T {
  if (raw === undefined || raw === '') return dflt;
  if (!(allowed as readonly string[]).includes(raw)) throw new Error(`${name} must be one of ${allowed.join(', ')}, got ${JSON.stringify(raw)}`);
  return raw as T;
}
