/** Small helpers shared by the REST routes: the caller, ETag / If-Match, list pages. */
import type { FastifyReply, FastifyRequest } from 'fastify';
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
