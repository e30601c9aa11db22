/**
 * Observability units with hand-written fakes of the store and the agent:
 * collectors (net dev, cgroups), the history ring, the Prometheus exposition
 * (per-VM series, promtool's lint), boot-phase timing, reconcile hooks, the
 * event tailer, and the metrics-only listener.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EventEmitter } from 'node:events';
import { MvmError } from '../../src/core/errors.js';
import type { MicroVM } from '../../src/core/microvm.js';
import type { ActualVm, AgentEvent, NodeAgent, NodeInfo } from '../../src/core/ports/agent.js';
import type { ListOptions, Page, Store, StoreChange, VmEvent } from '../../src/core/ports/store.js';
import type { VmMetricsT } from '../../src/core/schema.js';
import { cgroupFigures, parseNetDev } from '../../src/observability/collectors.js';
import { EventTailer, lastSeq, tailEvents } from '../../src/observability/events.js';
import { MetricsHistory } from '../../src/observability/history.js';
import { Observability } from '../../src/observability/index.js';
import { startMetricsServer } from '../../src/observability/metrics-server.js';
import { unexpectedFindings } from '../support/promtool.js';

const tmp = mkdtempSync(join(tmpdir(), 'mvm-metrics-unit-'));
after(() => rmSync(tmp, { recursive: true, force: true }));

// ---- fakes ------------------------------------------------------------------------

function vm(id: string, name: string, phase: MicroVM['status']['phase'], tenant = 't1'): MicroVM {
  return {
    id,
    name,
    tenant,
    spec: { vcpu: 2, memory: '256Mi', labels: {} },
    desiredState: 'Running',
    status: { phase, conditions: [], node: 'n1', driver: 'qemu', accel: 'tcg' },
    generation: 1,
    resourceVersion: '1',
    createdAt: new Date().toISOString(),
    updatedAt: new Date().toISOString(),
  };
}

class FakeStore implements Store {
  vms = new Map<string, MicroVM>();
  events: VmEvent[] = [];
  private em = new EventEmitter();
  async createVm(v: MicroVM): Promise<MicroVM> {
    this.vms.set(v.id, v);
    this.em.emit('c', { kind: 'vm', id: v.id, deleted: false });
    return v;
  }
  async getVm(id: string): Promise<MicroVM | undefined> {
    return this.vms.get(id);
  }
  async listVms(_o?: ListOptions): Promise<Page<MicroVM>> {
    return { items: [...this.vms.values()] };
  }
  async updateVm(id: string, mutate: (vm: MicroVM) => MicroVM): Promise<MicroVM> {
    const next = mutate(structuredClone(this.vms.get(id)!));
    this.vms.set(id, next);
    this.em.emit('c', { kind: 'vm', id, deleted: false });
    return next;
  }
  async deleteVm(id: string): Promise<void> {
    this.vms.delete(id);
    this.em.emit('c', { kind: 'vm', id, deleted: true });
  }
  async appendEvent(e: VmEvent): Promise<void> {
    this.events.push({ ...e, seq: this.events.length + 1 });
  }
  async listEvents(o: { vmId?: string; tenant?: string; afterSeq?: number; limit?: number }): Promise<VmEvent[]> {
    return this.events
      .filter((e) => e.seq! > (o.afterSeq ?? 0) && (!o.vmId || e.vmId === o.vmId) && (!o.tenant || e.tenant === o.tenant))
      .slice(0, o.limit ?? 500);
  }
  watch(cb: (c: StoreChange) => void): () => void {
    this.em.on('c', cb);
    return () => this.em.off('c', cb);
  }
  async close(): Promise<void> {}
}

class FakeAgent implements NodeAgent {
  readonly nodeName = 'n1';
  boot = new Map<string, { vmm: number; guestReady: number }>();
  calls = 0;
  private em = new EventEmitter();
  async info(): Promise<NodeInfo> {
    return { name: 'n1', cpus: 2, memoryMiB: 1024, drivers: ['qemu'], accel: 'tcg', labels: {}, ready: true };
  }
  async start(): Promise<void> {}
  observe(id: string): ActualVm {
    const b = this.boot.get(id);
    return { id, state: 'running', ready: !!b?.guestReady, ...(b ? { bootMs: b } : {}) };
  }
  async known(): Promise<string[]> {
    return [];
  }
  async ensureRunning(v: MicroVM): Promise<ActualVm> {
    return this.observe(v.id);
  }
  async ensureStopped(): Promise<void> {}
  async ensureAbsent(): Promise<void> {}
  async pause(): Promise<void> {}
  async resume(): Promise<void> {}
  async snapshot(): Promise<{ sizeBytes: number; driver: string; durationMs: number }> {
    return { sizeBytes: 0, driver: 'fake', durationMs: 0 };
  }
  async deleteSnapshot(): Promise<void> {}
  consolePath(): string | undefined {
    return undefined;
  }
  async metrics(v: MicroVM): Promise<VmMetricsT> {
    this.calls++;
    return {
      id: v.id,
      phase: v.status.phase,
      timestamp: new Date().toISOString(),
      cpuSeconds: 12.5,
      memoryRssBytes: 200 * 2 ** 20,
      guestMemoryBytes: 256 * 2 ** 20,
      uptimeSeconds: 42,
      block: [{ device: 'root', readBytes: 4096, writeBytes: 512, readOps: 3, writeOps: 1 }],
      net: [{ device: 'tap0', rxBytes: 1000, txBytes: 2000, rxPackets: 10, txPackets: 20 }],
      bootMs: { vmm: 120, guestReady: 3400 },
    };
  }
  onEvent(cb: (e: AgentEvent) => void): () => void {
    this.em.on('e', cb);
    return () => this.em.off('e', cb);
  }
  emit(e: AgentEvent): void {
    this.em.emit('e', e);
  }
  async shutdown(): Promise<void> {}
}

// ---- collectors -------------------------------------------------------------------------

describe('collectors', () => {
  test('parseNetDev reads the tap counters from the guest side', () => {
    const text = [
      'Inter-|   Receive                                                |  Transmit',
      ' face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed',
      '    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0       0          0',
      '  eth0:    9000      90    0    0    0     0          0         0     8000      80    0    0    0     0       0          0',
      '  tap0:    1500      15    0    0    0     0          0         0     2500      25    0    0    0     0       0          0',
    ].join('\n');
    assert.deepEqual(parseNetDev(text, ['tap0']), [{ device: 'tap0', rxBytes: 2500, rxPackets: 25, txBytes: 1500, txPackets: 15 }]);
    assert.deepEqual(parseNetDev(text, []), [], 'no tap: no network figures (the namespace may be the host one)');
  });

  test('cgroupFigures reads v2 and v1 layouts', () => {
    const v2 = join(tmp, 'cg2');
    mkdirSync(join(v2, 'mvm', 'vm-a'), { recursive: true });
    writeFileSync(join(v2, 'mvm', 'vm-a', 'cpu.stat'), 'usage_usec 2500000\nuser_usec 2000000\n');
    writeFileSync(join(v2, 'mvm', 'vm-a', 'memory.current'), '1048576\n');
    writeFileSync(join(v2, 'mvm', 'vm-a', 'memory.max'), 'max\n');
    writeFileSync(join(v2, 'mvm', 'vm-a', 'pids.current'), '7\n');
    assert.deepEqual(cgroupFigures('vm-a', v2), { cpuSeconds: 2.5, memoryBytes: 1048576, pids: 7 });
    const v1 = join(tmp, 'cg1');
    mkdirSync(join(v1, 'cpuacct', 'mvm', 'vm-b'), { recursive: true });
    mkdirSync(join(v1, 'memory', 'mvm', 'vm-b'), { recursive: true });
    writeFileSync(join(v1, 'cpuacct', 'mvm', 'vm-b', 'cpuacct.usage'), '3000000000\n');
    writeFileSync(join(v1, 'memory', 'mvm', 'vm-b', 'memory.usage_in_bytes'), '2048\n');
    writeFileSync(join(v1, 'memory', 'mvm', 'vm-b', 'memory.limit_in_bytes'), '4096\n');
    assert.deepEqual(cgroupFigures('vm-b', v1), { cpuSeconds: 3, memoryBytes: 2048, memoryLimitBytes: 4096 });
    assert.deepEqual(cgroupFigures('vm-none', v1), {});
  });
});

// ---- history ----------------------------------------------------------------------------

describe('history', () => {
  const m = (t: number, cpu: number, rx: number): VmMetricsT => ({
    id: 'vm-h',
    phase: 'Running',
    timestamp: new Date(t).toISOString(),
    cpuSeconds: cpu,
    memoryRssBytes: 100,
    guestMemoryBytes: 128,
    uptimeSeconds: t / 1000,
    block: [{ device: 'root', readBytes: rx * 2, writeBytes: 0, readOps: 0, writeOps: 0 }],
    net: [{ device: 'tap0', rxBytes: rx, txBytes: 0, rxPackets: 0, txPackets: 0 }],
  });

  test('rates between samples, capacity, and a counter reset starts over', () => {
    const h = new MetricsHistory({ capacity: 3 });
    h.add(m(0, 0, 0));
    h.add(m(10_000, 1, 10_000)); // 10% CPU, 1000 B/s
    h.add(m(20_000, 6, 30_000)); // 50% CPU, 2000 B/s
    let p = h.points('vm-h');
    assert.equal(p.length, 3);
    assert.deepEqual(p.map((x) => x.cpuPercent), [null, 10, 50]);
    assert.deepEqual(p.map((x) => x.netRxBytesPerSec), [null, 1000, 2000]);
    assert.equal(p[2]!.blockReadBytesPerSec, 4000);
    h.add(m(30_000, 0.5, 0)); // VMM restarted: counters went down
    h.add(m(40_000, 1.5, 5000));
    p = h.points('vm-h');
    assert.equal(p.length, 3, 'capacity');
    assert.deepEqual(p.map((x) => x.cpuPercent), [50, null, 10]);
    h.retain(new Set());
    assert.deepEqual(h.points('vm-h'), []);
  });
});

// ---- exposition, hooks ------------------------------------------------------------------------

describe('Observability with fakes', () => {
  test('per-VM series carry id, name, tenant and node; deleted VMs disappear; promtool accepts the exposition', async () => {
    const store = new FakeStore();
    const agent = new FakeAgent();
    const obs = new Observability({ sampleIntervalMs: 0 });
    try {
      await store.createVm(vm('vm-1', 'alpha', 'Running'));
      await store.createVm(vm('vm-2', 'beta', 'Stopped'));
      obs.attachStore(store);
      obs.attachAgent(agent);
      const text = await obs.scrape();
      const lbl = 'id="vm-1",name="alpha",tenant="t1",node="n1"';
      assert.ok(text.includes(`microvm_cpu_seconds_total{${lbl}} 12.5`), text);
      assert.ok(text.includes(`microvm_memory_rss_bytes{${lbl}} 209715200`));
      assert.ok(text.includes(`microvm_guest_memory_bytes{${lbl}} 268435456`));
      assert.ok(text.includes(`microvm_block_read_bytes_total{${lbl},device="root"} 4096`));
      assert.ok(text.includes(`microvm_network_receive_bytes_total{${lbl},interface="tap0"} 1000`));
      assert.ok(text.includes(`microvm_network_transmit_packets_total{${lbl},interface="tap0"} 20`));
      assert.ok(text.includes(`microvm_uptime_seconds{${lbl}} 42`));
      assert.ok(text.includes(`microvm_info{${lbl},phase="Running",driver="qemu",accel="tcg",vcpus="2"} 1`));
      assert.ok(!text.includes('vm-2'), 'a stopped VM has no per-VM series');
      assert.ok(text.includes('microvm_service_microvm_count{status="Running"} 1'));
      assert.ok(text.includes('microvm_service_microvm_count{status="Stopped"} 1'));
      assert.ok(text.includes('process_cpu_seconds_total'), 'process collectors');
      assert.ok(text.includes('nodejs_eventloop_lag_seconds'), 'runtime collectors');
      assert.deepEqual(unexpectedFindings(text), []);
      // A scrape within the interval reuses the samples.
      const calls = agent.calls;
      await obs.scrape();
      assert.equal(agent.calls, calls);
      await store.deleteVm('vm-1');
      await obs.sampler!.sample();
      assert.ok(!(await obs.metrics.render()).includes('vm-1'));
      assert.deepEqual(obs.historyOf('vm-1'), []);
    } finally {
      await obs.close();
    }
  });

  test('boot phases are timed from the start request to VMM running and guest ready', async () => {
    const store = new FakeStore();
    const agent = new FakeAgent();
    const obs = new Observability({ sampleIntervalMs: 0, defaultCollectors: false });
    try {
      obs.attachStore(store);
      obs.attachAgent(agent);
      await store.createVm(vm('vm-b', 'b', 'Pending'));
      await new Promise((r) => setTimeout(r, 20));
      agent.boot.set('vm-b', { vmm: 5, guestReady: 0 });
      agent.emit({ id: 'vm-b', kind: 'started', message: '' });
      agent.boot.set('vm-b', { vmm: 5, guestReady: 505 });
      agent.emit({ id: 'vm-b', kind: 'ready', message: '' });
      const text = await obs.metrics.render();
      for (const phase of ['prepare', 'vmm', 'guest', 'total']) {
        assert.match(text, new RegExp(`microvm_service_boot_duration_seconds_count\\{phase="${phase}"\\} 1`), phase);
      }
      assert.match(text, /microvm_service_boot_duration_seconds_sum\{phase="guest"\} 0\.5\n/);
    } finally {
      await obs.close();
    }
  });

  test('reconcile hook: durations, results, errors by code, one ReconcileError event per distinct error', async () => {
    const store = new FakeStore();
    const obs = new Observability({ sampleIntervalMs: 0, defaultCollectors: false });
    try {
      obs.attachStore(store);
      await store.createVm(vm('vm-r', 'r', 'Starting'));
      await obs.reconcile('vm-r', 3, async () => undefined);
      for (let i = 0; i < 3; i++) {
        await assert.rejects(obs.reconcile('vm-r', 0, async () => Promise.reject(new MvmError('VMM_ERROR', 'qemu said no'))));
      }
      obs.schedulerDecision({ node: 'n1' });
      obs.schedulerDecision({});
      await obs.time('snapshot', async () => 1);
      await new Promise((r) => setTimeout(r, 20));
      const text = await obs.metrics.render();
      assert.match(text, /microvm_service_reconcile_total\{result="success"\} 1/);
      assert.match(text, /microvm_service_reconcile_total\{result="error"\} 3/);
      assert.match(text, /microvm_service_errors_total\{code="VMM_ERROR",source="reconcile"\} 3/);
      assert.match(text, /microvm_service_reconcile_queue_depth 0/);
      assert.match(text, /microvm_service_scheduler_decisions_total\{result="placed",node="n1"\} 1/);
      assert.match(text, /microvm_service_scheduler_decisions_total\{result="unschedulable",node=""\} 1/);
      assert.match(text, /microvm_service_operation_duration_seconds_count\{operation="snapshot",result="success"\} 1/);
      const evs = store.events.filter((e) => e.reason === 'ReconcileError');
      assert.equal(evs.length, 1);
      assert.equal(evs[0]!.type, 'Warning');
      assert.equal(evs[0]!.tenant, 't1');
      assert.match(evs[0]!.message, /VMM_ERROR: qemu said no/);
    } finally {
      await obs.close();
    }
  });

  test('the event tailer delivers new events once, in order, and counts them', async () => {
    const store = new FakeStore();
    for (let i = 0; i < 3; i++) await store.appendEvent({ vmId: 'old', tenant: 't', time: '', type: 'Normal', reason: 'Old', message: '' });
    assert.equal(await lastSeq(store), 3);
    assert.deepEqual((await tailEvents(store, {}, 2)).map((e) => e.seq), [2, 3]);
    const seen: number[] = [];
    const t = new EventTailer(store, { pollMs: 20 });
    await t.start();
    t.subscribe((e) => seen.push(e.seq!));
    await store.appendEvent({ vmId: 'a', tenant: 't', time: '', type: 'Normal', reason: 'New', message: '' });
    await store.appendEvent({ vmId: 'a', tenant: 't', time: '', type: 'Warning', reason: 'New', message: '' });
    await Promise.all([t.kick(), t.kick()]);
    await new Promise((r) => setTimeout(r, 60));
    t.stop();
    assert.deepEqual(seen, [4, 5]);
  });

  test('the metrics-only listener serves the exposition (and enforces its token)', async () => {
    const obs = new Observability({ sampleIntervalMs: 0, defaultCollectors: false });
    const srv = startMetricsServer(obs, '127.0.0.1:0', undefined, 'sekret');
    try {
      const { port } = await srv.address;
      assert.equal((await fetch(`http://127.0.0.1:${port}/metrics`)).status, 401);
      const ok = await fetch(`http://127.0.0.1:${port}/metrics`, { headers: { authorization: 'Bearer sekret' } });
      assert.equal(ok.status, 200);
      assert.match(ok.headers.get('content-type') ?? '', /text\/plain; version=0.0.4/);
      assert.match(await ok.text(), /microvm_service_reconcile_queue_depth/);
      assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
      assert.equal((await fetch(`http://127.0.0.1:${port}/other`)).status, 404);
    } finally {
      await srv.close();
      await obs.close();
    }
  });
});
