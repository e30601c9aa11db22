/**
 * Kubernetes adapter of the audit port (cluster mode, ADR 0015): one core/v1 Event per entry in
 * the system namespace, the entry as JSON in an annotation, labelled for the server-side filters
 * (tenant, result). `seq` is the Event's resourceVersion (an etcd revision, increasing across the
 * cluster, as for VM events in ADR 0010). Events live as long as the API server's --event-ttl
 * (1 h by default): the queryable log is recent history; every entry is also written as a
 * structured `audit` log line (AuditService), which a log shipper keeps for the long term.
 */
import { CoreV1Api, KubeConfig, type CoreV1Event } from '@kubernetes/client-node';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { AuditEntry, AuditLog, AuditQuery, NewAuditEntry } from '../../core/ports/audit.js';
import type { Page } from '../../core/ports/store.js';
import { fromK8sError } from '../../k8s/errors.js';
import { LABEL_TENANT, TenantNamespaces, isLabelValue } from '../../k8s/microvm-object.js';
import { DEFAULT_SYSTEM_NAMESPACE } from './tenant-store.js';

export const LABEL_AUDIT = 'microvm.service/audit';
export const LABEL_AUDIT_RESULT = 'microvm.service/audit-result';
export const ANN_AUDIT = 'microvm.service/audit';

export class KubernetesAuditLog implements AuditLog {
  private readonly core: CoreV1Api;
  private readonly namespace: string;

  constructor(
    kubeConfig: KubeConfig,
    private readonly tn: TenantNamespaces,
    o: { systemNamespace?: string; component?: string } = {},
  ) {
    this.core = kubeConfig.makeApiClient(CoreV1Api);
    this.namespace = o.systemNamespace ?? DEFAULT_SYSTEM_NAMESPACE;
    this.component = o.component ?? 'microvm-api';
  }
  private readonly component: string;

  async append(e: NewAuditEntry): Promise<AuditEntry> {
    const labels: Record<string, string> = { ...this.tn.selector().reduce((m, s) => ({ ...m, [s.split('=')[0]!]: s.split('=')[1]! }), {}), [LABEL_AUDIT]: 'true', [LABEL_AUDIT_RESULT]: e.result };
    if (e.tenant && isLabelValue(e.tenant)) labels[LABEL_TENANT] = e.tenant;
    const time = new Date(e.time);
    const body: CoreV1Event = {
      metadata: { generateName: 'audit-', namespace: this.namespace, labels, annotations: { [ANN_AUDIT]: JSON.stringify(e) } },
      involvedObject: { kind: 'Namespace', name: this.namespace, namespace: this.namespace, apiVersion: 'v1' },
      reason: e.operation.slice(0, 128),
      message: `${e.subject ?? 'anonymous'} ${e.operation} ${e.result} (${e.status})`,
      type: e.result === 'allowed' ? 'Normal' : 'Warning',
      source: { component: this.component },
      firstTimestamp: time,
      lastTimestamp: time,
      count: 1,
    };
    let created: CoreV1Event;
    try {
      created = await this.core.createNamespacedEvent({ namespace: this.namespace, body });
    } catch (err) {
      throw fromK8sError(err, 'append audit entry');
    }
    return { seq: Number(created.metadata!.resourceVersion), ...e };
  }

  async query(q: AuditQuery): Promise<Page<AuditEntry>> {
    const sel = [...this.tn.selector(), `${LABEL_AUDIT}=true`];
    if (q.tenant !== undefined) {
      if (!isLabelValue(q.tenant)) return { items: [] };
      sel.push(`${LABEL_TENANT}=${q.tenant}`);
    }
    if (q.result !== undefined) sel.push(`${LABEL_AUDIT_RESULT}=${q.result}`);
    let after = 0;
    if (q.cursor) {
      const c = Buffer.from(q.cursor, 'base64url').toString();
      if (!/^a:\d+$/.test(c)) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'cursor: malformed cursor', { violations: [{ field: 'cursor', message: 'malformed cursor' }] });
      after = Number(c.slice(2));
    }
    const entries: AuditEntry[] = [];
    let cont: string | undefined;
    do {
      let page;
      try {
        page = await this.core.listNamespacedEvent({ namespace: this.namespace, labelSelector: sel.join(','), limit: 500, ...(cont ? { _continue: cont } : {}) });
      } catch (err) {
        throw fromK8sError(err, 'query audit log');
      }
      for (const ev of page.items) {
        const raw = ev.metadata?.annotations?.[ANN_AUDIT];
        const seq = Number(ev.metadata?.resourceVersion);
        if (!raw || !(seq > after)) continue;
        const e = { seq, ...(JSON.parse(raw) as NewAuditEntry) };
        if (q.subject !== undefined && e.subject !== q.subject) continue;
        if (q.keyId !== undefined && e.keyId !== q.keyId) continue;
        if (q.operation !== undefined && e.operation !== q.operation) continue;
        if (q.resource !== undefined && e.resource !== q.resource) continue;
        if (q.resourceId !== undefined && e.resourceId !== q.resourceId) continue;
        if (q.since !== undefined && e.time < q.since) continue;
        if (q.until !== undefined && e.time >= q.until) continue;
        entries.push(e);
      }
      cont = page.metadata?._continue;
    } while (cont);
    entries.sort((a, b) => a.seq - b.seq);
    const limit = Math.min(Math.max(q.limit ?? 100, 1), 1000);
    const out: Page<AuditEntry> = { items: entries.slice(0, limit) };
    if (entries.length > limit) out.nextCursor = Buffer.from(`a:${entries[limit - 1]!.seq}`).toString('base64url');
    return out;
  }
}
