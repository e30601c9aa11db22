/**
 * API keys for machines: created per tenant, shown once, stored as a SHA-256 hash of a
 * 256-bit random secret, revocable, with an optional expiry and a role.
 * Standalone: SQLite (`api_keys`). Cluster mode: one Secret per key in the tenant's namespace
 * (label `microvm.service/apikey`), holding the hash only.
 */
import type { Role } from '../authz.js';
import type { Page } from './store.js';

export interface ApiKeyRecord {
  id: string;
  tenant: string;
  name: string;
  role: Role;
  /** hex SHA-256 of the secret part of the token. */
  secretHash: string;
  createdAt: string;
  createdBy: string;
  expiresAt?: string;
  revokedAt?: string;
  lastUsedAt?: string;
}

export interface ApiKeyStore {
  /**
   * ALREADY_EXISTS when the id is taken, or when the tenant already has an active key of that name
   * (revoking a key frees its name; expiry does not: an expired key stays until it is revoked).
   * The store keeps expired and revoked keys as they are; their state is the caller's to judge.
   */
  createKey(k: ApiKeyRecord): Promise<ApiKeyRecord>;
  getKey(id: string): Promise<ApiKeyRecord | undefined>;
  listKeys(opts: { tenant?: string; limit?: number; cursor?: string }): Promise<Page<ApiKeyRecord>>;
  /** Sets revokedAt once (revoking twice keeps the first time). NOT_FOUND when missing. */
  revokeKey(id: string, at: string): Promise<ApiKeyRecord>;
  /** Records `at` as lastUsedAt. Best effort: an unknown key is no error (and nothing is created). */
  touchKey(id: string, at: string): Promise<void>;
  /** Deletes every key of the tenant, revoked ones too; returns how many. */
  deleteKeysOfTenant(tenant: string): Promise<number>;
}
