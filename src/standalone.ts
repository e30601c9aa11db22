/**
 * Composition root of the standalone mode: one process with the API, the
 * controller, the scheduler and the local node agent over SQLite.
 */
import { randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import pino, { type Logger } from 'pino';
import type { FastifyInstance } from 'fastify';
import { LocalAgent } from './agent/agent.js';
import { claimNode, createImageManager, createImageResolver, createLocalRuntime, createNetworkManager, createVmmDriver, releaseNode } from './agent/node-runtime.js';
import { detectCgroups } from './agent/cgroups.js';
import { createGatewayStack } from './gateway/stack.js';
import { loadGatewayConfig } from './gateway/config.js';
import { buildApi } from './api/server.js';
import { startGrpcServer, type GrpcServer } from './grpc/server.js';
import { openServerTls } from './tls/server.js';
import { SG_KIND } from './core/security-groups.js';
import type { Config } from './config.js';
import { Controller } from './controller/controller.js';
import { MicroVMService } from './core/service.js';
import { SCHEMA_VERSION, SqliteStore } from './store/sqlite/sqlite-store.js';
import { SqliteAuditLog } from './store/sqlite/audit-log.js';
import { SqliteIdempotencyStore } from './store/sqlite/idempotency-store.js';
import { SqliteTenantStore } from './store/sqlite/tenant-store.js';
import { QemuDriver } from './vmm/qemu/qemu-driver.js';
import { passwdIds } from './vmm/proc.js';
import { validateRules } from './network/sg-rules.js';
import { networkAdmission } from './network/admission.js';
import { SqliteResourceStore } from './store/sqlite/resources.js';
import { SecurityGroupService } from './core/security-groups.js';
import { NetworkController } from './controller/network-controller.js';
import { SnapshotService } from './core/snapshots.js';
import { TemplateService } from './core/templates.js';
import { GuestService } from './core/guest.js';
import { VOLUME_KIND, VOLUME_SNAPSHOT_KIND, VolumeService } from './core/volumes.js';
import { volumeBackendsFromEnv } from './storage/volumes/index.js';
import { LocalBackupService } from './backup/backup.js';

export const VERSION = '0.1.0';

export interface Standalone {
  app: FastifyInstance;
  url: string;
  adminToken: string;
  adminTokenFile?: string;
  store: SqliteStore;
  agent: LocalAgent;
  controller: Controller;
  log: Logger;
  /** host:port of the gRPC API (MVM_GRPC_LISTEN), when enabled. */
  grpcAddress?: string;
  close(): Promise<void>;
}


/** MVM_ADMIN_TOKEN, or the token kept in <dataDir>/admin.token (generated once, mode 0600). */
export function ensureAdminToken(cfg: Config): { token: string; file?: string } {
  if (cfg.adminToken) return { token: cfg.adminToken };
  const file = join(cfg.dataDir, 'admin.token');
  if (existsSync(file)) {
    const token = readFileSync(file, 'utf8').trim();
    if (token) return { token, file };
  }
  const token = `mvm_${randomBytes(24).toString('base64url')}`;
  writeFileSync(`${file}.tmp`, token + '\n', { mode: 0o600 });
  chmodSync(`${file}.tmp`, 0o600);
  renameSync(`${file}.tmp`, file);
  return { token, file };
}

export async function startStandalone(cfg: Config, opts: { logger?: Logger } = {}): Promise<Standalone> {
  const log =
    opts.logger ??
    pino({
      level: cfg.logLevel,
      base: { svc: 'mvm', node: cfg.nodeName },
      redact: { paths: ['req.headers.authorization', 'token', 'adminToken', '*.token'], censor: '[redacted]' },
    });
  // Traversable (not listable) by the unprivileged VMM user, which re-opens its disks after a restore.
  mkdirSync(cfg.dataDir, { recursive: true, mode: 0o711 });
  chmodSync(cfg.dataDir, 0o711);
  // Before anything host-global is made: this instance's names are ours alone on this host (ADR 0027).
  const claim = await claimNode(cfg);
  log.info({ instance: cfg.instance, dataDir: cfg.dataDir, cgroupParent: cfg.cgroupParent }, 'instance claimed');
  const store = new SqliteStore(join(cfg.dataDir, 'state.db'));
  if (store.migratedFrom > 0 && store.migratedFrom < SCHEMA_VERSION) log.info({ from: store.migratedFrom, to: SCHEMA_VERSION }, 'state database schema upgraded');
  for (const f of ['state.db', 'state.db-wal', 'state.db-shm']) if (existsSync(join(cfg.dataDir, f))) chmodSync(join(cfg.dataDir, f), 0o600);
  // Default images for `default`/omitted references, OCI images (pulled, built, cached by digest) otherwise.
  // The tenant store shares the state file; the image policy reads a tenant's overrides from it.
  const tenantStore = new SqliteTenantStore(store);
  const { images, imageCfg, policy: imagePolicy } = createImageResolver(cfg, log, process.env, async (t) => (await tenantStore.getTenant(t))?.imagePolicy);
  const kernel = await images.resolveKernel(undefined).catch((e: Error) => {
    log.error({ err: e.message }, 'default guest images are not available');
    return undefined;
  });
  const qemu = new QemuDriver({
    cacheDir: cfg.cacheDir,
    accel: cfg.accel,
    runAs: cfg.vmmUser,
    ...(kernel ? { probeKernelPath: kernel.kernelPath } : {}),
  });
  const driver = createVmmDriver(cfg, qemu);
  const caps = await driver.capabilities();
  if (!caps.available) log.error({ driver: caps.driver, reason: caps.unavailableReason }, 'VMM driver cannot run guests on this host');
  log.info({ driver: caps.driver, accel: caps.accel, version: caps.version, available: caps.available }, 'VMM driver ready');
  const cgroups = detectCgroups('/sys/fs/cgroup', cfg.cgroupParent);
  const resources = new SqliteResourceStore(store.database);
  const groups = new SecurityGroupService(resources, store, validateRules);
  let netController: NetworkController | undefined;
  const network = await createNetworkManager(cfg, log, claim);
  if (network) {
    netController = new NetworkController({
      network,
      resources,
      store,
      groups,
      log: log.child({ c: 'network' }),
      defaultEgress: { default: cfg.network.egressDefault },
    });
  }
  // Volumes: the service is built before the agent (which maps volumes on start); tenants join once the gateway exists.
  const volumeBackends = volumeBackendsFromEnv(process.env, { dataDir: cfg.dataDir, node: cfg.nodeName, ...(passwdIds(cfg.vmmUser) ? { owner: passwdIds(cfg.vmmUser)! } : {}) });
  const volumeDeps: ConstructorParameters<typeof VolumeService>[0] = {
    resources,
    store,
    ...volumeBackends,
    log: (msg, fields) => log.child({ c: 'volumes' }).info(fields ?? {}, msg),
  };
  const volumes = new VolumeService(volumeDeps);
  const { agent, controller } = createLocalRuntime(cfg, { nodeName: cfg.nodeName, store, driver, images, imageCfg, volumes, cgroups, network, netController, log });
  const { token, file } = ensureAdminToken(cfg);
  // Gateway: tenants, API keys, JWT/OIDC, rate limits, idempotency, audit — shared by REST and gRPC.
  const gatewayConfig = cfg.gateway ?? loadGatewayConfig();
  const gw = await createGatewayStack({
    store,
    adapters: { tenantStore, auditLog: new SqliteAuditLog(store), idempotency: new SqliteIdempotencyStore(store) },
    config: gatewayConfig,
    adminToken: token,
    log: log.child({ c: 'gateway' }),
    resources,
    resourceKinds: [SG_KIND, VOLUME_KIND, VOLUME_SNAPSHOT_KIND],
  });
  volumeDeps.tenants = gw.tenantStore;
  const service = new MicroVMService(store, agent, images, networkAdmission(groups, network ? { network: network.networks[0]!, ipHolder: (ip) => network.ipHolderOf(ip) } : {}), { tenants: gw.tenantStore, maxRootfsBytes: imageCfg.maxRootfsBytes, volumes, imageAdmission: imagePolicy, hostPorts: cfg.hostPorts });
  // Image cache management: in use = named by any microVM record (every phase).
  const imageManager = createImageManager(images, store, imageCfg, log);
  const snapshots = new SnapshotService(store, resources, agent, service, gw.tenantStore);
  const templates = new TemplateService(store, resources, agent, { bootTimeoutMs: cfg.bootTimeoutSeconds * 1000 || 300_000, log: log.child({ c: 'templates' }), imageAdmission: imagePolicy });
  service.templateResolver = (p, tenant, req) => templates.cloneRequest(p, tenant, req);
  const guest = new GuestService(service, agent);
  service.restoreResolver = (p, req) => snapshots.restoreRequest(p, req);
  // TLS for REST and gRPC (ADR 0026): one key pair, reloaded when its files change.
  const tls = openServerTls(cfg.tls, { dataDir: cfg.dataDir, listenHost: cfg.listen.host, log: log.child({ c: 'tls' }) });
  const backup = new LocalBackupService({
    db: store.database,
    dataDir: cfg.dataDir,
    node: cfg.nodeName,
    agent,
    volumeBackends: volumeBackends.backends,
    serviceVersion: VERSION,
    schemaVersion: SCHEMA_VERSION,
  });
  backup.sweep();
  const app = await buildApi({ ...(tls ? { tls } : {}), backup, service, gateway: gw.gateway, tenants: gw.tenants, audit: gw.audit, logger: log.child({ c: 'api' }), version: VERSION, securityGroups: groups, snapshots, images: imageManager, volumes, templates, guest });
  const grpcServer: GrpcServer | undefined = gatewayConfig.grpcListen
    ? await startGrpcServer({ ...(tls ? { tls } : {}), service, guest, gateway: gw.gateway, host: gatewayConfig.grpcListen.host, port: gatewayConfig.grpcListen.port, log: log.child({ c: 'grpc' }) })
    : undefined;
  await netController?.start();
  await controller.start();
  imageManager.start();
  await snapshots.recover();
  await templates.recover();
  // After a crash: half-created volumes and leftover files are removed, attachments of deleted VMs dropped.
  await volumes.start(cfg.resyncSeconds * 1000 * 15);
  const address = await app.listen({ host: cfg.listen.host, port: cfg.listen.port }).catch((e: NodeJS.ErrnoException) => {
    throw e.code === 'EADDRINUSE' ? new Error(`MVM_LISTEN ${cfg.listen.host}:${cfg.listen.port} is already in use (another instance?): set MVM_LISTEN`, { cause: e }) : e;
  });
  const url = address.replace('[::1]', '127.0.0.1');
  // Atomically: readers (the CLI, tests) never see a half-written file.
  writeFileSync(
    join(cfg.dataDir, 'server.json.tmp'),
    // With TLS, `ca` is what a local client trusts: the self-signed certificate (MVM_TLS_SELF_SIGNED), or nothing (a real CA's).
    JSON.stringify({ url, ...(grpcServer ? { grpc: grpcServer.address } : {}), ...(tls ? { tls: true } : {}), ...(tls && !cfg.tls?.certFile ? { ca: tls.certFile } : {}), pid: process.pid, startedAt: new Date().toISOString() }) + '\n',
  );
  renameSync(join(cfg.dataDir, 'server.json.tmp'), join(cfg.dataDir, 'server.json'));
  let closed = false;
  return {
    app,
    url,
    adminToken: token,
    ...(file ? { adminTokenFile: file } : {}),
    store,
    agent,
    controller,
    log,
    ...(grpcServer ? { grpcAddress: grpcServer.address } : {}),
    async close() {
      if (closed) return;
      closed = true;
      await grpcServer?.close();
      await app.close();
      await gw.close();
      tls?.close();
      netController?.stop();
      await controller.stop();
      volumes.stop();
      imageManager.stop();
      if (cfg.shutdownPolicy === 'stop') {
        // Stop every guest now; they are booted again when the service next starts.
        await agent.stopAll(cfg.stopTimeoutSeconds * 1000);
        for (const vm of (await store.listVms({ limit: 1000 })).items) {
          if (vm.desiredState === 'Running' && ['Starting', 'Running', 'Paused'].includes(vm.status.phase)) {
            await store.updateVm(vm.id, (v) => ({ ...v, status: { ...v.status, phase: 'Scheduled', reason: 'ServiceShutdown', message: 'stopped with the service; boots again when it starts' } }));
          }
        }
      }
      await agent.shutdown();
      await store.close();
      await releaseNode({ ...(network ? { network } : {}), cgroups, claim, log });
    },
  };
}
