import { Suspense, lazy, useCallback, useEffect, useRef, useState, type KeyboardEvent, type ReactNode } from 'react';
import { ACTION_PHASES, type Action as VmAction } from '../../../core/microvm';
import { MvmApiError, type Api, type MetricsHistory, type MicroVM, type VmEvent } from '../api';
import { bytes, duration, isReady, rate, time, uptimeOf } from '../format';
import { Chart } from './Chart';
import { ConfirmDialog, PhaseBadge, ProblemAlert, useNow } from './common';
import { Console } from './Console';
import { Files } from './Files';

// xterm.js is as big as the rest of the dashboard: it is loaded when the Terminal tab is first opened.
const Terminal = lazy(() => import('./Terminal').then((m) => ({ default: m.Terminal })));

interface Action {
  /** The action, whose legal phases are ACTION_PHASES[name] (the server decides in the end). */
  name: VmAction;
  label: string;
  /** POST /microvms/{id}/<path> (a button the server's OpenAPI document lacks stays disabled). */
  path: 'start' | 'stop' | 'pause' | 'suspend' | 'resume' | 'snapshot';
}

const ACTIONS: Action[] = [
  { name: 'start', label: 'Start', path: 'start' },
  { name: 'stop', label: 'Stop', path: 'stop' },
  { name: 'pause', label: 'Pause', path: 'pause' },
  { name: 'suspend', label: 'Suspend', path: 'suspend' },
  { name: 'resume', label: 'Resume', path: 'resume' },
  { name: 'snapshot', label: 'Snapshot', path: 'snapshot' },
];

