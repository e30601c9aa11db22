import { useCallback, useEffect, useState } from 'react';
import { PHASES } from '../../../core/microvm';
import type { Api, MicroVM } from '../api';
import type { Phase } from '../../../../sdk/typescript/src/core.js';
import { duration, isReady, uptimeOf } from '../format';
import { PhaseBadge, ProblemAlert, useNow } from './common';

/** The phase filter's choices: any, or one phase. */
const PHASE_CHOICES = ['', ...PHASES];

export function VmList({ api, changes }: { api: Api; changes: number }) {
  const [items, setItems] = useState<MicroVM[] | undefined>();
  const [error, setError] = useState<unknown>();
  const [phase, setPhase] = useState('');
  const [label, setLabel] = useState('');
  const [text, setText] = useState('');
  const now = useNow(1000);

  const load = useCallback(async () => {
    try {
      const page = await api.microvms.list({ limit: 500, ...(phase ? { phase: phase as Phase } : {}), ...(label.trim() ? { label: [label.trim()] } : {}) });
      setItems(page.items);
      setError(undefined);
    } catch (e) {
      setError(e);
    }
  }, [api, phase, label]);

  useEffect(() => {
    const t = setTimeout(() => void load(), 150);
    return () => clearTimeout(t);
  }, [load, changes]);
  useEffect(() => {
    const t = setInterval(() => void load(), 5000);
    return () => clearInterval(t);
  }, [load]);

  const shown = (items ?? []).filter((vm) => !text || vm.name.includes(text) || vm.id.includes(text));

  return (
    <section aria-labelledby="vms-title">
      <div className="section-head">
        <h1 id="vms-title">MicroVMs</h1>
        <a className="button primary" href="#/create">
          Create microVM
        </a>
      </div>
      <form className="filters" role="search" onSubmit={(e) => e.preventDefault()}>
        <div>
          <label htmlFor="f-text">Name or id</label>
          <input id="f-text" type="search" value={text} onChange={(e) => setText(e.target.value)} />
        </div>
        <div>
          <label htmlFor="f-phase">Phase</label>
          <select id="f-phase" value={phase} onChange={(e) => setPhase(e.target.value)}>
            {PHASE_CHOICES.map((p) => (
              <option key={p} value={p}>
                {p || 'Any'}
              </option>
            ))}
          </select>
        </div>
        <div>
          <label htmlFor="f-label">Label selector</label>
          <input id="f-label" placeholder="app=web" value={label} onChange={(e) => setLabel(e.target.value)} aria-describedby="f-label-hint" />
          <span id="f-label-hint" className="sr-only">
            key=value pairs separated by commas
          </span>
        </div>
      </form>
      <ProblemAlert error={error} />
      {items === undefined && !error ? (
        <p aria-live="polite">Loading…</p>
      ) : shown.length === 0 ? (
        <p className="empty">{items?.length || phase || label.trim() ? 'No microVM matches these filters.' : 'No microVMs yet.'}</p>
      ) : (
        <table className="vms">
          <caption className="sr-only">MicroVMs, updated live</caption>
          <thead>
            <tr>
              <th scope="col">Name</th>
              <th scope="col">Phase</th>
              <th scope="col">IP</th>
              <th scope="col">Node</th>
              <th scope="col">Uptime</th>
              <th scope="col">vCPU / memory</th>
              <th scope="col">Tenant</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((vm) => (
              <tr key={vm.id} data-vm={vm.name}>
                <th scope="row">
                  <a href={`#/vms/${vm.id}`}>{vm.name}</a>
                  <div className="sub">{vm.id}</div>
                </th>
                <td>
                  <PhaseBadge phase={vm.status.phase} ready={isReady(vm)} />
                  {vm.status.reason && vm.status.phase === 'Failed' ? <div className="sub">{vm.status.reason}</div> : null}
                </td>
                <td>{vm.status.ip ?? '–'}</td>
                <td>{vm.status.node ?? '–'}</td>
                <td>{duration(uptimeOf(vm, now))}</td>
                <td>
                  {vm.spec.vcpu} / {vm.spec.memory}
                </td>
                <td>{vm.tenant}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}
