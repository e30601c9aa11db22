/**
 * The service's Prometheus registry: process and Node.js runtime collectors,
 * service-level instruments (API, reconcile, scheduler, boot phases, snapshot,
 * image pipeline, errors, events) and the per-VM series rendered from the
 * latest samples of the VM sampler. Names follow Prometheus conventions
 * (`_total` counters, `_seconds`/`_bytes` units); see docs/adr/0012-observability.md.
 */
import client, { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { PHASES } from '../core/microvm.js';
import type { VmSample } from './vm-sampler.js';

export const SERVICE_PREFIX = 'microvm_service_';

/** Label names every per-VM series carries. */
export const VM_LABELS = ['id', 'name', 'tenant', 'node'] as const;

const BOOT_BUCKETS = [0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120];
const HTTP_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
const OP_BUCKETS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

export type TimedOperation = 'snapshot' | 'restore' | 'image_pull' | 'image_build';

export class ServiceMetrics {
  readonly registry: Registry;
  readonly httpDuration: Histogram<'method' | 'route' | 'status_code'>;
  readonly reconcileDuration: Histogram<'result'>;
  readonly reconcileTotal: Counter<'result'>;
  readonly reconcileQueueDepth: Gauge;
  readonly reconcileInFlight: Gauge;
  readonly schedulerDecisions: Counter<'result' | 'node'>;
  readonly bootDuration: Histogram<'phase'>;
  readonly operationDuration: Histogram<'operation' | 'result'>;
  readonly errors: Counter<'code' | 'source'>;
  readonly events: Counter<'type' | 'reason'>;
  readonly collectionDuration: Histogram;
  readonly collectionCpu: Counter;
  readonly vmCount: Gauge<'status'>;

  constructor(o: { samples: () => Iterable<VmSample>; countByPhase: () => Promise<Record<string, number>>; defaultCollectors?: boolean }) {
    const registry = new Registry();
    this.registry = registry;
    if (o.defaultCollectors !== false) client.collectDefaultMetrics({ register: registry });
    const reg = [registry];

    this.vmCount = new Gauge({
      name: `${SERVICE_PREFIX}microvm_count`,
      help: 'MicroVMs known to the service, by lifecycle phase',
      labelNames: ['status'],
      registers: reg,
      async collect() {
        const counts = await o.countByPhase().catch(() => undefined);
        if (!counts) return;
        this.reset();
        for (const p of PHASES) {
          this.set({ status: p }, counts[p] ?? 0);
        }
      },
    });
    this.httpDuration = new Histogram({
      name: `${SERVICE_PREFIX}http_request_duration_seconds`,
      help: 'REST API request duration by route pattern and status code',
      labelNames: ['method', 'route', 'status_code'],
      buckets: HTTP_BUCKETS,
      registers: reg,
    });
    this.reconcileDuration = new Histogram({
      name: `${SERVICE_PREFIX}reconcile_duration_seconds`,
      help: 'Duration of one reconcile pass of one microVM',
      labelNames: ['result'],
      buckets: OP_BUCKETS,
      registers: reg,
    });
    this.reconcileTotal = new Counter({
      name: `${SERVICE_PREFIX}reconcile_total`,
      help: 'Reconcile passes by result (success or error)',
      labelNames: ['result'],
      registers: reg,
    });
    this.reconcileQueueDepth = new Gauge({
      name: `${SERVICE_PREFIX}reconcile_queue_depth`,
      help: 'MicroVMs waiting in the reconcile queue',
      registers: reg,
    });
    this.reconcileInFlight = new Gauge({
      name: `${SERVICE_PREFIX}reconcile_in_flight`,
      help: 'Reconcile passes running now',
      registers: reg,
    });
    this.schedulerDecisions = new Counter({
      name: `${SERVICE_PREFIX}scheduler_decisions_total`,
      help: 'Placement decisions by result (placed or unschedulable) and chosen node',
      labelNames: ['result', 'node'],
      registers: reg,
    });
    this.bootDuration = new Histogram({
      name: `${SERVICE_PREFIX}boot_duration_seconds`,
      help: 'Boot phases: prepare (start requested -> VMM launch), vmm (launch -> VMM running), guest (VMM running -> guest ready), total (start requested -> guest ready)',
      labelNames: ['phase'],
      buckets: BOOT_BUCKETS,
      registers: reg,
    });
    this.operationDuration = new Histogram({
      name: `${SERVICE_PREFIX}operation_duration_seconds`,
      help: 'Duration of snapshot, restore, image pull and image build operations',
      labelNames: ['operation', 'result'],
      buckets: OP_BUCKETS,
      registers: reg,
    });
    this.errors = new Counter({
      name: `${SERVICE_PREFIX}errors_total`,
      help: 'Errors by stable error code and where they surfaced (api, reconcile)',
      labelNames: ['code', 'source'],
      registers: reg,
    });
    this.events = new Counter({
      name: `${SERVICE_PREFIX}events_total`,
      help: 'MicroVM events recorded, by type and reason',
      labelNames: ['type', 'reason'],
      registers: reg,
    });
    this.collectionDuration = new Histogram({
      name: `${SERVICE_PREFIX}metrics_collection_duration_seconds`,
      help: 'Wall time of one per-VM metrics collection cycle',
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: reg,
    });
    this.collectionCpu = new Counter({
      name: `${SERVICE_PREFIX}metrics_collection_cpu_seconds_total`,
      help: 'CPU time of this process during per-VM metrics collection cycles',
      registers: reg,
    });
    registerVmSeries(registry, o.samples);
  }

  observeOperation(op: TimedOperation, seconds: number, ok: boolean): void {
    this.operationDuration.observe({ operation: op, result: ok ? 'success' : 'error' }, seconds);
  }

  contentType(): string {
    return this.registry.contentType;
  }

  render(): Promise<string> {
    return this.registry.metrics();
  }
}

type Lbl = Record<(typeof VM_LABELS)[number], string>;
const lbl = (s: VmSample): Lbl => ({ id: s.vm.id, name: s.vm.name, tenant: s.vm.tenant, node: s.node });

/**
 * Per-VM series. Counters mirror counters kept elsewhere (the kernel, QEMU), so
 * each collect() resets and re-fills them from the latest samples: series of
 * deleted VMs disappear, and values never go through our own arithmetic.
 */
function registerVmSeries(registry: Registry, samples: () => Iterable<VmSample>): void {
  const reg = [registry];
  const labels = [...VM_LABELS];
  const gauge = (name: string, help: string, value: (s: VmSample) => number | undefined): void => {
    new Gauge({
      name,
      help,
      labelNames: labels,
      registers: reg,
      collect() {
        this.reset();
        for (const s of samples()) {
          const v = value(s);
          if (v !== undefined) this.set(lbl(s), v);
        }
      },
    });
  };
  const counter = (name: string, help: string, value: (s: VmSample) => number | undefined): void => {
    new Counter({
      name,
      help,
      labelNames: labels,
      registers: reg,
      collect() {
        this.reset();
        for (const s of samples()) {
          const v = value(s);
          if (v !== undefined && v >= 0) this.inc(lbl(s), v);
        }
      },
    });
  };
  const devCounter = <D extends { device: string }>(name: string, help: string, devLabel: string, list: (s: VmSample) => D[], value: (d: D) => number): void => {
    new Counter({
      name,
      help,
      labelNames: [...labels, devLabel],
      registers: reg,
      collect() {
        this.reset();
        for (const s of samples()) for (const d of list(s)) this.inc({ ...lbl(s), [devLabel]: d.device }, Math.max(0, value(d)));
      },
    });
  };

  new Gauge({
    name: 'microvm_info',
    help: 'One series per microVM with a running VMM; value 1. Carries phase, driver, accel and vCPUs as labels',
    labelNames: [...labels, 'phase', 'driver', 'accel', 'vcpus'],
    registers: reg,
    collect() {
      this.reset();
      for (const s of samples()) {
        this.set({ ...lbl(s), phase: s.metrics.phase, driver: s.vm.status.driver ?? '', accel: s.vm.status.accel ?? '', vcpus: String(s.vm.spec.vcpu) }, 1);
      }
    },
  });
  counter('microvm_cpu_seconds_total', 'CPU time of the VMM process (vCPU threads and device emulation), from /proc', (s) => s.metrics.cpuSeconds);
  counter('microvm_cgroup_cpu_seconds_total', "CPU time charged to the microVM's cgroup", (s) => s.cgroup.cpuSeconds);
  gauge('microvm_memory_rss_bytes', 'Resident set size of the VMM process, from /proc', (s) => s.metrics.memoryRssBytes);
  gauge('microvm_cgroup_memory_bytes', "Memory charged to the microVM's cgroup", (s) => s.cgroup.memoryBytes);
  gauge('microvm_cgroup_memory_limit_bytes', "Memory limit of the microVM's cgroup", (s) => s.cgroup.memoryLimitBytes);
  gauge('microvm_guest_memory_bytes', 'Memory size of the guest', (s) => s.metrics.guestMemoryBytes);
  gauge('microvm_vcpus', 'vCPUs of the guest', (s) => s.vm.spec.vcpu);
  gauge('microvm_uptime_seconds', 'Seconds since the VMM started', (s) => s.metrics.uptimeSeconds);
  gauge('microvm_boot_vmm_seconds', 'Last boot: VMM launch to VMM running', (s) => (s.metrics.bootMs ? s.metrics.bootMs.vmm / 1000 : undefined));
  gauge('microvm_boot_guest_ready_seconds', 'Last boot: VMM launch to the guest readiness marker', (s) =>
    s.metrics.bootMs && s.metrics.bootMs.guestReady > 0 ? s.metrics.bootMs.guestReady / 1000 : undefined,
  );
  devCounter('microvm_block_read_bytes_total', 'Bytes read by the guest from a block device, from the VMM', 'device', (s) => s.metrics.block, (d) => d.readBytes);
  devCounter('microvm_block_write_bytes_total', 'Bytes written by the guest to a block device, from the VMM', 'device', (s) => s.metrics.block, (d) => d.writeBytes);
  devCounter('microvm_block_read_ops_total', 'Read operations of the guest on a block device', 'device', (s) => s.metrics.block, (d) => d.readOps);
  devCounter('microvm_block_write_ops_total', 'Write operations of the guest on a block device', 'device', (s) => s.metrics.block, (d) => d.writeOps);
  devCounter('microvm_network_receive_bytes_total', "Bytes received by the guest on a NIC (its tap's transmit counter)", 'interface', (s) => s.metrics.net, (d) => d.rxBytes);
  devCounter('microvm_network_transmit_bytes_total', "Bytes sent by the guest on a NIC (its tap's receive counter)", 'interface', (s) => s.metrics.net, (d) => d.txBytes);
  devCounter('microvm_network_receive_packets_total', 'Packets received by the guest on a NIC', 'interface', (s) => s.metrics.net, (d) => d.rxPackets);
  devCounter('microvm_network_transmit_packets_total', 'Packets sent by the guest on a NIC', 'interface', (s) => s.metrics.net, (d) => d.txPackets);
}
