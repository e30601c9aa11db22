/**
 * The API's side of a migration with memory in cluster mode (docs/adr/0034): POST
 * /microvms/{id}/migrate checks what it can say at once (the VM runs and can move, the target node
 * exists and is another one, no migration under way) and writes the request annotation
 * microvm.service/migrate on the MicroVM; the operator plans it and the source node's agent moves
 * the VM. The outcome is the condition Migrated and the events (MigratedLive, MigrationFailed).
 */
import { CoreV1Api, CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { MicroVM } from '../core/microvm.js';
import type { MigrateRequestT } from '../core/schema.js';
import { ANN_MIGRATE, ANN_MIGRATION, migrationRefusal } from './cluster.js';
import { MICROVM_RESOURCE } from './crd.js';
import { fromK8sError, httpStatus } from './errors.js';
import { fromObject, type MicroVMObject, type TenantNamespaces } from './microvm-object.js';

const { group, version, plural } = MICROVM_RESOURCE;

export function clusterMigrator(kc: KubeConfig, tn: TenantNamespaces): (vm: MicroVM, req: MigrateRequestT) => Promise<MicroVM> {
  const custom = kc.makeApiClient(CustomObjectsApi);
  const core = kc.makeApiClient(CoreV1Api);
  return async (vm, req) => {
    const refusal = migrationRefusal(vm);
    if (refusal) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${vm.id} cannot migrate: ${refusal}`, { details: { id: vm.id, reason: 'NotMigratable' } });
    if (req.node) {
      if (req.node === vm.status.node) throw new MvmError(ErrorCodes.ILLEGAL_TRANSITION, `microVM ${vm.id} already runs on node ${req.node}`, { details: { id: vm.id, reason: 'SameNode' } });
      try {
        await core.readNode({ name: req.node });
      } catch (e) {
        if (httpStatus(e) === 404) throw new MvmError(ErrorCodes.UNPROCESSABLE, `node: no node ${req.node} in the cluster`, { violations: [{ field: 'node', message: `no node ${req.node}` }] });
        throw fromK8sError(e, `read node ${req.node}`);
      }
    }
    const namespace = tn.namespaceOf(vm.tenant);
    for (let attempt = 0; ; attempt++) {
      let obj: MicroVMObject;
      try {
        obj = (await custom.getNamespacedCustomObject({ group, version, plural, namespace, name: vm.name })) as MicroVMObject;
      } catch (e) {
        throw fromK8sError(e, `read microVM ${vm.id}`);
      }
      const annotations = { ...(obj.metadata.annotations ?? {}) };
      if (annotations[ANN_MIGRATION] || annotations[ANN_MIGRATE] !== undefined) {
        throw new MvmError(ErrorCodes.CONFLICT, `microVM ${vm.id} is being migrated already`, { details: { id: vm.id, reason: 'MigrationInProgress' } });
      }
      annotations[ANN_MIGRATE] = JSON.stringify(req.node ? { node: req.node } : {});
      try {
        const out = (await custom.replaceNamespacedCustomObject({ group, version, plural, namespace, name: vm.name, body: { ...obj, metadata: { ...obj.metadata, annotations } }, fieldManager: 'microvm-api' })) as MicroVMObject;
        return fromObject(out, tn);
      } catch (e) {
        if (httpStatus(e) === 409 && attempt < 5) continue;
        throw fromK8sError(e, `request the migration of microVM ${vm.id}`);
      }
    }
  };
}
