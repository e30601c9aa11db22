/**
 * Backup and restore end to end (ADR 0022), with a real QEMU guest: a tenant's guest writes to
 * its volume and its root disk (through the guest agent, no `sync` of its own), `mvm backup` runs
 * against the live service, the first service and its guests go away, `mvm restore` fills a fresh
 * data dir, and a second service on it brings back the tenant, its API key (the old token still
 * works), its security group, its volume and its VM (Stopped); started again, the guest reads back
 * what it wrote. The snapshot whose files the backup does not carry comes back Failed and is named
 * in the restore report.
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { apiCall, destroyDataDir, qemuProcessesUnder, startService, type TestService } from '../support/service.js';
import { cliRunner } from '../support/cli.js';
import type { BackupManifest } from '../../src/core/ports/backup.js';

const work = mkdtempSync(join(tmpdir(), 'mvm-backup-'));
const restoredDir = join(work, 'restored');
let svc1: TestService | undefined;
let svc2: TestService | undefined;
after(async () => {
  const t = Date.now();
  await svc1?.stop().catch(() => undefined);
  await svc2?.stop().catch(() => undefined);
  process.stderr.write(`# stop: ${Date.now() - t} ms\n`);
  if (svc1) await destroyDataDir(svc1.dataDir);
  await destroyDataDir(restoredDir);
  rmSync(work, { recursive: true, force: true });
});

test('backup while running, restore into a fresh data dir: tenants, keys, groups, volumes, VMs, data', async () => {
  svc1 = await startService();
  const admin = (method: string, path: string, body?: unknown) => apiCall(svc1!, method, path, body);
  assert.equal((await admin('POST', '/tenants', { id: 'acme', quotas: { vms: 3, volumes: 2 } })).status, 201);
  const key = await admin('POST', '/apikeys?tenant=acme', { name: 'ci', role: 'tenant-admin' });
  assert.equal(key.status, 201, key.text);
  const acmeToken = key.json.token as string;
  const acme1 = (method: string, path: string, body?: unknown) => apiCall({ url: svc1!.url, token: acmeToken }, method, path, body);
  assert.equal((await acme1('POST', '/securitygroups', { name: 'web', rules: [{ direction: 'ingress', protocol: 'tcp', ports: '80', cidr: '0.0.0.0/0' }] })).status, 201);
  assert.equal((await acme1('POST', '/volumes', { name: 'data', size: '64Mi' })).status, 201);
  const created = await acme1('POST', '/microvms', { name: 'writer', volumes: [{ name: 'data', mountPath: '/data' }] });
  assert.equal(created.status, 201, created.text);
  const vmId = created.json.id as string;
  await svc1.client.microvms.waitFor(vmId, { phase: 'Running', ready: true, timeoutMs: 180_000 });

  // The guest writes; no sync of its own: the backup's quiesce must get the data to the disks.
  const secret = `backup-secret-${process.pid}-${Date.now()}`;
  const wrote = await acme1('POST', `/microvms/${vmId}/exec`, { cmd: ['sh', '-c', `echo ${secret} > /data/secret.txt && echo root-${secret} > /root/marker.txt`] });
  assert.equal(wrote.json?.exitCode, 0, wrote.text);
  const snap = await acme1('POST', `/microvms/${vmId}/snapshots`, { name: 'before-backup' });
  assert.equal(snap.status, 201, snap.text);
  const pidBefore = qemuProcessesUnder(svc1.dataDir).find((p) => p.id === vmId)?.pid;
  assert.ok(pidBefore);

  // Admins only.
  assert.equal((await acme1('POST', '/admin/backup')).status, 403);
  const file = join(work, 'mvm.tar');
  const cli1 = cliRunner(() => svc1!, join(work, 'home'), 120_000);
  const t0 = Date.now();
  const b = cli1('backup', file, '-o', 'json');
  const backupMs = Date.now() - t0;
  assert.equal(b.code, 0, b.err + b.out);
  const backup = JSON.parse(b.out) as { bytes: number; summary: { volumes: number; rootDisks: number; snapshots: number } };
  assert.deepEqual([backup.summary.volumes, backup.summary.rootDisks, backup.summary.snapshots], [1, 1, 1]);
  assert.equal(statSync(file).size, backup.bytes);
  assert.ok(!existsSync(join(svc1.dataDir, '.backup-staging')) || readdirSync(join(svc1.dataDir, '.backup-staging')).length === 0, 'staging removed');
  // The guest ran on: same VMM, resumed, answering.
  assert.equal(qemuProcessesUnder(svc1.dataDir).find((p) => p.id === vmId)?.pid, pidBefore);
  assert.equal((await acme1('POST', `/microvms/${vmId}/exec`, { cmd: ['true'] })).json?.exitCode, 0, 'the guest runs after the backup');
  // Both files of the running guest were copied while it was paused, after its agent synced.
  const manifest = JSON.parse(execFileSync('tar', ['-xOf', file, 'manifest.json'], { encoding: 'utf8' })) as BackupManifest;
  const files = [...manifest.volumes.map((v) => ('file' in v ? v.file : undefined)), ...manifest.rootDisks.map((d) => d.file)];
  for (const f of files) assert.deepEqual([f?.consistency, f?.guestSynced], ['quiesced', true], JSON.stringify(f));
  process.stderr.write(`# backup: ${backup.bytes} bytes in ${backupMs} ms (64Mi volume + root disk overlay + snapshot metadata); guest paused ${files[0]?.pausedMs} ms\n`);

  // The first service and its guests go away (same VM ids would share cgroups and names).
  await svc1.stop();
  await destroyDataDir(svc1.dataDir);
  svc1 = undefined;

  const cli0 = cliRunner(() => ({ url: 'http://127.0.0.1:9', dataDir: restoredDir }) as TestService, join(work, 'home'), 120_000);
  const r = cli0('restore', file, '--data-dir', restoredDir, '-o', 'json');
  assert.equal(r.code, 0, r.err + r.out);
  const report = JSON.parse(r.out) as { tenants: number; apiKeys: number; securityGroups: number; microvms: number; volumes: number; rootDisks: number; snapshots: number; problems: Array<{ kind: string; id: string; reason: string }>; durationMs: number };
  assert.deepEqual([report.apiKeys, report.securityGroups, report.microvms, report.volumes, report.rootDisks, report.snapshots], [1, 1, 1, 1, 1, 0]);
  assert.ok(report.tenants >= 2, 'default and acme');
  assert.deepEqual(report.problems.map((p) => [p.kind, p.id]), [['snapshot', snap.json.id]]);
  assert.match(report.problems[0]!.reason, /files missing/);
  process.stderr.write(`# restore: ${report.durationMs} ms\n`);
  // Never over a data dir that has a database.
  const again = cli0('restore', file, '--data-dir', restoredDir);
  assert.notEqual(again.code, 0);
  assert.match(again.err, /already holds a state database/);

  svc2 = await startService({ dataDir: restoredDir });
  const acme2 = (method: string, path: string, body?: unknown) => apiCall({ url: svc2!.url, token: acmeToken }, method, path, body);
  assert.deepEqual((await acme2('GET', '/whoami')).json?.tenant, 'acme', 'the old API key works on the restored service');
  assert.ok((await apiCall(svc2, 'GET', '/tenants')).json.items.some((t: { id: string }) => t.id === 'acme'));
  assert.deepEqual((await acme2('GET', '/securitygroups')).json.items.map((g: { name: string }) => g.name), ['web']);
  const vol = (await acme2('GET', '/volumes/data')).json;
  assert.equal(vol.status?.phase, 'InUse', JSON.stringify(vol));
  const vm = (await acme2('GET', `/microvms/${vmId}`)).json;
  assert.equal(vm.status.phase, 'Stopped');
  assert.equal(vm.desiredState, 'Stopped');
  const s = (await acme2('GET', `/snapshots/${snap.json.id}`)).json;
  assert.equal(s.phase, 'Failed', JSON.stringify(s));

  assert.ok([200, 202].includes((await acme2('POST', `/microvms/${vmId}/start`)).status));
  await svc2.client.microvms.waitFor(vmId, { phase: 'Running', ready: true, timeoutMs: 180_000 });
  const read = await acme2('POST', `/microvms/${vmId}/exec`, { cmd: ['sh', '-c', 'cat /data/secret.txt /root/marker.txt'] });
  assert.equal(read.json?.exitCode, 0, read.text);
  assert.equal(read.json.stdout, `${secret}\nroot-${secret}\n`);
});
