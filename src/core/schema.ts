/**
 * The one schema of the MicroVM resource (seed §3.1.1 CRD and §3.5.2 proto).
 * REST validation, the TypeScript types, the OpenAPI document, the gRPC mapping
 * and the CRD's openAPIV3Schema are all derived from these definitions.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';

/**
 * `a` and `b` are mutually exclusive (at most one of them): a `oneOf` of "has a", "has b" and
 * "has neither", which every JSON Schema tool understands. `x-exclusive` names the pair for the
 * REST error (src/gateway/problem.ts names the field) and the CRD generator (a CEL rule).
 */
export function exclusive(a: string, b: string): { oneOf: Array<Record<string, unknown>>; 'x-exclusive': [string, string] } {
  return {
    oneOf: [{ required: [a] }, { required: [b] }, { not: { anyOf: [{ required: [a] }, { required: [b] }] } }],
    'x-exclusive': [a, b],
  };
}

/** With `field` given, none of `others` may be (they come from what `field` names). */
export function excludes(field: string, others: string[]): { not: Record<string, unknown>; 'x-excludes': { field: string; others: string[] } } {
  return { not: { anyOf: others.map((o) => ({ required: [field, o] })) }, 'x-excludes': { field, others } };
}

/** `field` is required unless `other` is given: an `anyOf` of the two `required`s. */
export function requiredUnless(field: string, other: string): { anyOf: Array<Record<string, unknown>>; 'x-required-unless': [string, string] } {
  return { anyOf: [{ required: [field] }, { required: [other] }], 'x-required-unless': [field, other] };
}

export const QUANTITY_PATTERN = '^[1-9][0-9]*(Mi|Gi)$';
/** A volume size: 16Mi (room for an ext4 journal) to 9999999Mi, or 1Gi to 16384Gi. */
export const VOLUME_SIZE_PATTERN = '^(1[6-9]|[2-9][0-9]|[1-9][0-9]{2,6})Mi$|^([1-9][0-9]{0,3}|1[0-5][0-9]{3}|16[0-2][0-9]{2}|163[0-7][0-9]|1638[0-4])Gi$';

/** Guest memory: 128Mi to 8192Mi, or 1Gi to 8Gi. */
export const MEMORY_PATTERN = '^((12[89]|1[3-9][0-9]|[2-9][0-9]{2}|[1-7][0-9]{3}|80[0-9]{2}|81[0-8][0-9]|819[0-2])Mi|[1-8]Gi)$';
/** A root disk size: at most 256Gi (262144Mi). */
export const ROOTFS_SIZE_PATTERN = '^(([1-9][0-9]{0,4}|1[0-9]{5}|2[0-5][0-9]{4}|26[01][0-9]{3}|2620[0-9]{2}|2621[0-3][0-9]|26214[0-4])Mi|([1-9][0-9]?|1[0-9]{2}|2[0-4][0-9]|25[0-6])Gi)$';
export const NAME_PATTERN = '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$';
export const LABEL_KEY_PATTERN = '^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$';
export const MAC_PATTERN = '^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$';
/** A unicast MAC (the multicast bit of the first octet clear), as a guest NIC needs. */
export const UNICAST_MAC_PATTERN = '^[0-9a-fA-F][02468aceACE](:[0-9a-fA-F]{2}){5}$';

/** The lifecycle phases of a microVM, in lifecycle order: the one list every edge (CLI, gRPC, metrics, dashboard) uses. */
export const PHASES = ['Pending', 'Scheduled', 'Starting', 'Running', 'Paused', 'Suspending', 'Suspended', 'Stopping', 'Stopped', 'Failed', 'Deleting'] as const;

export const Phase = Type.Union(
  PHASES.map((p) => Type.Literal(p)),
  { description: 'Lifecycle phase' },
);

export const KernelSpec = Type.Object(
  {
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 512, description: 'Kernel image reference or "default"' })),
    cmdline: Type.Optional(Type.String({ maxLength: 2048, description: 'Extra kernel command line appended to the generated one' })),
  },
  { additionalProperties: false },
);

export const RootFSSpec = Type.Object(
  {
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 512, description: 'Root filesystem image reference or "default"' })),
    size: Type.Optional(Type.String({ pattern: ROOTFS_SIZE_PATTERN, description: 'Root disk size, e.g. 1Gi: at most 256Gi, at least the image, at most the node\'s MVM_ROOTFS_MAX_SIZE (those two: 422)' })),
    readOnly: Type.Optional(Type.Boolean({ description: 'Attach the shared image read-only instead of a copy-on-write layer' })),
  },
  { additionalProperties: false },
);

export const NetworkInterface = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN, maxLength: 15 }),
    mac: Type.Optional(Type.String({ pattern: UNICAST_MAC_PATTERN, maxLength: 17, not: { pattern: '^(00:){5}00$' }, description: 'unicast MAC, not all zeros; default derived from the VM id' })),
    ip: Type.Optional(Type.String({ format: 'ipv4', maxLength: 15, description: "IPv4 address (dotted quad, no leading zeros) inside the node network's subnet, other than its network, broadcast and gateway addresses; default the next free one" })),
  },
  { additionalProperties: false },
);

export const Volume = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN, maxLength: 63 }),
    mountPath: Type.String({ pattern: '^/[A-Za-z0-9._/-]+$', not: { pattern: '(^|/)\\.\\.(/|$)' }, maxLength: 256, description: 'absolute guest path of letters, digits, ".", "_", "-" and "/"; not "/" and without ".."' }),
    readOnly: Type.Optional(Type.Boolean()),
    size: Type.Optional(Type.String({ pattern: VOLUME_SIZE_PATTERN, description: 'creates the volume (16Mi to 16384Gi) when the tenant has none of this name' })),
  },
  { additionalProperties: false },
);

