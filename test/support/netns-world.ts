/**
 * A private network world for network tests: every namespace is ours, named
 * with a per-run tag, and nothing has a route off the machine.
 *
 *   outside ns (10.250.0.2) --veth "up0"-- host ns (10.250.0.1, bridge tbr0 10.123.0.1/24)
 *                                              |  veth ports (CNI)
 *                                          VM netns <prefix><id>: eth0 <-tc-> tap0
 *                                              |  QEMU (no guest; a network hub)
 *                                          guest ns: gtap0 with the VM's IP and MAC
 *
 * The guest stand-in is QEMU itself, started with `wrapInNetns` exactly as the
 * agent starts a VMM: it opens the manager's tap and a second tap, joined by a
 * QEMU hub; the second tap is moved into a "guest" namespace that holds the
 * VM's address, so guest traffic takes the real tap + tc-redirect path.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { wrapInNetns, type NicAttachment } from '../../src/core/ports/network.js';
import { run, runOk, type RunResult } from '../../src/network/exec.js';

export const canRunNetns = (): { ok: boolean; why?: string } => {
  if (process.getuid?.() !== 0) return { ok: false, why: 'needs root' };
  for (const b of ['ip', 'tc', 'nft', 'nsenter']) if (spawnSync('sh', ['-c', `command -v ${b}`]).status !== 0) return { ok: false, why: `${b} missing` };
  if (!existsSync('/usr/lib/cni/bridge') && !existsSync('/opt/cni/bin/bridge')) return { ok: false, why: 'CNI plugins missing' };
  return { ok: true };
};

/** Remove namespaces left by earlier test runs that were killed (named mvmt<pid>…, pid gone). */
export function sweepDeadRuns(): void {
  if (!existsSync('/var/run/netns')) return;
  for (const n of readdirSync('/var/run/netns')) {
    const m = /^mvmt(\d+)[a-z0-9]*-/.exec(n);
    if (!m || Number(m[1]) === process.pid) continue;
    try {
      process.kill(Number(m[1]), 0);
    } catch {
      spawnSync('ip', ['netns', 'del', n]);
    }
  }
}

export const hasQemu = (): boolean => spawnSync('sh', ['-c', 'command -v qemu-system-x86_64']).status === 0;

const SERVER = `
const net = require('node:net');
const [port, reply] = process.argv.slice(1);
net.createServer((s) => { s.on('error', () => {}); s.end(reply); }).listen(Number(port), '0.0.0.0', () => console.log('ready'));
`;

const CLIENT = `
const net = require('node:net');
const [host, port, ms] = process.argv.slice(1);
let data = '';
const s = net.connect({ host, port: Number(port) });
const t = setTimeout(() => { console.log('TIMEOUT'); process.exit(0); }, Number(ms));
s.on('data', (d) => (data += d));
s.on('end', () => { clearTimeout(t); console.log('OK:' + data); process.exit(0); });
s.on('error', (e) => { clearTimeout(t); console.log('ERR:' + e.code); process.exit(0); });
`;

export interface Guest {
  name: string;
  ns: string;
  ip: string;
  qemu: ChildProcess;
}

export class NetnsWorld {
  readonly tag: string;
  readonly hostNs: string;
  readonly outsideNs: string;
  readonly netnsPrefix: string;
  readonly dataDir: string;
  readonly subnet = '10.123.0.0/24';
  readonly gateway = '10.123.0.1';
  readonly uplinkHostIp = '10.250.0.1';
  readonly outsideIp = '10.250.0.2';
  private readonly procs = new Set<ChildProcess>();
  private readonly extraNs = new Set<string>();
  private exitHook = (): void => this.cleanupSync();

  constructor(label = 'w') {
    this.tag = `mvmt${process.pid}${label}`;
    this.hostNs = `${this.tag}-host`;
    this.outsideNs = `${this.tag}-out`;
    this.netnsPrefix = `${this.tag}-vm-`;
    this.dataDir = mkdtempSync(join(tmpdir(), `${this.tag}-`));
  }

  networkConfig(): { name: string; bridge: string; subnet: string; gateway: string } {
    return { name: 'test', bridge: 'tbr0', subnet: this.subnet, gateway: this.gateway };
  }

