/**
 * TLS material from PEM files that can change under a running process (ADR 0026): certificates
 * rotate without a restart. Files are polled by `stat` (it follows symlinks, so a Kubernetes
 * Secret volume's `..data` swap and an atomic rename are both seen); a changed set is read,
 * checked, and only then handed to the listeners. A half-rotated pair (the certificate replaced,
 * the key not yet) fails the check and the previous pair stays until the second file lands.
 */
import { X509Certificate } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { createSecureContext } from 'node:tls';
import type { experimental } from '@grpc/grpc-js';

export type TlsLog = { warn(o: object, msg: string): void; info(o: object, msg: string): void };

const DEFAULT_POLL_MS = 5000;

/** A set of files read together and re-read when any of them changes. */
class PolledFiles {
  private sig: string;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly paths: string[],
    private readonly onChange: (contents: Buffer[]) => void,
    intervalMs: number,
  ) {
    this.sig = this.signature();
    if (intervalMs > 0) {
      this.timer = setInterval(() => this.poll(), intervalMs);
      this.timer.unref();
    }
  }

  private signature(): string {
    return this.paths
      .map((p) => {
        try {
          const s = statSync(p);
          return `${s.ino}:${s.size}:${s.mtimeMs}`;
        } catch {
          return 'missing';
        }
      })
      .join('|');
  }

  read(): Buffer[] {
    return this.paths.map((p) => readFileSync(p));
  }

  /** Re-read now if anything changed (also what the timer does). */
  poll(): void {
    const sig = this.signature();
    if (sig === this.sig) return;
    this.sig = sig;
    let contents: Buffer[];
    try {
      contents = this.read();
    } catch {
      return; // a file is missing mid-swap: the next change reads again
    }
    this.onChange(contents);
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}

export interface CertInfo {
  subject: string;
  fingerprint256: string;
  validTo: string;
}

/** What a certificate (the first of a PEM chain) is, for logs and tests. */
export function certInfo(pem: Buffer | string): CertInfo {
  const c = new X509Certificate(pem);
  return { subject: c.subject, fingerprint256: c.fingerprint256, validTo: c.validTo };
}

export interface KeyPair {
  cert: Buffer;
  key: Buffer;
}

/**
 * A server's certificate and key from two PEM files, reloaded when they change. `onChange`
 * listeners (the HTTPS server's `setSecureContext`, gRPC's certificate provider) see only pairs
 * that load: a certificate whose key does not match is refused and logged.
 */
export class ServerKeyPair {
  private pair: KeyPair;
  private readonly listeners = new Set<(p: KeyPair) => void>();
  private readonly files: PolledFiles;

  constructor(
    readonly certFile: string,
    readonly keyFile: string,
    private readonly o: { pollMs?: number; log?: TlsLog } = {},
  ) {
    this.files = new PolledFiles([certFile, keyFile], (c) => this.offer(c[0]!, c[1]!), o.pollMs ?? DEFAULT_POLL_MS);
    const [cert, key] = this.files.read();
    ServerKeyPair.check(cert!, key!, certFile, keyFile);
    this.pair = { cert: cert!, key: key! };
  }

  /** Throws naming the files when the pair does not load (a key of another certificate, not PEM). */
  static check(cert: Buffer, key: Buffer, certFile: string, keyFile: string): void {
    try {
      createSecureContext({ cert, key });
      new X509Certificate(cert);
    } catch (e) {
      throw new Error(`TLS certificate ${certFile} and key ${keyFile} do not load together: ${(e as Error).message}`);
    }
  }

  private offer(cert: Buffer, key: Buffer): void {
    try {
      ServerKeyPair.check(cert, key, this.certFile, this.keyFile);
    } catch (e) {
      this.o.log?.warn({ err: (e as Error).message }, 'TLS files changed but do not load; keeping the previous certificate');
      return;
    }
    if (cert.equals(this.pair.cert) && key.equals(this.pair.key)) return;
    this.pair = { cert, key };
    this.o.log?.info({ ...certInfo(cert) }, 'TLS certificate reloaded');
    for (const l of this.listeners) l(this.pair);
  }

  get current(): KeyPair {
    return this.pair;
  }

  onChange(l: (p: KeyPair) => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Check the files now (tests; the timer does it every `pollMs`). */
  poll(): void {
    this.files.poll();
  }

  /**
   * The pair as a grpc-js certificate provider: `experimental.createCertificateProviderServerCredentials`
   * swaps the HTTP/2 server's secure context on each update (grpc-js ≥ 1.10), no rebind needed.
   */
  grpcProvider(): experimental.CertificateProvider {
    const identity = new Map<experimental.IdentityCertificateUpdateListener, () => void>();
    return {
      addCaCertificateListener: () => undefined,
      removeCaCertificateListener: () => undefined,
      addIdentityCertificateListener: (l) => {
        // Asynchronously, as grpc-js's own providers do: the server registers its watcher after this call returns.
        process.nextTick(() => {
          if (identity.has(l)) l({ certificate: this.pair.cert, privateKey: this.pair.key });
        });
        identity.set(
          l,
          this.onChange((p) => l({ certificate: p.cert, privateKey: p.key })),
        );
      },
      removeIdentityCertificateListener: (l) => {
        identity.get(l)?.();
        identity.delete(l);
      },
    };
  }

  close(): void {
    this.files.close();
    this.listeners.clear();
  }
}

/** A CA bundle (PEM) from a file, re-read when it changes: what clients trust. */
export class CaBundle {
  private pem: Buffer;
  private readonly files: PolledFiles;

  constructor(
    readonly file: string,
    o: { pollMs?: number; log?: TlsLog } = {},
  ) {
    this.files = new PolledFiles(
      [file],
      (c) => {
        try {
          new X509Certificate(c[0]!);
        } catch (e) {
          o.log?.warn({ file, err: (e as Error).message }, 'CA bundle changed but does not parse; keeping the previous one');
          return;
        }
        this.pem = c[0]!;
        o.log?.info({ file, ...certInfo(this.pem) }, 'CA bundle reloaded');
      },
      o.pollMs ?? DEFAULT_POLL_MS,
    );
    this.pem = this.files.read()[0]!;
    new X509Certificate(this.pem);
  }

  get current(): Buffer {
    return this.pem;
  }

  close(): void {
    this.files.close();
  }
}
