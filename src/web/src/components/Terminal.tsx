import { useEffect, useRef, useState } from 'react';
import { Terminal as XTerm } from '@xterm/xterm';
import { FitAddon } from '@xterm/addon-fit';
import '@xterm/xterm/css/xterm.css';
import { openSocket, type Api } from '../api';

/** Stream bytes of the exec WebSocket's binary frames (docs/exec-api.md). */
const STDIN = 0;
const STDOUT = 1;
const STDERR = 2;
/** The shell's time limit: the API's default (10 min) would end a working session. */
const SHELL_TIMEOUT = '8h';

type State =
  | { kind: 'connecting' }
  | { kind: 'open'; pid: number }
  | { kind: 'exited'; exitCode: number; signal?: string | null }
  | { kind: 'error'; status: number; code: string; message: string; phase?: string }
  | { kind: 'closed'; code: number; opened: boolean };

interface ServerMessage {
  type?: string;
  pid?: number;
  exitCode?: number;
  signal?: string | null;
  status?: number;
  code?: string;
  message?: string;
  problem?: { phase?: string };
}

/** What the user should read when the shell could not be had (or ended). */
function explain(s: State, booting: boolean): { title: string; text: string } | undefined {
  if (s.kind === 'error') {
    if (s.code === 'ILLEGAL_TRANSITION') return { title: s.phase === 'Paused' ? 'The microVM is paused' : 'The microVM is not running', text: s.message };
    // Its agent answers once the guest has booted: the tab remounts (and connects) when the guest becomes ready.
    if (s.code === 'AGENT_UNAVAILABLE' && booting) return { title: 'The guest is still booting', text: 'The terminal connects by itself when the guest is ready.' };
    if (s.code === 'AGENT_UNAVAILABLE') return { title: 'The guest agent is unavailable', text: `${s.message}. The Console tab still shows the serial console.` };
    if (s.code === 'CAPABILITY_UNSUPPORTED') return { title: 'Not supported here', text: s.message };
    return { title: `The terminal failed (${s.status} · ${s.code})`, text: s.message };
  }
  if (s.kind === 'closed') {
    return s.opened
      ? { title: 'Disconnected', text: `The connection closed (code ${s.code}) before the shell exited.` }
      : { title: 'Cannot connect', text: `The exec WebSocket was refused or failed (code ${s.code}): the token may lack the microvms:exec permission, or the service is unreachable.` };
  }
  return undefined;
}

/**
 * An interactive `sh` in the guest (a tty) over the exec WebSocket, shown in xterm.js: keystrokes go
 * as stdin frames, the terminal's size follows the panel (resize messages). Unmounting closes the
 * socket, which ends the shell. `booting`: the VM runs but its guest is not ready yet (an
 * AGENT_UNAVAILABLE then means "wait", not "this image has no agent").
 */
export function Terminal({ api, vmId, booting = false }: { api: Api; vmId: string; booting?: boolean }) {
  const host = useRef<HTMLDivElement>(null);
  const [state, setState] = useState<State>({ kind: 'connecting' });
  const [attempt, setAttempt] = useState(0);

  useEffect(() => {
    const el = host.current;
    if (!el) return;
    const term = new XTerm({
      cursorBlink: true,
      fontSize: 13,
      fontFamily: "ui-monospace, 'DejaVu Sans Mono', monospace",
      scrollback: 5000,
      theme: { background: '#0d1117', foreground: '#e6edf3' },
    });
    const fit = new FitAddon();
    term.loadAddon(fit);
    term.open(el);
    fit.fit();
    setState({ kind: 'connecting' });

    const ws = openSocket(api, `/microvms/${encodeURIComponent(vmId)}/exec`);
    const enc = new TextEncoder();
    let opened = false;
    let ended = false;
    const send = (frame: string | Uint8Array): void => {
      if (ws.readyState === WebSocket.OPEN) ws.send(frame);
    };
    const stdin = (bytes: Uint8Array): void => {
      const frame = new Uint8Array(bytes.length + 1);
      frame[0] = STDIN;
      frame.set(bytes, 1);
      send(frame);
    };

    ws.onopen = () => {
      opened = true;
      send(JSON.stringify({ cmd: ['sh'], tty: true, cols: term.cols, rows: term.rows, timeout: SHELL_TIMEOUT }));
    };
    ws.onmessage = (ev: MessageEvent<ArrayBuffer | string>) => {
      if (typeof ev.data !== 'string') {
        const u8 = new Uint8Array(ev.data);
        if (u8[0] === STDOUT || u8[0] === STDERR) term.write(u8.subarray(1));
        return;
      }
      let m: ServerMessage;
      try {
        m = JSON.parse(ev.data) as ServerMessage;
      } catch {
        return;
      }
      if (m.type === 'started') {
        setState({ kind: 'open', pid: m.pid ?? 0 });
        term.focus();
      } else if (m.type === 'exit') {
        ended = true;
        setState({ kind: 'exited', exitCode: m.exitCode ?? -1, signal: m.signal ?? null });
      } else if (m.type === 'error') {
        ended = true;
        setState({ kind: 'error', status: m.status ?? 0, code: m.code ?? 'ERROR', message: m.message ?? 'exec failed', ...(m.problem?.phase ? { phase: m.problem.phase } : {}) });
      }
    };
    ws.onclose = (ev) => {
      if (!ended) setState({ kind: 'closed', code: ev.code, opened });
    };

    const onData = term.onData((d) => stdin(enc.encode(d)));
    // Non-UTF-8 input (some mouse reports): one byte per character.
    const onBinary = term.onBinary((d) => stdin(Uint8Array.from(d, (c) => c.charCodeAt(0) & 0xff)));
    const onResize = term.onResize(({ cols, rows }) => send(JSON.stringify({ type: 'resize', cols, rows })));
    // The panel's size (window resizes included) decides the terminal's: fit, and onResize tells the guest.
    const ro = new ResizeObserver(() => {
      try {
        fit.fit();
      } catch {
        /* not laid out (hidden) */
      }
    });
    ro.observe(el);

    return () => {
      ro.disconnect();
      onData.dispose();
      onBinary.dispose();
      onResize.dispose();
      ws.onopen = ws.onmessage = ws.onclose = null;
      // Closing the socket cancels the shell in the guest (SIGKILL to its group).
      if (ws.readyState === WebSocket.CONNECTING || ws.readyState === WebSocket.OPEN) ws.close(1000, 'closed by the dashboard');
      term.dispose();
    };
  }, [api, vmId, attempt]);

  const problem = explain(state, booting);
  const status =
    state.kind === 'connecting'
      ? 'connecting…'
      : state.kind === 'open'
        ? `sh · pid ${state.pid}`
        : state.kind === 'exited'
          ? `exited with code ${state.exitCode}${state.signal ? ` (${state.signal})` : ''}`
          : state.kind === 'error'
            ? 'unavailable'
            : 'disconnected';
  return (
    <div className="terminal-view">
      <div className="panel-head">
        <span className="sub" aria-live="polite" data-testid="terminal-status">
          {status}
        </span>
        {state.kind !== 'connecting' && state.kind !== 'open' && (
          <button type="button" className="push-right" onClick={() => setAttempt((n) => n + 1)}>
            {state.kind === 'exited' ? 'New shell' : 'Reconnect'}
          </button>
        )}
      </div>
      {problem && (
        <div className="problem" role="alert" data-testid="terminal-problem">
          <strong>{problem.title}</strong>
          <p>{problem.text}</p>
        </div>
      )}
      <div ref={host} className="terminal" data-testid="terminal" hidden={state.kind === 'error'} />
    </div>
  );
}
