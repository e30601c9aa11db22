/** The node's image cache: list cached images, delete one (refused while used), garbage-collect. Admin only (see operations.ts). */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { ImageCatalog } from '../../core/ports/images.js';

const CachedImage = Type.Object({
  kind: Type.Union([Type.Literal('rootfs'), Type.Literal('kernel')]),
  digest: Type.String(),
  references: Type.Array(Type.String()),
  sizeBytes: Type.Integer({ description: 'host disk space used (allocated blocks)' }),
  imageSizeBytes: Type.Integer({ description: 'apparent size of the root filesystem or kernel' }),
  createdAt: Type.String(),
  lastUsedAt: Type.String(),
  inUse: Type.Integer({ description: 'microVMs naming it' }),
  node: Type.Optional(Type.String({ description: 'cluster mode: the node whose cache holds it (listed once per node)' })),
});

/** Cluster mode: a node not asked (no fresh heartbeat) or not answering; the result is partial. */
const Warnings = Type.Optional(
  Type.Array(Type.Object({ node: Type.String(), message: Type.String() }), { description: 'cluster mode: nodes whose agent did not answer (the result is partial)' }),
);

const GcRequest = Type.Object(
  {
    maxIdle: Type.Optional(Type.String({ pattern: '^[0-9]+(ms|s|m|h|d)$', description: 'remove unused images idle longer (default: the node policy)' })),
    maxBytes: Type.Optional(Type.Integer({ minimum: 0, description: 'then remove the least recently used unused images until the cache fits' })),
  },
  { additionalProperties: false },
);

const Removed = Type.Array(Type.Object({ kind: Type.String(), digest: Type.String(), sizeBytes: Type.Integer(), node: Type.Optional(Type.String()) }));
const GcResult = Type.Object({
  removed: Removed,
  freedBytes: Type.Integer(),
  keptInUse: Type.Integer(),
  remainingBytes: Type.Integer(),
  nodes: Type.Optional(
    Type.Array(Type.Object({ node: Type.String(), removed: Removed, freedBytes: Type.Integer(), keptInUse: Type.Integer(), remainingBytes: Type.Integer() }), {
      description: 'cluster mode: each node\'s result (the totals are their sums)',
    }),
  ),
  warnings: Warnings,
});

const ms = (d: string): number => {
  const m = /^(\d+)(ms|s|m|h|d)$/.exec(d);
  if (!m) throw new MvmError(ErrorCodes.VALIDATION_FAILED, `maxIdle: bad duration ${JSON.stringify(d)}`, { violations: [{ field: 'maxIdle', message: 'must be a duration like 10m' }] });
  return Number(m[1]) * { ms: 1, s: 1000, m: 60_000, h: 3600_000, d: 86_400_000 }[m[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
};

export async function registerImageRoutes(app: FastifyInstance, images: ImageCatalog): Promise<void> {
  app.get(
    '/images',
    { schema: { summary: 'Cached images on this node, or on every node in cluster mode (OCI root filesystems and kernels) with in-use counts', response: { 200: Type.Object({ items: Type.Array(CachedImage), warnings: Warnings }) } } },
    async () => {
      const list = await images.list();
      return { items: [...list], ...(list.warnings?.length ? { warnings: list.warnings } : {}) };
    },
  );
  app.delete(
    '/images/:digest',
    {
      schema: {
        summary: 'Delete a cached image by digest (from every node holding it in cluster mode; refused with 409 while a microVM uses it)',
        params: Type.Object({ digest: Type.String({ pattern: '^sha256:[0-9a-f]{64}$', description: 'sha256:<64 lower-case hex>' }) }),
        response: { 200: Type.Object({ removed: Type.Array(CachedImage), warnings: Warnings }, { description: 'cluster mode, partial: some node did not answer' }), 204: Type.Null({ description: 'deleted' }) },
      },
    },
    async (req, reply) => {
      const removed = await images.delete((req.params as { digest: string }).digest);
      // Partial (a node did not answer): say so in a body rather than a bare 204.
      if (removed.warnings?.length) return reply.status(200).send({ removed: [...removed], warnings: removed.warnings });
      return reply.status(204).send();
    },
  );
  app.post('/images/gc', { schema: { summary: 'Garbage-collect unused cached images now', body: Type.Optional(GcRequest), response: { 200: GcResult } } }, async (req) => {
    const b = (req.body ?? {}) as { maxIdle?: string; maxBytes?: number };
    return images.gc({ ...(b.maxIdle !== undefined ? { maxIdleMs: ms(b.maxIdle) } : {}), ...(b.maxBytes !== undefined ? { maxBytes: b.maxBytes } : {}) });
  });
}
