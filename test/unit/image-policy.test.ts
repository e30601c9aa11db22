/**
 * The image policy (ADR 0024) without a registry: registry patterns and the bypasses a tenant
 * could try (user info, docker.io expansion, ports, IPv6 spellings, case, path-prefix boundaries),
 * per-tenant overrides, signature rules, the cosign payload/signature check, and the env loader.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';

import { ErrorCodes, MvmError } from '../../src/core/errors.js';
import { parseRegistryPattern, signatureRequirement, effectivePolicy, validateImagePolicy, type GlobalImagePolicy } from '../../src/core/image-policy.js';
import { HTTP_STATUS } from '../../src/gateway/problem.js';
import { GRPC_STATUS } from '../../src/grpc/status.js';
import { ImagePolicyGate, loadImagePolicy } from '../../src/storage/oci/policy.js';
import { parseImageReference } from '../../src/storage/oci/reference.js';
import { parsePayload, verifySigstoreSignatures } from '../../src/storage/oci/signature.js';
import { generateSigningKey, signPayload, signaturePayload } from '../support/sigstore.js';

const gate = (allowedRegistries: string[], signatures: GlobalImagePolicy['signatures'] = []): ImagePolicyGate =>
  new ImagePolicyGate({ global: { source: 'MVM_REGISTRIES_ALLOWED', allowedRegistries, signatures } });

const isCode = (code: string, field?: string) => (e: unknown): boolean => {
  assert.ok(e instanceof MvmError, String(e));
  assert.equal(e.code, code, e.message);
  if (field) assert.equal(e.violations[0]?.field, field, e.message);
  return true;
};

const allowed = async (g: ImagePolicyGate, ref: string, tenant?: string): Promise<boolean> => {
  try {
    await g.admit(ref, 'rootfs.image', tenant);
    return true;
  } catch (e) {
    if (e instanceof MvmError && e.code === ErrorCodes.REGISTRY_NOT_ALLOWED) return false;
    throw e;
  }
};

test('registry patterns: canonical host (case, IPv6, index.docker.io), optional port and path prefix; bad ones name the field', () => {
  assert.deepEqual(parseRegistryPattern('Registry.Example.COM:5000/Team'.replace('Team', 'team'), 'f'), { raw: 'Registry.Example.COM:5000/team', any: false, registry: 'registry.example.com:5000', pathPrefix: 'team' });
  assert.equal(parseRegistryPattern('[0:0:0:0:0:0:0:1]:5000', 'f').registry, '[::1]:5000');
  assert.equal(parseRegistryPattern('index.docker.io/library/', 'f').registry, 'docker.io');
  assert.equal(parseRegistryPattern('index.docker.io/library/', 'f').pathPrefix, 'library');
  assert.equal(parseRegistryPattern('*', 'f').any, true);
  for (const bad of ['https://reg.example.com', 'user:pw@reg.example.com', '*.example.com', 'reg.example.com:99999', 'reg.example.com/Team', 'reg .example.com', '', '[::1', 'reg.example.com/a//b']) {
    assert.throws(() => parseRegistryPattern(bad, 'imagePolicy.allowedRegistries[3]'), isCode(ErrorCodes.VALIDATION_FAILED, 'imagePolicy.allowedRegistries[3]'), bad);
  }
});

test('nothing configured allows no registry; the built-in default image, an omitted image and kernel host paths pass', async () => {
  const g = new ImagePolicyGate({ global: loadImagePolicy({}) });
  for (const ref of ['alpine', 'docker.io/library/alpine:3.20', '127.0.0.1:5000/x:1', 'localhost:5000/x']) assert.equal(await allowed(g, ref), false, ref);
  await g.admit('default', 'rootfs.image');
  await g.admit(undefined, 'rootfs.image');
  await g.admit('/boot/vmlinuz-6.1.0', 'kernel.image');
  await assert.rejects(g.admit('127.0.0.1:5000/k:1', 'kernel.image'), isCode(ErrorCodes.REGISTRY_NOT_ALLOWED, 'kernel.image'));
});

test('the refusal: 403 REGISTRY_NOT_ALLOWED naming the field, the image, the registry and the policy', async () => {
  const g = gate(['registry.example.com']);
  const e = await g.admit('10.0.0.7:5000/x/y:1', 'image', 'acme').then(() => undefined, (x: unknown) => x);
  assert.ok(e instanceof MvmError);
  assert.equal(e.code, 'REGISTRY_NOT_ALLOWED');
  assert.equal(HTTP_STATUS[e.code], 403);
  assert.equal(GRPC_STATUS[e.code], 7 /* PERMISSION_DENIED */);
  assert.deepEqual(e.violations.map((v) => v.field), ['image']);
  assert.match(e.message, /^image: registry 10\.0\.0\.7:5000 of image 10\.0\.0\.7:5000\/x\/y:1 is not allowed by the global image policy \(MVM_REGISTRIES_ALLOWED\); allowed: registry\.example\.com$/);
  assert.deepEqual(e.details, { image: '10.0.0.7:5000/x/y:1', registry: '10.0.0.7:5000', policy: 'global', tenant: 'acme', allowedRegistries: ['registry.example.com'] });
});

