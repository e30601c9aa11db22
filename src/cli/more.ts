/**
 * `mvm snapshot|sg|tenant|key|audit|image`: each subcommand is a thin mapping to one REST call
 * of /api/v1 (snapshots, securitygroups, tenants, apikeys, audit, images).
 */
import type { Command } from 'commander';
import type { MvmClient } from './client.js';
import type { VolumeCtx } from './volumes.js';
import type { SecurityGroupT, SnapshotT } from '../core/schema.js';
import type { ApiKeyT, TenantQuotasT, TenantT, TenantUsageT } from '../core/tenancy-schema.js';
import { age, bytes, kv, renderTable, serialize } from './format.js';
import { collect, parseDuration, parseIntArg, parseLabelEdits, parseLabels, readDoc, UsageError } from './parse.js';

/** The same context as the volume commands': client, output format, --quiet, streams. */
export type MoreCtx = VolumeCtx;

/** Tells the error reporter what the command is about ("security group \"web\" not found"). */
export type About = (kind: string, id: string) => void;

type Sub = (name: string, desc: string) => Command;

const dash = (v: unknown): string => (v === undefined || v === null || v === '' ? '-' : String(v));

function group(sub: Sub, name: string, desc: string, examples: string[]): Command {
  const g = sub(name, desc);
  g.addHelpText('after', '\nExamples:\n' + examples.map((e) => `  $ ${e}`).join('\n') + '\n');
  return g;
}

function child(parent: Command, name: string, desc: string): Command {
  return parent.command(name).description(desc).exitOverride();
}

/** One object: json/yaml as is; table: the text; --quiet: the id. */
function printOne(ctx: MoreCtx, obj: unknown, text: string, id: string): void {
  if (ctx.output !== 'table') ctx.io.stdout.write(serialize(obj, ctx.output));
  else ctx.io.stdout.write(ctx.quiet ? `${id}\n` : text);
}

function printList<T>(ctx: MoreCtx, items: T[], next: string | undefined, what: string, headers: string[], row: (x: T) => string[], idOf: (x: T) => string): void {
  if (ctx.output !== 'table') ctx.io.stdout.write(serialize(next ? { items, next_cursor: next } : { items }, ctx.output));
  else if (ctx.quiet) for (const x of items) ctx.io.stdout.write(`${idOf(x)}\n`);
  else if (items.length === 0) ctx.io.stderr.write(`No ${what} found.\n`);
  else {
    ctx.io.stdout.write(renderTable(headers, items.map(row)));
    if (next) ctx.io.stderr.write(`(more ${what} exist; raise --limit or omit it to list all)\n`);
  }
}

/** As printOne; a DELETE that answers nothing is shown as `{id, deleted: true}`. */
function printDeleted(ctx: MoreCtx, obj: unknown, text: string, id: string): void {
  printOne(ctx, obj ?? { id, deleted: true }, text, id);
}

/** Every page of a cursor-paged list, or one page of at most `limit`. */
async function pages<T>(limit: number | undefined, fetchPage: (cursor?: string) => Promise<{ items: T[]; next_cursor?: string }>): Promise<{ items: T[]; next?: string }> {
  if (limit !== undefined) {
    const p = await fetchPage();
    return { items: p.items.slice(0, limit), ...(p.next_cursor ? { next: p.next_cursor } : {}) };
  }
  const items: T[] = [];
  const seen = new Set<string>();
  let cursor: string | undefined;
  for (;;) {
    const p = await fetchPage(cursor);
    items.push(...p.items);
    if (!p.next_cursor || seen.has(p.next_cursor)) return { items };
    seen.add(p.next_cursor);
    cursor = p.next_cursor;
  }
}

// ---------------------------------------------------------------------------
// security group rules

export type Rule = SecurityGroupT['rules'][number];

const DIRECTIONS: Record<string, Rule['direction']> = { in: 'ingress', ingress: 'ingress', out: 'egress', egress: 'egress' };
const PROTOCOLS = ['tcp', 'udp', 'icmp', 'any'] as const;
const ACTIONS: Record<string, NonNullable<Rule['action']>> = { accept: 'accept', allow: 'accept', drop: 'drop', deny: 'drop' };

