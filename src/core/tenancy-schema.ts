/**
 * Schemas of the gateway's own resources: tenants, API keys, usage and audit entries.
 * Like schema.ts, the REST validation, OpenAPI and TypeScript types come from here.
 */
import { Type, type Static } from '@sinclair/typebox';
import { NAME_PATTERN, LABEL_KEY_PATTERN, exclusive } from './schema.js';

/** `expiresIn` of an API key: at most 6 digits and a unit (≤ 999999d, far inside what a date can hold). */
export const LIFETIME_PATTERN = '^[1-9][0-9]{0,5}(s|m|h|d)$';
import { ROLES } from './authz.js';

export const BIG_QUANTITY_PATTERN = '^(0|[1-9][0-9]*(Mi|Gi|Ti))$';

export const RoleSchema = Type.Union(ROLES.map((r) => Type.Literal(r)), { description: 'admin | tenant-admin | member | viewer' });

export const TenantQuotas = Type.Object(
  {
    vms: Type.Optional(Type.Integer({ minimum: 0, description: 'Most microVMs at once' })),
    vcpu: Type.Optional(Type.Integer({ minimum: 0, description: 'Total vCPUs of all microVMs' })),
    memory: Type.Optional(Type.String({ pattern: BIG_QUANTITY_PATTERN, description: 'Total guest memory, e.g. 8Gi' })),
    disk: Type.Optional(Type.String({ pattern: BIG_QUANTITY_PATTERN, description: 'Total disk (root disks and volumes), e.g. 100Gi' })),
    snapshots: Type.Optional(Type.Integer({ minimum: 0, description: 'Most snapshots (microVM and volume snapshots) at once' })),
    volumes: Type.Optional(Type.Integer({ minimum: 0, description: 'Most volumes at once' })),
    hostPorts: Type.Optional(Type.Integer({ minimum: 0, description: 'Most host ports published (spec.ports) by all microVMs at once' })),
  },
  { additionalProperties: false, description: 'Absent limits are unlimited' },
);

export const TenantImagePolicy = Type.Object(
  {
    allowedRegistries: Type.Optional(
      Type.Array(Type.String({ minLength: 1, maxLength: 300 }), {
        maxItems: 100,
        description:
          'Registries this tenant may pull from, replacing the global list (MVM_REGISTRIES_ALLOWED): host[:port][/path-prefix] patterns, or * for any. ' +
          'A pattern without a port matches only references without one; a path prefix matches whole path components; docker.io/library covers the official images',
      }),
    ),
    signatures: Type.Optional(
      Type.Array(
        Type.Object(
          {
            scope: Type.String({ minLength: 1, maxLength: 300, description: 'host[:port][/path-prefix] or *; the most specific matching scope decides' }),
            publicKeys: Type.Array(Type.String({ maxLength: 16384 }), {
              maxItems: 16,
              description: 'PEM public keys (cosign.pub: ECDSA P-256, Ed25519 or RSA); an image in scope needs a cosign/sigstore signature by one of them. Empty: no signature needed (an exemption)',
            }),
          },
          { additionalProperties: false },
        ),
        { maxItems: 100, description: 'Signature rules, replacing the global ones (MVM_IMAGE_POLICY_FILE)' },
      ),
    ),
  },
  { additionalProperties: false, description: 'Image policy overrides for this tenant (admins only); what is left out comes from the global policy' },
);

const TenantLabels = Type.Record(Type.String({ pattern: LABEL_KEY_PATTERN, maxLength: 253 }), Type.String({ maxLength: 63 }));

export const Tenant = Type.Object({
  id: Type.String(),
  displayName: Type.Optional(Type.String()),
  quotas: TenantQuotas,
  labels: Type.Optional(TenantLabels),
  imagePolicy: Type.Optional(TenantImagePolicy),
  resourceVersion: Type.String(),
  createdAt: Type.String({ format: 'date-time' }),
  updatedAt: Type.String({ format: 'date-time' }),
});

export const CreateTenantRequest = Type.Object(
  {
    id: Type.String({ pattern: NAME_PATTERN, minLength: 1, maxLength: 63, description: 'DNS label; the Kubernetes namespace in cluster mode' }),
    displayName: Type.Optional(Type.String({ maxLength: 200 })),
    quotas: Type.Optional(TenantQuotas),
    labels: Type.Optional(TenantLabels),
    imagePolicy: Type.Optional(TenantImagePolicy),
  },
  { additionalProperties: false },
);

