/** `mvm sg create|ls|get|update|rm`: security groups (the firewall rules of microVMs) and their rule syntax. */
import type { Command } from 'commander';
import type { SecurityGroupT } from '../../core/schema.js';
import { age, kv, renderTable } from '../format.js';
import { collect, readDoc, UsageError } from '../parse.js';
import { child, dash, group, printList, printOne, removeCommand, type CommandGroupDeps } from './common.js';

export type Rule = SecurityGroupT['rules'][number];

const DIRECTIONS: Record<string, Rule['direction']> = { in: 'ingress', ingress: 'ingress', out: 'egress', egress: 'egress' };
const PROTOCOLS = ['tcp', 'udp', 'icmp', 'any'] as const;
const ACTIONS: Record<string, NonNullable<Rule['action']>> = { accept: 'accept', allow: 'accept', drop: 'drop', deny: 'drop' };

/**
 * `DIRECTION PROTOCOL [PORTS] [CIDR | sg:GROUP] [ACTION]`, e.g. `in tcp 22 0.0.0.0/0`,
 * `in tcp 8000-8100 sg:web`, `out any 10.0.0.0/8 drop`. DIRECTION: in|ingress|out|egress;
 * PROTOCOL: tcp|udp|icmp|any; ACTION: accept|allow|drop|deny (default: the server's, accept).
 */
export function parseRule(text: string): Rule {
  const bad = (why: string): UsageError =>
    new UsageError(`invalid --rule ${JSON.stringify(text)}: ${why} (expected "DIRECTION PROTOCOL [PORTS] [CIDR|sg:GROUP] [ACTION]", e.g. "in tcp 22 0.0.0.0/0")`);
  const [directionWord, protocolWord, ...rest] = text.trim().split(/\s+/).filter(Boolean);
  const direction = directionWord ? DIRECTIONS[directionWord.toLowerCase()] : undefined;
  if (!direction) throw bad(`direction ${JSON.stringify(directionWord ?? '')} is not in, out, ingress or egress`);
  const protocol = PROTOCOLS.find((x) => x === protocolWord?.toLowerCase());
  if (!protocol) throw bad(`protocol ${JSON.stringify(protocolWord ?? '')} is not tcp, udp, icmp or any`);
  const rule: Rule = { direction, protocol };
  for (const token of rest) {
    const lower = token.toLowerCase();
    if (/^\d+(-\d+)?$/.test(token)) {
      if (rule.ports !== undefined) throw bad('two port specs');
      rule.ports = token;
    } else if (lower.startsWith('sg:')) {
      if (rule.group !== undefined || rule.cidr !== undefined) throw bad('more than one source/destination');
      rule.group = token.slice(3);
    } else if (ACTIONS[lower]) {
      if (rule.action !== undefined) throw bad('two actions');
      rule.action = ACTIONS[lower];
    } else if (/^[0-9a-fA-F.:]+(\/\d{1,3})?$/.test(token) && /[.:]/.test(token)) {
      if (rule.group !== undefined || rule.cidr !== undefined) throw bad('more than one source/destination');
      rule.cidr = token;
    } else {
      throw bad(`${JSON.stringify(token)} is neither ports (22, 8000-8100), a CIDR, sg:GROUP nor an action`);
    }
  }
  return rule;
}

export function formatRule(rule: Rule): string {
  return [rule.direction === 'ingress' ? 'in' : 'out', rule.protocol, rule.ports !== undefined ? String(rule.ports) : '', rule.group ? `sg:${rule.group}` : (rule.cidr ?? ''), rule.action ?? '']
    .filter(Boolean)
    .join(' ');
}

function renderSecurityGroup(sg: SecurityGroupT): string {
  let out = kv([
    ['id', sg.id],
    ['name', sg.name],
    ['tenant', sg.tenant],
    ['description', dash(sg.description)],
    ['created', sg.createdAt],
  ]);
  if (sg.rules.length === 0) return out + 'rules:        <none>\n';
  out += 'rules:\n';
  out += renderTable(
    ['DIRECTION', 'PROTOCOL', 'PORTS', 'PEER', 'ACTION', 'DESCRIPTION'],
    sg.rules.map((rule) => [rule.direction, rule.protocol, dash(rule.ports), rule.group ? `sg:${rule.group}` : dash(rule.cidr), rule.action ?? 'accept', rule.description ?? '']),
  )
    .split('\n')
    .map((line) => (line ? '  ' + line : line))
    .join('\n');
  return out;
}

const rulesOf = (opts: { rule?: string[] }): Rule[] | undefined => (opts.rule ? opts.rule.map(parseRule) : undefined);

