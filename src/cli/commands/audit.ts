/** `mvm audit`: query the audit log (admins; tenant-admins see their tenant). */
import type { Command } from 'commander';
import { parseDuration, parseIntArg, UsageError } from '../parse.js';
import { dash, group, printList, type CommandGroupDeps } from './common.js';

/** `1h`, `30m` (that long ago) or an RFC 3339 time → RFC 3339. */
export function parseSince(text: string, what: string, now = Date.now()): string {
  if (/^\d+(\.\d+)?(ms|s|m|h)$/.test(text.trim())) return new Date(now - parseDuration(text, what)).toISOString();
  const time = Date.parse(text);
  if (Number.isNaN(time) || !/^\d{4}-\d{2}-\d{2}T/.test(text)) throw new UsageError(`invalid ${what} ${JSON.stringify(text)} (expected a duration like 1h or an RFC 3339 time like 2024-05-01T12:00:00Z)`);
  return new Date(time).toISOString();
}

const AUDIT_RESULTS = ['allowed', 'denied', 'failed'] as const;

export function registerAuditCommand(deps: CommandGroupDeps): void {
  group(deps, 'audit', 'query the audit log (admins; tenant-admins see their tenant)', [
    'mvm audit --since 1h',
    'mvm audit --result denied --tenant acme',
    'mvm audit --operation microvms.create --resource-id web -o json',
  ])
    .option('--tenant <tenant>', 'only this tenant')
    .option('--subject <subject>', 'only this caller')
    .option('--key-id <id>', 'only requests made with this API key')
    .option('--result <result>', 'allowed, denied or failed')
    .option('--operation <op>', 'e.g. microvms.create')
    .option('--resource <resource>', 'e.g. microvms, tenants')
    .option('--resource-id <id>', 'only this resource')
    .option('--since <time>', 'entries at or after: RFC 3339 time or a duration ago (1h, 30m)')
    .option('--until <time>', 'entries before: RFC 3339 time or a duration ago')
    .option('--limit <n>', 'at most N entries (one page)', '100')
    .action(async (opts: Record<string, string | undefined>, command: Command) => {
      const result = AUDIT_RESULTS.find((x) => x === opts.result);
      if (opts.result !== undefined && !result) throw new UsageError(`invalid --result ${JSON.stringify(opts.result)} (one of allowed, denied, failed)`);
      const limit = parseIntArg(opts.limit ?? '100', '--limit', 1);
      const query = {
        tenant: opts.tenant,
        subject: opts.subject,
        keyId: opts.keyId,
        result,
        operation: opts.operation,
        resource: opts.resource,
        resourceId: opts.resourceId,
        since: opts.since !== undefined ? parseSince(opts.since, '--since') : undefined,
        until: opts.until !== undefined ? parseSince(opts.until, '--until') : undefined,
        limit,
      };
      const ctx = deps.contextOf(command);
      const page = await ctx.client.audit(query);
      printList(
        ctx,
        page.items,
        page.next_cursor,
        'audit entries',
        ['TIME', 'SUBJECT', 'TENANT', 'OPERATION', 'RESOURCE', 'RESULT', 'STATUS', 'REASON'],
        (entry) => [
          entry.time,
          dash(entry.subject),
          dash(entry.tenant),
          entry.operation,
          entry.resourceId ? `${entry.resource}/${entry.resourceId}` : entry.resource,
          entry.result,
          String(entry.status),
          entry.reason ?? entry.code ?? '',
        ],
        (entry) => String(entry.seq),
      );
    });
}
