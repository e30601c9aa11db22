/**
 * The operator's reconcile of one MicroVM as named steps (src/core/steps.ts, ADR 0020), run on a
 * fresh read of the object at every pass. Each step measures, then acts; a step whose work ends
 * the pass returns DONE (its write brings the key back through the informer):
 *
 *   finalize        deleted: the finalizer goes once the node reported NodeCleanedUp, or the VM was
 *                   never bound, or its Node no longer exists
 *   adopt           finalizer, id/tenant labels (a `kubectl apply`d object has none), the node label
 *                   mirroring status.node, a finished defrag move's annotation removed
 *   delete-request  the API in cluster mode marks a delete as phase Deleting: a Kubernetes delete
 *   restart         kubectl's "start": desiredState Running again on a Stopped VM
 *   migrate         a migration with memory (docs/adr/0034): a request (annotation microvm.service/migrate)
 *                   becomes a plan (microvm.service/migration: id, source, target) the source node's
 *                   agent carries out; its answer (condition Migrated) ends it: event MigratedLive, or
 *                   for a drain that failed to migrate the cold move (Evicting)
 *   drain           a bound VM on a cordoned Node (`kubectl drain`), under a NoExecute taint it does
 *                   not tolerate, or on a Node that is gone: moved with its memory by default
 *                   (migrate), else (or when that fails) Evicting, stopped there, unbound (ColdMoved)
 *   unplaced        only a Pending (or unbound Scheduled) VM goes on
 *   admit           a VM never admitted (a `kubectl apply`d one bypasses the API's admission) must
 *                   fit its tenant's quota (condition Admitted; refused ones wait: QuotaExceeded)
 *   stay-stopped    desiredState Stopped: Stopped, not placed
 *   place           Scheduler.schedule over the operator's ClusterState (pinned by node-local data,
 *                   or onto a defrag target), bound by one status write conditioned on the
 *                   resourceVersion read, so two operators never bind one VM twice
 */
import { ConditionTypes, newId, setCondition, type MicroVM } from '../core/microvm.js';
import { toleratesAll } from '../core/placement.js';
import type { ConditionT } from '../core/schema.js';
import { DONE, type Step } from '../core/steps.js';
import { ANN_MIGRATE, ANN_MIGRATION, ClusterConditions, FINALIZER, LABEL_NODE, evictionReason, migrationMessage, migrationOf, migrationRefusal, parseMigrateRequest, parseMigrationPlan, type MigrationPlan } from '../k8s/cluster.js';
import { ANN_CREATED_AT, ANN_UPDATED_AT, LABEL_ID, LABEL_MANAGED_BY, LABEL_TENANT, MANAGER, fromObject, type MicroVMObject, type TenantNamespaces } from '../k8s/microvm-object.js';
import { unschedulableMessage, type Placement } from '../scheduler/scheduler.js';
import type { V1Node } from '@kubernetes/client-node';

/** On a MicroVM being moved by a defrag: the node it is to be placed on. */
export const ANN_DEFRAG_TARGET = 'microvm.service/defrag-target';

export const condTrue = (conds: ConditionT[] | undefined, type: string): boolean => !!conds?.some((c) => c.type === type && c.status === 'True');

/** One pass over one MicroVM. */
export interface Reconcile {
  readonly key: string;
  readonly namespace: string;
  readonly name: string;
  /** The object as last read or written. */
  obj: MicroVMObject;
  /** The object as the domain sees it (refreshed after each write). */
  vm: MicroVM;
  now: string;
}

