/**
 * The node agent's own Node object on a cluster with no kubelet (`make cluster-up`, a bare
 * control plane; docs/adr/0022). Off by default: on a real cluster the kubelet registers the Node
 * and the node lifecycle controller keeps its Ready condition and taints. With
 * MVM_NODE_REGISTER=true the agent does their part for its own Node, and only for a Node it
 * created itself (annotated `microvm.service/registered-by: mvm-agent`), never a kubelet's:
 *
 * - at start: creates the Node when none exists (labels `kubernetes.io/hostname` and
 *   `microvm.service/kvm=true`, the DaemonSet's node selector);
 * - with every heartbeat: condition Ready=True (reason MvmAgentHeartbeat, lastHeartbeatTime now)
 *   and the taints `node.kubernetes.io/not-ready` / `unreachable` removed (the admission plugin
 *   TaintNodesByCondition gives every new Node the first; nobody else would remove it here);
 * - at a graceful stop: Ready=False (reason MvmAgentStopped).
 *
 * The operator's readiness is the heartbeat Lease either way (src/k8s/cluster.ts, nodeInfoOf).
 * Rights: create nodes, patch nodes and nodes/status (deploy/firecracker/register-node/rbac.yaml).
 */
import { CoreV1Api, PatchStrategy, setHeaderOptions, type KubeConfig, type V1Node } from '@kubernetes/client-node';
import type { Logger } from 'pino';
import { NOT_READY_TAINTS } from '../k8s/cluster.js';
import { httpStatus } from '../k8s/errors.js';

export const ANN_REGISTERED_BY = 'microvm.service/registered-by';
export const REGISTERED_BY_AGENT = 'mvm-agent';

/** MVM_NODE_REGISTER: `true` registers and maintains the Node (no kubelet); default `false`. */
export function nodeRegisterEnv(env: NodeJS.ProcessEnv = process.env): boolean {
  const v = env.MVM_NODE_REGISTER ?? 'false';
  if (v !== 'true' && v !== 'false') throw new Error(`MVM_NODE_REGISTER must be true or false, got ${JSON.stringify(v)}`);
  return v === 'true';
}

export class NodeRegistration {
  private readonly core: CoreV1Api;
  /** The Node is ours to maintain (we created it, now or in an earlier run). */
  private ours = false;

  constructor(
    kc: KubeConfig,
    private readonly o: { nodeName: string; log?: Logger },
  ) {
    this.core = kc.makeApiClient(CoreV1Api);
  }

  get registered(): boolean {
    return this.ours;
  }

  /** Create the Node when none exists; a kubelet's (or an admin's) Node is left alone. */
  async ensure(): Promise<void> {
    const name = this.o.nodeName;
    let node: V1Node | undefined;
    try {
      node = await this.core.readNode({ name });
    } catch (e) {
      if (httpStatus(e) !== 404) throw e;
    }
    if (!node) {
      try {
        node = await this.core.createNode({
          body: {
            metadata: {
              name,
              labels: { 'kubernetes.io/hostname': name, 'microvm.service/kvm': 'true' },
              annotations: { [ANN_REGISTERED_BY]: REGISTERED_BY_AGENT },
            },
          },
        });
        this.o.log?.info({ node: name }, 'registered the Node (no kubelet: MVM_NODE_REGISTER=true)');
      } catch (e) {
        if (httpStatus(e) !== 409) throw e;
        node = await this.core.readNode({ name });
      }
    }
    this.ours = node.metadata?.annotations?.[ANN_REGISTERED_BY] === REGISTERED_BY_AGENT;
    if (!this.ours) this.o.log?.info({ node: name }, 'a Node exists that this agent did not register: left to its kubelet');
    // Failing here is not fatal: the heartbeat tries again.
    await this.beat().catch((e: Error) => this.o.log?.warn({ err: e.message }, 'could not mark the Node ready yet'));
  }

  /** With each heartbeat: Ready=True and the not-ready taints gone (our Node only). */
  async beat(): Promise<void> {
    if (!this.ours) return;
    const before = await this.core.readNode({ name: this.o.nodeName });
    let node = await this.setReady(before, true, 'MvmAgentHeartbeat', 'the node agent heartbeats (no kubelet on this node)');
    for (let attempt = 0; ; attempt++) {
      const taints = node.spec?.taints ?? [];
      const kept = taints.filter((t) => !NOT_READY_TAINTS.includes(t.key));
      if (kept.length === taints.length) return;
      try {
        // A merge patch replaces the list; the resourceVersion makes it conditional (a concurrent taint is not lost).
        await this.core.patchNode(
          { name: this.o.nodeName, body: { metadata: { resourceVersion: node.metadata?.resourceVersion }, spec: { taints: kept } } },
          setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
        );
        return;
      } catch (e) {
        if (httpStatus(e) !== 409 || attempt >= 3) throw e;
        node = await this.core.readNode({ name: this.o.nodeName });
      }
    }
  }

  /** At a graceful stop: Ready=False (best effort; the stale heartbeat says the same to the operator). */
  async stopped(): Promise<void> {
    if (!this.ours) return;
    await this.setReady(undefined, false, 'MvmAgentStopped', 'the node agent stopped').catch((e: Error) => this.o.log?.warn({ err: e.message }, 'could not mark the Node not ready'));
  }

  /** The Ready condition; its lastTransitionTime moves only when its status changes. */
  private async setReady(node: V1Node | undefined, ready: boolean, reason: string, message: string): Promise<V1Node> {
    const now = new Date();
    const status = ready ? 'True' : 'False';
    const cur = node?.status?.conditions?.find((c) => c.type === 'Ready');
    const since = cur?.status === status && cur.lastTransitionTime ? new Date(cur.lastTransitionTime) : now;
    return this.core.patchNodeStatus(
      {
        name: this.o.nodeName,
        body: { status: { conditions: [{ type: 'Ready', status, reason, message, lastHeartbeatTime: now, lastTransitionTime: since }] } },
      },
      setHeaderOptions('Content-Type', PatchStrategy.StrategicMergePatch),
    );
  }
}
