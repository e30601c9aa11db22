export function bytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) return '–';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < u.length - 1) {
    v /= 1024;
    i++;
  }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${u[i]}`;
}

export function rate(n: number | null | undefined): string {
  return n === null || n === undefined ? '–' : `${bytes(n)}/s`;
}

export function duration(seconds: number | undefined): string {
  if (seconds === undefined || !Number.isFinite(seconds) || seconds < 0) return '–';
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

export function uptimeOf(vm: { status: { phase: string; startedAt?: string } }, now = Date.now()): number | undefined {
  if (!vm.status.startedAt || !['Running', 'Paused'].includes(vm.status.phase)) return undefined;
  return (now - Date.parse(vm.status.startedAt)) / 1000;
}

export function time(iso: string): string {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

export const isReady = (vm: { status: { conditions: Array<{ type: string; status: string }> } }): boolean =>
  vm.status.conditions.some((c) => c.type === 'GuestReady' && c.status === 'True');
