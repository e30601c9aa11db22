/**
 * Pulling OCI images with skopeo: resolve a reference to its manifest digest
 * (`skopeo inspect --raw`, one manifest GET, no layers), copy the image by
 * digest into an OCI layout, and read its config (Entrypoint/Cmd/Env/...).
 *
 * TLS verification is disabled only for loopback registries and for the
 * registries listed in `insecureRegistries`. Credentials go through a 0600
 * temporary auth file (never on the command line, so they stay out of `ps`).
 */
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ErrorCodes, MvmError } from '../../core/errors.js';
import { type ImageReference, isLoopbackRegistry, skopeoRef } from './reference.js';

export interface RegistryCredentials {
  username: string;
  password: string;
}

export interface PullOptions {
  /** Credentials per registry host[:port] (or one set for every registry). */
  credentials?: RegistryCredentials | Record<string, RegistryCredentials>;
  /** Registries (host[:port]) reached without TLS verification besides loopback ones. */
  insecureRegistries?: readonly string[];
  /** Per skopeo command (default 10 min for copies, 60 s for inspects). */
  timeoutMs?: number;
  log?: (msg: string) => void;
}

export type PullFailure = 'not_found' | 'unauthorized' | 'unreachable' | 'failed';

/** The process spec of an image (OCI image config `config` section). */
export interface ImageProcessConfig {
  entrypoint: string[];
  cmd: string[];
  env: string[];
  workingDir: string;
  user: string;
}

export interface PulledImage {
  /** The OCI layout directory (`oci:<dir>:<tag>`). */
  layoutDir: string;
  layoutTag: string;
  /** Digest of the image manifest (the platform manifest for an index). */
  manifestDigest: string;
  configDigest: string;
  config: ImageProcessConfig;
  /** The image config's `Labels`. */
  labels: Record<string, string>;
  architecture?: string;
  os?: string;
}

const ociError = (reason: PullFailure, message: string, ref: ImageReference | undefined, cause?: unknown): MvmError =>
  new MvmError(reason === 'unreachable' ? ErrorCodes.UNAVAILABLE : ErrorCodes.IMAGE_ERROR, message, {
    details: { reason, ...(ref ? { image: ref.canonical, registry: ref.registry } : {}) },
    ...(cause !== undefined ? { cause } : {}),
  });

/** Classify a skopeo failure from its stderr. */
export function classifySkopeoError(stderr: string): PullFailure {
  const s = stderr.toLowerCase();
  if (/unauthorized|authentication required|\b401\b|invalid username\/password|access.*denied|denied:|forbidden|\b403\b/.test(s)) return 'unauthorized';
  if (/manifest unknown|name unknown|not found|\b404\b|blob unknown/.test(s)) return 'not_found';
  if (/connection refused|no such host|i\/o timeout|network is unreachable|no route to host|timeout|tls handshake|\beof\b|dial tcp|server gave http response/.test(s)) {
    return 'unreachable';
  }
  return 'failed';
}

function credsFor(ref: ImageReference, c: PullOptions['credentials']): RegistryCredentials | undefined {
  if (!c) return undefined;
  if ('username' in c && typeof c.username === 'string' && 'password' in c) return c as RegistryCredentials;
  return (c as Record<string, RegistryCredentials>)[ref.registry];
}

interface RunResult {
  stdout: Buffer;
  stderr: string;
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { encoding: 'buffer', maxBuffer: 64 << 20, timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      const se = stderr.toString('utf8');
      if (err) {
        Object.assign(err, { stderr: se });
        reject(err as Error);
      } else resolve({ stdout, stderr: se });
    });
  });
}

