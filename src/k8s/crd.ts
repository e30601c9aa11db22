/**
 * The CustomResourceDefinitions of cluster mode, generated from the one schema (src/core/schema.ts),
 * the same TypeBox definitions that validate the REST API (BRIEF §5.5).
 *
 * `toStructural` turns a TypeBox/JSON Schema into a Kubernetes *structural* schema: every node has a
 * `type`; unions of literals become `enum`; `string | integer` becomes `x-kubernetes-int-or-string`;
 * records (`patternProperties`) become `additionalProperties: <value schema>`; `additionalProperties:
 * false` is dropped (Kubernetes prunes unknown fields, and kubectl's strict field validation rejects
 * them); `$id` is dropped. A keyword it does not know is an error, so a new schema feature can never be
 * silently lost from the CRD. Rules the schema cannot express but the domain code checks (memory range,
 * label keys) are added as CEL `x-kubernetes-validations`.
 *
 * `node dist/src/cmd/mvm-crds.js > deploy/crds/microvm.service_crds.yaml` writes them;
 * test/integration/k8s-crds.test.ts fails when that file and this generator drift apart.
 */
import type { TSchema } from '@sinclair/typebox';
import { stringify } from 'yaml';
import { MAX_MEMORY_MIB, MIN_MEMORY_MIB } from '../core/microvm.js';
import { MicroVM, MicroVMPoolSpec, MicroVMPoolStatus, MicroVMSpec, MicroVMStatus, SecurityGroupRequest, Snapshot, VolumeResource, VolumeSnapshotResource, toJsonSchema } from '../core/schema.js';

export const GROUP = 'microvm.service';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;

type Json = Record<string, unknown>;

/** Keywords copied as they are (all of them are allowed in structural schemas). */
const KEPT = new Set([
  'type',
  'description',
  'format',
  'minimum',
  'maximum',
  'exclusiveMinimum',
  'exclusiveMaximum',
  'multipleOf',
  'minLength',
  'maxLength',
  'pattern',
  'minItems',
  'maxItems',
  'uniqueItems',
  'minProperties',
  'maxProperties',
  'required',
  'enum',
  'default',
  'nullable',
]);
/** Keywords handled below or dropped on purpose. */
const HANDLED = new Set(['properties', 'items', 'patternProperties', 'additionalProperties', 'anyOf', 'const', '$id', 'title', 'oneOf', 'not', 'x-exclusive', 'x-required-unless', 'x-excludes']);