/**
 * `DIRECTION PROTOCOL [PORTS] [CIDR | sg:GROUP] [ACTION]`, e.g. `in tcp 22 0.0.0.0/0`,
 * `in tcp 8000-8100 sg:web`, `out any 10.0.0.0/8 drop`. DIRECTION: in|ingress|out|egress;
 * PROTOCOL: tcp|udp|icmp|any; ACTION: accept|allow|drop|deny (default: the server's, accept).
 */
export function parseRule(s: string): Rule {
  const bad = (why: string): UsageError =>
    new UsageError(`invalid --rule ${JSON.stringify(s)}: ${why} (expected "DIRECTION PROTOCOL [PORTS] [CIDR|sg:GROUP] [ACTION]", e.g. "in tcp 22 0.0.0.0/0")`);
  const t = s.trim().split(/\s+/).filter(Boolean);
  const [d, p, ...rest] = t;
  const direction = d ? DIRECTIONS[d.toLowerCase()] : undefined;
  if (!direction) throw bad(`direction ${JSON.stringify(d ?? '')} is not in, out, ingress or egress`);
  const protocol = PROTOCOLS.find((x) => x === p?.toLowerCase());
  if (!protocol) throw bad(`protocol ${JSON.stringify(p ?? '')} is not tcp, udp, icmp or any`);
  const rule: Rule = { direction, protocol };
  for (const tok of rest) {
    const low = tok.toLowerCase();
    if (/^\d+(-\d+)?$/.test(tok)) {
      if (rule.ports !== undefined) throw bad('two port specs');
      rule.ports = tok;
    } else if (low.startsWith('sg:')) {
      if (rule.group !== undefined || rule.cidr !== undefined) throw bad('more than one source/destination');
      rule.group = tok.slice(3);
    } else if (ACTIONS[low]) {
      if (rule.action !== undefined) throw bad('two actions');
      rule.action = ACTIONS[low];
    } else if (/^[0-9a-fA-F.:]+(\/\d{1,3})?$/.test(tok) && /[.:]/.test(tok)) {
      if (rule.group !== undefined || rule.cidr !== undefined) throw bad('more than one source/destination');
      rule.cidr = tok;
    } else {
      throw bad(`${JSON.stringify(tok)} is neither ports (22, 8000-8100), a CIDR, sg:GROUP nor an action`);
    }
  }
  return rule;
}

export function formatRule(r: Rule): string {
  return [r.direction === 'ingress' ? 'in' : 'out', r.protocol, r.ports !== undefined ? String(r.ports) : '', r.group ? `sg:${r.group}` : (r.cidr ?? ''), r.action ?? '']
    .filter(Boolean)
    .join(' ');
}

function renderSg(g: SecurityGroupT): string {
  let out = kv([
    ['id', g.id],
    ['name', g.name],
    ['tenant', g.tenant],
    ['description', dash(g.description)],
    ['created', g.createdAt],
  ]);
  if (g.rules.length === 0) return out + 'rules:        <none>\n';
  out += 'rules:\n';
  out += renderTable(
    ['DIRECTION', 'PROTOCOL', 'PORTS', 'PEER', 'ACTION', 'DESCRIPTION'],
    g.rules.map((r) => [r.direction, r.protocol, dash(r.ports), r.group ? `sg:${r.group}` : dash(r.cidr), r.action ?? 'accept', r.description ?? '']),
  )
    .split('\n')
    .map((l) => (l ? '  ' + l : l))
    .join('\n');
  return out;
}

// ---------------------------------------------------------------------------
// tenants

const QUOTA_INT = ['vms', 'vcpu', 'snapshots', 'volumes'] as const;
const QUOTA_QTY = ['memory', 'disk'] as const;

