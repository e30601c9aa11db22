/**
 * A small QMP (QEMU Machine Protocol) client: newline-delimited JSON over a Unix
 * socket; greeting, `qmp_capabilities` negotiation, commands correlated by id,
 * asynchronous events. QEMU serves one QMP client per socket at a time, so
 * callers open a session, do their work, and close it.
 */
import { createConnection, type Socket } from 'node:net';
import { EventEmitter } from 'node:events';

export interface QmpEvent {
  event: string;
  data?: Record<string, unknown>;
  timestamp?: { seconds: number; microseconds: number };
}

export class QmpError extends Error {
  constructor(
    readonly qmpClass: string,
    readonly desc: string,
    readonly command: string,
  ) {
    super(`QMP ${command} failed: ${qmpClass}: ${desc}`);
    this.name = 'QmpError';
  }
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
  command: string;
}

export class QmpClient extends EventEmitter {
  private buf = '';
  private nextId = 1;
  private readonly pending = new Map<string, Pending>();
  private closed = false;
  greeting: Record<string, unknown> | undefined;

  private constructor(private readonly sock: Socket) {
    super();
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => this.onData(d));
    sock.on('close', () => this.onClose(new Error('QMP connection closed')));
    sock.on('error', (e) => this.onClose(e));
  }

  /** Connect, read the greeting and negotiate capabilities. */
  static async connect(path: string, timeoutMs = 5000): Promise<QmpClient> {
    const sock = createConnection(path);
    const client = new QmpClient(sock);
    const greeting = new Promise<Record<string, unknown>>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`QMP greeting timeout on ${path}`)), timeoutMs);
      client.once('greeting', (g: Record<string, unknown>) => {
        clearTimeout(timer);
        resolve(g);
      });
      client.once('closed', (e: Error) => {
        clearTimeout(timer);
        reject(e);
      });
    });
    try {
      client.greeting = await greeting;
      await client.execute('qmp_capabilities');
      return client;
    } catch (e) {
      client.close();
      throw e;
    }
  }

  /** Run one command in a short-lived session. */
  static async run<T = unknown>(path: string, command: string, args?: Record<string, unknown>, timeoutMs = 5000): Promise<T> {
    const c = await QmpClient.connect(path, timeoutMs);
    try {
      return await c.execute<T>(command, args, timeoutMs);
    } finally {
      c.close();
    }
  }

  execute<T = unknown>(command: string, args?: Record<string, unknown>, timeoutMs = 10000): Promise<T> {
    if (this.closed) return Promise.reject(new Error('QMP connection closed'));
    const id = String(this.nextId++);
    const msg: Record<string, unknown> = { execute: command, id };
    if (args) msg.arguments = args;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`QMP ${command} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        command,
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      this.sock.write(JSON.stringify(msg) + '\n');
    });
  }

  /** Wait for an event by name (e.g. MIGRATION, SHUTDOWN). */
  waitEvent(name: string, timeoutMs: number, pred: (e: QmpEvent) => boolean = () => true): Promise<QmpEvent> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.off('event', on);
        reject(new Error(`timed out waiting for QMP event ${name}`));
      }, timeoutMs);
      const on = (e: QmpEvent): void => {
        if (e.event === name && pred(e)) {
          clearTimeout(timer);
          this.off('event', on);
          resolve(e);
        }
      };
      this.on('event', on);
    });
  }

  close(): void {
    if (!this.closed) this.sock.destroy();
    this.onClose(new Error('QMP connection closed'));
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl).trim();
      this.buf = this.buf.slice(nl + 1);
      if (!line) continue;
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if ('QMP' in msg) {
        this.emit('greeting', msg.QMP);
      } else if ('event' in msg) {
        this.emit('event', msg as unknown as QmpEvent);
      } else if ('id' in msg) {
        const p = this.pending.get(String(msg.id));
        if (!p) continue;
        this.pending.delete(String(msg.id));
        if ('error' in msg) {
          const err = msg.error as { class: string; desc: string };
          p.reject(new QmpError(err.class, err.desc, p.command));
        } else {
          p.resolve(msg.return);
        }
      }
    }
  }

  private onClose(e: Error): void {
    if (this.closed) return;
    this.closed = true;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    this.emit('closed', e);
  }
}
