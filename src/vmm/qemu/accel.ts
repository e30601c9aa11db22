/**
 * Does KVM really boot a guest here? `/dev/kvm` existing is not enough (nested
 * PVM hosts hang a stock guest), so we boot the kernel once under KVM and look
 * for it reaching the end of kernel init on the serial console. The answer is
 * cached on disk, keyed by host kernel, QEMU version and guest kernel.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync, statSync, renameSync } from 'node:fs';
import { release } from 'node:os';
import { join } from 'node:path';

export type Accel = 'kvm' | 'tcg';

export interface ProbeResult {
  accel: Accel;
  reason: string;
  probedAt: string;
  key: string;
}

const memo = new Map<string, Promise<ProbeResult>>();

export async function qemuVersion(binary: string): Promise<string> {
  return new Promise((resolve) => {
    const p = spawn(binary, ['--version'], { stdio: ['ignore', 'pipe', 'ignore'] });
    let out = '';
    p.stdout.on('data', (d: Buffer) => (out += d.toString()));
    p.on('error', () => resolve('unknown'));
    p.on('close', () => {
      const m = /version ([^\s]+)/.exec(out);
      resolve(m ? m[1]! : 'unknown');
    });
  });
}

export async function probeAccel(opts: { binary: string; kernelPath: string; cacheDir: string; timeoutMs?: number; mode?: string }): Promise<ProbeResult> {
  const mode = opts.mode ?? 'auto';
  if (mode === 'tcg' || mode === 'kvm') {
    return { accel: mode, reason: `forced by MVM_ACCEL=${mode}`, probedAt: new Date().toISOString(), key: 'forced' };
  }
  const version = await qemuVersion(opts.binary);
  let kernelStamp = 'missing';
  try {
    const st = statSync(opts.kernelPath);
    kernelStamp = `${st.size}-${Math.floor(st.mtimeMs)}`;
  } catch {
    /* handled below */
  }
  const key = `${release()}|qemu-${version}|${kernelStamp}`;
  const cached = memo.get(key);
  if (cached) return cached;
  const p = doProbe(opts, key);
  memo.set(key, p);
  return p;
}

async function doProbe(opts: { binary: string; kernelPath: string; cacheDir: string; timeoutMs?: number }, key: string): Promise<ProbeResult> {
  const file = join(opts.cacheDir, 'accel-probe.json');
  try {
    const prev = JSON.parse(readFileSync(file, 'utf8')) as ProbeResult;
    if (prev.key === key) return prev;
  } catch {
    /* no cache yet */
  }
  const result = await bootProbe(opts, key);
  mkdirSync(opts.cacheDir, { recursive: true });
  writeFileSync(file + '.tmp', JSON.stringify(result, null, 2));
  renameSync(file + '.tmp', file);
  return result;
}

function bootProbe(opts: { binary: string; kernelPath: string; timeoutMs?: number }, key: string): Promise<ProbeResult> {
  const done = (accel: Accel, reason: string): ProbeResult => ({ accel, reason, probedAt: new Date().toISOString(), key });
  if (!existsSync('/dev/kvm')) return Promise.resolve(done('tcg', '/dev/kvm does not exist'));
  if (!existsSync(opts.kernelPath)) return Promise.resolve(done('tcg', `no kernel to probe with at ${opts.kernelPath}`));
  const timeoutMs = opts.timeoutMs ?? 10000;
  return new Promise((resolve) => {
    // No root device: a working KVM reaches "VFS: Unable to mount root fs" / panic
    // within a second or two; a broken one prints nothing.
    const args = [
      '-M', 'microvm,x-option-roms=off,isa-serial=on,rtc=on',
      '-accel', 'kvm', '-cpu', 'host', '-m', '128', '-smp', '1',
      '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot',
      '-kernel', opts.kernelPath,
      '-append', 'console=ttyS0 panic=-1 root=/dev/nonexistent rootwait=0',
      '-serial', 'stdio',
    ];
    const p = spawn(opts.binary, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let settled = false;
    const finish = (r: ProbeResult): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      p.kill('SIGKILL');
      resolve(r);
    };
    const timer = setTimeout(() => finish(done('tcg', `KVM probe boot printed nothing in ${timeoutMs} ms (nested/PVM KVM cannot boot guests)`)), timeoutMs);
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (/VFS: |Kernel panic|Run \/|Freeing unused kernel/.test(out)) finish(done('kvm', 'KVM probe boot reached the end of kernel init'));
    });
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('error', (e) => finish(done('tcg', `cannot run ${opts.binary}: ${e.message}`)));
    p.on('exit', () => setTimeout(() => finish(done('tcg', `KVM probe exited early: ${err.trim().split('\n')[0] ?? ''}`)), 50));
  });
}
