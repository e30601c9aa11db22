import { useCallback, useEffect, useMemo, useRef, useState } from 'react';
import { connect, serverCapabilities } from './api';
import { CreateForm } from './components/CreateForm';
import { SignIn } from './components/SignIn';
import { TenantUsage } from './components/Usage';
import { VmDetail } from './components/VmDetail';
import { VmList } from './components/VmList';

const TOKEN_KEY = 'mvm.token';

type Route = { page: 'list' } | { page: 'create' } | { page: 'vm'; id: string };

function parseRoute(hash: string): Route {
  const m = /^#\/vms\/([^/?#]+)/.exec(hash);
  if (m) return { page: 'vm', id: decodeURIComponent(m[1]!) };
  if (hash.startsWith('#/create')) return { page: 'create' };
  return { page: 'list' };
}

export function App() {
  const [token, setToken] = useState<string | null>(() => sessionStorage.getItem(TOKEN_KEY));
  const [route, setRoute] = useState<Route>(() => parseRoute(location.hash));
  const [caps, setCaps] = useState<Set<string>>(new Set());
  const [changes, setChanges] = useState(0);
  const [live, setLive] = useState(false);
  const [tenant, setTenant] = useState('default');
  const api = useMemo(() => (token ? connect(token) : undefined), [token]);

  useEffect(() => {
    const on = () => setRoute(parseRoute(location.hash));
    window.addEventListener('hashchange', on);
    return () => window.removeEventListener('hashchange', on);
  }, []);

  useEffect(() => {
    void serverCapabilities(connect('')).then(setCaps);
  }, []);

  useEffect(() => {
    if (!api) return;
    void api.microvms
      .list({ limit: 1 })
      .then((p) => p.items[0] && setTenant(p.items[0].tenant))
      .catch(() => undefined);
  }, [api]);

  // One tenant-wide event stream: every event refreshes what is on screen.
  useEffect(() => {
    if (!api) return;
    const ac = new AbortController();
    let last: string | undefined;
    // Runs until unmount (abort); every failure is caught inside and retried.
    void (async () => {
      while (!ac.signal.aborted) {
        try {
          for await (const ev of api.events.follow({ tail: 0, signal: ac.signal, ...(last ? { lastEventId: last } : {}), onOpen: () => setLive(true) })) {
            if (ev.id) last = ev.id;
            setChanges((n) => n + 1);
          }
        } catch {
          /* reconnect below */
        }
        setLive(false);
        await new Promise((r) => setTimeout(r, 3000));
      }
    })();
    return () => ac.abort();
  }, [api]);

  const signOut = useCallback(() => {
    sessionStorage.removeItem(TOKEN_KEY);
    setToken(null);
  }, []);

  // Focus the page heading after navigation (screen readers announce the new page); not on first load.
  const firstRoute = useRef(true);
  useEffect(() => {
    if (firstRoute.current) {
      firstRoute.current = false;
      return;
    }
    const h = document.querySelector<HTMLElement>('main h1');
    h?.setAttribute('tabindex', '-1');
    h?.focus({ preventScroll: true });
  }, [route]);

  const onDeleted = useCallback(() => {
    location.hash = '#/';
  }, []);

  if (!token || !api) {
    return (
      <SignIn
        onSignedIn={(t) => {
          sessionStorage.setItem(TOKEN_KEY, t);
          setToken(t);
        }}
      />
    );
  }

  return (
    <>
      <a className="skip" href="#main" onClick={(e) => {
        e.preventDefault();
        document.getElementById('main')?.focus();
      }}>
        Skip to content
      </a>
      <header className="top">
        <a href="#/" className="brand">
          MicroVM Service
        </a>
        <nav aria-label="Main">
          <a href="#/" aria-current={route.page === 'list' ? 'page' : undefined}>
            MicroVMs
          </a>
          <a href="#/create" aria-current={route.page === 'create' ? 'page' : undefined}>
            Create
          </a>
        </nav>
        <span className={`live ${live ? 'on' : ''}`} aria-live="polite">
          {live ? 'Live' : 'Reconnecting…'}
        </span>
        <button type="button" onClick={signOut}>
          Sign out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        {route.page === 'list' && (
          <>
            <VmList api={api} changes={changes} />
            <TenantUsage api={api} tenant={tenant} />
          </>
        )}
        {route.page === 'create' && <CreateForm api={api} onCreated={(vm) => (location.hash = `#/vms/${vm.id}`)} />}
        {route.page === 'vm' && <VmDetail key={route.id} api={api} id={route.id} caps={caps} changes={changes} onDeleted={onDeleted} />}
      </main>
    </>
  );
}
