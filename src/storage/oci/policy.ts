/**
 * The image policy at the storage edge (ADR 0024): admission of references (no network) and the
 * check right before a pull, which also says which signature the image needs. The rules are in
 * src/core/image-policy.ts; this adapter parses references, looks up the tenant's overrides and
 * loads the global policy from the environment:
 *
 *   MVM_REGISTRIES_ALLOWED   comma-separated host[:port][/path-prefix] patterns, or * (unset: none)
 *   MVM_IMAGE_POLICY_FILE    JSON {"allowedRegistries": [...], "signatures": [{"scope": "...",
 *                            "publicKeys": ["-----BEGIN PUBLIC KEY-----..."] | "keyPaths": ["cosign.pub"]}]}
 *                            (key paths relative to the file); its registries add to the variable's
 */
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';

import { MvmError, validationError } from '../../core/errors.js';
import {
  checkRegistryAllowed,
  effectivePolicy,
  signatureRequirement,
  validateImagePolicy,
  type EffectiveImagePolicy,
  type GlobalImagePolicy,
  type ImagePolicy,
  type SignatureRequirement,
  type SignatureRule,
} from '../../core/image-policy.js';
import type { ImageAdmission } from '../../core/ports/images.js';
import { type ImageReference, isOciReference, parseImageReference } from './reference.js';

export type TenantLike = string | { id: string; imagePolicy?: ImagePolicy | undefined };

export interface ImagePolicyGateOptions {
  global: GlobalImagePolicy;
  /** The tenant's own overrides (its `imagePolicy`); undefined: none. */
  tenantPolicy?: (tenant: string) => Promise<ImagePolicy | undefined>;
}

/** Parse a reference for `field` (a parse error names that field, not always rootfs.image). */
export function parseReferenceFor(ref: string, field: string): ImageReference {
  try {
    return parseImageReference(ref);
  } catch (e) {
    if (e instanceof MvmError) throw validationError(field, e.violations[0]?.message ?? e.message);
    throw e;
  }
}

export class ImagePolicyGate implements ImageAdmission {
  constructor(private readonly o: ImagePolicyGateOptions) {}

  get global(): GlobalImagePolicy {
    return this.o.global;
  }

  /** The policy in force for a tenant (none: the global one). */
  async effective(tenant?: TenantLike): Promise<EffectiveImagePolicy> {
    if (tenant === undefined) return effectivePolicy(this.o.global);
    if (typeof tenant !== 'string') return effectivePolicy(this.o.global, tenant);
    const imagePolicy = await this.o.tenantPolicy?.(tenant);
    return effectivePolicy(this.o.global, { id: tenant, imagePolicy });
  }

  async admit(ref: string | undefined, field: string, tenant?: TenantLike): Promise<void> {
    if (!isOciReference(ref)) return;
    // A kernel may be a host file (under MVM_KERNEL_DIRS), not a registry reference.
    if (field.startsWith('kernel') && isAbsolute(ref)) return;
    checkRegistryAllowed(await this.effective(tenant), parseReferenceFor(ref, field), field);
  }

  /** Right before a pull (defence in depth): the registry check again, then the signature the image needs. */
  async beforePull(ref: ImageReference, field: string, tenant?: TenantLike): Promise<SignatureRequirement | undefined> {
    const eff = await this.effective(tenant);
    checkRegistryAllowed(eff, ref, field);
    return signatureRequirement(eff, ref);
  }
}

interface PolicyFile {
  allowedRegistries?: string[];
  signatures?: Array<{ scope: string; publicKeys?: string[]; keyPaths?: string[] }>;
}

/** The global image policy from the environment (README "Images"); throws naming the variable on a bad value. */
export function loadImagePolicy(env: NodeJS.ProcessEnv = process.env): GlobalImagePolicy {
  const sources: string[] = [];
  const allowedRegistries: string[] = [];
  const signatures: SignatureRule[] = [];
  if (env.MVM_REGISTRIES_ALLOWED !== undefined && env.MVM_REGISTRIES_ALLOWED.trim() !== '') {
    sources.push('MVM_REGISTRIES_ALLOWED');
    allowedRegistries.push(...env.MVM_REGISTRIES_ALLOWED.split(',').map((x) => x.trim()).filter(Boolean));
  }
  if (env.MVM_IMAGE_POLICY_FILE) {
    const file = resolve(env.MVM_IMAGE_POLICY_FILE);
    sources.push(`MVM_IMAGE_POLICY_FILE ${file}`);
    let j: PolicyFile;
    try {
      j = JSON.parse(readFileSync(file, 'utf8')) as PolicyFile;
    } catch (e) {
      throw new Error(`MVM_IMAGE_POLICY_FILE ${file}: ${(e as Error).message}`);
    }
    if (typeof j !== 'object' || j === null || Array.isArray(j)) throw new Error(`MVM_IMAGE_POLICY_FILE ${file}: must be a JSON object {"allowedRegistries": [...], "signatures": [...]}`);
    for (const k of Object.keys(j)) if (k !== 'allowedRegistries' && k !== 'signatures') throw new Error(`MVM_IMAGE_POLICY_FILE ${file}: unknown field ${JSON.stringify(k)}`);
    if (j.allowedRegistries !== undefined && !Array.isArray(j.allowedRegistries)) throw new Error(`MVM_IMAGE_POLICY_FILE ${file}: allowedRegistries must be an array`);
    allowedRegistries.push(...(j.allowedRegistries ?? []));
    for (const [i, r] of (j.signatures ?? []).entries()) {
      const keys = [...(r.publicKeys ?? [])];
      for (const p of r.keyPaths ?? []) {
        try {
          keys.push(readFileSync(resolve(dirname(file), p), 'utf8'));
        } catch (e) {
          throw new Error(`MVM_IMAGE_POLICY_FILE ${file}: signatures[${i}].keyPaths: ${(e as Error).message}`);
        }
      }
      signatures.push({ scope: r.scope, publicKeys: keys });
    }
  }
  const policy: GlobalImagePolicy = { source: sources.length ? sources.join(' + ') : 'MVM_REGISTRIES_ALLOWED unset: no registry allowed', allowedRegistries, signatures };
  try {
    validateImagePolicy(policy, 'policy');
  } catch (e) {
    throw new Error(`${sources.join(' / ') || 'image policy'}: ${(e as Error).message}`);
  }
  return policy;
}
