/**
 * Use cases of tenants and API keys (admin and tenant-admin operations). Like MicroVMService,
 * they enforce tenancy themselves: a tenant's principals see only their tenant; a foreign
 * object is NOT_FOUND, exactly like a missing one.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { ROLE_RANK, SYSTEM_TENANT, listTenant, type Principal } from './authz.js';
import { ErrorCodes, MvmError, notFound, validationError } from './errors.js';
import { newId, type MicroVM } from './microvm.js';
import type { ApiKeyRecord, ApiKeyStore } from './ports/apikeys.js';
import type { ResourceStore } from './ports/resources.js';
import type { Page, Store } from './ports/store.js';
import type { Tenant, TenantStore } from './ports/tenants.js';
import { QUOTA_RESOURCES, type Quotas } from './quota.js';
import { validateImagePolicy } from './image-policy.js';
import { LIFETIME_PATTERN, type ApiKeyT, type CreateApiKeyRequestT, type CreateTenantRequestT, type TenantQuotasT, type TenantUsageT, type UpdateTenantRequestT } from './tenancy-schema.js';

/** `0`, `<n>Mi`, `<n>Gi`, `<n>Ti` in MiB. */
export function parseBigQuantityMiB(q: string, field: string): number {
  if (q === '0') return 0;
  const m = /^([1-9][0-9]*)(Mi|Gi|Ti)$/.exec(q);
  if (!m) throw validationError(field, `must be a quantity like 512Mi, 8Gi or 1Ti, got ${JSON.stringify(q)}`);
  return Number(m[1]) * (m[2] === 'Ti' ? 1024 * 1024 : m[2] === 'Gi' ? 1024 : 1);
}

/** The tenant's quotas in the units the admission check counts. */
export function limitsOf(t: Pick<Tenant, 'quotas'>): Quotas {
  const q = t.quotas ?? {};
  const out: Quotas = {};
  if (q.vms !== undefined) out.vms = q.vms;
  if (q.vcpu !== undefined) out.vcpu = q.vcpu;
  if (q.memory !== undefined) out.memoryMiB = parseBigQuantityMiB(q.memory, 'quotas.memory');
  if (q.disk !== undefined) out.diskMiB = parseBigQuantityMiB(q.disk, 'quotas.disk');
  if (q.snapshots !== undefined) out.snapshots = q.snapshots;
  if (q.volumes !== undefined) out.volumes = q.volumes;
  if (q.hostPorts !== undefined) out.hostPorts = q.hostPorts;
  return out;
}

function validateQuotas(q: TenantQuotasT | undefined): void {
  if (q?.memory !== undefined) parseBigQuantityMiB(q.memory, 'quotas.memory');
  if (q?.disk !== undefined) parseBigQuantityMiB(q.disk, 'quotas.disk');
}

// ---- API key tokens ------------------------------------------------------

/** Token format: `mvmk_<key id>_<43 chars of base64url secret>`; the id finds the record, the hash proves the secret. */
export const API_KEY_PREFIX = 'mvmk_';
const TOKEN_RE = /^mvmk_(key-[0-9a-z]{14})_([A-Za-z0-9_-]{43})$/;

export const hashSecret = (secret: string): string => createHash('sha256').update(secret).digest('hex');

export function parseApiKeyToken(token: string): { id: string; secret: string } | undefined {
  const m = TOKEN_RE.exec(token);
  return m ? { id: m[1]!, secret: m[2]! } : undefined;
}

export function secretMatches(secret: string, hashHex: string): boolean {
  const a = Buffer.from(hashSecret(secret), 'hex');
  const b = Buffer.from(hashHex, 'hex');
  return a.length === b.length && timingSafeEqual(a, b);
}

export function keyState(k: ApiKeyRecord, now = Date.now()): ApiKeyT['state'] {
  if (k.revokedAt) return 'revoked';
  if (k.expiresAt && Date.parse(k.expiresAt) <= now) return 'expired';
  return 'active';
}

export function keyView(k: ApiKeyRecord, now = Date.now()): ApiKeyT {
  const { secretHash: _hidden, ...rest } = k;
  return { ...rest, state: keyState(k, now) };
}

