/** The Kubernetes Event the operator writes about one of its objects (a MicroVM or a MicroVMPool). */
import { hostname } from 'node:os';
import type { CoreV1Event } from '@kubernetes/client-node';
import { ANN_EVENT_TIME } from '../k8s/microvm-object.js';

export function operatorEvent(
  obj: { metadata: { name?: string; namespace?: string; uid?: string; resourceVersion?: string } },
  involved: { apiVersion: string; kind: string },
  labels: Record<string, string>,
  type: 'Normal' | 'Warning',
  reason: string,
  message: string,
): CoreV1Event {
  const now = new Date();
  const namespace = obj.metadata.namespace!;
  return {
    metadata: {
      generateName: `${obj.metadata.name!.slice(0, 200)}.`,
      namespace,
      labels,
      annotations: { [ANN_EVENT_TIME]: now.toISOString() },
    },
    involvedObject: { ...involved, name: obj.metadata.name!, namespace, uid: obj.metadata.uid!, resourceVersion: obj.metadata.resourceVersion! },
    type,
    reason,
    message,
    firstTimestamp: now,
    lastTimestamp: now,
    count: 1,
    source: { component: 'microvm-operator', host: hostname() },
  };
}
