/** promtool helpers of the observability tests (Debian's `prometheus` package ships promtool). */
import { spawnSync } from 'node:child_process';

/** Findings of promtool's linter that we accept, with the reason (docs/adr/0012-observability.md). */
export const PROMTOOL_ALLOWED = [
  // The name the issue specifies for the phase gauge.
  /^microvm_service_microvm_count non-histogram and non-summary metrics should not have "_count" suffix$/,
  // prom-client's standard Node.js runtime gauges (names shared by every Node service's dashboards).
  /^nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/,
];

/** `promtool check metrics` on an exposition: its exit status and every line it printed. */
export function promtoolFindings(exposition: string): { status: number | null; findings: string[] } {
  const r = spawnSync('promtool', ['check', 'metrics'], { input: exposition, encoding: 'utf8' });
  if (r.error) throw r.error;
  const findings = `${r.stdout}\n${r.stderr}`.split('\n').map((l) => l.trim()).filter(Boolean);
  return { status: r.status, findings };
}

/** Findings outside the allow-list (should be none). */
export function unexpectedFindings(exposition: string): string[] {
  return promtoolFindings(exposition).findings.filter((f) => !PROMTOOL_ALLOWED.some((re) => re.test(f)));
}
