/** `mvm tenant create|ls|get|update|rm|usage` (admins): tenants and their quotas. */
import type { Command } from 'commander';
import type { TenantQuotasT, TenantT, TenantUsageT } from '../../core/tenancy-schema.js';
import { age, kv, renderTable } from '../format.js';
import { collect, parseIntArg, parseLabelEdits, parseLabels, UsageError } from '../parse.js';
import { child, dash, group, pages, printDeleted, printList, printOne, type CommandGroupDeps } from './common.js';

const QUOTA_INT = ['vms', 'vcpu', 'snapshots', 'volumes', 'hostPorts'] as const;
const QUOTA_QTY = ['memory', 'disk'] as const;

/** `--quota vms=10 --quota memory=8Gi` → quotas. */
export function parseQuotas(list: string[] | undefined): TenantQuotasT | undefined {
  if (!list?.length) return undefined;
  const quotas: Record<string, unknown> = {};
  for (const item of list) {
    const i = item.indexOf('=');
    const key = i > 0 ? item.slice(0, i) : '';
    const value = item.slice(i + 1);
    if ((QUOTA_INT as readonly string[]).includes(key)) quotas[key] = parseIntArg(value, `--quota ${key}`, 0);
    else if ((QUOTA_QTY as readonly string[]).includes(key)) quotas[key] = value;
    else throw new UsageError(`invalid --quota ${JSON.stringify(item)} (expected KEY=VALUE with KEY one of ${[...QUOTA_INT, ...QUOTA_QTY].join(', ')})`);
  }
  return quotas as TenantQuotasT;
}

function quotasText(quotas: TenantQuotasT | undefined): string {
  const entries = Object.entries(quotas ?? {});
  return entries.length ? entries.map(([key, value]) => `${key}=${String(value)}`).join(',') : 'unlimited';
}

function renderTenant(tenant: TenantT): string {
  const pairs: Array<[string, string]> = [
    ['id', tenant.id],
    ['display name', dash(tenant.displayName)],
    ['quotas', quotasText(tenant.quotas)],
  ];
  const labels = Object.entries(tenant.labels ?? {});
  if (labels.length) pairs.push(['labels', labels.map(([key, value]) => `${key}=${value}`).join(',')]);
  pairs.push(['created', tenant.createdAt]);
  return kv(pairs);
}

function renderUsage(usage: TenantUsageT): string {
  const line = (name: string, use: { used: number; limit: number | null }): string[] => [name, String(use.used), use.limit === null ? 'unlimited' : String(use.limit)];
  return (
    `tenant: ${usage.tenant}\n` +
    renderTable(['RESOURCE', 'USED', 'LIMIT'], [
      line('vms', usage.vms),
      line('vcpu', usage.vcpu),
      line('memory (MiB)', usage.memoryMiB),
      line('disk (MiB)', usage.diskMiB),
      line('snapshots', usage.snapshots),
      line('volumes', usage.volumes),
      line('host ports', usage.hostPorts),
    ])
  );
}