/** Convert one JSON schema node (from TypeBox) into a structural schema node. `at` names it in errors. */
export function toStructural(input: TSchema | Json, at = '$'): Json {
  const s = toJsonSchema(input as TSchema);
  for (const k of Object.keys(s)) {
    if (!KEPT.has(k) && !HANDLED.has(k)) throw new Error(`toStructural: ${at}: keyword ${JSON.stringify(k)} has no structural equivalent`);
  }
  const out: Json = {};
  if (s.description !== undefined) out.description = s.description;

  // Rules between fields (schema.ts `exclusive`, `requiredUnless`) and a string's `not: {pattern}` become CEL rules.
  const rules: Array<{ rule: string; message: string }> = [];
  if (s.oneOf !== undefined || s['x-exclusive'] !== undefined) {
    const pair = s['x-exclusive'] as [string, string] | undefined;
    if (!pair) throw new Error(`toStructural: ${at}: oneOf other than schema.ts exclusive() is not structural`);
    rules.push({ rule: `!(has(self.${pair[0]}) && has(self.${pair[1]}))`, message: `give ${pair[0]} or ${pair[1]}, not both` });
  }
  if (s['x-required-unless'] !== undefined) {
    const [field, other] = s['x-required-unless'] as [string, string];
    rules.push({ rule: `has(self.${field}) || has(self.${other})`, message: `${field} is required unless ${other} is given` });
  }
  if (s.not !== undefined || s['x-excludes'] !== undefined) {
    const n = s.not as Json | undefined;
    if (s['x-excludes'] !== undefined) {
      const { field, others } = s['x-excludes'] as { field: string; others: string[] };
      rules.push({ rule: `!has(self.${field}) || (${others.map((o) => `!has(self.${o})`).join(' && ')})`, message: `with ${field}, omit ${others.join(', ')}` });
    } else if (n && typeof n.pattern === 'string' && Object.keys(n).length === 1) {
      rules.push({ rule: `!self.matches(${celString(n.pattern)})`, message: `must not match ${n.pattern}` });
    } else throw new Error(`toStructural: ${at}: not other than a pattern is not structural`);
  }
  const withRules = (o: Json): Json => (rules.length ? { ...o, 'x-kubernetes-validations': [...((o['x-kubernetes-validations'] as unknown[] | undefined) ?? []), ...rules] } : o);

  if (Array.isArray(s.anyOf) && s['x-required-unless'] === undefined) {
    const branches = s.anyOf as Json[];
    if (branches.every((b) => b.const !== undefined)) {
      const types = new Set(branches.map((b) => b.type ?? typeof b.const));
      if (types.size !== 1) throw new Error(`toStructural: ${at}: union of literals of different types`);
      out.type = [...types][0];
      out.enum = branches.map((b) => b.const);
      return out;
    }
    const types = branches.map((b) => b.type).sort();
    if (types.length === 2 && types[0] === 'integer' && types[1] === 'string') {
      // int-or-string carries no type; its branches' value limits (maxLength) cannot be kept.
      out['x-kubernetes-int-or-string'] = true;
      return out;
    }
    throw new Error(`toStructural: ${at}: anyOf other than literals or int-or-string is not structural`);
  }
  if (s.const !== undefined) {
    out.type = s.type ?? typeof s.const;
    out.enum = [s.const];
    return out;
  }
  for (const k of KEPT) if (s[k] !== undefined && k !== 'description') out[k] = s[k];
  if (out.type === undefined) {
    // Type.Unknown()/Any(): free-form.
    out['x-kubernetes-preserve-unknown-fields'] = true;
    return out;
  }
  if (s.type === 'object') {
    if (s.properties) {
      const props: Json = {};
      for (const [k, v] of Object.entries(s.properties as Json)) props[k] = toStructural(v as Json, `${at}.${k}`);
      out.properties = props;
    }
    if (s.patternProperties) {
      const entries = Object.entries(s.patternProperties as Json);
      if (entries.length !== 1 || s.properties) throw new Error(`toStructural: ${at}: only a single-pattern record maps to a map`);
      const [pattern, value] = entries[0]!;
      out.additionalProperties = toStructural(value as Json, `${at}[*]`);
      // The key schema (TypeBox puts only the pattern in the JSON schema) becomes a CEL rule.
      out['x-kubernetes-validations'] = [{ rule: `self.all(k, k.matches(${celString(pattern)}))`, message: `keys must match ${pattern}` }];
    } else if (s.additionalProperties !== undefined && s.additionalProperties !== false) {
      out.additionalProperties = s.additionalProperties === true ? { 'x-kubernetes-preserve-unknown-fields': true } : toStructural(s.additionalProperties as Json, `${at}[*]`);
    } else if (!s.properties) {
      out['x-kubernetes-preserve-unknown-fields'] = true;
    }
  }
  if (s.type === 'array') {
    if (!s.items || Array.isArray(s.items)) throw new Error(`toStructural: ${at}: arrays need one items schema`);
    out.items = toStructural(s.items as Json, `${at}[]`);
  }
  return withRules(out);
}

