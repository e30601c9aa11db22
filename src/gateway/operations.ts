/**
 * The one table of operations: every REST route under /api and every gRPC method declares here
 * the permission it needs, whether it mutates (audited, idempotent POSTs, the `mutation` rate
 * class) and what it acts on. The gateway looks a route up by its method and pattern; a route
 * missing from the table is refused to everyone but admins (and a test fails).
 * docs/permissions.md is generated from it (`renderPermissionsDoc`).
 */
import { PERMISSIONS, ROLES, can, type Permission } from '../core/authz.js';
import type { RateClass } from './ratelimit/policy.js';

export type Requirement = Permission | 'authenticated' | 'public';

export interface Operation {
  id: string;
  permission: Requirement;
  resource: string;
  verb: string;
  mutation: boolean;
  rateClass: RateClass;
  /** `METHOD /pattern` of the REST route (Fastify syntax). */
  rest?: string;
  /** gRPC method name of MicroVMService. */
  grpc?: string;
  note?: string;
  /** Error statuses beyond those every operation of its kind can answer (`errorStatuses`). */
  errors?: number[];
  /** Operations taking the created resource's id (`$response.body#/id`) as their `id`: OpenAPI links of the success response (stateful clients and fuzzers follow them). */
  links?: string[];
}

type Def = Omit<Operation, 'id' | 'rateClass' | 'verb' | 'resource'> & { rateClass?: RateClass };

