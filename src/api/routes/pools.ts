/** /api/v1/pools — MicroVMPools in cluster mode (ADR 0033): list, get, scale. */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { Principal } from '../../core/service.js';
import type { PoolService } from '../../core/pools.js';
import { MicroVMPool, PoolScaleRequest } from '../../core/schema.js';
import { TenantQuery } from '../http.js';

const principal = (req: FastifyRequest): Principal => {
  if (!req.principal) throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'not authenticated');
  return req.principal;
};

const NameParams = Type.Object({ name: Type.String({ pattern: '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$', minLength: 1, maxLength: 63, description: 'pool name' }) });

export async function registerPoolRoutes(app: FastifyInstance, pools: PoolService): Promise<void> {
  app.get('/pools', { schema: { summary: 'List microVM pools (cluster mode)', querystring: TenantQuery, response: { 200: Type.Object({ items: Type.Array(MicroVMPool) }) } } }, async (req) => {
    const q = req.query as { tenant?: string };
    return { items: await pools.list(principal(req), q.tenant ? { tenant: q.tenant } : {}) };
  });
  app.get('/pools/:name', { schema: { summary: 'Get a microVM pool: spec and status (replicas, readyReplicas, updatedReplicas, suspendedReplicas, conditions)', params: NameParams, querystring: TenantQuery, response: { 200: MicroVMPool } } }, async (req) => {
    const q = req.query as { tenant?: string };
    return pools.get(principal(req), (req.params as { name: string }).name, q.tenant ? { tenant: q.tenant } : {});
  });
  app.post(
    '/pools/:name/scale',
    { schema: { summary: 'Scale a microVM pool: set spec.replicas through its scale subresource (as kubectl scale)', params: NameParams, querystring: TenantQuery, body: PoolScaleRequest, response: { 200: MicroVMPool } } },
    async (req) => {
      const q = req.query as { tenant?: string };
      return pools.scale(principal(req), (req.params as { name: string }).name, (req.body as { replicas: number }).replicas, q.tenant ? { tenant: q.tenant } : {});
    },
  );
}
