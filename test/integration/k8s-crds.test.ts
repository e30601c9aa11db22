/** The CRDs come from the one schema (src/core/schema.ts); the committed YAML is the generator's output. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Type } from '@sinclair/typebox';
import { parseAllDocuments } from 'yaml';
import { crdsYaml, microVmCrd, toStructural } from '../../src/k8s/crd.js';
import { MEMORY_PATTERN, exclusive } from '../../src/core/schema.js';
import { mirrorLabels } from '../../src/k8s/microvm-object.js';
import { REPO } from '../support/k8s-control-plane.js';

const COMMITTED = join(REPO, 'deploy/crds/microvm.service_crds.yaml');

test('deploy/crds/microvm.service_crds.yaml is what the generator writes (regenerate: node dist/src/cmd/mvm-crds.js > deploy/crds/microvm.service_crds.yaml)', () => {
  assert.equal(readFileSync(COMMITTED, 'utf8'), crdsYaml());
});

test('the committed CRDs: names, scope, printer columns, status subresource', () => {
  const docs = parseAllDocuments(readFileSync(COMMITTED, 'utf8')).map((d) => d.toJS() as Record<string, any>);
  assert.deepEqual(docs.map((d) => d.metadata.name).slice(0, 3), ['microvms.microvm.service', 'securitygroups.microvm.service', 'snapshots.microvm.service']);
  const mvm = docs[0]!;
  assert.equal(mvm.spec.group, 'microvm.service');
  assert.equal(mvm.spec.scope, 'Namespaced');
  assert.deepEqual(mvm.spec.names.shortNames, ['mvm']);
  const v = mvm.spec.versions[0];
  assert.equal(v.name, 'v1alpha1');
  assert.deepEqual(v.subresources, { status: {} });
  assert.deepEqual(v.additionalPrinterColumns.map((c: { name: string }) => c.name), ['Phase', 'IP', 'Node', 'vCPU', 'Memory', 'Ready', 'Age']);
  const spec = v.schema.openAPIV3Schema.properties.spec;
  assert.deepEqual([spec.properties.vcpu.minimum, spec.properties.vcpu.maximum], [1, 8]);
  assert.equal(spec.properties.memory.pattern, MEMORY_PATTERN);
  assert.deepEqual(spec.properties.labels.additionalProperties, { type: 'string', maxLength: 63 });
  assert.deepEqual(spec.properties.desiredState.enum, ['Running', 'Stopped', 'Paused', 'Suspended']);
  assert.deepEqual(v.schema.openAPIV3Schema.properties.status.properties.phase.enum.slice(0, 2), ['Pending', 'Scheduled']);
  // Snapshot (ADR 0009): namespaced (the tenant), short name mvmsnap; the record and the restore's shape in spec.
  const snap = docs.find((d) => d.metadata.name === 'snapshots.microvm.service')!;
  assert.ok(snap, 'snapshots.microvm.service is generated');
  assert.equal(snap.spec.scope, 'Namespaced');
  assert.deepEqual(snap.spec.names.shortNames, ['mvmsnap']);
  const sv = snap.spec.versions[0];
  assert.deepEqual(sv.additionalPrinterColumns.map((c: { name: string }) => c.name), ['VM', 'Phase', 'Node', 'Size', 'Age']);
  const ss = sv.schema.openAPIV3Schema.properties.spec;
  assert.deepEqual(ss.properties.phase.enum, ['Creating', 'Ready', 'Failed']);
  assert.deepEqual(ss.properties.vmSpec.properties.vcpu, spec.properties.vcpu, 'vmSpec is the MicroVM spec schema');
  assert.deepEqual(ss.required, ['vmId', 'phase', 'driver', 'node', 'vmSpec']);
});

test('MicroVMPool: the scale subresource, printer columns, the template spec is the MicroVM spec', () => {
  const docs = parseAllDocuments(readFileSync(COMMITTED, 'utf8')).map((d) => d.toJS() as Record<string, any>);
  const pool = docs.find((d) => d.metadata.name === 'microvmpools.microvm.service')!;
  assert.ok(pool, 'microvmpools.microvm.service is generated');
  assert.deepEqual(pool.spec.names.shortNames, ['mvmpool']);
  const v = pool.spec.versions[0];
  assert.deepEqual(v.subresources, { status: {}, scale: { specReplicasPath: '.spec.replicas', statusReplicasPath: '.status.replicas', labelSelectorPath: '.status.selector' } });
  assert.deepEqual(v.additionalPrinterColumns.map((c: { name: string }) => c.name), ['Desired', 'Current', 'Ready', 'Updated', 'Suspended', 'Age']);
  const spec = v.schema.openAPIV3Schema.properties.spec;
  const vmSpec = docs[0]!.spec.versions[0].schema.openAPIV3Schema.properties.spec;
  assert.deepEqual(spec.properties.template.properties.spec.properties.memory, vmSpec.properties.memory, 'the MicroVM spec, CEL rules included');
  assert.equal(spec.properties.template.properties.spec.properties.desiredState, undefined, 'members run: no desiredState in the template');
  assert.deepEqual(spec.properties.scaleDown.enum, ['delete', 'suspend']);
  assert.equal(spec.properties.replicas.default, 1);
  assert.equal(spec.properties.strategy.properties.rollingUpdate.properties.maxUnavailable['x-kubernetes-int-or-string'], true);
});

test('structural conversion: no additionalProperties:false, $id, anyOf or const anywhere; every node typed', () => {
  const walk = (s: Record<string, unknown>, at: string): void => {
    assert.notEqual(s.additionalProperties, false, at);
    for (const k of ['$id', 'anyOf', 'const', 'patternProperties']) assert.equal(s[k], undefined, `${at}: ${k}`);
    if (!s['x-kubernetes-int-or-string'] && !s['x-kubernetes-preserve-unknown-fields']) assert.ok(s.type, `${at}: no type`);
    for (const [k, v] of Object.entries((s.properties ?? {}) as Record<string, Record<string, unknown>>)) walk(v, `${at}.${k}`);
    if (s.items) walk(s.items as Record<string, unknown>, `${at}[]`);
    if (s.additionalProperties && typeof s.additionalProperties === 'object') walk(s.additionalProperties as Record<string, unknown>, `${at}{}`);
  };
  const v = (microVmCrd() as any).spec.versions[0];
  walk(v.schema.openAPIV3Schema, '$');
});

test('toStructural: literals → enum, string|integer → int-or-string, record → map, unknown keyword → error', () => {
  assert.deepEqual(toStructural(Type.Union([Type.Literal('a'), Type.Literal('b')], { description: 'd' })), { description: 'd', type: 'string', enum: ['a', 'b'] });
  assert.deepEqual(toStructural(Type.Union([Type.String(), Type.Integer()])), { 'x-kubernetes-int-or-string': true });
  const rec = toStructural(Type.Record(Type.String({ pattern: '^[a-z]+$' }), Type.Integer()));
  assert.deepEqual(rec.additionalProperties, { type: 'integer' });
  assert.match(JSON.stringify(rec['x-kubernetes-validations']), /matches/);
  assert.deepEqual(toStructural(Type.Object({ x: Type.Optional(Type.Unknown()) })), { type: 'object', properties: { x: { 'x-kubernetes-preserve-unknown-fields': true } } });
  assert.throws(() => toStructural(Type.Union([Type.String(), Type.Object({})])), /not structural/);
  assert.throws(() => toStructural(Type.Not(Type.String())), /not other than a pattern is not structural/);
  // A string's `not: {pattern}` and schema.ts's rules between fields become CEL rules.
  assert.deepEqual(toStructural(Type.String({ not: { pattern: '^x' } }))['x-kubernetes-validations'], [{ rule: "!self.matches('^x')", message: 'must not match ^x' }]);
  const pair = toStructural(Type.Object({ a: Type.Optional(Type.String()), b: Type.Optional(Type.String()) }, exclusive('a', 'b')));
  assert.deepEqual(pair['x-kubernetes-validations'], [{ rule: '!(has(self.a) && has(self.b))', message: 'give a or b, not both' }]);
  assert.throws(() => toStructural(Type.Object({}, { oneOf: [{ required: ['a'] }] })), /oneOf other than/);
});

test('spec.labels mirror as Kubernetes labels: valid ones as they are, the rest hashed', () => {
  const m = mirrorLabels({ app: 'web', 'example.com/tier': 'db', note: 'hello world', 'microvm.service/id': 'x' });
  assert.equal(m.app, 'web');
  assert.equal(m['example.com/tier'], 'db');
  assert.match(m.note!, /^h\.[0-9a-f]{40}$/);
  assert.equal(m['microvm.service/id'], undefined);
  assert.equal(Object.keys(m).filter((k) => k.startsWith('label.microvm.service/')).length, 1);
  assert.deepEqual(mirrorLabels({ note: 'hello world' }), { note: m.note });
});