test('bypass attempts are refused: user info, other hosts sharing a prefix or suffix, ports, IPv6 spellings, localhost for 127.0.0.1, docker.io expansion', async () => {
  const g = gate(['registry.example.com', '127.0.0.1:5000', '[::1]:5001', 'docker.io/library']);
  // User info cannot smuggle another host: `@` starts a digest, which is then invalid.
  for (const ref of ['user:pw@evil.example.net/x:1', 'registry.example.com@evil.example.net/x', 'evil.example.net/x@registry.example.com']) {
    await assert.rejects(g.admit(ref, 'rootfs.image'), isCode(ErrorCodes.VALIDATION_FAILED, 'rootfs.image'), ref);
  }
  const cases: Array<[string, boolean]> = [
    ['registry.example.com/team/app:1', true],
    ['REGISTRY.Example.com/team/app:1', true], // hosts are case-insensitive: the same registry
    ['registry.example.com.evil.net/app:1', false],
    ['evilregistry.example.com/app:1', false],
    ['sub.registry.example.com/app:1', false],
    ['registry.example.com:443/app:1', false], // a pattern without a port: only references without one
    ['registry.example.com:5000/app:1', false],
    [`registry.example.com/app@sha256:${'a'.repeat(64)}`, true],
    [`evil.example.net/app@sha256:${'a'.repeat(64)}`, false],
    ['127.0.0.1:5000/app:1', true],
    ['127.0.0.1:5001/app:1', false],
    ['127.0.0.1/app:1', false],
    ['localhost:5000/app:1', false],
    ['127.0.0.2:5000/app:1', false],
    ['[::ffff:127.0.0.1]:5000/app:1', false],
    ['[::1]:5001/app:1', true],
    ['[0:0:0:0:0:0:0:1]:5001/app:1', true], // the same address, canonically [::1]
    ['[::1]:5000/app:1', false],
    ['alpine', true], // docker.io/library/alpine:latest
    ['library/alpine:3', true],
    ['index.docker.io/library/alpine', true],
    ['docker.io/libraryx/alpine', false],
    ['someone/alpine', false], // docker.io/someone/alpine
    ['docker.io/someone/alpine', false],
  ];
  for (const [ref, ok] of cases) assert.equal(await allowed(g, ref), ok, ref);
});

test('path prefixes match whole components only', async () => {
  const g = gate(['reg.example.com/team']);
  for (const [ref, ok] of [
    ['reg.example.com/team/app:1', true],
    ['reg.example.com/team:1', true],
    ['reg.example.com/team/sub/app:1', true],
    ['reg.example.com/team-b/app:1', false],
    ['reg.example.com/teamapp:1', false],
    ['reg.example.com/other/team/app:1', false],
  ] as const) {
    assert.equal(await allowed(g, ref), ok, ref);
  }
});

