import { useEffect, useRef, useState, type ReactNode } from 'react';
import { shownProblem } from '../api';

/** An API error as the user should read it: title, detail, code, and the offending fields. */
export function ProblemAlert({ error, onDismiss }: { error: unknown; onDismiss?: () => void }) {
  if (!error) return null;
  const p = shownProblem(error);
  return (
    <div className="problem" role="alert" data-testid="problem">
      <div className="problem-head">
        <strong>{p.title}</strong>
        {p.status ? <span className="problem-code">{p.status} · {p.code}</span> : <span className="problem-code">{p.code}</span>}
        {onDismiss && (
          <button type="button" className="link" onClick={onDismiss} aria-label="Dismiss error">
            ✕
          </button>
        )}
      </div>
      <p>{p.detail}</p>
      {p.errors && p.errors.length > 0 && (
        <ul>
          {p.errors.map((e) => (
            <li key={`${e.field}-${e.message}`}>
              <code>{e.field}</code>: {e.message}
            </li>
          ))}
        </ul>
      )}
    </div>
  );
}

const PHASE_CLASS: Record<string, string> = {
  Running: 'ok',
  Paused: 'info',
  Suspending: 'progress',
  Suspended: 'info',
  Starting: 'progress',
  Scheduled: 'progress',
  Pending: 'progress',
  Stopping: 'progress',
  Deleting: 'progress',
  Stopped: 'muted',
  Failed: 'bad',
};

export function PhaseBadge({ phase, ready }: { phase: string; ready?: boolean }) {
  return (
    <span className={`badge badge-${PHASE_CLASS[phase] ?? 'muted'}`} data-phase={phase}>
      {phase}
      {phase === 'Running' && ready === false ? ' · booting' : ''}
    </span>
  );
}

/** A modal confirmation (native <dialog>: focus trap, Escape closes). */
export function ConfirmDialog(props: { open: boolean; title: string; children: ReactNode; confirmLabel: string; danger?: boolean; onConfirm: () => void; onCancel: () => void }) {
  const ref = useRef<HTMLDialogElement>(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (props.open && !d.open) d.showModal();
    if (!props.open && d.open) d.close();
  }, [props.open]);
  return (
    <dialog ref={ref} aria-labelledby="confirm-title" onCancel={props.onCancel} onClose={props.onCancel}>
      <h2 id="confirm-title">{props.title}</h2>
      <div>{props.children}</div>
      <div className="dialog-actions">
        <button type="button" onClick={props.onCancel} autoFocus>
          Cancel
        </button>
        <button type="button" className={props.danger ? 'danger' : 'primary'} onClick={props.onConfirm}>
          {props.confirmLabel}
        </button>
      </div>
    </dialog>
  );
}

/** Re-render every `ms` (uptimes). */
export function useNow(ms = 1000): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}