const DEFS: Record<string, Def> = {
  'microvms.list': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/microvms', grpc: 'ListMicroVMs' },
  'microvms.create': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/microvms', grpc: 'CreateMicroVM', note: 'admins may pass ?tenant=', errors: [422, 501, 502, 503], links: ['microvms.get', 'microvms.update', 'microvms.delete', 'microvms.start', 'microvms.stop', 'microvms.wait', 'microvms.pause', 'microvms.resume', 'microvms.events', 'microvms.metrics', 'microvms.console', 'snapshots.create', 'snapshots.listOfVm'] },
  'microvms.get': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/microvms/:id', grpc: 'GetMicroVM' },
  'microvms.update': { permission: 'microvms:write', mutation: true, rest: 'PUT /api/v1/microvms/:id', grpc: 'UpdateMicroVM', errors: [422] },
  'microvms.delete': { permission: 'microvms:write', mutation: true, rest: 'DELETE /api/v1/microvms/:id', grpc: 'DeleteMicroVM' },
  'microvms.start': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/microvms/:id/start', grpc: 'StartMicroVM' },
  'microvms.stop': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/microvms/:id/stop', grpc: 'StopMicroVM' },
  'microvms.wait': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/microvms/:id/wait', errors: [408, 409] },
  'microvms.console': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/microvms/:id/console', grpc: 'GetConsole' },
  'microvms.metrics': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/microvms/:id/metrics', grpc: 'GetMetrics', errors: [409, 422, 502] },
  'microvms.metricsHistory': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/microvms/:id/metrics/history', errors: [409, 422, 502] },
  'microvms.events': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/microvms/:id/events' },
  'events.list': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/events', errors: [404, 503] },
  'securitygroups.list': { permission: 'securitygroups:read', mutation: false, rest: 'GET /api/v1/securitygroups' },
  'securitygroups.create': { permission: 'securitygroups:write', mutation: true, rest: 'POST /api/v1/securitygroups', links: ['securitygroups.get', 'securitygroups.update', 'securitygroups.delete'] },
  'securitygroups.get': { permission: 'securitygroups:read', mutation: false, rest: 'GET /api/v1/securitygroups/:id' },
  'securitygroups.update': { permission: 'securitygroups:write', mutation: true, rest: 'PUT /api/v1/securitygroups/:id' },
  'securitygroups.delete': { permission: 'securitygroups:write', mutation: true, rest: 'DELETE /api/v1/securitygroups/:id' },
  'tenants.list': { permission: 'tenants:admin', mutation: false, rest: 'GET /api/v1/tenants' },
  'tenants.create': { permission: 'tenants:admin', mutation: true, rest: 'POST /api/v1/tenants', links: ['tenants.get', 'tenants.update', 'tenants.usage', 'tenants.delete'] },
  'tenants.get': { permission: 'tenants:read', mutation: false, rest: 'GET /api/v1/tenants/:id', note: 'non-admins: their own tenant only' },
  'tenants.update': { permission: 'tenants:admin', mutation: true, rest: 'PUT /api/v1/tenants/:id' },
  'tenants.delete': { permission: 'tenants:admin', mutation: true, rest: 'DELETE /api/v1/tenants/:id', note: '?cascade=true deletes what it owns' },
  'tenants.usage': { permission: 'tenants:read', mutation: false, rest: 'GET /api/v1/tenants/:id/usage', note: 'non-admins: their own tenant only' },
  'apikeys.list': { permission: 'apikeys:read', mutation: false, rest: 'GET /api/v1/apikeys' },
  'apikeys.create': { permission: 'apikeys:write', mutation: true, rest: 'POST /api/v1/apikeys', note: 'the role may not outrank the caller', links: ['apikeys.get', 'apikeys.revoke'] },
  'apikeys.get': { permission: 'apikeys:read', mutation: false, rest: 'GET /api/v1/apikeys/:id' },
  'apikeys.revoke': { permission: 'apikeys:write', mutation: true, rest: 'DELETE /api/v1/apikeys/:id' },
  'audit.query': { permission: 'audit:read', mutation: false, rest: 'GET /api/v1/audit', note: 'tenant-admins: their tenant only' },
  'whoami.get': { permission: 'authenticated', mutation: false, rest: 'GET /api/v1/whoami' },
  'openapi.get': { permission: 'public', mutation: false, rest: 'GET /api/v1/openapi.json' },
  'microvms.migrate': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/microvms/:id/migrate', note: 'cluster mode only (409 standalone); node: the target, default the scheduler\'s pick', errors: [409, 422] },
  'microvms.pause': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/microvms/:id/pause' },
  'microvms.resume': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/microvms/:id/resume', note: 'Paused: vCPUs run again; Suspended: restored from disk with the same identity; Suspending: the suspend is cancelled' },
  'microvms.suspend': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/microvms/:id/suspend', note: 'memory and device state to disk, no VMM runs (ADR 0035)' },
  'microvms.timeout': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/microvms/:id/timeout', note: 'lifecycle.timeout ends this long from now', errors: [422] },
  'guest.exec': { permission: 'microvms:exec', mutation: true, rest: 'POST /api/v1/microvms/:id/exec', note: 'audited with argv and exit code; never stdin or output', errors: [409, 422, 502] },
  'guest.execStream': { permission: 'microvms:exec', mutation: false, rest: 'GET /api/v1/microvms/:id/exec', grpc: 'Exec', note: 'WebSocket / bidirectional stream; audited with argv and exit code when it ends', errors: [409, 422, 426, 502] },
  'guest.processStart': { permission: 'microvms:exec', mutation: true, rest: 'POST /api/v1/microvms/:id/processes', errors: [409, 422, 502] },
  'guest.processList': { permission: 'microvms:exec', mutation: false, rest: 'GET /api/v1/microvms/:id/processes', errors: [409, 422, 502] },
  'guest.processSignal': { permission: 'microvms:exec', mutation: true, rest: 'POST /api/v1/microvms/:id/processes/:processId/signal', errors: [409, 422, 502] },
  'guest.processAttach': { permission: 'microvms:exec', mutation: false, rest: 'GET /api/v1/microvms/:id/processes/:processId/attach', note: 'WebSocket', errors: [409, 422, 426, 502] },
  'guest.fileStat': { permission: 'microvms:exec', mutation: false, rest: 'GET /api/v1/microvms/:id/files/stat', errors: [409, 422, 502] },
  'guest.fileGet': { permission: 'microvms:exec', mutation: false, rest: 'GET /api/v1/microvms/:id/files', grpc: 'Download', errors: [409, 422, 502] },
  'guest.filePut': { permission: 'microvms:exec', mutation: true, rest: 'PUT /api/v1/microvms/:id/files', grpc: 'Upload', errors: [409, 415, 422, 502] },
  'guest.fileMkdir': { permission: 'microvms:exec', mutation: true, rest: 'POST /api/v1/microvms/:id/files/mkdir', errors: [409, 422, 502] },
  'guest.fileMove': { permission: 'microvms:exec', mutation: true, rest: 'POST /api/v1/microvms/:id/files/move', errors: [409, 422, 502] },
  'guest.fileDelete': { permission: 'microvms:exec', mutation: true, rest: 'DELETE /api/v1/microvms/:id/files', errors: [409, 422, 502] },
  'guest.portConnect': { permission: 'microvms:exec', mutation: false, rest: 'GET /api/v1/microvms/:id/ports/:port/connect', note: 'WebSocket TCP tunnel', errors: [409, 422, 426, 502] },
  'guest.proxy': { permission: 'microvms:exec', mutation: false, rest: '* /api/v1/microvms/:id/proxy/:port', errors: [409, 422, 502] },
  'guest.proxyPath': { permission: 'microvms:exec', mutation: false, rest: '* /api/v1/microvms/:id/proxy/:port/*', errors: [409, 422, 502] },
  'templates.list': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/templates' },
  'templates.create': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/templates', note: 'admins may pass ?tenant=', errors: [422, 501], links: ['templates.get', 'templates.rebuild', 'templates.delete'] },
  'templates.get': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/templates/:id' },
  'templates.rebuild': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/templates/:id/rebuild', errors: [501] },
  'templates.delete': { permission: 'microvms:write', mutation: true, rest: 'DELETE /api/v1/templates/:id', note: 'refused while microVMs cloned from it exist' },
  'snapshots.create': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/microvms/:id/snapshots', errors: [501, 502], links: ['snapshots.get', 'snapshots.restore', 'snapshots.delete'] },
  'snapshots.listOfVm': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/microvms/:id/snapshots' },
  'snapshots.list': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/snapshots' },
  'snapshots.get': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/snapshots/:id' },
  'snapshots.delete': { permission: 'microvms:write', mutation: true, rest: 'DELETE /api/v1/snapshots/:id' },
  'microvms.fork': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/microvms/:id/fork', note: 'the parent is paused for its snapshot only; children count against the quota like creates', errors: [422, 501, 502] },
  'snapshots.restore': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/snapshots/:id/restore', errors: [422, 501, 502], links: ['microvms.get', 'microvms.stop', 'microvms.delete'] },
  'volumes.list': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/volumes', note: 'admins may pass ?tenant=' },
  'volumes.create': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/volumes', note: 'fromSnapshot restores a volume snapshot; admins may pass ?tenant=', errors: [503], links: ['volumes.get', 'volumes.delete', 'volumesnapshots.create', 'volumesnapshots.listOfVolume'] },
  'volumes.get': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/volumes/:id' },
  'volumes.delete': { permission: 'microvms:write', mutation: true, rest: 'DELETE /api/v1/volumes/:id', note: 'refused while attached or while it has snapshots' },
  'volumesnapshots.create': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/volumes/:id/snapshots', errors: [503], links: ['volumesnapshots.get', 'volumesnapshots.delete'] },
  'volumesnapshots.listOfVolume': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/volumes/:id/snapshots' },
  'volumesnapshots.list': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/volumesnapshots' },
  'volumesnapshots.get': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/volumesnapshots/:id' },
  'volumesnapshots.delete': { permission: 'microvms:write', mutation: true, rest: 'DELETE /api/v1/volumesnapshots/:id' },
  'pools.list': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/pools', note: 'cluster mode only; admins may pass ?tenant=' },
  'pools.get': { permission: 'microvms:read', mutation: false, rest: 'GET /api/v1/pools/:name', note: 'cluster mode only' },
  'pools.scale': { permission: 'microvms:write', mutation: true, rest: 'POST /api/v1/pools/:name/scale', note: 'cluster mode only: sets spec.replicas through the scale subresource (an autoscaling rule on the pool overrides it)' },
  'images.list': { permission: 'tenants:admin', mutation: false, rest: 'GET /api/v1/images', note: 'node-wide cache shared by all tenants: admins only (references would leak across tenants)' },
  'images.delete': { permission: 'tenants:admin', mutation: true, rest: 'DELETE /api/v1/images/:digest', note: '409 while a microVM uses it' },
  'backup.create': { permission: 'tenants:admin', mutation: true, rest: 'POST /api/v1/admin/backup', note: 'streams a tar of the whole service state (every tenant): admins only; restore offline with `mvm restore`' },
  'images.gc': { permission: 'tenants:admin', mutation: true, rest: 'POST /api/v1/images/gc', note: 'never removes an image a microVM uses' },
};

