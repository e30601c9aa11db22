/** Admission checks of a VM's network intent: CIDRs, ports, and that its security groups exist. */
import type { MicroVMSpec } from '../core/microvm.js';
import type { SecurityGroupService } from '../core/security-groups.js';
import { Violations, validateEgress, validatePorts } from './policy.js';

export function networkAdmission(groups: SecurityGroupService): (p: unknown, spec: MicroVMSpec, tenant: string) => Promise<void> {
  return async (_p, spec, tenant) => {
    const v = new Violations();
    validateEgress(v, spec.egress, 'egress');
    const nics = spec.networkInterfaces?.length ? spec.networkInterfaces.map((n) => n.name) : ['eth0'];
    validatePorts(v, spec.ports, nics, 'ports');
    v.throwIfAny('network settings');
    await groups.resolve(tenant, spec.securityGroups ?? []);
  };
}