const celString = (s: string): string => `'${s.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;

interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'number' | 'boolean' | 'date';
  jsonPath: string;
  description?: string;
  priority?: number;
}

interface CrdInput {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  spec: Json;
  status?: Json;
  required?: string[];
  columns: PrinterColumn[];
  selectableFields?: string[];
  /** The scale subresource (kubectl scale, a HorizontalPodAutoscaler). */
  scale?: { specReplicasPath: string; statusReplicasPath: string; labelSelectorPath: string };
  description: string;
}

function crd(c: CrdInput): Json {
  const properties: Json = { spec: c.spec };
  if (c.status) properties.status = c.status;
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: {
      name: `${c.plural}.${GROUP}`,
      labels: { 'app.kubernetes.io/name': 'microvm-service', 'app.kubernetes.io/part-of': 'microvm-service' },
    },
    spec: {
      group: GROUP,
      scope: 'Namespaced',
      names: { kind: c.kind, listKind: `${c.kind}List`, plural: c.plural, singular: c.singular, shortNames: c.shortNames, categories: ['microvm-service'] },
      versions: [
        {
          name: VERSION,
          served: true,
          storage: true,
          schema: {
            openAPIV3Schema: { description: c.description, type: 'object', required: c.required ?? ['spec'], properties },
          },
          ...(c.status || c.scale ? { subresources: { ...(c.status ? { status: {} } : {}), ...(c.scale ? { scale: c.scale } : {}) } } : {}),
          additionalPrinterColumns: c.columns,
          ...(c.selectableFields ? { selectableFields: c.selectableFields.map((jsonPath) => ({ jsonPath })) } : {}),
        },
      ],
    },
  };
}

/** A spec schema of the given properties (records stored through the resource port keep all in the spec). */
const specOf = (required: string[], properties: Json): Json => ({ type: 'object', required, properties });
/** The named properties of a structural schema's `properties`, in the order named. */
const pick = (props: Json, keys: string[]): Json => Object.fromEntries(keys.map((k) => [k, props[k]]));

const AGE_COLUMN: PrinterColumn = { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp' };
const PHASE_COLUMN: PrinterColumn = { name: 'Phase', type: 'string', jsonPath: '.spec.phase' };
const NODE_COLUMN: PrinterColumn = { name: 'Node', type: 'string', jsonPath: '.spec.node' };
const BACKEND_COLUMN: PrinterColumn = { name: 'Backend', type: 'string', jsonPath: '.spec.backend' };

/** MicroVM: spec = MicroVMSpec + desiredState (the API's start/stop intent), status = MicroVMStatus. */
export function microVmCrd(): Json {
  const spec = toStructural(MicroVMSpec, 'MicroVM.spec');
  const sp = spec.properties as Json;
  // Kubernetes-side checks of what validateSpec enforces in the API (src/core/microvm.ts).
  const lo = MIN_MEMORY_MIB;
  const hi = MAX_MEMORY_MIB;
  (sp.memory as Json)['x-kubernetes-validations'] = [
    {
      rule: `!isQuantity(self) || (quantity(self).compareTo(quantity('${lo}Mi')) >= 0 && quantity(self).compareTo(quantity('${hi}Mi')) <= 0)`,
      message: `must be between ${lo}Mi and ${hi / 1024}Gi`,
    },
  ];
  // desiredState lives in the spec: it is the user's intent, like KubeVirt's runStrategy.
  sp.desiredState = {
    ...toStructural((MicroVM.properties as Record<string, TSchema>).desiredState!, 'MicroVM.spec.desiredState'),
    description: 'What the user wants: Running, Stopped or Paused',
    default: 'Running',
  };
  const status = toStructural(MicroVMStatus, 'MicroVM.status');
  (status.properties as Json).updatedAt = { type: 'string', format: 'date-time', description: 'time of the last status write by the store' };
  return crd({
    kind: 'MicroVM',
    plural: 'microvms',
    singular: 'microvm',
    shortNames: ['mvm'],
    description: 'A microVM (Firecracker or QEMU microvm guest). The tenant is the namespace.',
    spec,
    status,
    columns: [
      { name: 'Phase', type: 'string', jsonPath: '.status.phase' },
      { name: 'IP', type: 'string', jsonPath: '.status.ip' },
      { name: 'Node', type: 'string', jsonPath: '.status.node' },
      { name: 'vCPU', type: 'integer', jsonPath: '.spec.vcpu' },
      { name: 'Memory', type: 'string', jsonPath: '.spec.memory' },
      { name: 'Ready', type: 'string', jsonPath: '.status.conditions[?(@.type=="GuestReady")].status' },
      AGE_COLUMN,
    ],
    // Field selectors the store and the operator list by (GA since Kubernetes 1.32).
    selectableFields: ['.status.phase', '.status.node', '.spec.desiredState'],
  });
}

/** SecurityGroup: the request body minus `name` (that is metadata.name). */
export function securityGroupCrd(): Json {
  const spec = toStructural(SecurityGroupRequest, 'SecurityGroup.spec');
  delete (spec.properties as Json).name;
  spec.required = (spec.required as string[]).filter((r) => r !== 'name');
  return crd({
    kind: 'SecurityGroup',
    plural: 'securitygroups',
    singular: 'securitygroup',
    shortNames: ['mvmsg'],
    description: 'Firewall rules of a tenant (namespace), referenced by MicroVM spec.securityGroups.',
    spec,
    columns: [
      { name: 'Description', type: 'string', jsonPath: '.spec.description' },
      AGE_COLUMN,
    ],
  });
}

/**
 * Snapshot: a memory snapshot of a MicroVM (ADR 0009), stored by the API's SnapshotService through
 * the resource port: spec = the service's record (SnapshotSpec in src/core/snapshots.ts) — the fields
 * of the REST `Snapshot` other than identity and times, with the VM's spec as `vmSpec`. `node` is
 * where its files are: a MicroVM restored from it runs only there.
 */
export function snapshotCrd(): Json {
  const p = toStructural(Snapshot, 'Snapshot').properties as Json;
  return crd({
    kind: 'Snapshot',
    plural: 'snapshots',
    singular: 'snapshot',
    shortNames: ['mvmsnap'],
    description: 'A memory snapshot of a microVM (memory, devices, copy-on-write disks) on one node. The tenant is the namespace.',
    spec: specOf(['vmId', 'phase', 'driver', 'node', 'vmSpec'], {
      vmId: p.vmId,
      phase: p.phase,
      message: p.message,
      driver: p.driver,
      node: { ...(p.node as Json), description: 'the node holding its files (a restore runs there)' },
      vmSpec: { ...(p.spec as Json), description: 'the spec of the microVM it was taken of (a restore takes its shape)' },
      sizeBytes: p.sizeBytes,
      durationMs: p.durationMs,
    }),
    columns: [
      { name: 'VM', type: 'string', jsonPath: '.spec.vmId' },
      PHASE_COLUMN,
      NODE_COLUMN,
      { name: 'Size', type: 'integer', jsonPath: '.spec.sizeBytes', description: 'bytes on the node' },
      AGE_COLUMN,
    ],
  });
}

/**
 * Volume: a persistent volume (ADR 0018), stored by the API's VolumeService through the resource
 * port: spec = the service's record (VolumeSpec in src/core/volumes.ts), i.e. the REST `Volume`'s
 * fields and its status fields (phase, attachedTo, node) side by side. `node` is where a node-local
 * volume's bytes are: the MicroVMs using it run only there.
 */
export function volumeCrd(): Json {
  const p = toStructural(VolumeResource, 'Volume').properties as Json;
  const st = (p.status as Json).properties as Json;
  return crd({
    kind: 'Volume',
    plural: 'volumes',
    singular: 'volume',
    shortNames: ['mvmvol'],
    description: 'A persistent volume (ext4 on a block device of a storage backend) that MicroVMs of the tenant (namespace) attach.',
    spec: specOf(['size', 'sizeBytes', 'backend', 'readOnly', 'phase', 'attachedTo'], {
      ...pick(p, ['size', 'sizeBytes', 'backend', 'readOnly', 'labels', 'fromSnapshot']),
      ...pick(st, ['phase', 'message', 'attachedTo', 'node']),
    }),
    columns: [
      { name: 'Size', type: 'string', jsonPath: '.spec.size' },
      PHASE_COLUMN,
      NODE_COLUMN,
      BACKEND_COLUMN,
      { name: 'AttachedTo', type: 'string', jsonPath: '.spec.attachedTo[*].vmId' },
      AGE_COLUMN,
    ],
  });
}

/** VolumeSnapshot: a point-in-time copy of a Volume (the VolumeService's record, VolumeSnapshotSpec). */
export function volumeSnapshotCrd(): Json {
  const p = toStructural(VolumeSnapshotResource, 'VolumeSnapshot').properties as Json;
  const required = ['volumeId', 'backend', 'sizeBytes', 'phase', 'copyOnWrite'];
  return crd({
    kind: 'VolumeSnapshot',
    plural: 'volumesnapshots',
    singular: 'volumesnapshot',
    shortNames: ['mvmvolsnap'],
    description: 'A snapshot of a Volume of the tenant (namespace); a new Volume can be restored from it.',
    spec: specOf(required, pick(p, [...required, 'node'])),
    columns: [
      { name: 'Volume', type: 'string', jsonPath: '.spec.volumeId' },
      PHASE_COLUMN,
      NODE_COLUMN,
      BACKEND_COLUMN,
      { name: 'Size', type: 'integer', jsonPath: '.spec.sizeBytes', description: 'bytes of the volume when taken' },
      AGE_COLUMN,
    ],
  });
}

/**
 * MicroVMPool (ADR 0033): spec = MicroVMPoolSpec with the template's spec the MicroVM CRD's own
 * (the same CEL rules), status = MicroVMPoolStatus, and the scale subresource, so `kubectl scale`
 * and a HorizontalPodAutoscaler size it.
 */
export function microVmPoolCrd(): Json {
  const spec = toStructural(MicroVMPoolSpec, 'MicroVMPool.spec');
  const vmSpec = structuredClone((((microVmCrd().spec as Json).versions as Json[])[0]!.schema as { openAPIV3Schema: { properties: { spec: Json } } }).openAPIV3Schema.properties.spec);
  delete (vmSpec.properties as Json).desiredState;
  const template = (spec.properties as Json).template as Json;
  (template.properties as Json).spec = { ...vmSpec, description: 'the MicroVM spec of each member' };
  return crd({
    kind: 'MicroVMPool',
    plural: 'microvmpools',
    singular: 'microvmpool',
    shortNames: ['mvmpool'],
    description: 'A pool of identical MicroVMs of the tenant (namespace): replicas, spread over nodes, rolling updates, suspend on scale-down.',
    spec,
    status: toStructural(MicroVMPoolStatus, 'MicroVMPool.status'),
    scale: { specReplicasPath: '.spec.replicas', statusReplicasPath: '.status.replicas', labelSelectorPath: '.status.selector' },
    columns: [
      { name: 'Desired', type: 'integer', jsonPath: '.spec.replicas' },
      { name: 'Current', type: 'integer', jsonPath: '.status.replicas' },
      { name: 'Ready', type: 'integer', jsonPath: '.status.readyReplicas' },
      { name: 'Updated', type: 'integer', jsonPath: '.status.updatedReplicas' },
      { name: 'Suspended', type: 'integer', jsonPath: '.status.suspendedReplicas' },
      AGE_COLUMN,
    ],
  });
}

/**
 * Every CRD of the group, in apply order. Later additions go here, each from its schema:
 *   - tenantquotas.microvm.service (TenantQuotas; status.used updated with optimistic concurrency,
 *                                  which makes quota admission atomic in cluster mode)
 */
export const CRDS: ReadonlyArray<() => Json> = [microVmCrd, securityGroupCrd, snapshotCrd, volumeCrd, volumeSnapshotCrd, microVmPoolCrd];

export const MICROVM_RESOURCE = { group: GROUP, version: VERSION, plural: 'microvms', kind: 'MicroVM' } as const;
export const SECURITYGROUP_RESOURCE = { group: GROUP, version: VERSION, plural: 'securitygroups', kind: 'SecurityGroup' } as const;
export const SNAPSHOT_RESOURCE = { group: GROUP, version: VERSION, plural: 'snapshots', kind: 'Snapshot' } as const;
export const VOLUME_RESOURCE = { group: GROUP, version: VERSION, plural: 'volumes', kind: 'Volume' } as const;
export const VOLUME_SNAPSHOT_RESOURCE = { group: GROUP, version: VERSION, plural: 'volumesnapshots', kind: 'VolumeSnapshot' } as const;
export const POOL_RESOURCE = { group: GROUP, version: VERSION, plural: 'microvmpools', kind: 'MicroVMPool' } as const;

/** The multi-document YAML of deploy/crds/microvm.service_crds.yaml. */
export function crdsYaml(): string {
  const header = '# Generated by `node dist/src/cmd/mvm-crds.js` from src/core/schema.ts. Do not edit.\n';
  return header + CRDS.map((f) => stringify(f(), { lineWidth: 0, aliasDuplicateObjects: false })).map((d) => `---\n${d}`).join('');
}
