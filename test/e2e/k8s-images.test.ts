/**
 * The images API in cluster mode (ADR 0019, 0015): the API in cluster mode (its own ServiceAccount,
 * deploy/api RBAC), the operator and two node agents as local processes on a real kube-apiserver,
 * a real local registry and one real QEMU guest booted from an OCI image. The same routes and
 * ImageManager as standalone: each node agent manages its own cache (its own
 * MVM_IMAGE_CACHE_DIR), the API fans out to the agents' endpoints (TokenReview + SAR on
 * `images/cache`) and merges: listed with the node, deleted from every node holding it, 409
 * naming the node while a VM there uses it, gc per node, a node that does not answer a warning.
 * The agents read the image settings as standalone does (here: MVM_ROOTFS_MAX_SIZE at boot).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readdirSync } from 'node:fs';
import { chmod, copyFile, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ANN_AGENT_ENDPOINT } from '../../src/agent/endpoint/server.js';
import { findHostKernel } from '../../src/storage/default-images.js';
import { until } from '../support/k8s-operator-cluster.js';
import { startClusterApiHarness, type ClusterApiHarness } from '../support/k8s-cluster-api.js';
import { buildOciImage, pushImage, startRegistry, type TestRegistry } from '../support/registry.js';

const hostKernel = await findHostKernel().catch(() => undefined);
const skip = hostKernel ? false : 'linux-image-cloud-amd64 not installed (make deps)';

const ADMIN = 'adm_cluster_images_token_0123456789';
let k: ClusterApiHarness | undefined;
let reg: TestRegistry | undefined;
let work: string;
let ref: string;
const cacheOf = (node: string): string => join(work, `cache-${node}`);
/** Entries of a node's OCI rootfs cache (what `DELETE /images` and gc remove). */
const cached = (node: string): string[] => {
  const dir = join(cacheOf(node), 'oci');
  return existsSync(dir) ? readdirSync(dir).filter((n) => !n.startsWith('.')) : [];
};

before(async () => {
  if (skip) return;
  work = await mkdtemp(join(tmpdir(), 'mvm-k8s-img-'));
  const rootfs = join(work, 'rootfs');
  await mkdir(join(rootfs, 'bin'), { recursive: true });
  await copyFile('/bin/busybox', join(rootfs, 'bin/busybox'));
  await symlink('busybox', join(rootfs, 'bin/sh'));
  await writeFile(join(rootfs, 'app.sh'), '#!/bin/sh\necho IMAGE-APP-UP\nexec busybox sleep 100000\n');
  await chmod(join(rootfs, 'app.sh'), 0o755);
  await buildOciImage({ rootfsDir: rootfs, layoutDir: join(work, 'layout'), tag: 'app', workDir: join(work, 'umoci'), spec: { entrypoint: ['/app.sh'], env: ['PATH=/bin'] } });
  reg = await startRegistry();
  await pushImage(join(work, 'layout'), 'app', reg.addr, 'k8simg/app:1');
  ref = `${reg.addr}/k8simg/app:1`;
  // The image policy (ADR 0024) of the API (in process) and of the node agents (they inherit the environment).
  process.env.MVM_REGISTRIES_ALLOWED = reg.addr;

  k = await startClusterApiHarness({
    admin: ADMIN,
    nodes: ['node-a', 'node-b'],
    // Each node its own image cache; a short resolve lease so a delete right after the VM is gone is not "being created".
    agentEnv: (node) => ({ MVM_IMAGE_CACHE_DIR: cacheOf(node), MVM_IMAGE_LEASE: '2s', MVM_ROOTFS_MAX_SIZE: '1Gi' }),
    dataDir: join(work, 'api'),
  });
});

after(async () => {
  delete process.env.MVM_REGISTRIES_ALLOWED;
  await k?.stop();
  await reg?.stop();
  if (work) await rm(work, { recursive: true, force: true });
});