export const CIDR_PATTERN = '^(\\d{1,3}\\.){3}\\d{1,3}/\\d{1,2}$';
const OCTET = '(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])';
/** An IPv4 address or network: a.b.c.d (no leading zeros) with an optional /0-/32 (a bare address is a /32). */
export const IPV4_CIDR_PATTERN = `^${OCTET}(\\.${OCTET}){3}(/(3[0-2]|[12][0-9]|[0-9]))?$`;
const PORT = '(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})';
/** A port or a range of ports as text: "80" or "8000-8100" (1-65535, no leading zeros). */
export const PORT_RANGE_PATTERN = `^${PORT}(-${PORT})?$`;

export const PortMapping = Type.Object(
  {
    hostPort: Type.Integer({ minimum: 1, maximum: 65535 }),
    guestPort: Type.Integer({ minimum: 1, maximum: 65535 }),
    protocol: Type.Optional(Type.Union([Type.Literal('tcp'), Type.Literal('udp')])),
    hostIp: Type.Optional(Type.String({ format: 'ipv4', maxLength: 15, not: { pattern: '^127\\.' }, description: 'publish on this host address only (IPv4, not loopback)' })),
    nic: Type.Optional(Type.String({ maxLength: 15, description: 'one of the VM\'s networkInterfaces (default the first)' })),
  },
  { additionalProperties: false },
);

export const EgressPolicy = Type.Object(
  {
    default: Type.Optional(Type.Union([Type.Literal('allow'), Type.Literal('deny')])),
    allow: Type.Optional(Type.Array(Type.String({ pattern: IPV4_CIDR_PATTERN, maxLength: 18 }), { maxItems: 256 })),
    deny: Type.Optional(Type.Array(Type.String({ pattern: IPV4_CIDR_PATTERN, maxLength: 18 }), { maxItems: 256 })),
  },
  { additionalProperties: false },
);

export const SecurityRule = Type.Object(
  {
    direction: Type.Union([Type.Literal('ingress'), Type.Literal('egress')]),
    protocol: Type.Union([Type.Literal('tcp'), Type.Literal('udp'), Type.Literal('icmp'), Type.Literal('any')]),
    ports: Type.Optional(Type.Union([Type.String({ pattern: PORT_RANGE_PATTERN, maxLength: 11 }), Type.Integer({ minimum: 1, maximum: 65535 })], { description: '"80", 80 or "8000-8100" (tcp and udp only; the range in order)' })),
    cidr: Type.Optional(Type.String({ pattern: IPV4_CIDR_PATTERN, maxLength: 18 })),
    group: Type.Optional(Type.String({ minLength: 1, maxLength: 63, description: 'another security group (name or id) of the same tenant (404 when there is none)' })),
    action: Type.Optional(Type.Union([Type.Literal('accept'), Type.Literal('drop')])),
    description: Type.Optional(Type.String({ maxLength: 256 })),
  },
  { additionalProperties: false, ...exclusive('cidr', 'group') },
);

export const SecurityGroupRequest = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN, minLength: 1, maxLength: 63 }),
    description: Type.Optional(Type.String({ maxLength: 256 })),
    rules: Type.Array(SecurityRule, { maxItems: 1000 }),
  },
  { additionalProperties: false },
);

export const SecurityGroupUpdate = Type.Object(
  {
    description: Type.Optional(Type.String({ maxLength: 256 })),
    rules: Type.Optional(Type.Array(SecurityRule, { maxItems: 1000 })),
  },
  { additionalProperties: false, minProperties: 1 },
);

export const SecurityGroupResource = Type.Object({
  id: Type.String(),
  name: Type.String(),
  tenant: Type.String(),
  description: Type.Optional(Type.String()),
  rules: Type.Array(SecurityRule),
  resourceVersion: Type.String(),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

export const Labels = Type.Record(Type.String({ pattern: LABEL_KEY_PATTERN, maxLength: 253 }), Type.String({ maxLength: 63 }), {
  description: 'Free-form labels',
});

/** Placement constraints (ADR 0016), named after Kubernetes' pod fields. */
const LabelKey = Type.String({ pattern: LABEL_KEY_PATTERN, maxLength: 253 });
export const LabelSelectorRequirement = Type.Object(
  {
    key: LabelKey,
    operator: Type.Union([Type.Literal('In'), Type.Literal('NotIn'), Type.Literal('Exists'), Type.Literal('DoesNotExist')]),
    values: Type.Optional(Type.Array(Type.String({ maxLength: 63 }), { maxItems: 64, description: 'non-empty for In/NotIn, absent for Exists/DoesNotExist' })),
  },
  { additionalProperties: false },
);
export const LabelSelector = Type.Object(
  {
    matchLabels: Type.Optional(Type.Record(LabelKey, Type.String({ maxLength: 63 }), { maxProperties: 16 })),
    matchExpressions: Type.Optional(Type.Array(LabelSelectorRequirement, { maxItems: 16 })),
  },
  { additionalProperties: false, description: 'selects microVMs of the same tenant by spec.labels; {} selects all' },
);
export const VmAffinityTerm = Type.Object(
  {
    labelSelector: LabelSelector,
    topologyKey: Type.Optional(Type.String({ pattern: LABEL_KEY_PATTERN, maxLength: 253, description: 'node label naming the topology domain; default kubernetes.io/hostname (the node itself)' })),
  },
  { additionalProperties: false },
);
export const WeightedVmAffinityTerm = Type.Object(
  { weight: Type.Integer({ minimum: 1, maximum: 100 }), vmAffinityTerm: VmAffinityTerm },
  { additionalProperties: false },
);
export const VmAffinityRules = Type.Object(
  {
    required: Type.Optional(Type.Array(VmAffinityTerm, { maxItems: 16, description: 'hard: every term must hold at placement' })),
    preferred: Type.Optional(Type.Array(WeightedVmAffinityTerm, { maxItems: 16, description: 'soft: weights add to the node score' })),
  },
  { additionalProperties: false },
);
export const Affinity = Type.Object(
  { vmAffinity: Type.Optional(VmAffinityRules), vmAntiAffinity: Type.Optional(VmAffinityRules) },
  { additionalProperties: false },
);
export const TaintEffect = Type.Union([Type.Literal('NoSchedule'), Type.Literal('PreferNoSchedule'), Type.Literal('NoExecute')]);
export const Toleration = Type.Object(
  {
    key: Type.Optional(Type.String({ pattern: LABEL_KEY_PATTERN, maxLength: 253, description: 'taint key; empty with operator Exists tolerates every taint' })),
    operator: Type.Optional(Type.Union([Type.Literal('Equal'), Type.Literal('Exists')], { description: 'default Equal' })),
    value: Type.Optional(Type.String({ maxLength: 63 })),
    effect: Type.Optional(TaintEffect),
  },
  { additionalProperties: false },
);

/** A file the guest agent writes before anything else runs in the guest (as Fly's `files`). */
export const GuestFile = Type.Object(
  {
    path: Type.String({ pattern: '^/[^\\x00]*$', minLength: 2, maxLength: 4096, description: 'absolute path in the guest; parents are created' }),
    content: Type.String({ maxLength: 1024 * 1024, description: 'the file content (UTF-8 text, or base64 with encoding: base64)' }),
    encoding: Type.Optional(Type.Union([Type.Literal('utf8'), Type.Literal('base64')], { description: 'default utf8' })),
    mode: Type.Optional(Type.Integer({ minimum: 0, maximum: 0o7777, description: 'permission bits, default 0644 (420)' })),
  },
  { additionalProperties: false },
);
export const GuestEnv = Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]*$', maxLength: 128 }), Type.String({ maxLength: 32 * 1024 }), {
  maxProperties: 128,
  description: 'environment of every command the guest agent runs (exec, template commands)',
});