/** `--quota vms=10 --quota memory=8Gi` → quotas. */
export function parseQuotas(list: string[] | undefined): TenantQuotasT | undefined {
  if (!list?.length) return undefined;
  const q: Record<string, unknown> = {};
  for (const s of list) {
    const i = s.indexOf('=');
    const k = i > 0 ? s.slice(0, i) : '';
    const v = s.slice(i + 1);
    if ((QUOTA_INT as readonly string[]).includes(k)) q[k] = parseIntArg(v, `--quota ${k}`, 0);
    else if ((QUOTA_QTY as readonly string[]).includes(k)) q[k] = v;
    else throw new UsageError(`invalid --quota ${JSON.stringify(s)} (expected KEY=VALUE with KEY one of ${[...QUOTA_INT, ...QUOTA_QTY].join(', ')})`);
  }
  return q as TenantQuotasT;
}

function quotasText(q: TenantQuotasT | undefined): string {
  const e = Object.entries(q ?? {});
  return e.length ? e.map(([k, v]) => `${k}=${String(v)}`).join(',') : 'unlimited';
}

function renderTenant(t: TenantT): string {
  const pairs: Array<[string, string]> = [
    ['id', t.id],
    ['display name', dash(t.displayName)],
    ['quotas', quotasText(t.quotas)],
  ];
  const labels = Object.entries(t.labels ?? {});
  if (labels.length) pairs.push(['labels', labels.map(([k, v]) => `${k}=${v}`).join(',')]);
  pairs.push(['created', t.createdAt]);
  return kv(pairs);
}

function renderUsage(u: TenantUsageT): string {
  const line = (name: string, l: { used: number; limit: number | null }): string[] => [name, String(l.used), l.limit === null ? 'unlimited' : String(l.limit)];
  return (
    `tenant: ${u.tenant}\n` +
    renderTable(['RESOURCE', 'USED', 'LIMIT'], [
      line('vms', u.vms),
      line('vcpu', u.vcpu),
      line('memory (MiB)', u.memoryMiB),
      line('disk (MiB)', u.diskMiB),
      line('snapshots', u.snapshots),
      line('volumes', u.volumes),
    ])
  );
}

// ---------------------------------------------------------------------------

/** `1h`, `30m` (that long ago) or an RFC 3339 time → RFC 3339. */
export function parseSince(s: string, what: string, now = Date.now()): string {
  if (/^\d+(\.\d+)?(ms|s|m|h)$/.test(s.trim())) return new Date(now - parseDuration(s, what)).toISOString();
  const t = Date.parse(s);
  if (Number.isNaN(t) || !/^\d{4}-\d{2}-\d{2}T/.test(s)) throw new UsageError(`invalid ${what} ${JSON.stringify(s)} (expected a duration like 1h or an RFC 3339 time like 2024-05-01T12:00:00Z)`);
  return new Date(t).toISOString();
}

const AUDIT_RESULTS = ['allowed', 'denied', 'failed'] as const;

const snapRow = (s: SnapshotT): string[] => [s.id, s.name, s.vmId, s.phase, s.sizeBytes !== undefined ? bytes(s.sizeBytes) : '-', s.node, age(s.createdAt)];
const SNAP_HEADERS = ['ID', 'NAME', 'VM', 'PHASE', 'SIZE', 'NODE', 'AGE'];
const keyRow = (k: ApiKeyT): string[] => [k.id, k.name, k.tenant, k.role, k.state, dash(k.expiresAt), age(k.createdAt)];
const KEY_HEADERS = ['ID', 'NAME', 'TENANT', 'ROLE', 'STATE', 'EXPIRES', 'AGE'];

function defaultSnapshotName(vm: string, now = new Date()): string {
  const stamp = now.toISOString().replace(/[-:T]/g, '').slice(0, 14);
  const base = vm.toLowerCase().replace(/[^a-z0-9-]/g, '-').replace(/^-+|-+$/g, '').slice(0, 40) || 'vm';
  return `${base}-${stamp}`;
}