function parseLifetimeMs(s: string): number {
  const m = new RegExp(LIFETIME_PATTERN).exec(s);
  if (!m) throw validationError('expiresIn', 'must be like 3600s, 90m, 12h or 30d (at most 6 digits)');
  return Number(m[0].slice(0, -1)) * { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[m[1] as 's' | 'm' | 'h' | 'd'];
}

// ---- the use cases ---------------------------------------------------------

export interface DeleteTenantResult {
  tenant: string;
  cascade: boolean;
  microvms: string[];
  apiKeys: number;
  reservations: number;
  resources: number;
}

export interface TenantServiceOptions {
  /** Other tenant-owned resources (security groups, snapshots, ...): counted and cascaded on delete. */
  resources?: ResourceStore;
  resourceKinds?: string[];
  /** Called when keys stop being valid (revoked, or their tenant deleted), e.g. to drop authentication caches. */
  onKeysInvalidated?: (ids: string[]) => void;
}

export class TenantService {
  constructor(
    private readonly store: Store,
    private readonly tenants: TenantStore,
    private readonly keys: ApiKeyStore,
    private readonly opts: TenantServiceOptions = {},
  ) {}

  /** The system tenant (admins' own; where VMs created by the admin token live) always exists. */
  async ensureSystemTenant(): Promise<void> {
    if (await this.tenants.getTenant(SYSTEM_TENANT)) return;
    const now = new Date().toISOString();
    await this.tenants
      .createTenant({ id: SYSTEM_TENANT, displayName: 'System tenant', quotas: {}, resourceVersion: '0', createdAt: now, updatedAt: now })
      .catch((e: unknown) => {
        if (!(e instanceof MvmError && e.code === ErrorCodes.ALREADY_EXISTS)) throw e;
      });
  }

  /** Admins see every tenant; others only their own (a foreign one is NOT_FOUND). */
  async get(p: Principal, id: string): Promise<Tenant> {
    if (p.role !== 'admin' && id !== p.tenant) throw notFound('tenant', id);
    const t = await this.tenants.getTenant(id);
    if (!t) throw notFound('tenant', id);
    return t;
  }

  async list(_p: Principal, o: { limit?: number; cursor?: string }): Promise<Page<Tenant>> {
    return this.tenants.listTenants(o);
  }

  async create(_p: Principal, req: CreateTenantRequestT): Promise<Tenant> {
    validateQuotas(req.quotas);
    validateImagePolicy(req.imagePolicy, 'imagePolicy');
    const now = new Date().toISOString();
    return this.tenants.createTenant({
      id: req.id,
      ...(req.displayName !== undefined ? { displayName: req.displayName } : {}),
      quotas: req.quotas ?? {},
      ...(req.labels ? { labels: req.labels } : {}),
      ...(req.imagePolicy ? { imagePolicy: req.imagePolicy } : {}),
      resourceVersion: '0',
      createdAt: now,
      updatedAt: now,
    });
  }

  async update(p: Principal, id: string, req: UpdateTenantRequestT, ifMatch?: string): Promise<Tenant> {
    await this.get(p, id);
    validateQuotas(req.quotas);
    validateImagePolicy(req.imagePolicy, 'imagePolicy');
    return this.tenants.updateTenant(
      id,
      (t) => {
        if (req.displayName !== undefined) t.displayName = req.displayName;
        if (req.quotas !== undefined) t.quotas = req.quotas;
        if (req.labels !== undefined) t.labels = req.labels;
        // Replaced whole; {} drops the tenant's overrides (the global policy applies again).
        if (req.imagePolicy !== undefined) {
          if (Object.keys(req.imagePolicy).length) t.imagePolicy = req.imagePolicy;
          else delete t.imagePolicy;
        }
        return t;
      },
      ifMatch,
    );
  }

  /** Refused (CONFLICT) while the tenant owns microVMs or reserved snapshots/volumes, unless `cascade`. */
  async delete(p: Principal, id: string, o: { cascade?: boolean; ifMatch?: string } = {}): Promise<DeleteTenantResult> {
    await this.get(p, id);
    if (id === SYSTEM_TENANT) throw new MvmError(ErrorCodes.CONFLICT, `the system tenant ${SYSTEM_TENANT} cannot be deleted`);
    const vms: MicroVM[] = [];
    let cursor: string | undefined;
    do {
      const page = await this.store.listVms({ tenant: id, limit: 1000, ...(cursor ? { cursor } : {}) });
      vms.push(...page.items);
      cursor = page.nextCursor;
    } while (cursor);
    const reservations = await this.tenants.reservations(id);
    const others: Array<{ kind: string; id: string }> = [];
    for (const kind of this.opts.resourceKinds ?? []) {
      for (const r of (await this.opts.resources?.list(kind, { tenant: id })) ?? []) others.push({ kind, id: r.id });
    }
    if (!o.cascade && (vms.length > 0 || reservations.length > 0 || others.length > 0)) {
      const kinds = [...new Set(others.map((r) => r.kind))];
      throw new MvmError(
        ErrorCodes.CONFLICT,
        `tenant ${id} still owns ${vms.length} microVM(s), ${reservations.length} snapshot/volume reservation(s) and ${others.length} other resource(s)` +
          `${kinds.length ? ` (${kinds.join(', ')})` : ''}; delete them first or pass cascade=true`,
        { details: { microvms: vms.length, reservations: reservations.length, resources: others.length } },
      );
    }
    // The record goes first so nothing new is admitted for the tenant meanwhile.
    await this.tenants.deleteTenant(id, o.ifMatch);
    const keyIds: string[] = [];
    let kc: string | undefined;
    do {
      const pg = await this.keys.listKeys({ tenant: id, limit: 1000, ...(kc ? { cursor: kc } : {}) });
      keyIds.push(...pg.items.map((k) => k.id));
      kc = pg.nextCursor;
    } while (kc);
    const apiKeys = await this.keys.deleteKeysOfTenant(id);
    this.opts.onKeysInvalidated?.(keyIds);
    for (const vm of vms) {
      if (vm.status.phase === 'Deleting') continue;
      await this.store
        .updateVm(vm.id, (cur) => {
          cur.status.phase = 'Deleting';
          return cur;
        })
        .catch((e: unknown) => {
          if (!(e instanceof MvmError && e.code === ErrorCodes.NOT_FOUND)) throw e;
        });
    }
    for (const r of reservations) await this.tenants.release(id, r.kind, r.id);
    for (const r of others) await this.opts.resources?.delete(r.kind, r.id);
    return { tenant: id, cascade: o.cascade === true, microvms: vms.map((v) => v.id), apiKeys, reservations: reservations.length, resources: others.length };
  }

  async usage(p: Principal, id: string): Promise<TenantUsageT> {
    const t = await this.get(p, id);
    const used = await this.tenants.usage(id);
    const limits = limitsOf(t);
    const out = { tenant: id } as TenantUsageT;
    for (const r of QUOTA_RESOURCES) out[r] = { used: used[r], limit: limits[r] ?? null };
    return out;
  }

  // ---- API keys ----------------------------------------------------------

  /** Creates a key and returns its token once; only the hash is stored. */
  async createKey(p: Principal, req: CreateApiKeyRequestT, o: { tenant?: string } = {}): Promise<{ key: ApiKeyT; token: string }> {
    const tenant = o.tenant && o.tenant !== p.tenant ? (p.role === 'admin' ? o.tenant : undefined) : p.tenant;
    if (tenant === undefined) throw new MvmError(ErrorCodes.PERMISSION_DENIED, `only admins may create keys in another tenant (you are in tenant ${p.tenant})`);
    if (!(await this.tenants.getTenant(tenant))) throw notFound('tenant', tenant);
    const role = req.role ?? 'member';
    if (ROLE_RANK[role] > ROLE_RANK[p.role]) {
      throw new MvmError(ErrorCodes.PERMISSION_DENIED, `a ${p.role} cannot create a key with the more powerful role ${role}`, { violations: [{ field: 'role', message: 'outranks the caller' }] });
    }
    if (role === 'admin' && tenant !== SYSTEM_TENANT) {
      throw new MvmError(ErrorCodes.VALIDATION_FAILED, `admin keys exist only in the system tenant ${SYSTEM_TENANT}`, { violations: [{ field: 'role', message: 'admin only in the system tenant' }] });
    }
    const now = Date.now();
    let expiresAt: string | undefined;
    if (req.expiresAt !== undefined && req.expiresIn !== undefined) throw validationError('expiresAt', 'give expiresAt or expiresIn, not both');
    if (req.expiresAt !== undefined) {
      const t = Date.parse(req.expiresAt);
      if (!Number.isFinite(t)) throw validationError('expiresAt', 'must be an RFC 3339 date-time');
      if (t <= now) throw validationError('expiresAt', 'must be in the future');
      expiresAt = new Date(t).toISOString();
    } else if (req.expiresIn !== undefined) {
      expiresAt = new Date(now + parseLifetimeMs(req.expiresIn)).toISOString();
    }
    const id = newId('key');
    const secret = randomBytes(32).toString('base64url');
    const rec = await this.keys.createKey({
      id,
      tenant,
      name: req.name,
      role,
      secretHash: hashSecret(secret),
      createdAt: new Date(now).toISOString(),
      createdBy: p.subject,
      ...(expiresAt ? { expiresAt } : {}),
    });
    return { key: keyView(rec, now), token: `${API_KEY_PREFIX}${id}_${secret}` };
  }

  async listKeys(p: Principal, o: { tenant?: string; limit?: number; cursor?: string }): Promise<Page<ApiKeyT>> {
    const tenant = listTenant(p, o.tenant);
    const page = await this.keys.listKeys({ ...(tenant !== undefined ? { tenant } : {}), ...(o.limit ? { limit: o.limit } : {}), ...(o.cursor ? { cursor: o.cursor } : {}) });
    const now = Date.now();
    return { items: page.items.map((k) => keyView(k, now)), ...(page.nextCursor ? { nextCursor: page.nextCursor } : {}) };
  }

  async getKey(p: Principal, id: string): Promise<ApiKeyT> {
    const k = await this.keys.getKey(id);
    if (!k || (p.role !== 'admin' && k.tenant !== p.tenant)) throw notFound('API key', id);
    return keyView(k);
  }

  async revokeKey(p: Principal, id: string): Promise<ApiKeyT> {
    await this.getKey(p, id);
    const k = await this.keys.revokeKey(id, new Date().toISOString());
    this.opts.onKeysInvalidated?.([id]);
    return keyView(k);
  }
}
