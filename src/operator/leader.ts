/**
 * Leader election on a coordination.k8s.io/v1 Lease, as client-go's leaderelection does:
 *
 * - acquire: the Lease is free (no holder) or expired (renewTime + leaseDurationSeconds < now,
 *   measured on our clock from when we last saw it change, as client-go does, so clock skew between
 *   replicas does not matter), then a replace conditioned on the read resourceVersion: of two
 *   candidates exactly one wins, the other gets 409;
 * - renew every `retryPeriodMs`; a leader that could not renew for `renewDeadlineMs` steps down
 *   (onStoppedLeading) before its lease can expire, so two leaders never overlap;
 * - release on graceful stop (holder cleared) so a successor need not wait for expiry.
 */
import { CoordinationV1Api, type KubeConfig, type V1Lease } from '@kubernetes/client-node';
import { microTime } from '../k8s/cluster.js';
import { httpStatus } from '../k8s/errors.js';

export interface LeaderElectionOptions {
  kubeConfig: KubeConfig;
  namespace: string;
  name: string;
  identity: string;
  leaseDurationMs?: number;
  renewDeadlineMs?: number;
  retryPeriodMs?: number;
  onStartedLeading: () => void | Promise<void>;
  onStoppedLeading: () => void;
  onNewLeader?: (identity: string) => void;
  log?: (msg: string, o?: Record<string, unknown>, level?: 'info' | 'warn') => void;
}

/** How often a failure that keeps repeating is logged again (with how many times it happened meanwhile). */
const REPEAT_LOG_MS = 60_000;

/**
 * What a failed Lease request means for whoever runs the operator: a missing namespace or missing
 * rights say which manifest to apply (issue 17: an operator started before deploy/operator/ was
 * applied retried every 2 s with a bare "not found").
 */
export function describeLeaseFailure(e: unknown, namespace: string, name: string): string {
  const status = httpStatus(e);
  const body = (e as { body?: unknown } | undefined)?.body;
  const text = `${typeof body === 'string' ? body : JSON.stringify(body ?? '')} ${(e as Error)?.message ?? ''}`;
  if (status === 404 && text.includes('namespaces') && text.includes(namespace) && /not found/i.test(text)) {
    return `the namespace ${namespace} does not exist, so the leader election Lease ${namespace}/${name} cannot be created: apply deploy/operator/00-namespace.yaml (kubectl apply -f deploy/operator/) first; retrying`;
  }
  if (status === 403) {
    return `not allowed to read or write the Lease ${namespace}/${name}: apply the operator's RBAC (deploy/operator/rbac.yaml) and run as its ServiceAccount; retrying`;
  }
  return `lease request failed: ${(e as Error)?.message ?? String(e)}`;
}

export class LeaderElector {
  private readonly api: CoordinationV1Api;
  private readonly leaseMs: number;
  private readonly renewDeadlineMs: number;
  private readonly retryMs: number;
  private stopped = false;
  private leading = false;
  private observed: { rv: string; holder: string; at: number; durationMs: number } | undefined;
  private lastRenew = 0;
  private timer: NodeJS.Timeout | undefined;
  private loop: Promise<void> | undefined;
  private wake: (() => void) | undefined;
  /** The failure last logged, when, and how many times it repeated since (logged once a minute, not every retry). */
  private failure: { msg: string; at: number; repeats: number } | undefined;

  constructor(private readonly o: LeaderElectionOptions) {
    this.api = o.kubeConfig.makeApiClient(CoordinationV1Api);
    this.leaseMs = o.leaseDurationMs ?? 15_000;
    this.renewDeadlineMs = o.renewDeadlineMs ?? 10_000;
    this.retryMs = o.retryPeriodMs ?? 2_000;
    if (!(this.leaseMs > this.renewDeadlineMs && this.renewDeadlineMs > this.retryMs)) throw new Error('leader election: need leaseDuration > renewDeadline > retryPeriod');
  }

  get isLeader(): boolean {
    return this.leading;
  }

