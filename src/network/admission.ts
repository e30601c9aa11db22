/** Admission checks of a VM's network intent: NIC addresses, CIDRs, ports, and that its security groups exist. */
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { MicroVMSpec } from '../core/microvm.js';
import type { SecurityGroupService } from '../core/security-groups.js';
import { Violations, checkNicAddress, validateEgress, validatePorts, type NetworkConfig } from './policy.js';

export interface NetworkAdmissionOptions {
  /** The node network NICs join (the network manager's first one): requested addresses must lie in it. Absent (MVM_NETWORK=none, or the API of cluster mode): format checks only. */
  network?: NetworkConfig;
  /** Who holds an address now (the network manager's IPAM): a taken one is refused (409). */
  ipHolder?: (ip: string) => string | undefined;
}

/**
 * Everything the network step checks when the VM starts, checked when it is created: a bad
 * address is the caller's 400 now, not a Failed VM later.
 */
export function networkAdmission(groups: SecurityGroupService, o: NetworkAdmissionOptions = {}): (p: unknown, spec: MicroVMSpec, tenant: string) => Promise<void> {
  return async (_p, spec, tenant) => {
    const v = new Violations();
    const wanted = new Map<string, string>();
    (spec.networkInterfaces ?? []).forEach((n, i) => checkNicAddress(v, `networkInterfaces[${i}]`, n, o.network, wanted));
    validateEgress(v, spec.egress, 'egress');
    const nics = spec.networkInterfaces?.length ? spec.networkInterfaces.map((n) => n.name) : ['eth0'];
    validatePorts(v, spec.ports, nics, 'ports');
    v.throwIfAny('network settings');
    for (const [i, n] of (spec.networkInterfaces ?? []).entries()) {
      const holder = n.ip !== undefined ? o.ipHolder?.(n.ip) : undefined;
      if (holder) {
        throw new MvmError(ErrorCodes.CONFLICT, `IP ${n.ip} is already allocated`, { violations: [{ field: `networkInterfaces[${i}].ip`, message: `already allocated to ${holder}` }] });
      }
    }
    await groups.resolve(tenant, spec.securityGroups ?? []);
  };
}