/** Fields of the spec, shared by the resource, the create and the update request. */
/** A duration like 90s, 5m or 1h: at most 24h (86400s, 1440m), far inside what a timer holds. */
export const DURATION_PATTERN = '^(([1-9][0-9]{0,3}|[1-7][0-9]{4}|8[0-5][0-9]{3}|86[0-3][0-9]{2}|86400)s|([1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m|([1-9]|1[0-9]|2[0-4])h)$';
/** The exec timeout: a DURATION_PATTERN (at most 24h). */
export const EXEC_TIMEOUT_PATTERN = DURATION_PATTERN;
const Lifecycle = Type.Object(
  {
    bootTimeout: Type.Optional(
      Type.String({ pattern: DURATION_PATTERN, description: 'How long the guest may take to become ready after its VMM started (e.g. 90s, 5m); default the service\'s MVM_BOOT_TIMEOUT_SECONDS' }),
    ),

    timeout: Type.Optional(
      Type.String({ pattern: DURATION_PATTERN, description: 'Lifetime: after this much time Running or Paused (suspended and stopped time do not count; a start from Stopped or Failed begins a new one) onTimeout happens; POST /microvms/{id}/timeout extends it' }),
    ),
    onTimeout: Type.Optional(Type.Union([Type.Literal('stop'), Type.Literal('suspend'), Type.Literal('delete')], { description: 'what the timeout does (default stop)' })),
    idleTimeout: Type.Optional(
      Type.String({ pattern: DURATION_PATTERN, description: 'after this long without activity (exec, files, port forwarding, console, guest network traffic) onIdle happens' }),
    ),
    onIdle: Type.Optional(Type.Union([Type.Literal('suspend'), Type.Literal('stop')], { description: 'what idleness does (default suspend)' })),
  },
  { additionalProperties: false, description: 'Lifetimes of the microVM' },
);

const specFields = {
  vcpu: Type.Integer({ minimum: 1, maximum: 8, description: 'Number of vCPUs (1-8)' }),
  memory: Type.String({ pattern: MEMORY_PATTERN, description: 'Guest memory, 128Mi to 8Gi (8192Mi)' }),
  kernel: KernelSpec,
  rootfs: RootFSSpec,
  networkInterfaces: Type.Array(NetworkInterface, { maxItems: 4 }),
  volumes: Type.Array(Volume, { maxItems: 8 }),
  labels: Labels,
  securityGroups: Type.Array(Type.String({ maxLength: 63 }), { maxItems: 16, description: 'security groups (names or ids) of the tenant' }),
  ports: Type.Array(PortMapping, { maxItems: 64, description: 'guest ports published on host ports' }),
  egress: EgressPolicy,
  nodeSelector: Type.Record(LabelKey, Type.String({ maxLength: 63 }), { maxProperties: 32, description: 'node labels the VM needs (all must match)' }),
  tolerations: Type.Array(Toleration, { maxItems: 32, description: 'node taints this VM tolerates' }),
  affinity: Affinity,
  lifecycle: Lifecycle,
  env: GuestEnv,
  files: Type.Array(GuestFile, { maxItems: 64, description: 'files written by the guest agent at first boot, before anything else runs' }),
};

export const MicroVMSpec = Type.Object(
  {
    vcpu: specFields.vcpu,
    memory: specFields.memory,
    kernel: Type.Optional(specFields.kernel),
    rootfs: Type.Optional(specFields.rootfs),
    networkInterfaces: Type.Optional(specFields.networkInterfaces),
    volumes: Type.Optional(specFields.volumes),
    labels: Type.Optional(specFields.labels),
    securityGroups: Type.Optional(specFields.securityGroups),
    ports: Type.Optional(specFields.ports),
    egress: Type.Optional(specFields.egress),
    nodeSelector: Type.Optional(specFields.nodeSelector),
    tolerations: Type.Optional(specFields.tolerations),
    affinity: Type.Optional(specFields.affinity),
    lifecycle: Type.Optional(specFields.lifecycle),
    env: Type.Optional(specFields.env),
    files: Type.Optional(specFields.files),
    source: Type.Optional(
      Type.Object(
        {
          snapshot: Type.Optional(Type.String({ description: 'snapshot id this VM was restored/cloned from (first boot restores it)' })),
          template: Type.Optional(
            Type.Object({ id: Type.String(), version: Type.Integer({ minimum: 1 }) }, { additionalProperties: false, description: 'template (and version) this VM was cloned from (first boot clones it)' }),
          ),
        },
        { additionalProperties: false },
      ),
    ),
  },
  { additionalProperties: false },
);

