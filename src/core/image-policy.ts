/**
 * The admin's image policy (ADR 0024): which registries image references may name, and which
 * images need a sigstore/cosign signature by which public keys. A global policy (environment /
 * policy file) with per-tenant overrides (the tenant's `imagePolicy`, admins only).
 *
 * - `allowedRegistries`: patterns `host[:port][/path-prefix]`, or `*` for any registry. The
 *   default (nothing configured) allows no registry at all: only the built-in `default` images.
 *   A pattern without a port matches only references without one; a path prefix matches whole
 *   path components (`reg/team` matches `reg/team/app`, not `reg/team-b/app`). Hosts compare
 *   case-insensitively, IPv6 in canonical form, `index.docker.io` as `docker.io`, and a reference
 *   without a registry is `docker.io/library/...` (so `docker.io/library` allows the official images).
 * - `signatures`: rules `{scope, publicKeys}`; the most specific scope (longest pattern) that
 *   matches an image decides: the image needs a signature by one of its keys, or none when the
 *   rule has no keys (an exemption inside a wider rule).
 * - A tenant's `allowedRegistries` replaces the global list for that tenant, its `signatures`
 *   replace the global rules; what it leaves out comes from the global policy.
 *
 * Pure logic (no I/O): the storage adapter parses references and pulls (src/storage/oci/policy.ts).
 */
import { createPublicKey } from 'node:crypto';
import { MvmError, ErrorCodes, validationError } from './errors.js';

export interface SignatureRule {
  /** `host[:port][/path-prefix]` or `*`. */
  scope: string;
  /** PEM public keys (ECDSA, Ed25519 or RSA); an image in scope needs a signature by one of them. Empty: no signature needed. */
  publicKeys: string[];
}

export interface ImagePolicy {
  allowedRegistries?: string[];
  signatures?: SignatureRule[];
}

/** Where the global policy came from, for error messages (e.g. `MVM_REGISTRIES_ALLOWED`). */
export interface GlobalImagePolicy extends ImagePolicy {
  source: string;
}

export interface RegistryPattern {
  raw: string;
  /** `*`: every registry. */
  any: boolean;
  /** Canonical `host[:port]`. */
  registry: string;
  pathPrefix?: string;
}

/** What the policy checks of a reference (see src/storage/oci/reference.ts). */
export interface PolicyImageRef {
  registry: string;
  repository: string;
  canonical: string;
}

const LABEL = '[a-z0-9](?:[a-z0-9-]*[a-z0-9])?';
const HOSTNAME = new RegExp(`^${LABEL}(?:\\.${LABEL})*$`);
const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;

/**
 * Canonical `host[:port]` of a registry: lower case, IPv6 in its canonical bracketed form,
 * `index.docker.io` → `docker.io`. Undefined when it is not a valid host[:port].
 */
export function canonicalRegistry(hostport: string): string | undefined {
  let host: string;
  let port: string | undefined;
  if (hostport.startsWith('[')) {
    const end = hostport.indexOf(']');
    if (end < 0) return undefined;
    host = hostport.slice(0, end + 1);
    const rest = hostport.slice(end + 1);
    if (rest !== '' && !/^:\d{1,5}$/.test(rest)) return undefined;
    port = rest ? rest.slice(1) : undefined;
    try {
      host = new URL(`http://${host}/`).hostname;
    } catch {
      return undefined;
    }
    if (!host.startsWith('[')) return undefined;
  } else {
    const m = /^([^:]+)(?::(\d{1,5}))?$/.exec(hostport);
    if (!m) return undefined;
    host = m[1]!.toLowerCase();
    port = m[2];
    if (!HOSTNAME.test(host) || host.length > 253) return undefined;
  }
  if (port !== undefined && (Number(port) < 1 || Number(port) > 65535 || String(Number(port)) !== port)) return undefined;
  if (host === 'index.docker.io') host = 'docker.io';
  return port !== undefined ? `${host}:${port}` : host;
}

