/**
 * Host port policy (issue 15 item 1, ADR 0025) against the real service process (SQLite state, no
 * guests booted: VMs are created stopped): a tenant cannot publish a privileged port, a port
 * outside MVM_HOST_PORT_RANGE, a port on a host address the admin did not configure, a port
 * another microVM (its own tenant's or another's) already publishes, or more ports than its
 * `hostPorts` quota. REST and gRPC refuse the same way.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { createGrpcClient, unaryCall } from '../../src/grpc/client.js';
import { destroyDataDir } from '../support/service.js';
import { createKey, createTenant, startGatewayService, type GatewayService, type Res } from '../support/gateway.js';

let svc: GatewayService;
let alice: string;
let bob: string;

before(async () => {
  svc = await startGatewayService({ MVM_HOST_PORT_RANGE: '31000-31099', MVM_HOST_PORT_ADDRESS: '192.0.2.10,192.0.2.11' });
  await createTenant(svc, 'alice', { hostPorts: 3 });
  await createTenant(svc, 'bob');
  alice = (await createKey(svc, 'alice', 'member')).token;
  bob = (await createKey(svc, 'bob', 'member')).token;
});

after(async () => {
  await svc?.stop();
  if (svc) await destroyDataDir(svc.dataDir);
});

const create = (token: string, name: string, ports: unknown[]): Promise<Res> => svc.call('POST', '/microvms', { token, body: { name, start: false, ports } });

function refused(r: Res, status: number, code: string, field: string): void {
  assert.equal(r.status, status, r.text);
  assert.equal(r.json.code, code, r.text);
  assert.ok(
    r.json.errors?.some((e: { field: string }) => e.field === field),
    `the error names ${field}: ${r.text}`,
  );
}

test('ports outside the range (22, 80, 30000, 65535) and on an unconfigured host address are 400 naming the field; nothing is created', async () => {
  for (const hostPort of [22, 80, 30000, 31100, 65535]) {
    refused(await create(alice, 'outside', [{ hostPort, guestPort: 22 }]), 400, 'VALIDATION_FAILED', 'ports[0].hostPort');
  }
  // The second mapping is the bad one: the field says which.
  refused(await create(alice, 'outside', [{ hostPort: 31000, guestPort: 80 }, { hostPort: 22, guestPort: 22 }]), 400, 'VALIDATION_FAILED', 'ports[1].hostPort');
  for (const hostIp of ['0.0.0.0', '198.51.100.7', '127.0.0.1']) {
    refused(await create(alice, 'elsewhere', [{ hostPort: 31000, guestPort: 80, hostIp }]), 400, 'VALIDATION_FAILED', 'ports[0].hostIp');
  }
  assert.equal((await svc.call('GET', '/microvms', { token: alice })).json.items.length, 0);
  // In range, on a configured address (or the default one): admitted.
  const ok = await create(alice, 'inside', [{ hostPort: 31000, guestPort: 80, hostIp: '192.0.2.11' }]);
  assert.equal(ok.status, 201, ok.text);
  assert.equal((await svc.call('DELETE', `/microvms/${ok.json.id}`, { token: alice })).status, 202);
  await waitGone(alice, ok.json.id);
});

test('a port another microVM publishes is 409 naming the field, for another tenant and the same one; the holder is named only to its own tenant; delete frees it', async () => {
  const a = await create(alice, 'holder', [{ hostPort: 31010, guestPort: 80 }]);
  assert.equal(a.status, 201, a.text);
  const theft = await create(bob, 'thief', [{ hostPort: 31011, guestPort: 80 }, { hostPort: 31010, guestPort: 8080 }]);
  refused(theft, 409, 'CONFLICT', 'ports[1].hostPort');
  assert.doesNotMatch(theft.text, new RegExp(a.json.id), 'another tenant does not learn the holder');
  // Another address does not make the same port free (one host port, one microVM).
  refused(await create(bob, 'thief', [{ hostPort: 31010, guestPort: 80, hostIp: '192.0.2.11' }]), 409, 'CONFLICT', 'ports[0].hostPort');
  const own = await create(alice, 'second', [{ hostPort: 31010, guestPort: 80 }]);
  refused(own, 409, 'CONFLICT', 'ports[0].hostPort');
  assert.match(own.text, new RegExp(a.json.id), 'its own tenant is told which microVM holds it');
  // The other protocol is another port.
  const udp = await create(bob, 'dns', [{ hostPort: 31010, guestPort: 53, protocol: 'udp' }]);
  assert.equal(udp.status, 201, udp.text);
  // Update: taking a held port is refused the same way, and changes nothing.
  const upd = await svc.call('PUT', `/microvms/${udp.json.id}`, { token: bob, body: { ports: [{ hostPort: 31010, guestPort: 80 }] } });
  refused(upd, 409, 'CONFLICT', 'ports[0].hostPort');
  refused(await svc.call('PUT', `/microvms/${udp.json.id}`, { token: bob, body: { ports: [{ hostPort: 22, guestPort: 22 }] } }), 400, 'VALIDATION_FAILED', 'ports[0].hostPort');
  assert.deepEqual((await svc.call('GET', `/microvms/${udp.json.id}`, { token: bob })).json.spec.ports, [{ hostPort: 31010, guestPort: 53, protocol: 'udp' }]);
  // Once the holder is gone, the port is free.
  assert.equal((await svc.call('DELETE', `/microvms/${a.json.id}`, { token: alice })).status, 202);
  await waitGone(alice, a.json.id);
  const now = await create(bob, 'thief', [{ hostPort: 31010, guestPort: 80 }]);
  assert.equal(now.status, 201, now.text);
  for (const id of [udp.json.id, now.json.id]) await svc.call('DELETE', `/microvms/${id}`, { token: bob });
});

test('concurrent creates of one host port: exactly one wins, the others are 409', async () => {
  const results = await Promise.all(Array.from({ length: 12 }, (_, i) => create(i % 2 ? alice : bob, `race-${i}`, [{ hostPort: 31050, guestPort: 80 }])));
  const won = results.filter((r) => r.status === 201);
  assert.equal(won.length, 1, results.map((r) => r.status).join(','));
  for (const r of results.filter((x) => x.status !== 201)) refused(r, 409, 'CONFLICT', 'ports[0].hostPort');
  const w = won[0]!;
  await svc.call('DELETE', `/microvms/${w.json.id}`, { token: w.json.tenant === 'alice' ? alice : bob });
});

test('the hostPorts quota: creates and updates past it are 403 QUOTA_EXCEEDED (resource hostPorts); usage shows it', async () => {
  const a = await create(alice, 'q1', [{ hostPort: 31060, guestPort: 80 }, { hostPort: 31061, guestPort: 443 }]);
  assert.equal(a.status, 201, a.text);
  const over = await create(alice, 'q2', [{ hostPort: 31062, guestPort: 80 }, { hostPort: 31063, guestPort: 81 }]);
  assert.equal(over.status, 403, over.text);
  assert.equal(over.json.code, 'QUOTA_EXCEEDED');
  assert.equal(over.json.resource, 'hostPorts');
  assert.equal(over.json.limit, 3);
  const b = await create(alice, 'q2', [{ hostPort: 31062, guestPort: 80 }]);
  assert.equal(b.status, 201, b.text);
  const grow = await svc.call('PUT', `/microvms/${b.json.id}`, { token: alice, body: { ports: [{ hostPort: 31062, guestPort: 80 }, { hostPort: 31063, guestPort: 81 }] } });
  assert.equal(grow.status, 403, grow.text);
  assert.equal(grow.json.resource, 'hostPorts');
  const u = await svc.call('GET', '/tenants/alice/usage', { token: alice });
  assert.deepEqual(u.json.hostPorts, { used: 3, limit: 3 });
  // Bob has no quota of host ports: unlimited.
  assert.deepEqual((await svc.call('GET', '/tenants/bob/usage', { token: bob })).json.hostPorts, { used: 0, limit: null });
  for (const id of [a.json.id, b.json.id]) await svc.call('DELETE', `/microvms/${id}`, { token: alice });
});

test('gRPC refuses the same way: INVALID_ARGUMENT naming the field for port 22, ABORTED for a taken port', async () => {
  const held = await create(bob, 'grpc-holder', [{ hostPort: 31070, guestPort: 80 }]);
  assert.equal(held.status, 201, held.text);
  const c = createGrpcClient(svc.grpc, alice);
  try {
    const check = async (ports: Array<{ hostPort: number; guestPort: number }>, status: grpc.status, field: string): Promise<void> => {
      await assert.rejects(unaryCall(c.CreateMicroVM.bind(c), { spec: { name: 'grpc-port', ports }, noStart: true }), (e: grpc.ServiceError) => {
        assert.equal(e.code, status, e.message);
        assert.match(e.message, new RegExp(field.replace(/[[\].]/g, '\\$&')));
        return true;
      });
    };
    await check([{ hostPort: 22, guestPort: 22 }], grpc.status.INVALID_ARGUMENT, 'ports[0].hostPort');
    await check([{ hostPort: 31070, guestPort: 80 }], grpc.status.ABORTED, 'ports[0].hostPort');
  } finally {
    c.close();
  }
  await svc.call('DELETE', `/microvms/${held.json.id}`, { token: bob });
});

async function waitGone(token: string, id: string): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if ((await svc.call('GET', `/microvms/${id}`, { token })).status === 404) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`microVM ${id} was not deleted`);
}
