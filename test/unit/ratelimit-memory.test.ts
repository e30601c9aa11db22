import { MemoryRateLimitStore } from '../../src/gateway/ratelimit/memory-store.js';
import { rateLimitContract } from '../contract/ratelimit.contract.js';

rateLimitContract('memory', async () => ({ store: new MemoryRateLimitStore(), close: async () => undefined }));
