/**
 * Atomic quota admission for MicroVM creates in Kubernetes mode (ADR 0015; ADR 0010 left it
 * check-then-write). The tenant's Namespace is the lock: before the MicroVM is created, its
 * resources are recorded as a pending admission in the namespace annotation
 * `microvm.service/admissions`, written with the namespace's resourceVersion. Every admitter reads
 * the namespace first, then lists the MicroVMs, counts them plus the pending admissions whose VM
 * is not listed yet, checks the limits, and writes its entry conditionally: a concurrent admitter
 * changed the namespace → 409 → read again and count it. A VM that exists is counted once (its
 * pending entry is recognised by name); an entry is removed after the create (success or not), and
 * one left by a crashed writer stops counting after `ttlMs`. Resizes (spec updates that grow vCPU or
 * memory, only while Stopped) stay check-then-write.
 */
import { CoreV1Api, type V1Namespace } from '@kubernetes/client-node';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import { checkQuota, type Quotas, type Usage, type VmResources } from '../../core/quota.js';
import { fromK8sError, httpStatus } from '../../k8s/errors.js';

export const ANN_ADMISSIONS = 'microvm.service/admissions';

interface Pending extends VmResources {
  name: string;
  /** ms since the epoch; also identifies the entry for its release. */
  at: number;
}

export interface AdmissionOptions {
  core: CoreV1Api;
  /** Create the tenant's namespace (as the store does on demand). */
  ensureNamespace: (namespace: string, tenant: string) => Promise<void>;
  ttlMs?: number;
  maxRetries?: number;
}

const pendingOf = (ns: V1Namespace): Pending[] => {
  try {
    return JSON.parse(ns.metadata?.annotations?.[ANN_ADMISSIONS] ?? '[]') as Pending[];
  } catch {
    return [];
  }
};

export class NamespaceAdmission {
  constructor(private readonly o: AdmissionOptions) {}

  private async read(namespace: string): Promise<V1Namespace | undefined> {
    try {
      return await this.o.core.readNamespace({ name: namespace });
    } catch (e) {
      if (httpStatus(e) === 404) return undefined;
      throw fromK8sError(e, `read namespace ${namespace}`);
    }
  }

  private async write(ns: V1Namespace, entries: Pending[]): Promise<void> {
    ns.metadata!.annotations = { ...(ns.metadata!.annotations ?? {}), [ANN_ADMISSIONS]: JSON.stringify(entries) };
    await this.o.core.replaceNamespace({ name: ns.metadata!.name!, body: ns });
  }

  /**
   * Admit one more VM named `name` with `res`, or QUOTA_EXCEEDED. `usage` lists the namespace's
   * MicroVMs (adding their names to the set). Returns the release of the pending entry.
   */
  async reserve(namespace: string, tenant: string, name: string, res: VmResources, limits: Quotas, usage: (names: Set<string>) => Promise<Usage>): Promise<() => Promise<void>> {
    const ttl = this.o.ttlMs ?? 60_000;
    const max = this.o.maxRetries ?? 50;
    for (let attempt = 0; ; attempt++) {
      const ns = await this.read(namespace);
      if (!ns) {
        await this.o.ensureNamespace(namespace, tenant);
        continue;
      }
      const names = new Set<string>();
      const used = await usage(names);
      const now = Date.now();
      const live = pendingOf(ns).filter((p) => !names.has(p.name) && now - p.at < ttl && p.name !== name);
      for (const p of live) {
        used.vms += 1;
        used.vcpu += p.vcpu;
        used.memoryMiB += p.memoryMiB;
        used.diskMiB += p.diskMiB;
        used.hostPorts += p.hostPorts ?? 0;
      }
      checkQuota(tenant, limits, used, { vms: 1, ...res });
      const mine: Pending = { name, ...res, at: now };
      try {
        await this.write(ns, [...live, mine]);
        return () => this.release(namespace, mine);
      } catch (e) {
        if (httpStatus(e) !== 409) throw fromK8sError(e, `admit microVM ${name} in tenant ${tenant}`);
        if (attempt >= max) throw new MvmError(ErrorCodes.UNAVAILABLE, `quota admission of ${name} in tenant ${tenant}: still conflicting after ${attempt + 1} attempts; retry`);
        await new Promise((r) => setTimeout(r, Math.random() * Math.min(200, 5 * (attempt + 1))));
      }
    }
  }

  private async release(namespace: string, mine: Pending): Promise<void> {
    for (let attempt = 0; attempt < 10; attempt++) {
      const ns = await this.read(namespace).catch(() => undefined);
      if (!ns) return;
      const all = pendingOf(ns);
      const rest = all.filter((p) => !(p.name === mine.name && p.at === mine.at));
      if (rest.length === all.length) return;
      try {
        await this.write(ns, rest);
        return;
      } catch (e) {
        if (httpStatus(e) !== 409) return; // it expires after ttlMs anyway
      }
    }
  }
}
