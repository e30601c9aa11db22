/**
 * Firecracker's API protocol facts, written down once (from the published
 * swagger `firecracker.yaml` and the VMM's pre-boot/runtime controllers):
 * which routes exist, which are pre-boot only / post-boot only, which ones
 * count as "boot-specific configuration" (after which a snapshot can no longer
 * be loaded), and the fault messages Firecracker answers with.
 *
 * Used by the API client (to refuse wrong-phase calls before sending them) and
 * by the test peer (to refuse them the way Firecracker does).
 */

export type FcMethod = 'GET' | 'PUT' | 'PATCH';
export type FcPhase = 'pre-boot' | 'post-boot' | 'any';

export interface FcRoute {
  method: FcMethod;
  /** Path pattern; `{id}` is one path segment (a drive / interface id). */
  path: string;
  phase: FcPhase;
  /** The call configures the boot path: a snapshot can no longer be loaded afterwards. */
  bootPath?: boolean;
  /** Only on a fresh process (nothing boot-specific configured yet). */
  freshOnly?: boolean;
  /** The call ends the pre-boot phase when it succeeds. */
  boots?: boolean;
  summary: string;
}

/** Every route the driver may use, with its phase (Firecracker's PrebootApiController / RuntimeApiController split). */
export const FC_ROUTES: readonly FcRoute[] = [
  { method: 'GET', path: '/', phase: 'any', summary: 'instance information' },
  { method: 'GET', path: '/version', phase: 'any', summary: 'Firecracker version' },
  { method: 'GET', path: '/machine-config', phase: 'any', summary: 'machine configuration' },
  { method: 'PUT', path: '/machine-config', phase: 'pre-boot', bootPath: true, summary: 'set vCPUs, memory, SMT, dirty page tracking' },
  { method: 'PATCH', path: '/machine-config', phase: 'pre-boot', bootPath: true, summary: 'partially update the machine configuration' },
  { method: 'GET', path: '/vm/config', phase: 'any', summary: 'full VM configuration' },
  { method: 'PUT', path: '/boot-source', phase: 'pre-boot', bootPath: true, summary: 'kernel, boot arguments, initrd' },
  { method: 'PUT', path: '/drives/{id}', phase: 'pre-boot', bootPath: true, summary: 'attach a block device' },
  { method: 'PATCH', path: '/drives/{id}', phase: 'post-boot', summary: 'update a drive path or rate limiter' },
  { method: 'PUT', path: '/network-interfaces/{id}', phase: 'pre-boot', bootPath: true, summary: 'attach a network interface (tap)' },
  { method: 'PATCH', path: '/network-interfaces/{id}', phase: 'post-boot', summary: 'update interface rate limiters' },
  { method: 'PUT', path: '/logger', phase: 'pre-boot', summary: 'configure the logger (once)' },
  { method: 'PUT', path: '/metrics', phase: 'pre-boot', summary: 'configure the metrics sink (once)' },
  { method: 'PUT', path: '/vsock', phase: 'pre-boot', bootPath: true, summary: 'attach the vsock device' },
  { method: 'PUT', path: '/entropy', phase: 'pre-boot', bootPath: true, summary: 'attach the entropy device' },
  { method: 'PUT', path: '/mmds/config', phase: 'pre-boot', bootPath: true, summary: 'MMDS version, address, interfaces' },
  { method: 'PUT', path: '/mmds', phase: 'any', summary: 'replace the MMDS data store' },
  { method: 'PATCH', path: '/mmds', phase: 'any', summary: 'patch the MMDS data store' },
  { method: 'GET', path: '/mmds', phase: 'any', summary: 'read the MMDS data store' },
  { method: 'PUT', path: '/balloon', phase: 'pre-boot', bootPath: true, summary: 'attach the balloon device' },
  { method: 'PATCH', path: '/balloon', phase: 'post-boot', summary: 'change the balloon target' },
  { method: 'GET', path: '/balloon', phase: 'any', summary: 'balloon configuration' },
  { method: 'GET', path: '/balloon/statistics', phase: 'post-boot', summary: 'balloon statistics' },
  { method: 'PATCH', path: '/balloon/statistics', phase: 'post-boot', summary: 'balloon statistics interval' },
  // The phase of /actions depends on action_type: see FC_ACTIONS.
  { method: 'PUT', path: '/actions', phase: 'any', summary: 'InstanceStart, SendCtrlAltDel, FlushMetrics' },
  { method: 'PATCH', path: '/vm', phase: 'post-boot', summary: 'pause / resume the microVM' },
  { method: 'PUT', path: '/snapshot/create', phase: 'post-boot', summary: 'write a snapshot of a paused microVM' },
  { method: 'PUT', path: '/snapshot/load', phase: 'pre-boot', freshOnly: true, boots: true, summary: 'restore a snapshot into a fresh process' },
];

