/** The host-side client of the guest agent (docs/guest-agent-protocol.md). */
export * from './protocol.js';
export * from './codec.js';
export * from './errors.js';
export * from './connection.js';
export * from './client.js';
export * from './transports.js';
export * from './relay.js';
