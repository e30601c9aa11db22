/**
 * The service's TLS settings (ADR 0026):
 *   MVM_TLS_CERT, MVM_TLS_KEY   PEM files: REST (and the dashboard) and gRPC serve TLS; both or neither
 *   MVM_TLS_SELF_SIGNED=1       development: make a self-signed pair in <dataDir>/tls (openssl) when
 *                               MVM_TLS_CERT/KEY are not given; clients trust <dataDir>/tls/server.crt
 *   MVM_TLS_RELOAD_SECONDS      how often the files are checked for a new certificate (default 5)
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { ServerKeyPair, type TlsLog } from './files.js';

export interface TlsConfig {
  certFile?: string;
  keyFile?: string;
  selfSigned: boolean;
  reloadMs: number;
}

export function loadTlsConfig(env: NodeJS.ProcessEnv = process.env): TlsConfig | undefined {
  const cert = env.MVM_TLS_CERT || undefined;
  const key = env.MVM_TLS_KEY || undefined;
  if ((cert === undefined) !== (key === undefined)) throw new Error('MVM_TLS_CERT and MVM_TLS_KEY go together: give both PEM files or neither');
  const selfSigned = env.MVM_TLS_SELF_SIGNED === '1' || env.MVM_TLS_SELF_SIGNED === 'true';
  if (!cert && !selfSigned) return undefined;
  const secs = env.MVM_TLS_RELOAD_SECONDS === undefined || env.MVM_TLS_RELOAD_SECONDS === '' ? 5 : Number(env.MVM_TLS_RELOAD_SECONDS);
  if (!Number.isFinite(secs) || secs < 0) throw new Error(`MVM_TLS_RELOAD_SECONDS must be a non-negative number of seconds, got ${JSON.stringify(env.MVM_TLS_RELOAD_SECONDS)}`);
  return { ...(cert ? { certFile: cert, keyFile: key! } : {}), selfSigned, reloadMs: Math.round(secs * 1000) };
}

/** Names a self-signed certificate covers: loopback, this host's name, and the listen address. */
function subjectAltNames(listenHost: string): string {
  const names = new Set(['DNS:localhost', 'IP:127.0.0.1', 'IP:::1', `DNS:${hostname()}`]);
  if (listenHost && listenHost !== '0.0.0.0' && listenHost !== '::') names.add(isIP(listenHost) ? `IP:${listenHost}` : `DNS:${listenHost}`);
  return [...names].join(',');
}

/**
 * A self-signed P-256 certificate and key in `dir` (server.crt, server.key), made with openssl
 * when missing or expiring within a day; kept across restarts so clients can keep trusting it.
 */
export function ensureSelfSigned(dir: string, listenHost: string): { certFile: string; keyFile: string } {
  const certFile = join(dir, 'server.crt');
  const keyFile = join(dir, 'server.key');
  if (existsSync(certFile) && existsSync(keyFile)) {
    const c = new X509Certificate(readFileSync(certFile));
    if (new Date(c.validTo).getTime() > Date.now() + 86_400_000) return { certFile, keyFile };
  }
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const tmpCert = `${certFile}.tmp`;
  const tmpKey = `${keyFile}.tmp`;
  try {
    execFileSync(
      'openssl',
      ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-sha256', '-days', '365', '-subj', '/CN=mvm self-signed (development)', '-addext', `subjectAltName=${subjectAltNames(listenHost)}`, '-keyout', tmpKey, '-out', tmpCert],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
  } catch (e) {
    rmSync(tmpCert, { force: true });
    rmSync(tmpKey, { force: true });
    throw new Error(`MVM_TLS_SELF_SIGNED: openssl could not make a certificate: ${(e as { stderr?: Buffer }).stderr?.toString().trim() || (e as Error).message}`);
  }
  renameSync(tmpKey, keyFile);
  renameSync(tmpCert, certFile);
  return { certFile, keyFile };
}

/** The server's key pair for the configuration (making the self-signed one if asked), or undefined for plain HTTP. */
export function openServerTls(cfg: TlsConfig | undefined, o: { dataDir: string; listenHost: string; log?: TlsLog }): ServerKeyPair | undefined {
  if (!cfg) return undefined;
  const files = cfg.certFile ? { certFile: cfg.certFile, keyFile: cfg.keyFile! } : ensureSelfSigned(join(o.dataDir, 'tls'), o.listenHost);
  return new ServerKeyPair(files.certFile, files.keyFile, { pollMs: cfg.reloadMs, ...(o.log ? { log: o.log } : {}) });
}
