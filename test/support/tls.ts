/**
 * Certificates for the TLS tests, made with the openssl CLI: a CA, and server certificates it
 * signs for given names (SANs). Everything lives in one temporary directory.
 */
import { execFileSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface Issued {
  cert: string;
  key: string;
  fingerprint256: string;
}

const openssl = (args: string[], input?: string): string => execFileSync('openssl', args, { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], ...(input !== undefined ? { input } : {}) });

export class TestPki {
  readonly dir = mkdtempSync(join(tmpdir(), 'mvm-pki-'));
  private n = 0;

  /** A new self-signed CA: its certificate and key files. */
  ca(name: string): { cert: string; key: string } {
    const cert = join(this.dir, `${name}.crt`);
    const key = join(this.dir, `${name}.key`);
    openssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-sha256', '-days', '2', '-subj', `/CN=${name}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign', '-keyout', key, '-out', cert]);
    return { cert, key };
  }

  /** A server certificate signed by `ca` for `sans` (e.g. ["IP:127.0.0.1", "DNS:localhost"]), in fresh files. */
  issue(ca: { cert: string; key: string }, cn: string, sans: string[]): Issued {
    const i = ++this.n;
    const key = join(this.dir, `srv${i}.key`);
    const csr = join(this.dir, `srv${i}.csr`);
    const cert = join(this.dir, `srv${i}.crt`);
    const ext = join(this.dir, `srv${i}.ext`);
    openssl(['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-subj', `/CN=${cn}`, '-keyout', key, '-out', csr]);
    writeFileSync(ext, `subjectAltName=${sans.join(',')}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n`);
    openssl(['x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-days', '2', '-sha256', '-extfile', ext, '-out', cert]);
    return { cert, key, fingerprint256: new X509Certificate(readFileSync(cert)).fingerprint256 };
  }

  /** Copy `from`'s file over `to` atomically (write a temporary file, rename), as a rotation does. */
  static replace(from: string, to: string): void {
    writeFileSync(`${to}.new`, readFileSync(from));
    renameSync(`${to}.new`, to);
  }

  cleanup(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }
}
