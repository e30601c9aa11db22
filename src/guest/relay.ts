/**
 * The node agent's relay (docs/guest-agent-protocol.md, "Cluster mode"): a remote client (the API
 * in cluster mode, over the node agent endpoint's WebSocket) speaks the guest agent protocol to
 * the node agent as if it were the guest, and its streams are carried over the one connection the
 * node agent holds to the VM's guest agent (GuestLink), which several remotes share.
 *
 * - HELLO is answered here, from the guest's HELLO of the shared connection (its version, bootId,
 *   capabilities, window), with the remote's nonce; a second HELLO resets the remote's session
 *   (its streams are cancelled in the guest), as the agent does. PING is answered here.
 * - Each REQUEST opens a stream of the shared connection under a new id; every later frame of
 *   the stream is passed on both ways with its id rewritten, payload unchanged. Credit windows
 *   are the remote's and the agent's own: the relay keeps no data. The agent's first credit on the
 *   output channels is the shared connection's window; a remote with a larger window is granted
 *   the difference at once, one with a smaller window is refused at HELLO (UNSUPPORTED).
 * - When the remote goes, its open streams are cancelled in the guest (foreground processes
 *   killed; background processes stay); other remotes' streams go on. When the shared connection
 *   goes (guest reboot, VM stopping), every remote of it is disconnected.
 */
import type { Duplex } from 'node:stream';
import { FrameDecoder, encodeFrame, encodeJSON, windowPayload, type Frame } from './codec.js';
import type { AgentConnection, RawStream } from './connection.js';
import { GuestAgentError } from './errors.js';
import { Channel, DEFAULT_WINDOW, FrameKind, PROTOCOL_VERSION } from './protocol.js';

const MIN_WINDOW = 64 * 1024;
const MAX_WINDOW = 16 * 1024 * 1024;

export interface RelayStats {
  /** Streams the remote opened. */
  opened: number;
  /** Streams cancelled in the guest because the remote went (or said HELLO again). */
  cancelled: number;
}

/** HELLO's `protocol`: a number, a list, or absent (protocol 1). */
function speaksOurs(p: unknown): boolean {
  if (p === undefined) return true;
  return Array.isArray(p) ? p.includes(PROTOCOL_VERSION) : p === PROTOCOL_VERSION;
}

/**
 * Serve one remote connection over `shared` until either ends; resolves (never rejects) with its
 * stats once the remote is gone and its streams were cancelled.
 */
export function relayGuestConnection(remote: Duplex, shared: AgentConnection): Promise<RelayStats> {
  const decoder = new FrameDecoder();
  const streams = new Map<number, RawStream>();
  const stats: RelayStats = { opened: 0, cancelled: 0 };
  let session = false;
  let window = DEFAULT_WINDOW;
  let over = false;

  const send = (buf: Buffer): void => {
    if (!over && !remote.destroyed) remote.write(buf);
  };
  const error = (stream: number, code: string, message: string): void => send(encodeJSON(FrameKind.ERROR, stream, { code, message }));
  const cancelAll = (): void => {
    for (const s of streams.values()) {
      if (s.done) continue;
      s.cancel();
      stats.cancelled++;
    }
    streams.clear();
  };

  const onHello = (f: Frame): void => {
    let body: { protocol?: unknown; window?: unknown; nonce?: unknown };
    try {
      body = JSON.parse(f.payload.toString('utf8')) as typeof body;
    } catch {
      return error(0, 'PROTOCOL', 'HELLO is not JSON');
    }
    if (!speaksOurs(body.protocol)) return error(0, 'UNSUPPORTED', `protocol ${JSON.stringify(body.protocol)} not supported; this agent speaks protocol ${PROTOCOL_VERSION}`);
    const w = typeof body.window === 'number' && body.window > 0 ? Math.min(Math.max(body.window, MIN_WINDOW), MAX_WINDOW) : DEFAULT_WINDOW;
    if (w < shared.window) return error(0, 'UNSUPPORTED', `a window of ${w} bytes is below the node agent's ${shared.window} (the relay keeps no data): ask for at least that`);
    cancelAll();
    window = w;
    session = true;
    const { nonce: _theirs, ...hello } = shared.hello;
    send(encodeJSON(FrameKind.HELLO, 0, { ...hello, ...(typeof body.nonce === 'string' ? { nonce: body.nonce } : {}) }));
  };

  const onRequest = (f: Frame): void => {
    const id = f.stream;
    if (streams.has(id)) return error(0, 'PROTOCOL', `REQUEST on stream ${id}, which is still open`);
    let s: RawStream;
    try {
      s = shared.openRaw(Buffer.from(f.payload), {
        frame: (g) => {
          if (g.kind === FrameKind.RESPONSE || g.kind === FrameKind.ERROR) streams.delete(id);
          send(encodeFrame(g.kind, id, g.payload));
        },
        fail: (err: GuestAgentError) => {
          streams.delete(id);
          error(id, err.agentCode, err.message);
        },
      });
    } catch (e) {
      const err = e instanceof GuestAgentError ? e : new GuestAgentError('INTERNAL', (e as Error).message);
      return error(id, err.agentCode, err.message);
    }
    streams.set(id, s);
    stats.opened++;
    // The agent's first credit on channels 1 and 2 is the shared connection's window; the remote expects its own.
    const more = window - shared.window;
    if (more > 0) {
      s.send(FrameKind.WINDOW, windowPayload(Channel.OUT, more));
      s.send(FrameKind.WINDOW, windowPayload(Channel.ERR, more));
    }
  };

  const dispatch = (f: Frame): void => {
    switch (f.kind) {
      case FrameKind.HELLO:
        return onHello(f);
      case FrameKind.PING:
        return send(encodeFrame(FrameKind.PONG, 0, f.payload));
    }
    if (f.stream === 0) return;
    if (!session) {
      if (f.kind === FrameKind.REQUEST) error(f.stream, 'PROTOCOL', 'no session: send HELLO first');
      return;
    }
    switch (f.kind) {
      case FrameKind.REQUEST:
        return onRequest(f);
      case FrameKind.DATA:
      case FrameKind.EOF:
      case FrameKind.WINDOW:
      case FrameKind.CONTROL:
        // A stream that already ended may still get frames in flight: dropped, as the agent does.
        streams.get(f.stream)?.send(f.kind, f.payload);
        return;
    }
  };

  return new Promise<RelayStats>((resolve) => {
    const end = (): void => {
      if (over) return;
      over = true;
      shared.removeListener('close', onSharedClose);
      cancelAll();
      remote.destroy();
      resolve(stats);
    };
    const onSharedClose = (): void => end();
    if (shared.isClosed) return end();
    shared.on('close', onSharedClose);
    remote.on('data', (chunk: Buffer) => {
      if (!over) for (const f of decoder.push(chunk)) dispatch(f);
    });
    remote.on('end', end);
    remote.on('close', end);
    remote.on('error', end);
  });
}
