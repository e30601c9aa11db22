/**
 * Cosign/sigstore image signatures (ADR 0024), verified before an image is pulled.
 *
 * A signed image `reg/repo@sha256:<hex>` has an attachment `reg/repo:sha256-<hex>.sig`: an OCI
 * manifest whose layers (media type `application/vnd.dev.cosign.simplesigning.v1+json`) are
 * "simple signing" payloads
 *
 *   {"critical": {"identity": {"docker-reference": "reg/repo:tag"},
 *                 "image": {"docker-manifest-digest": "sha256:<hex>"},
 *                 "type": "cosign container image signature"},
 *    "optional": {...} | null}
 *
 * each with its signature (base64, annotation `dev.cosignproject.cosign/signature`) over the
 * payload bytes: ECDSA (ASN.1 DER) or RSA PKCS#1 v1.5 with SHA-256, or Ed25519. This is the format
 * `cosign sign --key` and `skopeo copy --sign-by-sigstore-private-key` write and containers'
 * `sigstoreSigned` policy reads. The attachment is fetched with skopeo (so credentials, TLS and
 * insecure registries work as for the image) and checked here with node:crypto: a signature
 * counts when it verifies under one of the policy's keys, names exactly the digest being pulled,
 * and its docker-reference is the same repository (containers' `matchRepoDigestOrExact` for a
 * pull by digest). Debian's skopeo is built with sigstore disabled, hence no `--policy` here.
 */
import { createPublicKey, verify } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { SignatureRequirement } from '../../core/image-policy.js';
import { type PullOptions, pullSignatureArtifact } from './pull.js';
import { type ImageReference, parseImageReference } from './reference.js';

export const SIMPLESIGNING_MEDIA_TYPE = 'application/vnd.dev.cosign.simplesigning.v1+json';
export const COSIGN_SIGNATURE_ANNOTATION = 'dev.cosignproject.cosign/signature';
export const COSIGN_SIGNATURE_TYPE = 'cosign container image signature';
/** At most this many signatures of one image are looked at, each payload at most this big. */
const MAX_SIGNATURES = 32;
const MAX_PAYLOAD_BYTES = 64 * 1024;

export interface SigstoreSignature {
  payload: Buffer;
  /** Base64 of the raw signature. */
  signature: string;
}

/** The cosign attachment tag of a digest: `sha256-<hex>.sig`. */
export const signatureTag = (digest: string): string => `${digest.replace(':', '-')}.sig`;

export type SignatureFailure = 'unsigned' | 'untrusted' | 'mismatch';

export type SignatureVerdict = { ok: true; keyIndex: number; signedReference: string } | { ok: false; reason: SignatureFailure; detail: string };