/** What a template clone takes from its template (a create naming a template must omit them). */
export const TEMPLATE_FIXED_FIELDS = ['vcpu', 'memory', 'kernel', 'rootfs', 'volumes', 'networkInterfaces'];

export const CreateMicroVMRequest = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN, minLength: 1, maxLength: 63, description: 'DNS-label name, unique per tenant' }),
    vcpu: Type.Optional(specFields.vcpu),
    memory: Type.Optional(specFields.memory),
    kernel: Type.Optional(specFields.kernel),
    rootfs: Type.Optional(specFields.rootfs),
    networkInterfaces: Type.Optional(specFields.networkInterfaces),
    volumes: Type.Optional(specFields.volumes),
    labels: Type.Optional(specFields.labels),
    securityGroups: Type.Optional(specFields.securityGroups),
    ports: Type.Optional(specFields.ports),
    egress: Type.Optional(specFields.egress),
    nodeSelector: Type.Optional(specFields.nodeSelector),
    tolerations: Type.Optional(specFields.tolerations),
    affinity: Type.Optional(specFields.affinity),
    lifecycle: Type.Optional(specFields.lifecycle),
    env: Type.Optional(specFields.env),
    files: Type.Optional(specFields.files),
    start: Type.Optional(Type.Boolean({ description: 'Start the VM after creating it (default true)' })),
    snapshot: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Restore (clone) from this snapshot (id or name): memory, devices and disks; vcpu/memory/kernel/rootfs come from the snapshot' })),
    template: Type.Optional(
      Type.String({ pattern: '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(@[1-9][0-9]{0,8})?$', maxLength: 73, description: 'Clone a template (name, or name@version; default its latest Ready version): started from its memory in ~0.1 s; vcpu/memory/kernel/rootfs/volumes/networkInterfaces come from the template and must be omitted' }),
    ),
  },
  { additionalProperties: false, ...exclusive('snapshot', 'template'), ...excludes('template', TEMPLATE_FIXED_FIELDS) },
);

export const UpdateMicroVMRequest = Type.Object(
  {
    vcpu: Type.Optional(specFields.vcpu),
    memory: Type.Optional(specFields.memory),
    kernel: Type.Optional(specFields.kernel),
    rootfs: Type.Optional(specFields.rootfs),
    networkInterfaces: Type.Optional(specFields.networkInterfaces),
    volumes: Type.Optional(specFields.volumes),
    labels: Type.Optional(specFields.labels),
    securityGroups: Type.Optional(specFields.securityGroups),
    ports: Type.Optional(specFields.ports),
    egress: Type.Optional(specFields.egress),
    nodeSelector: Type.Optional(specFields.nodeSelector),
    tolerations: Type.Optional(specFields.tolerations),
    affinity: Type.Optional(specFields.affinity),
    lifecycle: Type.Optional(specFields.lifecycle),
  },
  { additionalProperties: false, minProperties: 1 },
);

export const Condition = Type.Object({
  type: Type.String(),
  status: Type.Union([Type.Literal('True'), Type.Literal('False'), Type.Literal('Unknown')]),
  reason: Type.Optional(Type.String()),
  message: Type.Optional(Type.String()),
  lastTransitionTime: Type.String({ format: 'date-time' }),
});

export const MicroVMStatus = Type.Object({
  phase: Phase,
  reason: Type.Optional(Type.String({ description: 'Machine-readable reason of the last transition (e.g. VmmExited)' })),
  message: Type.Optional(Type.String()),
  ip: Type.Optional(Type.String()),
  interfaces: Type.Optional(
    Type.Array(Type.Object({ name: Type.String(), ip: Type.String(), prefix: Type.Integer(), gateway: Type.String(), mac: Type.String(), tap: Type.String() })),
  ),
  node: Type.Optional(Type.String()),
  driver: Type.Optional(Type.String({ description: 'VMM driver: qemu or firecracker' })),
  accel: Type.Optional(Type.String({ description: 'Acceleration used: kvm or tcg' })),
  pid: Type.Optional(Type.Integer()),
  conditions: Type.Array(Condition),
  startedAt: Type.Optional(Type.String({ format: 'date-time' })),
  readyAt: Type.Optional(Type.String({ format: 'date-time' })),
  stoppedAt: Type.Optional(Type.String({ format: 'date-time' })),
  bootMs: Type.Optional(Type.Object({ vmm: Type.Number(), guestReady: Type.Number(), network: Type.Optional(Type.Number({ description: 'network set-up (CNI ADD to tap ready), ms' })) })),
  guestAgent: Type.Optional(Type.Object({ version: Type.String() }, { description: 'the guest agent that answered in the running guest (exec, files, port forwarding)' })),
  observedGeneration: Type.Optional(Type.Integer()),
  suspendedAt: Type.Optional(Type.String({ format: 'date-time', description: 'when the microVM was suspended to disk (phase Suspended)' })),
  suspend: Type.Optional(
    Type.Object({ sizeBytes: Type.Integer({ description: 'memory and device state on disk' }), durationMs: Type.Number({ description: 'how long the suspend took' }) }, { description: 'the last suspend to disk' }),
  ),
  lifetime: Type.Optional(
    Type.Object(
      {
        remainingMs: Type.Optional(Type.Integer({ description: 'what was left of lifecycle.timeout at countingSince (or now, when the clock is stopped)' })),
        countingSince: Type.Optional(Type.String({ format: 'date-time', description: 'the timeout clock runs from here (absent: stopped, e.g. while Suspended)' })),
        expiresAt: Type.Optional(Type.String({ format: 'date-time', description: 'when onTimeout happens if the clock keeps running' })),
        lastActivityAt: Type.Optional(Type.String({ format: 'date-time', description: 'the last activity seen (idleTimeout counts from it)' })),
      },
      { description: 'the lifetime clocks of spec.lifecycle.timeout and idleTimeout (kept across service restarts)' },
    ),
  ),
});

