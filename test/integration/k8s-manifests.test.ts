/**
 * deploy/ (seed §4.2) against a real kube-apiserver: the CRDs apply for real, every other manifest
 * directory passes `kubectl apply --dry-run=server` (schema, defaulting, admission), the RBAC grants
 * what each component needs and no more, and MicroVM objects are validated by the CRD schema.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { REPO, installCrds, startControlPlane } from '../support/k8s-control-plane.js';

const cp = await startControlPlane();
after(() => cp.stop());

const DIRS = ['crds', 'operator', 'firecracker', 'api'];
const docsOf = (dir: string): Array<Record<string, any>> =>
  readdirSync(join(REPO, 'deploy', dir))
    .filter((f) => /\.ya?ml$/.test(f))
    .flatMap((f) => parseAllDocuments(readFileSync(join(REPO, 'deploy', dir, f), 'utf8')).map((d) => d.toJS() as Record<string, any>))
    .filter(Boolean);

test('CRDs apply for real and are served', () => {
  installCrds(cp);
  const names = cp.kubectlOk(['get', 'crd', '-o', 'name']).trim().split('\n').sort();
  assert.deepEqual(names, ['customresourcedefinition.apiextensions.k8s.io/microvmpools.microvm.service', 'customresourcedefinition.apiextensions.k8s.io/microvms.microvm.service', 'customresourcedefinition.apiextensions.k8s.io/securitygroups.microvm.service', 'customresourcedefinition.apiextensions.k8s.io/snapshots.microvm.service', 'customresourcedefinition.apiextensions.k8s.io/volumes.microvm.service', 'customresourcedefinition.apiextensions.k8s.io/volumesnapshots.microvm.service']);
  assert.match(cp.kubectlOk(['api-resources', '--api-group=microvm.service']), /microvms\s+mvm\s+microvm\.service\/v1alpha1\s+true\s+MicroVM/);
});

test('every manifest directory passes kubectl apply --dry-run=server', () => {
  cp.kubectlOk(['apply', '-f', join(REPO, 'deploy/operator/00-namespace.yaml')]);
  for (const dir of DIRS) {
    const out = cp.kubectlOk(['apply', '--dry-run=server', '-f', join(REPO, 'deploy', dir)]);
    const lines = out.trim().split('\n');
    assert.equal(lines.length, docsOf(dir).length, `${dir}: ${out}`);
    for (const l of lines) assert.match(l, /\((server dry run)\)$/, `${dir}: ${l}`);
  }
});

test('manifests: images, replicas, the node agent per seed §3.1.3, the API secret', () => {
  const all = DIRS.flatMap(docsOf);
  const workloads = all.filter((d) => ['Deployment', 'DaemonSet'].includes(d.kind));
  const images = workloads.flatMap((w) => w.spec.template.spec.containers.map((c: { image: string }) => c.image)).sort();
  assert.deepEqual(images, ['microvm-service/api:0.1.0', 'microvm-service/firecracker-runtime:0.1.0', 'microvm-service/operator:0.1.0', 'redis:7.0']);
  for (const w of workloads) assert.equal(w.metadata.namespace, 'microvm-system');
  const op = workloads.find((w) => w.metadata.name === 'microvm-operator')!;
  assert.equal(op.spec.replicas, 2);
  const ds = workloads.find((w) => w.kind === 'DaemonSet')!.spec.template.spec;
  assert.equal(ds.hostPID, true);
  assert.deepEqual(ds.nodeSelector, { 'microvm.service/kvm': 'true' });
  const c = ds.containers[0];
  assert.equal(c.securityContext.privileged, true);
  assert.deepEqual(c.env.find((e: { name: string }) => e.name === 'NODE_NAME').valueFrom, { fieldRef: { fieldPath: 'spec.nodeName' } });
  const hostPaths = ds.volumes.map((v: { hostPath?: { path: string } }) => v.hostPath?.path);
  for (const p of ['/dev/kvm', '/var/run/firecracker', '/var/lib/firecracker']) assert.ok(hostPaths.includes(p), p);
  const api = workloads.find((w) => w.metadata.name === 'microvm-api')!.spec.template.spec.containers[0];
  assert.deepEqual(api.env.find((e: { name: string }) => e.name === 'JWT_SECRET').valueFrom, { secretKeyRef: { name: 'microvm-api-jwt', key: 'jwt-secret' } });
  // Two API replicas share their rate-limit buckets through the Redis the manifests ship.
  assert.equal(workloads.find((w) => w.metadata.name === 'microvm-api')!.spec.replicas, 2);
  const redisSvc = all.find((d) => d.kind === 'Service' && d.metadata.name === 'microvm-ratelimit-redis');
  assert.ok(redisSvc, 'deploy/api/redis.yaml has the Service');
  assert.equal(api.env.find((e: { name: string }) => e.name === 'MVM_RATE_LIMIT_REDIS').value, `redis://${redisSvc.metadata.name}.${redisSvc.metadata.namespace}.svc:${redisSvc.spec.ports[0].port}`);
  // Health, API and agent endpoints listen on loopback by default (ADR 27): the pods set what the kubelet and the other pods reach.
  const env = (ct: { env: Array<{ name: string; value?: string }> }, n: string): string | undefined => ct.env.find((e) => e.name === n)?.value;
  const opc = op.spec.template.spec.containers[0];
  const healthPort = opc.ports.find((p: { name: string }) => p.name === 'health').containerPort;
  assert.equal(env(opc, 'MVM_HEALTH_LISTEN'), `0.0.0.0:${healthPort}`);
  assert.equal(env(api, 'MVM_LISTEN'), '0.0.0.0:8080');
  assert.match(env(c, 'MVM_AGENT_LISTEN') ?? '', /^0\.0\.0\.0:\d+$/);
  // The node agent's instance, and the host's register of instances shared with anything else of ours on the node.
  assert.equal(env(c, 'MVM_INSTANCE'), 'agent');
  assert.ok(hostPaths.includes('/run/mvm'));
  assert.ok(c.volumeMounts.some((m: { mountPath: string }) => m.mountPath === '/run/mvm'));
});

test('RBAC: each service account can do what its component needs, and no more', () => {
  for (const f of ['operator/rbac.yaml', 'firecracker/rbac.yaml', 'api/rbac.yaml']) cp.kubectlOk(['apply', '-f', join(REPO, 'deploy', f)]);
  const can = (sa: string, args: string[]): boolean => {
    const r = cp.kubectl(['auth', 'can-i', ...args, `--as=system:serviceaccount:microvm-system:${sa}`]);
    return r.stdout.trim() === 'yes';
  };
  const checks: Array<[string, string[], boolean]> = [
    ['microvm-operator', ['watch', 'microvms.microvm.service', '-A'], true],
    ['microvm-operator', ['delete', 'microvms.microvm.service', '-n', 'tenant-a'], true],
    ['microvm-operator', ['patch', 'microvms.microvm.service', '--subresource=status', '-n', 'tenant-a'], true],
    ['microvm-operator', ['update', 'microvms.microvm.service', '--subresource=finalizers', '-n', 'tenant-a'], true],
    ['microvm-operator', ['create', 'events', '-n', 'tenant-a'], true],
    ['microvm-operator', ['list', 'nodes'], true],
    ['microvm-operator', ['update', 'leases.coordination.k8s.io', '-n', 'microvm-system'], true],
    ['microvm-operator', ['update', 'leases.coordination.k8s.io', '-n', 'kube-system'], false],
    ['microvm-operator', ['delete', 'nodes'], false],
    ['microvm-operator', ['get', 'namespaces'], true],
    ['microvm-operator', ['update', 'namespaces'], false],
    ['microvm-operator', ['get', 'secrets', '-n', 'microvm-system'], false],
    ['firecracker-runtime', ['watch', 'microvms.microvm.service', '-A'], true],
    ['firecracker-runtime', ['update', 'microvms.microvm.service', '--subresource=status', '-n', 'tenant-a'], true],
    ['firecracker-runtime', ['update', 'microvms.microvm.service', '-n', 'tenant-a'], false],
    ['firecracker-runtime', ['delete', 'microvms.microvm.service', '-n', 'tenant-a'], false],
    ['firecracker-runtime', ['create', 'tokenreviews.authentication.k8s.io'], true],
    ['firecracker-runtime', ['create', 'subjectaccessreviews.authorization.k8s.io'], true],
    ['firecracker-runtime', ['patch', 'nodes'], true],
    ['firecracker-runtime', ['get', 'microvms.microvm.service', '--subresource=console', '-n', 'tenant-a'], false],
    ['firecracker-runtime', ['get', 'secrets', '-n', 'microvm-system'], false],
    // Security groups: the agent lists and watches them cluster-wide (it enforces them), never writes them.
    ['firecracker-runtime', ['list', 'securitygroups.microvm.service', '-A'], true],
    ['firecracker-runtime', ['watch', 'securitygroups.microvm.service', '-A'], true],
    ['firecracker-runtime', ['get', 'securitygroups.microvm.service', '-n', 'tenant-a'], true],
    ['firecracker-runtime', ['create', 'securitygroups.microvm.service', '-n', 'tenant-a'], false],
    ['firecracker-runtime', ['update', 'securitygroups.microvm.service', '-n', 'tenant-a'], false],
    ['firecracker-runtime', ['delete', 'securitygroups.microvm.service', '-n', 'tenant-a'], false],
    ['microvm-api', ['create', 'microvms.microvm.service', '-n', 'tenant-a'], true],
    ['microvm-api', ['watch', 'microvms.microvm.service', '-A'], true],
    ['microvm-api', ['create', 'securitygroups.microvm.service', '-n', 'tenant-a'], true],
    ['microvm-api', ['patch', 'securitygroups.microvm.service', '-n', 'tenant-a'], false],
    ['microvm-api', ['update', 'microvms.microvm.service', '--subresource=status', '-n', 'tenant-a'], true],
    ['microvm-api', ['update', 'microvms.microvm.service', '--subresource=finalizers', '-n', 'tenant-a'], false],
    ['microvm-api', ['get', 'microvms.microvm.service', '--subresource=console', '-n', 'tenant-a'], true],
    ['microvm-api', ['get', 'microvms.microvm.service', '--subresource=metrics', '-n', 'tenant-a'], true],
    // Snapshots (ADR 0009): the API keeps the records, the operator reads a restore's node, the agent reads none.
    ['microvm-api', ['create', 'snapshots.microvm.service', '-n', 'tenant-a'], true],
    ['microvm-api', ['delete', 'snapshots.microvm.service', '-n', 'tenant-a'], true],
    ['microvm-api', ['patch', 'snapshots.microvm.service', '-n', 'tenant-a'], false],
    ['microvm-api', ['create', 'microvms.microvm.service', '--subresource=snapshot', '-n', 'tenant-a'], true],
    ['microvm-api', ['delete', 'snapshots.microvm.service', '--subresource=files'], true],
    ['microvm-operator', ['list', 'snapshots.microvm.service', '-n', 'tenant-a'], true],
    ['microvm-operator', ['update', 'snapshots.microvm.service', '-n', 'tenant-a'], false],
    ['firecracker-runtime', ['get', 'snapshots.microvm.service', '-n', 'tenant-a'], false],
    ['firecracker-runtime', ['create', 'microvms.microvm.service', '--subresource=snapshot', '-n', 'tenant-a'], false],
    // Volumes (ADR 0018): the API keeps the records and asks the agents for the bytes; the operator reads a volume's node; the agent reads.
    ['microvm-api', ['create', 'volumes.microvm.service', '-n', 'tenant-a'], true],
    ['microvm-api', ['update', 'volumesnapshots.microvm.service', '-n', 'tenant-a'], true],
    ['microvm-api', ['patch', 'volumes.microvm.service', '-n', 'tenant-a'], false],
    ['microvm-api', ['update', 'volumes.microvm.service', '--subresource=storage'], true],
    ['microvm-api', ['list', 'nodes'], true],
    ['microvm-api', ['list', 'leases.coordination.k8s.io', '-n', 'microvm-system'], true],
    ['microvm-api', ['update', 'leases.coordination.k8s.io', '-n', 'microvm-system'], false],
    ['microvm-api', ['list', 'leases.coordination.k8s.io', '-n', 'kube-system'], false],
    // MicroVMPools (ADR 0033): the operator keeps them (finalizer, status, the autoscaling rule's scale); users own their spec.
    ['microvm-operator', ['watch', 'microvmpools.microvm.service', '-A'], true],
    ['microvm-operator', ['update', 'microvmpools.microvm.service', '--subresource=status', '-n', 'tenant-a'], true],
    ['microvm-operator', ['update', 'microvmpools.microvm.service', '--subresource=scale', '-n', 'tenant-a'], true],
    ['microvm-operator', ['create', 'microvmpools.microvm.service', '-n', 'tenant-a'], false],
    ['microvm-operator', ['delete', 'microvmpools.microvm.service', '-n', 'tenant-a'], false],
    ['firecracker-runtime', ['list', 'microvmpools.microvm.service', '-A'], false],
    ['microvm-api', ['list', 'microvmpools.microvm.service', '-A'], true],
    ['microvm-api', ['update', 'microvmpools.microvm.service', '--subresource=scale', '-n', 'tenant-a'], true],
    ['microvm-api', ['update', 'microvmpools.microvm.service', '-n', 'tenant-a'], false],
    ['microvm-operator', ['get', 'volumes.microvm.service', '-n', 'tenant-a'], true],
    ['microvm-operator', ['update', 'volumes.microvm.service', '-n', 'tenant-a'], false],
    ['firecracker-runtime', ['list', 'volumes.microvm.service', '-A'], true],
    ['firecracker-runtime', ['update', 'volumes.microvm.service', '-n', 'tenant-a'], false],
    ['firecracker-runtime', ['update', 'volumes.microvm.service', '--subresource=storage'], false],
    ['microvm-api', ['create', 'namespaces'], true],
    ['microvm-api', ['delete', 'namespaces'], true],
    ['microvm-api', ['get', 'nodes'], true],
    ['microvm-api', ['patch', 'nodes'], false],
    ['microvm-api', ['create', 'secrets', '-n', 'microvm-system'], true],
    ['microvm-api', ['update', 'configmaps', '-n', 'microvm-system'], true],
    ['microvm-api', ['get', 'secrets', '-n', 'tenant-a'], false],
    ['microvm-api', ['list', 'secrets', '-A'], false],
    ['microvm-api', ['create', 'tokenreviews.authentication.k8s.io'], false],
  ];
  const wrong = checks.filter(([sa, args, want]) => can(sa, args) !== want).map(([sa, args, want]) => `${sa} ${args.join(' ')}: expected ${want ? 'yes' : 'no'}`);
  assert.deepEqual(wrong, []);
  // images/cache has no served resource, so `kubectl auth can-i` cannot name its group: ask a
  // SubjectAccessReview, as the node agent's endpoint does.
  const sar = (sa: string, verb: string): boolean =>
    JSON.parse(
      cp.kubectlOk(
        ['create', '-f', '-', '-o', 'json'],
        JSON.stringify({
          apiVersion: 'authorization.k8s.io/v1',
          kind: 'SubjectAccessReview',
          spec: { user: `system:serviceaccount:microvm-system:${sa}`, groups: ['system:serviceaccounts', 'system:serviceaccounts:microvm-system'], resourceAttributes: { group: 'microvm.service', resource: 'images', subresource: 'cache', verb } },
        }),
      ),
    ).status.allowed === true;
  assert.deepEqual(
    ['get', 'delete', 'update'].map((v) => [v, sar('microvm-api', v), sar('microvm-operator', v)]),
    [['get', true, false], ['delete', true, false], ['update', false, false]],
  );
});

test('deploy/firecracker/register-node (no kubelet, ADR 0029): the agent may create its Node and patch node status only with it applied', () => {
  const can = (args: string[]): boolean => cp.kubectl(['auth', 'can-i', ...args, '--as=system:serviceaccount:microvm-system:firecracker-runtime']).stdout.trim() === 'yes';
  cp.kubectlOk(['apply', '-f', join(REPO, 'deploy/firecracker/rbac.yaml')]);
  assert.deepEqual([can(['create', 'nodes']), can(['patch', 'nodes', '--subresource=status'])], [false, false], 'a real cluster\'s agent (kubectl apply -f deploy/firecracker/) gets neither');
  const dry = cp.kubectlOk(['apply', '--dry-run=server', '-f', join(REPO, 'deploy/firecracker/register-node')]);
  assert.equal(dry.trim().split('\n').length, 2, dry);
  cp.kubectlOk(['apply', '-f', join(REPO, 'deploy/firecracker/register-node')]);
  assert.deepEqual([can(['create', 'nodes']), can(['patch', 'nodes', '--subresource=status']), can(['delete', 'nodes']), can(['update', 'nodes', '--subresource=status'])], [true, true, false, false]);
  cp.kubectlOk(['delete', '-f', join(REPO, 'deploy/firecracker/register-node')]);
});

test('kubectl get mvm shows the printer columns; the CRD schema refuses a bad MicroVM, naming the fields', () => {
  cp.kubectlOk(['create', 'namespace', 'demo']);
  const good = { apiVersion: 'microvm.service/v1alpha1', kind: 'MicroVM', metadata: { name: 'web', namespace: 'demo' }, spec: { vcpu: 2, memory: '512Mi', labels: { app: 'web' } } };
  cp.kubectlOk(['apply', '-f', '-'], JSON.stringify(good));
  const status = { status: { phase: 'Running', ip: '10.100.0.9', node: 'node-1', conditions: [{ type: 'GuestReady', status: 'True', lastTransitionTime: new Date().toISOString() }] } };
  cp.kubectlOk(['patch', 'mvm', 'web', '-n', 'demo', '--subresource=status', '--type=merge', '-p', JSON.stringify(status)]);
  const table = cp.kubectlOk(['get', 'mvm', '-n', 'demo']);
  assert.match(table, /^NAME\s+PHASE\s+IP\s+NODE\s+VCPU\s+MEMORY\s+READY\s+AGE\n/);
  assert.match(table, /\nweb\s+Running\s+10\.100\.0\.9\s+node-1\s+2\s+512Mi\s+True\s+\d+s\n$/);
  // Status is a subresource: a write of the main resource cannot change it.
  cp.kubectlOk(['patch', 'mvm', 'web', '-n', 'demo', '--type=merge', '-p', '{"status":{"phase":"Failed"}}']);
  assert.equal(cp.kubectlOk(['get', 'mvm', 'web', '-n', 'demo', '-o', 'jsonpath={.status.phase}']), 'Running');
  // Field selectors on status.phase (selectableFields).
  assert.match(cp.kubectlOk(['get', 'mvm', '-A', '--field-selector', 'status.phase=Running', '-o', 'name']), /microvm\.microvm\.service\/web/);

  const bad = { ...good, metadata: { name: 'bad', namespace: 'demo' }, spec: { vcpu: 9, memory: '64Gi', labels: { 'bad key!': 'x' } } };
  const r = cp.kubectl(['apply', '-f', '-'], JSON.stringify(bad));
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /spec\.vcpu: Invalid value: 9: spec\.vcpu in body should be less than or equal to 8/);
  assert.match(r.stderr, /spec\.memory: Invalid value: "64Gi": must be between 128Mi and 8Gi/);
  assert.match(r.stderr, /spec\.labels: Invalid value: .*keys must match/);
  const missing = cp.kubectl(['apply', '-f', '-'], JSON.stringify({ ...good, metadata: { name: 'bad2', namespace: 'demo' }, spec: { vcpu: 1 } }));
  assert.match(missing.stderr, /spec\.memory: Required value/);
  const unknown = cp.kubectl(['apply', '-f', '-'], JSON.stringify({ ...good, metadata: { name: 'bad3', namespace: 'demo' }, spec: { vcpu: 1, memory: '128Mi', gpu: 1 } }));
  assert.match(unknown.stderr, /unknown field "spec\.gpu"/);
  assert.deepEqual(cp.kubectlOk(['get', 'mvm', '-n', 'demo', '-o', 'name']).trim().split('\n'), ['microvm.microvm.service/web']);
});