export function VmDetail({ api, id, caps, changes, onDeleted }: { api: Api; id: string; caps: Set<string>; changes: number; onDeleted: () => void }) {
  const [vm, setVm] = useState<MicroVM | undefined>();
  const [error, setError] = useState<unknown>();
  const [actionError, setActionError] = useState<unknown>();
  const [busy, setBusy] = useState<string | undefined>();
  const [confirm, setConfirm] = useState(false);
  const [history, setHistory] = useState<MetricsHistory | undefined>();
  const [events, setEvents] = useState<VmEvent[]>([]);
  const [gone, setGone] = useState(false);
  const now = useNow(1000);

  const load = useCallback(async () => {
    try {
      const v = await api.microvms.get(id);
      setVm(v);
      setError(undefined);
      setEvents(await api.microvms.events(id));
    } catch (e) {
      if (e instanceof MvmApiError && e.status === 404 && vm) setGone(true);
      else setError(e);
    }
  }, [api, id, vm !== undefined]); // deliberately not `vm` itself: refetch when it appears, not on every poll

  useEffect(() => {
    void load();
  }, [load, changes]);
  useEffect(() => {
    const t = setInterval(() => void load(), 4000);
    return () => clearInterval(t);
  }, [load]);

  useEffect(() => {
    let stop = false;
    const get = async () => {
      try {
        const h = await api.microvms.metricsHistory(id);
        if (!stop) setHistory(h);
      } catch {
        /* charts are optional */
      }
    };
    void get();
    const t = setInterval(get, 5000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [api, id]);

  const act = async (a: Action) => {
    setActionError(undefined);
    setBusy(a.name);
    try {
      if (a.path === 'snapshot') {
        await api.microvms.snapshot(id, `${vm?.name ?? id}-${Date.now()}`);
        await load();
      } else setVm(await api.microvms[a.path](id));
    } catch (e) {
      setActionError(e);
    } finally {
      setBusy(undefined);
    }
  };

  const del = async () => {
    setConfirm(false);
    setActionError(undefined);
    setBusy('delete');
    try {
      setVm(await api.microvms.delete(id));
    } catch (e) {
      setActionError(e);
    } finally {
      setBusy(undefined);
    }
  };

  useEffect(() => {
    if (gone) onDeleted();
  }, [gone, onDeleted]);

  if (!vm) {
    return (
      <section>
        <a href="#/">Back to the list</a>
        {error ? <ProblemAlert error={error} /> : <p>Loading…</p>}
      </section>
    );
  }
  const ready = isReady(vm);
  const live = ['Starting', 'Running', 'Paused'].includes(vm.status.phase);
  const pts = history?.points ?? [];
  return (
    <section aria-labelledby="vm-title" className="detail">
      <nav aria-label="Breadcrumb" className="crumbs">
        <a href="#/">MicroVMs</a> / <span>{vm.name}</span>
      </nav>
      <div className="section-head">
        <h1 id="vm-title">
          {vm.name} <PhaseBadge phase={vm.status.phase} ready={ready} />
        </h1>
        <div className="toolbar" role="toolbar" aria-label="Actions">
          {ACTIONS.map((a) => {
            const supported = caps.has(`POST /api/v1/microvms/{id}/${a.path}`);
            const legal = ACTION_PHASES[a.name].includes(vm.status.phase);
            return (
              <button
                key={a.name}
                type="button"
                disabled={!supported || !legal || busy !== undefined}
                title={!supported ? `${a.label} is not supported by this server` : !legal ? `Not possible while ${vm.status.phase}` : undefined}
                onClick={() => void act(a)}
              >
                {busy === a.name ? `${a.label}…` : a.label}
              </button>
            );
          })}
          <button type="button" className="danger" disabled={vm.status.phase === 'Deleting' || busy !== undefined} onClick={() => setConfirm(true)}>
            Delete
          </button>
        </div>
      </div>
      <ProblemAlert error={actionError} onDismiss={() => setActionError(undefined)} />
      <ProblemAlert error={error} />
      {vm.status.phase === 'Failed' && (
        <div className="problem" role="status">
          <strong>{vm.status.reason ?? 'Failed'}</strong>
          <p>{vm.status.message}</p>
        </div>
      )}
      <div className="grid">
        <section aria-labelledby="facts-title" className="panel">
          <h2 id="facts-title">Details</h2>
          <dl className="facts">
            <dt>ID</dt>
            <dd>
              <code>{vm.id}</code>
            </dd>
            <dt>Tenant</dt>
            <dd>{vm.tenant}</dd>
            <dt>Guest</dt>
            <dd>{ready ? 'ready' : live ? 'booting' : '–'}</dd>
            <dt>IP</dt>
            <dd data-testid="vm-ip">{vm.status.ip ?? '–'}</dd>
            <dt>Node</dt>
            <dd>{vm.status.node ?? '–'}</dd>
            <dt>VMM</dt>
            <dd>
              {vm.status.driver ?? '–'}
              {vm.status.accel ? ` / ${vm.status.accel}` : ''}
              {vm.status.pid ? ` (pid ${vm.status.pid})` : ''}
            </dd>
            <dt>Uptime</dt>
            <dd>{duration(uptimeOf(vm, now))}</dd>
            <dt>Boot</dt>
            <dd>{vm.status.bootMs ? `VMM ${vm.status.bootMs.vmm} ms, guest ready ${vm.status.bootMs.guestReady} ms` : '–'}</dd>
            <dt>vCPU / memory</dt>
            <dd>
              {vm.spec.vcpu} / {vm.spec.memory}
            </dd>
            <dt>Labels</dt>
            <dd>{Object.entries(vm.spec.labels ?? {}).map(([k, v]) => `${k}=${v}`).join(', ') || '–'}</dd>
          </dl>
        </section>
        <section aria-labelledby="charts-title" className="panel">
          <h2 id="charts-title">
            Metrics <span className="sub">last {history ? Math.round(history.windowSeconds / 60) : 10} min</span>
          </h2>
          <div className="charts">
            <Chart title="CPU" format={(v) => `${v.toFixed(1)}%`} series={[{ name: 'CPU', className: 's1', values: pts.map((p) => ({ t: p.t, v: p.cpuPercent })) }]} />
            <Chart
              title="Memory"
              format={bytes}
              series={[
                { name: 'VMM RSS', className: 's1', values: pts.map((p) => ({ t: p.t, v: p.memoryRssBytes })) },
                { name: 'guest', className: 's2', values: pts.map((p) => ({ t: p.t, v: p.guestMemoryBytes })) },
              ]}
            />
            <Chart
              title="Network"
              format={rate}
              series={[
                { name: 'rx', className: 's1', values: pts.map((p) => ({ t: p.t, v: p.netRxBytesPerSec })) },
                { name: 'tx', className: 's2', values: pts.map((p) => ({ t: p.t, v: p.netTxBytesPerSec })) },
              ]}
            />
          </div>
          {history?.current && (
            <p className="sub" data-testid="metrics-now">
              Now: CPU time {history.current.cpuSeconds.toFixed(1)} s · RSS {bytes(history.current.memoryRssBytes)} · disk read {bytes(history.current.block.reduce((s, b) => s + b.readBytes, 0))}
            </p>
          )}
        </section>
      </div>
      <GuestTabs
        console={<Console api={api} vmId={vm.id} live={live} key={`${vm.id}-${vm.status.startedAt ?? ''}-${live}`} />}
        // A new shell when the VM (re)starts or its guest becomes ready; an open one is kept otherwise.
        terminal={<Terminal api={api} vmId={vm.id} booting={vm.status.phase === 'Running' && !ready} key={`${vm.id}-${vm.status.startedAt ?? ''}-${vm.status.phase === 'Running'}-${ready}`} />}
        files={<Files api={api} vmId={vm.id} key={`${vm.id}-${vm.status.startedAt ?? ''}-${vm.status.phase === 'Running'}-${ready}`} />}
      />
      <section aria-labelledby="events-title" className="panel">
        <h2 id="events-title">Events</h2>
        {events.length === 0 ? (
          <p className="sub">No events.</p>
        ) : (
          <table className="events" data-testid="events">
            <thead>
              <tr>
                <th scope="col">Time</th>
                <th scope="col">Type</th>
                <th scope="col">Reason</th>
                <th scope="col">Message</th>
              </tr>
            </thead>
            <tbody>
              {[...events].reverse().map((e) => (
                <tr key={e.seq} className={e.type === 'Warning' ? 'warn' : undefined}>
                  <td>{time(e.time)}</td>
                  <td>{e.type}</td>
                  <td>{e.reason}</td>
                  <td>{e.message}</td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </section>
      <ConfirmDialog open={confirm} title={`Delete ${vm.name}?`} confirmLabel="Delete" danger onConfirm={() => void del()} onCancel={() => setConfirm(false)}>
        <p>
          The microVM <strong>{vm.name}</strong> (<code>{vm.id}</code>) is stopped and its disk, console log and network are removed. This cannot be undone.
        </p>
      </ConfirmDialog>
    </section>
  );
}

const TABS = [
  { id: 'console', label: 'Console' },
  { id: 'terminal', label: 'Terminal' },
  { id: 'files', label: 'Files' },
] as const;
type Tab = (typeof TABS)[number]['id'];

/**
 * The guest's serial console, an interactive terminal and its files, as tabs (WAI-ARIA tabs: arrow keys move
 * between them). Only the selected one is mounted: leaving the Terminal tab closes its socket.
 */
function GuestTabs(props: { console: ReactNode; terminal: ReactNode; files: ReactNode }) {
  const [tab, setTab] = useState<Tab>('console');
  const refs = useRef<Partial<Record<Tab, HTMLButtonElement | null>>>({});
  const onKey = (e: KeyboardEvent<HTMLDivElement>) => {
    const i = TABS.findIndex((t) => t.id === tab);
    const j = e.key === 'ArrowRight' ? (i + 1) % TABS.length : e.key === 'ArrowLeft' ? (i + TABS.length - 1) % TABS.length : e.key === 'Home' ? 0 : e.key === 'End' ? TABS.length - 1 : -1;
    if (j < 0) return;
    e.preventDefault();
    const next = TABS[j]!.id;
    setTab(next);
    refs.current[next]?.focus();
  };
  return (
    <section className="panel guest-tabs" aria-label="Guest">
      <div role="tablist" aria-label="Guest views" className="tabs" onKeyDown={onKey}>
        {TABS.map((t) => (
          <button
            key={t.id}
            ref={(b) => {
              refs.current[t.id] = b;
            }}
            type="button"
            role="tab"
            id={`tab-${t.id}`}
            aria-selected={tab === t.id}
            aria-controls={`tabpanel-${t.id}`}
            tabIndex={tab === t.id ? 0 : -1}
            onClick={() => setTab(t.id)}
          >
            {t.label}
          </button>
        ))}
      </div>
      <div role="tabpanel" id={`tabpanel-${tab}`} aria-labelledby={`tab-${tab}`}>
        {tab === 'console' ? props.console : tab === 'files' ? props.files : <Suspense fallback={<p className="sub">Loading the terminal…</p>}>{props.terminal}</Suspense>}
      </div>
    </section>
  );
}
