/**
 * `mvm pause|resume|snapshot|sg|tenant|key|audit|image` and `mvm create --from-snapshot` against
 * the real service (no guest needed): each command maps to one REST call; errors name the
 * server's fields; --quiet prints ids (the secret for `key create`); -o json/yaml the objects.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { apiCall, destroyDataDir, startService, type TestService } from '../support/service.js';
import { cliRunner, type CliResult } from '../support/cli.js';
import { parseSince } from '../../src/cli/commands/audit.js';
import { formatRule, parseRule } from '../../src/cli/commands/security-group.js';
import { parseQuotas } from '../../src/cli/commands/tenant.js';
import { buildCreateRequest } from '../../src/cli/main.js';

let svc: TestService;
const home = mkdtempSync(join(tmpdir(), 'mvm-clion-home-'));
const imageCache = mkdtempSync(join(tmpdir(), 'mvm-clion-images-'));

const mvm = cliRunner(() => svc, home);

function ok(r: CliResult): string {
  assert.equal(r.code, 0, `expected success, got ${r.code}: ${r.err}`);
  return r.out;
}

function fails(r: CliResult, re: RegExp): void {
  assert.equal(r.code, 1, `expected failure, got ${r.code}: ${r.out}${r.err}`);
  assert.match(r.err, re);
  assert.doesNotMatch(r.err, /\n\s+at /, 'no stack trace');
}

before(async () => {
  svc = await startService({ env: { MVM_NETWORK: 'none', MVM_IMAGE_CACHE_DIR: imageCache, MVM_IMAGE_GC_INTERVAL: '0' } });
});
after(async () => {
  await svc?.stop();
  if (svc) await destroyDataDir(svc.dataDir);
  rmSync(home, { recursive: true, force: true });
  rmSync(imageCache, { recursive: true, force: true });
});

describe('argument parsers', () => {
  test('--rule syntax', () => {
    assert.deepEqual(parseRule('in tcp 22 0.0.0.0/0'), { direction: 'ingress', protocol: 'tcp', ports: '22', cidr: '0.0.0.0/0' });
    assert.deepEqual(parseRule('egress ANY 10.0.0.0/8 deny'), { direction: 'egress', protocol: 'any', cidr: '10.0.0.0/8', action: 'drop' });
    assert.deepEqual(parseRule(' in  udp 8000-8100 sg:web allow '), { direction: 'ingress', protocol: 'udp', ports: '8000-8100', group: 'web', action: 'accept' });
    assert.deepEqual(parseRule('in icmp fd00::/8'), { direction: 'ingress', protocol: 'icmp', cidr: 'fd00::/8' });
    assert.throws(() => parseRule('sideways tcp 22'), /direction "sideways" is not in, out/);
    assert.throws(() => parseRule('in sctp 22'), /protocol "sctp" is not tcp/);
    assert.throws(() => parseRule('in tcp 22 23'), /two port specs/);
    assert.throws(() => parseRule('in tcp 22 10.0.0.0/8 sg:web'), /more than one source/);
    assert.throws(() => parseRule('in tcp ssh'), /"ssh" is neither ports/);
    assert.equal(formatRule(parseRule('in tcp 22 sg:web drop')), 'in tcp 22 sg:web drop');
  });
  test('--quota and --since', () => {
    assert.deepEqual(parseQuotas(['vms=3', 'memory=2Gi', 'volumes=0']), { vms: 3, memory: '2Gi', volumes: 0 });
    assert.equal(parseQuotas(undefined), undefined);
    assert.throws(() => parseQuotas(['cpus=3']), /KEY one of vms, vcpu/);
    assert.throws(() => parseQuotas(['vms=many']), /--quota vms must be a whole number/);
    assert.equal(parseSince('1h', '--since', Date.parse('2024-05-01T12:00:00Z')), '2024-05-01T11:00:00.000Z');
    assert.equal(parseSince('2024-05-01T12:00:00+02:00', '--since'), '2024-05-01T10:00:00.000Z');
    assert.throws(() => parseSince('yesterday', '--since'), /invalid --since "yesterday"/);
  });
  test('create --from-snapshot sets the REST field "snapshot"', () => {
    const req = buildCreateRequest('clone', { start: true, timeout: '1s', fromSnapshot: 'snap-1' } as never) as unknown as Record<string, unknown>;
    assert.equal(req.snapshot, 'snap-1');
    assert.equal(req.name, 'clone');
  });
});

describe('security groups', () => {
  test('create with --rule, get, ls, update replaces rules, rm; errors name fields', () => {
    const web = JSON.parse(ok(mvm('sg', 'create', 'web', '--rule', 'in tcp 80', '--rule', 'in tcp 22 10.0.0.0/8 drop', '--description', 'front', '-o', 'json'))) as {
      id: string;
      rules: unknown[];
      description: string;
    };
    assert.match(web.id, /^sg-/);
    assert.equal(web.description, 'front');
    assert.deepEqual(web.rules, [
      { direction: 'ingress', protocol: 'tcp', ports: '80' },
      { direction: 'ingress', protocol: 'tcp', ports: '22', cidr: '10.0.0.0/8', action: 'drop' },
    ]);
    // -f file, with a rule referring to the other group
    const file = join(home, 'db-sg.yaml');
    writeFileSync(file, 'name: db\ndescription: postgres\nrules:\n  - {direction: ingress, protocol: tcp, ports: 5432, group: web}\n');
    const dbId = ok(mvm('sg', 'create', '-f', file, '-q')).trim();
    assert.match(dbId, /^sg-/);

    const table = ok(mvm('sg', 'get', 'db'));
    assert.match(table, /^name:\s+db$/m);
    assert.match(table, /ingress\s+tcp\s+5432\s+sg:web\s+accept/);
    const ls = ok(mvm('sg', 'ls'));
    assert.match(ls, /^ID\s+NAME\s+RULES/);
    assert.match(ls, new RegExp(`^${web.id}\\s+web\\s+2\\s+front`, 'm'));
    assert.deepEqual(ok(mvm('sg', 'ls', '-q')).trim().split('\n').sort(), [web.id, dbId].sort());

    const upd = parseYaml(ok(mvm('sg', 'update', 'web', '--rule', 'out any 0.0.0.0/0 deny', '-o', 'yaml'))) as { rules: unknown[]; description: string };
    assert.deepEqual(upd.rules, [{ direction: 'egress', protocol: 'any', cidr: '0.0.0.0/0', action: 'drop' }]);
    assert.equal(upd.description, 'front', 'update leaves what it was not given');

    // client-side usage errors: nothing sent
    fails(mvm('sg', 'create', 'x', '--rule', 'in tcp ssh'), /invalid --rule "in tcp ssh"/);
    fails(mvm('sg', 'update', 'web'), /nothing to update/);
    // server-side validation: the field of the problem+json
    fails(mvm('sg', 'create', 'bad', '--rule', 'in tcp 22 999.1.1.1/40'), /rules\[0\]\.cidr: must match pattern/);
    fails(mvm('sg', 'create', 'bad', '--rule', 'in icmp 22'), /rules\[0\]\.ports: .*tcp or udp/);
    fails(mvm('sg', 'create', 'web'), /already exists|in use|conflict/i);
    fails(mvm('sg', 'rm', 'web'), /in use by/);

    assert.equal(ok(mvm('sg', 'rm', 'db')), 'security group "db" deleted\n');
    assert.equal(ok(mvm('sg', 'rm', 'web', '-q')).trim(), 'web');
    fails(mvm('sg', 'get', 'web'), /^error: security group "web" not found$/m);
    assert.match(mvm('sg', 'ls').err, /No security groups found/);
  });
});

describe('tenants, keys, audit', () => {
  test('tenant create/get/update/usage/ls/rm', () => {
    const t = JSON.parse(ok(mvm('tenant', 'create', 'acme', '--display-name', 'ACME', '--quota', 'vms=3', '--quota', 'memory=2Gi', '--label', 'tier=gold', '-o', 'json'))) as {
      id: string;
      quotas: unknown;
      labels: unknown;
    };
    assert.equal(t.id, 'acme');
    assert.deepEqual(t.quotas, { vms: 3, memory: '2Gi' });
    assert.deepEqual(t.labels, { tier: 'gold' });
    fails(mvm('tenant', 'create', 'acme'), /tenant "acme" already exists/);
    fails(mvm('tenant', 'create', 'Bad_Id'), /id: must match pattern/);
    fails(mvm('tenant', 'create', 'x', '--quota', 'cpus=1'), /invalid --quota "cpus=1"/);

    const u = JSON.parse(ok(mvm('tenant', 'update', 'acme', '--quota', 'vcpu=4', '--label', 'tier-', '--label', 'env=prod', '-o', 'json'))) as { quotas: unknown; labels: unknown };
    assert.deepEqual(u.quotas, { vms: 3, memory: '2Gi', vcpu: 4 }, 'quotas merge');
    assert.deepEqual(u.labels, { env: 'prod' });
    assert.match(ok(mvm('tenant', 'get', 'acme')), /^quotas:\s+vms=3,memory=2Gi,vcpu=4$/m);

    const usage = ok(mvm('tenant', 'usage', 'acme'));
    assert.match(usage, /^vms\s+0\s+3$/m);
    assert.match(usage, /^memory \(MiB\)\s+0\s+2048$/m);
    assert.match(usage, /^volumes\s+0\s+unlimited$/m);
    assert.deepEqual(ok(mvm('tenant', 'ls', '-q')).trim().split('\n').sort(), ['acme', 'default']);
    const one = JSON.parse(ok(mvm('tenant', 'ls', '--limit', '1', '-o', 'json'))) as { items: unknown[]; next_cursor?: string };
    assert.equal(one.items.length, 1);
    assert.ok(one.next_cursor, 'one page of one tenant says more exist');

    fails(mvm('tenant', 'get', 'nope'), /^error: tenant "nope" not found$/m);
    fails(mvm('tenant', 'usage', 'nope'), /tenant "nope" not found/);
  });

  test('key create prints the secret once; the key works, is listed, and is revoked by rm; audit shows the denial', async () => {
    const k = JSON.parse(ok(mvm('key', 'create', 'ci', '--tenant', 'acme', '--role', 'viewer', '-o', 'json'))) as { id: string; token: string; role: string; tenant: string };
    assert.equal(k.role, 'viewer');
    assert.equal(k.tenant, 'acme');
    assert.ok(k.token.length > 20);
    const table = mvm('key', 'create', 'ci2', '--tenant', 'acme', '--expires-in', '1d');
    assert.match(ok(table), /^token:\s+\S{20,}$/m);
    assert.match(table.err, /not shown again/);
    const secret = ok(mvm('key', 'create', 'ci3', '--tenant', 'acme', '-q')).trim();
    assert.match(secret, /^\S{20,}$/);
    assert.equal((await apiCall({ url: svc.url, token: secret }, 'GET', '/whoami')).json.tenant, 'acme', '-q printed a working token');
    fails(mvm('key', 'create', 'bad', '--role', 'emperor'), /role/);

    // the viewer key reads, is denied writes
    assert.match(mvm('--token', k.token, 'sg', 'ls').err, /No security groups found/);
    fails(mvm('--token', k.token, 'sg', 'create', 'x'), /permission denied: .*securitygroups:write/);

    const keys = ok(mvm('key', 'ls', '--tenant', 'acme'));
    assert.match(keys, new RegExp(`^${k.id}\\s+ci\\s+acme\\s+viewer\\s+active`, 'm'));
    assert.doesNotMatch(keys + ok(mvm('key', 'ls', '-o', 'json')), new RegExp(k.token), 'listing never shows secrets');
    assert.match(ok(mvm('key', 'rm', k.id)), new RegExp(`API key "ci" \\(${k.id}\\) revoked`));
    fails(mvm('--token', k.token, 'sg', 'ls'), /authentication failed: .*revoked/);
    fails(mvm('key', 'rm', 'key-nope'), /API key "key-nope" not found/);

    const denied = JSON.parse(ok(mvm('audit', '--result', 'denied', '--tenant', 'acme', '-o', 'json'))) as { items: Array<{ operation: string; result: string; status: number }> };
    assert.ok(
      denied.items.some((e) => e.operation === 'securitygroups.create' && e.status === 403),
      JSON.stringify(denied.items),
    );
    assert.ok(denied.items.every((e) => e.result === 'denied'));
    const audit = ok(mvm('audit', '--operation', 'tenants.create', '--since', '1h'));
    assert.match(audit, /^TIME\s+SUBJECT\s+TENANT\s+OPERATION/);
    assert.match(audit, /tenants\.create\s+tenants\/acme\s+allowed\s+201/);
    assert.equal(JSON.parse(ok(mvm('audit', '--since', '2000-01-01T00:00:00Z', '--until', '2000-01-02T00:00:00Z', '-o', 'json'))).items.length, 0);
    assert.equal(JSON.parse(ok(mvm('audit', '--limit', '2', '-o', 'json'))).items.length, 2);
    fails(mvm('audit', '--result', 'maybe'), /invalid --result "maybe"/);
    fails(mvm('audit', '--since', 'yesterday'), /invalid --since/);

    // finally: rm a tenant
    assert.equal(ok(mvm('tenant', 'rm', 'acme', '--cascade')), 'tenant "acme" deleted\n');
    fails(mvm('tenant', 'get', 'acme'), /tenant "acme" not found/);
  });
});

describe('images, pause/resume, snapshots (no guest)', () => {
  test('image ls, gc, rm', () => {
    assert.deepEqual(JSON.parse(ok(mvm('image', 'ls', '-o', 'json'))), { items: [] });
    assert.match(mvm('image', 'ls').err, /No cached images found/);
    const gc = JSON.parse(ok(mvm('image', 'gc', '--max-idle', '7d', '-o', 'json'))) as { removed: unknown[]; freedBytes: number };
    assert.deepEqual(gc.removed, []);
    assert.equal(gc.freedBytes, 0);
    assert.match(ok(mvm('image', 'gc')), /^removed 0 image\(s\), freed 0 B/);
    fails(mvm('image', 'gc', '--max-idle', 'forever'), /invalid --max-idle/);
    fails(mvm('image', 'rm', 'sha256:0000'), /digest: must match pattern "\^sha256:\[0-9a-f\]\{64\}\$"/);
    fails(mvm('image', 'rm', 'sha256:' + 'a'.repeat(64)), /not found|no cached image/i);
  });

  test("pause, resume and snapshot of a stopped microVM give the server's clear error; snapshot ls/get/rm; create --from-snapshot of a missing one", () => {
    const id = ok(mvm('create', 'still', '--no-start', '-q')).trim();
    assert.match(id, /^vm-/);
    fails(mvm('pause', 'still'), /cannot pause microVM .* in phase (Stopped|Pending) \(allowed in: Running\)/);
    fails(mvm('resume', 'still'), /cannot resume microVM .* \(allowed in: Paused, Suspending, Suspended\)/);
    fails(mvm('snapshot', 'create', 'still', '--name', 'snap1'), /cannot snapshot microVM .* \(allowed in: Running, Paused\)/);
    fails(mvm('snapshot', 'create', 'still', '--name', 'Bad_Name'), /name: must match pattern/);
    fails(mvm('pause', 'ghost'), /^error: microVM "ghost" not found$/m);
    fails(mvm('snapshot', 'create', 'ghost'), /microVM "ghost" not found/);
    assert.deepEqual(JSON.parse(ok(mvm('snapshot', 'ls', '-o', 'json'))), { items: [] });
    assert.deepEqual(JSON.parse(ok(mvm('snapshot', 'ls', '--vm', 'still', '-o', 'json'))), { items: [] });
    assert.match(mvm('snapshot', 'ls').err, /No snapshots found/);
    fails(mvm('snapshot', 'get', 'nope'), /^error: snapshot "nope" not found$/m);
    fails(mvm('snapshot', 'rm', 'nope'), /snapshot "nope" not found/);
    fails(mvm('create', 'clone', '--from-snapshot', 'nope'), /snapshot "nope" does not exist[\s\S]*snapshot: no such snapshot/);
    ok(mvm('rm', 'still'));
  });

  test('help text shows examples and the rule syntax', () => {
    const h = ok(mvm('sg', '--help'));
    assert.match(h, /DIRECTION PROTOCOL \[PORTS\] \[CIDR \| sg:GROUP\] \[ACTION\]/);
    assert.match(h, /\$ mvm sg create web --rule "in tcp 80"/);
    for (const g of ['snapshot', 'tenant', 'key', 'audit', 'image']) assert.match(ok(mvm(g, '--help')), /Examples:\n\s+\$ mvm /, g);
    const top = ok(mvm('--help'));
    for (const c of ['pause', 'resume', 'snapshot', 'sg', 'tenant', 'key', 'audit', 'image']) assert.match(top, new RegExp(`^  ${c}\\b`, 'm'), c);
  });
});
