/** Pause/resume, snapshots, and restoring (cloning) microVMs from snapshots. */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { ErrorCodes, MvmError } from '../../core/errors.js';
import { toSnapshot, type SnapshotService } from '../../core/snapshots.js';
import type { MicroVMService, Principal } from '../../core/service.js';
import { IdParams, TenantQuery } from '../http.js';
import { CreateMicroVMRequest, ForkRequest, ItemsOf, MicroVM, NoContent, Snapshot, SnapshotRequest, TimeoutRequest, type CreateMicroVMRequestT, type ForkRequestT } from '../../core/schema.js';

const RestoreRequest = Type.Omit(CreateMicroVMRequest, ['snapshot', 'template']);

const principal = (req: FastifyRequest): Principal => {
  if (!req.principal) throw new MvmError(ErrorCodes.UNAUTHENTICATED, 'not authenticated');
  return req.principal;
};

export async function registerSnapshotRoutes(app: FastifyInstance, snaps: SnapshotService, vms: MicroVMService): Promise<void> {
  app.post('/microvms/:id/pause', { schema: { summary: 'Pause a running microVM (vCPUs stop, memory stays)', params: IdParams, response: { 202: MicroVM } } }, async (req, reply) =>
    reply.status(202).send(await snaps.pause(principal(req), (req.params as { id: string }).id)),
  );
  app.post(
    '/microvms/:id/resume',
    { schema: { summary: 'Resume a paused microVM (vCPUs run again) or a suspended one (restored from disk with the same IP, MAC, processes and open files); a suspend still writing is cancelled', params: IdParams, response: { 202: MicroVM } } },
    async (req, reply) => reply.status(202).send(await snaps.resume(principal(req), (req.params as { id: string }).id)),
  );
  app.post(
    '/microvms/:id/suspend',
    { schema: { summary: 'Suspend a running or paused microVM to disk: memory and device state are written to the node, the VMM exits (phase Suspending, then Suspended)', params: IdParams, response: { 202: MicroVM } } },
    async (req, reply) => reply.status(202).send(await vms.suspend(principal(req), (req.params as { id: string }).id)),
  );
  app.post(
    '/microvms/:id/timeout',
    { schema: { summary: 'Set the time left of spec.lifecycle.timeout: it ends this long from now (only Running/Paused time counts)', params: IdParams, body: TimeoutRequest, response: { 200: MicroVM } } },
    async (req) => vms.extendTimeout(principal(req), (req.params as { id: string }).id, (req.body as { timeout: string }).timeout),
  );
  app.post(
    '/microvms/:id/snapshots',
    { schema: { summary: 'Snapshot a running or paused microVM: memory, devices and a copy-on-write copy of its disks', params: IdParams, body: SnapshotRequest, response: { 201: Snapshot } } },
    async (req, reply) => {
      const s = await snaps.create(principal(req), (req.params as { id: string }).id, (req.body as { name: string }).name);
      return reply.status(201).header('location', `/api/v1/snapshots/${s.id}`).send(toSnapshot(s));
    },
  );
  app.get('/microvms/:id/snapshots', { schema: { summary: 'Snapshots of a microVM', params: IdParams, response: { 200: ItemsOf(Snapshot) } } }, async (req) => {
    const vm = await vms.get(principal(req), (req.params as { id: string }).id);
    return { items: (await snaps.list(principal(req), { vmId: vm.id })).map(toSnapshot) };
  });
  app.get('/snapshots', { schema: { summary: 'List snapshots', querystring: TenantQuery, response: { 200: Type.Object({ items: Type.Array(Snapshot) }) } } }, async (req) => {
    const q = req.query as { tenant?: string };
    return { items: (await snaps.list(principal(req), q.tenant ? { tenant: q.tenant } : {})).map(toSnapshot) };
  });
  app.get('/snapshots/:id', { schema: { summary: 'Get a snapshot', params: IdParams, response: { 200: Snapshot } } }, async (req) =>
    toSnapshot(await snaps.get(principal(req), (req.params as { id: string }).id)),
  );
  app.delete('/snapshots/:id', { schema: { summary: 'Delete a snapshot; refused (409, naming them) while microVMs restored from it, or snapshots of those, exist (ADR 0030)', params: IdParams, response: { 204: NoContent } } }, async (req, reply) => {
    await snaps.delete(principal(req), (req.params as { id: string }).id);
    return reply.status(204).send();
  });
  app.post(
    '/microvms/:id/fork',
    {
      schema: {
        summary: 'Live fork: children that carry the running microVM\'s memory and disk state, each with a fresh identity; the parent is paused only for the snapshot and keeps running',
        params: IdParams,
        body: ForkRequest,
        response: { 201: Type.Object({ snapshot: Snapshot, children: Type.Array(MicroVM) }) },
      },
    },
    async (req, reply) => {
      const r = await snaps.fork(principal(req), (req.params as { id: string }).id, (req.body ?? {}) as ForkRequestT);
      return reply.status(201).send({ snapshot: toSnapshot(r.snapshot), children: r.children });
    },
  );
  app.post(
    '/snapshots/:id/restore',
    {
      schema: {
        summary: 'Create a new microVM restored from the snapshot (a clone with fresh identity); admins may restore into another tenant (?tenant=)',
        params: IdParams,
        querystring: TenantQuery,
        body: RestoreRequest,
        response: { 201: MicroVM },
      },
    },
    async (req, reply) => {
      const p = principal(req);
      // An unknown snapshot in the path is 404, like every unknown id (the body's `snapshot` field of a create is 400).
      const s = await snaps.get(p, (req.params as { id: string }).id);
      const q = req.query as { tenant?: string };
      const body = { ...(req.body as CreateMicroVMRequestT), snapshot: s.id };
      const vm = await vms.create(p, body, q.tenant ? { tenant: q.tenant } : {});
      return reply.status(201).header('location', `/api/v1/microvms/${vm.id}`).send(vm);
    },
  );
}