test('per-tenant overrides replace the global list for that tenant only; * allows any registry', async () => {
  const tenants: Record<string, { allowedRegistries?: string[] }> = { acme: { allowedRegistries: ['127.0.0.1:6000'] }, wide: { allowedRegistries: ['*'] }, keys: {} };
  const g = new ImagePolicyGate({ global: { source: 'MVM_REGISTRIES_ALLOWED', allowedRegistries: ['127.0.0.1:5000'] }, tenantPolicy: async (t) => tenants[t] });
  assert.equal(await allowed(g, '127.0.0.1:5000/a:1', 'other'), true);
  assert.equal(await allowed(g, '127.0.0.1:6000/a:1', 'other'), false);
  assert.equal(await allowed(g, '127.0.0.1:6000/a:1', 'acme'), true);
  assert.equal(await allowed(g, '127.0.0.1:5000/a:1', 'acme'), false, 'replaced, not added');
  assert.equal(await allowed(g, 'anything.example.org/a:1', 'wide'), true);
  assert.equal(await allowed(g, '127.0.0.1:5000/a:1', 'keys'), true, 'an override without allowedRegistries keeps the global list');
  const e = await g.admit('127.0.0.1:5000/a:1', 'rootfs.image', 'acme').then(() => undefined, (x: unknown) => x as MvmError);
  assert.match(e!.message, /tenant acme's image policy \(imagePolicy\.allowedRegistries\)/);
  assert.equal(e!.details.policy, 'tenant');
});

test('signature rules: the most specific scope decides; an empty key list exempts; a tenant override replaces the rules', () => {
  const a = generateSigningKey().publicKeyPem;
  const b = generateSigningKey().publicKeyPem;
  const global: GlobalImagePolicy = {
    source: 'MVM_IMAGE_POLICY_FILE /x',
    allowedRegistries: ['*'],
    signatures: [
      { scope: 'reg.example.com', publicKeys: [a] },
      { scope: 'reg.example.com/prod', publicKeys: [b] },
      { scope: 'reg.example.com/prod/scratch', publicKeys: [] },
    ],
  };
  const eff = effectivePolicy(global);
  const req = (ref: string): string[] | undefined => signatureRequirement(eff, parseImageReference(ref))?.publicKeys;
  assert.deepEqual(req('reg.example.com/dev/app:1'), [a]);
  assert.deepEqual(req('reg.example.com/prod/app:1'), [b]);
  assert.deepEqual(req('reg.example.com/production/app:1'), [a], 'prefix on component boundaries');
  assert.equal(req('reg.example.com/prod/scratch/app:1'), undefined);
  assert.equal(req('other.example.com/app:1'), undefined);
  const r = signatureRequirement(eff, parseImageReference('reg.example.com/prod/app:1'))!;
  assert.equal(r.scope, 'reg.example.com/prod');
  assert.equal(r.policy, 'the global image policy (MVM_IMAGE_POLICY_FILE /x)');
  const t = effectivePolicy(global, { id: 'acme', imagePolicy: { signatures: [{ scope: '*', publicKeys: [b] }] } });
  assert.deepEqual(signatureRequirement(t, parseImageReference('other.example.com/app:1'))?.publicKeys, [b]);
  assert.equal(signatureRequirement(t, parseImageReference('other.example.com/app:1'))?.policy, "tenant acme's image policy (imagePolicy.signatures)");
});

test('policy validation names the field: bad patterns, keys that are not PEM public keys', () => {
  assert.throws(() => validateImagePolicy({ allowedRegistries: ['ok.example.com', 'http://x'] }, 'imagePolicy'), isCode(ErrorCodes.VALIDATION_FAILED, 'imagePolicy.allowedRegistries[1]'));
  assert.throws(() => validateImagePolicy({ signatures: [{ scope: 'a.example.com', publicKeys: ['not a key'] }] }, 'imagePolicy'), isCode(ErrorCodes.VALIDATION_FAILED, 'imagePolicy.signatures[0].publicKeys[0]'));
  const broken = '-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n';
  assert.throws(() => validateImagePolicy({ signatures: [{ scope: 'a.example.com', publicKeys: [broken] }] }, 'imagePolicy'), isCode(ErrorCodes.VALIDATION_FAILED, 'imagePolicy.signatures[0].publicKeys[0]'));
  assert.throws(() => validateImagePolicy({ signatures: [{ scope: 'https://a', publicKeys: [] }] }, 'imagePolicy'), isCode(ErrorCodes.VALIDATION_FAILED, 'imagePolicy.signatures[0].scope'));
  validateImagePolicy({ allowedRegistries: ['*'], signatures: [{ scope: '*', publicKeys: [generateSigningKey('ed25519').publicKeyPem, generateSigningKey('rsa').publicKeyPem] }] }, 'imagePolicy');
});

test('cosign signatures: accepted only by a trusted key, for exactly this digest and repository', () => {
  const ref = parseImageReference('127.0.0.1:5000/signed/app:1');
  const digest = `sha256:${'b'.repeat(64)}`;
  const good = generateSigningKey();
  const other = generateSigningKey();
  const ed = generateSigningKey('ed25519');
  const rsa = generateSigningKey('rsa');
  const payload = signaturePayload('127.0.0.1:5000/signed/app:1', digest);
  const sig = (k = good, p = payload) => ({ payload: p, signature: signPayload(k, p) });
  const check = (sigs: Array<{ payload: Buffer; signature: string }>, keys = [good.publicKeyPem]) => verifySigstoreSignatures(sigs, { ref, digest, publicKeys: keys });

  assert.deepEqual(check([sig()]), { ok: true, keyIndex: 0, signedReference: '127.0.0.1:5000/signed/app:1' });
  assert.equal(check([sig(other), sig()]).ok, true, 'one good signature among others is enough');
  assert.deepEqual(check([sig()], [other.publicKeyPem, good.publicKeyPem]), { ok: true, keyIndex: 1, signedReference: '127.0.0.1:5000/signed/app:1' });
  assert.equal(check([sig(ed)], [ed.publicKeyPem]).ok, true, 'Ed25519');
  assert.equal(check([sig(rsa)], [rsa.publicKeyPem]).ok, true, 'RSA');
  // Signed by `:latest` or another tag of the same repository: the digest is what counts.
  assert.equal(check([sig(good, signaturePayload('127.0.0.1:5000/signed/app:other', digest))]).ok, true);

  assert.equal((check([]) as { reason: string }).reason, 'unsigned');
  assert.equal((check([sig(other)]) as { reason: string }).reason, 'untrusted');
  const tampered = { payload: signaturePayload('127.0.0.1:5000/signed/app:1', `sha256:${'c'.repeat(64)}`), signature: sig().signature };
  assert.equal((check([tampered]) as { reason: string }).reason, 'untrusted', 'a signature of another payload does not verify');
  assert.equal((check([{ payload, signature: '' }]) as { reason: string }).reason, 'untrusted');
  assert.equal((check([{ payload, signature: '!!notbase64' }]) as { reason: string }).reason, 'untrusted');
  const wrongDigest = check([sig(good, signaturePayload('127.0.0.1:5000/signed/app:1', `sha256:${'c'.repeat(64)}`))]);
  assert.deepEqual([wrongDigest.ok, (wrongDigest as { reason: string }).reason], [false, 'mismatch']);
  const otherRepo = check([sig(good, signaturePayload('127.0.0.1:5000/other/app:1', digest))]);
  assert.match((otherRepo as { detail: string }).detail, /is for 127\.0\.0\.1:5000\/other\/app, not 127\.0\.0\.1:5000\/signed\/app/);
  const otherRegistry = check([sig(good, signaturePayload('127.0.0.1:5001/signed/app:1', digest))]);
  assert.equal((otherRegistry as { reason: string }).reason, 'mismatch');
  const wrongType = Buffer.from(JSON.stringify({ critical: { identity: { 'docker-reference': 'x' }, image: { 'docker-manifest-digest': digest }, type: 'atomic container signature' }, optional: null }));
  assert.equal((check([sig(good, wrongType)]) as { reason: string }).reason, 'mismatch');
  assert.equal(typeof parsePayload(Buffer.from('[]')), 'string');
});

test('the global policy from the environment: MVM_REGISTRIES_ALLOWED plus MVM_IMAGE_POLICY_FILE (key paths relative to the file); bad values name the variable', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'mvm-policy-'));
  try {
    const key = generateSigningKey();
    await writeFile(join(dir, 'cosign.pub'), key.publicKeyPem);
    await writeFile(join(dir, 'policy.json'), JSON.stringify({ allowedRegistries: ['reg.example.com/team'], signatures: [{ scope: 'reg.example.com', keyPaths: ['cosign.pub'] }] }));
    const p = loadImagePolicy({ MVM_REGISTRIES_ALLOWED: ' 127.0.0.1:5000 , docker.io/library ', MVM_IMAGE_POLICY_FILE: join(dir, 'policy.json') });
    assert.deepEqual(p.allowedRegistries, ['127.0.0.1:5000', 'docker.io/library', 'reg.example.com/team']);
    assert.deepEqual(p.signatures, [{ scope: 'reg.example.com', publicKeys: [key.publicKeyPem] }]);
    assert.match(p.source, /^MVM_REGISTRIES_ALLOWED \+ MVM_IMAGE_POLICY_FILE /);
    assert.deepEqual(loadImagePolicy({}).allowedRegistries, []);
    assert.throws(() => loadImagePolicy({ MVM_REGISTRIES_ALLOWED: 'ok.example.com,https://bad' }), /MVM_REGISTRIES_ALLOWED: policy\.allowedRegistries\[1\]/);
    await writeFile(join(dir, 'bad.json'), JSON.stringify({ allowedRegistries: ['x.example.com'], signatures: [{ scope: '*', keyPaths: ['missing.pub'] }] }));
    assert.throws(() => loadImagePolicy({ MVM_IMAGE_POLICY_FILE: join(dir, 'bad.json') }), /MVM_IMAGE_POLICY_FILE .*signatures\[0\]\.keyPaths/);
    await writeFile(join(dir, 'typo.json'), JSON.stringify({ allowedRegistry: ['x.example.com'] }));
    assert.throws(() => loadImagePolicy({ MVM_IMAGE_POLICY_FILE: join(dir, 'typo.json') }), /unknown field "allowedRegistry"/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
