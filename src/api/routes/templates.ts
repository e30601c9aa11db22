/** /api/v1/templates — templates that microVMs are cloned from in ~0.1 s (issue 19, ADR 0021). */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import { targetTenant, type Principal } from '../../core/service.js';
import { toTemplate, type TemplateService } from '../../core/templates.js';
import { IdParams, TenantQuery } from '../http.js';
import { NoContent, CreateTemplateRequest, Template, type CreateTemplateRequestT } from '../../core/schema.js';


const principal = (req: FastifyRequest): Principal => {
  if (!req.principal) throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'not authenticated');
  return req.principal;
};

export async function registerTemplateRoutes(app: FastifyInstance, templates: TemplateService): Promise<void> {
  app.get('/templates', { schema: { summary: 'List templates', querystring: TenantQuery, response: { 200: Type.Object({ items: Type.Array(Template) }) } } }, async (req) => {
    const q = req.query as { tenant?: string };
    return { items: (await templates.list(principal(req), q.tenant)).map(toTemplate) };
  });
  app.post(
    '/templates',
    {
      schema: {
        summary: 'Create a template and build its first version (boot, readiness, command, memory snapshot); answers at once with phase Building',
        querystring: TenantQuery,
        body: CreateTemplateRequest,
        response: { 202: Template },
      },
    },
    async (req, reply) => {
      const p = principal(req);
      const t = await templates.create(p, targetTenant(p, (req.query as { tenant?: string }).tenant), req.body as CreateTemplateRequestT);
      return reply.status(202).header('location', `/api/v1/templates/${t.id}`).send(toTemplate(t));
    },
  );
  app.get('/templates/:id', { schema: { summary: 'Get a template and its versions', params: IdParams, response: { 200: Template } } }, async (req) =>
    toTemplate(await templates.get(principal(req), (req.params as { id: string }).id)),
  );
  app.post('/templates/:id/rebuild', { schema: { summary: 'Build a new version of the template (clones keep their version)', params: IdParams, response: { 202: Template } } }, async (req, reply) =>
    reply.status(202).send(toTemplate(await templates.rebuild(principal(req), (req.params as { id: string }).id))),
  );
  app.delete('/templates/:id', { schema: { summary: 'Delete a template and its files (refused while microVMs cloned from it, or snapshots of those, exist: ADR 0030)', params: IdParams, response: { 204: NoContent } } }, async (req, reply) => {
    await templates.delete(principal(req), (req.params as { id: string }).id);
    return reply.status(204).send();
  });
}