export const MicroVM = Type.Object({
  id: Type.String(),
  name: Type.String(),
  tenant: Type.String(),
  spec: MicroVMSpec,
  desiredState: Type.Union([Type.Literal('Running'), Type.Literal('Stopped'), Type.Literal('Paused'), Type.Literal('Suspended')]),
  status: MicroVMStatus,
  generation: Type.Integer(),
  resourceVersion: Type.String(),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

/** `POST /microvms/{id}/timeout`: the lifetime left from now. */
export const TimeoutRequest = Type.Object(
  { timeout: Type.String({ pattern: DURATION_PATTERN, description: 'the microVM\'s lifecycle.timeout ends this long from now (counting only Running/Paused time)' }) },
  { additionalProperties: false },
);

export const SnapshotRequest = Type.Object(
  { name: Type.String({ pattern: NAME_PATTERN, minLength: 1, maxLength: 63 }) },
  { additionalProperties: false },
);

/** POST /microvms/{id}/migrate (cluster mode, docs/adr/0034). */
export const MigrateRequest = Type.Object(
  {
    node: Type.Optional(Type.String({ minLength: 1, maxLength: 253, pattern: '^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$', description: 'the target node (default: the scheduler picks one other than the current node)' })),
  },
  { additionalProperties: false },
);
export type MigrateRequestT = Static<typeof MigrateRequest>;

export const Snapshot = Type.Object({
  id: Type.String(),
  name: Type.String(),
  tenant: Type.String(),
  vmId: Type.String({ description: 'the microVM it was taken of' }),
  phase: Type.Union([Type.Literal('Creating'), Type.Literal('Ready'), Type.Literal('Failed')]),
  message: Type.Optional(Type.String()),
  driver: Type.String(),
  node: Type.String(),
  spec: MicroVMSpec,
  sizeBytes: Type.Optional(Type.Integer()),
  durationMs: Type.Optional(Type.Number()),
  createdAt: Type.String({ format: 'date-time' }),
});

/** Persistent volumes (issue 6): a block device with an ext4 filesystem, outliving the VMs it is attached to. */
export const VolumePhase = Type.Union(['Creating', 'Available', 'InUse', 'Deleting', 'Failed'].map((p) => Type.Literal(p)), { description: 'Volume phase' });

export const CreateVolumeRequest = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN, minLength: 1, maxLength: 63, description: 'DNS-label name, unique per tenant' }),
    size: Type.Optional(Type.String({ pattern: VOLUME_SIZE_PATTERN, description: 'Size, 16Mi to 16384Gi, e.g. 1Gi (required unless fromSnapshot; with it, at least the snapshot\'s size)' })),
    backend: Type.Optional(Type.String({ pattern: NAME_PATTERN, maxLength: 32, description: 'Storage backend: local (default), nfs, ceph-rbd' })),
    readOnly: Type.Optional(Type.Boolean({ description: 'Only ever attached read-only' })),
    fromSnapshot: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Restore: a new volume from this volume snapshot (id or name)' })),
    labels: Type.Optional(Labels),
  },
  { additionalProperties: false, ...requiredUnless('size', 'fromSnapshot') },
);

export const VolumeAttachment = Type.Object({
  vmId: Type.String(),
  readOnly: Type.Boolean(),
  mountPath: Type.String(),
  attachedAt: Type.Optional(Type.String({ format: 'date-time' })),
});

