/**
 * Mapping between the proto messages and the domain, and validation of requests with the same
 * schemas as REST (src/core/schema.ts), so both APIs accept exactly the same microVMs.
 */
import AjvModule from 'ajv';
import addFormatsModule from 'ajv-formats';
import type { MicroVM } from '../core/microvm.js';
import { CreateMicroVMRequest, UpdateMicroVMRequest, type CreateMicroVMRequestT, type MicroVMSpecT, type UpdateMicroVMRequestT, type VmMetricsT } from '../core/schema.js';
import { ajvToMvmError } from '../gateway/problem.js';
import { validationError } from '../core/errors.js';
import type { CreateMicroVMRequest__Output } from './generated/microvm/service/v1alpha1/CreateMicroVMRequest.js';
import type { GetMetricsResponse } from './generated/microvm/service/v1alpha1/GetMetricsResponse.js';
import type { MicroVM as PbMicroVM } from './generated/microvm/service/v1alpha1/MicroVM.js';
import type { Affinity as PbAffinity, Affinity__Output as PbAffinityOut } from './generated/microvm/service/v1alpha1/Affinity.js';
import type { LabelSelector as PbSelector, LabelSelector__Output as PbSelectorOut } from './generated/microvm/service/v1alpha1/LabelSelector.js';
import type { MicroVMSpec as PbSpec } from './generated/microvm/service/v1alpha1/MicroVMSpec.js';
import type { PortMapping as PbPort, PortMapping__Output as PbPortOut } from './generated/microvm/service/v1alpha1/PortMapping.js';
import type { EgressPolicy as PbEgress, EgressPolicy__Output as PbEgressOut } from './generated/microvm/service/v1alpha1/EgressPolicy.js';
import type { Toleration__Output as PbTolerationOut } from './generated/microvm/service/v1alpha1/Toleration.js';
import type { VmAffinityRules as PbRules, VmAffinityRules__Output as PbRulesOut } from './generated/microvm/service/v1alpha1/VmAffinityRules.js';
import type { MicroVMStatus as PbStatus } from './generated/microvm/service/v1alpha1/MicroVMStatus.js';
import type { UpdateMicroVMRequest__Output } from './generated/microvm/service/v1alpha1/UpdateMicroVMRequest.js';

const Ajv = AjvModule.default;
const addFormats = addFormatsModule.default;
const ajv = new Ajv({ allErrors: true, coerceTypes: false, removeAdditional: false, useDefaults: false, strict: false, verbose: true });
addFormats(ajv);
const validateCreate = ajv.compile(CreateMicroVMRequest);
const validateUpdate = ajv.compile(UpdateMicroVMRequest);

/**
 * Every field of a create request / spec (src/core/schema.ts) → its proto field path, or null for
 * a field the gRPC API does not carry (yet), with the reason. Keyed by the schema's own type, so a
 * new schema field does not compile until it is listed here; test/unit/grpc-mapping.test.ts checks this
 * table against the TypeBox properties and the proto's MicroVMSpec fields, and that every mapped
 * field round-trips. Also used to name violations after the field the gRPC caller sent.
 */
export const PROTO_FIELD: Record<Exclude<keyof CreateMicroVMRequestT | keyof MicroVMSpecT, 'start' | 'snapshot' | 'template' | 'source'>, string | null> = {
  name: 'spec.name',
  vcpu: 'spec.vcpu_count',
  memory: 'spec.memory_size',
  kernel: 'spec.kernel',
  rootfs: 'spec.rootfs',
  networkInterfaces: 'spec.network_interfaces',
  volumes: 'spec.volumes',
  labels: 'spec.labels',
  securityGroups: 'spec.security_groups',
  nodeSelector: 'spec.node_selector',
  tolerations: 'spec.tolerations',
  affinity: 'spec.affinity',
  ports: 'spec.ports',
  egress: 'spec.egress',
  lifecycle: 'spec.lifecycle',
  env: 'spec.env',
  files: 'spec.files',
};
/**
 * Fields outside MicroVMSpec: request-only fields with their own proto field (start → no_start,
 * snapshot → CreateMicroVMRequest.snapshot), and the read-only `source` (set by a restore).
 */
