/**
 * Mapping between the proto messages and the domain, and validation of requests with the same
 * schemas as REST (src/core/schema.ts), so both APIs accept exactly the same microVMs.
 */
import AjvModule from 'ajv';
import addFormatsModule from 'ajv-formats';
import type { MicroVM } from '../core/microvm.js';
import { CreateMicroVMRequest, UpdateMicroVMRequest, type CreateMicroVMRequestT, type UpdateMicroVMRequestT, type VmMetricsT } from '../core/schema.js';
import { ajvToMvmError } from '../api/problem.js';
import type { CreateMicroVMRequest__Output } from './generated/microvm/service/v1alpha1/CreateMicroVMRequest.js';
import type { GetMetricsResponse } from './generated/microvm/service/v1alpha1/GetMetricsResponse.js';
import type { MicroVM as PbMicroVM } from './generated/microvm/service/v1alpha1/MicroVM.js';
import type { MicroVMSpec as PbSpec } from './generated/microvm/service/v1alpha1/MicroVMSpec.js';
import type { MicroVMStatus as PbStatus } from './generated/microvm/service/v1alpha1/MicroVMStatus.js';
import type { UpdateMicroVMRequest__Output } from './generated/microvm/service/v1alpha1/UpdateMicroVMRequest.js';

const Ajv = AjvModule.default;
const addFormats = addFormatsModule.default;
const ajv = new Ajv({ allErrors: true, coerceTypes: false, removeAdditional: false, useDefaults: false, strict: false });
addFormats(ajv);
const validateCreate = ajv.compile(CreateMicroVMRequest);
const validateUpdate = ajv.compile(UpdateMicroVMRequest);

/** REST field names → proto field paths, so a violation names the field the gRPC caller sent. */
const PROTO_FIELD: Record<string, string> = {
  name: 'spec.name',
  vcpu: 'spec.vcpu_count',
  memory: 'spec.memory_size',
  kernel: 'spec.kernel',
  rootfs: 'spec.rootfs',
  networkInterfaces: 'spec.network_interfaces',
  volumes: 'spec.volumes',
  labels: 'spec.labels',
  securityGroups: 'spec.security_groups',
};
const protoField = (f: string, prefix = true): string => {
  const head = f.split(/[.[]/)[0]!;
  const mapped = PROTO_FIELD[head];
  if (!mapped) return f;
  const rest = f.slice(head.length).replace(/readOnly/g, 'read_only').replace(/mountPath/g, 'mount_path');
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
  }
  if (r.noStart) req.start = false;
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
  if (!validateUpdate(req)) throw renameViolations(ajvToMvmError(validateUpdate.errors ?? [], 'request'), false);
  return req as UpdateMicroVMRequestT;
}

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
    securityGroups: [...((s as { securityGroups?: string[] }).securityGroups ?? [])],
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