test('cluster mode: the images API lists each node cache with its node, refuses deleting an image a VM uses (naming the node), deletes it from the node once unused; admin only; the agent endpoint checks the caller; a silent node is a warning', { skip, timeout: 600_000 }, async () => {
  const { c, call, waitPhase } = k!;
  await k!.tenant('acme');
  const tenant = await k!.apiKey('acme', 'tenant-admin', 'k');

  // Cluster mode admits images by the same policy as standalone: a registry not allowed is 403 at once.
  const refusedReg = await call(tenant, 'POST', '/microvms', { name: 'elsewhere', vcpu: 1, memory: '128Mi', rootfs: { image: '127.0.0.1:1/k8simg/app:1' } });
  assert.equal(refusedReg.status, 403, refusedReg.text);
  assert.equal(refusedReg.json.code, 'REGISTRY_NOT_ALLOWED');
  assert.equal(refusedReg.json.errors[0].field, 'rootfs.image');
  assert.match(refusedReg.json.detail, /global image policy \(MVM_REGISTRIES_ALLOWED\)/);
  // Past the API (a MicroVM object written with kubectl), the node refuses before pulling.
  c.cp.kubectlOk(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'microvm.service/v1alpha1', kind: 'MicroVM', metadata: { name: 'sneaky', namespace: 'acme' }, spec: { vcpu: 1, memory: '128Mi', rootfs: { image: '127.0.0.1:1/k8simg/app:1' } } }));
  const sneaky = await until(c, 'the node to refuse the image', () => {
    const r = c.cp.kubectl(['get', 'mvm', 'sneaky', '-n', 'acme', '-o', 'json']);
    const st = r.status === 0 ? (JSON.parse(r.stdout) as { status?: { phase?: string } }).status : undefined;
    return st?.phase === 'Failed' ? st : undefined;
  }, 120_000);
  assert.match(JSON.stringify(sneaky), /registry 127\.0\.0\.1:1 of image 127\.0\.0\.1:1\/k8simg\/app:1 is not allowed by the global image policy/);
  c.cp.kubectlOk(['delete', 'mvm', 'sneaky', '-n', 'acme', '--wait=false']);

  // A VM booted from the OCI image on some node: the image is in that node's cache only.
  const created = await call(tenant, 'POST', '/microvms', { name: 'img', vcpu: 1, memory: '128Mi', rootfs: { image: ref } });
  assert.equal(created.status, 201, created.text);
  const id = created.json.id as string;
  const vm = await waitPhase(tenant, id, 'Running', true);
  const node = vm.status.node as string;
  const other = node === 'node-a' ? 'node-b' : 'node-a';
  assert.equal(cached(node).length, 1, 'the image is in the cache of the VM node');
  assert.deepEqual(cached(other), [], 'and not in the other node cache');

  // GET (admin): merged over the nodes, each image with the node it is cached on; no warning.
  const list = await call(ADMIN, 'GET', '/images');
  assert.equal(list.status, 200, list.text);
  assert.equal(list.json.warnings, undefined, list.text);
  const img = list.json.items.find((i: any) => i.kind === 'rootfs' && i.references.includes(ref));
  assert.ok(img, list.text);
  assert.equal(img.node, node);
  assert.equal(img.inUse, 1);
  assert.ok(img.sizeBytes > 0 && /^sha256:[0-9a-f]{64}$/.test(img.digest), list.text);
  assert.ok(list.json.items.every((i: any) => i.node === node), 'nothing cached on the other node');

  // Not for tenants, as in standalone: the caches are node-wide.
  assert.equal((await call(tenant, 'GET', '/images')).status, 403);
  assert.equal((await call(tenant, 'DELETE', `/images/${img.digest}`)).status, 403);
  assert.equal((await call(tenant, 'POST', '/images/gc', {})).status, 403);

  // In use: 409 naming the node; gc keeps it and reports per node.
  const refused = await call(ADMIN, 'DELETE', `/images/${img.digest}`);
  assert.equal(refused.status, 409, refused.text);
  assert.equal(refused.json.code, 'CONFLICT');
  assert.match(refused.json.detail, new RegExp(`in use on node ${node} by 1 microVM`));
  const gc = await call(ADMIN, 'POST', '/images/gc', { maxIdle: '0s' });
  assert.equal(gc.status, 200, gc.text);
  assert.ok(!gc.json.removed.some((r: any) => r.digest === img.digest), gc.text);
  assert.deepEqual(gc.json.nodes.map((n: any) => n.node), ['node-a', 'node-b']);
  assert.ok(gc.json.nodes.find((n: any) => n.node === node).keptInUse >= 1, gc.text);
  assert.equal(cached(node).length, 1);

  // The node agent's image routes serve only callers the cluster authorises: none → 401, a
  // ServiceAccount without the RBAC rights (images/cache) → 403; a refused delete removes nothing.
  const ep = c.kubectlJson(['get', 'node', node]).metadata.annotations[ANN_AGENT_ENDPOINT] as string;
  assert.equal((await fetch(`${ep}/v1/images`)).status, 401);
  assert.equal((await fetch(`${ep}/v1/images`, { headers: { authorization: 'Bearer not-a-token' } })).status, 401);
  c.cp.kubectlOk(['create', 'serviceaccount', 'nosy', '-n', 'acme']);
  const nosy = c.cp.kubectlOk(['create', 'token', 'nosy', '-n', 'acme', '--audience', 'microvm-agent']).trim();
  const auth = { authorization: `Bearer ${nosy}` };
  assert.equal((await fetch(`${ep}/v1/images`, { headers: auth })).status, 403);
  assert.equal((await fetch(`${ep}/v1/images/${img.digest}`, { method: 'DELETE', headers: auth })).status, 403);
  assert.equal((await fetch(`${ep}/v1/images/gc?maxIdleMs=0`, { method: 'POST', headers: auth })).status, 403);
  assert.equal(cached(node).length, 1, 'refused: nothing removed');

  // Once the VM is gone the image is unused: DELETE removes it from the node's cache directory.
  assert.equal((await call(tenant, 'DELETE', `/microvms/${id}`)).status, 202);
  await until(c, 'the VM gone', () => c.cp.kubectl(['get', 'mvm', 'img', '-n', 'acme']).status !== 0, 120_000);
  await until(c, 'the image unused on its node', async () => (await call(ADMIN, 'GET', '/images')).json.items.find((i: any) => i.digest === img.digest)?.inUse === 0, 30_000);
  const del = await until(c, 'the delete accepted', async () => {
    const r = await call(ADMIN, 'DELETE', `/images/${img.digest}`);
    return r.status === 409 && /being created/.test(r.text) ? undefined : r; // the 2 s resolve lease
  }, 30_000);
  assert.equal(del.status, 204, del.text);
  assert.deepEqual(cached(node), [], 'removed from the node cache directory');
  assert.ok(!(await call(ADMIN, 'GET', '/images')).json.items.some((i: any) => i.digest === img.digest));
  assert.equal((await call(ADMIN, 'DELETE', `/images/${img.digest}`)).status, 404);
  assert.equal((await call(ADMIN, 'DELETE', '/images/nonsense')).status, 400);

  // The node reads the same image settings as standalone: its MVM_ROOTFS_MAX_SIZE (1Gi here) refuses
  // a larger root disk at boot (the API resolves no images), saying which step and node.
  const big = await call(tenant, 'POST', '/microvms', { name: 'toobig', vcpu: 1, memory: '128Mi', rootfs: { image: ref, size: '2Gi' } });
  assert.equal(big.status, 201, big.text);
  await until(c, 'the oversized root disk refused by its node', async () => {
    const v = (await call(tenant, 'GET', `/microvms/${big.json.id}`)).json;
    return /step root-disk: rootfs\.size 2Gi exceeds node node-[ab]'s maximum root disk size of 1024Mi/.test(v?.status?.message ?? '');
  }, 120_000);
  assert.equal((await call(tenant, 'DELETE', `/microvms/${big.json.id}`)).status, 202);
  await until(c, 'the refused VM gone', () => c.cp.kubectl(['get', 'mvm', 'toobig', '-n', 'acme']).status !== 0, 120_000);
  // Its node had pulled the image before refusing the disk; now unused, the gc removes it there (after the resolve lease).
  const swept = await until(c, 'gc removes the unused image', async () => {
    const r = await call(ADMIN, 'POST', '/images/gc', { maxIdle: '0s' });
    return r.json?.removed?.some((x: any) => x.digest === img.digest) ? r : undefined;
  }, 30_000);
  const where = swept.json.removed.find((x: any) => x.digest === img.digest).node as string;
  assert.ok(swept.json.nodes.find((n: any) => n.node === where).removed.some((x: any) => x.digest === img.digest), swept.text);
  assert.deepEqual(cached(where), [], 'removed from that node cache directory');

  // A node whose agent does not answer: a partial result with a warning naming it, not an omission.
  await c.agents.find((a) => a.node === other)!.kill9();
  const partial = await call(ADMIN, 'GET', '/images');
  assert.equal(partial.status, 200, partial.text);
  assert.deepEqual(partial.json.warnings.map((w: any) => w.node), [other], partial.text);
  assert.match(partial.json.warnings[0].message, /did not answer|not asked/);
  const gc2 = await call(ADMIN, 'POST', '/images/gc', {});
  assert.equal(gc2.status, 200, gc2.text);
  assert.deepEqual(gc2.json.nodes.map((n: any) => n.node), [node]);
  assert.deepEqual(gc2.json.warnings.map((w: any) => w.node), [other]);
});
