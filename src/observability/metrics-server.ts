/**
 * A metrics-only HTTP listener (`GET /metrics`, `GET /healthz`), for processes
 * without the REST API: the cluster-mode node agent exposes its per-VM series on
 * `:9100` this way (MVM_METRICS_LISTEN). The standalone service serves the same
 * exposition at `/metrics` of its API port and opens this one only when asked.
 */
import { createServer, type Server } from 'node:http';
import type { Logger } from 'pino';

export interface Scrapable {
  scrape(): Promise<string>;
  readonly metrics: { contentType(): string };
}

export interface MetricsServer {
  server: Server;
  /** Resolves to the bound address once listening. */
  address: Promise<{ host: string; port: number }>;
  close(): Promise<void>;
}

export function parseListen(s: string): { host: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(s.trim());
  if (!m) throw new Error(`metrics listen address must be host:port or :port, got ${JSON.stringify(s)}`);
  return { host: m[1]!.replace(/^\[(.*)\]$/, '$1') || '0.0.0.0', port: Number(m[2]) };
}

export function startMetricsServer(src: Scrapable, listen: string, log?: Logger, token = process.env.MVM_METRICS_TOKEN): MetricsServer {
  const { host, port } = parseListen(listen);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
      return;
    }
    if (path !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
      return;
    }
    if (token && req.headers.authorization !== `Bearer ${token}`) {
      res.writeHead(401, { 'content-type': 'text/plain', 'www-authenticate': 'Bearer' }).end('unauthorized\n');
      return;
    }
    src.scrape().then(
      (body) => res.writeHead(200, { 'content-type': src.metrics.contentType() }).end(req.method === 'HEAD' ? undefined : body),
      (e: Error) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics collection failed: ${e.message}\n`),
    );
  });
  const address = new Promise<{ host: string; port: number }>((resolve, reject) => {
    server.once('error', (e) => {
      log?.error({ err: e.message, listen }, 'metrics listener failed');
      reject(e);
    });
    server.listen(port, host, () => {
      const a = server.address();
      const bound = typeof a === 'object' && a ? { host, port: a.port } : { host, port };
      log?.info({ listen: `${bound.host}:${bound.port}` }, 'metrics listener ready');
      resolve(bound);
    });
  });
  address.catch(() => undefined);
  server.unref();
  return {
    server,
    address,
    close: () => new Promise<void>((r) => server.close(() => r())),
  };
}
