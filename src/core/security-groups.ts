/**
 * Security groups as a tenant resource (seed §3.3.3): CRUD with validation and
 * tenancy; the network controller compiles them into the node's nftables ruleset.
 */
import { ErrorCodes, MvmError, notFound } from './errors.js';
import { newId } from './microvm.js';
import type { ResourceStore, StoredResource } from './ports/resources.js';
import type { Store } from './ports/store.js';
import type { SecurityGroupRequestT, SecurityGroupT, SecurityGroupUpdateT } from './schema.js';
import { listTenant, type Principal } from './authz.js';

export const SG_KIND = 'securitygroup';

export interface SecurityGroupSpec {
  description?: string;
  rules: SecurityGroupRequestT['rules'];
}

export type RuleValidator = (rules: SecurityGroupRequestT['rules'], field: string) => void;

export function toSecurityGroup(r: StoredResource<SecurityGroupSpec>): SecurityGroupT {
  return {
    id: r.id,
    name: r.name,
    tenant: r.tenant,
    ...(r.spec.description !== undefined ? { description: r.spec.description } : {}),
    rules: r.spec.rules,
    resourceVersion: r.resourceVersion,
    createdAt: r.createdAt,
    updatedAt: r.updatedAt,
  };
}

export class SecurityGroupService {
  constructor(
    private readonly resources: ResourceStore,
    private readonly vms: Store,
    /** Syntax checks of rules (CIDRs, port ranges) by the network adapter. */
    private readonly validateRules: RuleValidator,
  ) {}

  /** By id or name, within the caller's tenant (admins: any tenant by id). A foreign group is "not found". */
  async get(p: Principal, idOrName: string): Promise<StoredResource<SecurityGroupSpec>> {
    const byId = await this.resources.get<SecurityGroupSpec>(SG_KIND, idOrName);
    if (byId && (p.role === 'admin' || byId.tenant === p.tenant)) return byId;
    const byName = await this.resources.getByName<SecurityGroupSpec>(SG_KIND, p.tenant, idOrName);
    if (byName) return byName;
    throw notFound('security group', idOrName);
  }

  async list(p: Principal, o: { tenant?: string } = {}): Promise<Array<StoredResource<SecurityGroupSpec>>> {
    const tenant = listTenant(p, o.tenant);
    return this.resources.list<SecurityGroupSpec>(SG_KIND, tenant !== undefined ? { tenant } : {});
  }

  /** Rules may name other groups of the same tenant: each must exist. */
  private async checkRefs(tenant: string, rules: SecurityGroupRequestT['rules'], self?: { id: string; name: string }): Promise<void> {
    for (const [i, r] of rules.entries()) {
      if (r.group === undefined) continue;
      if (r.cidr !== undefined) {
        throw new MvmError(ErrorCodes.VALIDATION_FAILED, `rules[${i}]: give either cidr or group, not both`, { violations: [{ field: `rules[${i}]`, message: 'cidr and group are exclusive' }] });
      }
      if (self && (r.group === self.id || r.group === self.name)) continue;
      const g = (await this.resources.get<SecurityGroupSpec>(SG_KIND, r.group)) ?? (await this.resources.getByName<SecurityGroupSpec>(SG_KIND, tenant, r.group));
      if (!g || g.tenant !== tenant) {
        throw new MvmError(ErrorCodes.NOT_FOUND, `rules[${i}].group: security group ${JSON.stringify(r.group)} does not exist`, {
          violations: [{ field: `rules[${i}].group`, message: 'no such security group' }],
        });
      }
    }
  }

  async create(p: Principal, req: SecurityGroupRequestT): Promise<StoredResource<SecurityGroupSpec>> {
    this.validateRules(req.rules, 'rules');
    await this.checkRefs(p.tenant, req.rules, { id: '', name: req.name });
    const spec: SecurityGroupSpec = { rules: req.rules, ...(req.description !== undefined ? { description: req.description } : {}) };
    return this.resources.create<SecurityGroupSpec>({ kind: SG_KIND, id: newId('sg'), tenant: p.tenant, name: req.name, spec });
  }

  async update(p: Principal, idOrName: string, req: SecurityGroupUpdateT, ifMatch?: string): Promise<StoredResource<SecurityGroupSpec>> {
    const g = await this.get(p, idOrName);
    if (req.rules) {
      this.validateRules(req.rules, 'rules');
      await this.checkRefs(g.tenant, req.rules, g);
    }
    return this.resources.update<SecurityGroupSpec>(
      SG_KIND,
      g.id,
      (s) => ({ ...s, ...(req.rules ? { rules: req.rules } : {}), ...(req.description !== undefined ? { description: req.description } : {}) }),
      ifMatch,
    );
  }

  async delete(p: Principal, idOrName: string): Promise<void> {
    const g = await this.get(p, idOrName);
    // Refuse while VMs or other groups still refer to it: nothing half-applied.
    const users: string[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.vms.listVms({ tenant: g.tenant, limit: 1000, ...(cursor ? { cursor } : {}) });
      for (const vm of page.items) if ((vm.spec.securityGroups ?? []).some((s) => s === g.id || s === g.name)) users.push(vm.id);
      cursor = page.nextCursor;
    } while (cursor);
    const refs = (await this.resources.list<SecurityGroupSpec>(SG_KIND, { tenant: g.tenant })).filter(
      (o) => o.id !== g.id && o.spec.rules.some((r) => r.group === g.id || r.group === g.name),
    );
    if (users.length || refs.length) {
      throw new MvmError(ErrorCodes.CONFLICT, `security group ${g.name} is in use by ${[...users, ...refs.map((r) => r.id)].join(', ')}`, {
        details: { usedBy: [...users, ...refs.map((r) => r.id)] },
      });
    }
    await this.resources.delete(SG_KIND, g.id);
  }

  /** Resolve names/ids of a VM's groups to ids; VALIDATION_FAILED naming the field when one is missing. */
  async resolve(tenant: string, refs: string[], field = 'securityGroups'): Promise<string[]> {
    const out: string[] = [];
    for (const [i, ref] of refs.entries()) {
      const g = (await this.resources.get<SecurityGroupSpec>(SG_KIND, ref)) ?? (await this.resources.getByName<SecurityGroupSpec>(SG_KIND, tenant, ref));
      if (!g || g.tenant !== tenant) {
        throw new MvmError(ErrorCodes.NOT_FOUND, `${field}[${i}]: security group ${JSON.stringify(ref)} does not exist`, {
          violations: [{ field: `${field}[${i}]`, message: 'no such security group' }],
        });
      }
      out.push(g.id);
    }
    return out;
  }
}
