/**
 * Kubernetes adapter of the idempotency port (cluster mode, ADR 0015): one ConfigMap per claimed
 * key in the system namespace, named by a hash of the scope. `create` is the atomic "SET NX" (a
 * 409 means another request or replica holds the key); taking over a stale or expired claim is a
 * replace with the read resourceVersion, so two replicas never both win. Expired ConfigMaps are
 * purged at most once a minute on the way.
 */
import { createHash } from 'node:crypto';
import { CoreV1Api, KubeConfig, type V1ConfigMap } from '@kubernetes/client-node';
import type { BeginResult, IdempotencyStore, StoredResponse } from '../../core/ports/idempotency.js';
import { fromK8sError, httpStatus } from '../../k8s/errors.js';
import { TenantNamespaces } from '../../k8s/microvm-object.js';
import { DEFAULT_SYSTEM_NAMESPACE } from './tenant-store.js';

export const LABEL_IDEMPOTENCY = 'microvm.service/idempotency';

interface Claim {
  fingerprint: string;
  state: 'pending' | 'done';
  createdMs: number;
  expiresMs: number;
  response?: StoredResponse;
}

export class KubernetesIdempotencyStore implements IdempotencyStore {
  private readonly core: CoreV1Api;
  private readonly namespace: string;
  private lastPurge = 0;

  constructor(
    kubeConfig: KubeConfig,
    private readonly tn: TenantNamespaces,
    o: { systemNamespace?: string; now?: () => number } = {},
  ) {
    this.core = kubeConfig.makeApiClient(CoreV1Api);
    this.namespace = o.systemNamespace ?? DEFAULT_SYSTEM_NAMESPACE;
    this.now = o.now ?? Date.now;
  }
  private readonly now: () => number;

  private name(scope: string): string {
    return `idem-${this.tn.partition ? `${this.tn.partition}-` : ''}${createHash('sha256').update(scope).digest('hex').slice(0, 40)}`;
  }

  private body(name: string, c: Claim, base?: V1ConfigMap): V1ConfigMap {
    const labels: Record<string, string> = { [LABEL_IDEMPOTENCY]: 'true' };
    if (this.tn.partition) labels['microvm.service/partition'] = this.tn.partition;
    return { ...(base ?? {}), metadata: { ...(base?.metadata ?? {}), name, namespace: this.namespace, labels }, data: { claim: JSON.stringify(c) } };
  }

  private async read(name: string): Promise<{ cm: V1ConfigMap; claim: Claim } | undefined> {
    try {
      const cm = await this.core.readNamespacedConfigMap({ name, namespace: this.namespace });
      return { cm, claim: JSON.parse(cm.data?.claim ?? '{}') as Claim };
    } catch (e) {
      if (httpStatus(e) === 404) return undefined;
      throw fromK8sError(e, 'read idempotency record');
    }
  }

  async begin(scope: string, fingerprint: string, opts: { ttlMs: number; lockMs: number }): Promise<BeginResult> {
    const now = this.now();
    if (now - this.lastPurge > 60_000) {
      this.lastPurge = now;
      void this.purge(now).catch(() => undefined);
    }
    const name = this.name(scope);
    const fresh: Claim = { fingerprint, state: 'pending', createdMs: now, expiresMs: now + opts.ttlMs };
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        await this.core.createNamespacedConfigMap({ namespace: this.namespace, body: this.body(name, fresh) });
        return { state: 'new' };
      } catch (e) {
        if (httpStatus(e) !== 409) throw fromK8sError(e, 'claim idempotency key');
      }
      const cur = await this.read(name);
      if (!cur) continue; // deleted meanwhile (abandoned): claim again
      const c = cur.claim;
      if (c.expiresMs >= now) {
        if (c.fingerprint !== fingerprint) return { state: 'mismatch' };
        if (c.state === 'done' && c.response) return { state: 'done', response: c.response };
        if (now - c.createdMs < opts.lockMs) return { state: 'in-progress' };
      }
      // Expired, or a claim whose request died: take it over, unless another replica does first.
      try {
        await this.core.replaceNamespacedConfigMap({ name, namespace: this.namespace, body: this.body(name, fresh, cur.cm) });
        return { state: 'new' };
      } catch (e) {
        if (httpStatus(e) === 409) return { state: 'in-progress' };
        if (httpStatus(e) !== 404) throw fromK8sError(e, 'claim idempotency key');
      }
    }
    return { state: 'in-progress' };
  }

  async complete(scope: string, response: StoredResponse): Promise<void> {
    const name = this.name(scope);
    for (let attempt = 0; attempt < 5; attempt++) {
      const cur = await this.read(name);
      if (!cur) return;
      try {
        await this.core.replaceNamespacedConfigMap({ name, namespace: this.namespace, body: this.body(name, { ...cur.claim, state: 'done', response }, cur.cm) });
        return;
      } catch (e) {
        if (httpStatus(e) !== 409) throw fromK8sError(e, 'store idempotent response');
      }
    }
  }

  /** Deletes a pending claim only (a completed response stays for its retries), with the read resourceVersion. */
  async abandon(scope: string): Promise<void> {
    const name = this.name(scope);
    const cur = await this.read(name);
    if (!cur || cur.claim.state !== 'pending') return;
    try {
      await this.core.deleteNamespacedConfigMap({ name, namespace: this.namespace, body: { preconditions: { resourceVersion: cur.cm.metadata!.resourceVersion! } } });
    } catch (e) {
      // 404: gone already; 409: completed (or taken over) meanwhile, so no longer the claim to forget.
      if (httpStatus(e) !== 404 && httpStatus(e) !== 409) throw fromK8sError(e, 'abandon idempotency key');
    }
  }

  private async purge(now: number): Promise<void> {
    const sel = [`${LABEL_IDEMPOTENCY}=true`, ...(this.tn.partition ? [`microvm.service/partition=${this.tn.partition}`] : [])].join(',');
    const list = await this.core.listNamespacedConfigMap({ namespace: this.namespace, labelSelector: sel });
    for (const cm of list.items) {
      const c = JSON.parse(cm.data?.claim ?? '{}') as Partial<Claim>;
      if ((c.expiresMs ?? 0) >= now) continue;
      await this.core
        .deleteNamespacedConfigMap({ name: cm.metadata!.name!, namespace: this.namespace, body: { preconditions: { resourceVersion: cm.metadata!.resourceVersion! } } })
        .catch(() => undefined);
    }
  }
}
