/**
 * The node agent's link to one VM's guest agent (docs/guest-agent-protocol.md): one connection
 * per VM, over the VMM's guest channel (QEMU's virtio-serial socket, which takes one client at a
 * time; Firecracker's hybrid vsock), shared by every call — the protocol multiplexes them. It is
 * made on first use, re-made after the connection drops (a guest reboot, an agent restart), and
 * closed with the VMM.
 */
import { ErrorCodes, MvmError } from '../core/errors.js';
import type { GuestChannel } from '../core/ports/vmm.js';
import { connectFirecrackerVsock, connectUnixSocket, type GuestAgentClient } from '../guest/index.js';
import { sleep } from '../vmm/proc.js';

export interface GuestLinkOptions {
  /** Names this host in the agent's log. */
  client?: string;
}

export class GuestLink {
  private client: GuestAgentClient | undefined;
  private connecting: Promise<GuestAgentClient> | undefined;
  private closed = false;

  constructor(
    readonly channel: GuestChannel,
    private readonly opts: GuestLinkOptions = {},
  ) {}

  /** The connected client, if there is one now (no waiting). */
  current(): GuestAgentClient | undefined {
    return this.client;
  }

  /**
   * The client, connecting once (HELLO within `helloTimeoutMs`). Rejects with UNAVAILABLE when the
   * guest agent does not answer: not booted yet, or an image without it.
   */
  get(helloTimeoutMs = 3000): Promise<GuestAgentClient> {
    if (this.closed) return Promise.reject(new MvmError(ErrorCodes.UNAVAILABLE, 'the VM is stopping: no guest agent'));
    if (this.client) return Promise.resolve(this.client);
    this.connecting ??= this.connect(helloTimeoutMs).finally(() => (this.connecting = undefined));
    return this.connecting;
  }

  /**
   * Keep trying until the agent answers or `deadline` (epoch ms) passes; `giveUp` ends the wait at
   * once on an answer that means no agent will come.
   */
  async waitReady(deadline: number, isAlive: () => boolean = () => true, giveUp: (e: Error) => boolean = () => false): Promise<GuestAgentClient> {
    let last: Error | undefined;
    while (!this.closed && isAlive()) {
      const left = deadline - Date.now();
      if (left <= 0) break;
      try {
        return await this.get(Math.min(3000, Math.max(250, left)));
      } catch (e) {
        last = e as Error;
        if (giveUp(last)) break;
        await sleep(Math.min(50, Math.max(0, deadline - Date.now())));
      }
    }
    throw new MvmError(ErrorCodes.UNAVAILABLE, `the guest agent did not answer${last ? `: ${last.message}` : ''}`, { cause: last });
  }

  private async connect(helloTimeoutMs: number): Promise<GuestAgentClient> {
    const base = { helloTimeoutMs, connectTimeoutMs: Math.min(helloTimeoutMs, 2000), client: this.opts.client ?? 'mvm-node-agent' };
    const c = this.channel.kind === 'unix' ? await connectUnixSocket(this.channel.path, base) : await connectFirecrackerVsock(this.channel.path, { ...base, port: this.channel.port });
    if (this.closed) {
      c.close();
      throw new MvmError(ErrorCodes.UNAVAILABLE, 'the VM is stopping');
    }
    this.client = c;
    void c.closed.then(() => {
      if (this.client === c) this.client = undefined;
    });
    return c;
  }

  close(): void {
    this.closed = true;
    this.client?.close();
    this.client = undefined;
  }
}
