/**
 * Opening the channels the service reaches a guest agent on:
 *  - QEMU: the Unix socket of the virtio-serial port's chardev (`-chardev socket,path=...,server=on,wait=off`),
 *    a byte stream that outlives connections, so HELLO is preceded by the resync preamble;
 *  - Firecracker: its hybrid vsock Unix socket, where `CONNECT <port>\n` is answered `OK <port>\n`;
 *  - tests: the agent's own `--listen unix:PATH`.
 */
import * as net from 'node:net';
import { GuestAgentClient, type ClientOptions } from './client.js';
import { GuestAgentError } from './errors.js';
import { VSOCK_PORT } from './protocol.js';

export interface SocketOptions {
  /** Time to connect the socket (and for Firecracker, to get the OK line). Default 5 s. */
  connectTimeoutMs?: number;
}

/** A connected Unix socket. */
export function openUnixSocket(path: string, timeoutMs = 5_000): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ path });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new GuestAgentError('TIMEOUT', `connecting to ${path} took more than ${timeoutMs} ms`));
    }, timeoutMs);
    sock.once('connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      resolve(sock);
    });
    sock.once('error', (e) => {
      clearTimeout(timer);
      reject(new GuestAgentError('DISCONNECTED', `cannot connect to ${path}: ${e.message}`, { cause: e }));
    });
  });
}

/** Connect to an agent over a Unix socket (QEMU's virtio-serial chardev, or the agent's --listen). */
export async function connectUnixSocket(path: string, opts: ClientOptions & SocketOptions = {}): Promise<GuestAgentClient> {
  const sock = await openUnixSocket(path, opts.connectTimeoutMs);
  return GuestAgentClient.connect(sock, opts);
}

/**
 * Firecracker's hybrid vsock handshake on a connected socket: write `CONNECT <port>\n`, read
 * `OK <hostPort>\n`. Bytes after the line are put back for the protocol.
 */
export function firecrackerVsockHandshake(sock: net.Socket, port = VSOCK_PORT, timeoutMs = 5_000): Promise<number> {
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const done = (err: Error | null, hostPort = 0) => {
      clearTimeout(timer);
      sock.removeListener('data', onData);
      sock.removeListener('end', onEnd);
      sock.removeListener('error', onError);
      if (err) {
        sock.destroy();
        reject(err);
      } else resolve(hostPort);
    };
    const onData = (chunk: Buffer) => {
      buf = Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0) {
        if (buf.length > 128) done(new GuestAgentError('PROTOCOL', `Firecracker vsock: no line in ${JSON.stringify(buf.toString('latin1').slice(0, 64))}`));
        return;
      }
      const line = buf.subarray(0, nl).toString('latin1').trim();
      const rest = buf.subarray(nl + 1);
      const m = /^OK (\d+)$/.exec(line);
      if (!m) return done(new GuestAgentError('DISCONNECTED', `Firecracker vsock: CONNECT ${port} answered ${JSON.stringify(line)}`));
      sock.pause();
      if (rest.length) sock.unshift(rest);
      done(null, Number(m[1]));
    };
    const onEnd = () => done(new GuestAgentError('DISCONNECTED', `Firecracker vsock: nothing listens on guest port ${port} (is the agent running?)`));
    const onError = (e: Error) => done(new GuestAgentError('DISCONNECTED', `Firecracker vsock: ${e.message}`, { cause: e }));
    const timer = setTimeout(() => done(new GuestAgentError('TIMEOUT', `Firecracker vsock: no answer to CONNECT ${port} within ${timeoutMs} ms`)), timeoutMs);
    sock.on('data', onData);
    sock.once('end', onEnd);
    sock.once('error', onError);
    sock.write(`CONNECT ${port}\n`);
  });
}

/** Connect to an agent through Firecracker's hybrid vsock socket (uds_path of the vsock device). */
export async function connectFirecrackerVsock(udsPath: string, opts: ClientOptions & SocketOptions & { port?: number } = {}): Promise<GuestAgentClient> {
  const sock = await openUnixSocket(udsPath, opts.connectTimeoutMs);
  await firecrackerVsockHandshake(sock, opts.port ?? VSOCK_PORT, opts.connectTimeoutMs);
  // A vsock connection is fresh: no partial frame of an earlier host can be on it.
  return GuestAgentClient.connect(sock, { resync: false, ...opts });
}