/** Parse `host[:port][/path-prefix]` or `*`; VALIDATION_FAILED on `field` otherwise. */
export function parseRegistryPattern(raw: string, field: string): RegistryPattern {
  const bad = (why: string): MvmError => validationError(field, `${JSON.stringify(raw)} is not a registry pattern host[:port][/path-prefix] or *: ${why}`);
  if (typeof raw !== 'string') throw bad('not a string');
  const s = raw.trim();
  if (s === '*') return { raw, any: true, registry: '*' };
  if (s === '') throw bad('empty');
  if (s.includes('://')) throw bad('no scheme (https://): the registry is always reached over TLS unless it is loopback or listed as insecure');
  if (/[\s@?#\\]/.test(s)) throw bad('no user info, whitespace, query or fragment');
  if (s.includes('*')) throw bad('wildcards: only * alone (every registry)');
  let hostport: string;
  let path: string;
  if (s.startsWith('[')) {
    const end = s.indexOf(']');
    const slash = end < 0 ? -1 : s.indexOf('/', end);
    hostport = slash < 0 ? s : s.slice(0, slash);
    path = slash < 0 ? '' : s.slice(slash + 1);
  } else {
    const slash = s.indexOf('/');
    hostport = slash < 0 ? s : s.slice(0, slash);
    path = slash < 0 ? '' : s.slice(slash + 1);
  }
  const registry = canonicalRegistry(hostport);
  if (!registry) throw bad(`${JSON.stringify(hostport)} is not a valid host[:port]`);
  path = path.replace(/\/+$/, '');
  if (path !== '') {
    for (const c of path.split('/')) {
      if (!COMPONENT.test(c)) throw bad(`path component ${JSON.stringify(c)} must be lower-case letters, digits and single separators (. _ __ -)`);
    }
  }
  return { raw, any: false, registry, ...(path ? { pathPrefix: path } : {}) };
}

/** True when the pattern covers the reference (whole path components only). */
export function patternMatches(p: RegistryPattern, ref: Pick<PolicyImageRef, 'registry' | 'repository'>): boolean {
  if (p.any) return true;
  const registry = canonicalRegistry(ref.registry);
  if (registry === undefined || registry !== p.registry) return false;
  if (!p.pathPrefix) return true;
  return ref.repository === p.pathPrefix || ref.repository.startsWith(`${p.pathPrefix}/`);
}

/** How specific a pattern is: longer wins (`*` least). */
const specificity = (p: RegistryPattern): number => (p.any ? 0 : 1 + p.registry.length + (p.pathPrefix ? 1 + p.pathPrefix.length : 0));

/** Check a PEM public key the way the verifier will load it; the message says why not. */
export function publicKeyProblem(pem: string): string | undefined {
  if (typeof pem !== 'string' || !pem.includes('-----BEGIN PUBLIC KEY-----')) return 'must be a PEM "PUBLIC KEY" (PKIX), as `cosign generate-key-pair` writes cosign.pub';
  try {
    const k = createPublicKey(pem);
    if (!['ec', 'ed25519', 'rsa'].includes(k.asymmetricKeyType ?? '')) return `key type ${k.asymmetricKeyType ?? '?'} is not supported (ECDSA, Ed25519 or RSA)`;
  } catch (e) {
    return `not a readable public key: ${(e as Error).message}`;
  }
  return undefined;
}

/** Validate a policy (a tenant's override or the global one); violations name `<prefix>.allowedRegistries[i]` etc. */
export function validateImagePolicy(p: ImagePolicy | undefined, prefix: string): void {
  if (!p) return;
  (p.allowedRegistries ?? []).forEach((r, i) => parseRegistryPattern(r, `${prefix}.allowedRegistries[${i}]`));
  (p.signatures ?? []).forEach((rule, i) => {
    parseRegistryPattern(rule.scope, `${prefix}.signatures[${i}].scope`);
    rule.publicKeys.forEach((k, j) => {
      const why = publicKeyProblem(k);
      if (why) throw validationError(`${prefix}.signatures[${i}].publicKeys[${j}]`, why);
    });
  });
}

export interface EffectiveImagePolicy {
  tenant?: string;
  allowed: RegistryPattern[];
  /** Where `allowed` comes from: `global` or `tenant`. */
  allowedFrom: 'global' | 'tenant';
  signatures: Array<{ scope: RegistryPattern; publicKeys: string[] }>;
  signaturesFrom: 'global' | 'tenant';
  /** The global policy's source (e.g. `MVM_REGISTRIES_ALLOWED`). */
  globalSource: string;
}

/** The policy in force for a tenant (no tenant: the global one). Patterns are assumed valid (validated on write/load). */
export function effectivePolicy(global: GlobalImagePolicy, tenant?: { id: string; imagePolicy?: ImagePolicy | undefined }): EffectiveImagePolicy {
  const t = tenant?.imagePolicy;
  const allowedFrom = t?.allowedRegistries !== undefined ? 'tenant' : 'global';
  const signaturesFrom = t?.signatures !== undefined ? 'tenant' : 'global';
  const allowed = (allowedFrom === 'tenant' ? t!.allowedRegistries! : (global.allowedRegistries ?? [])).map((r) => parseRegistryPattern(r, 'allowedRegistries'));
  const rules = signaturesFrom === 'tenant' ? t!.signatures! : (global.signatures ?? []);
  return {
    ...(tenant ? { tenant: tenant.id } : {}),
    allowed,
    allowedFrom,
    signatures: rules.map((r) => ({ scope: parseRegistryPattern(r.scope, 'signatures.scope'), publicKeys: r.publicKeys })),
    signaturesFrom,
    globalSource: global.source,
  };
}

/** "the global image policy (MVM_REGISTRIES_ALLOWED)" or "tenant acme's image policy". */
export function policyName(eff: EffectiveImagePolicy, part: 'allowedRegistries' | 'signatures'): string {
  const from = part === 'allowedRegistries' ? eff.allowedFrom : eff.signaturesFrom;
  return from === 'tenant' ? `tenant ${eff.tenant}'s image policy (imagePolicy.${part})` : `the global image policy (${eff.globalSource})`;
}

/** REGISTRY_NOT_ALLOWED (403) naming `field`, the image and the policy, unless a pattern allows the reference. */
export function checkRegistryAllowed(eff: EffectiveImagePolicy, ref: PolicyImageRef, field: string): void {
  if (eff.allowed.some((p) => patternMatches(p, ref))) return;
  const name = policyName(eff, 'allowedRegistries');
  const allowed = eff.allowed.map((p) => p.raw);
  const message = `registry ${ref.registry} of image ${ref.canonical} is not allowed by ${name}; allowed: ${allowed.length ? allowed.join(', ') : 'no registry (only the built-in default images)'}`;
  throw new MvmError(ErrorCodes.REGISTRY_NOT_ALLOWED, `${field}: ${message}`, {
    violations: [{ field, message }],
    details: { image: ref.canonical, registry: ref.registry, policy: eff.allowedFrom, ...(eff.tenant ? { tenant: eff.tenant } : {}), allowedRegistries: allowed },
  });
}

export interface SignatureRequirement {
  /** The rule's scope as configured. */
  scope: string;
  publicKeys: string[];
  /** Human name of the policy (for errors). */
  policy: string;
  policyFrom: 'global' | 'tenant';
  tenant?: string;
}

/** The signature the reference needs (most specific matching rule), or undefined when none. */
export function signatureRequirement(eff: EffectiveImagePolicy, ref: Pick<PolicyImageRef, 'registry' | 'repository'>): SignatureRequirement | undefined {
  let best: EffectiveImagePolicy['signatures'][number] | undefined;
  for (const r of eff.signatures) if (patternMatches(r.scope, ref) && (!best || specificity(r.scope) > specificity(best.scope))) best = r;
  if (!best || best.publicKeys.length === 0) return undefined;
  return { scope: best.scope.raw, publicKeys: best.publicKeys, policy: policyName(eff, 'signatures'), policyFrom: eff.signaturesFrom, ...(eff.tenant ? { tenant: eff.tenant } : {}) };
}