export function registerSecurityGroupCommands(deps: CommandGroupDeps): void {
  const { about, contextOf } = deps;
  const groups = group(deps, 'sg', 'manage security groups (firewall rules of microVMs)', [
    'mvm sg create web --rule "in tcp 80" --rule "in tcp 443" --rule "in tcp 22 10.0.0.0/8"',
    'mvm sg create db --rule "in tcp 5432 sg:web" --description "postgres from web only"',
    'mvm sg create edge -f edge-sg.yaml        # {name, description, rules: [{direction, protocol, ports, cidr|group, action}]}',
    'mvm sg update web --rule "in tcp 80" --rule "out any 0.0.0.0/0 drop"   # replaces all rules',
    'mvm sg ls',
    'mvm sg rm web',
  ]).alias('securitygroup');
  groups.addHelpText(
    'after',
    '\nRule syntax (--rule, repeatable): DIRECTION PROTOCOL [PORTS] [CIDR | sg:GROUP] [ACTION]\n' +
      '  DIRECTION  in | out (ingress | egress)\n' +
      '  PROTOCOL   tcp | udp | icmp | any\n' +
      '  PORTS      22 or 8000-8100 (tcp/udp only)\n' +
      '  CIDR       e.g. 0.0.0.0/0, 10.0.0.0/8, fd00::/8; sg:GROUP names another group of the tenant\n' +
      '  ACTION     accept (allow) | drop (deny); default accept\n',
  );
  child(groups, 'create [name]', 'create a security group')
    .option('--description <text>', 'description')
    .option('--rule <rule>', 'a rule, e.g. "in tcp 22 0.0.0.0/0" (repeatable; see mvm sg --help)', collect)
    .option('-f, --file <path>', 'read the group from a JSON or YAML file ("-" for stdin); flags override it')
    .action(async (name: string | undefined, opts: { description?: string; rule?: string[]; file?: string }, command: Command) => {
      const body: Record<string, unknown> = opts.file ? readDoc(opts.file) : {};
      if (name) body.name = name;
      if (!body.name) throw new UsageError('a name is required: mvm sg create NAME (or "name" in the -f file)');
      if (opts.description !== undefined) body.description = opts.description;
      const rules = rulesOf(opts);
      if (rules) body.rules = rules;
      if (body.rules === undefined) body.rules = [];
      about('security group', String(body.name));
      const ctx = contextOf(command);
      const sg = await ctx.client.securityGroups.create(body as never);
      printOne(ctx, sg, renderSecurityGroup(sg), sg.id);
    });
  child(groups, 'list', 'list security groups')
    .alias('ls')
    .action(async (_opts: unknown, command: Command) => {
      const ctx = contextOf(command);
      const items = await ctx.client.securityGroups.list();
      printList(
        ctx,
        items,
        undefined,
        'security groups',
        ['ID', 'NAME', 'RULES', 'DESCRIPTION', 'AGE'],
        (sg) => [sg.id, sg.name, String(sg.rules.length), sg.description ?? '', age(sg.createdAt)],
        (sg) => sg.id,
      );
    });
  child(groups, 'get <id>', 'show a security group (by id or name)').action(async (id: string, _opts: unknown, command: Command) => {
    about('security group', id);
    const ctx = contextOf(command);
    const sg = await ctx.client.securityGroups.get(id);
    printOne(ctx, sg, renderSecurityGroup(sg), sg.id);
  });
  child(groups, 'update <id>', 'change a security group; --rule/-f rules replace all its rules (applies to running microVMs at once)')
    .option('--description <text>', 'new description')
    .option('--rule <rule>', 'a rule (repeatable); the given rules replace the current ones', collect)
    .option('--no-rules', 'remove every rule')
    .option('-f, --file <path>', 'read {description, rules} from a JSON or YAML file ("-" for stdin)')
    .action(async (id: string, opts: { description?: string; rule?: string[]; rules: boolean; file?: string }, command: Command) => {
      const body: Record<string, unknown> = opts.file ? readDoc(opts.file) : {};
      delete body.name;
      if (opts.description !== undefined) body.description = opts.description;
      const rules = rulesOf(opts);
      if (rules) body.rules = rules;
      if (opts.rules === false) {
        if (rules) throw new UsageError('--no-rules and --rule contradict each other');
        body.rules = [];
      }
      if (Object.keys(body).length === 0) throw new UsageError('nothing to update: pass --description, --rule, --no-rules or -f');
      about('security group', id);
      const ctx = contextOf(command);
      const sg = await ctx.client.securityGroups.update(id, body as never);
      printOne(ctx, sg, renderSecurityGroup(sg), sg.id);
    });
  removeCommand(deps, groups, 'rm <id>', 'delete a security group (refused while microVMs use it)', 'security group', (client, id) => client.securityGroups.delete(id), (id) => `security group "${id}" deleted\n`);
}
