/** Small helpers shared by the REST routes: the caller, ETag / If-Match, list pages. */
import { Type } from '@sinclair/typebox';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { NAME_PATTERN } from '../core/schema.js';
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { Principal } from '../core/authz.js';

export const principal = (req: FastifyRequest): Principal => {
  if (!req.principal) throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'not authenticated');
  return req.principal;
};

/** `If-Match: "7"` (or W/"7") → "7"; `*` or absent → undefined (no precondition). */
export function ifMatch(req: FastifyRequest): string | undefined {
  const h = req.headers['if-match'];
  if (typeof h !== 'string' || h.trim() === '*' || h.trim() === '') return undefined;
  const first = h.split(',')[0]!.trim();
  return first.replace(/^W\//, '').replace(/"/g, '');
}

export const etagOf = (resourceVersion: string): string => `"${resourceVersion}"`;

/** Sets the ETag; answers 304 when the client's If-None-Match already has this version. */
export function withEtag<T extends { resourceVersion: string }>(req: FastifyRequest, reply: FastifyReply, obj: T): T | FastifyReply {
  const etag = etagOf(obj.resourceVersion);
  reply.header('etag', etag);
  const inm = req.headers['if-none-match'];
  if (req.method === 'GET' && typeof inm === 'string' && inm.split(',').some((t) => t.trim().replace(/^W\//, '') === etag)) return reply.status(304).send();
  return obj;
}

export const page = <T>(p: { items: T[]; nextCursor?: string }): { items: T[]; next_cursor?: string } => ({ items: p.items, ...(p.nextCursor ? { next_cursor: p.nextCursor } : {}) });

/** The description of `?tenant=`, the same on every route that takes it (docs/tenancy.md). */
export const TENANT_PARAM_DOC =
  'Admins: the tenant to list (default: every tenant) or to act in (default: their own). Anyone else may name only their own tenant: another one answers 403 PERMISSION_DENIED.';
/** `?tenant=` of list routes and of the routes that create in a tenant. */
export const tenantParam = () => Type.Optional(Type.String({ pattern: NAME_PATTERN, minLength: 1, maxLength: 63, description: TENANT_PARAM_DOC }));
/** A querystring of `?tenant=` alone. */
export const TenantQuery = Type.Object({ tenant: tenantParam() }, { additionalProperties: false });
/** A list cursor: the opaque `next_cursor` of the previous page (base64url); another one is 400. */
export const cursorParam = () => Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]+$', maxLength: 200, description: 'the next_cursor of the previous page (opaque, base64url)' }));
/** A label selector: `key=value`, comma-separated, all must match. */
export const LABEL_SELECTOR_PATTERN = '^\\s*[^=,\\s][^=,]*=[^,]*(,\\s*[^=,\\s][^=,]*=[^,]*)*$';

/** Path ids: ids or names, at most 128 characters. */
export const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 128, description: 'id or name' }) });
