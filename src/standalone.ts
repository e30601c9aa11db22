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
import { detectCgroups } from './agent/cgroups.js';
import { StaticTokenAuthenticator } from './api/auth.js';
import { buildApi } from './api/server.js';
import type { Config } from './config.js';
import { Controller } from './controller/controller.js';
import { MicroVMService } from './core/service.js';
import { Scheduler } from './scheduler/scheduler.js';
import { DefaultImageResolver } from './storage/default-images.js';
import { SqliteStore } from './store/sqlite/sqlite-store.js';
import { QemuDriver } from './vmm/qemu/qemu-driver.js';
import { createHash } from 'node:crypto';
import { CniNetworkManager } from './network/manager.js';
import { validateRules } from './network/sg-rules.js';
import { networkAdmission } from './network/admission.js';
import { SqliteResourceStore } from './store/sqlite/resources.js';
import { SecurityGroupService } from './core/security-groups.js';
import { NetworkController } from './controller/network-controller.js';

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
  mkdirSync(cfg.dataDir, { recursive: true, mode: 0o700 });
  const store = new SqliteStore(join(cfg.dataDir, 'state.db'));
  const images = new DefaultImageResolver({ cacheDir: cfg.cacheDir, log: (m) => log.info(m) });
  const kernel = await images.resolveKernel(undefined).catch((e: Error) => {
    log.error({ err: e.message }, 'default guest images are not available');
    return undefined;
  });
  const driver = new QemuDriver({
    cacheDir: cfg.cacheDir,
    accel: cfg.accel,
    runAs: cfg.vmmUser,
    ...(kernel ? { probeKernelPath: kernel.kernelPath } : {}),
  });
  const caps = await driver.capabilities();
  log.info({ driver: caps.driver, accel: caps.accel, version: caps.version, available: caps.available }, 'VMM driver ready');
  const cgroups = detectCgroups();
  const resources = new SqliteResourceStore(store.database);
  const groups = new SecurityGroupService(resources, store, validateRules);
  let netController: NetworkController | undefined;
  let network: CniNetworkManager | undefined;
  if (cfg.network.mode === 'cni') {
    // VM namespaces are host-global: a prefix per data directory keeps side-by-side instances apart.
    const tag = createHash('sha256').update(cfg.dataDir).digest('hex').slice(0, 4);
    network = new CniNetworkManager({
      dataDir: cfg.dataDir,
      networks: [{ name: 'mvm', bridge: cfg.network.bridge, subnet: cfg.network.subnet, gateway: cfg.network.gateway, ipMasq: cfg.network.ipMasq }],
      netnsPrefix: `mvm${tag}-`,
      ...(cfg.network.hostNetns ? { hostNetns: cfg.network.hostNetns } : {}),
      log: log.child({ c: 'network' }),
    });
    await network.resync();
    netController = new NetworkController({
      network,
      resources,
      store,
      groups,
      log: log.child({ c: 'network' }),
      defaultEgress: { default: cfg.network.egressDefault },
    });
  }
  const agent = new LocalAgent({
    nodeName: cfg.nodeName,
    dataDir: cfg.dataDir,
    driver,
    images,
    cgroups,
    log: log.child({ c: 'agent' }),
    ...(network && netController ? { network, networkSpec: (vm) => netController!.specFor(vm) } : {}),
  });
  const controller = new Controller({
    store,
    agent,
    scheduler: new Scheduler(),
    log: log.child({ c: 'controller' }),
    resyncMs: cfg.resyncSeconds * 1000,
    stopTimeoutMs: cfg.stopTimeoutSeconds * 1000,
  });
  const service = new MicroVMService(store, agent, images, networkAdmission(groups));
  const { token, file } = ensureAdminToken(cfg);
  const app = await buildApi({ service, authenticators: [new StaticTokenAuthenticator(token)], logger: log.child({ c: 'api' }), version: VERSION, securityGroups: groups });
  await netController?.start();
  await controller.start();
  const address = await app.listen({ host: cfg.listen.host, port: cfg.listen.port });
  const url = address.replace('[::1]', '127.0.0.1');
  writeFileSync(join(cfg.dataDir, 'server.json'), JSON.stringify({ url, pid: process.pid, startedAt: new Date().toISOString() }) + '\n');
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
    async close() {
      if (closed) return;
      closed = true;
      await app.close();
      netController?.stop();
      await controller.stop();
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
    },
  };
}
