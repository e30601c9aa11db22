/** Syntax checks of security-group rules, reusing the policy compiler's validator. */
import { MvmError } from '../core/errors.js';
import type { SecurityRule } from '../core/ports/network.js';
import { validatePolicy } from './policy.js';

export function validateRules(rules: SecurityRule[], field: string): void {
  // Group references are checked against the store by the use case; here they point at the group itself.
  const probe = rules.map((r) => (r.group !== undefined ? { ...r, group: 'self' } : r));
  try {
    validatePolicy({ securityGroups: [{ id: 'self', tenant: 't', rules: probe }] });
  } catch (e) {
    if (!(e instanceof MvmError)) throw e;
    const violations = e.violations.map((v) => ({ ...v, field: v.field.replace(/^securityGroups\[0\]\.rules/, field) }));
    throw new MvmError(e.code, violations.map((v) => `${v.field}: ${v.message}`).join('; '), { violations });
  }
}