export function registerMoreCommands(sub: Sub, ctxOf: (cmd: Command) => MoreCtx, about: About): void {
  /** `rm <id>` (alias delete) of a resource whose DELETE answers nothing: prints `done(id)`, or the id with -q. */
  const rm = (parent: Command, name: string, desc: string, kind: string, del: (client: MvmClient, id: string) => Promise<void>, done: (id: string) => string): void => {
    child(parent, name, desc)
      .alias('delete')
      .action(async (id: string, _o: unknown, c: Command) => {
        about(kind, id);
        const ctx = ctxOf(c);
        await del(ctx.client, id);
        printDeleted(ctx, undefined, done(id), id);
      });
  };

  // ---- snapshots --------------------------------------------------------
  const snap = group(sub, 'snapshot', 'manage microVM snapshots (memory, devices and disks)', [
    'mvm snapshot create web --name web-before-upgrade',
    'mvm snapshot ls --vm web',
    'mvm create web2 --from-snapshot web-before-upgrade',
    'mvm snapshot rm web-before-upgrade',
  ]).alias('snapshots');
  child(snap, 'create <vm>', 'snapshot a running or paused microVM')
    .option('--name <name>', 'snapshot name (default: VM-YYYYMMDDhhmmss)')
    .action(async (vm: string, o: { name?: string }, c: Command) => {
      about('microVM', vm);
      const ctx = ctxOf(c);
      const s = await ctx.client.createSnapshot(vm, o.name ?? defaultSnapshotName(vm));
      printOne(ctx, s, `snapshot "${s.name}" (${s.id}) of ${s.vmId}: ${s.phase}${s.message ? ` (${s.message})` : ''}\n`, s.id);
    });
  child(snap, 'list', 'list snapshots')
    .alias('ls')
    .option('--vm <vm>', 'only the snapshots of this microVM')
    .action(async (o: { vm?: string }, c: Command) => {
      if (o.vm) about('microVM', o.vm);
      const ctx = ctxOf(c);
      const { items } = await ctx.client.listSnapshots(o.vm);
      printList(ctx, items, undefined, 'snapshots', SNAP_HEADERS, snapRow, (s) => s.id);
    });
  child(snap, 'get <id>', 'show a snapshot (by id or name)').action(async (id: string, _o: unknown, c: Command) => {
    about('snapshot', id);
    const ctx = ctxOf(c);
    const s = await ctx.client.getSnapshot(id);
    const pairs: Array<[string, string]> = [
      ['id', s.id],
      ['name', s.name],
      ['tenant', s.tenant],
      ['vm', s.vmId],
      ['phase', s.phase],
    ];
    if (s.message) pairs.push(['message', s.message]);
    pairs.push(['driver', s.driver], ['node', s.node], ['vcpu', dash(s.spec?.vcpu)], ['memory', dash(s.spec?.memory)], ['size', s.sizeBytes !== undefined ? bytes(s.sizeBytes) : '-'], ['created', s.createdAt]);
    printOne(ctx, s, kv(pairs), s.id);
  });
  rm(snap, 'rm <id>', 'delete a snapshot (refused while microVMs restored from it exist)', 'snapshot', (client, id) => client.deleteSnapshot(id), (id) => `snapshot "${id}" deleted\n`);

  // ---- security groups --------------------------------------------------
  const sg = group(sub, 'sg', 'manage security groups (firewall rules of microVMs)', [
    'mvm sg create web --rule "in tcp 80" --rule "in tcp 443" --rule "in tcp 22 10.0.0.0/8"',
    'mvm sg create db --rule "in tcp 5432 sg:web" --description "postgres from web only"',
    'mvm sg create edge -f edge-sg.yaml        # {name, description, rules: [{direction, protocol, ports, cidr|group, action}]}',
    'mvm sg update web --rule "in tcp 80" --rule "out any 0.0.0.0/0 drop"   # replaces all rules',
    'mvm sg ls',
    'mvm sg rm web',
  ]).alias('securitygroup');
  sg.addHelpText(
    'after',
    '\nRule syntax (--rule, repeatable): DIRECTION PROTOCOL [PORTS] [CIDR | sg:GROUP] [ACTION]\n' +
      '  DIRECTION  in | out (ingress | egress)\n' +
      '  PROTOCOL   tcp | udp | icmp | any\n' +
      '  PORTS      22 or 8000-8100 (tcp/udp only)\n' +
      '  CIDR       e.g. 0.0.0.0/0, 10.0.0.0/8, fd00::/8; sg:GROUP names another group of the tenant\n' +
      '  ACTION     accept (allow) | drop (deny); default accept\n',
  );
  const rulesOf = (o: { rule?: string[] }): Rule[] | undefined => (o.rule ? o.rule.map(parseRule) : undefined);
  child(sg, 'create [name]', 'create a security group')
    .option('--description <text>', 'description')
    .option('--rule <rule>', 'a rule, e.g. "in tcp 22 0.0.0.0/0" (repeatable; see mvm sg --help)', collect)
    .option('-f, --file <path>', 'read the group from a JSON or YAML file ("-" for stdin); flags override it')
    .action(async (name: string | undefined, o: { description?: string; rule?: string[]; file?: string }, c: Command) => {
      const body: Record<string, unknown> = o.file ? readDoc(o.file) : {};
      if (name) body.name = name;
      if (!body.name) throw new UsageError('a name is required: mvm sg create NAME (or "name" in the -f file)');
      if (o.description !== undefined) body.description = o.description;
      const rules = rulesOf(o);
      if (rules) body.rules = rules;
      if (body.rules === undefined) body.rules = [];
      about('security group', String(body.name));
      const ctx = ctxOf(c);
      const g = await ctx.client.createSecurityGroup(body as never);
      printOne(ctx, g, renderSg(g), g.id);
    });
  child(sg, 'list', 'list security groups')
    .alias('ls')
    .action(async (_o: unknown, c: Command) => {
      const ctx = ctxOf(c);
      const { items } = await ctx.client.listSecurityGroups();
      printList(ctx, items, undefined, 'security groups', ['ID', 'NAME', 'RULES', 'DESCRIPTION', 'AGE'], (g) => [g.id, g.name, String(g.rules.length), g.description ?? '', age(g.createdAt)], (g) => g.id);
    });
  child(sg, 'get <id>', 'show a security group (by id or name)').action(async (id: string, _o: unknown, c: Command) => {
    about('security group', id);
    const ctx = ctxOf(c);
    const g = await ctx.client.getSecurityGroup(id);
    printOne(ctx, g, renderSg(g), g.id);
  });
  child(sg, 'update <id>', 'change a security group; --rule/-f rules replace all its rules (applies to running microVMs at once)')
    .option('--description <text>', 'new description')
    .option('--rule <rule>', 'a rule (repeatable); the given rules replace the current ones', collect)
    .option('--no-rules', 'remove every rule')
    .option('-f, --file <path>', 'read {description, rules} from a JSON or YAML file ("-" for stdin)')
    .action(async (id: string, o: { description?: string; rule?: string[]; rules: boolean; file?: string }, c: Command) => {
      const body: Record<string, unknown> = o.file ? readDoc(o.file) : {};
      delete body.name;
      if (o.description !== undefined) body.description = o.description;
      const rules = rulesOf(o);
      if (rules) body.rules = rules;
      if (o.rules === false) {
        if (rules) throw new UsageError('--no-rules and --rule contradict each other');
        body.rules = [];
      }
      if (Object.keys(body).length === 0) throw new UsageError('nothing to update: pass --description, --rule, --no-rules or -f');
      about('security group', id);
      const ctx = ctxOf(c);
      const g = await ctx.client.updateSecurityGroup(id, body as never);
      printOne(ctx, g, renderSg(g), g.id);
    });
  rm(sg, 'rm <id>', 'delete a security group (refused while microVMs use it)', 'security group', (client, id) => client.deleteSecurityGroup(id), (id) => `security group "${id}" deleted\n`);

  // ---- tenants (admin) ---------------------------------------------------
  const tenant = group(sub, 'tenant', 'manage tenants and their quotas (admins)', [
    'mvm tenant create acme --display-name "ACME Corp" --quota vms=10 --quota memory=8Gi',
    'mvm tenant update acme --quota vms=20 --label tier=gold',
    'mvm tenant usage acme',
    'mvm tenant rm acme --cascade',
  ]).alias('tenants');
  const quotaHelp = `quota KEY=VALUE, KEY one of ${[...QUOTA_INT, ...QUOTA_QTY].join(', ')} (repeatable)`;
  child(tenant, 'create <id>', 'create a tenant')
    .option('--display-name <text>', 'human-readable name')
    .option('--quota <k=v>', quotaHelp, collect)
    .option('--label <k=v>', 'label (repeatable)', collect)
    .action(async (id: string, o: { displayName?: string; quota?: string[]; label?: string[] }, c: Command) => {
      const quotas = parseQuotas(o.quota);
      const labels = parseLabels(o.label);
      about('tenant', id);
      const ctx = ctxOf(c);
      const t = await ctx.client.createTenant({ id, ...(o.displayName !== undefined ? { displayName: o.displayName } : {}), ...(quotas ? { quotas } : {}), ...(labels ? { labels } : {}) });
      printOne(ctx, t, renderTenant(t), t.id);
    });
  child(tenant, 'list', 'list tenants')
    .alias('ls')
    .option('--limit <n>', 'at most N tenants (one page); default: all')
    .action(async (o: { limit?: string }, c: Command) => {
      const limit = o.limit !== undefined ? parseIntArg(o.limit, '--limit', 1) : undefined;
      const ctx = ctxOf(c);
      const { items, next } = await pages(limit, (cursor) => ctx.client.listTenants({ limit, cursor }));
      printList(ctx, items, next, 'tenants', ['ID', 'DISPLAY NAME', 'QUOTAS', 'AGE'], (t) => [t.id, dash(t.displayName), quotasText(t.quotas), age(t.createdAt)], (t) => t.id);
    });
  child(tenant, 'get <id>', 'show a tenant').action(async (id: string, _o: unknown, c: Command) => {
    about('tenant', id);
    const ctx = ctxOf(c);
    const t = await ctx.client.getTenant(id);
    printOne(ctx, t, renderTenant(t), t.id);
  });
  child(tenant, 'update <id>', 'change a tenant: --quota replaces the quotas given (others keep their values), --label k=v / k- edits labels')
    .option('--display-name <text>', 'human-readable name')
    .option('--quota <k=v>', quotaHelp, collect)
    .option('--label <k=v>', 'set a label, or remove one with k- (repeatable)', collect)
    .action(async (id: string, o: { displayName?: string; quota?: string[]; label?: string[] }, c: Command) => {
      const quotas = parseQuotas(o.quota);
      const edits = o.label ? parseLabelEdits(o.label) : undefined;
      if (o.displayName === undefined && !quotas && !edits) throw new UsageError('nothing to update: pass --display-name, --quota or --label');
      about('tenant', id);
      const ctx = ctxOf(c);
      const patch: Record<string, unknown> = {};
      if (o.displayName !== undefined) patch.displayName = o.displayName;
      if (quotas || edits) {
        // PUT replaces quotas and labels as a whole: merge with the current values.
        const cur = await ctx.client.getTenant(id);
        if (quotas) patch.quotas = { ...(cur.quotas ?? {}), ...quotas };
        if (edits) {
          const labels = { ...(cur.labels ?? {}), ...edits.set };
          for (const k of edits.remove) delete labels[k];
          patch.labels = labels;
        }
      }
      const t = await ctx.client.updateTenant(id, patch);
      printOne(ctx, t, renderTenant(t), t.id);
    });
  child(tenant, 'rm <id>', 'delete a tenant (refused while it owns resources unless --cascade)')
    .alias('delete')
    .option('--cascade', 'also delete everything the tenant owns')
    .action(async (id: string, o: { cascade?: boolean }, c: Command) => {
      about('tenant', id);
      const ctx = ctxOf(c);
      const r = await ctx.client.deleteTenant(id, { cascade: Boolean(o.cascade) });
      printDeleted(ctx, r, `tenant "${id}" deleted\n`, id);
    });
  child(tenant, 'usage <id>', 'show quota usage of a tenant: used vs limit').action(async (id: string, _o: unknown, c: Command) => {
    about('tenant', id);
    const ctx = ctxOf(c);
    const u = await ctx.client.tenantUsage(id);
    printOne(ctx, u, renderUsage(u), u.tenant);
  });

  // ---- API keys ----------------------------------------------------------
  const key = group(sub, 'key', 'manage API keys (the secret is shown once, at creation)', [
    'mvm key create ci --role member --expires-in 30d',
    'mvm key create deploy --tenant acme --role tenant-admin     # admins: a key of another tenant',
    'MVM_TOKEN=$(mvm key create ci -q)                           # -q prints only the secret',
    'mvm key ls',
    'mvm key rm k-0123abcd',
  ]).alias('apikey');
  child(key, 'create <name>', 'create an API key and print its secret token (once: it is stored only as a hash); with -q only the token')
    .option('--role <role>', 'admin, tenant-admin, member or viewer (default: the server\'s, member)')
    .option('--expires-in <duration>', 'lifetime, e.g. 12h, 30d')
    .option('--expires-at <time>', 'expiry as RFC 3339, e.g. 2025-01-01T00:00:00Z')
    .option('--tenant <tenant>', 'the tenant of the key (admins; default: your own)')
    .action(async (name: string, o: { role?: string; expiresIn?: string; expiresAt?: string; tenant?: string }, c: Command) => {
      about('API key', name);
      const ctx = ctxOf(c);
      const req = { name, ...(o.role ? { role: o.role } : {}), ...(o.expiresIn ? { expiresIn: o.expiresIn } : {}), ...(o.expiresAt ? { expiresAt: o.expiresAt } : {}) };
      const k = await ctx.client.createApiKey(req as never, o.tenant ? { tenant: o.tenant } : {});
      if (ctx.output !== 'table') ctx.io.stdout.write(serialize(k, ctx.output));
      else if (ctx.quiet) ctx.io.stdout.write(`${k.token}\n`);
      else {
        ctx.io.stdout.write(kv([['id', k.id], ['name', k.name], ['tenant', k.tenant], ['role', k.role], ['expires', dash(k.expiresAt)], ['token', k.token]]));
        ctx.io.stderr.write('Store the token now: it is not shown again.\n');
      }
    });
  child(key, 'list', 'list API keys (never their secrets)')
    .alias('ls')
    .option('--tenant <tenant>', 'only the keys of this tenant (admins)')
    .option('--limit <n>', 'at most N keys (one page); default: all')
    .action(async (o: { tenant?: string; limit?: string }, c: Command) => {
      const limit = o.limit !== undefined ? parseIntArg(o.limit, '--limit', 1) : undefined;
      const ctx = ctxOf(c);
      const { items, next } = await pages(limit, (cursor) => ctx.client.listApiKeys({ tenant: o.tenant, limit, cursor }));
      printList(ctx, items, next, 'API keys', KEY_HEADERS, keyRow, (k) => k.id);
    });
  child(key, 'rm <id>', 'revoke an API key (at once)')
    .alias('revoke')
    .action(async (id: string, _o: unknown, c: Command) => {
      about('API key', id);
      const ctx = ctxOf(c);
      const k = await ctx.client.revokeApiKey(id);
      printDeleted(ctx, k, `API key "${k.name}" (${k.id}) revoked\n`, k.id);
    });

  // ---- audit -------------------------------------------------------------
  group(sub, 'audit', 'query the audit log (admins; tenant-admins see their tenant)', [
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
    .action(async (o: Record<string, string | undefined>, c: Command) => {
      const result = AUDIT_RESULTS.find((x) => x === o.result);
      if (o.result !== undefined && !result) throw new UsageError(`invalid --result ${JSON.stringify(o.result)} (one of allowed, denied, failed)`);
      const limit = parseIntArg(o.limit ?? '100', '--limit', 1);
      const q = {
        tenant: o.tenant,
        subject: o.subject,
        keyId: o.keyId,
        result,
        operation: o.operation,
        resource: o.resource,
        resourceId: o.resourceId,
        since: o.since !== undefined ? parseSince(o.since, '--since') : undefined,
        until: o.until !== undefined ? parseSince(o.until, '--until') : undefined,
        limit,
      };
      const ctx = ctxOf(c);
      const p = await ctx.client.audit(q);
      printList(
        ctx,
        p.items,
        p.next_cursor,
        'audit entries',
        ['TIME', 'SUBJECT', 'TENANT', 'OPERATION', 'RESOURCE', 'RESULT', 'STATUS', 'REASON'],
        (e) => [e.time, dash(e.subject), dash(e.tenant), e.operation, e.resourceId ? `${e.resource}/${e.resourceId}` : e.resource, e.result, String(e.status), e.reason ?? e.code ?? ''],
        (e) => String(e.seq),
      );
    });

  // ---- image cache (admin) -----------------------------------------------
  const image = group(sub, 'image', "manage this node's image cache (admins)", ['mvm image ls', 'mvm image rm sha256:0123…', 'mvm image gc --max-idle 7d --max-bytes 10737418240']).alias('images');
  child(image, 'list', 'list cached root filesystems and kernels')
    .alias('ls')
    .action(async (_o: unknown, c: Command) => {
      const ctx = ctxOf(c);
      const { items } = await ctx.client.listImages();
      printList(
        ctx,
        items,
        undefined,
        'cached images',
        ['KIND', 'DIGEST', 'REFERENCES', 'SIZE', 'IN USE', 'LAST USED'],
        (i) => [i.kind, i.digest, i.references.join(',') || '-', bytes(i.sizeBytes), String(i.inUse), age(i.lastUsedAt)],
        (i) => i.digest,
      );
    });
  rm(image, 'rm <digest>', 'delete a cached image (refused while a microVM uses it)', 'image', (client, digest) => client.deleteImage(digest), (digest) => `image ${digest} deleted\n`);
  child(image, 'gc', 'garbage-collect unused cached images now')
    .option('--max-idle <duration>', 'remove unused images idle longer, e.g. 10m, 7d (default: the node policy)')
    .option('--max-bytes <n>', 'then remove least recently used unused images until the cache fits')
    .action(async (o: { maxIdle?: string; maxBytes?: string }, c: Command) => {
      if (o.maxIdle !== undefined && !/^[0-9]+(ms|s|m|h|d)$/.test(o.maxIdle)) throw new UsageError(`invalid --max-idle ${JSON.stringify(o.maxIdle)} (expected e.g. 10m, 12h, 7d)`);
      const req = { ...(o.maxIdle !== undefined ? { maxIdle: o.maxIdle } : {}), ...(o.maxBytes !== undefined ? { maxBytes: parseIntArg(o.maxBytes, '--max-bytes', 0) } : {}) };
      const ctx = ctxOf(c);
      const r = await ctx.client.gcImages(req);
      if (ctx.output !== 'table') ctx.io.stdout.write(serialize(r, ctx.output));
      else if (ctx.quiet) for (const x of r.removed) ctx.io.stdout.write(`${x.digest}\n`);
      else {
        ctx.io.stdout.write(`removed ${r.removed.length} image(s), freed ${bytes(r.freedBytes)}; kept ${r.keptInUse} in use; cache now ${bytes(r.remainingBytes)}\n`);
        if (r.removed.length) ctx.io.stdout.write(renderTable(['KIND', 'DIGEST', 'SIZE'], r.removed.map((x) => [x.kind, x.digest, bytes(x.sizeBytes)])));
      }
    });
}
