/**
 * Stands in for an earlier service process: launches one VM with the
 * Firecracker driver, prints `{"pid": ...}` and exits, leaving the detached
 * VMM running for a later driver to adopt.
 *
 * Usage: node firecracker-launcher.js '<json {spec, binary, env}>'
 */
import { FirecrackerDriver } from '../../src/vmm/firecracker/firecracker-driver.js';
import type { LaunchSpec } from '../../src/core/ports/vmm.js';

const arg = JSON.parse(process.argv[2] ?? '{}') as { spec: LaunchSpec; binary: string; env?: Record<string, string> };
const driver = new FirecrackerDriver({ binary: arg.binary, kvm: { kvmUsable: async () => true }, ...(arg.env ? { env: arg.env } : {}) });
try {
  const inst = await driver.launch(arg.spec);
  process.stdout.write(JSON.stringify({ pid: inst.pid }) + '\n');
  process.exit(0);
} catch (e) {
  process.stderr.write(`${(e as Error).message}\n`);
  process.exit(1);
}
