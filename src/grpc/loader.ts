/**
 * Loads proto/microvm/service/v1alpha1/microvm.proto with @grpc/proto-loader. The options must
 * match the ones the TypeScript types in ./generated were generated with (proto/generate.mjs).
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { dirname, join, resolve } from 'node:path';
import type { ProtoGrpcType } from './generated/microvm.js';

export const PROTO_FILE = 'microvm/service/v1alpha1/microvm.proto';
export const SERVICE_PATH = '/microvm.service.v1alpha1.MicroVMService/';

export const LOADER_OPTIONS: protoLoader.Options = { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true };

/** proto/ of the repository, found from src/grpc (tsx) or dist/src/grpc (compiled). */
export function protoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, 'proto');
    if (existsSync(join(candidate, PROTO_FILE))) return candidate;
    dir = resolve(dir, '..');
  }
  throw new Error(`cannot find proto/${PROTO_FILE} above ${fileURLToPath(import.meta.url)}`);
}

let cached: ProtoGrpcType | undefined;
export function loadProto(): ProtoGrpcType {
  if (cached) return cached;
  const def = protoLoader.loadSync(PROTO_FILE, { ...LOADER_OPTIONS, includeDirs: [protoRoot()] });
  cached = grpc.loadPackageDefinition(def) as unknown as ProtoGrpcType;
  return cached;
}
