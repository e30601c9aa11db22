/** A typed gRPC client of MicroVMService (types generated from the proto), with the bearer token as call credentials. */
import * as grpc from '@grpc/grpc-js';
import type { MicroVMServiceClient } from './generated/microvm/service/v1alpha1/MicroVMService.js';
import { loadProto } from './loader.js';

export type { MicroVMServiceClient };

export function createGrpcClient(address: string, token?: string): MicroVMServiceClient {
  const Ctor = loadProto().microvm.service.v1alpha1.MicroVMService;
  const creds = grpc.credentials.createInsecure();
  const client = new Ctor(address, creds);
  if (!token) return client;
  // Insecure channels cannot carry call credentials, so the token goes into every call's metadata.
  const withAuth = (md?: grpc.Metadata): grpc.Metadata => {
    const m = md ?? new grpc.Metadata();
    if (!m.get('authorization').length) m.set('authorization', `Bearer ${token}`);
    return m;
  };
  return new Proxy(client, {
    get(target, prop, recv) {
      const v = Reflect.get(target, prop, recv) as unknown;
      if (typeof v !== 'function' || typeof prop !== 'string' || !/^[A-Z]/.test(prop)) return typeof v === 'function' ? (v as (...args: unknown[]) => unknown).bind(target) : v;
      return (arg: unknown, ...rest: unknown[]) => {
        const md = rest[0] instanceof grpc.Metadata ? (rest.shift() as grpc.Metadata) : undefined;
        return (v as (...args: unknown[]) => unknown).call(target, arg, withAuth(md), ...rest);
      };
    },
  });
}

/**
 * Promise wrapper for unary calls: `unaryCall(client.GetMicroVM.bind(client), { id }, metadata?)`.
 * The request and response types are inferred from the generated client's signatures.
 */
export function unaryCall<Req, Res>(
  fn: (req: Req, cb: (err: grpc.ServiceError | null, res?: Res) => void) => unknown,
  req: Req,
  md: grpc.Metadata = new grpc.Metadata(),
): Promise<Res> {
  const call = fn as unknown as (req: Req, md: grpc.Metadata, cb: (err: grpc.ServiceError | null, res?: Res) => void) => unknown;
  return new Promise((resolve, reject) => call(req, md, (err, res) => (err ? reject(err) : resolve(res as Res))));
}
