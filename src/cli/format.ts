/** Rendering of API objects for the terminal: tables, key/value views, json, yaml. */
import { stringify as toYaml } from 'yaml';
import { isReady, type MicroVM, type VmMetrics } from '../../sdk/typescript/src/index.js';

export type OutputFormat = 'table' | 'json' | 'yaml';
export const OUTPUT_FORMATS: readonly OutputFormat[] = ['table', 'json', 'yaml'];

export function serialize(obj: unknown, format: 'json' | 'yaml'): string {
  if (format === 'json') return JSON.stringify(obj, null, 2) + '\n';
  return toYaml(obj, { lineWidth: 0 });
}

/** Left-aligned columns separated by three spaces, like kubectl. */
export function renderTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('   ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

/** Age of an ISO timestamp, kubectl style: 45s, 3m, 2h5m, 4d. */
export function age(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return '-';
  const s = Math.max(0, Math.floor((now - t) / 1000));
  if (s < 120) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m`;
  const h = Math.floor(m / 60);
  if (h < 24) return m % 60 ? `${h}h${m % 60}m` : `${h}h`;
  const d = Math.floor(h / 24);
  return d < 10 && h % 24 ? `${d}d${h % 24}h` : `${d}d`;
}

export function bytes(n: number | undefined): string {
  if (n === undefined || n === null || Number.isNaN(n)) return '-';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}

export function seconds(n: number | undefined): string {
  if (n === undefined || n === null || Number.isNaN(n)) return '-';
  if (n < 60) return `${n.toFixed(n < 10 ? 2 : 1)}s`;
  const h = Math.floor(n / 3600);
  const m = Math.floor((n % 3600) / 60);
  const s = Math.floor(n % 60);
  return h ? `${h}h${m}m${s}s` : `${m}m${s}s`;
}

const dash = (v: unknown): string => (v === undefined || v === null || v === '' ? '-' : String(v));

export function readyText(vm: MicroVM): string {
  return isReady(vm) ? 'true' : 'false';
}

export const LIST_HEADERS = ['ID', 'NAME', 'PHASE', 'READY', 'VCPU', 'MEMORY', 'IP', 'NODE', 'AGE'];

export function renderList(items: MicroVM[], now = Date.now()): string {
  if (items.length === 0) return '';
  const rows = items.map((vm) => [
    vm.id,
    vm.name,
    dash(vm.status?.phase),
    readyText(vm),
    dash(vm.spec?.vcpu),
    dash(vm.spec?.memory),
    dash(vm.status?.ip),
    dash(vm.status?.node),
    age(vm.createdAt, now),
  ]);
  return renderTable(LIST_HEADERS, rows);
}

/** `key:  value` lines, values aligned. */
export function kv(pairs: Array<[string, string]>): string {
  const w = Math.max(...pairs.map(([k]) => k.length)) + 1;
  return pairs.map(([k, v]) => `${(k + ':').padEnd(w)}  ${v}`.trimEnd()).join('\n') + '\n';
}

/** Key: value view of a single VM. */
export function renderVm(vm: MicroVM, now = Date.now()): string {
  const st = vm.status ?? ({ phase: 'Pending', conditions: [] } as unknown as MicroVM['status']);
  const pairs: Array<[string, string]> = [
    ['id', vm.id],
    ['name', vm.name],
    ['phase', dash(st.phase)],
  ];
  if (st.reason) pairs.push(['reason', st.reason]);
  if (st.message) pairs.push(['message', st.message]);
  pairs.push(
    ['ready', readyText(vm)],
    ['vcpu', dash(vm.spec?.vcpu)],
    ['memory', dash(vm.spec?.memory)],
    ['ip', dash(st.ip)],
    ['node', dash(st.node)],
    ['driver', dash(st.driver)],
    ['accel', dash(st.accel)],
    ['pid', dash(st.pid)],
  );
  const labels = vm.spec?.labels ?? {};
  if (Object.keys(labels).length) {
    pairs.push([
      'labels',
      Object.entries(labels)
        .map(([k, v]) => `${k}=${v}`)
        .join(','),
    ]);
  }
  if (st.bootMs) pairs.push(['boot', `vmm ${Math.round(st.bootMs.vmm)}ms, guest ready ${Math.round(st.bootMs.guestReady)}ms`]);
  pairs.push(['created', vm.createdAt ? `${vm.createdAt} (${age(vm.createdAt, now)} ago)` : '-']);
  let out = kv(pairs);
  const conds = st.conditions ?? [];
  if (conds.length === 0) {
    out += 'conditions:  <none>\n';
  } else {
    out += 'conditions:\n';
    const rows = conds.map((c) => [c.type, c.status, dash(c.reason), age(c.lastTransitionTime, now), c.message ?? '']);
    out += renderTable(['TYPE', 'STATUS', 'REASON', 'AGE', 'MESSAGE'], rows)
      .split('\n')
      .map((l) => (l ? '  ' + l : l))
      .join('\n');
  }
  return out;
}

export function renderMetrics(m: VmMetrics): string {
  const pairs: Array<[string, string]> = [];
  if (m.id) pairs.push(['id', m.id]);
  if (m.phase) pairs.push(['phase', m.phase]);
  pairs.push(
    ['cpu', m.cpuSeconds === undefined ? '-' : `${m.cpuSeconds.toFixed(2)}s`],
    ['memory rss', bytes(m.memoryRssBytes)],
    ['guest memory', bytes(m.guestMemoryBytes)],
    ['uptime', seconds(m.uptimeSeconds)],
  );
  if (m.bootMs) pairs.push(['boot', `vmm ${Math.round(m.bootMs.vmm)}ms, guest ready ${Math.round(m.bootMs.guestReady)}ms`]);
  if (m.timestamp) pairs.push(['sampled', m.timestamp]);
  let out = kv(pairs);
  if (m.block?.length) {
    out +=
      '\n' +
      renderTable(
        ['BLOCK', 'READ', 'WRITE', 'READ OPS', 'WRITE OPS'],
        m.block.map((b) => [b.device, bytes(b.readBytes), bytes(b.writeBytes), String(b.readOps), String(b.writeOps)]),
      );
  }
  if (m.net?.length) {
    out +=
      '\n' +
      renderTable(
        ['NET', 'RX', 'TX', 'RX PKTS', 'TX PKTS'],
        m.net.map((n) => [n.device, bytes(n.rxBytes), bytes(n.txBytes), String(n.rxPackets), String(n.txPackets)]),
      );
  }
  return out;
}
