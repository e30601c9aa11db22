/** A small accessible SVG line chart (no chart library): one or two series over time. */
export interface Series {
  name: string;
  className: string;
  values: Array<{ t: number; v: number | null }>;
}

export function Chart({ title, series, format, height = 120 }: { title: string; series: Series[]; format: (v: number) => string; height?: number }) {
  const width = 360;
  const pad = { l: 4, r: 4, t: 8, b: 4 };
  const all = series.flatMap((s) => s.values.filter((p) => p.v !== null).map((p) => p as { t: number; v: number }));
  const ts = series.flatMap((s) => s.values.map((p) => p.t));
  const t0 = Math.min(...ts);
  const t1 = Math.max(...ts);
  const max = Math.max(1e-9, ...all.map((p) => p.v));
  const x = (t: number) => pad.l + (t1 > t0 ? ((t - t0) / (t1 - t0)) * (width - pad.l - pad.r) : 0);
  const y = (v: number) => pad.t + (1 - v / max) * (height - pad.t - pad.b);
  const latest = series.map((s) => {
    const last = [...s.values].reverse().find((p) => p.v !== null);
    return `${s.name} ${last ? format(last.v!) : 'no data'}`;
  });
  return (
    <figure className="chart">
      <figcaption>
        <span>{title}</span>
        <span className="legend">
          {series.map((s, i) => (
            <span key={s.name} className={`key ${s.className}`}>
              {latest[i]}
            </span>
          ))}
        </span>
      </figcaption>
      <svg viewBox={`0 0 ${width} ${height}`} role="img" aria-label={`${title}: ${latest.join(', ')}; peak ${format(max)}`} preserveAspectRatio="none">
        <line x1={pad.l} x2={width - pad.r} y1={height - pad.b} y2={height - pad.b} className="axis" />
        {all.length === 0 ? (
          <text x={width / 2} y={height / 2} textAnchor="middle" className="nodata">
            collecting…
          </text>
        ) : (
          series.map((s) => {
            // Break the line at gaps (null values).
            const parts: string[] = [];
            let cur: string[] = [];
            for (const p of s.values) {
              if (p.v === null) {
                if (cur.length) parts.push(cur.join(' '));
                cur = [];
              } else cur.push(`${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
            }
            if (cur.length) parts.push(cur.join(' '));
            return parts.map((pts, i) => <polyline key={`${s.name}-${i}`} points={pts} className={`line ${s.className}`} fill="none" />);
          })
        )}
        <text x={width - pad.r} y={pad.t + 2} textAnchor="end" className="max">
          {format(max)}
        </text>
      </svg>
    </figure>
  );
}
