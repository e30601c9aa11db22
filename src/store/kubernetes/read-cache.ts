/**
 * The API's informer cache (cluster mode, ADR 0015): a KubernetesStore whose reads of microVMs
 * (`getVm`, `listVms`) are served from memory, kept by the store's own list + watch of every
 * MicroVM of the installation. The cache is updated before watchers are told (so `wait` never
 * re-reads an older object than the event it woke for) and with this process's own writes (read
 * your writes). Older resourceVersions never replace newer ones; a deleted id never comes back
 * (ids are unique). Until the first list completes, on a miss by id, and for cursors the cache did
 * not issue, reads go to the API server. Quota admission still counts from the API server.
 * Reads may lag other writers by the watch latency, as with any informer.
 */
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { MicroVM } from '../../core/microvm.js';
import type { ListOptions, Page } from '../../core/ports/store.js';
import { LABEL_ID, fromObject, type MicroVMObject } from '../../k8s/microvm-object.js';
import { KubernetesStore, type KubernetesStoreOptions } from './k8s-store.js';

const CURSOR_PREFIX = 'cache:';
const rvNum = (o: MicroVMObject): number => Number(o.metadata.resourceVersion ?? 0);

export class CachedKubernetesStore extends KubernetesStore {
  private readonly objects = new Map<string, MicroVMObject>();
  private readonly gone = new Set<string>();
  private synced = false;
  private readonly unsubscribe: () => void;

  constructor(opts: KubernetesStoreOptions = {}) {
    super(opts);
    // A permanent subscription keeps the list + watch (and so the cache) running.
    this.unsubscribe = this.watch(() => undefined);
  }

  /** True once the first full list is in the cache. */
  get cacheReady(): boolean {
    return this.synced;
  }

  protected override cacheObject(id: string, o: MicroVMObject | undefined): void {
    if (!o) {
      this.objects.delete(id);
      this.gone.add(id);
      if (this.gone.size > 100_000) this.gone.clear();
      return;
    }
    if (this.gone.has(id) || o.metadata.labels?.[LABEL_ID] !== id) return;
    const cur = this.objects.get(id);
    if (cur && rvNum(cur) > rvNum(o)) return;
    this.objects.set(id, o);
  }

  protected override cacheSynced(): void {
    this.synced = true;
  }

  override async getVm(id: string): Promise<MicroVM | undefined> {
    const o = this.synced ? this.objects.get(id) : undefined;
    if (o) return fromObject(o, this.tn);
    if (this.synced && this.gone.has(id)) return undefined;
    return super.getVm(id);
  }

  override async listVms(opts: ListOptions = {}): Promise<Page<MicroVM>> {
    let after: string | undefined;
    if (opts.cursor) {
      const c = Buffer.from(opts.cursor, 'base64url').toString();
      if (!c.startsWith(CURSOR_PREFIX)) return super.listVms(opts);
      after = c.slice(CURSOR_PREFIX.length);
      if (!after) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'cursor: malformed cursor', { violations: [{ field: 'cursor', message: 'malformed cursor' }] });
    }
    if (!this.synced) {
      if (after !== undefined) throw new MvmError(ErrorCodes.VALIDATION_FAILED, 'cursor: expired; list again from the start', { violations: [{ field: 'cursor', message: 'expired' }] });
      return super.listVms(opts);
    }
    const limit = Math.min(Math.max(opts.limit ?? 100, 1), 1000);
    const ns = opts.tenant !== undefined ? this.tn.namespaceOf(opts.tenant) : undefined;
    const wanted = Object.entries(opts.labels ?? {});
    const keyOf = (o: MicroVMObject): string => `${o.metadata.namespace}/${o.metadata.name}`;
    const matches = [...this.objects.values()]
      .filter((o) => (ns === undefined || o.metadata.namespace === ns) && (opts.name === undefined || o.metadata.name === opts.name))
      .filter((o) => opts.phase === undefined || o.status?.phase === opts.phase)
      .filter((o) => wanted.every(([k, v]) => o.spec.labels?.[k] === v))
      .filter((o) => after === undefined || keyOf(o) > after)
      .sort((a, b) => (keyOf(a) < keyOf(b) ? -1 : keyOf(a) > keyOf(b) ? 1 : 0));
    const page: Page<MicroVM> = { items: matches.slice(0, limit).map((o) => fromObject(o, this.tn)) };
    if (matches.length > limit) page.nextCursor = Buffer.from(CURSOR_PREFIX + keyOf(matches[limit - 1]!)).toString('base64url');
    return page;
  }

  override async close(): Promise<void> {
    this.unsubscribe();
    await super.close();
  }
}
