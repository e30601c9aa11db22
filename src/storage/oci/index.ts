export * from './reference.js';
export * from './pull.js';
export * from './build.js';
export * from './cache.js';
export * from './resolver.js';
export { OCI_INIT_PATH } from './init-script.js';
export * from './manager.js';
export * from './policy.js';
export * from './signature.js';
