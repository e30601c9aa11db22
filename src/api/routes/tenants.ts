/** /api/v1/tenants, /api/v1/apikeys, /api/v1/audit, /api/v1/whoami — the gateway's own resources. */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { AuditService } from '../../core/audit.js';
import type { AuditQuery } from '../../core/ports/audit.js';
import type { TenantService } from '../../core/tenancy.js';
import {
  ApiKey,
  ApiKeyList,
  AuditList,
  CreateApiKeyRequest,
  CreateTenantRequest,
  CreatedApiKey,
  Tenant,
  TenantList,
  TenantUsage,
  UpdateTenantRequest,
  type CreateApiKeyRequestT,
  type CreateTenantRequestT,
  type UpdateTenantRequestT,
} from '../../core/tenancy-schema.js';
import { IdParams, cursorParam, etagOf, ifMatch, page, principal, tenantParam, withEtag } from '../http.js';

const Paging = {
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  cursor: cursorParam(),
};
const DeleteTenantResult = Type.Object({
  tenant: Type.String(),
  cascade: Type.Boolean(),
  microvms: Type.Array(Type.String(), { description: 'microVMs deleted with it (cascade)' }),
  apiKeys: Type.Integer(),
  reservations: Type.Integer(),
  resources: Type.Integer(),
});
const WhoAmI = Type.Object({ subject: Type.String(), tenant: Type.String(), role: Type.String(), keyId: Type.Optional(Type.String()), method: Type.Optional(Type.String()) });

export async function registerTenantRoutes(app: FastifyInstance, tenants: TenantService): Promise<void> {
  app.get(
    '/tenants',
    { schema: { summary: 'List tenants (admins)', querystring: Type.Object(Paging, { additionalProperties: false }), response: { 200: TenantList } } },
    async (req) => page(await tenants.list(principal(req), req.query as { limit?: number; cursor?: string })),
  );
  app.post('/tenants', { schema: { summary: 'Create a tenant (admins)', body: CreateTenantRequest, response: { 201: Tenant } } }, async (req, reply) => {
    const t = await tenants.create(principal(req), req.body as CreateTenantRequestT);
    return reply.status(201).header('location', `/api/v1/tenants/${t.id}`).header('etag', etagOf(t.resourceVersion)).send(t);
  });
  app.get('/tenants/:id', { schema: { summary: 'Get a tenant', params: IdParams, response: { 200: Tenant, 304: Type.Null({ description: 'Not modified (If-None-Match)' }) } } }, async (req, reply) =>
    withEtag(req, reply, await tenants.get(principal(req), (req.params as { id: string }).id)),
  );
  app.put(
    '/tenants/:id',
    { schema: { summary: 'Change a tenant (quotas, display name, labels, image policy; admins). If-Match makes it conditional.', params: IdParams, body: UpdateTenantRequest, response: { 200: Tenant } } },
    async (req, reply) => {
      const t = await tenants.update(principal(req), (req.params as { id: string }).id, req.body as UpdateTenantRequestT, ifMatch(req));
      return reply.header('etag', etagOf(t.resourceVersion)).send(t);
    },
  );
  app.delete(
    '/tenants/:id',
    {
      schema: {
        summary: 'Delete a tenant (admins); refused while it owns resources unless cascade=true',
        params: IdParams,
        querystring: Type.Object({ cascade: Type.Optional(Type.Boolean()) }, { additionalProperties: false }),
        response: { 200: DeleteTenantResult },
      },
    },
    async (req) => {
      const q = req.query as { cascade?: boolean };
      return tenants.delete(principal(req), (req.params as { id: string }).id, { cascade: q.cascade === true, ...(ifMatch(req) ? { ifMatch: ifMatch(req)! } : {}) });
    },
  );
  app.get('/tenants/:id/usage', { schema: { summary: 'Quota usage of a tenant: used vs limit', params: IdParams, response: { 200: TenantUsage } } }, async (req) =>
    tenants.usage(principal(req), (req.params as { id: string }).id),
  );

  // ---- API keys ----
  app.get(
    '/apikeys',
    {
      schema: {
        summary: "List the tenant's API keys (admins: every tenant, or ?tenant=)",
        querystring: Type.Object({ ...Paging, tenant: tenantParam() }, { additionalProperties: false }),
        response: { 200: ApiKeyList },
      },
    },
    async (req) => page(await tenants.listKeys(principal(req), req.query as { tenant?: string; limit?: number; cursor?: string })),
  );
  app.post(
    '/apikeys',
    {
      schema: {
        summary: 'Create an API key; the token is in this response only',
        body: CreateApiKeyRequest,
        querystring: Type.Object({ tenant: tenantParam() }, { additionalProperties: false }),
        response: { 201: CreatedApiKey },
      },
    },
    async (req, reply) => {
      const q = req.query as { tenant?: string };
      const { key, token } = await tenants.createKey(principal(req), req.body as CreateApiKeyRequestT, q.tenant ? { tenant: q.tenant } : {});
      return reply.status(201).header('location', `/api/v1/apikeys/${key.id}`).header('cache-control', 'no-store').send({ ...key, token });
    },
  );
  app.get('/apikeys/:id', { schema: { summary: 'Get an API key (never its secret)', params: IdParams, response: { 200: ApiKey } } }, async (req) =>
    tenants.getKey(principal(req), (req.params as { id: string }).id),
  );
  app.delete('/apikeys/:id', { schema: { summary: 'Revoke an API key (at once)', params: IdParams, response: { 200: ApiKey } } }, async (req) =>
    tenants.revokeKey(principal(req), (req.params as { id: string }).id),
  );
}

export async function registerAuditRoutes(app: FastifyInstance, audit: AuditService): Promise<void> {
  app.get(
    '/audit',
    {
      schema: {
        summary: 'Query the audit log (admins; tenant-admins see their tenant)',
        querystring: Type.Object(
          {
            ...Paging,
            tenant: tenantParam(),
            subject: Type.Optional(Type.String({ maxLength: 200 })),
            keyId: Type.Optional(Type.String({ maxLength: 64 })),
            result: Type.Optional(Type.Union([Type.Literal('allowed'), Type.Literal('denied'), Type.Literal('failed')])),
            operation: Type.Optional(Type.String({ maxLength: 64 })),
            resource: Type.Optional(Type.String({ maxLength: 64 })),
            resourceId: Type.Optional(Type.String({ maxLength: 128 })),
            since: Type.Optional(Type.String({ format: 'date-time' })),
            until: Type.Optional(Type.String({ format: 'date-time' })),
          },
          { additionalProperties: false },
        ),
        response: { 200: AuditList },
      },
    },
    async (req) => page(await audit.query(principal(req), req.query as AuditQuery)),
  );

  app.get('/whoami', { schema: { summary: 'The authenticated caller: subject, tenant, role, key', response: { 200: WhoAmI } } }, async (req) => {
    const p = principal(req);
    return { subject: p.subject, tenant: p.tenant, role: p.role, ...(p.keyId ? { keyId: p.keyId } : {}), ...(p.method ? { method: p.method } : {}) };
  });
}