/** Synchronous actions (`PUT /actions`) and the phase each is accepted in. */
export const FC_ACTIONS = {
  InstanceStart: 'pre-boot',
  SendCtrlAltDel: 'post-boot',
  FlushMetrics: 'post-boot',
} as const satisfies Record<string, FcPhase>;

export type FcActionType = keyof typeof FC_ACTIONS;

/** Firecracker's own fault messages (verbatim where Firecracker has one). */
export const FC_FAULTS = {
  notAfterBoot: 'The requested operation is not supported after starting the microVM.',
  notBeforeBoot: 'The requested operation is not supported before starting the microVM.',
  loadNotAllowed: 'Loading a microVM snapshot not allowed after configuring boot-specific resources.',
  missingKernel: 'Cannot start microvm without kernel configuration.',
  idMismatch: 'The id from the path does not match the id from the body!',
  invalidId: 'API Resource IDs can only contain alphanumeric characters and underscores.',
  emptyPut: 'Empty PUT request.',
  emptyPatch: 'Empty PATCH request.',
  invalidVcpus: 'The vCPU number is invalid! The vCPU number can only be 1 or an even number when SMT is enabled.',
  invalidMemory: 'The memory size (MiB) is invalid.',
  rootExists: 'A root block device already exists!',
  diffWithoutTracking: 'Diff snapshots are not allowed on uVMs with dirty page tracking disabled.',
  serde: (detail: string): string => `An error occurred when deserializing the json body of a request: ${detail}.`,
  invalidPath: (method: string, path: string): string => `Invalid request method and/or path: ${method} ${path}.`,
} as const;

/** Firecracker API resource ids (drive_id, iface_id): alphanumerics and underscores. */
export const FC_RESOURCE_ID_RE = /^[A-Za-z0-9_]+$/;
/** Instance ids (`--id`, the jailer's `--id`): alphanumerics and hyphens, at most 64 characters. */
export const FC_INSTANCE_ID_RE = /^[A-Za-z0-9-]{1,64}$/;
/** Firecracker's exit code when a failed snapshot load leaves the process unusable. */
export const FC_EXIT_BAD_CONFIGURATION = 152;

export type FcInstanceState = 'Not started' | 'Running' | 'Paused';

/** Match a method + path against the route table. */
export function findRoute(method: string, path: string): { route: FcRoute; id?: string } | undefined {
  const clean = path.split('?')[0] ?? path;
  for (const route of FC_ROUTES) {
    if (route.method !== method) continue;
    if (!route.path.includes('{id}')) {
      if (route.path === clean) return { route };
      continue;
    }
    const prefix = route.path.slice(0, route.path.indexOf('{id}'));
    if (clean.startsWith(prefix)) {
      const id = clean.slice(prefix.length);
      if (!id.includes('/')) return { route, id: decodeURIComponent(id) };
    }
  }
  return undefined;
}

/** Phase a call needs, looking into the action type for `PUT /actions`. */
export function requiredPhase(method: string, path: string, body?: unknown): FcPhase | undefined {
  const m = findRoute(method, path);
  if (!m) return undefined;
  if (m.route.path === '/actions') {
    const t = (body as { action_type?: unknown } | undefined)?.action_type;
    return typeof t === 'string' && t in FC_ACTIONS ? FC_ACTIONS[t as FcActionType] : 'any';
  }
  return m.route.phase;
}

/** Does this call end the pre-boot phase when it succeeds? */
export function bootsVm(method: string, path: string, body?: unknown): boolean {
  const m = findRoute(method, path);
  if (!m) return false;
  if (m.route.path === '/actions') return (body as { action_type?: unknown } | undefined)?.action_type === 'InstanceStart';
  return m.route.boots === true;
}

/**
 * Why a call is refused in the given phase (Firecracker's message), or undefined
 * when the phase allows it. `configured` = boot-specific resources were set.
 */
export function phaseFault(method: string, path: string, body: unknown, state: { booted: boolean; configured: boolean }): string | undefined {
  const phase = requiredPhase(method, path, body);
  if (phase === 'pre-boot' && state.booted) return FC_FAULTS.notAfterBoot;
  if (phase === 'post-boot' && !state.booted) return FC_FAULTS.notBeforeBoot;
  const m = findRoute(method, path);
  if (m?.route.freshOnly && state.configured) return FC_FAULTS.loadNotAllowed;
  return undefined;
}
