/**
 * Extract the uncompressed ELF `vmlinux` from an x86 bzImage.
 *
 * The setup header (Linux boot protocol >= 2.08) holds `setup_sects` at 0x1f1
 * and `payload_offset` / `payload_length` at 0x248 / 0x24c; the payload starts
 * at `(setup_sects + 1) * 512 + payload_offset` in the file. The kernel build
 * appends the decompressed size as a 4-byte little-endian trailer to every
 * compressed payload (`size_append`), which we strip before decompressing and
 * use to check the result.
 *
 * Compression is detected by magic: gzip (node:zlib), legacy or frame LZ4
 * (`lz4` CLI — Debian's cloud kernel), xz, zstd, bzip2, lzma and lzo (their CLIs
 * when installed). The result must start with the ELF magic.
 */
import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { pipeline } from 'node:stream/promises';
import { Readable } from 'node:stream';
import { createGunzip } from 'node:zlib';
import { basename, dirname, join } from 'node:path';

const ELF_MAGIC = Buffer.from([0x7f, 0x45, 0x4c, 0x46]);

type Format = 'gzip' | 'lz4-legacy' | 'lz4' | 'xz' | 'zstd' | 'bzip2' | 'lzma' | 'lzo';

interface Decompressor {
  format: Format;
  magic: number[];
  /** CLI + args reading the compressed stream on stdin and writing to stdout. */
  cli?: [string, ...string[]];
}

const DECOMPRESSORS: Decompressor[] = [
  { format: 'gzip', magic: [0x1f, 0x8b] },
  { format: 'lz4-legacy', magic: [0x02, 0x21, 0x4c, 0x18], cli: ['lz4', '-d', '-c'] },
  { format: 'lz4', magic: [0x04, 0x22, 0x4d, 0x18], cli: ['lz4', '-d', '-c'] },
  { format: 'xz', magic: [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00], cli: ['xz', '-d', '-c', '--single-stream'] },
  { format: 'zstd', magic: [0x28, 0xb5, 0x2f, 0xfd], cli: ['zstd', '-d', '-c', '-q'] },
  { format: 'bzip2', magic: [0x42, 0x5a, 0x68], cli: ['bzip2', '-d', '-c'] },
  { format: 'lzma', magic: [0x5d, 0x00, 0x00], cli: ['xz', '--format=lzma', '-d', '-c'] },
  { format: 'lzo', magic: [0x89, 0x4c, 0x5a, 0x4f], cli: ['lzop', '-d', '-c'] },
];

export class ExtractVmlinuxError extends Error {
  override readonly name = 'ExtractVmlinuxError';
}

export interface BzImagePayload {
  format: Format;
  /** Compressed payload without the 4-byte size trailer. */
  data: Buffer;
  /** Decompressed size announced by the trailer. */
  expectedSize: number;
}

/** Parse a bzImage and locate its compressed payload. */
export function parseBzImage(image: Buffer, name = 'bzImage'): BzImagePayload {
  if (image.length < 0x250) throw new ExtractVmlinuxError(`${name}: too small to be a bzImage`);
  if (image.subarray(0x202, 0x206).toString('latin1') !== 'HdrS') {
    throw new ExtractVmlinuxError(`${name}: no Linux boot setup header ("HdrS" at 0x202)`);
  }
  const version = image.readUInt16LE(0x206);
  if (version < 0x0208) {
    throw new ExtractVmlinuxError(`${name}: boot protocol ${version >> 8}.${version & 0xff} has no payload fields (need >= 2.08)`);
  }
  let setupSects = image[0x1f1] ?? 0;
  if (setupSects === 0) setupSects = 4;
  const payloadOffset = image.readUInt32LE(0x248);
  const payloadLength = image.readUInt32LE(0x24c);
  const start = (setupSects + 1) * 512 + payloadOffset;
  const end = start + payloadLength;
  if (payloadLength < 8 || end > image.length) {
    throw new ExtractVmlinuxError(`${name}: payload [${start}, ${end}) out of file bounds (${image.length} bytes)`);
  }
  const payload = image.subarray(start, end);
  const dec = DECOMPRESSORS.find((d) => d.magic.every((b, i) => payload[i] === b));
  if (!dec) {
    throw new ExtractVmlinuxError(`${name}: unknown payload compression (magic ${payload.subarray(0, 6).toString('hex')})`);
  }
  return {
    format: dec.format,
    data: payload.subarray(0, payload.length - 4),
    expectedSize: payload.readUInt32LE(payload.length - 4),
  };
}

function runDecompressor(cli: [string, ...string[]], format: Format, input: Buffer, outPath: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const out = createWriteStream(outPath);
    const [cmd, ...args] = cli;
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stderr = '';
    let spawnError: Error | undefined;
    child.stderr.on('data', (d: Buffer) => {
      if (stderr.length < 4096) stderr += d.toString();
    });
    child.on('error', (e: NodeJS.ErrnoException) => {
      spawnError =
        e.code === 'ENOENT'
          ? new ExtractVmlinuxError(`kernel payload is ${format}-compressed but the '${cmd}' tool is not installed`)
          : e;
    });
    child.stdin.on('error', () => undefined); // EPIPE if the tool dies early; reported via exit code
    const piped = pipeline(child.stdout, out);
    child.stdin.end(input);
    child.on('close', (code, signal) => {
      piped.then(
        () => {
          if (spawnError) reject(spawnError);
          else if (code !== 0) reject(new ExtractVmlinuxError(`'${cmd} ${args.join(' ')}' failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`));
          else resolve();
        },
        (e: unknown) => reject(spawnError ?? e),
      );
    });
  });
}

/**
 * Extract the ELF vmlinux inside `bzImagePath` to `outPath` (written atomically).
 * An input that already is an ELF file is copied as is.
 */
export async function extractVmlinux(bzImagePath: string, outPath: string): Promise<void> {
  const image = await readFile(bzImagePath);
  const tmp = join(dirname(outPath), `.${basename(outPath)}.${process.pid}.${Date.now()}.tmp`);
  try {
    if (image.subarray(0, 4).equals(ELF_MAGIC)) {
      await writeFile(tmp, image);
    } else {
      const payload = parseBzImage(image, bzImagePath);
      if (payload.format === 'gzip') {
        // gunzip stops at the end of the first member; the size trailer is already stripped.
        await pipeline(Readable.from([payload.data]), createGunzip(), createWriteStream(tmp));
      } else {
        const dec = DECOMPRESSORS.find((d) => d.format === payload.format);
        if (!dec?.cli) throw new ExtractVmlinuxError(`no decompressor for ${payload.format}`);
        await runDecompressor(dec.cli, payload.format, payload.data, tmp);
      }
      const size = (await stat(tmp)).size;
      if (size !== payload.expectedSize) {
        throw new ExtractVmlinuxError(
          `${bzImagePath}: decompressed ${payload.format} payload is ${size} bytes, header trailer says ${payload.expectedSize}`,
        );
      }
    }
    const fh = await open(tmp, 'r');
    try {
      const head = Buffer.alloc(4);
      await fh.read(head, 0, 4, 0);
      if (!head.equals(ELF_MAGIC)) {
        throw new ExtractVmlinuxError(`${bzImagePath}: decompressed payload is not an ELF file (starts with ${head.toString('hex')})`);
      }
    } finally {
      await fh.close();
    }
    await rename(tmp, outPath);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
}
