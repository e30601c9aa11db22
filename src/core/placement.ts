/**
 * Placement constraints of a microVM (spec.nodeSelector, spec.tolerations, spec.affinity):
 * their semantics (label selectors, taints vs tolerations) and the checks the schema cannot
 * express. Kubernetes' rules, applied to microVMs and nodes (ADR 0016). Pure; used by the
 * scheduler (src/scheduler) and by validateSpec at admission.
 */
import { unprocessable } from './errors.js';
import type { MicroVMSpecT } from './schema.js';

export type TaintEffect = 'NoSchedule' | 'PreferNoSchedule' | 'NoExecute';

/** A node taint: VMs that do not tolerate it are kept off (NoSchedule/NoExecute) or avoided (PreferNoSchedule). */
export interface Taint {
  key: string;
  value?: string;
  effect: TaintEffect;
}

export type Toleration = NonNullable<MicroVMSpecT['tolerations']>[number];
export type LabelSelector = NonNullable<NonNullable<NonNullable<MicroVMSpecT['affinity']>['vmAffinity']>['required']>[number]['labelSelector'];
export type VmAffinityTerm = NonNullable<NonNullable<NonNullable<MicroVMSpecT['affinity']>['vmAffinity']>['required']>[number];

/** The default topology key: each node is its own domain. */
export const HOSTNAME_TOPOLOGY_KEY = 'kubernetes.io/hostname';
/** The taint of a cordoned node; a VM tolerating it may still be placed there (as in Kubernetes). */
export const UNSCHEDULABLE_TAINT_KEY = 'node.kubernetes.io/unschedulable';

/** Does `labels` satisfy the selector? `{}` selects everything; In with no values selects nothing. */
export function matchesSelector(sel: LabelSelector, labels: Record<string, string>): boolean {
  if (sel.matchLabels) for (const [k, v] of Object.entries(sel.matchLabels)) if (labels[k] !== v) return false;
  for (const e of sel.matchExpressions ?? []) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key);
    switch (e.operator) {
      case 'In':
        if (!has || !(e.values ?? []).includes(labels[e.key]!)) return false;
        break;
      case 'NotIn':
        if (has && (e.values ?? []).includes(labels[e.key]!)) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
    }
  }
  return true;
}

/** Does the toleration tolerate the taint? Kubernetes' rules: empty key + Exists matches every taint; no effect matches every effect. */
export function tolerates(t: Toleration, taint: Taint): boolean {
  if (t.effect !== undefined && t.effect !== taint.effect) return false;
  if (t.operator === 'Exists') return t.key === undefined || t.key === '' || t.key === taint.key;
  return t.key === taint.key && (t.value ?? '') === (taint.value ?? '');
}

export function toleratesAll(tols: readonly Toleration[] | undefined, taint: Taint): boolean {
  return (tols ?? []).some((t) => tolerates(t, taint));
}

export const taintText = (t: Taint): string => `${t.key}${t.value ? `=${t.value}` : ''}:${t.effect}`;

/** What the schema cannot say: operators and their values, toleration shapes. Names the field. */
export function validatePlacement(spec: MicroVMSpecT, prefix = ''): void {
  for (const [i, t] of (spec.tolerations ?? []).entries()) {
    const at = `${prefix}tolerations[${i}]`;
    if (t.operator === 'Exists' && t.value) throw unprocessable(`${at}.value`, 'must be empty when operator is Exists');
    if ((t.operator ?? 'Equal') === 'Equal' && !t.key) throw unprocessable(`${at}.key`, 'is required when operator is Equal (use operator Exists with no key to tolerate every taint)');
  }
  const aff = spec.affinity;
  for (const kind of ['vmAffinity', 'vmAntiAffinity'] as const) {
    const rules = aff?.[kind];
    if (!rules) continue;
    const terms: Array<[string, VmAffinityTerm]> = [
      ...(rules.required ?? []).map((t, i): [string, VmAffinityTerm] => [`${prefix}affinity.${kind}.required[${i}]`, t]),
      ...(rules.preferred ?? []).map((t, i): [string, VmAffinityTerm] => [`${prefix}affinity.${kind}.preferred[${i}].vmAffinityTerm`, t.vmAffinityTerm]),
    ];
    for (const [at, term] of terms) {
      for (const [j, e] of (term.labelSelector.matchExpressions ?? []).entries()) {
        const f = `${at}.labelSelector.matchExpressions[${j}].values`;
        const n = e.values?.length ?? 0;
        if ((e.operator === 'In' || e.operator === 'NotIn') && n === 0) throw unprocessable(f, `must be non-empty for operator ${e.operator}`);
        if ((e.operator === 'Exists' || e.operator === 'DoesNotExist') && n > 0) throw unprocessable(f, `must be empty for operator ${e.operator}`);
      }
    }
  }
}