export const OPERATIONS: Record<string, Operation> = Object.fromEntries(
  Object.entries(DEFS).map(([id, d]) => {
    const [resource, verb] = id.split('.') as [string, string];
    return [id, { id, resource, verb, rateClass: d.rateClass ?? (d.mutation ? 'mutation' : 'read'), ...d }];
  }),
);

/**
 * The error statuses a REST operation can answer, documented in the OpenAPI document with
 * application/problem+json bodies (src/api/server.ts adds them to every route): what the gateway
 * answers to anyone (401 unauthenticated, 403 denied or over quota, 429 rate limited, 503 a store or
 * node not reachable), what validation answers (400; 413 for a body, 414 for a path segment over the
 * router's limit), what an id in the path answers (404), what a mutation answers (409 conflicts,
 * idempotency keys; 404 a tenant named by ?tenant=), and the operation's own `errors`.
 */
export function errorStatuses(op: Operation, route: { params: boolean; query: boolean; body: boolean; method: string }): number[] {
  // 431: a request line and headers over Node's 16 KiB, refused before any route (clientErrorHandler).
  const out = new Set<number>([429, 431, 503]);
  if (op.permission !== 'public') out.add(401);
  if (op.permission !== 'public' && op.permission !== 'authenticated') out.add(403);
  if (route.params || route.query || route.body || route.method === 'POST') out.add(400);
  if (route.params) {
    out.add(404);
    out.add(414);
  }
  if (route.body) {
    out.add(413);
    out.add(415);
  }
  if (op.mutation) {
    out.add(404);
    out.add(409);
    out.add(422);
  }
  for (const e of op.errors ?? []) out.add(e);
  return [...out].sort((a, b) => a - b);
}