export const VolumeResource = Type.Object({
  id: Type.String(),
  name: Type.String(),
  tenant: Type.String(),
  size: Type.String({ description: 'Requested size quantity' }),
  sizeBytes: Type.Integer(),
  backend: Type.String(),
  readOnly: Type.Boolean(),
  labels: Type.Optional(Labels),
  fromSnapshot: Type.Optional(Type.String()),
  status: Type.Object({
    phase: VolumePhase,
    message: Type.Optional(Type.String()),
    attachedTo: Type.Array(VolumeAttachment),
    node: Type.Optional(Type.String({ description: 'The node holding a node-local volume (cluster mode); its VMs run there' })),
  }),
  resourceVersion: Type.String(),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

export const VolumeSnapshotRequest = Type.Object(
  { name: Type.String({ pattern: NAME_PATTERN, minLength: 1, maxLength: 63 }) },
  { additionalProperties: false },
);

export const VolumeSnapshotResource = Type.Object({
  id: Type.String(),
  name: Type.String(),
  tenant: Type.String(),
  volumeId: Type.String({ description: 'the volume it was taken of' }),
  backend: Type.String(),
  sizeBytes: Type.Integer({ description: 'size of the volume at the time' }),
  phase: Type.Union([Type.Literal('Creating'), Type.Literal('Ready'), Type.Literal('Failed')]),
  copyOnWrite: Type.Boolean({ description: 'whether the backend shared blocks (reflink / RBD snapshot) instead of copying' }),
  node: Type.Optional(Type.String({ description: 'The node holding it (a node-local backend in cluster mode)' })),
  createdAt: Type.String({ format: 'date-time' }),
});

/**
 * MicroVMPool (cluster mode, ADR 0033): `replicas` MicroVMs made from one template, spread across
 * nodes, replaced by a rolling update when the template changes, deleted or suspended (paused,
 * memory kept) on scale-down, optionally sized by an autoscaling rule the operator evaluates.
 */
export const PoolScaleDown = Type.Union([Type.Literal('delete'), Type.Literal('suspend')], {
  description: 'what a scale-down does to the surplus members: delete them (default) or suspend them (vCPUs paused, the VMM and its memory kept; a scale-up resumes them first)',
});
export const PoolTemplate = Type.Object(
  {
    labels: Type.Optional(Labels),
    spec: MicroVMSpec,
  },
  { additionalProperties: false, description: 'what each member is made from: its spec (a MicroVM spec) and labels added to spec.labels. A change rolls the members.' },
);
export const PoolSpread = Type.Object(
  {
    topologyKey: Type.Optional(Type.String({ pattern: LABEL_KEY_PATTERN, maxLength: 253, description: 'node label naming the domain to spread over; default kubernetes.io/hostname (each node)' })),
    mode: Type.Optional(
      Type.Union([Type.Literal('preferred'), Type.Literal('required')], {
        description: 'preferred (default): a weighted anti-affinity between members, so each goes to the domain holding fewest of them while one has room; required: at most one member per domain (the rest wait Unschedulable)',
      }),
    ),
    weight: Type.Optional(Type.Integer({ minimum: 1, maximum: 100, description: 'weight of the preferred anti-affinity (default 100)' })),
  },
  { additionalProperties: false, description: 'how members spread over nodes: a pool-level VM anti-affinity added to each member (the scheduler rules of ADR 0016)' },
);
export const PoolMaxUnavailable = Type.Union([Type.Integer({ minimum: 1 }), Type.String({ pattern: '^([1-9][0-9]?|100)%$', maxLength: 4 })], {
  description: 'members that may be unavailable during a rolling update: a count, or a percentage of replicas rounded down (at least 1); default 1',
});
export const PoolAutoscaling = Type.Object(
  {
    minReplicas: Type.Integer({ minimum: 0, maximum: 1000 }),
    maxReplicas: Type.Integer({ minimum: 1, maximum: 1000 }),
    metric: Type.Object(
      {
        name: Type.String({ pattern: '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$', maxLength: 63, description: 'read from the annotation metrics.microvm.service/<name>: on the pool (a total, e.g. a queue length) or else summed over its members (per-member load)' }),
        target: Type.Number({ minimum: 0.001, description: 'the value one member should carry: replicas = ceil(total / target)' }),
      },
      { additionalProperties: false },
    ),
    tolerance: Type.Optional(Type.Number({ minimum: 0, maximum: 1, description: 'no change while |total/(replicas·target) − 1| is at most this (default 0.1, as the HorizontalPodAutoscaler)' })),
    scaleDownStabilizationSeconds: Type.Optional(Type.Integer({ minimum: 0, maximum: 3600, description: 'scale down to the highest recommendation of this window (default 60)' })),
  },
  { additionalProperties: false, description: 'an autoscaling rule the operator evaluates (ADR 0033): it writes spec.replicas through the scale subresource' },
);
export const MicroVMPoolSpec = Type.Object(
  {
    replicas: Type.Optional(Type.Integer({ minimum: 0, maximum: 1000, default: 1, description: 'members wanted running (suspended members are not counted); default 1' })),
    template: PoolTemplate,
    spread: Type.Optional(PoolSpread),
    strategy: Type.Optional(
      Type.Object(
        { rollingUpdate: Type.Optional(Type.Object({ maxUnavailable: Type.Optional(PoolMaxUnavailable) }, { additionalProperties: false })) },
        { additionalProperties: false, description: 'how a template change replaces members: at most maxUnavailable at a time, each replacement Ready before the next' },
      ),
    ),
    scaleDown: Type.Optional(PoolScaleDown),
    autoscaling: Type.Optional(PoolAutoscaling),
  },
  { additionalProperties: false },
);
export const MicroVMPoolStatus = Type.Object({
  replicas: Type.Integer({ description: 'members running or starting (not suspended, not being deleted)' }),
  readyReplicas: Type.Integer({ description: 'members Running with GuestReady' }),
  updatedReplicas: Type.Integer({ description: 'members of the current template' }),
  suspendedReplicas: Type.Integer({ description: 'members suspended by a scale-down (paused, memory kept)' }),
  selector: Type.String({ description: 'label selector of the members (the scale subresource\'s)' }),
  templateHash: Type.String({ description: 'hash of the current template (label microvm.service/pool-template-hash of its members)' }),
  observedGeneration: Type.Optional(Type.Integer()),
  autoscaling: Type.Optional(
    Type.Object({
      currentValue: Type.Optional(Type.Number({ description: 'the metric total last read' })),
      desiredReplicas: Type.Optional(Type.Integer()),
      lastScaleTime: Type.Optional(Type.String({ format: 'date-time' })),
    }),
  ),
  conditions: Type.Array(Condition),
});
export const MicroVMPool = Type.Object({
  name: Type.String(),
  tenant: Type.String(),
  spec: MicroVMPoolSpec,
  status: Type.Optional(MicroVMPoolStatus),
  createdAt: Type.String({ format: 'date-time' }),
});

export const PoolScaleRequest = Type.Object(
  { replicas: Type.Integer({ minimum: 0, maximum: 1000, description: 'members wanted running' }) },
  { additionalProperties: false },
);

export const MicroVMList = Type.Object({
  items: Type.Array(MicroVM),
  next_cursor: Type.Optional(Type.String()),
});

export const Problem = Type.Object(
  {
    type: Type.String(),
    title: Type.String(),
    status: Type.Integer(),
    code: Type.String(),
    detail: Type.String(),
    instance: Type.Optional(Type.String()),
    errors: Type.Optional(Type.Array(Type.Object({ field: Type.String(), message: Type.String() }))),
  },
  { $id: 'Problem' },
);

export const VmMetrics = Type.Object({
  id: Type.String(),
  phase: Phase,
  timestamp: Type.String({ format: 'date-time' }),
  cpuSeconds: Type.Number({ description: 'CPU time of the VMM process (user+system), seconds' }),
  memoryRssBytes: Type.Integer(),
  guestMemoryBytes: Type.Integer(),
  uptimeSeconds: Type.Number(),
  block: Type.Array(Type.Object({ device: Type.String(), readBytes: Type.Integer(), writeBytes: Type.Integer(), readOps: Type.Integer(), writeOps: Type.Integer() })),
  net: Type.Array(Type.Object({ device: Type.String(), rxBytes: Type.Integer(), txBytes: Type.Integer(), rxPackets: Type.Integer(), txPackets: Type.Integer() })),
  bootMs: Type.Optional(Type.Object({ vmm: Type.Number(), guestReady: Type.Number() })),
});

/** An event of a microVM (Kubernetes-style), as the API sends it; `seq` orders the feed and resumes it. */
export const VmEvent = Type.Object({
  seq: Type.Integer(),
  vmId: Type.String(),
  tenant: Type.String(),
  time: Type.String({ format: 'date-time' }),
  type: Type.Union([Type.Literal('Normal'), Type.Literal('Warning')]),
  reason: Type.String(),
  message: Type.String(),
});

const PerSecond = Type.Union([Type.Number(), Type.Null()], { description: 'per second since the previous sample; null without one' });

/** One sample of a microVM's metrics history (the dashboard's charts). */
export const MetricsHistoryPoint = Type.Object({
  t: Type.Integer({ description: 'sample time, ms since the epoch' }),
  phase: Type.String(),
  cpuPercent: Type.Union([Type.Number(), Type.Null()], { description: 'CPU of the VMM process in percent of one host CPU since the previous sample' }),
  memoryRssBytes: Type.Integer(),
  guestMemoryBytes: Type.Integer(),
  cgroupMemoryBytes: Type.Union([Type.Integer(), Type.Null()]),
  netRxBytesPerSec: PerSecond,
  netTxBytesPerSec: PerSecond,
  blockReadBytesPerSec: PerSecond,
  blockWriteBytesPerSec: PerSecond,
  uptimeSeconds: Type.Number(),
});

/** `GET /microvms/{id}/metrics/history`: the current metrics and the recent samples. */
export const VmMetricsHistory = Type.Object({
  id: Type.String(),
  intervalSeconds: Type.Number(),
  windowSeconds: Type.Number(),
  current: VmMetrics,
  points: Type.Array(MetricsHistoryPoint),
});

// ---------------------------------------------------------------- templates (ADR 0021)

export const TemplateReadiness = Type.Union(
  [
    Type.Object({ agent: Type.Literal(true) }, { additionalProperties: false, description: 'ready when the guest agent answers its health check (default)' }),
    Type.Object(
      {
        command: Type.Array(Type.String({ maxLength: 4096 }), { minItems: 1, maxItems: 64, description: 'ready once this command exits 0 (run by the guest agent, retried)' }),
        timeout: Type.Optional(Type.String({ pattern: DURATION_PATTERN, description: 'give up after this long (default 2m)' })),
      },
      { additionalProperties: false },
    ),
  ],
  { description: 'when the template guest is ready to be snapshotted' },
);

export const CreateTemplateRequest = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN, minLength: 1, maxLength: 63, description: 'DNS-label name, unique per tenant' }),
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 512, description: 'root filesystem image (shorthand for rootfs.image)' })),
    rootfs: Type.Optional(RootFSSpec),
    kernel: Type.Optional(KernelSpec),
    vcpu: Type.Optional(specFields.vcpu),
    memory: Type.Optional(specFields.memory),
    env: Type.Optional(specFields.env),
    files: Type.Optional(specFields.files),
    command: Type.Optional(Type.Array(Type.String({ maxLength: 4096 }), { minItems: 1, maxItems: 64, description: 'run once after boot, before the snapshot; must exit 0 (e.g. start a server, warm a cache)' })),
    readiness: Type.Optional(TemplateReadiness),
    pool: Type.Optional(
      Type.Object({ size: Type.Integer({ minimum: 0, maximum: 64, description: 'clones kept restored and paused per node, claimed by creates' }) }, { additionalProperties: false }),
    ),
    bootTimeout: Type.Optional(Type.String({ pattern: DURATION_PATTERN, description: 'how long the build waits for the guest (default the service\'s boot deadline)' })),
  },
  { additionalProperties: false },
);

