/**
 * Host port policy (issue 15 item 1, ADR 0025): which host ports a tenant may publish, on which
 * host address, and that one host port belongs to one microVM at a time.
 *
 * - Ports come from an admin-configured range (MVM_HOST_PORT_RANGE, default 30000-32767 like
 *   Kubernetes NodePorts): a port outside it is VALIDATION_FAILED naming `ports[i].hostPort`.
 * - They bind to configured host addresses (MVM_HOST_PORT_ADDRESS); `hostIp` must be absent
 *   (the first configured address) or one of them, else VALIDATION_FAILED naming `ports[i].hostIp`.
 * - A (protocol, port) pair is published by at most one microVM in the whole deployment (not per
 *   node: a VM may be placed on any node), whatever the host address: CONFLICT naming the field.
 * - How many a tenant holds is the quota `hostPorts` (src/core/quota.ts), counted by the stores.
 */
import { ErrorCodes, MvmError, type FieldViolation } from './errors.js';

export interface HostPortPolicy {
  /** Inclusive range of host ports tenants may publish. */
  min: number;
  max: number;
  /**
   * Host addresses published ports bind to; the first is the default for a mapping without
   * `hostIp`. `0.0.0.0` means every local address except loopback (opt-in, the old behaviour).
   */
  addresses: string[];
  /** The addresses were not configured (MVM_HOST_PORT_ADDRESS unset): the instance's gateway, set once its subnet is known. */
  addressDefault?: boolean;
}

export const ANY_ADDRESS = '0.0.0.0';
export const DEFAULT_HOST_PORT_RANGE = { min: 30000, max: 32767 } as const;

interface PortLike {
  hostPort: number;
  protocol?: 'tcp' | 'udp' | undefined;
  hostIp?: string | undefined;
}

const IPV4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** `lo-hi` (or one port) of MVM_HOST_PORT_RANGE; throws with the variable's name. */
export function parseHostPortRange(s: string | undefined): { min: number; max: number } {
  if (s === undefined || s === '') return { ...DEFAULT_HOST_PORT_RANGE };
  const m = /^\s*(\d{1,5})\s*(?:-\s*(\d{1,5})\s*)?$/.exec(s);
  const min = m ? Number(m[1]) : NaN;
  const max = m ? Number(m[2] ?? m[1]) : NaN;
  if (!m || min < 1 || max > 65535 || min > max) throw new Error(`MVM_HOST_PORT_RANGE must be a port range like 30000-32767 within 1-65535, got ${JSON.stringify(s)}`);
  return { min, max };
}

/** Comma-separated MVM_HOST_PORT_ADDRESS: IPv4 addresses (not loopback) or 0.0.0.0; default `fallback`. */
export function parseHostPortAddresses(s: string | undefined, fallback: string): string[] {
  const list = (s === undefined || s.trim() === '' ? fallback : s)
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
  for (const a of list) {
    if (!IPV4.test(a) || a.startsWith('127.')) throw new Error(`MVM_HOST_PORT_ADDRESS must be IPv4 addresses of this host (not loopback) or 0.0.0.0, got ${JSON.stringify(a)}`);
  }
  if (list.length === 0) throw new Error('MVM_HOST_PORT_ADDRESS is empty');
  return list;
}

/** Range and address violations of a VM's port mappings (field names `<field>[i].hostPort` / `.hostIp`). */
export function hostPortViolations(ports: readonly PortLike[] | undefined, policy: HostPortPolicy, field = 'ports'): FieldViolation[] {
  const out: FieldViolation[] = [];
  (ports ?? []).forEach((p, i) => {
    if (Number.isInteger(p.hostPort) && (p.hostPort < policy.min || p.hostPort > policy.max)) {
      out.push({ field: `${field}[${i}].hostPort`, message: `host port ${p.hostPort} is outside the range tenants may publish (${policy.min}-${policy.max}, MVM_HOST_PORT_RANGE)` });
    }
    if (p.hostIp !== undefined && p.hostIp !== '' && !policy.addresses.includes(ANY_ADDRESS) && !policy.addresses.includes(p.hostIp)) {
      out.push({ field: `${field}[${i}].hostIp`, message: `ports may only bind to ${policy.addresses.join(', ')} (MVM_HOST_PORT_ADDRESS), not ${p.hostIp}` });
    }
  });
  return out;
}

const keyOf = (p: PortLike): string => `${p.protocol ?? 'tcp'}/${p.hostPort}`;

/** How many host ports a spec holds against its tenant's `hostPorts` quota. */
export const hostPortsOf = (spec: { ports?: readonly unknown[] | undefined }): number => spec.ports?.length ?? 0;

/**
 * CONFLICT naming `ports[i].hostPort` when another microVM (any tenant) already publishes the
 * same protocol and port. The message names the other VM only to its own tenant.
 */
export function takenPortError(
  ports: readonly PortLike[] | undefined,
  self: { id?: string; tenant: string },
  others: Iterable<{ id: string; tenant: string; spec: { ports?: readonly PortLike[] | undefined } }>,
): MvmError | undefined {
  if (!ports?.length) return undefined;
  const holders = new Map<string, { id: string; tenant: string }>();
  for (const o of others) {
    if (o.id === self.id) continue;
    for (const p of o.spec.ports ?? []) holders.set(keyOf(p), { id: o.id, tenant: o.tenant });
  }
  const violations: FieldViolation[] = [];
  ports.forEach((p, i) => {
    const h = holders.get(keyOf(p));
    if (h) violations.push({ field: `ports[${i}].hostPort`, message: `host port ${keyOf(p)} is already published${h.tenant === self.tenant ? ` by microVM ${h.id}` : ' by another tenant'}` });
  });
  if (!violations.length) return undefined;
  return new MvmError(ErrorCodes.CONFLICT, `${violations.map((v) => `${v.field}: ${v.message}`).join('; ')}`, { violations, details: { hostPorts: ports.map(keyOf) } });
}
