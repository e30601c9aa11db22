/**
 * The gRPC API (package microvm.service.v1alpha1, service MicroVMService) over the same service
 * layer and the same gateway pipeline as REST: bearer token in the `authorization` metadata,
 * rate limits (RateLimit-* in the initial metadata, `retry-after` in the trailers), permissions per
 * the operations table, `idempotency-key` metadata on mutating calls, audit. Errors are mapped
 * once (./status.ts); the trailers carry `mvm-error-code` and, for bad input,
 * `mvm-field-violations` (JSON).
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { ErrorCodes, MvmError, asMvmError, validationError } from '../core/errors.js';
import type { Principal } from '../core/authz.js';
import type { MicroVMService } from '../core/service.js';
import type { GuestService } from '../core/guest.js';
import { PHASES, type Phase } from '../core/microvm.js';
import { collectConsole, followConsole, readConsoleTail, writeWithBackpressure } from '../gateway/console-stream.js';
import { Gateway, IDEMPOTENCY_KEY_RE, rateLimitFields, type CallInfo } from '../gateway/gateway.js';
import { operationForRpc } from '../gateway/operations.js';
import type { MicroVMServiceHandlers } from './generated/microvm/service/v1alpha1/MicroVMService.js';
import { loadProto, SERVICE_PATH } from './loader.js';
import { createRequestFromProto, metricsToProto, requiredId, specToProto, statusToProto, updateRequestFromProto, vmToProto } from './mapping.js';
import { GRPC_STATUS } from './status.js';
import { guestHandlers } from './guest.js';

export interface GrpcServerOptions {
  service: MicroVMService;
  /** Exec and files inside the guest (Exec, Upload, Download); absent: those answer UNIMPLEMENTED. */
  guest?: GuestService;
  gateway: Gateway;
  host: string;
  port: number;
  log: Logger;
  /** Serve TLS with this certificate, swapped without a rebind when its files change (ADR 0026); plaintext otherwise. */
  tls?: import('../tls/files.js').ServerKeyPair;
}

export interface GrpcServer {
  /** host:port actually bound. */
  address: string;
  port: number;
  close(): Promise<void>;
}

export function toGrpcError(e: MvmError, extra: Record<string, string> = {}): grpc.ServiceError {
  const md = new grpc.Metadata();
  md.set('mvm-error-code', e.code);
  if (e.violations.length) md.set('mvm-field-violations', JSON.stringify(e.violations));
  const retry = e.details.retryAfterSeconds;
  if (typeof retry === 'number') md.set('retry-after', String(retry));
  for (const [k, v] of Object.entries(extra)) md.set(k, v);
  const err = new Error(e.message) as grpc.ServiceError;
  err.code = GRPC_STATUS[e.code] ?? grpc.status.INTERNAL;
  err.details = e.message;
  err.metadata = md;
  return err;
}

function peerIp(peer: string): string {
  // "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000", "127.0.0.1:5000", "unix:/path"
  const s = peer.replace(/^(ipv4|ipv6):/, '');
  const m = /^\[(.*)\]:\d+$/.exec(s) ?? /^(.*):\d+$/.exec(s);
  return m ? m[1]! : s;
}

type AnyCall = grpc.ServerUnaryCall<unknown, unknown> | grpc.ServerWritableStream<unknown, unknown> | grpc.ServerReadableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;

