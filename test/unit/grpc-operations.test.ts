/**
 * Every RPC of MicroVMService has exactly one entry in the operations table (its permission, audit
 * and rate class), and every gRPC name in the table is an RPC of the proto; the guest RPCs (Exec,
 * Upload, Download) need microvms:exec like their REST routes; the Exec request from the proto is
 * validated like REST's, with violations named after the proto's fields.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as protoLoader from '@grpc/proto-loader';
import { can } from '../../src/core/authz.js';
import { MvmError } from '../../src/core/errors.js';
import { OPERATIONS, operationForRpc } from '../../src/gateway/operations.js';
import { PROTO_FILE, protoRoot } from '../../src/grpc/loader.js';
import { execRequestFromProto } from '../../src/grpc/guest.js';
import type { ExecRequest__Output } from '../../src/grpc/generated/microvm/service/v1alpha1/ExecRequest.js';

function rpcNames(): string[] {
  const def = protoLoader.loadSync(PROTO_FILE, { keepCase: true, includeDirs: [protoRoot()] });
  return Object.keys(def['microvm.service.v1alpha1.MicroVMService'] as object).sort();
}

test('every RPC of the proto has one operation, and every gRPC name in the table is an RPC', () => {
  const rpcs = rpcNames();
  assert.ok(rpcs.includes('Exec') && rpcs.includes('Upload') && rpcs.includes('Download'), rpcs.join(', '));
  for (const rpc of rpcs) {
    assert.doesNotThrow(() => operationForRpc(rpc), `${rpc} has no entry in src/gateway/operations.ts`);
    assert.equal(Object.values(OPERATIONS).filter((o) => o.grpc === rpc).length, 1, `${rpc} is in the table once`);
  }
  for (const op of Object.values(OPERATIONS)) if (op.grpc) assert.ok(rpcs.includes(op.grpc), `${op.id}: ${op.grpc} is not an RPC of the proto`);
});

test('Exec, Upload and Download need microvms:exec (member and above, not viewer), like their REST routes', () => {
  for (const [rpc, rest] of [
    ['Exec', 'GET /api/v1/microvms/:id/exec'],
    ['Upload', 'PUT /api/v1/microvms/:id/files'],
    ['Download', 'GET /api/v1/microvms/:id/files'],
  ] as const) {
    const op = operationForRpc(rpc);
    assert.equal(op.permission, 'microvms:exec', rpc);
    assert.equal(op.rest, rest, rpc);
  }
  assert.equal(can('member', 'microvms:exec'), true);
  assert.equal(can('viewer', 'microvms:exec'), false);
  assert.equal(operationForRpc('Upload').mutation, true);
});

const req = (o: Partial<ExecRequest__Output>): ExecRequest__Output => ({ id: 'vm-1', argv: [], env: {}, cwd: '', user: '', timeout: '', tty: false, cols: 0, rows: 0, ...o });

test('the Exec request is validated like REST, violations named as in the proto', () => {
  const fieldOf = (o: Partial<ExecRequest__Output>): string => {
    try {
      execRequestFromProto(req(o));
    } catch (e) {
      assert.ok(e instanceof MvmError);
      // 422 for what the schema cannot state (an empty program name), 400 for the rest.
      assert.equal(e.code, o.argv?.[0] === '' ? 'UNPROCESSABLE' : 'VALIDATION_FAILED');
      return e.violations[0]!.field;
    }
    return assert.fail('accepted');
  };
  assert.equal(fieldOf({ argv: [] }), 'request.argv');
  assert.equal(fieldOf({ argv: [''] }), 'request.argv[0]');
  assert.equal(fieldOf({ argv: ['ls'], cwd: 'tmp' }), 'request.cwd');
  assert.equal(fieldOf({ argv: ['ls'], timeout: 'soon' }), 'request.timeout');
  assert.equal(fieldOf({ argv: ['ls'], timeout: '25h' }), 'request.timeout');
  assert.equal(fieldOf({ argv: ['ls'], cols: -1 }), 'request.cols');

  const ok = execRequestFromProto(req({ argv: ['sh', '-c', 'echo'], env: { A: '1' }, cwd: '/tmp', user: '1000', timeout: '30s', tty: true, cols: 80, rows: 24 }));
  assert.deepEqual(ok, { cmd: ['sh', '-c', 'echo'], env: { A: '1' }, cwd: '/tmp', user: 1000, tty: true, cols: 80, rows: 24, stdin: true, timeoutMs: 30_000 });
  assert.equal(execRequestFromProto(req({ argv: ['id'], user: 'nobody' })).user, 'nobody');
});
