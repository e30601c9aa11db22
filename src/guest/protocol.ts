/**
 * The mvm guest agent protocol (docs/guest-agent-protocol.md): constants and the JSON shapes of
 * requests, responses and events. The agent (images/guest/agent, Go) is the other side.
 */
import type { GuestExecRequest, GuestExecResult, GuestFileStat, GuestProcess, GuestUser as PortGuestUser } from '../core/ports/guest.js';

/** Frame kinds (byte 2 of the header). */
export const FrameKind = {
  HELLO: 1,
  REQUEST: 2,
  RESPONSE: 3,
  ERROR: 4,
  DATA: 5,
  EOF: 6,
  WINDOW: 7,
  CONTROL: 8,
  EVENT: 9,
  PING: 10,
  PONG: 11,
} as const;
export type FrameKindT = (typeof FrameKind)[keyof typeof FrameKind];

export const FRAME_KIND_NAMES: Record<number, string> = Object.fromEntries(Object.entries(FrameKind).map(([k, v]) => [v, k]));

/** Channels of DATA/EOF/WINDOW: 0 host → guest (stdin, upload), 1 stdout/download, 2 stderr. */
export const Channel = { IN: 0, OUT: 1, ERR: 2 } as const;
export type ChannelT = (typeof Channel)[keyof typeof Channel];

export const PROTOCOL_VERSION = 1;
export const HEADER_SIZE = 16;
/** Largest DATA chunk. */
export const MAX_DATA = 64 * 1024;
/** Largest payload of any frame (a DATA chunk plus its channel byte, with room to spare). */
export const MAX_PAYLOAD = MAX_DATA + 64;
/** Zero bytes a host writes before HELLO on a byte stream that outlives connections. */
export const SYNC_LEN = HEADER_SIZE + MAX_PAYLOAD;
/** Initial credit per stream, channel and direction unless HELLO announces another. */
export const DEFAULT_WINDOW = 256 * 1024;
/** The virtio-serial port name and vsock port the agent serves in a guest. */
export const VIRTIO_PORT_NAME = 'org.mvm.agent.0';
export const VSOCK_PORT = 1024;

/** Error codes of ERROR frames, plus the client's own (DISCONNECTED, TIMEOUT, RESET). */
export const AgentErrorCodes = [
  'ENOENT', 'EACCES', 'EPERM', 'EROFS', 'EISDIR', 'ENOTDIR', 'EEXIST', 'ENOTEMPTY', 'EINVAL', 'ENOSPC',
  'EXDEV', 'ELOOP', 'EBUSY', 'ESRCH', 'ECONNREFUSED', 'ETIMEDOUT', 'UNSUPPORTED', 'CANCELLED', 'PROTOCOL',
  'LIMIT', 'INTERNAL',
  // client side
  'DISCONNECTED', 'TIMEOUT', 'RESET',
] as const;
export type AgentErrorCode = (typeof AgentErrorCodes)[number];

/** The agent's HELLO answer. */
export interface AgentHello {
  agent: 'mvm-agent';
  version: string;
  build: string;
  protocol: number;
  bootId: string;
  pid: number;
  startedAt: string;
  /** serial | vsock | unix | stdio */
  transport: string;
  capabilities: string[];
  /** The agent's receive window (our initial credit on channel 0). */
  window: number;
  maxData: number;
  nonce?: string;
}

export interface HealthInfo {
  version: string;
  build: string;
  /** The guest's uptime (/proc/uptime). */
  uptimeSeconds: number;
  agentUptimeSeconds: number;
  bootId: string;
  hostname: string;
  pid: number;
  processes: { running: number; total: number };
}

/** A user of the guest's /etc/passwd: a name or a uid. Empty: root. */
export type GuestUser = PortGuestUser;

/**
 * An exec as the agent takes it: the port's request (cmd looked up in PATH of the merged env; env
 * merged over the defaults; cwd default the user's home; tty merges output on stdout; timeoutMs
 * kills the process group; stdin gives the process a pipe fed by the host) plus the
 * background-process fields.
 */
export interface ExecRequest extends GuestExecRequest {
  /** Internal: use startProcess(). */
  background?: boolean;
  tag?: string;
  /** Background only: output kept per channel (default 1 MiB, at most 16 MiB). */
  bufferBytes?: number;
}

/** How a command ended (the port's type: exitCode 128+n when signal n killed it). */
export type ExecResult = GuestExecResult;

export type ProcessInfo = GuestProcess;

export type FileType = 'file' | 'dir' | 'symlink' | 'fifo' | 'socket' | 'char' | 'block' | 'other';

export interface FileStat extends GuestFileStat {
  type: FileType;
}

export interface IdentityInterface {
  /** Default eth<index>. */
  name?: string;
  mac?: string;
  ip?: string;
  prefix?: number;
  gateway?: string;
  dns?: string[];
}

export interface IdentityRequest {
  hostname?: string;
  /** 32 hex digits (dashes allowed). */
  machineId?: string;
  interfaces?: IdentityInterface[];
  /** Wall clock to set (ms since the epoch). */
  timeMs?: number;
  /** Bytes to mix into (and credit to) the guest's RNG. */
  entropy?: Buffer;
}

export interface IdentityResult {
  applied: string[];
  skipped: string[];
}
