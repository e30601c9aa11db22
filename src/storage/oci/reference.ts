/**
 * OCI image references: `alpine:3.20`, `127.0.0.1:5000/busybox:1`,
 * `name@sha256:<hex>`, `docker.io/library/alpine:3.20@sha256:<hex>`.
 * Follows the distribution/reference grammar (lower-case path components,
 * a registry host is the first component when it holds `.` or `:` or is
 * `localhost`; the default registry is docker.io with `library/` for
 * single-component names; the default tag is `latest`). The registry is
 * canonical: lower case, IPv6 in canonical form, `index.docker.io` as `docker.io`.
 */
import { validationError } from '../../core/errors.js';
import { canonicalRegistry } from '../../core/image-policy.js';

export const REFERENCE_FIELD = 'rootfs.image';

export interface ImageReference {
  /** Registry host[:port], e.g. `127.0.0.1:5000` or `docker.io`. */
  registry: string;
  /** Repository path inside the registry, e.g. `library/alpine`. */
  repository: string;
  /** Tag (`latest` when neither tag nor digest was given). */
  tag?: string;
  /** `sha256:<64 hex>` when the reference pins a digest. */
  digest?: string;
  /** Fully qualified form: `registry/repository[:tag][@digest]`. */
  canonical: string;
  /** The original text. */
  raw: string;
}

const COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
const DIGEST = /^(sha256):([0-9a-f]{64})$|^(sha512):([0-9a-f]{128})$/;
const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$/;

export const DEFAULT_REGISTRY = 'docker.io';

const bad = (raw: string, why: string): Error =>
  validationError(REFERENCE_FIELD, `invalid image reference ${JSON.stringify(raw)}: ${why}`);

/** Parse and validate an image reference; throws VALIDATION_FAILED on `rootfs.image`. */
export function parseImageReference(raw: string): ImageReference {
  if (typeof raw !== 'string' || raw.length === 0) throw bad(String(raw), 'empty');
  if (raw.length > 512) throw bad(raw.slice(0, 40) + '…', 'longer than 512 characters');
  if (/\s/.test(raw)) throw bad(raw, 'contains whitespace');
  let rest = raw;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST.test(digest)) throw bad(raw, 'digest must be sha256:<64 lower-case hex> (or sha512:<128 hex>)');
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const colon = rest.lastIndexOf(':');
  if (colon > lastSlash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw bad(raw, `tag ${JSON.stringify(tag)} must match [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`);
  }
  if (!rest) throw bad(raw, 'missing repository name');
  const parts = rest.split('/');
  let registry = DEFAULT_REGISTRY;
  const first = parts[0] ?? '';
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost' || first.startsWith('['))) {
    registry = first;
    parts.shift();
    if (!HOST.test(registry)) throw bad(raw, `registry host ${JSON.stringify(registry)} is not a valid host[:port]`);
    const port = /:(\d+)$/.exec(registry)?.[1];
    if (port !== undefined && (Number(port) < 1 || Number(port) > 65535)) throw bad(raw, `registry port ${port} out of range`);
    // One spelling per registry (lower case, canonical IPv6, index.docker.io → docker.io): the
    // image policy and the cache compare these strings.
    const canonical = canonicalRegistry(registry);
    if (canonical === undefined) throw bad(raw, `registry host ${JSON.stringify(registry)} is not a valid host[:port]`);
    registry = canonical;
  }
  for (const p of parts) {
    if (!COMPONENT.test(p)) {
      throw bad(raw, `repository component ${JSON.stringify(p)} must be lower-case letters, digits and single separators (. _ __ -)`);
    }
  }
  if (registry === DEFAULT_REGISTRY && parts.length === 1) parts.unshift('library');
  const repository = parts.join('/');
  if (repository.length > 255) throw bad(raw, 'repository name longer than 255 characters');
  if (tag === undefined && digest === undefined) tag = 'latest';
  const canonical = `${registry}/${repository}${tag !== undefined ? `:${tag}` : ''}${digest !== undefined ? `@${digest}` : ''}`;
  return { registry, repository, ...(tag !== undefined ? { tag } : {}), ...(digest !== undefined ? { digest } : {}), canonical, raw };
}

/** The registry host without its port (brackets removed for IPv6). */
export function registryHost(registry: string): string {
  if (registry.startsWith('[')) return registry.slice(1, registry.indexOf(']'));
  return registry.replace(/:\d+$/, '');
}

/** Loopback registries (localhost, 127.0.0.0/8, ::1) are reached without TLS verification. */
export function isLoopbackRegistry(registry: string): boolean {
  const h = registryHost(registry).toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/** `docker://registry/repository@digest` (or `:tag`) for skopeo. */
export function skopeoRef(ref: ImageReference, digest?: string): string {
  const d = digest ?? ref.digest;
  return `docker://${ref.registry}/${ref.repository}${d ? `@${d}` : `:${ref.tag ?? 'latest'}`}`;
}

/** True for the references this adapter handles (anything but the built-in `default`). */
export function isOciReference(ref: string | undefined): ref is string {
  return ref !== undefined && ref !== 'default';
}
