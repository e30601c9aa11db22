/**
 * Cosign-style image signing for tests: a key pair made with node:crypto (ECDSA P-256, or
 * Ed25519/RSA), and `signImage`, which writes what `cosign sign --key` writes: the simple-signing
 * payload of the image's manifest digest, signed with SHA-256, pushed as the attachment
 * `<repo>:sha256-<hex>.sig` (an OCI manifest with one layer per signature, the signature in the
 * annotation `dev.cosignproject.cosign/signature`) through the registry's HTTP API.
 *
 * Debian's skopeo is built with sigstore disabled (`--sign-by-sigstore-private-key` fails with
 * "Debian-local change: sigstore disabled"), hence this signer rather than skopeo's.
 */
import { createHash, generateKeyPairSync, sign, type KeyObject } from 'node:crypto';

export interface SigningKey {
  privateKey: KeyObject;
  /** PEM "PUBLIC KEY" (PKIX), as cosign.pub. */
  publicKeyPem: string;
}

export function generateSigningKey(type: 'ec' | 'ed25519' | 'rsa' = 'ec'): SigningKey {
  const { privateKey, publicKey } =
    type === 'ec' ? generateKeyPairSync('ec', { namedCurve: 'P-256' }) : type === 'rsa' ? generateKeyPairSync('rsa', { modulusLength: 2048 }) : generateKeyPairSync('ed25519');
  return { privateKey, publicKeyPem: publicKey.export({ type: 'spki', format: 'pem' }).toString() };
}

const sha256 = (b: Buffer): string => `sha256:${createHash('sha256').update(b).digest('hex')}`;

/** The simple-signing payload cosign signs. */
export function signaturePayload(dockerReference: string, digest: string): Buffer {
  return Buffer.from(JSON.stringify({ critical: { identity: { 'docker-reference': dockerReference }, image: { 'docker-manifest-digest': digest }, type: 'cosign container image signature' }, optional: null }));
}

/** Base64 signature of a payload with the key (ECDSA/RSA over SHA-256, Ed25519 raw). */
export function signPayload(key: SigningKey, payload: Buffer): string {
  const alg = key.privateKey.asymmetricKeyType === 'ed25519' ? null : 'sha256';
  return sign(alg, payload, key.privateKey).toString('base64');
}

const MANIFEST_TYPES = 'application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.docker.distribution.manifest.list.v2+json';

/** The digest `<addr>/<repo>:<tag>` points to (of the manifest bytes, as a registry computes it). */
export async function manifestDigest(addr: string, repo: string, tag: string): Promise<string> {
  const r = await fetch(`http://${addr}/v2/${repo}/manifests/${tag}`, { headers: { accept: MANIFEST_TYPES } });
  if (r.status !== 200) throw new Error(`GET manifest ${repo}:${tag}: ${r.status}`);
  return sha256(Buffer.from(await r.arrayBuffer()));
}

async function putBlob(addr: string, repo: string, b: Buffer): Promise<{ digest: string; size: number }> {
  const start = await fetch(`http://${addr}/v2/${repo}/blobs/uploads/`, { method: 'POST' });
  if (start.status !== 202) throw new Error(`blob upload to ${repo}: ${start.status}`);
  const loc = new URL(start.headers.get('location') ?? '', `http://${addr}`);
  loc.searchParams.set('digest', sha256(b));
  const put = await fetch(loc, { method: 'PUT', body: b, headers: { 'content-type': 'application/octet-stream' } });
  if (put.status !== 201) throw new Error(`blob PUT to ${repo}: ${put.status} ${await put.text()}`);
  return { digest: sha256(b), size: b.length };
}

/**
 * Sign `<addr>/<repo>:<tag>` with each key (one signature layer each), replacing any attachment.
 * `payloadFor` changes what is signed (tests of mismatching claims). Returns the image digest.
 */
export async function signImage(addr: string, repo: string, tag: string, keys: SigningKey[], o: { payloadFor?: (digest: string) => Buffer } = {}): Promise<string> {
  const digest = await manifestDigest(addr, repo, tag);
  const layers: Array<Record<string, unknown>> = [];
  const payloads: Buffer[] = [];
  for (const key of keys) {
    const payload = o.payloadFor ? o.payloadFor(digest) : signaturePayload(`${addr}/${repo}:${tag}`, digest);
    payloads.push(payload);
    const blob = await putBlob(addr, repo, payload);
    layers.push({ mediaType: 'application/vnd.dev.cosign.simplesigning.v1+json', ...blob, annotations: { 'dev.cosignproject.cosign/signature': signPayload(key, payload) } });
  }
  const config = await putBlob(addr, repo, Buffer.from(JSON.stringify({ architecture: '', os: '', config: {}, rootfs: { type: 'layers', diff_ids: payloads.map(sha256) } })));
  const manifest = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json', config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config }, layers }));
  const put = await fetch(`http://${addr}/v2/${repo}/manifests/${digest.replace(':', '-')}.sig`, { method: 'PUT', body: manifest, headers: { 'content-type': 'application/vnd.oci.image.manifest.v1+json' } });
  if (put.status !== 201) throw new Error(`PUT signature of ${repo}:${tag}: ${put.status} ${await put.text()}`);
  return digest;
}
