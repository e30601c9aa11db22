import { useEffect, useRef, useState } from 'react';
import type { Api } from '../api';
import { AnsiParser, type Segment } from '../ansi';

const MAX_CHARS = 256 * 1024;

/** The VM's serial console, streamed, ANSI-aware, auto-scrolling while the view is at the bottom. */
export function Console({ api, vmId, live }: { api: Api; vmId: string; live: boolean }) {
  const [segments, setSegments] = useState<Segment[]>([]);
  const [state, setState] = useState<'connecting' | 'streaming' | 'ended' | 'error'>('connecting');
  const [follow, setFollow] = useState(true);
  const box = useRef<HTMLPreElement>(null);
  const stick = useRef(true);

  useEffect(() => {
    const ac = new AbortController();
    const parser = new AnsiParser();
    let chars = 0;
    setSegments([]);
    setState('connecting');
    // Fire and forget: failures end in setState('error') inside.
    void (async () => {
      try {
        const stream = api.microvms.consoleChunks(vmId, { follow: live, tail: 65536, signal: ac.signal });
        setState('streaming');
        for await (const chunk of stream) {
          const segs = parser.push(chunk);
          if (!segs.length) continue;
          chars += chunk.length;
          setSegments((prev) => {
            let next = prev.concat(segs);
            if (chars > MAX_CHARS) {
              // Drop the oldest output: the view keeps the last MAX_CHARS characters.
              let drop = chars - MAX_CHARS;
              let i = 0;
              while (i < next.length && drop >= next[i]!.text.length) {
                drop -= next[i]!.text.length;
                chars -= next[i]!.text.length;
                i++;
              }
              next = next.slice(i);
            }
            return next;
          });
        }
        setState('ended');
      } catch (e) {
        if (!ac.signal.aborted) setState('error');
      }
    })();
    return () => ac.abort();
  }, [api, vmId, live]);

  useEffect(() => {
    const el = box.current;
    if (el && follow && stick.current) el.scrollTop = el.scrollHeight;
  }, [segments, follow]);

  return (
    <div className="console-view">
      <div className="panel-head">
        <span className="sub" aria-live="polite">
          {state === 'streaming' ? (live ? 'live' : 'log') : state === 'ended' ? 'stream ended' : state === 'error' ? 'unavailable' : 'connecting…'}
        </span>
        <label className="check inline">
          <input type="checkbox" checked={follow} onChange={(e) => setFollow(e.target.checked)} /> Auto-scroll
        </label>
      </div>
      <pre
        ref={box}
        className="console"
        tabIndex={0}
        role="log"
        aria-label="Console output"
        data-testid="console"
        onScroll={(e) => {
          const el = e.currentTarget;
          stick.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 8;
        }}
      >
        {segments.map((s, i) => (
          <span key={i} className={[s.fg ? `fg-${s.fg}` : '', s.bg ? `bg-${s.bg}` : '', s.bold ? 'bold' : ''].filter(Boolean).join(' ') || undefined}>
            {s.text}
          </span>
        ))}
      </pre>
    </div>
  );
}
