#!/usr/bin/env node
/**
 * `kubectl mvm` (installed as `kubectl-mvm` on PATH by `make install-tools`): console, live
 * metrics and exec of a MicroVM straight from its node agent, as `virtctl console` does for
 * KubeVirt. It goes through the same authenticated agent endpoint as the API in cluster mode
 * (src/agent/endpoint/, ADR 0015): the MicroVM's `status.node` → that Node's
 * `microvm.service/agent-endpoint` annotation → the agent, which reviews the caller's bearer token
 * (TokenReview) and asks the API server whether that user may `get microvms/console`,
 * `get microvms/metrics` or `create microvms/guest` on the object (SubjectAccessReview). So
 * kubectl's RBAC decides, for the user of the current kubeconfig context.
 *
 *   kubectl mvm console NAME [-n NS] [-f] [--tail BYTES]
 *   kubectl mvm metrics NAME [-n NS]
 *   kubectl mvm exec NAME [-n NS] [-i] -- COMMAND [ARGS...]
 *
 * The token is the kubeconfig user's bearer token (a token, token file or exec plugin); a user
 * that authenticates with a client certificate has none to give: pass `--token`. Agents that
 * require an audience (deploy/firecracker: `microvm-agent`) need a token of that audience.
 */
import { Command, CommanderError } from 'commander';
import { CustomObjectsApi, KubeConfig } from '@kubernetes/client-node';
import { RemoteNodeAgents } from '../agent/endpoint/client.js';
import { MvmError } from '../core/errors.js';
import type { MicroVM } from '../core/microvm.js';
import { MICROVM_RESOURCE } from '../k8s/crd.js';
import { httpStatus, k8sStatus } from '../k8s/errors.js';
import { TenantNamespaces, fromObject, type MicroVMObject } from '../k8s/microvm-object.js';

const BINARY = 'kubectl-mvm';

interface Globals {
  kubeconfig?: string;
  context?: string;
  namespace?: string;
  token?: string;
}

class Failure extends Error {}

interface Target {
  vm: MicroVM;
  agents: RemoteNodeAgents;
  where: string;
}

async function bearer(kc: KubeConfig, flag: string | undefined): Promise<string> {
  if (flag) return flag;
  const opts: { headers?: Record<string, string> } = { headers: {} };
  await kc.applyToHTTPSOptions(opts);
  const m = /^Bearer\s+(\S+)$/i.exec(opts.headers?.Authorization ?? opts.headers?.authorization ?? '');
  if (!m) {
    throw new Failure(
      `the user of context ${kc.getCurrentContext()} has no bearer token (a client certificate?); the node agents accept a token they can review: pass --token (e.g. "$(kubectl create token <serviceaccount>)")`,
    );
  }
  return m[1]!;
}

/** The MicroVM NAME in the namespace, and a client of the node agents as the kubeconfig's user. */
async function target(name: string, g: Globals): Promise<Target> {
  const kc = new KubeConfig();
  if (g.kubeconfig) kc.loadFromFile(g.kubeconfig);
  else kc.loadFromDefault();
  if (g.context) kc.setCurrentContext(g.context);
  const namespace = g.namespace ?? kc.getContextObject(kc.getCurrentContext())?.namespace ?? 'default';
  const { group, version, plural } = MICROVM_RESOURCE;
  let obj: MicroVMObject;
  try {
    obj = (await kc.makeApiClient(CustomObjectsApi).getNamespacedCustomObject({ group, version, plural, namespace, name })) as MicroVMObject;
  } catch (e) {
    if (httpStatus(e) === 404) throw new Failure(`microvm ${name} not found in namespace ${namespace}`);
    throw new Failure(`cannot read microvm ${namespace}/${name}: ${k8sStatus(e).message ?? (e as Error).message}`);
  }
  const vm = fromObject(obj, new TenantNamespaces(process.env.MVM_K8S_PARTITION || undefined));
  if (!vm.id) throw new Failure(`microvm ${namespace}/${name} has no id yet (the operator has not seen it)`);
  if (!vm.status.node) throw new Failure(`microvm ${namespace}/${name} is not on a node (phase ${vm.status.phase})`);
  const token = await bearer(kc, g.token);
  return { vm, agents: new RemoteNodeAgents({ kubeConfig: kc, token: () => token }), where: `${namespace}/${name} on node ${vm.status.node}` };
}