export async function startGrpcServer(o: GrpcServerOptions): Promise<GrpcServer> {
  const proto = loadProto();
  const svc = o.service;
  const gw = o.gateway;
  let seq = 0;

  const infoOf = (call: AnyCall, rpc: string): CallInfo => {
    const auth = call.metadata.get('authorization')[0];
    const ua = call.metadata.get('user-agent')[0];
    return {
      transport: 'grpc',
      requestId: `grpc-${Date.now().toString(36)}-${(++seq).toString(36)}`,
      method: SERVICE_PATH + rpc,
      sourceIp: peerIp(call.getPeer()),
      ...(typeof ua === 'string' ? { userAgent: ua } : {}),
      ...(typeof auth === 'string' ? { authorization: auth } : {}),
    };
  };

  /** Admission for any call; sends the rate-limit headers as initial metadata. */
  const admit = async (rpc: string, call: AnyCall): Promise<{ principal?: Principal; info: CallInfo; error?: MvmError }> => {
    const op = operationForRpc(rpc);
    const info = infoOf(call, rpc);
    const a = await gw.admit(op, info);
    const fields = rateLimitFields(a.decision);
    if (!a.error && Object.keys(fields).length) {
      const md = new grpc.Metadata();
      for (const [k, v] of Object.entries(fields)) md.set(k, v);
      call.sendMetadata(md);
    }
    if (a.error) {
      await gw.finish(op, info, a.principal, gw.outcomeOf(a.error));
      return { info, error: a.error };
    }
    return { principal: a.principal!, info };
  };

  function unary<Req, Res>(rpc: string, fn: (p: Principal, req: Req) => Promise<{ res: Res; resourceId?: string }>, resourceIdOf?: (req: Req) => string | undefined): grpc.handleUnaryCall<Req, Res> {
    const op = operationForRpc(rpc);
    return (call, callback) => {
      void (async () => {
        const a = await admit(rpc, call as unknown as AnyCall);
        if (a.error) return callback(toGrpcError(a.error));
        const p = a.principal!;
        let scope: string | undefined;
        const rid = resourceIdOf?.(call.request);
        try {
          const key = call.metadata.get('idempotency-key')[0];
          if (op.mutation && key !== undefined) {
            if (typeof key !== 'string' || !IDEMPOTENCY_KEY_RE.test(key)) throw validationError('idempotency-key', 'must be 1-255 visible ASCII characters');
            scope = gw.scopeOf(p, 'grpc', key, rpc);
            const r = await gw.beginIdempotent(scope, gw.fingerprint([rpc, call.request]));
            if (r.state === 'done') {
              scope = undefined;
              const md = new grpc.Metadata();
              md.set('idempotent-replayed', 'true');
              return callback(null, JSON.parse(r.response.body) as Res, md);
            }
            const err = Gateway.idempotencyError(r);
            if (err) {
              scope = undefined;
              throw err;
            }
          }
          const { res, resourceId } = await fn(p, call.request);
          if (scope) await gw.completeIdempotent(scope, { status: 200, headers: {}, body: JSON.stringify(res) });
          await gw.finish(op, a.info, p, { status: 200, ...(resourceId ?? rid ? { resourceId: (resourceId ?? rid)! } : {}) });
          callback(null, res);
        } catch (e) {
          const err = asMvmError(e);
          if (err.code === ErrorCodes.INTERNAL) o.log.error({ err: e, rpc }, 'internal error');
          if (scope) await gw.abandonIdempotent(scope).catch(() => undefined);
          await gw.finish(op, a.info, p, gw.outcomeOf(err, rid));
          callback(toGrpcError(err));
        }
      })();
    };
  }

  const handlers: MicroVMServiceHandlers = {
    CreateMicroVM: unary('CreateMicroVM', async (p, req) => {
      const vm = await svc.create(p, createRequestFromProto(req), req.tenant ? { tenant: req.tenant } : {});
      return { res: { id: vm.id, microvm: vmToProto(vm) }, resourceId: vm.id };
    }),
    GetMicroVM: unary('GetMicroVM', async (p, req) => {
      const vm = await svc.get(p, requiredId(req.id));
      return { res: { spec: specToProto(vm), status: statusToProto(vm), microvm: vmToProto(vm) } };
    }, (r) => r.id),
    ListMicroVMs: unary('ListMicroVMs', async (p, req) => {
      if (req.phase && !(PHASES as readonly string[]).includes(req.phase)) throw validationError('phase', `unknown phase ${JSON.stringify(req.phase)}`);
      if (req.pageSize < 0 || req.pageSize > 1000) throw validationError('page_size', 'must be 0..1000');
      const page = await svc.list(p, {
        ...(req.pageSize ? { limit: req.pageSize } : {}),
        ...(req.pageToken ? { cursor: req.pageToken } : {}),
        ...(req.phase ? { phase: req.phase as Phase } : {}),
        ...(Object.keys(req.labelSelector).length ? { labels: { ...req.labelSelector } } : {}),
        ...(req.tenant ? { tenant: req.tenant } : {}),
      });
      return { res: { microvms: page.items.map(vmToProto), nextPageToken: page.nextCursor ?? '' } };
    }),
    UpdateMicroVM: unary('UpdateMicroVM', async (p, req) => {
      const vm = await svc.update(p, requiredId(req.id), updateRequestFromProto(req), req.resourceVersion || undefined);
      return { res: { microvm: vmToProto(vm) } };
    }, (r) => r.id),
    DeleteMicroVM: unary('DeleteMicroVM', async (p, req) => ({ res: { microvm: vmToProto(await svc.delete(p, requiredId(req.id), req.resourceVersion || undefined)) } }), (r) => r.id),
    StartMicroVM: unary('StartMicroVM', async (p, req) => ({ res: { microvm: vmToProto(await svc.start(p, requiredId(req.id), req.resourceVersion || undefined)) } }), (r) => r.id),
    StopMicroVM: unary('StopMicroVM', async (p, req) => ({ res: { microvm: vmToProto(await svc.stop(p, requiredId(req.id), req.resourceVersion || undefined)) } }), (r) => r.id),
    GetMetrics: unary('GetMetrics', async (p, req) => ({ res: metricsToProto(await svc.metrics(p, requiredId(req.id))) }), (r) => r.id),
    ...guestHandlers({ ...(o.guest ? { guest: o.guest } : {}), gateway: gw, log: o.log, admit, toGrpcError: (e) => toGrpcError(e) }),
    GetConsole: (call) => {
      void (async () => {
        const a = await admit('GetConsole', call as unknown as AnyCall);
        if (a.error) return void call.emit('error', toGrpcError(a.error));
        const p = a.principal!;
        const ac = new AbortController();
        call.on('cancelled', () => ac.abort());
        call.on('close', () => ac.abort());
        try {
          const { vm, path } = await svc.consolePath(p, requiredId(call.request.id));
          const tail = call.request.tailBytes > 0 ? Math.min(call.request.tailBytes, 16 * 1024 * 1024) : 1024 * 1024;
          // Cluster mode: the console lives on the VM's node and is proxied from its agent.
          const remote = svc.remoteConsole(vm);
          if (!call.request.follow) {
            const text = remote ? Buffer.from(await collectConsole(remote({ tail, follow: false })), 'utf8') : path ? Buffer.from(readConsoleTail(path, tail), 'utf8') : Buffer.alloc(0);
            for (let i = 0; i < text.length; i += 64 * 1024) call.write({ data: text.subarray(i, i + 64 * 1024) });
            call.end();
            return;
          }
          const chunks = remote
            ? remote({ tail, follow: true, signal: ac.signal })
            : followConsole({ tail, signal: ac.signal, ...svc.localConsole(p, vm) });
          for await (const chunk of chunks) {
            if (!(await writeWithBackpressure(call, { data: chunk }, ac.signal))) break;
          }
          if (!ac.signal.aborted) call.end();
        } catch (e) {
          if (!ac.signal.aborted) call.emit('error', toGrpcError(asMvmError(e)));
        }
      })();
    },
  };

  const server = new grpc.Server({ 'grpc.max_receive_message_length': 4 * 1024 * 1024 });
  server.addService(proto.microvm.service.v1alpha1.MicroVMService.service, handlers);
  const bindHost = o.host.includes(':') ? `[${o.host}]` : o.host;
  const creds = o.tls ? grpc.experimental.createCertificateProviderServerCredentials(o.tls.grpcProvider(), null, false) : grpc.ServerCredentials.createInsecure();
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${bindHost}:${o.port}`, creds, (err, p) => (err ? reject(new MvmError(ErrorCodes.UNAVAILABLE, `gRPC: cannot listen on ${o.host}:${o.port} (MVM_GRPC_LISTEN; in use by another instance?): ${err.message}`)) : resolve(p))),
  );
  o.log.info({ address: `${o.host}:${port}`, tls: !!o.tls }, 'gRPC API listening');
  return {
    address: `${o.host}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, 2000);
        server.tryShutdown(() => {
          clearTimeout(t);
          resolve();
        });
      }),
  };
}