export const UpdateTenantRequest = Type.Object(
  {
    displayName: Type.Optional(Type.String({ maxLength: 200 })),
    quotas: Type.Optional(TenantQuotas),
    labels: Type.Optional(TenantLabels),
    imagePolicy: Type.Optional(TenantImagePolicy),
  },
  { additionalProperties: false, minProperties: 1 },
);

export const TenantList = Type.Object({ items: Type.Array(Tenant), next_cursor: Type.Optional(Type.String()) });

const UsageLine = Type.Object({ used: Type.Number(), limit: Type.Union([Type.Number(), Type.Null()]) });
export const TenantUsage = Type.Object({
  tenant: Type.String(),
  vms: UsageLine,
  vcpu: UsageLine,
  memoryMiB: UsageLine,
  diskMiB: UsageLine,
  snapshots: UsageLine,
  volumes: UsageLine,
  hostPorts: UsageLine,
});

export const ApiKey = Type.Object({
  id: Type.String(),
  tenant: Type.String(),
  name: Type.String(),
  role: RoleSchema,
  createdAt: Type.String({ format: 'date-time' }),
  createdBy: Type.String(),
  expiresAt: Type.Optional(Type.String({ format: 'date-time' })),
  revokedAt: Type.Optional(Type.String({ format: 'date-time' })),
  lastUsedAt: Type.Optional(Type.String({ format: 'date-time' })),
  state: Type.Union([Type.Literal('active'), Type.Literal('expired'), Type.Literal('revoked')]),
});

export const CreatedApiKey = Type.Intersect([
  ApiKey,
  Type.Object({ token: Type.String({ description: 'The secret bearer token. Shown once, stored only as a hash.' }) }),
]);

export const CreateApiKeyRequest = Type.Object(
  {
    name: Type.String({ pattern: NAME_PATTERN, minLength: 1, maxLength: 63 }),
    role: Type.Optional(RoleSchema),
    expiresAt: Type.Optional(Type.String({ format: 'date-time', description: 'Optional expiry (RFC 3339)' })),
    expiresIn: Type.Optional(Type.String({ pattern: LIFETIME_PATTERN, description: 'Optional lifetime: at most 6 digits and s, m, h or d, e.g. 30d' })),
  },
  { additionalProperties: false, ...exclusive('expiresAt', 'expiresIn') },
);

export const ApiKeyList = Type.Object({ items: Type.Array(ApiKey), next_cursor: Type.Optional(Type.String()) });

export const AuditEntry = Type.Object({
  seq: Type.Integer(),
  time: Type.String({ format: 'date-time' }),
  requestId: Type.String(),
  transport: Type.Union([Type.Literal('rest'), Type.Literal('grpc')]),
  subject: Type.Optional(Type.String()),
  tenant: Type.Optional(Type.String()),
  keyId: Type.Optional(Type.String()),
  role: Type.Optional(Type.String()),
  authMethod: Type.Optional(Type.String()),
  operation: Type.String({ description: 'e.g. microvms.create' }),
  verb: Type.String(),
  resource: Type.String(),
  resourceId: Type.Optional(Type.String()),
  method: Type.String({ description: 'HTTP method and route, or the gRPC method' }),
  sourceIp: Type.String(),
  userAgent: Type.Optional(Type.String()),
  result: Type.Union([Type.Literal('allowed'), Type.Literal('denied'), Type.Literal('failed')]),
  status: Type.Integer({ description: 'HTTP status (gRPC calls: the HTTP status of the same error)' }),
  code: Type.Optional(Type.String()),
  reason: Type.Optional(Type.String()),
  details: Type.Optional(Type.Record(Type.String(), Type.Unknown(), { description: 'what the operation records beyond the call, e.g. an exec\'s argv and exit code (never its input or output)' })),
});
export const AuditList = Type.Object({ items: Type.Array(AuditEntry), next_cursor: Type.Optional(Type.String()) });

export type TenantT = Static<typeof Tenant>;
export type TenantQuotasT = Static<typeof TenantQuotas>;
export type TenantImagePolicyT = Static<typeof TenantImagePolicy>;
export type CreateTenantRequestT = Static<typeof CreateTenantRequest>;
export type UpdateTenantRequestT = Static<typeof UpdateTenantRequest>;
export type TenantUsageT = Static<typeof TenantUsage>;
export type ApiKeyT = Static<typeof ApiKey>;
export type CreateApiKeyRequestT = Static<typeof CreateApiKeyRequest>;
export type AuditEntryT = Static<typeof AuditEntry>;
