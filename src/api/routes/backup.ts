/** `POST /admin/backup`: an archive of the service's state, streamed while it runs (ADR 0022). Admins only (see operations.ts). */
import { Type } from '@sinclair/typebox';
import type { FastifyInstance } from 'fastify';
import type { BackupService } from '../../core/ports/backup.js';

const BackupQuery = Type.Object(
  { snapshots: Type.Optional(Type.Boolean({ description: 'also the files of memory and volume snapshots (default: their metadata only)' })) },
  { additionalProperties: false },
);

export async function registerBackupRoutes(app: FastifyInstance, backup: BackupService): Promise<void> {
  app.post(
    '/admin/backup',
    {
      schema: {
        summary: 'Back up the service while it runs: a tar of the state database (SQLite online backup), volume files and root disks (copied with the guest paused briefly), snapshot metadata',
        querystring: BackupQuery,
        response: { 200: Type.String({ format: 'binary', description: 'application/x-tar; restore it with `mvm restore FILE --data-dir DIR`' }) },
      },
    },
    async (req, reply) => {
      const q = req.query as { snapshots?: boolean };
      const a = await backup.create({ includeSnapshots: q.snapshots === true });
      const m = a.manifest;
      return reply
        .type('application/x-tar')
        .header('content-disposition', `attachment; filename="${a.filename}"`)
        .header(
          'x-mvm-backup-summary',
          JSON.stringify({ createdAt: m.createdAt, schemaVersion: m.schemaVersion, volumes: m.volumes.length, rootDisks: m.rootDisks.length, snapshots: m.snapshots.length, stagingMs: m.durationMs }),
        )
        .send(a.stream);
    },
  );
}