/** Common skopeo flags (auth file, TLS, policy) for one reference; returns a cleanup. */
async function skopeoContext(
  ref: ImageReference,
  opts: PullOptions,
  side: 'src' | 'plain',
): Promise<{ args: string[]; globalArgs: string[]; cleanup: () => Promise<void> }> {
  const args: string[] = [];
  const globalArgs: string[] = [];
  let dir: string | undefined;
  const creds = credsFor(ref, opts.credentials);
  if (creds) {
    dir = await mkdtemp(join(tmpdir(), 'mvm-skopeo-'));
    const authfile = join(dir, 'auth.json');
    const auth = Buffer.from(`${creds.username}:${creds.password}`).toString('base64');
    await writeFile(authfile, JSON.stringify({ auths: { [ref.registry]: { auth } } }), { mode: 0o600 });
    args.push(side === 'src' ? '--src-authfile' : '--authfile', authfile);
  } else {
    args.push(side === 'src' ? '--src-no-creds' : '--no-creds');
  }
  const insecure = isLoopbackRegistry(ref.registry) || (opts.insecureRegistries ?? []).includes(ref.registry);
  args.push(side === 'src' ? `--src-tls-verify=${!insecure}` : `--tls-verify=${!insecure}`);
  // Without a system signature policy, accept unsigned images (we pin digests instead).
  if (!existsSync('/etc/containers/policy.json')) globalArgs.push('--insecure-policy');
  return { args, globalArgs, cleanup: async () => (dir ? rm(dir, { recursive: true, force: true }) : undefined) };
}

async function skopeo(ref: ImageReference, opts: PullOptions, what: string, build: (ctx: { args: string[]; globalArgs: string[] }) => string[], timeoutMs: number): Promise<RunResult> {
  const ctx = await skopeoContext(ref, opts, what === 'copy' ? 'src' : 'plain');
  try {
    return await run('skopeo', build(ctx), timeoutMs);
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { stderr?: string; killed?: boolean };
    if (err.code === 'ENOENT') throw new MvmError(ErrorCodes.IMAGE_ERROR, 'skopeo not found: install skopeo (run `make deps`)', { cause: e });
    if (err.killed) throw ociError('unreachable', `pulling ${ref.canonical}: skopeo ${what} timed out after ${timeoutMs} ms`, ref, e);
    const stderr = (err.stderr ?? err.message).trim();
    const reason = classifySkopeoError(stderr);
    const last = stderr.split('\n').filter(Boolean).at(-1) ?? '';
    const short = (/msg="((?:[^"\\]|\\.)*)"/.exec(last)?.[1]?.replace(/\\"/g, '"') ?? last).slice(0, 400);
    const msg =
      reason === 'not_found'
        ? `image ${ref.canonical} not found in registry ${ref.registry}`
        : reason === 'unauthorized'
          ? `registry ${ref.registry} refused access to ${ref.canonical}: authentication failed or credentials required`
          : reason === 'unreachable'
            ? `registry ${ref.registry} is unreachable`
            : `pulling ${ref.canonical} failed`;
    throw ociError(reason, `${msg} (skopeo ${what}: ${short})`, ref, e);
  } finally {
    await ctx.cleanup();
  }
}

export const sha256Hex = (b: Buffer | string): string => createHash('sha256').update(b).digest('hex');

/**
 * The digest the reference points to (the manifest, or the index of a
 * multi-platform image). A reference with a digest is returned as is, with no
 * network access.
 */
export async function resolveDigest(ref: ImageReference, opts: PullOptions = {}): Promise<string> {
  if (ref.digest) return ref.digest;
  const { stdout } = await skopeo(
    ref,
    opts,
    'inspect',
    (c) => [...c.globalArgs, 'inspect', '--raw', ...c.args, '--retry-times', '0', skopeoRef(ref)],
    opts.timeoutMs ?? 60_000,
  );
  if (stdout.length === 0) throw ociError('failed', `registry ${ref.registry} returned an empty manifest for ${ref.canonical}`, ref);
  return `sha256:${sha256Hex(stdout)}`;
}

interface OciDescriptor {
  mediaType?: string;
  digest: string;
  size?: number;
  annotations?: Record<string, string>;
  platform?: { architecture?: string; os?: string };
}

async function readBlob(layoutDir: string, digest: string): Promise<Buffer> {
  const [alg, hex] = digest.split(':');
  if (!alg || !hex || !/^[0-9a-f]+$/.test(hex)) throw new MvmError(ErrorCodes.IMAGE_ERROR, `bad digest ${digest} in the OCI layout`);
  return readFile(join(layoutDir, 'blobs', alg, hex));
}

