import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import type { Api, GuestFileStat } from '../api';
import { bytes, time } from '../format';
import { ProblemAlert } from './common';

type Entry = GuestFileStat;

/** `/a/b` + `c` → `/a/b/c`; `..` of `/a/b` → `/a`. */
function join(dir: string, name: string): string {
  if (name === '..') return dir.replace(/\/[^/]+\/?$/, '') || '/';
  return `${dir.replace(/\/+$/, '')}/${name}`;
}

/** Save a Blob under a name (an anchor to an object URL: the download needs the Authorization header, so no plain link). */
function save(blob: Blob, name: string): void {
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/**
 * The guest's files through the files API (guest agent): a directory listing, download of a file,
 * upload of local files into the directory shown (GET/PUT /microvms/{id}/files).
 */
export function Files({ api, vmId }: { api: Api; vmId: string }) {
  const [dir, setDir] = useState('/tmp');
  const [input, setInput] = useState('/tmp');
  const [entries, setEntries] = useState<Entry[] | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const [note, setNote] = useState('');
  const picker = useRef<HTMLInputElement>(null);

  const load = useCallback(
    async (path: string, signal?: AbortSignal) => {
      setError(null);
      try {
        const r = await api.files.listDir(vmId, path, signal ? { signal } : {});
        setEntries([...r.entries].sort((a, b) => (a.type === 'dir') !== (b.type === 'dir') ? (a.type === 'dir' ? -1 : 1) : a.name.localeCompare(b.name)));
        setDir(r.path);
        setInput(r.path);
      } catch (e) {
        if ((e as Error).name === 'AbortError') return;
        setError(e);
      }
    },
    [api, vmId],
  );

  useEffect(() => {
    const ac = new AbortController();
    void load('/tmp', ac.signal);
    return () => ac.abort();
  }, [load]);

  const go = (e: FormEvent) => {
    e.preventDefault();
    void load(input.startsWith('/') ? input : `/${input}`);
  };

  const download = async (entry: Entry) => {
    setBusy(true);
    setError(null);
    try {
      save(await api.files.blob(vmId, join(dir, entry.name)), entry.name);
      setNote(`Downloaded ${entry.name}.`);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  const upload = async (files: FileList | null) => {
    if (!files?.length) return;
    setBusy(true);
    setError(null);
    const done: string[] = [];
    try {
      for (const f of Array.from(files)) {
        await api.files.upload(vmId, join(dir, f.name), f);
        done.push(f.name);
      }
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
      if (picker.current) picker.current.value = '';
      if (done.length) setNote(`Uploaded ${done.join(', ')} to ${dir}.`);
      await load(dir);
    }
  };

  return (
    <div className="files-view" data-testid="files">
      <div className="panel-head files-bar">
        <form onSubmit={go} className="files-path">
          <label htmlFor="files-dir">Directory</label>
          <input id="files-dir" value={input} onChange={(e) => setInput(e.target.value)} spellCheck={false} />
          <button type="submit">Open</button>
        </form>
        <label className="button push-right">
          Upload files…
          <input ref={picker} type="file" multiple className="sr-only" aria-label={`Upload files to ${dir}`} disabled={busy} onChange={(e) => void upload(e.target.files)} />
        </label>
      </div>
      <ProblemAlert error={error} onDismiss={() => setError(null)} />
      <p className="sub" aria-live="polite" data-testid="files-note">
        {busy ? 'working…' : note}
      </p>
      {entries && (
        <div className="files-scroll">
          <table className="files-table">
            <thead>
              <tr>
                <th scope="col">Name</th>
                <th scope="col">Size</th>
                <th scope="col">Modified</th>
                <th scope="col">
                  <span className="sr-only">Actions</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {dir !== '/' && (
                <tr>
                  <td colSpan={4}>
                    <button type="button" className="link" onClick={() => void load(join(dir, '..'))}>
                      ..
                    </button>
                  </td>
                </tr>
              )}
              {entries.map((e) => (
                <tr key={e.name} data-file={e.name}>
                  <td>
                    {e.type === 'dir' ? (
                      <button type="button" className="link" onClick={() => void load(join(dir, e.name))}>
                        {e.name}/
                      </button>
                    ) : (
                      <span>{e.type === 'symlink' ? `${e.name} → ${e.symlinkTarget ?? '?'}` : e.name}</span>
                    )}
                  </td>
                  <td>{e.type === 'file' ? bytes(e.size) : ''}</td>
                  <td>{time(new Date(e.mtimeMs).toISOString())}</td>
                  <td>
                    {e.type === 'file' && (
                      <button type="button" disabled={busy} onClick={() => void download(e)} aria-label={`Download ${e.name}`}>
                        Download
                      </button>
                    )}
                  </td>
                </tr>
              ))}
              {entries.length === 0 && (
                <tr>
                  <td colSpan={4} className="sub">
                    empty
                  </td>
                </tr>
              )}
            </tbody>
          </table>
        </div>
      )}
    </div>
  );
}
