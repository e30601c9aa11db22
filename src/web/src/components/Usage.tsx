import { useEffect, useState } from 'react';
import { MvmApiError, type Api } from '../api';
import { ProblemAlert } from './common';

type Usage = Record<string, unknown>;

/** Tenant usage against quota, when the server has the endpoint (GET /tenants/{id}/usage); degrades on 404. */
export function TenantUsage({ api, tenant }: { api: Api; tenant: string }) {
  const [usage, setUsage] = useState<Usage | null | undefined>();
  const [error, setError] = useState<unknown>();
  useEffect(() => {
    let stop = false;
    const load = async () => {
      try {
        const u = await api.tenants.usage(tenant);
        if (!stop) setUsage(u);
      } catch (e) {
        if (stop) return;
        if (e instanceof MvmApiError && (e.status === 404 || e.status === 501 || e.status === 403)) setUsage(null);
        else setError(e);
      }
    };
    void load();
    const t = setInterval(load, 15000);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [api, tenant]);

  const rows = usage ? toRows(usage) : [];
  return (
    <section aria-labelledby="usage-title" className="panel usage">
      <h2 id="usage-title">
        Tenant <code>{tenant}</code>: usage and quota
      </h2>
      <ProblemAlert error={error} />
      {usage === undefined && !error && <p>Loading…</p>}
      {usage === null && <p className="sub" data-testid="usage-unavailable">Usage and quotas are not available on this server.</p>}
      {rows.length > 0 && (
        <dl className="meters">
          {rows.map((r) => (
            <div key={r.key}>
              <dt>{r.key}</dt>
              <dd>
                {r.limit !== undefined ? (
                  <>
                    <meter min={0} max={r.limit} value={r.used} aria-label={`${r.key}: ${r.used} of ${r.limit}`} />
                    <span>
                      {r.used} / {r.limit}
                    </span>
                  </>
                ) : (
                  <span>{r.used}</span>
                )}
              </dd>
            </div>
          ))}
        </dl>
      )}
    </section>
  );
}

/** Accepts {usage:{k:n}, quota|limits:{k:n}} or {k:{used,limit}}. */
function toRows(u: Usage): Array<{ key: string; used: number; limit?: number }> {
  const used = (u.usage ?? u.used) as Record<string, unknown> | undefined;
  const limits = (u.quota ?? u.quotas ?? u.limits) as Record<string, unknown> | undefined;
  const out: Array<{ key: string; used: number; limit?: number }> = [];
  if (used && typeof used === 'object') {
    for (const [k, v] of Object.entries(used)) {
      if (typeof v !== 'number') continue;
      const l = limits?.[k];
      out.push({ key: k, used: v, ...(typeof l === 'number' ? { limit: l } : {}) });
    }
    return out;
  }
  for (const [k, v] of Object.entries(u)) {
    if (v && typeof v === 'object' && typeof (v as { used?: unknown }).used === 'number') {
      const x = v as { used: number; limit?: number; max?: number };
      const limit = x.limit ?? x.max;
      out.push({ key: k, used: x.used, ...(typeof limit === 'number' ? { limit } : {}) });
    }
  }
  return out;
}