export function registerTenantCommands(deps: CommandGroupDeps): void {
  const { about, contextOf } = deps;
  const tenants = group(deps, 'tenant', 'manage tenants and their quotas (admins)', [
    'mvm tenant create acme --display-name "ACME Corp" --quota vms=10 --quota memory=8Gi',
    'mvm tenant update acme --quota vms=20 --label tier=gold',
    'mvm tenant usage acme',
    'mvm tenant rm acme --cascade',
  ]).alias('tenants');
  const quotaHelp = `quota KEY=VALUE, KEY one of ${[...QUOTA_INT, ...QUOTA_QTY].join(', ')} (repeatable)`;
  child(tenants, 'create <id>', 'create a tenant')
    .option('--display-name <text>', 'human-readable name')
    .option('--quota <k=v>', quotaHelp, collect)
    .option('--label <k=v>', 'label (repeatable)', collect)
    .action(async (id: string, opts: { displayName?: string; quota?: string[]; label?: string[] }, command: Command) => {
      const quotas = parseQuotas(opts.quota);
      const labels = parseLabels(opts.label);
      about('tenant', id);
      const ctx = contextOf(command);
      const tenant = await ctx.client.tenants.create({ id, ...(opts.displayName !== undefined ? { displayName: opts.displayName } : {}), ...(quotas ? { quotas } : {}), ...(labels ? { labels } : {}) });
      printOne(ctx, tenant, renderTenant(tenant), tenant.id);
    });
  child(tenants, 'list', 'list tenants')
    .alias('ls')
    .option('--limit <n>', 'at most N tenants (one page); default: all')
    .action(async (opts: { limit?: string }, command: Command) => {
      const limit = opts.limit !== undefined ? parseIntArg(opts.limit, '--limit', 1) : undefined;
      const ctx = contextOf(command);
      const { items, next } = await pages(limit, (cursor) => ctx.client.tenants.list({ limit, cursor }));
      printList(
        ctx,
        items,
        next,
        'tenants',
        ['ID', 'DISPLAY NAME', 'QUOTAS', 'AGE'],
        (tenant) => [tenant.id, dash(tenant.displayName), quotasText(tenant.quotas), age(tenant.createdAt)],
        (tenant) => tenant.id,
      );
    });
  child(tenants, 'get <id>', 'show a tenant').action(async (id: string, _opts: unknown, command: Command) => {
    about('tenant', id);
    const ctx = contextOf(command);
    const tenant = await ctx.client.tenants.get(id);
    printOne(ctx, tenant, renderTenant(tenant), tenant.id);
  });
  child(tenants, 'update <id>', 'change a tenant: --quota replaces the quotas given (others keep their values), --label k=v / k- edits labels')
    .option('--display-name <text>', 'human-readable name')
    .option('--quota <k=v>', quotaHelp, collect)
    .option('--label <k=v>', 'set a label, or remove one with k- (repeatable)', collect)
    .action(async (id: string, opts: { displayName?: string; quota?: string[]; label?: string[] }, command: Command) => {
      const quotas = parseQuotas(opts.quota);
      const edits = opts.label ? parseLabelEdits(opts.label) : undefined;
      if (opts.displayName === undefined && !quotas && !edits) throw new UsageError('nothing to update: pass --display-name, --quota or --label');
      about('tenant', id);
      const ctx = contextOf(command);
      const patch: Record<string, unknown> = {};
      if (opts.displayName !== undefined) patch.displayName = opts.displayName;
      if (quotas || edits) {
        // PUT replaces quotas and labels as a whole: merge with the current values.
        const current = await ctx.client.tenants.get(id);
        if (quotas) patch.quotas = { ...(current.quotas ?? {}), ...quotas };
        if (edits) {
          const labels = { ...(current.labels ?? {}), ...edits.set };
          for (const key of edits.remove) delete labels[key];
          patch.labels = labels;
        }
      }
      const tenant = await ctx.client.tenants.update(id, patch);
      printOne(ctx, tenant, renderTenant(tenant), tenant.id);
    });
  child(tenants, 'rm <id>', 'delete a tenant (refused while it owns resources unless --cascade)')
    .alias('delete')
    .option('--cascade', 'also delete everything the tenant owns')
    .action(async (id: string, opts: { cascade?: boolean }, command: Command) => {
      about('tenant', id);
      const ctx = contextOf(command);
      const result = await ctx.client.tenants.delete(id, { cascade: Boolean(opts.cascade) });
      printDeleted(ctx, result, `tenant "${id}" deleted\n`, id);
    });
  child(tenants, 'usage <id>', 'show quota usage of a tenant: used vs limit').action(async (id: string, _opts: unknown, command: Command) => {
    about('tenant', id);
    const ctx = contextOf(command);
    const usage = await ctx.client.tenants.usage(id);
    printOne(ctx, usage, renderUsage(usage), usage.tenant);
  });
}
