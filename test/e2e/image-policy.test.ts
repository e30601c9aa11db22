/**
 * The image policy through the API (ADR 0024, issue 15 item 2), standalone, with real local
 * registries (Debian's docker-registry on loopback) and cosign-style signatures made by the test
 * with a key pair it generates:
 * - a signature rule for <registry>/signed with key A: the image signed with A boots (Running and
 *   ready); an unsigned image and one signed with key B are refused with 403
 *   SIGNATURE_VERIFICATION_FAILED naming rootfs.image, the image and the policy, before any layer
 *   is pulled, and a cached copy (pulled for a tenant without the rule) does not get around it;
 * - a registry not in MVM_REGISTRIES_ALLOWED is 403 REGISTRY_NOT_ALLOWED (create and template),
 *   nothing is pulled from it; a tenant's override (admins only) allows it for that tenant only;
 *   an invalid override is 400 naming the field.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { destroyDataDir, apiCall, startService, type TestService } from '../support/service.js';
import { buildOciImage, pushImage, startRegistry, type TestRegistry } from '../support/registry.js';
import { generateSigningKey, signImage } from '../support/sigstore.js';

let svc: TestService;
let reg: TestRegistry;
let other: TestRegistry;
let work: string;
let keyA: ReturnType<typeof generateSigningKey>;

const api = (method: string, path: string, body?: unknown): Promise<{ status: number; json: any }> => apiCall(svc, method, path, body);

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'mvm-policy-e2e-'));
  const rootfs = join(work, 'rootfs');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
  await symlink('busybox', join(rootfs, 'bin/sh'));
  await writeFile(join(rootfs, 'main.sh'), '#!/bin/sh\necho SIGNED-APP-RAN\nexec busybox sleep 100000\n');
  await chmod(join(rootfs, 'main.sh'), 0o755);
  const layout = join(work, 'layout');
  await buildOciImage({ rootfsDir: rootfs, layoutDir: layout, tag: 'app', workDir: join(work, 'umoci'), spec: { entrypoint: ['/main.sh'], env: ['PATH=/bin'] } });
  [reg, other] = await Promise.all([startRegistry(), startRegistry()]);
  for (const repo of ['signed/app:1', 'signed/unsigned:1', 'signed/other:1', 'open/app:1']) await pushImage(layout, 'app', reg.addr, repo);
  await pushImage(layout, 'app', other.addr, 'x/app:1');
  keyA = generateSigningKey();
  await signImage(reg.addr, 'signed/app', '1', [keyA]);
  await signImage(reg.addr, 'signed/other', '1', [generateSigningKey()]);
  await writeFile(join(work, 'a.pub'), keyA.publicKeyPem);
  await writeFile(join(work, 'policy.json'), JSON.stringify({ signatures: [{ scope: `${reg.addr}/signed`, keyPaths: ['a.pub'] }] }));
  svc = await startService({
    env: { MVM_NETWORK: 'none', MVM_REGISTRIES_ALLOWED: reg.addr, MVM_IMAGE_POLICY_FILE: join(work, 'policy.json'), MVM_IMAGE_CACHE_DIR: join(work, 'cache') },
  });
});

after(async () => {
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
  await Promise.all([reg?.stop(), other?.stop()]);
  if (work) await rm(work, { recursive: true, force: true });
});

const cachedRefs = async (): Promise<string[]> => {
  const r = await api('GET', '/images');
  assert.equal(r.status, 200, JSON.stringify(r.json));
  return r.json.items.flatMap((i: { references: string[] }) => i.references);
};

test('signatures: unsigned and foreign-key images are refused naming the image and the policy; the signed image boots', { timeout: 400_000 }, async (t) => {
  const made: string[] = [];
  t.after(async () => {
    for (const id of made) await svc.client.microvms.delete(id).catch(() => undefined);
    for (const id of made) await svc.client.microvms.waitDeleted(id, { timeoutMs: 60_000 }).catch(() => undefined);
  });
  const policyRe = /global image policy \(MVM_REGISTRIES_ALLOWED \+ MVM_IMAGE_POLICY_FILE [^)]*policy\.json\)/;

  const unsigned = await api('POST', '/microvms', { name: 'unsigned', rootfs: { image: `${reg.addr}/signed/unsigned:1` } });
  assert.equal(unsigned.status, 403, JSON.stringify(unsigned.json));
  assert.equal(unsigned.json.code, 'SIGNATURE_VERIFICATION_FAILED');
  assert.equal(unsigned.json.reason, 'unsigned');
  assert.equal(unsigned.json.errors[0].field, 'rootfs.image');
  assert.match(unsigned.json.detail, new RegExp(`image ${reg.addr}/signed/unsigned:1 .*is refused by the global image policy`));
  assert.match(unsigned.json.detail, policyRe);
  assert.match(unsigned.json.detail, /it is not signed/);
  assert.equal(unsigned.json.scope, `${reg.addr}/signed`);

  const foreign = await api('POST', '/microvms', { name: 'foreign', rootfs: { image: `${reg.addr}/signed/other:1` } });
  assert.equal(foreign.status, 403, JSON.stringify(foreign.json));
  assert.equal(foreign.json.code, 'SIGNATURE_VERIFICATION_FAILED');
  assert.equal(foreign.json.reason, 'untrusted');
  assert.match(foreign.json.detail, new RegExp(`image ${reg.addr}/signed/other:1 .*signed, but by no key of the policy`));
  assert.match(foreign.json.detail, policyRe);
  // Verified before the pull: nothing of the refused images is in the cache.
  assert.deepEqual((await cachedRefs()).filter((r) => r.includes('/signed/')), []);
  assert.equal((await api('GET', '/microvms')).json.items.length, 0, 'no record for a refused create');

  const t0 = Date.now();
  const vm = await svc.client.microvms.create({ name: 'signed', rootfs: { image: `${reg.addr}/signed/app:1` } });
  made.push(vm.id);
  const up = await svc.client.microvms.waitFor(vm.id, { phase: 'Running', ready: true, timeoutMs: 300_000 });
  t.diagnostic(`signed image: create → Running+ready in ${Date.now() - t0} ms`);
  assert.equal(up.status.phase, 'Running');
  const deadline = Date.now() + 30_000;
  let con = '';
  while (!con.includes('SIGNED-APP-RAN') && Date.now() < deadline) {
    con = await svc.client.microvms.consoleText(vm.id);
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.match(con, /SIGNED-APP-RAN/);
  assert.ok((await cachedRefs()).includes(`${reg.addr}/signed/app:1`));
});

test('registries: one not allowed is refused at create and template create, nothing is pulled; a tenant override allows it for that tenant; a cached unsigned image stays refused where signatures are required', { timeout: 300_000 }, async (t) => {
  const made: string[] = [];
  t.after(async () => {
    for (const id of made) await api('DELETE', `/microvms/${id}`).catch(() => undefined);
    for (const id of made) await svc.client.microvms.waitDeleted(id, { timeoutMs: 60_000 }).catch(() => undefined);
    await api('DELETE', '/tenants/partner?cascade=true').catch(() => undefined);
  });
  const foreignImage = `${other.addr}/x/app:1`;
  const refused = await api('POST', '/microvms', { name: 'elsewhere', rootfs: { image: foreignImage }, start: false });
  assert.equal(refused.status, 403, JSON.stringify(refused.json));
  assert.equal(refused.json.code, 'REGISTRY_NOT_ALLOWED');
  assert.equal(refused.json.errors[0].field, 'rootfs.image');
  assert.equal(refused.json.image, foreignImage);
  assert.equal(refused.json.policy, 'global');
  assert.deepEqual(refused.json.allowedRegistries, [reg.addr]);
  assert.match(refused.json.detail, new RegExp(`registry ${other.addr} of image ${foreignImage} is not allowed by the global image policy`));
  const kernel = await api('POST', '/microvms', { name: 'kernel-elsewhere', kernel: { image: `${other.addr}/x/kernel:1` }, start: false });
  assert.equal(kernel.status, 403, JSON.stringify(kernel.json));
  assert.equal(kernel.json.errors[0].field, 'kernel.image');
  const tpl = await api('POST', '/templates', { name: 'elsewhere', image: foreignImage });
  assert.equal(tpl.status, 403, JSON.stringify(tpl.json));
  assert.equal(tpl.json.code, 'REGISTRY_NOT_ALLOWED');
  assert.equal(tpl.json.errors[0].field, 'image');
  assert.ok(!(await cachedRefs()).includes(foreignImage), 'nothing pulled from a refused registry');

  // Overrides are validated and named.
  const bad = await api('POST', '/tenants', { id: 'badpolicy', imagePolicy: { allowedRegistries: ['https://x.example.com'] } });
  assert.equal(bad.status, 400, JSON.stringify(bad.json));
  assert.equal(bad.json.errors[0].field, 'imagePolicy.allowedRegistries[0]');
  const badKey = await api('POST', '/tenants', { id: 'badpolicy', imagePolicy: { signatures: [{ scope: '*', publicKeys: ['nope'] }] } });
  assert.equal(badKey.status, 400, JSON.stringify(badKey.json));
  assert.equal(badKey.json.errors[0].field, 'imagePolicy.signatures[0].publicKeys[0]');

  // A tenant allowed the other registry too, and no signature rules.
  const created = await api('POST', '/tenants', { id: 'partner', imagePolicy: { allowedRegistries: [reg.addr, other.addr], signatures: [] } });
  assert.equal(created.status, 201, JSON.stringify(created.json));
  assert.deepEqual(created.json.imagePolicy.allowedRegistries, [reg.addr, other.addr]);
  const ok = await api('POST', '/microvms?tenant=partner', { name: 'elsewhere', rootfs: { image: foreignImage }, start: false });
  assert.equal(ok.status, 201, JSON.stringify(ok.json));
  made.push(ok.json.id);
  // Changing a VM's kernel is admitted by the same policy.
  const upd = await api('PUT', `/microvms/${ok.json.id}`, { kernel: { image: '127.0.0.1:1/k/kernel:1' } });
  assert.equal(upd.status, 403, JSON.stringify(upd.json));
  assert.equal(upd.json.code, 'REGISTRY_NOT_ALLOWED');
  assert.equal(upd.json.errors[0].field, 'kernel.image');
  assert.match(upd.json.detail, /tenant partner's image policy \(imagePolicy\.allowedRegistries\)/);
  // The partner may use the unsigned image (its rules replace the global ones): now it is cached...
  const lax = await api('POST', '/microvms?tenant=partner', { name: 'lax', rootfs: { image: `${reg.addr}/signed/unsigned:1` }, start: false });
  assert.equal(lax.status, 201, JSON.stringify(lax.json));
  made.push(lax.json.id);
  assert.ok((await cachedRefs()).includes(`${reg.addr}/signed/unsigned:1`));
  // ...and still refused where the global rule applies: verified per resolve, not per cache entry.
  const still = await api('POST', '/microvms', { name: 'unsigned-cached', rootfs: { image: `${reg.addr}/signed/unsigned:1` }, start: false });
  assert.equal(still.status, 403, JSON.stringify(still.json));
  assert.equal(still.json.code, 'SIGNATURE_VERIFICATION_FAILED');
  // The override is the partner's only.
  assert.equal((await api('POST', '/microvms', { name: 'elsewhere2', rootfs: { image: foreignImage }, start: false })).status, 403);

  // Verification overhead on a cached image: the same create with (default tenant) and without (partner) the rule.
  const time = async (path: string, name: string): Promise<number> => {
    const t0 = performance.now();
    const r = await api('POST', path, { name, rootfs: { image: `${reg.addr}/signed/app:1` }, start: false });
    assert.equal(r.status, 201, JSON.stringify(r.json));
    made.push(r.json.id);
    return performance.now() - t0;
  };
  const verified: number[] = [];
  const plain: number[] = [];
  for (let i = 0; i < 3; i++) {
    verified.push(await time('/microvms', `v${i}`));
    plain.push(await time('/microvms?tenant=partner', `p${i}`));
  }
  const med = (a: number[]): number => [...a].sort((x, y) => x - y)[1]!;
  t.diagnostic(`create (cache hit, start=false): with signature verification ${med(verified).toFixed(0)} ms, without ${med(plain).toFixed(0)} ms (median of 3)`);

  // Dropping the override ({}): the global policy applies to the partner again.
  const reset = await api('PUT', '/tenants/partner', { imagePolicy: {} });
  assert.equal(reset.status, 200, JSON.stringify(reset.json));
  assert.equal(reset.json.imagePolicy, undefined);
  const after = await api('POST', '/microvms?tenant=partner', { name: 'elsewhere3', rootfs: { image: foreignImage }, start: false });
  assert.equal(after.status, 403, JSON.stringify(after.json));
});
