/**
 * API versions, negotiated in one place: each version is a URL prefix with its own set of routes.
 * `/api/v2` is added by appending an entry here (its routes may reuse the v1 modules); a request
 * for an unknown version answers 404 naming the supported ones.
 */
import type { FastifyInstance } from 'fastify';
import type { AuditService } from '../core/audit.js';
import type { SecurityGroupService } from '../core/security-groups.js';
import type { MicroVMService } from '../core/service.js';
import type { TenantService } from '../core/tenancy.js';
import { registerMicroVMRoutes } from './routes/microvms.js';
import { registerSecurityGroupRoutes } from './routes/securitygroups.js';
import { registerSnapshotRoutes } from './routes/snapshots.js';
import { registerImageRoutes } from './routes/images.js';
import type { ImageCatalog } from '../core/ports/images.js';
import type { SnapshotService } from '../core/snapshots.js';
import { registerAuditRoutes, registerTenantRoutes } from './routes/tenants.js';
import { registerVolumeRoutes } from './routes/volumes.js';
import { registerPoolRoutes } from './routes/pools.js';
import type { PoolService } from '../core/pools.js';
import type { VolumeService } from '../core/volumes.js';
import type { TemplateService } from '../core/templates.js';
import { registerTemplateRoutes } from './routes/templates.js';
import { registerGuestRoutes, type GuestRouteDeps } from './routes/guest.js';
import { registerBackupRoutes } from './routes/backup.js';
import type { BackupService } from '../core/ports/backup.js';

export interface VersionDeps {
  service: MicroVMService;
  tenants?: TenantService;
  audit?: AuditService;
  securityGroups?: SecurityGroupService;
  snapshots?: SnapshotService;
  images?: ImageCatalog;
  volumes?: VolumeService;
  pools?: PoolService;
  templates?: TemplateService;
  guest?: GuestRouteDeps;
  backup?: BackupService;
}

export interface ApiVersion {
  name: string;
  prefix: string;
  register(app: FastifyInstance, deps: VersionDeps): Promise<void>;
}

export const API_VERSIONS: ApiVersion[] = [
  {
    name: 'v1',
    prefix: '/api/v1',
    async register(app, d) {
      await registerMicroVMRoutes(app, d.service);
      if (d.securityGroups) await registerSecurityGroupRoutes(app, d.securityGroups);
      if (d.snapshots) await registerSnapshotRoutes(app, d.snapshots, d.service);
      if (d.images) await registerImageRoutes(app, d.images);
      if (d.volumes) await registerVolumeRoutes(app, d.volumes);
      if (d.pools) await registerPoolRoutes(app, d.pools);
      if (d.templates) await registerTemplateRoutes(app, d.templates);
      if (d.guest) await registerGuestRoutes(app, d.guest);
      if (d.tenants) await registerTenantRoutes(app, d.tenants);
      if (d.audit) await registerAuditRoutes(app, d.audit);
      if (d.backup) await registerBackupRoutes(app, d.backup);
    },
  },
];

/** `/api/v9/...` → "v9" when v9 is not served; undefined otherwise. */
export function unsupportedVersion(path: string): string | undefined {
  const m = /^\/api\/(v[^/]+)(\/|$)/.exec(path);
  if (!m) return undefined;
  return API_VERSIONS.some((v) => v.name === m[1]) ? undefined : m[1];
}