export const TemplateVersion = Type.Object({
  version: Type.Integer({ minimum: 1 }),
  phase: Type.Union([Type.Literal('Building'), Type.Literal('Ready'), Type.Literal('Failed'), Type.Literal('Lost')], {
    description: 'Lost: its files are gone from the node (e.g. the host rebooted: a template\'s memory lives in tmpfs); rebuild it',
  }),
  node: Type.Optional(Type.String()),
  driver: Type.Optional(Type.String()),
  step: Type.Optional(Type.String({ description: 'the build step that failed' })),
  message: Type.Optional(Type.String()),
  consoleTail: Type.Optional(Type.String({ description: 'the end of the template guest\'s console, when the build failed' })),
  startedAt: Type.String({ format: 'date-time' }),
  builtAt: Type.Optional(Type.String({ format: 'date-time' })),
  buildMs: Type.Optional(Type.Number()),
  memoryBytes: Type.Optional(Type.Integer({ description: 'the frozen guest memory clones map copy-on-write' })),
  diskBytes: Type.Optional(Type.Integer()),
});

export const Template = Type.Object({
  id: Type.String(),
  name: Type.String(),
  tenant: Type.String(),
  spec: Type.Omit(CreateTemplateRequest, ['name']),
  phase: Type.Union([Type.Literal('Building'), Type.Literal('Ready'), Type.Literal('Failed'), Type.Literal('Lost')], { description: 'of the latest version (Lost: its files are gone from the node; rebuild)' }),
  /** The latest Ready version (what `template: name` clones), when there is one. */
  readyVersion: Type.Optional(Type.Integer()),
  versions: Type.Array(TemplateVersion),
  createdAt: Type.String({ format: 'date-time' }),
});

// ---------------------------------------------------------------- inside the guest (issue 13)