const BY_ROUTE = new Map(Object.values(OPERATIONS).filter((o) => o.rest).map((o) => [o.rest!, o]));
const BY_RPC = new Map(Object.values(OPERATIONS).filter((o) => o.grpc).map((o) => [o.grpc!, o]));

export function operationForRoute(method: string, pattern: string): Operation | undefined {
  // `* /pattern`: every method of a route registered with app.all (the proxy to guest ports).
  return BY_ROUTE.get(`${method} ${pattern}`) ?? BY_ROUTE.get(`* ${pattern}`);
}

export function operationForRpc(name: string): Operation {
  const op = BY_RPC.get(name);
  if (!op) throw new Error(`gRPC method ${name} has no entry in the operations table`);
  return op;
}

/** For routes missing from the table: only admins pass (fail closed). */
export function undeclaredOperation(method: string, pattern: string): Operation {
  return { id: 'undeclared', permission: 'tenants:admin', resource: 'unknown', verb: method.toLowerCase(), mutation: method !== 'GET' && method !== 'HEAD', rateClass: method === 'GET' ? 'read' : 'mutation', rest: `${method} ${pattern}` };
}

/** The body of docs/permissions.md. */
export function renderPermissionsDoc(): string {
  const lines: string[] = [];
  lines.push('# Permissions', '');
  lines.push('Generated from `src/gateway/operations.ts` and `src/core/authz.ts` (a test checks that this file is current).', '');
  lines.push('## Roles', '');
  lines.push(`| permission | meaning | ${ROLES.join(' | ')} |`);
  lines.push(`|---|---|${ROLES.map(() => '---').join('|')}|`);
  for (const [perm, what] of Object.entries(PERMISSIONS)) {
    lines.push(`| \`${perm}\` | ${what} | ${ROLES.map((r) => (can(r, perm as Permission) ? 'yes' : '—')).join(' | ')} |`);
  }
  lines.push('', 'Tenancy applies on top: every role but `admin` sees only its own tenant; a foreign id answers 404 / `NOT_FOUND`, exactly like a missing one.', '');
  lines.push('## Operations', '');
  lines.push('| operation | REST | gRPC | permission | audited | note |');
  lines.push('|---|---|---|---|---|---|');
  for (const op of Object.values(OPERATIONS)) {
    lines.push(
      `| \`${op.id}\` | ${op.rest ? `\`${op.rest.replace(/:(\w+)/g, '{$1}')}\`` : ''} | ${op.grpc ?? ''} | \`${op.permission}\` | ${op.mutation ? 'always' : 'when denied'} | ${op.note ?? ''} |`,
    );
  }
  lines.push('', 'Every call that is refused with 401, 403 or 429 is audited too. Rate-limit classes: reads use the `read` buckets, audited mutations the `mutation` buckets.', '');
  return lines.join('\n');
}
