/** /api/v1/securitygroups — security groups as a tenant resource (seed §3.3.3). */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import { toSecurityGroup, type SecurityGroupService } from '../../core/security-groups.js';
import type { Principal } from '../../core/service.js';
import { IdParams, TenantQuery } from '../http.js';
import { NoContent, SecurityGroupRequest, SecurityGroupResource, SecurityGroupUpdate, type SecurityGroupRequestT, type SecurityGroupUpdateT } from '../../core/schema.js';


const principal = (req: FastifyRequest): Principal => {
  if (!req.principal) throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'not authenticated');
  return req.principal;
};

export async function registerSecurityGroupRoutes(app: FastifyInstance, groups: SecurityGroupService): Promise<void> {
  app.get('/securitygroups', { schema: { summary: 'List security groups', querystring: TenantQuery, response: { 200: Type.Object({ items: Type.Array(SecurityGroupResource) }) } } }, async (req) => {
    const q = req.query as { tenant?: string };
    return { items: (await groups.list(principal(req), q.tenant ? { tenant: q.tenant } : {})).map(toSecurityGroup) };
  });
  app.post('/securitygroups', { schema: { summary: 'Create a security group', body: SecurityGroupRequest, response: { 201: SecurityGroupResource } } }, async (req, reply) => {
    const g = await groups.create(principal(req), req.body as SecurityGroupRequestT);
    return reply.status(201).header('location', `/api/v1/securitygroups/${g.id}`).send(toSecurityGroup(g));
  });
  app.get('/securitygroups/:id', { schema: { summary: 'Get a security group', params: IdParams, response: { 200: SecurityGroupResource } } }, async (req, reply) => {
    const g = await groups.get(principal(req), (req.params as { id: string }).id);
    reply.header('etag', `"${g.resourceVersion}"`);
    return toSecurityGroup(g);
  });
  app.put(
    '/securitygroups/:id',
    { schema: { summary: 'Update a security group (applies to running VMs at once)', params: IdParams, body: SecurityGroupUpdate, response: { 200: SecurityGroupResource } } },
    async (req) => {
      const ifMatch = req.headers['if-match'];
      const version = typeof ifMatch === 'string' ? ifMatch.replace(/^W\//, '').replace(/"/g, '') : undefined;
      return toSecurityGroup(await groups.update(principal(req), (req.params as { id: string }).id, req.body as SecurityGroupUpdateT, version));
    },
  );
  app.delete('/securitygroups/:id', { schema: { summary: 'Delete a security group (refused while in use)', params: IdParams, response: { 204: NoContent } } }, async (req, reply) => {
    await groups.delete(principal(req), (req.params as { id: string }).id);
    return reply.status(204).send();
  });
}
