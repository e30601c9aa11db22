/**
 * Frame encoding and decoding with resynchronisation (docs/guest-agent-protocol.md, "Frames").
 *
 *   0  2  magic "MV"      2 1 kind      3 1 flags (0)      4 4 stream id (BE)
 *   8  4  payload length (BE, ≤ MAX_PAYLOAD)               12 4 CRC-32 of bytes 0..11 + payload
 */
import * as zlib from 'node:zlib';
import { FrameKind, HEADER_SIZE, MAX_PAYLOAD } from './protocol.js';

export interface Frame {
  kind: number;
  flags: number;
  stream: number;
  payload: Buffer;
}

const CRC_TABLE = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88820 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

function crc32js(data: Uint8Array, crc = 0): number {
  let c = ~crc;
  for (let i = 0; i < data.length; i++) c = CRC_TABLE[(c ^ data[i]!) & 0xff]! ^ (c >>> 8);
  return ~c >>> 0;
}

/** CRC-32 (IEEE), continuing from crc. zlib.crc32 (Node ≥ 20.15) when there is one. */
export const crc32: (data: Uint8Array, crc?: number) => number =
  typeof (zlib as { crc32?: unknown }).crc32 === 'function'
    ? (data, crc = 0) => (zlib as unknown as { crc32(d: Uint8Array, v: number): number }).crc32(data, crc) >>> 0
    : crc32js;

/** The 16-byte header for a payload made of parts (the CRC covers them all). */
export function encodeHeader(kind: number, stream: number, parts: readonly Uint8Array[]): Buffer {
  let len = 0;
  for (const p of parts) len += p.length;
  if (len > MAX_PAYLOAD) throw new RangeError(`frame payload of ${len} bytes exceeds ${MAX_PAYLOAD}`);
  if (!Number.isInteger(stream) || stream < 0 || stream > 0xffffffff) throw new RangeError(`bad stream id ${stream}`);
  const h = Buffer.allocUnsafe(HEADER_SIZE);
  h[0] = 0x4d;
  h[1] = 0x56;
  h[2] = kind;
  h[3] = 0;
  h.writeUInt32BE(stream, 4);
  h.writeUInt32BE(len, 8);
  let c = crc32(h.subarray(0, 12));
  for (const p of parts) c = crc32(p, c);
  h.writeUInt32BE(c, 12);
  return h;
}

/** A complete frame in one buffer. */
export function encodeFrame(kind: number, stream: number, ...parts: Uint8Array[]): Buffer {
  return Buffer.concat([encodeHeader(kind, stream, parts), ...parts]);
}

export function encodeJSON(kind: number, stream: number, value: unknown): Buffer {
  return encodeFrame(kind, stream, Buffer.from(JSON.stringify(value)));
}

export function windowPayload(channel: number, increment: number): Buffer {
  const b = Buffer.allocUnsafe(5);
  b[0] = channel;
  b.writeUInt32BE(increment, 1);
  return b;
}

const MAX_KIND = FrameKind.PONG;

export interface DecoderStats {
  frames: number;
  skippedBytes: number;
  badCrc: number;
}

/**
 * Turns a byte stream into frames. Anything that is not a valid frame (bad magic, kind, flags,
 * length or CRC) is skipped up to the next magic, so garbage and partial frames never stall or
 * corrupt the stream for long. Payloads are views of the received buffers (no copy).
 */
export class FrameDecoder {
  readonly stats: DecoderStats = { frames: 0, skippedBytes: 0, badCrc: 0 };
  private chunks: Buffer[] = [];
  private total = 0;
  /** Bytes needed (from the first pending byte) before parsing can make progress. */
  private need = 1;

  push(chunk: Buffer): Frame[] {
    if (chunk.length === 0) return [];
    this.chunks.push(chunk);
    this.total += chunk.length;
    if (this.total < this.need) return [];
    const data = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.total);
    const frames: Frame[] = [];
    const off = this.parse(data, frames);
    const rest = data.subarray(off);
    this.chunks = rest.length ? [rest] : [];
    this.total = rest.length;
    return frames;
  }

  /** Drop buffered bytes. */
  reset(): void {
    this.chunks = [];
    this.total = 0;
    this.need = 1;
  }

  private parse(d: Buffer, out: Frame[]): number {
    let i = 0;
    this.need = 1;
    while (i < d.length) {
      if (d[i] !== 0x4d) {
        const j = d.indexOf(0x4d, i + 1);
        const to = j < 0 ? d.length : j;
        this.stats.skippedBytes += to - i;
        i = to;
        continue;
      }
      const left = d.length - i;
      if (left < 2) {
        this.need = 2;
        break;
      }
      if (d[i + 1] !== 0x56) {
        this.stats.skippedBytes++;
        i++;
        continue;
      }
      if (left < HEADER_SIZE) {
        this.need = HEADER_SIZE;
        break;
      }
      const kind = d[i + 2]!;
      const flags = d[i + 3]!;
      const len = d.readUInt32BE(i + 8);
      if (kind < 1 || kind > MAX_KIND || flags !== 0 || len > MAX_PAYLOAD) {
        this.stats.skippedBytes++;
        i++;
        continue;
      }
      if (left < HEADER_SIZE + len) {
        this.need = HEADER_SIZE + len;
        break;
      }
      const payload = d.subarray(i + HEADER_SIZE, i + HEADER_SIZE + len);
      if (crc32(payload, crc32(d.subarray(i, i + 12))) !== d.readUInt32BE(i + 12)) {
        this.stats.badCrc++;
        this.stats.skippedBytes++;
        i++;
        continue;
      }
      out.push({ kind, flags, stream: d.readUInt32BE(i + 4), payload });
      this.stats.frames++;
      i += HEADER_SIZE + len;
    }
    return i;
  }
}