async function consoleCmd(name: string, o: { follow?: boolean; tail: string }, g: Globals): Promise<number> {
  const tail = Number(o.tail);
  if (!Number.isInteger(tail) || tail < 0) throw new Failure(`--tail must be a number of bytes, got ${JSON.stringify(o.tail)}`);
  const t = await target(name, g);
  const ac = new AbortController();
  const stop = (): void => ac.abort();
  process.once('SIGINT', stop);
  try {
    for await (const chunk of t.agents.streamConsole(t.vm, { tail, follow: !!o.follow, signal: ac.signal })) {
      if (!process.stdout.write(chunk)) await new Promise((r) => process.stdout.once('drain', r));
    }
  } finally {
    process.off('SIGINT', stop);
    await t.agents.shutdown();
  }
  return 0;
}

async function metricsCmd(name: string, g: Globals): Promise<number> {
  const t = await target(name, g);
  try {
    process.stdout.write(`${JSON.stringify(await t.agents.metrics(t.vm), null, 2)}\n`);
  } finally {
    await t.agents.shutdown();
  }
  return 0;
}

async function execCmd(name: string, cmd: string[], o: { stdin?: boolean }, g: Globals): Promise<number> {
  if (cmd.length === 0) throw new Failure('a command is required: kubectl mvm exec NAME -- COMMAND [ARGS...]');
  const t = await target(name, g);
  try {
    const session = await t.agents.guest(t.vm);
    const h = session.exec({ cmd, stdin: !!o.stdin });
    h.stdout.pipe(process.stdout, { end: false });
    h.stderr.pipe(process.stderr, { end: false });
    if (o.stdin) process.stdin.pipe(h.stdin);
    const r = await h.result;
    if (o.stdin) process.stdin.unpipe(h.stdin).pause();
    await new Promise((resolve) => setImmediate(resolve));
    return r.signal ? 128 : r.exitCode;
  } finally {
    await t.agents.shutdown();
  }
}

function program(done: (code: number) => void): Command {
  const p = new Command('kubectl mvm')
    .description('console, metrics and exec of a MicroVM through its node agent (as the current kubeconfig user)')
    .option('--kubeconfig <file>', 'kubeconfig file (default: $KUBECONFIG, ~/.kube/config)')
    .option('--context <name>', 'kubeconfig context')
    .option('-n, --namespace <ns>', "the MicroVM's namespace (default: the context's, else default)")
    .option('--token <token>', 'bearer token for the node agents (default: the kubeconfig user\'s)')
    .exitOverride()
    .showHelpAfterError();
  const g = (): Globals => p.opts<Globals>();
  p.command('console <name>')
    .description("the guest's serial console")
    .option('-f, --follow', 'keep printing new output until the VM stops (Ctrl-C ends)')
    .option('--tail <bytes>', 'bytes of earlier output first', '65536')
    .action(async (name: string, o: { follow?: boolean; tail: string }) => done(await consoleCmd(name, o, g())));
  p.command('metrics <name>')
    .description('live metrics (JSON): cpu seconds, memory, disks, NICs')
    .action(async (name: string) => done(await metricsCmd(name, g())));
  p.command('exec <name> [command...]')
    .description("run a command in the guest (its guest agent); exits with the command's exit code")
    .option('-i, --stdin', 'pass stdin to the command')
    .action(async (name: string, command: string[], o: { stdin?: boolean }) => done(await execCmd(name, command, o, g())));
  return p;
}

async function main(): Promise<void> {
  let code = 0;
  try {
    await program((c) => (code = c)).parseAsync(process.argv);
  } catch (e) {
    if (e instanceof CommanderError) {
      code = e.exitCode;
    } else {
      process.stderr.write(`${BINARY}: ${e instanceof Failure || e instanceof MvmError ? e.message : ((e as Error).stack ?? String(e))}\n`);
      code = 1;
    }
  }
  // Idle keep-alive sockets of the Kubernetes client would hold the process a while: exit now
  // (stdout and stderr are synchronous for files and pipes on Linux, so nothing written is lost).
  process.exit(code);
}

void main();
