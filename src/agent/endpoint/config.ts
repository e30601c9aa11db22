/**
 * Configuration of the node agent's console/metrics endpoint (ADR 0015) from the environment:
 *   MVM_AGENT_LISTEN          host:port to listen on (default 127.0.0.1:0: loopback, an ephemeral port, published on the Node;
 *                             deploy/firecracker sets 0.0.0.0:10351 so the API's pods reach it)
 *   MVM_AGENT_ADVERTISE_URL   URL the API uses (default http(s)://<HOST_IP | POD_IP | first external IPv4>:<port>)
 *   MVM_AGENT_TLS_CERT/KEY    PEM files: serve HTTPS, reloaded when they change (deploy/: a certificate of
 *                             the cluster's agent CA for <node>.agent.microvm.service, ADR 0026); plain HTTP otherwise
 *   MVM_TLS_RELOAD_SECONDS    how often those files are checked (default 5)
 *   MVM_AGENT_TOKEN_AUDIENCES comma-separated audiences a caller's token must carry (default: the API server's)
 */
import { networkInterfaces } from 'node:os';

export interface AgentEndpointEnv {
  host: string;
  port: number;
  tls?: { certFile: string; keyFile: string; reloadMs: number };
  audiences?: string[];
  /** The URL to publish, given the port actually bound. */
  advertise: (port: number) => string;
}

function externalIpv4(): string | undefined {
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

export function agentEndpointEnv(env: NodeJS.ProcessEnv = process.env): AgentEndpointEnv {
  const m = /^(.*):(\d+)$/.exec(env.MVM_AGENT_LISTEN ?? '127.0.0.1:0');
  if (!m || Number(m[2]) > 65535) throw new Error(`MVM_AGENT_LISTEN must be host:port, got ${JSON.stringify(env.MVM_AGENT_LISTEN)}`);
  const host = m[1]!.replace(/^\[(.*)\]$/, '$1') || '0.0.0.0';
  if (!env.MVM_AGENT_TLS_CERT !== !env.MVM_AGENT_TLS_KEY) throw new Error('MVM_AGENT_TLS_CERT and MVM_AGENT_TLS_KEY go together: give both PEM files or neither');
  const reload = Number(env.MVM_TLS_RELOAD_SECONDS || 5);
  if (!Number.isFinite(reload) || reload < 0) throw new Error(`MVM_TLS_RELOAD_SECONDS must be a non-negative number of seconds, got ${JSON.stringify(env.MVM_TLS_RELOAD_SECONDS)}`);
  const tls = env.MVM_AGENT_TLS_CERT && env.MVM_AGENT_TLS_KEY ? { certFile: env.MVM_AGENT_TLS_CERT, keyFile: env.MVM_AGENT_TLS_KEY, reloadMs: Math.round(reload * 1000) } : undefined;
  const audiences = env.MVM_AGENT_TOKEN_AUDIENCES?.split(',').map((s) => s.trim()).filter(Boolean);
  const wildcard = host === '0.0.0.0' || host === '::';
  const advHost = wildcard ? (env.HOST_IP ?? env.POD_IP ?? externalIpv4() ?? '127.0.0.1') : host;
  return {
    host,
    port: Number(m[2]),
    ...(tls ? { tls } : {}),
    ...(audiences?.length ? { audiences } : {}),
    advertise: (port) => env.MVM_AGENT_ADVERTISE_URL ?? `${tls ? 'https' : 'http'}://${advHost.includes(':') ? `[${advHost}]` : advHost}:${port}`,
  };
}
