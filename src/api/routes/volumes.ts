/** /api/v1/volumes — persistent volumes and their snapshots (issue 6, ADR 0018). */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import type { Principal } from '../../core/service.js';
import { toVolume, toVolumeSnapshot, type VolumeService } from '../../core/volumes.js';
import { IdParams, TenantQuery } from '../http.js';
import { NoContent, CreateVolumeRequest, VolumeResource, VolumeSnapshotRequest, VolumeSnapshotResource, type CreateVolumeRequestT } from '../../core/schema.js';


const principal = (req: FastifyRequest): Principal => {
  if (!req.principal) throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'not authenticated');
  return req.principal;
};

export async function registerVolumeRoutes(app: FastifyInstance, vols: VolumeService): Promise<void> {
  app.get('/volumes', { schema: { summary: 'List volumes', querystring: TenantQuery, response: { 200: Type.Object({ items: Type.Array(VolumeResource) }) } } }, async (req) => {
    const q = req.query as { tenant?: string };
    return { items: (await vols.list(principal(req), q.tenant ? { tenant: q.tenant } : {})).map(toVolume) };
  });
  app.post(
    '/volumes',
    { schema: { summary: 'Create a volume (ext4 on a storage backend); with fromSnapshot, restore a volume snapshot to a new volume', querystring: TenantQuery, body: CreateVolumeRequest, response: { 201: VolumeResource } } },
    async (req, reply) => {
      const q = req.query as { tenant?: string };
      const v = await vols.create(principal(req), req.body as CreateVolumeRequestT, q.tenant ? { tenant: q.tenant } : {});
      return reply.status(201).header('location', `/api/v1/volumes/${v.id}`).send(toVolume(v));
    },
  );
  app.get('/volumes/:id', { schema: { summary: 'Get a volume', params: IdParams, response: { 200: VolumeResource } } }, async (req, reply) => {
    const v = await vols.get(principal(req), (req.params as { id: string }).id);
    reply.header('etag', `"${v.resourceVersion}"`);
    return toVolume(v);
  });
  app.delete('/volumes/:id', { schema: { summary: 'Delete a volume (refused while attached to a microVM or while it has snapshots)', params: IdParams, response: { 204: NoContent } } }, async (req, reply) => {
    await vols.delete(principal(req), (req.params as { id: string }).id);
    return reply.status(204).send();
  });
  app.post(
    '/volumes/:id/snapshots',
    { schema: { summary: 'Snapshot a volume (copy-on-write where the backend allows)', params: IdParams, body: VolumeSnapshotRequest, response: { 201: VolumeSnapshotResource } } },
    async (req, reply) => {
      const s = await vols.snapshot(principal(req), (req.params as { id: string }).id, (req.body as { name: string }).name);
      return reply.status(201).header('location', `/api/v1/volumesnapshots/${s.id}`).send(toVolumeSnapshot(s));
    },
  );
  app.get('/volumes/:id/snapshots', { schema: { summary: 'Snapshots of a volume', params: IdParams, response: { 200: Type.Object({ items: Type.Array(VolumeSnapshotResource) }) } } }, async (req) => {
    const v = await vols.get(principal(req), (req.params as { id: string }).id);
    return { items: (await vols.listSnapshots(principal(req), { volumeId: v.id })).map(toVolumeSnapshot) };
  });
  app.get('/volumesnapshots', { schema: { summary: 'List volume snapshots', querystring: TenantQuery, response: { 200: Type.Object({ items: Type.Array(VolumeSnapshotResource) }) } } }, async (req) => {
    const q = req.query as { tenant?: string };
    return { items: (await vols.listSnapshots(principal(req), q.tenant ? { tenant: q.tenant } : {})).map(toVolumeSnapshot) };
  });
  app.get('/volumesnapshots/:id', { schema: { summary: 'Get a volume snapshot', params: IdParams, response: { 200: VolumeSnapshotResource } } }, async (req) =>
    toVolumeSnapshot(await vols.getSnapshot(principal(req), (req.params as { id: string }).id)),
  );
  app.delete('/volumesnapshots/:id', { schema: { summary: 'Delete a volume snapshot (volumes restored from it keep their data)', params: IdParams, response: { 204: NoContent } } }, async (req, reply) => {
    await vols.deleteSnapshot(principal(req), (req.params as { id: string }).id);
    return reply.status(204).send();
  });
}