/** What the steps need from the operator. */
export interface ReconcileHost {
  readonly namespaces: TenantNamespaces;
  readonly drainOnCordon: boolean;
  /** A drain or NoExecute taint moves running VMs with their memory first (default), the cold move being the fallback. */
  readonly drainMigrates: boolean;
  /** The Node informer has listed once (a Node missing from it is really gone). */
  nodesSynced(): boolean;
  node(name: string): V1Node | undefined;
  replace(obj: MicroVMObject): Promise<MicroVMObject>;
  replaceStatus(obj: MicroVMObject): Promise<MicroVMObject>;
  deleteObject(namespace: string, name: string): Promise<void>;
  event(obj: MicroVMObject, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void>;
  /** Clear the binding of a VM stopped (or never run) on its node; Pending again if it should run. */
  unbind(obj: MicroVMObject, vm: MicroVM, now: string, why: string): Promise<MicroVMObject>;
  quotaRefusal(namespace: string, vm: MicroVM): Promise<string | undefined>;
  pinnedPlacement(namespace: string, vm: MicroVM): Promise<Placement | undefined>;
  refreshNodes(): void;
  schedule(vm: MicroVM, only?: string): Placement;
  /** A placement anywhere but `from` (a migration's target). */
  scheduleAway(vm: MicroVM, from: string): Placement;
  /** Hold `node` for the VM before the binding is written (kube-scheduler's "assume"); `release` undoes it. */
  assume(vm: MicroVM, node: string): void;
  release(id: string): void;
  requeueAfter(key: string, ms: number): void;
}

export function reconcileSteps(h: ReconcileHost): Array<Step<Reconcile>> {
  /** After a write: the object and its domain view. */
  const wrote = (c: Reconcile, obj: MicroVMObject): void => {
    c.obj = obj;
    c.vm = fromObject(obj, h.namespaces);
  };
  /** Write the plan the source node's agent carries out (and drop a request it answers). */
  const startMigration = async (c: Reconcile, plan: MigrationPlan, annotations: Record<string, string>, why: string): Promise<void> => {
    const { [ANN_MIGRATE]: _r, ...rest } = annotations;
    c.obj = await h.replace({ ...c.obj, metadata: { ...c.obj.metadata, annotations: { ...rest, [ANN_MIGRATION]: JSON.stringify(plan) } } });
    await h.event(c.obj, 'Normal', 'Migrating', `${why}: moving it from ${plan.source} to ${plan.target} with its memory (migration ${plan.id})`);
  };
  return [
    {
      name: 'finalize',
      when: (c) => !!c.obj.metadata.deletionTimestamp,
      run: async (c) => {
        const { obj } = c;
        if (!obj.metadata.finalizers?.includes(FINALIZER)) return DONE;
        const node = obj.status?.node;
        const cleaned = condTrue(obj.status?.conditions, ClusterConditions.NodeCleanedUp);
        const nodeGone = !!node && !h.node(node);
        if (!node || cleaned || nodeGone) {
          await h.replace({ ...obj, metadata: { ...obj.metadata, finalizers: obj.metadata.finalizers.filter((f) => f !== FINALIZER) } });
          await h.event(obj, 'Normal', 'Deleted', !node ? 'never placed: finalizer removed' : cleaned ? `node ${node} removed the microVM: finalizer removed` : `node ${node} no longer exists: finalizer removed`);
        }
        // Otherwise the agent's status write (NodeCleanedUp) re-queues us.
        return DONE;
      },
    },
    {
      name: 'adopt',
      run: async (c) => {
        const { obj } = c;
        const node = obj.status?.node;
        const labels = { ...(obj.metadata.labels ?? {}) };
        const annotations = { ...(obj.metadata.annotations ?? {}) };
        let changed = false;
        if (!labels[LABEL_ID]) {
          labels[LABEL_ID] = newId('vm');
          changed = true;
        }
        if (!labels[LABEL_TENANT]) {
          labels[LABEL_TENANT] = h.namespaces.tenantOf(c.namespace);
          changed = true;
        }
        if (!labels[LABEL_MANAGED_BY]) labels[LABEL_MANAGED_BY] = MANAGER;
        const created = obj.metadata.creationTimestamp ? new Date(obj.metadata.creationTimestamp).toISOString() : new Date().toISOString();
        if (!annotations[ANN_CREATED_AT]) {
          annotations[ANN_CREATED_AT] = created;
          annotations[ANN_UPDATED_AT] = created;
        }
        // The node label mirrors the binding.
        if (node && labels[LABEL_NODE] !== node) {
          labels[LABEL_NODE] = node;
          changed = true;
        } else if (!node && labels[LABEL_NODE] !== undefined) {
          delete labels[LABEL_NODE];
          changed = true;
        }
        // A defrag move is over once the VM is bound to its target.
        if (node && annotations[ANN_DEFRAG_TARGET] === node) {
          delete annotations[ANN_DEFRAG_TARGET];
          changed = true;
        }
        const finalizers = obj.metadata.finalizers ?? [];
        const first = !finalizers.includes(FINALIZER);
        if (changed || first) {
          const out = await h.replace({ ...obj, metadata: { ...obj.metadata, labels, annotations, finalizers: first ? [...finalizers, FINALIZER] : finalizers } });
          if (first) await h.event(out, 'Normal', 'Accepted', `microVM ${labels[LABEL_ID]} accepted (finalizer ${FINALIZER})`);
          c.obj = out;
        }
        c.vm = fromObject(c.obj, h.namespaces);
        c.now = new Date().toISOString();
      },
    },
    {
      name: 'delete-request',
      when: (c) => c.vm.status.phase === 'Deleting',
      run: async (c) => {
        await h.deleteObject(c.namespace, c.name);
        return DONE;
      },
    },
    {
      // A spec change the node has not observed yet: a guest that powered off, or a stop, set desiredState Stopped.
      name: 'restart',
      when: (c) => c.vm.status.phase === 'Stopped' && c.vm.desiredState === 'Running' && (c.vm.status.observedGeneration ?? 0) < c.vm.generation,
      run: async (c) => {
        const { reason: _r, message: _m, ...rest } = c.vm.status;
        const bound = !!c.vm.status.node;
        wrote(c, await h.replaceStatus({ ...c.obj, status: { ...rest, phase: bound ? 'Scheduled' : 'Pending', observedGeneration: c.vm.generation } }));
        await h.event(c.obj, 'Normal', 'Restarting', 'desiredState is Running again: starting the microVM');
        if (bound) return DONE; // its node starts it
      },
    },
    {
      name: 'migrate',
      when: (c) => !!c.vm.status.node && !!(c.obj.metadata.annotations?.[ANN_MIGRATE] !== undefined || c.obj.metadata.annotations?.[ANN_MIGRATION]),
      run: async (c) => {
        const { vm, now } = c;
        const source = vm.status.node!;
        const annotations = { ...(c.obj.metadata.annotations ?? {}) };
        const plan = parseMigrationPlan(annotations[ANN_MIGRATION]);
        if (plan) {
          const answer = vm.status.conditions.find((x) => x.type === ClusterConditions.Migrated && migrationOf(x.message) === plan.id);
          const sourceGone = h.nodesSynced() && !h.node(plan.source);
          if (!answer && !sourceGone && source === plan.source) {
            h.requeueAfter(c.key, 5000); // the source's agent answers with the Migrated condition
            return DONE;
          }
          // Answered (or moot): the plan goes. A drain whose migration failed moves the VM cold.
          const moved = answer?.status === 'True' && source === plan.target;
          const drain = plan.reason !== 'Request';
          if (!moved && drain && !condTrue(vm.status.conditions, ClusterConditions.Evicting)) {
            const why = `${answer?.message ?? `migration ${plan.id} abandoned`}: moving it by stop and cold start instead`;
            wrote(c, await h.replaceStatus({ ...c.obj, status: { ...c.obj.status!, conditions: setCondition(vm.status.conditions, { type: ClusterConditions.Evicting, status: 'True', reason: plan.reason, message: why }, now), observedGeneration: vm.generation } }));
            await h.event(c.obj, 'Warning', 'Evicting', why);
          }
          delete annotations[ANN_MIGRATION];
          c.obj = await h.replace({ ...c.obj, metadata: { ...c.obj.metadata, annotations } });
          if (moved) await h.event(c.obj, 'Normal', 'MigratedLive', `${drain ? `${plan.reason}: ` : ''}${answer!.message}`);
          return DONE;
        }
        const request = parseMigrateRequest(annotations[ANN_MIGRATE])!;
        delete annotations[ANN_MIGRATE];
        const id = newId('mig');
        let refusal = migrationRefusal(vm);
        let placement: Placement | undefined;
        if (!refusal) {
          h.refreshNodes();
          if (request.node === source) refusal = `it already runs on ${source}`;
          else {
            placement = request.node ? h.schedule(vm, request.node) : h.scheduleAway(vm, source);
            if (!placement.node) refusal = unschedulableMessage(placement);
          }
        }
        if (refusal || !placement?.node) {
          const message = migrationMessage(id, `refused: ${refusal}`);
          wrote(c, await h.replaceStatus({ ...c.obj, status: { ...c.obj.status!, conditions: setCondition(vm.status.conditions, { type: ClusterConditions.Migrated, status: 'False', reason: 'Refused', message }, now), observedGeneration: vm.generation } }));
          c.obj = await h.replace({ ...c.obj, metadata: { ...c.obj.metadata, annotations } });
          await h.event(c.obj, 'Warning', 'MigrationRefused', message);
          return DONE;
        }
        await startMigration(c, { id, source, target: placement.node, reason: 'Request', startedAt: new Date().toISOString() }, annotations, 'requested');
        return DONE;
      },
    },
    {
      name: 'drain',
      when: (c) => !!c.vm.status.node,
      run: async (c) => {
        const { vm, now } = c;
        const nodeName = vm.status.node!;
        const n = h.node(nodeName);
        // A drain (a cordon: `kubectl drain` / `kubectl cordon`, unless the node opts out), or a
        // NoExecute taint the VM does not tolerate (as for pods).
        const eviction = evictionReason(n, (t) => toleratesAll(vm.spec.tolerations, t), h.drainOnCordon);
        const why = eviction?.message ?? '';
        const evicting = condTrue(vm.status.conditions, ClusterConditions.Evicting);
        if (!n && h.nodesSynced()) {
          // The Node was removed from the cluster (as the pod GC does): place the VM anew. If that
          // machine still runs its agent, the agent sees the VM unbound and removes it there.
          wrote(c, await h.unbind(c.obj, vm, now, `node ${nodeName} no longer exists`));
          return;
        }
        if (eviction && !evicting) {
          if (['Stopped', 'Failed', 'Pending'].includes(vm.status.phase) && !vm.status.pid) {
            // Nothing runs there: unbind at once (the node removes its files).
            wrote(c, await h.unbind(c.obj, vm, now, `${why}: unbound`));
            return;
          }
          // With its memory first (docs/adr/0034); the cold move below when it cannot (or, via the
          // migrate step, when the migration fails).
          if (h.drainMigrates && !migrationRefusal(vm)) {
            h.refreshNodes();
            const placement = h.scheduleAway(vm, nodeName);
            if (placement.node) {
              await startMigration(c, { id: newId('mig'), source: nodeName, target: placement.node, reason: eviction.reason, startedAt: new Date().toISOString() }, { ...(c.obj.metadata.annotations ?? {}) }, why);
              return DONE;
            }
          }
          const out = await h.replaceStatus({
            ...c.obj,
            status: { ...c.obj.status!, conditions: setCondition(vm.status.conditions, { type: ClusterConditions.Evicting, status: 'True', reason: eviction.reason, message: why }, now), observedGeneration: vm.generation },
          });
          await h.event(out, 'Normal', 'Evicting', `${why}: stopping the microVM there`);
          return DONE; // the agent stops it; its status write re-queues us
        }
        if (evicting) {
          if (!['Stopped', 'Failed'].includes(vm.status.phase)) return DONE; // still stopping on the old node
          const reason = vm.status.conditions.find((x) => x.type === ClusterConditions.Evicting)?.message ?? '';
          wrote(c, await h.unbind(c.obj, vm, now, `moved off ${nodeName}`));
          await h.event(c.obj, 'Normal', 'ColdMoved', `stopped on ${nodeName}, to start anew elsewhere (its memory and root-disk writes are not carried)${reason ? `: ${reason}` : ''}`);
          return;
        }
        return DONE; // bound, nothing to move: the node runs it
      },
    },
    {
      // Pending, or Scheduled without a node (a start of a VM that a drain left unbound).
      name: 'unplaced',
      run: (c) => (c.vm.status.node || (c.vm.status.phase !== 'Pending' && c.vm.status.phase !== 'Scheduled') ? DONE : undefined),
    },
    {
      // Once per VM, before it first holds anything.
      name: 'admit',
      when: (c) => !condTrue(c.vm.status.conditions, ClusterConditions.Admitted),
      run: async (c) => {
        const { vm, now } = c;
        const refusal = await h.quotaRefusal(c.namespace, vm);
        if (!refusal) {
          // Admitted=True rides on the next status write (Stopped, Unschedulable or the binding).
          vm.status.conditions = setCondition(vm.status.conditions, { type: ClusterConditions.Admitted, status: 'True', reason: 'WithinQuota', message: 'fits the tenant quota' }, now);
          return;
        }
        const conds = setCondition(vm.status.conditions, { type: ClusterConditions.Admitted, status: 'False', reason: 'QuotaExceeded', message: refusal }, now);
        if (conds !== vm.status.conditions) {
          const out = await h.replaceStatus({ ...c.obj, status: { ...vm.status, conditions: conds, observedGeneration: vm.generation } });
          await h.event(out, 'Warning', 'QuotaExceeded', `${refusal}: waiting until the tenant has room`);
        }
        h.requeueAfter(c.key, 10_000); // deletes requeue us sooner (MicroVM informer)
        return DONE;
      },
    },
    {
      name: 'stay-stopped',
      when: (c) => c.vm.desiredState === 'Stopped',
      run: async (c) => {
        await h.replaceStatus({ ...c.obj, status: { ...c.vm.status, phase: 'Stopped', stoppedAt: c.now, observedGeneration: c.vm.generation } });
        return DONE;
      },
    },
    {
      name: 'place',
      run: async (c) => {
        const { vm, now } = c;
        h.refreshNodes();
        // A VM restored from a snapshot runs only on the node holding the snapshot's files (ADR 0009);
        // a VM using a node-local volume only on that volume's node (ADR 0018). No fallback, no defrag move.
        const pinned = await h.pinnedPlacement(c.namespace, vm);
        // A VM moved by a defrag goes to the node the plan chose (elsewhere if that node refuses it now).
        const target = pinned ? undefined : c.obj.metadata.annotations?.[ANN_DEFRAG_TARGET];
        let placement = pinned ?? (target ? h.schedule(vm, target) : undefined);
        if (target && !placement?.node) {
          await h.event(c.obj, 'Warning', 'DefragTargetUnavailable', `defrag target ${target} refuses the microVM now (${placement?.message}): placing it anywhere`);
          const { [ANN_DEFRAG_TARGET]: _t, ...rest } = c.obj.metadata.annotations ?? {};
          c.obj = await h.replace({ ...c.obj, metadata: { ...c.obj.metadata, annotations: rest } });
        }
        if (!placement?.node && !pinned) placement = h.schedule(vm);
        if (!placement?.node) {
          const msg = placement ? unschedulableMessage(placement) : 'no placement';
          const conds = setCondition(vm.status.conditions, { type: ConditionTypes.Scheduled, status: 'False', reason: 'Unschedulable', message: msg }, now);
          if (conds !== vm.status.conditions) {
            const out = await h.replaceStatus({ ...c.obj, status: { ...vm.status, conditions: conds, observedGeneration: vm.generation } });
            await h.event(out, 'Warning', 'Unschedulable', msg);
          }
          h.requeueAfter(c.key, 10_000); // nodes may come back or free up
          return DONE;
        }
        // The binding: one status write conditioned on the resourceVersion just read. Assumed before
        // the write (as kube-scheduler does): a concurrent worker's decision sees it.
        const node = placement.node;
        h.assume({ ...vm, status: { ...vm.status, phase: 'Scheduled', node } }, node);
        let out: MicroVMObject;
        try {
          out = await h.replaceStatus({
            ...c.obj,
            status: {
              ...vm.status,
              phase: 'Scheduled',
              node,
              conditions: setCondition(vm.status.conditions, { type: ConditionTypes.Scheduled, status: 'True', reason: 'Placed', message: `placed on ${node}` }, now),
              observedGeneration: vm.generation,
            },
          });
        } catch (e) {
          h.release(vm.id);
          throw e;
        }
        h.assume(fromObject(out, h.namespaces), node);
        await h.event(out, 'Normal', 'Scheduled', `placed on node ${node}`);
        // The node label follows (step adopt) on the requeue that this write's watch event brings.
      },
    },
  ];
}