export const NOT_SPEC_FIELDS = ['start', 'snapshot', 'template', 'source'] as const;
const NESTED_SNAKE: Record<string, string> = {
  readOnly: 'read_only',
  mountPath: 'mount_path',
  matchLabels: 'match_labels',
  matchExpressions: 'match_expressions',
  labelSelector: 'label_selector',
  topologyKey: 'topology_key',
  vmAffinityTerm: 'vm_affinity_term',
  vmAffinity: 'vm_affinity',
  vmAntiAffinity: 'vm_anti_affinity',
  hostPort: 'host_port',
  guestPort: 'guest_port',
  hostIp: 'host_ip',
  bootTimeout: 'boot_timeout',
};
const NESTED_NAME = new RegExp(`\\b(${Object.keys(NESTED_SNAKE).join('|')})\\b`, 'g');
const protoField = (f: string, prefix = true): string => {
  const head = f.split(/[.[]/)[0]!;
  const mapped = (PROTO_FIELD as Record<string, string | null | undefined>)[head];
  if (!mapped) return f;
  const rest = f.slice(head.length).replace(NESTED_NAME, (w) => NESTED_SNAKE[w]!);
  return (prefix ? mapped : mapped.replace(/^spec\./, '')) + rest;
};

const nonEmpty = <T extends object>(o: T): T | undefined => (Object.values(o).some((v) => v !== undefined) ? o : undefined);
const str = (s: string | null | undefined): string | undefined => (s ? s : undefined);

export function createRequestFromProto(r: CreateMicroVMRequest__Output): CreateMicroVMRequestT {
  const s = r.spec;
  const req: Record<string, unknown> = { name: s?.name ?? '' };
  if (s) {
    if (s.vcpuCount) req.vcpu = s.vcpuCount;
    if (s.memorySize) req.memory = s.memorySize;
    const kernel = s.kernel ? nonEmpty({ image: str(s.kernel.image), cmdline: str(s.kernel.cmdline) }) : undefined;
    if (kernel) req.kernel = JSON.parse(JSON.stringify(kernel));
    const rootfs = s.rootfs ? nonEmpty({ image: str(s.rootfs.image), size: str(s.rootfs.size), readOnly: s.rootfs.readOnly || undefined }) : undefined;
    if (rootfs) req.rootfs = JSON.parse(JSON.stringify(rootfs));
    if (s.networkInterfaces.length) req.networkInterfaces = s.networkInterfaces.map((n) => JSON.parse(JSON.stringify({ name: n.name, mac: str(n.mac), ip: str(n.ip) })));
    if (s.volumes.length) {
      req.volumes = s.volumes.map((v) => JSON.parse(JSON.stringify({ name: v.name, mountPath: v.mountPath, readOnly: v.readOnly || undefined, size: str(v.size) })));
    }
    if (Object.keys(s.labels).length) req.labels = { ...s.labels };
    if (s.securityGroups.length) req.securityGroups = [...s.securityGroups];
    if (Object.keys(s.nodeSelector).length) req.nodeSelector = { ...s.nodeSelector };
    if (s.tolerations.length) req.tolerations = s.tolerations.map(tolerationFromProto);
    const affinity = s.affinity ? affinityFromProto(s.affinity) : undefined;
    if (affinity) req.affinity = affinity;
    if (s.ports.length) req.ports = s.ports.map(portFromProto);
    if (s.egress) req.egress = egressFromProto(s.egress);
    if (s.lifecycle) req.lifecycle = lifecycleFromProto(s.lifecycle);
    if (Object.keys(s.env).length) req.env = { ...s.env };
    if (s.files.length) req.files = s.files.map((f) => JSON.parse(JSON.stringify({ path: f.path, content: f.content, encoding: str(f.encoding), mode: f.mode || undefined })));
  }
  if (r.noStart) req.start = false;
  if (r.snapshot) req.snapshot = r.snapshot;
  if (r.template) req.template = r.template;
  if (!validateCreate(req)) {
    const e = ajvToMvmError(validateCreate.errors ?? [], 'spec');
    throw renameViolations(e);
  }
  return req as CreateMicroVMRequestT;
}

export function updateRequestFromProto(r: UpdateMicroVMRequest__Output): UpdateMicroVMRequestT {
  const req: Record<string, unknown> = {};
  if (r.vcpuCount !== undefined && r.vcpuCount !== null) req.vcpu = r.vcpuCount;
  if (r.memorySize !== undefined && r.memorySize !== null) req.memory = r.memorySize;
  if (r.kernel) req.kernel = JSON.parse(JSON.stringify({ image: str(r.kernel.image), cmdline: str(r.kernel.cmdline) }));
  if (r.labels) req.labels = { ...r.labels.values };
  // Message-typed fields have presence: present replaces (an empty one clears), absent keeps.
  if (r.securityGroups) req.securityGroups = [...r.securityGroups.values];
  if (r.ports) req.ports = r.ports.values.map(portFromProto);
  if (r.egress) req.egress = egressFromProto(r.egress);
  if (r.nodeSelector) req.nodeSelector = { ...r.nodeSelector.values };
  if (r.tolerations) req.tolerations = r.tolerations.values.map(tolerationFromProto);
  if (r.affinity) req.affinity = affinityFromProto(r.affinity) ?? {};
  if (r.lifecycle) req.lifecycle = lifecycleFromProto(r.lifecycle);
  if (!validateUpdate(req)) throw renameViolations(ajvToMvmError(validateUpdate.errors ?? [], 'request'), false);
  return req as UpdateMicroVMRequestT;
}

type AffinityT = NonNullable<MicroVMSpecT['affinity']>;
type RulesT = NonNullable<AffinityT['vmAffinity']>;
type SelectorT = RulesT extends { required?: Array<{ labelSelector: infer L }> } ? L : never;
type TolerationT = NonNullable<MicroVMSpecT['tolerations']>[number];
type PortT = NonNullable<MicroVMSpecT['ports']>[number];
type LifecycleT = NonNullable<MicroVMSpecT['lifecycle']>;
const lifecycleFromProto = (l: { bootTimeout: string; timeout?: string; onTimeout?: string; idleTimeout?: string; onIdle?: string }): LifecycleT =>
  ({
    ...(l.bootTimeout ? { bootTimeout: l.bootTimeout } : {}),
    ...(l.timeout ? { timeout: l.timeout } : {}),
    ...(l.onTimeout ? { onTimeout: l.onTimeout } : {}),
    ...(l.idleTimeout ? { idleTimeout: l.idleTimeout } : {}),
    ...(l.onIdle ? { onIdle: l.onIdle } : {}),
  }) as LifecycleT;
type EgressT = NonNullable<MicroVMSpecT['egress']>;

/** Zero values are "absent", so the schema (not the proto) rejects a missing host/guest port. */
const portFromProto = (p: PbPortOut): PortT =>
  JSON.parse(JSON.stringify({ hostPort: p.hostPort || undefined, guestPort: p.guestPort || undefined, protocol: str(p.protocol), hostIp: str(p.hostIp), nic: str(p.nic) }));
const egressFromProto = (e: PbEgressOut): EgressT =>
  JSON.parse(JSON.stringify({ default: str(e.default), allow: e.allow.length ? [...e.allow] : undefined, deny: e.deny.length ? [...e.deny] : undefined }));
const portToProto = (p: PortT): PbPort => ({ hostPort: p.hostPort, guestPort: p.guestPort, protocol: p.protocol ?? '', hostIp: p.hostIp ?? '', nic: p.nic ?? '' });
const egressToProto = (e: EgressT | undefined): PbEgress | null => (e ? { default: e.default ?? '', allow: [...(e.allow ?? [])], deny: [...(e.deny ?? [])] } : null);

/** Empty proto strings and lists are "absent" (proto3 has no presence for them). */
const tolerationFromProto = (t: PbTolerationOut): TolerationT =>
  JSON.parse(JSON.stringify({ key: str(t.key), operator: str(t.operator), value: str(t.value), effect: str(t.effect) }));
const selectorFromProto = (l: PbSelectorOut | null): SelectorT => {
  const out: Record<string, unknown> = {};
  if (l && Object.keys(l.matchLabels).length) out.matchLabels = { ...l.matchLabels };
  if (l && l.matchExpressions.length) out.matchExpressions = l.matchExpressions.map((e) => ({ key: e.key, operator: e.operator, ...(e.values.length ? { values: [...e.values] } : {}) }));
  return out as SelectorT;
};
const termFromProto = (t: { labelSelector: PbSelectorOut | null; topologyKey: string } | null) => ({
  labelSelector: selectorFromProto(t?.labelSelector ?? null),
  ...(t?.topologyKey ? { topologyKey: t.topologyKey } : {}),
});
const rulesFromProto = (r: PbRulesOut | null): RulesT | undefined => {
  if (!r) return undefined;
  const out: Record<string, unknown> = {};
  if (r.required.length) out.required = r.required.map(termFromProto);
  if (r.preferred.length) out.preferred = r.preferred.map((p) => ({ weight: p.weight, vmAffinityTerm: termFromProto(p.vmAffinityTerm) }));
  return out as RulesT;
};
function affinityFromProto(a: PbAffinityOut): AffinityT | undefined {
  const out: Record<string, unknown> = {};
  const aff = rulesFromProto(a.vmAffinity);
  const anti = rulesFromProto(a.vmAntiAffinity);
  if (aff) out.vmAffinity = aff;
  if (anti) out.vmAntiAffinity = anti;
  return Object.keys(out).length ? (out as AffinityT) : undefined;
}

const selectorToProto = (l: SelectorT): PbSelector => ({
  matchLabels: { ...(l.matchLabels ?? {}) },
  matchExpressions: (l.matchExpressions ?? []).map((e) => ({ key: e.key, operator: e.operator, values: [...(e.values ?? [])] })),
});
const termToProto = (t: { labelSelector: SelectorT; topologyKey?: string }) => ({ labelSelector: selectorToProto(t.labelSelector), topologyKey: t.topologyKey ?? '' });
const rulesToProto = (r: RulesT | undefined): PbRules | null =>
  r
    ? {
        required: (r.required ?? []).map(termToProto),
        preferred: (r.preferred ?? []).map((p) => ({ weight: p.weight, vmAffinityTerm: termToProto(p.vmAffinityTerm) })),
      }
    : null;
const affinityToProto = (a: AffinityT | undefined): PbAffinity | null =>
  a ? { vmAffinity: rulesToProto(a.vmAffinity), vmAntiAffinity: rulesToProto(a.vmAntiAffinity) } : null;

function renameViolations<E extends { violations: Array<{ field: string; message: string }>; message: string }>(e: E, prefix = true): E {
  for (const v of e.violations) v.field = protoField(v.field, prefix);
  (e as { message: string }).message = e.violations.map((v) => `${v.field}: ${v.message}`).join('; ');
  return e;
}

export function specToProto(vm: MicroVM): PbSpec {
  const s = vm.spec;
  return {
    name: vm.name,
    vcpuCount: s.vcpu,
    memorySize: s.memory,
    kernel: s.kernel ? { image: s.kernel.image ?? '', cmdline: s.kernel.cmdline ?? '' } : null,
    rootfs: s.rootfs ? { image: s.rootfs.image ?? '', size: s.rootfs.size ?? '', readOnly: s.rootfs.readOnly ?? false } : null,
    networkInterfaces: (s.networkInterfaces ?? []).map((n) => ({ name: n.name, mac: n.mac ?? '', ip: n.ip ?? '' })),
    volumes: (s.volumes ?? []).map((v) => ({ name: v.name, mountPath: v.mountPath, readOnly: v.readOnly ?? false, size: v.size ?? '' })),
    labels: { ...(s.labels ?? {}) },
    securityGroups: [...(s.securityGroups ?? [])],
    nodeSelector: { ...(s.nodeSelector ?? {}) },
    tolerations: (s.tolerations ?? []).map((t) => ({ key: t.key ?? '', operator: t.operator ?? '', value: t.value ?? '', effect: t.effect ?? '' })),
    affinity: affinityToProto(s.affinity),
    ports: (s.ports ?? []).map(portToProto),
    egress: egressToProto(s.egress),
    lifecycle: s.lifecycle
      ? { bootTimeout: s.lifecycle.bootTimeout ?? '', timeout: s.lifecycle.timeout ?? '', onTimeout: s.lifecycle.onTimeout ?? '', idleTimeout: s.lifecycle.idleTimeout ?? '', onIdle: s.lifecycle.onIdle ?? '' }
      : null,
    env: { ...(s.env ?? {}) },
    files: (s.files ?? []).map((f) => ({ path: f.path, content: f.content, encoding: f.encoding ?? '', mode: f.mode ?? 0 })),
  };
}

export function statusToProto(vm: MicroVM): PbStatus {
  const st = vm.status;
  return {
    phase: st.phase,
    ip: st.ip ?? '',
    node: st.node ?? '',
    reason: st.reason ?? '',
    message: st.message ?? '',
    driver: st.driver ?? '',
    accel: st.accel ?? '',
    pid: st.pid ?? 0,
    conditions: st.conditions.map((c) => ({ type: c.type, status: c.status, reason: c.reason ?? '', message: c.message ?? '', lastTransitionTime: c.lastTransitionTime })),
    startedAt: st.startedAt ?? '',
    readyAt: st.readyAt ?? '',
    ready: st.conditions.some((c) => c.type === 'GuestReady' && c.status === 'True'),
    guestAgentVersion: st.guestAgent?.version ?? '',
    suspendedAt: st.phase === 'Suspended' ? (st.suspendedAt ?? '') : '',
    expiresAt: st.lifetime?.expiresAt ?? '',
  };
}

export function vmToProto(vm: MicroVM): PbMicroVM {
  return {
    id: vm.id,
    tenant: vm.tenant,
    spec: specToProto(vm),
    status: statusToProto(vm),
    desiredState: vm.desiredState,
    generation: vm.generation,
    resourceVersion: vm.resourceVersion,
    createdAt: vm.createdAt,
    updatedAt: vm.updatedAt,
  };
}

export function metricsToProto(m: VmMetricsT): GetMetricsResponse {
  return {
    id: m.id,
    phase: m.phase,
    timestamp: m.timestamp,
    cpuSeconds: m.cpuSeconds,
    memoryRssBytes: m.memoryRssBytes,
    guestMemoryBytes: m.guestMemoryBytes,
    uptimeSeconds: m.uptimeSeconds,
    block: m.block.map((b) => ({ device: b.device, readBytes: b.readBytes, writeBytes: b.writeBytes, readOps: b.readOps, writeOps: b.writeOps })),
    net: m.net.map((n) => ({ device: n.device, rxBytes: n.rxBytes, txBytes: n.txBytes, rxPackets: n.rxPackets, txPackets: n.txPackets })),
    bootMsVmm: m.bootMs?.vmm ?? 0,
    bootMsGuestReady: m.bootMs?.guestReady ?? 0,
  };
}

/** The id (or name) of a request naming a microVM: required and at most 128 characters, as REST's path ids. */
export function requiredId(id: string | undefined, field = 'id'): string {
  if (!id) throw validationError(field, 'is required (the microVM id or name)');
  if (id.length > 128) throw validationError(field, 'must be at most 128 characters');
  return id;
}
