/**
 * The REST gateway (seed §3.5.1): Fastify, schema-first with TypeBox, OpenAPI
 * generated from the same schemas, problem+json errors mapped once.
 */
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import swagger from '@fastify/swagger';
import AjvModule from 'ajv';
import addFormatsModule from 'ajv-formats';

const Ajv = AjvModule.default;
const addFormats = addFormatsModule.default;
import type { Logger } from 'pino';
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { MicroVMService, Principal } from '../core/service.js';
import { authenticate, type Authenticator } from './auth.js';
import { ajvToMvmError, errorFrom, toProblem } from './problem.js';
import { registerMicroVMRoutes } from './routes/microvms.js';
import { registerObservabilityRoutes } from './routes/observability.js';
import { registerSecurityGroupRoutes } from './routes/securitygroups.js';
import type { SecurityGroupService } from '../core/security-groups.js';

export interface ApiOptions {
  service: MicroVMService;
  authenticators: Authenticator[];
  logger: Logger;
  version: string;
  securityGroups?: SecurityGroupService;
}

declare module 'fastify' {
  interface FastifyRequest {
    principal?: Principal;
  }
}

const PUBLIC_ROUTES = new Set(['/api/v1/openapi.json', '/healthz', '/readyz']);

export async function buildApi(o: ApiOptions): Promise<FastifyInstance> {
  const app = Fastify({
    loggerInstance: o.logger as unknown as FastifyBaseLogger,
    bodyLimit: 1024 * 1024,
    genReqId: () => `req-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
  });

  // Bodies are validated strictly (no coercion, no silently dropped fields); query strings and params are coerced.
  const bodyAjv = new Ajv({ allErrors: true, coerceTypes: false, removeAdditional: false, useDefaults: false, strict: false });
  const queryAjv = new Ajv({ allErrors: true, coerceTypes: true, removeAdditional: false, useDefaults: true, strict: false });
  addFormats(bodyAjv);
  addFormats(queryAjv);
  app.setValidatorCompiler(({ schema, httpPart }) => {
    const v = (httpPart === 'body' ? bodyAjv : queryAjv).compile(schema);
    return (data: unknown) => (v(data) ? { value: data } : { error: ajvToMvmError(v.errors ?? [], httpPart ?? 'request') as unknown as Error });
  });
  // Response schemas document the API; serialisation stays plain JSON so nothing is silently dropped.
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));

  app.setErrorHandler((err: Error, req, reply) => {
    let e: MvmError;
    const withValidation = err as { validation?: unknown; validationContext?: string };
    if (err instanceof MvmError) e = err;
    else if (withValidation.validation && err.cause instanceof MvmError) e = err.cause;
    else if (withValidation.validation) e = ajvToMvmError(withValidation.validation as never, withValidation.validationContext ?? 'request');
    else e = errorFrom(err);
    if (e.code === ErrorCodes.INTERNAL) req.log.error({ err }, 'internal error');
    const body = toProblem(e, req.url);
    void reply.status(body.status).type('application/problem+json').send(body);
  });
  app.setNotFoundHandler((req, reply) => {
    const body = toProblem(new MvmError(ErrorCodes.NOT_FOUND, `no route ${req.method} ${req.url.split('?')[0]}`), req.url);
    void reply.status(404).type('application/problem+json').send(body);
  });

  app.addHook('onRequest', async (req: FastifyRequest) => {
    const path = req.url.split('?')[0]!;
    if (PUBLIC_ROUTES.has(path) || !path.startsWith('/api/')) return;
    req.principal = await authenticate(o.authenticators, req.headers.authorization);
  });

  await app.register(swagger, {
    openapi: {
      openapi: '3.0.3',
      info: { title: 'MicroVM Service API', version: o.version, description: 'Create, run and observe microVMs (Firecracker / QEMU microvm).' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
  });

  app.get('/healthz', { schema: { hide: true } }, async () => ({ ok: true }));

  await registerObservabilityRoutes(app, { service: o.service });
  await app.register(
    async (v1) => {
      await registerMicroVMRoutes(v1, o.service);
      if (o.securityGroups) await registerSecurityGroupRoutes(v1, o.securityGroups);
      v1.get('/openapi.json', { schema: { hide: true } }, async () => app.swagger());
    },
    { prefix: '/api/v1' },
  );
  return app;
}
