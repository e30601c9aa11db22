/**
 * Moving a QEMU migration stream between a file and QEMU without `exec:`.
 *
 * QEMU runs under `-sandbox on,spawn=deny` (it cannot fork `cat`), and 7.2 has
 * no `file:` migration URI. So the service process is the other end of a
 * `unix:` migration socket:
 *  - snapshot: we listen on a socket in the VM directory, QEMU `migrate`s to it,
 *    and we write what arrives to the state file;
 *  - restore: QEMU listens (`-incoming unix:<sock>`, created at start-up, before
 *    QEMU drops privileges), we connect and stream the state file into it.
 * No fd passing, no helper process, the sandbox stays on.
 */
import { chownSync, createReadStream, createWriteStream, fsyncSync, openSync, closeSync, rmSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { pipeline } from 'node:stream/promises';

/** Unix socket paths are limited to 107 bytes (sun_path). */
export const MAX_SOCKET_PATH = 107;

export interface StreamReceiver {
  /** Resolves with the bytes written once QEMU closed the stream and the file is on disk. */
  done: Promise<number>;
  close(): void;
}

/**
 * Listen on `sockPath` for one connection and write everything it sends to
 * `file`. `owner`: uid/gid that must be able to connect (QEMU after -runas).
 */
export async function receiveStream(sockPath: string, file: string, owner?: { uid: number; gid: number }): Promise<StreamReceiver> {
  rmSync(sockPath, { force: true });
  let server: Server | undefined;
  let conn: Socket | undefined;
  const done = new Promise<number>((resolve, reject) => {
    server = createServer({ allowHalfOpen: false }, (s) => {
      if (conn) {
        s.destroy(); // one stream only
        return;
      }
      conn = s;
      server?.close();
      const out = createWriteStream(file);
      pipeline(s, out)
        .then(() => {
          const fd = openSync(file, 'r');
          try {
            fsyncSync(fd);
          } finally {
            closeSync(fd);
          }
          resolve(out.bytesWritten);
        })
        .catch(reject);
    });
    server.on('error', reject);
  });
  done.catch(() => undefined);
  await new Promise<void>((res, rej) => {
    server!.once('error', rej);
    server!.listen(sockPath, () => {
      server!.off('error', rej);
      res();
    });
  });
  if (owner) chownSync(sockPath, owner.uid, owner.gid);
  return {
    done,
    close: () => {
      server?.close();
      conn?.destroy();
      rmSync(sockPath, { force: true });
    },
  };
}

/** Connect to QEMU's incoming migration socket and stream `file` into it. */
export async function sendStream(sockPath: string, file: string): Promise<number> {
  const sock = createConnection(sockPath);
  await new Promise<void>((res, rej) => {
    sock.once('connect', () => res());
    sock.once('error', rej);
  });
  const src = createReadStream(file, { highWaterMark: 1 << 20 });
  await pipeline(src, sock);
  return src.bytesRead;
}