function verifyRaw(pem: string, payload: Buffer, sigB64: string): boolean {
  try {
    const key = createPublicKey(pem);
    const sig = Buffer.from(sigB64, 'base64');
    if (sig.length === 0) return false;
    return key.asymmetricKeyType === 'ed25519' ? verify(null, payload, key, sig) : verify('sha256', payload, key, sig);
  } catch {
    return false;
  }
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** The claims of a simple-signing payload, or why it is not one. */
export function parsePayload(payload: Buffer): { digest: string; reference: string } | string {
  let j: unknown;
  try {
    j = JSON.parse(payload.toString('utf8'));
  } catch {
    return 'payload is not JSON';
  }
  if (!isObject(j) || !isObject(j.critical)) return 'payload has no "critical" object';
  const c = j.critical;
  if (c.type !== COSIGN_SIGNATURE_TYPE) return `payload type ${JSON.stringify(c.type)} is not ${JSON.stringify(COSIGN_SIGNATURE_TYPE)}`;
  if (!isObject(c.image) || typeof c.image['docker-manifest-digest'] !== 'string') return 'payload names no critical.image.docker-manifest-digest';
  if (!isObject(c.identity) || typeof c.identity['docker-reference'] !== 'string') return 'payload names no critical.identity.docker-reference';
  return { digest: c.image['docker-manifest-digest'], reference: c.identity['docker-reference'] };
}

/**
 * Does one of the signatures verify under one of the keys and claim exactly this digest in
 * this repository? Pure (no I/O).
 */
export function verifySigstoreSignatures(sigs: readonly SigstoreSignature[], o: { ref: ImageReference; digest: string; publicKeys: readonly string[] }): SignatureVerdict {
  if (sigs.length === 0) return { ok: false, reason: 'unsigned', detail: `no signature (no ${signatureTag(o.digest)} attachment with a simple-signing layer)` };
  let mismatch: string | undefined;
  for (const s of sigs.slice(0, MAX_SIGNATURES)) {
    const keyIndex = o.publicKeys.findIndex((k) => verifyRaw(k, s.payload, s.signature));
    if (keyIndex < 0) continue;
    // Claims are read only from a payload a trusted key signed.
    const claims = parsePayload(s.payload);
    if (typeof claims === 'string') {
      mismatch = claims;
      continue;
    }
    if (claims.digest !== o.digest) {
      mismatch = `a trusted signature is for digest ${claims.digest}, not ${o.digest}`;
      continue;
    }
    let signed: ImageReference;
    try {
      signed = parseImageReference(claims.reference);
    } catch {
      mismatch = `a trusted signature names the invalid reference ${JSON.stringify(claims.reference)}`;
      continue;
    }
    if (signed.registry !== o.ref.registry || signed.repository !== o.ref.repository) {
      mismatch = `a trusted signature is for ${signed.registry}/${signed.repository}, not ${o.ref.registry}/${o.ref.repository}`;
      continue;
    }
    return { ok: true, keyIndex, signedReference: signed.canonical };
  }
  if (mismatch) return { ok: false, reason: 'mismatch', detail: mismatch };
  return { ok: false, reason: 'untrusted', detail: `${Math.min(sigs.length, MAX_SIGNATURES)} signature(s), none by a key of the policy` };
}

/** The simple-signing signatures in an OCI layout holding a cosign attachment. */
export async function readSignatureLayout(layoutDir: string): Promise<SigstoreSignature[]> {
  const blob = async (digest: string): Promise<Buffer> => {
    const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
    if (!m) throw new Error(`unexpected digest ${digest}`);
    return readFile(join(layoutDir, 'blobs', 'sha256', m[1]!));
  };
  const index = JSON.parse(await readFile(join(layoutDir, 'index.json'), 'utf8')) as { manifests?: Array<{ digest: string }> };
  const desc = index.manifests?.[0];
  if (!desc) return [];
  const manifest = JSON.parse((await blob(desc.digest)).toString('utf8')) as { layers?: Array<{ mediaType?: string; digest: string; size?: number; annotations?: Record<string, string> }> };
  const out: SigstoreSignature[] = [];
  for (const l of (manifest.layers ?? []).slice(0, MAX_SIGNATURES)) {
    const sig = l.annotations?.[COSIGN_SIGNATURE_ANNOTATION];
    if (l.mediaType !== SIMPLESIGNING_MEDIA_TYPE || !sig || (l.size ?? 0) > MAX_PAYLOAD_BYTES) continue;
    out.push({ payload: await blob(l.digest), signature: sig });
  }
  return out;
}

/** Fetch the image's cosign signatures from its registry (none: []). */
export async function fetchSigstoreSignatures(ref: ImageReference, digest: string, opts: PullOptions = {}): Promise<SigstoreSignature[]> {
  const dir = await mkdtemp(join(tmpdir(), 'mvm-sig-'));
  try {
    const layout = join(dir, 'layout');
    if (!(await pullSignatureArtifact(ref, signatureTag(digest), layout, opts))) return [];
    return await readSignatureLayout(layout);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

const REASONS: Record<SignatureFailure, string> = {
  unsigned: 'it is not signed',
  untrusted: 'it is signed, but by no key of the policy',
  mismatch: 'a trusted signature does not match it',
};

/**
 * Refuse (SIGNATURE_VERIFICATION_FAILED, 403, naming `field`, the image and the policy) unless
 * the image at `digest` carries a signature by one of the requirement's keys.
 */
export async function verifyImageSignature(ref: ImageReference, digest: string, req: SignatureRequirement, field: string, opts: PullOptions = {}): Promise<{ signedReference: string; keyIndex: number }> {
  const t0 = Date.now();
  const verdict = verifySigstoreSignatures(await fetchSigstoreSignatures(ref, digest, opts), { ref, digest, publicKeys: req.publicKeys });
  if (verdict.ok) {
    opts.log?.(`signature of ${ref.registry}/${ref.repository}@${digest} verified (key ${verdict.keyIndex + 1} of scope ${req.scope}) in ${Date.now() - t0} ms`);
    return verdict;
  }
  const image = `${ref.registry}/${ref.repository}@${digest}`;
  const message = `image ${ref.canonical} (${image}) is refused by ${req.policy}, which requires a signature by one of its ${req.publicKeys.length} key(s) for ${req.scope}: ${REASONS[verdict.reason]} (${verdict.detail})`;
  throw new MvmError(ErrorCodes.SIGNATURE_VERIFICATION_FAILED, `${field}: ${message}`, {
    violations: [{ field, message }],
    details: { image: ref.canonical, digest, reason: verdict.reason, scope: req.scope, policy: req.policyFrom, ...(req.tenant ? { tenant: req.tenant } : {}) },
  });
}