const strArray = (v: unknown): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : []);

/** Read the manifest and the process config of an image in an OCI layout. */
export async function readLayoutImage(layoutDir: string, layoutTag: string): Promise<Omit<PulledImage, 'layoutDir' | 'layoutTag'>> {
  const index = JSON.parse(await readFile(join(layoutDir, 'index.json'), 'utf8')) as { manifests?: OciDescriptor[] };
  const manifests = index.manifests ?? [];
  const desc = manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === layoutTag) ?? manifests[0];
  if (!desc) throw new MvmError(ErrorCodes.IMAGE_ERROR, `OCI layout ${layoutDir} holds no image`);
  const manifest = JSON.parse((await readBlob(layoutDir, desc.digest)).toString('utf8')) as { config?: OciDescriptor; layers?: OciDescriptor[] };
  if (!manifest.config) throw new MvmError(ErrorCodes.IMAGE_ERROR, `manifest ${desc.digest} has no config (an index? unsupported media type ${desc.mediaType ?? '?'})`);
  const cfg = JSON.parse((await readBlob(layoutDir, manifest.config.digest)).toString('utf8')) as {
    architecture?: string;
    os?: string;
    config?: { Entrypoint?: unknown; Cmd?: unknown; Env?: unknown; WorkingDir?: unknown; User?: unknown; Labels?: unknown };
  };
  const c = cfg.config ?? {};
  return {
    manifestDigest: desc.digest,
    configDigest: manifest.config.digest,
    config: {
      entrypoint: strArray(c.Entrypoint),
      cmd: strArray(c.Cmd),
      env: strArray(c.Env),
      workingDir: typeof c.WorkingDir === 'string' ? c.WorkingDir : '',
      user: typeof c.User === 'string' ? c.User : '',
    },
    labels:
      c.Labels && typeof c.Labels === 'object'
        ? Object.fromEntries(Object.entries(c.Labels as Record<string, unknown>).filter((kv): kv is [string, string] => typeof kv[1] === 'string'))
        : {},
    ...(cfg.architecture ? { architecture: cfg.architecture } : {}),
    ...(cfg.os ? { os: cfg.os } : {}),
  };
}

/**
 * Copy the image (by digest when given, so it matches a resolved digest) into
 * the OCI layout `layoutDir` (created) under tag `image`.
 */
export async function pullImage(ref: ImageReference, layoutDir: string, opts: PullOptions & { digest?: string } = {}): Promise<PulledImage> {
  const layoutTag = 'image';
  const src = skopeoRef(ref, opts.digest);
  opts.log?.(`pulling ${src}`);
  await skopeo(
    ref,
    opts,
    'copy',
    (c) => [...c.globalArgs, 'copy', '--quiet', ...c.args, '--retry-times', '0', src, `oci:${layoutDir}:${layoutTag}`],
    opts.timeoutMs ?? 600_000,
  );
  return { layoutDir, layoutTag, ...(await readLayoutImage(layoutDir, layoutTag)) };
}

/**
 * Copy the artifact at `tag` of the reference's repository (a cosign `sha256-<hex>.sig`
 * attachment: a manifest and a few small blobs) into an OCI layout; false when the registry has no
 * such tag. Same credentials and TLS rules as the image.
 */
export async function pullSignatureArtifact(ref: ImageReference, tag: string, layoutDir: string, opts: PullOptions = {}): Promise<boolean> {
  const src = `docker://${ref.registry}/${ref.repository}:${tag}`;
  try {
    await skopeo(ref, opts, 'copy', (c) => [...c.globalArgs, 'copy', '--quiet', ...c.args, '--retry-times', '0', src, `oci:${layoutDir}:sig`], opts.timeoutMs ?? 60_000);
    return true;
  } catch (e) {
    if (e instanceof MvmError && e.details.reason === 'not_found') return false;
    throw e;
  }
}

export const randomSuffix = (): string => randomBytes(4).toString('hex');
