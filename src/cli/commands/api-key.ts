/** `mvm key create|ls|rm`: API keys (the secret is shown once, at creation). */
import type { Command } from 'commander';
import type { ApiKeyT } from '../../core/tenancy-schema.js';
import { age, kv, serialize } from '../format.js';
import { parseIntArg } from '../parse.js';
import { child, dash, group, pages, printDeleted, printList, type CommandGroupDeps } from './common.js';

const KEY_HEADERS = ['ID', 'NAME', 'TENANT', 'ROLE', 'STATE', 'EXPIRES', 'AGE'];
const keyRow = (key: ApiKeyT): string[] => [key.id, key.name, key.tenant, key.role, key.state, dash(key.expiresAt), age(key.createdAt)];

export function registerApiKeyCommands(deps: CommandGroupDeps): void {
  const { about, contextOf } = deps;
  const keys = group(deps, 'key', 'manage API keys (the secret is shown once, at creation)', [
    'mvm key create ci --role member --expires-in 30d',
    'mvm key create deploy --tenant acme --role tenant-admin     # admins: a key of another tenant',
    'MVM_TOKEN=$(mvm key create ci -q)                           # -q prints only the secret',
    'mvm key ls',
    'mvm key rm k-0123abcd',
  ]).alias('apikey');
  child(keys, 'create <name>', 'create an API key and print its secret token (once: it is stored only as a hash); with -q only the token')
    .option('--role <role>', 'admin, tenant-admin, member or viewer (default: the server\'s, member)')
    .option('--expires-in <duration>', 'lifetime, e.g. 12h, 30d')
    .option('--expires-at <time>', 'expiry as RFC 3339, e.g. 2025-01-01T00:00:00Z')
    .option('--tenant <tenant>', 'the tenant of the key (admins; default: your own)')
    .action(async (name: string, opts: { role?: string; expiresIn?: string; expiresAt?: string; tenant?: string }, command: Command) => {
      about('API key', name);
      const ctx = contextOf(command);
      const request = { name, ...(opts.role ? { role: opts.role } : {}), ...(opts.expiresIn ? { expiresIn: opts.expiresIn } : {}), ...(opts.expiresAt ? { expiresAt: opts.expiresAt } : {}) };
      const key = await ctx.client.apiKeys.create(request as never, opts.tenant ? { tenant: opts.tenant } : {});
      if (ctx.output !== 'table') ctx.io.stdout.write(serialize(key, ctx.output));
      else if (ctx.quiet) ctx.io.stdout.write(`${key.token}\n`);
      else {
        ctx.io.stdout.write(
          kv([
            ['id', key.id],
            ['name', key.name],
            ['tenant', key.tenant],
            ['role', key.role],
            ['expires', dash(key.expiresAt)],
            ['token', key.token],
          ]),
        );
        ctx.io.stderr.write('Store the token now: it is not shown again.\n');
      }
    });
  child(keys, 'list', 'list API keys (never their secrets)')
    .alias('ls')
    .option('--tenant <tenant>', 'only the keys of this tenant (admins)')
    .option('--limit <n>', 'at most N keys (one page); default: all')
    .action(async (opts: { tenant?: string; limit?: string }, command: Command) => {
      const limit = opts.limit !== undefined ? parseIntArg(opts.limit, '--limit', 1) : undefined;
      const ctx = contextOf(command);
      const { items, next } = await pages(limit, (cursor) => ctx.client.apiKeys.list({ tenant: opts.tenant, limit, cursor }));
      printList(ctx, items, next, 'API keys', KEY_HEADERS, keyRow, (key) => key.id);
    });
  child(keys, 'rm <id>', 'revoke an API key (at once)')
    .alias('revoke')
    .action(async (id: string, _opts: unknown, command: Command) => {
      about('API key', id);
      const ctx = contextOf(command);
      const key = await ctx.client.apiKeys.revoke(id);
      printDeleted(ctx, key, `API key "${key.name}" (${key.id}) revoked\n`, key.id);
    });
}
