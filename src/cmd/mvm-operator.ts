#!/usr/bin/env node
/**
 * `mvm-operator`: the operator of cluster mode (deploy/operator, docs/adr/0017). With leader
 * election (default) only the holder of the Lease microvm-system/microvm-operator reconciles;
 * a replica that loses the lease exits (its Deployment restarts it as a candidate), as
 * client-go's leaderelection users do.
 */
import { createServer } from 'node:http';
import { hostname } from 'node:os';
import { KubeConfig } from '@kubernetes/client-node';
import pino from 'pino';
import { OPERATOR_LEASE, SYSTEM_NAMESPACE } from '../k8s/cluster.js';
import { LeaderElector } from '../operator/leader.js';
import { Operator } from '../operator/operator.js';
import { PoolController } from '../operator/pool-controller.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { positiveNumber } from '../config.js';
import { configOrExit, runMain, shutdownOnSignals } from './lifecycle.js';

const BINARY = 'mvm-operator';

const num = (v: string | undefined, d: number): number => (v !== undefined && v !== '' && Number.isFinite(Number(v)) ? Number(v) : d);

async function main(): Promise<void> {
  const env = process.env;
  const cfg = configOrExit(BINARY, 'operator');
  const identity = env.POD_NAME ?? `${hostname()}-${process.pid}`;
  const log = pino({ level: cfg.logLevel, base: { svc: 'mvm-operator', id: identity } });
  const kc = new KubeConfig();
  kc.loadFromDefault();
  const namespace = env.POD_NAMESPACE ?? cfg.cluster?.systemNamespace ?? SYSTEM_NAMESPACE;
  const operator = new Operator({
    kubeConfig: kc,
    scheduler: new Scheduler({ cpuOvercommit: positiveNumber('MVM_CPU_OVERCOMMIT', env.MVM_CPU_OVERCOMMIT, 16), strategy: env.MVM_SCHEDULER_STRATEGY === 'binpack' ? 'binpack' : 'spread' }),
    log,
    ...(cfg.cluster?.partition ? { partition: cfg.cluster.partition } : {}),
    systemNamespace: namespace,
    resyncMs: cfg.resyncSeconds * 1000,
    // A cordon (kubectl cordon / kubectl drain) moves the node's VMs elsewhere unless "false".
    drainOnCordon: env.MVM_DRAIN_ON_CORDON !== 'false',
    // MVM_DRAIN_MODE: migrate (default: with memory, the cold move as the fallback) | cold (stop + cold start only).
    drainMigrates: env.MVM_DRAIN_MODE !== 'cold',
  });
  // MicroVMPools (ADR 0033): their own informers and queue, under the same leadership.
  const pools = new PoolController({ kubeConfig: kc, log: log.child({ controller: 'pools' }), ...(cfg.cluster?.partition ? { partition: cfg.cluster.partition } : {}), resyncMs: cfg.resyncSeconds * 1000 });
  let leading = false;
  let started = false;
  // Loopback unless configured (deploy/operator sets 0.0.0.0:8081 for the kubelet's probes).
  const health = env.MVM_HEALTH_LISTEN ?? '127.0.0.1:8081';
  if (health !== 'off') {
    const i = health.lastIndexOf(':');
    const srv = createServer((req, res) => {
      const ok = req.url === '/healthz' || (req.url === '/readyz' && started);
      res.writeHead(ok ? 200 : req.url === '/readyz' ? 503 : 404, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : `${req.url === '/readyz' ? 'not started' : 'not found'}\n`);
    });
    srv.listen(Number(health.slice(i + 1)), health.slice(0, i) || '127.0.0.1');
    srv.unref();
  }
  const begin = async (): Promise<void> => {
    leading = true;
    await operator.start();
    await pools.start();
    started = true;
  };
  let elector: LeaderElector | undefined;
  if (env.MVM_LEADER_ELECTION === 'false') {
    await begin();
  } else {
    elector = new LeaderElector({
      kubeConfig: kc,
      namespace,
      name: env.MVM_LEADER_ELECTION_LEASE ?? OPERATOR_LEASE,
      identity,
      leaseDurationMs: num(env.MVM_LEASE_DURATION_SECONDS, 15) * 1000,
      renewDeadlineMs: num(env.MVM_RENEW_DEADLINE_SECONDS, 10) * 1000,
      retryPeriodMs: num(env.MVM_RETRY_PERIOD_SECONDS, 2) * 1000,
      onStartedLeading: begin,
      onStoppedLeading: () => {
        log.error('leadership lost: exiting');
        process.exit(3);
      },
      onNewLeader: (who) => log.info({ leader: who }, 'following'),
      log: (msg, o, level = 'info') => log[level](o ?? {}, msg),
    });
    started = true; // a follower is healthy and ready (readiness is not leadership)
    elector.start();
  }
  // The operator starts on election, after the elector: it stops first.
  shutdownOnSignals({ binary: BINARY, log, closers: [async () => elector?.stop(), () => pools.stop(), () => operator.stop()], fields: () => ({ leading }) });
}

runMain(BINARY, main);
