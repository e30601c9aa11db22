/**
 * deploy/monitoring checked with Debian's real Prometheus tools: the alert rules
 * (`promtool check rules`, unit-tested with `promtool test rules`), the scrape
 * config (`promtool check config`), the PrometheusRule wrapper in sync with the
 * rule file, and every series the alerts and the Grafana dashboard query is one
 * the service really exports.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import YAML from 'yaml';
import { Observability } from '../../src/observability/index.js';
import { REPO } from '../support/service.js';

const DIR = join(REPO, 'deploy/monitoring');

function promtool(...args: string[]): { status: number | null; out: string } {
  const r = spawnSync('promtool', args, { cwd: DIR, encoding: 'utf8' });
  if (r.error) throw r.error;
  return { status: r.status, out: `${r.stdout}${r.stderr}` };
}

/** Every metric name our processes export (histograms with their series suffixes), plus Prometheus' `up`. */
async function catalogue(): Promise<Set<string>> {
  const obs = new Observability({ sampleIntervalMs: 0 });
  try {
    const names = new Set<string>(['up']);
    for (const m of await obs.metrics.registry.getMetricsAsJSON()) {
      names.add(m.name);
      if (String(m.type) === 'histogram') for (const s of ['_bucket', '_sum', '_count']) names.add(m.name + s);
      if (String(m.type) === 'summary') for (const s of ['_sum', '_count']) names.add(m.name + s);
    }
    return names;
  } finally {
    await obs.close();
  }
}

const METRIC_RE = /\b((?:microvm|process|nodejs)_[a-zA-Z0-9_]+|up)\b(?=\s*[{[)\s]|$)/g;
const referenced = (expr: string): string[] => [...expr.replace(/\{\{[^}]*\}\}/g, '').matchAll(METRIC_RE)].map((m) => m[1]!);

test('alert rules pass promtool check rules and their unit tests', () => {
  const check = promtool('check', 'rules', 'alerts.rules.yml');
  assert.equal(check.status, 0, check.out);
  assert.match(check.out, /SUCCESS: 8 rules found/);
  const unit = promtool('test', 'rules', 'alerts.test.yml');
  assert.equal(unit.status, 0, unit.out);
  assert.match(unit.out, /SUCCESS/);
});

test('the standalone scrape config is valid', () => {
  const r = promtool('check', 'config', 'prometheus.yml');
  assert.equal(r.status, 0, r.out);
});

test('PrometheusRule carries exactly the groups of alerts.rules.yml; the rules cover the three required alerts', () => {
  const rules = YAML.parse(readFileSync(join(DIR, 'alerts.rules.yml'), 'utf8')) as { groups: Array<{ rules: Array<{ alert: string; expr: string }> }> };
  const cr = YAML.parse(readFileSync(join(DIR, 'prometheusrule.yaml'), 'utf8')) as { kind: string; spec: { groups: unknown } };
  assert.equal(cr.kind, 'PrometheusRule');
  assert.deepEqual(cr.spec.groups, rules.groups);
  const names = rules.groups.flatMap((g) => g.rules.map((r) => r.alert));
  for (const a of ['MicroVMStuckStarting', 'MicroVMReconcileErrors', 'MicroVMNodeAgentDown']) assert.ok(names.includes(a), a);
});

test('every series that alerts and the Grafana dashboard query is exported by the service', async () => {
  const known = await catalogue();
  const rules = YAML.parse(readFileSync(join(DIR, 'alerts.rules.yml'), 'utf8')) as { groups: Array<{ rules: Array<{ expr: string }> }> };
  const dash = JSON.parse(readFileSync(join(DIR, 'grafana-dashboard.json'), 'utf8')) as {
    panels: Array<{ title: string; targets?: Array<{ expr: string }> }>;
    templating: { list: Array<{ name: string; query?: unknown }> };
  };
  const exprs = [
    ...rules.groups.flatMap((g) => g.rules.map((r) => r.expr)),
    ...dash.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)),
    ...dash.templating.list.map((v) => (typeof v.query === 'object' && v.query ? String((v.query as { query: string }).query) : '')),
  ];
  assert.ok(exprs.length > 20);
  const unknown = new Set<string>();
  for (const e of exprs) for (const name of referenced(e)) if (!known.has(name)) unknown.add(name);
  assert.deepEqual([...unknown], []);
  // Each panel queries something; ids are unique.
  const ids = dash.panels.map((p) => (p as unknown as { id: number }).id);
  assert.equal(new Set(ids).size, ids.length);
  for (const p of dash.panels) if ((p as unknown as { type: string }).type !== 'row') assert.ok(p.targets?.length, p.title);
});

test('ServiceMonitor, PodMonitor and the Fluent Bit manifests are well-formed Kubernetes documents', () => {
  for (const f of ['servicemonitor.yaml', 'fluent-bit.yaml', 'prometheusrule.yaml']) {
    const docs = YAML.parseAllDocuments(readFileSync(join(DIR, f), 'utf8'));
    for (const d of docs) {
      assert.deepEqual(d.errors, [], f);
      const o = d.toJS() as { apiVersion?: string; kind?: string; metadata?: { name?: string } };
      assert.ok(o.apiVersion && o.kind && o.metadata?.name, `${f}: ${JSON.stringify(o).slice(0, 80)}`);
    }
  }
  const sm = YAML.parseAllDocuments(readFileSync(join(DIR, 'servicemonitor.yaml'), 'utf8')).map((d) => d.toJS());
  assert.equal(sm[0].spec.endpoints[0].path, '/metrics');
  assert.equal(sm[1].kind, 'PodMonitor');
  assert.equal(sm[1].spec.podMetricsEndpoints[0].relabelings[0].replacement, 'microvm-node-agent', 'the job name the NodeAgentDown alert selects');
});
