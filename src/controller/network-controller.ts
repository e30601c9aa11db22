/**
 * Keeps the node's network policy in step with the store: the security-group
 * catalogue (compiled by the network adapter into one atomic nftables
 * transaction) and each running VM's groups, egress policy and published ports,
 * all applied live, without restarting VMs.
 */
import type { Logger } from 'pino';
import type { MicroVM } from '../core/microvm.js';
import type { EgressPolicy, NetworkManager, VmNetworkSpec } from '../core/ports/network.js';
import type { ResourceStore } from '../core/ports/resources.js';
import type { Store } from '../core/ports/store.js';
import { SG_KIND, type SecurityGroupService, type SecurityGroupSpec } from '../core/security-groups.js';

export interface NetworkControllerOptions {
  network: NetworkManager;
  resources: ResourceStore;
  store: Store;
  groups: SecurityGroupService;
  log: Logger;
  /** Egress of VMs without their own policy (default: deny, so nothing leaves the host unless allowed). */
  defaultEgress: EgressPolicy;
}

export class NetworkController {
  private timer: NodeJS.Timeout | undefined;
  private unsubs: Array<() => void> = [];
  private running: Promise<void> = Promise.resolve();
  /** Last network intent applied per VM, so status-only updates cost nothing. */
  private readonly applied = new Map<string, string>();
  /** Ids of the groups in the catalogue last applied. */
  private known = new Set<string>();

  constructor(private readonly o: NetworkControllerOptions) {}

  async start(): Promise<void> {
    await this.syncPolicy();
    this.unsubs.push(this.o.resources.watch((kind) => kind === SG_KIND && this.schedule()));
    this.unsubs.push(
      this.o.store.watch((c) => {
        if (!c.deleted) void this.syncVm(c.id);
      }),
    );
  }

  stop(): void {
    clearTimeout(this.timer);
    for (const u of this.unsubs) u();
  }

  private schedule(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => void this.syncPolicy(), 20);
  }

  /** The whole catalogue, group references resolved to ids. */
  async syncPolicy(): Promise<void> {
    const run = async (): Promise<void> => {
      const all = await this.o.resources.list<SecurityGroupSpec>(SG_KIND);
      const byName = new Map(all.map((g) => [`${g.tenant}/${g.name}`, g.id]));
      const securityGroups = all.map((g) => ({
        id: g.id,
        tenant: g.tenant,
        ...(g.spec.description ? { description: g.spec.description } : {}),
        rules: g.spec.rules.map((r) => (r.group !== undefined ? { ...r, group: byName.get(`${g.tenant}/${r.group}`) ?? r.group } : r)),
      }));
      await this.o.network.applyPolicy({ securityGroups });
      this.known = new Set(securityGroups.map((g) => g.id));
    };
    this.running = this.running.then(run, run).catch((e: Error) => this.o.log.error({ err: e.message }, 'network policy sync failed'));
    await this.running;
  }

  /** What the agent passes to NetworkManager.setup for this VM. */
  async specFor(vm: MicroVM): Promise<VmNetworkSpec> {
    const nics = vm.spec.networkInterfaces?.length ? vm.spec.networkInterfaces.map((n) => ({ name: n.name, ...(n.mac ? { mac: n.mac } : {}), ...(n.ip ? { ip: n.ip } : {}) })) : [{ name: 'eth0' }];
    const securityGroups = await this.o.groups.resolve(vm.tenant, vm.spec.securityGroups ?? []);
    // A group created just before the VM (by another process, in cluster mode) may not have been
    // applied yet: apply the catalogue now rather than fail the VM's network setup.
    if (securityGroups.some((g) => !this.known.has(g))) await this.syncPolicy();
    return {
      id: vm.id,
      tenant: vm.tenant,
      hostname: vm.name,
      nics,
      securityGroups,
      egress: vm.spec.egress ?? this.o.defaultEgress,
      ports: (vm.spec.ports ?? []).map((p) => ({ ...p })),
    };
  }

  /** Apply a running VM's current groups/egress/ports (no-op for VMs without a network). */
  async syncVm(id: string): Promise<void> {
    try {
      const vm = await this.o.store.getVm(id);
      if (!vm) return;
      const intent = JSON.stringify([vm.spec.securityGroups, vm.spec.egress, vm.spec.ports]);
      if (this.applied.get(id) === intent) return;
      if (!(await this.o.network.get(id))) return;
      const spec = await this.specFor(vm);
      this.applied.set(id, intent);
      await this.o.network.update(id, { securityGroups: spec.securityGroups ?? [], egress: spec.egress ?? null, ports: spec.ports ?? [] });
    } catch (e) {
      this.o.log.warn({ vm: id, err: (e as Error).message }, 'network update failed');
    }
  }
}