const ExecFields = {
  cmd: Type.Array(Type.String({ maxLength: 64 * 1024 }), { minItems: 1, maxItems: 4096, description: 'argv; cmd[0] is looked up in PATH' }),
  env: Type.Optional(GuestEnv),
  cwd: Type.Optional(Type.String({ pattern: '^/', maxLength: 4096, description: 'absolute working directory (default the user\'s home)' })),
  user: Type.Optional(Type.Union([Type.String({ maxLength: 64 }), Type.Integer({ minimum: 0 })], { description: 'guest user name or uid (default root)' })),
  timeout: Type.Optional(Type.String({ pattern: EXEC_TIMEOUT_PATTERN, description: 'kill the command after this long (default 10m, at most 24h: 86400s, 1440m)' })),
};
export const ExecRequest = Type.Object(
  {
    ...ExecFields,
    stdin: Type.Optional(Type.String({ maxLength: 8 * 1024 * 1024, description: 'fed to the command, then closed' })),
    stdinEncoding: Type.Optional(Type.Union([Type.Literal('utf8'), Type.Literal('base64')])),
    maxOutputBytes: Type.Optional(Type.Integer({ minimum: 0, maximum: 16 * 1024 * 1024, description: 'cap on stdout + stderr kept (default 1 MiB)' })),
  },
  { additionalProperties: false },
);
export const ExecResponse = Type.Object({
  exitCode: Type.Integer({ description: '128+n when killed by signal n; 127: not found; 126: not executable' }),
  signal: Type.Union([Type.String(), Type.Null()]),
  timedOut: Type.Boolean({ description: 'the timeout killed it' }),
  durationMs: Type.Number(),
  stdout: Type.String(),
  stderr: Type.String(),
  truncated: Type.Boolean({ description: 'output beyond maxOutputBytes was dropped' }),
});
export const ForkRequest = Type.Object(
  {
    count: Type.Optional(Type.Integer({ minimum: 1, maximum: 16, description: 'how many children (default 1)' })),
    names: Type.Optional(Type.Array(Type.String({ pattern: NAME_PATTERN, minLength: 1, maxLength: 63 }), { minItems: 1, maxItems: 16, uniqueItems: true, description: 'their names, distinct, one per child (with count: exactly count of them; default <parent>-fork-<n>-<i>)' })),
  },
  { additionalProperties: false },
);
export type ForkRequestT = Static<typeof ForkRequest>;
export const StartProcessRequest = Type.Object({ ...ExecFields, tag: Type.Optional(Type.String({ maxLength: 64 })) }, { additionalProperties: false });
export const GuestFileStatSchema = Type.Object({
  name: Type.String(),
  path: Type.String(),
  type: Type.String({ description: 'file, dir, symlink, fifo, socket, char, block or other' }),
  size: Type.Integer(),
  mode: Type.Integer({ description: 'permission bits' }),
  mtimeMs: Type.Number(),
  uid: Type.Integer(),
  gid: Type.Integer(),
  symlinkTarget: Type.Optional(Type.String()),
});

/** A 204 answer: no body. */
export const NoContent = Type.Null({ description: 'No content' });
/** `{ items: [...] }` of a list without paging. */
export const ItemsOf = <T extends TSchema>(item: T) => Type.Object({ items: Type.Array(item) });
export const GuestProcessSchema = Type.Object({
  processId: Type.String(),
  pid: Type.Integer(),
  cmd: Type.Array(Type.String()),
  tag: Type.Optional(Type.String()),
  tty: Type.Boolean(),
  running: Type.Boolean(),
  startedAt: Type.String({ format: 'date-time' }),
  endedAt: Type.Optional(Type.String({ format: 'date-time' })),
  result: Type.Optional(Type.Object({}, { additionalProperties: true, description: 'exit code, signal, duration once it ended' })),
  stdoutBytes: Type.Integer(),
  stderrBytes: Type.Integer(),
});
export const WebSocketUpgrade = Type.Null({ description: 'Switching Protocols: a WebSocket (subprotocol mvm.v1; docs/exec-api.md)' });

export type MicroVMSpecT = Static<typeof MicroVMSpec>;
export type CreateMicroVMRequestT = Static<typeof CreateMicroVMRequest>;
export type UpdateMicroVMRequestT = Static<typeof UpdateMicroVMRequest>;
export type MicroVMStatusT = Static<typeof MicroVMStatus>;
export type MicroVMT = Static<typeof MicroVM>;
export type ConditionT = Static<typeof Condition>;
export type VmMetricsT = Static<typeof VmMetrics>;
export type SnapshotT = Static<typeof Snapshot>;
export type CreateTemplateRequestT = Static<typeof CreateTemplateRequest>;
export type ExecRequestT = Static<typeof ExecRequest>;
export type ExecResponseT = Static<typeof ExecResponse>;
export type StartProcessRequestT = Static<typeof StartProcessRequest>;
export type TemplateT = Static<typeof Template>;
export type TemplateVersionT = Static<typeof TemplateVersion>;
export type SecurityGroupRequestT = Static<typeof SecurityGroupRequest>;
export type SecurityGroupUpdateT = Static<typeof SecurityGroupUpdate>;
export type SecurityGroupT = Static<typeof SecurityGroupResource>;
export type PhaseT = Static<typeof Phase>;
export type CreateVolumeRequestT = Static<typeof CreateVolumeRequest>;
export type VolumeT = Static<typeof VolumeResource>;
export type VolumeSnapshotT = Static<typeof VolumeSnapshotResource>;
export type ProblemT = Static<typeof Problem>;
export type VmEventT = Static<typeof VmEvent>;
export type MetricsHistoryPointT = Static<typeof MetricsHistoryPoint>;
export type VmMetricsHistoryT = Static<typeof VmMetricsHistory>;
export type MicroVMPoolSpecT = Static<typeof MicroVMPoolSpec>;
export type MicroVMPoolStatusT = Static<typeof MicroVMPoolStatus>;
export type MicroVMPoolT = Static<typeof MicroVMPool>;

/** Strip TypeBox's symbol keys so a schema can be embedded in JSON documents (CRD, OpenAPI). */
export function toJsonSchema(schema: TSchema): Record<string, unknown> {
  return JSON.parse(JSON.stringify(schema)) as Record<string, unknown>;
}