  async start(): Promise<void> {
    process.on('exit', this.exitHook);
    for (const sig of ['SIGINT', 'SIGTERM'] as const) {
      process.once(sig, () => {
        this.cleanupSync();
        process.exit(130);
      });
    }
    sweepDeadRuns();
    for (const ns of [this.hostNs, this.outsideNs]) {
      await runOk('ip', ['netns', 'add', ns]);
      await runOk('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    }
    // The "outside world": one namespace reachable from the host namespace only.
    await runOk('ip', ['-n', this.hostNs, 'link', 'add', 'up0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', this.outsideNs]);
    await runOk('ip', ['-n', this.hostNs, 'addr', 'add', `${this.uplinkHostIp}/24`, 'dev', 'up0']);
    await runOk('ip', ['-n', this.hostNs, 'link', 'set', 'up0', 'up']);
    await runOk('ip', ['-n', this.outsideNs, 'addr', 'add', `${this.outsideIp}/24`, 'dev', 'eth0']);
    await runOk('ip', ['-n', this.outsideNs, 'link', 'set', 'eth0', 'up']);
    await runOk('ip', ['-n', this.outsideNs, 'route', 'add', 'default', 'via', this.uplinkHostIp]);
    await runOk('sysctl', ['-qw', 'net.ipv4.ip_forward=1'], { netns: this.hostNs });
    // Host-wide bridge netfilter off: the manager must switch it on per bridge itself.
    await runOk('sysctl', ['-qw', 'net.bridge.bridge-nf-call-iptables=0'], { netns: this.hostNs });
  }

  exec(ns: string, argv: string[], input?: string): Promise<RunResult> {
    return run(argv[0]!, argv.slice(1), { netns: ns, timeoutMs: 20_000, ...(input !== undefined ? { input } : {}) });
  }

  /** A TCP server in `ns` answering every connection with `reply`. */
  async serve(ns: string, port: number, reply: string): Promise<void> {
    const p = spawn('ip', ['netns', 'exec', ns, process.execPath, '-e', SERVER, String(port), reply], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.procs.add(p);
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`server in ${ns}:${port} did not start`)), 10_000);
      p.stdout!.on('data', (d: Buffer) => {
        if (d.toString().includes('ready')) {
          clearTimeout(t);
          resolve();
        }
      });
      p.on('exit', () => reject(new Error(`server in ${ns}:${port} exited`)));
    });
  }

  /** Connect from `ns`; "OK:<reply>", "TIMEOUT" (dropped) or "ERR:<code>" (e.g. ECONNREFUSED). */
  async tcp(ns: string, host: string, port: number, timeoutMs = 1200): Promise<string> {
    const r = await run(process.execPath, ['-e', CLIENT, host, String(port), String(timeoutMs)], { netns: ns, timeoutMs: timeoutMs + 10_000 });
    return r.stdout.trim();
  }

  /** Start the QEMU stand-in for a VM and give its guest namespace the VM's address. */
  async guest(name: string, atts: NicAttachment[]): Promise<Guest> {
    const a = atts[0]!;
    const ns = `${this.tag}-g-${name}`;
    const args = ['qemu-system-x86_64', '-M', 'none', '-nodefaults', '-display', 'none', '-monitor', 'none', '-serial', 'none'];
    atts.forEach((n, i) => {
      args.push(
        '-netdev', `tap,id=t${i},ifname=${n.tap},script=no,downscript=no`,
        '-netdev', `tap,id=g${i},ifname=g${n.tap},script=no,downscript=no`,
        '-netdev', `hubport,id=h${i}a,hubid=${i},netdev=t${i}`,
        '-netdev', `hubport,id=h${i}b,hubid=${i},netdev=g${i}`,
      );
    });
    const argv = wrapInNetns(a.netnsPath, args);
    const qemu = spawn(argv[0]!, argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    this.procs.add(qemu);
    let err = '';
    qemu.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    const deadline = Date.now() + 10_000;
    while ((await run('ip', ['-n', a.netns, 'link', 'show', `g${a.tap}`])).code !== 0) {
      if (qemu.exitCode !== null || Date.now() > deadline) throw new Error(`QEMU stand-in did not open its taps: ${err}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    this.extraNs.add(ns);
    await runOk('ip', ['netns', 'add', ns]);
    await runOk('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
    for (const [i, n] of atts.entries()) {
      const dev = `eth${i}`;
      await runOk('ip', ['-n', n.netns, 'link', 'set', `g${n.tap}`, 'netns', ns]);
      await runOk('ip', ['-n', ns, 'link', 'set', `g${n.tap}`, 'name', dev]);
      await runOk('ip', ['-n', ns, 'link', 'set', dev, 'address', n.mac]);
      await runOk('ip', ['-n', ns, 'addr', 'add', `${n.ip}/${n.prefix}`, 'dev', dev]);
      await runOk('ip', ['-n', ns, 'link', 'set', dev, 'up']);
      if (i === 0) await runOk('ip', ['-n', ns, 'route', 'add', 'default', 'via', n.gateway]);
    }
    return { name, ns, ip: a.ip, qemu };
  }

  async stopGuest(g: Guest): Promise<void> {
    g.qemu.kill('SIGKILL');
    this.procs.delete(g.qemu);
    await run('ip', ['netns', 'del', g.ns]);
    this.extraNs.delete(g.ns);
  }

  /** All namespaces of this run (ours by tag). */
  namespaces(): string[] {
    return existsSync('/var/run/netns') ? readdirSync("/var/run/netns").filter((n) => n.startsWith(`${this.tag}-`)) : [];
  }

  async cleanup(): Promise<void> {
    this.cleanupSync();
    process.off('exit', this.exitHook);
  }

  private cleanupSync(): void {
    for (const p of this.procs) {
      try {
        p.kill('SIGKILL');
      } catch {
        /* gone */
      }
    }
    this.procs.clear();
    for (const ns of this.namespaces()) spawnSync('ip', ['netns', 'del', ns]);
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}