  start(): void {
    this.loop = this.run();
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((r) => {
      this.wake = r;
      this.timer = setTimeout(r, ms);
    });
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      let ok = false;
      try {
        ok = await this.tryAcquireOrRenew();
        if (this.failure) this.o.log?.('lease requests work again', { after: this.failure.msg });
        this.failure = undefined;
      } catch (e) {
        this.logFailure(describeLeaseFailure(e, this.o.namespace, this.o.name), (e as Error)?.message);
      }
      if (this.stopped) break;
      const now = Date.now();
      if (ok) {
        this.lastRenew = now;
        if (!this.leading) {
          this.leading = true;
          this.o.log?.('became leader', { lease: `${this.o.namespace}/${this.o.name}` });
          void Promise.resolve(this.o.onStartedLeading()).catch((e: Error) => this.o.log?.('onStartedLeading failed', { err: e.message }));
        }
      } else if (this.leading && now - this.lastRenew > this.renewDeadlineMs) {
        this.leading = false;
        this.o.log?.('lost leadership (could not renew)', {});
        this.o.onStoppedLeading();
      }
      await this.sleep(this.retryMs);
    }
  }

  /** A new failure is logged at once; the same one again at most every REPEAT_LOG_MS, with its count. */
  private logFailure(msg: string, err: string | undefined): void {
    const now = Date.now();
    const f = this.failure;
    if (f && f.msg === msg && now - f.at < REPEAT_LOG_MS) {
      f.repeats++;
      return;
    }
    this.o.log?.(msg, { err, lease: `${this.o.namespace}/${this.o.name}`, ...(f && f.msg === msg ? { repeatedTimes: f.repeats } : {}) }, 'warn');
    this.failure = { msg, at: now, repeats: 0 };
  }

  private spec(now: Date, acquire: Date | undefined, transitions: number): V1Lease['spec'] {
    return {
      holderIdentity: this.o.identity,
      leaseDurationSeconds: Math.max(1, Math.ceil(this.leaseMs / 1000)),
      acquireTime: microTime(acquire ?? now),
      renewTime: microTime(now),
      leaseTransitions: transitions,
    };
  }

  /** One round: true when we hold the lease after it. */
  private async tryAcquireOrRenew(): Promise<boolean> {
    const { namespace, name } = this.o;
    const now = new Date();
    let lease: V1Lease;
    try {
      lease = await this.api.readNamespacedLease({ name, namespace });
    } catch (e) {
      if (httpStatus(e) !== 404) throw e;
      try {
        await this.api.createNamespacedLease({ namespace, body: { metadata: { name, namespace }, spec: this.spec(now, undefined, 0) } });
        return true;
      } catch (e2) {
        if (httpStatus(e2) === 409) return false;
        throw e2;
      }
    }
    const holder = lease.spec?.holderIdentity ?? '';
    const rv = lease.metadata?.resourceVersion ?? '';
    const durationMs = (lease.spec?.leaseDurationSeconds ?? 15) * 1000;
    if (!this.observed || this.observed.rv !== rv) {
      this.observed = { rv, holder, at: Date.now(), durationMs };
      if (holder && holder !== this.o.identity) this.o.onNewLeader?.(holder);
    }
    const mine = holder === this.o.identity;
    if (!mine && holder && this.observed.at + durationMs > Date.now()) return false;
    const transitions = (lease.spec?.leaseTransitions ?? 0) + (mine ? 0 : 1);
    const acquire = mine && lease.spec?.acquireTime ? new Date(lease.spec.acquireTime) : undefined;
    try {
      await this.api.replaceNamespacedLease({ name, namespace, body: { ...lease, spec: this.spec(now, acquire, transitions) } });
      return true;
    } catch (e) {
      if (httpStatus(e) === 409) return false;
      throw e;
    }
  }

  /** Stop campaigning; a leader releases the lease (holder cleared) so another takes over at once. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    this.wake?.();
    await this.loop;
    if (!this.leading) return;
    this.leading = false;
    try {
      const lease = await this.api.readNamespacedLease({ name: this.o.name, namespace: this.o.namespace });
      if (lease.spec?.holderIdentity === this.o.identity) {
        await this.api.replaceNamespacedLease({
          name: this.o.name,
          namespace: this.o.namespace,
          body: { ...lease, spec: { ...lease.spec, holderIdentity: '', leaseDurationSeconds: 1, renewTime: microTime(), ...(lease.spec?.acquireTime ? { acquireTime: microTime(new Date(lease.spec.acquireTime)) } : {}) } },
        });
      }
    } catch {
      // Best effort: the lease expires anyway.
    }
  }
}
