/**
 * The dashboard end to end in a real browser (Debian's chromium, driven by
 * playwright-core; no browser is downloaded) against the real service with a
 * real guest: sign in, validation, create, watch it reach Running and ready,
 * read its console, charts and events, type a command into its terminal
 * (xterm.js over the exec WebSocket), API errors shown, stop (the terminal
 * then says the VM is not running), delete.
 * Screenshots go to test-artifacts/ (MVM_UPDATE_DOCS_SCREENSHOT=1 also writes
 * docs/dashboard.png).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { chromium, type Browser, type Page, type WebSocket as PwWebSocket } from 'playwright-core';
import { REPO, destroyDataDir, startService, type TestService } from '../support/service.js';

const CHROMIUM = process.env.MVM_CHROMIUM ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p) => existsSync(p));
const WEB_INDEX = join(REPO, 'dist/web/index.html');
const ARTIFACTS = join(REPO, 'test-artifacts');
const BOOT_TIMEOUT = 150_000;

let svc: TestService;
let browser: Browser;
let page: Page;
const consoleErrors: string[] = [];
const sockets: PwWebSocket[] = [];

const shot = async (name: string): Promise<void> => {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, `dashboard-${name}.png`), fullPage: true });
};

before(async () => {
  assert.ok(CHROMIUM, 'chromium is not installed (apt-get install chromium; scripts/setup.sh installs it)');
  assert.ok(existsSync(WEB_INDEX), `the dashboard is not built (${WEB_INDEX}): run make build`);
  svc = await startService({ env: { MVM_METRICS_SAMPLE_SECONDS: '2' } });
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
  const ctx = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  page = await ctx.newPage();
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource: the server responded with a status of 4\d\d/.test(m.text())) consoleErrors.push(m.text()); // expected API errors
  });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  page.on('websocket', (ws) => sockets.push(ws));
});

after(async () => {
  await browser?.close().catch(() => undefined);
  await svc?.stop().catch(() => undefined);
  if (svc) await destroyDataDir(svc.dataDir);
});

test('the dashboard is served with safe headers', async () => {
  const res = await fetch(`${svc.url}/`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /text\/html/);
  assert.match(res.headers.get('content-security-policy') ?? '', /default-src 'self'/);
  const html = await res.text();
  const asset = /src="(\/assets\/[^"]+\.js)"/.exec(html)?.[1];
  assert.ok(asset, html);
  const js = await fetch(`${svc.url}${asset}`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get('cache-control') ?? '', /immutable/);
  // Unknown API paths stay problem+json, not the SPA.
  const nf = await fetch(`${svc.url}/api/v1/nope`, { headers: { authorization: `Bearer ${svc.token}` } });
  assert.equal(nf.status, 404);
  assert.match(nf.headers.get('content-type') ?? '', /problem\+json/);
});

test('sign in, create with validation, watch it run, console, charts, events, errors, stop, delete', { timeout: 400_000 }, async () => {
  await page.goto(svc.url);
  // --- sign in: a wrong token is refused with the API's reason.
  await page.getByLabel('API token').fill('wrong-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  const alert = page.getByRole('alert');
  await alert.waitFor();
  assert.match(await alert.innerText(), /401 · UNAUTHENTICATED/);
  assert.match(await alert.innerText(), /invalid token/);
  await shot('signin-error');
  await page.getByLabel('API token').fill(svc.token);
  await page.keyboard.press('Enter'); // keyboard submits the form
  await page.getByRole('heading', { name: 'MicroVMs' }).waitFor();
  await page.getByText('No microVMs yet.').waitFor();
  await page.locator('.top .live.on').waitFor(); // the event stream is connected
  // Tenant usage degrades gracefully while the server has no usage endpoint.
  const usage = await fetch(`${svc.url}/api/v1/tenants/default/usage`, { headers: { authorization: `Bearer ${svc.token}` } });
  if (usage.status === 404) await page.getByTestId('usage-unavailable').waitFor();

  // --- accessibility basics: every form control has a label; the skip link comes first.
  await page.goto(`${svc.url}/#/create`);
  await page.getByRole('heading', { name: 'Create a microVM' }).waitFor();
  // (page functions are strings: this file compiles without the DOM library)
  const unlabelled = await page.evaluate<string[]>(
    `[...document.querySelectorAll('input, select, textarea')].filter((el) => el.labels.length === 0 && !el.getAttribute('aria-label')).map((el) => el.outerHTML)`,
  );
  assert.deepEqual(unlabelled, []);
  await page.reload();
  await page.getByRole('heading', { name: 'Create a microVM' }).waitFor();
  await page.keyboard.press('Tab');
  assert.equal(await page.evaluate<string>('document.activeElement.textContent'), 'Skip to content');

  // --- client-side validation mirrors the API schema (no request is sent).
  await page.getByLabel('Name', { exact: true }).fill('Bad_Name');
  await page.getByLabel('Memory').fill('64Mi');
  await page.getByLabel('vCPUs').fill('9');
  await page.getByRole('button', { name: 'Create', exact: true }).click();
  await page.locator('#c-name-error').waitFor();
  assert.match(await page.locator('#c-name-error').innerText(), /lowercase/);
  assert.match(await page.locator('#c-memory-error').innerText(), /128Mi and 8Gi/);
  assert.match(await page.locator('#c-vcpu-error').innerText(), /8/);
  assert.equal(await page.getByLabel('Name', { exact: true }).getAttribute('aria-invalid'), 'true');
  assert.equal((await svc.client.microvms.list()).items.length, 0);
  await shot('create-validation');

  // --- create a real guest.
  await page.getByLabel('Name', { exact: true }).fill('web1');
  await page.getByLabel('Memory').fill('128Mi');
  await page.getByLabel('vCPUs').fill('1');
  await page.getByLabel('Labels').fill('app=demo, tier=web');
  await page.getByRole('button', { name: 'Create', exact: true }).click();
  await page.getByRole('heading', { name: /web1/ }).waitFor();
  const vm = (await svc.client.microvms.list()).items.find((v) => v.name === 'web1');
  assert.ok(vm);
  assert.deepEqual(vm.spec.labels, { app: 'demo', tier: 'web' });

  // --- it reaches Running and the guest becomes ready: the page updates by itself.
  await page.locator('h1 .badge[data-phase="Running"]').waitFor({ timeout: BOOT_TIMEOUT });
  await page.locator('.facts dd', { hasText: /^ready$/ }).waitFor({ timeout: BOOT_TIMEOUT });
  // --- console: streamed, with the guest's readiness line.
  await page.getByTestId('console').filter({ hasText: `MVM-READY id=${vm.id}` }).waitFor({ timeout: 60_000 });
  const consoleText = await page.getByTestId('console').innerText();
  assert.match(consoleText, /Linux version/);
  // --- events and live metrics.
  await page.getByTestId('events').getByText('GuestReady').waitFor({ timeout: 30_000 });
  await page.getByTestId('metrics-now').waitFor({ timeout: 30_000 });
  // A locator wait, not waitForFunction(string): the page's CSP forbids eval, which a string predicate needs.
  await page.locator('.chart polyline').nth(2).waitFor({ state: 'attached', timeout: 30_000 });
  // Pause/resume/snapshot are enabled only when the served OpenAPI has them.
  const doc = (await (await fetch(`${svc.url}/api/v1/openapi.json`)).json()) as { paths: Record<string, unknown> };
  for (const a of ['Pause', 'Snapshot']) {
    const has = !!doc.paths[`/api/v1/microvms/{id}/${a.toLowerCase()}`];
    assert.equal(await page.getByRole('button', { name: a, exact: true }).isEnabled(), has, `${a} enabled=${has}`);
  }
  assert.equal(await page.getByRole('button', { name: 'Start', exact: true }).isEnabled(), false);
  await page.waitForTimeout(6000); // a few more samples on the charts
  await shot('detail-running');
  if (process.env.MVM_UPDATE_DOCS_SCREENSHOT) copyFileSync(join(ARTIFACTS, 'dashboard-detail-running.png'), join(REPO, 'docs/dashboard.png'));

  // --- terminal: an interactive sh (tty) in xterm.js over the exec WebSocket.
  const rows = page.locator('[data-testid="terminal"] .xterm-rows');
  const termText = async (): Promise<string> => (await rows.innerText()).replace(/\u00a0/g, ' ');
  await page.getByRole('tab', { name: 'Terminal' }).click();
  assert.equal(await page.getByRole('tab', { name: 'Terminal' }).getAttribute('aria-selected'), 'true');
  await page.getByTestId('terminal-status').filter({ hasText: /sh · pid [1-9]\d*/ }).waitFor({ timeout: 30_000 });
  const execSockets = () => sockets.filter((w) => /\/api\/v1\/microvms\/[^/]+\/exec$/.test(w.url()));
  assert.equal(execSockets().length, 1);
  await page.getByTestId('terminal').click(); // focus xterm's input
  await page.keyboard.type('echo term-$((6*7))');
  await page.keyboard.press('Enter');
  await rows.filter({ hasText: 'term-42' }).waitFor({ timeout: 15_000 });
  // A file for the Files tab, written by the shell.
  await page.keyboard.type('echo answer-$((6*7)) > /tmp/answer.txt && echo written-$((1+1))');
  await page.keyboard.press('Enter');
  await rows.filter({ hasText: 'written-2' }).waitFor({ timeout: 15_000 });
  // Resizes reach the guest's tty: a narrower window, then fewer columns in `stty size`.
  const size = async (tag: string): Promise<[number, number]> => {
    await page.keyboard.type(`echo ${tag}-$(stty size | tr ' ' x)`);
    await page.keyboard.press('Enter');
    await rows.filter({ hasText: new RegExp(`${tag}-\\d+x\\d+`) }).waitFor({ timeout: 15_000 });
    const m = new RegExp(`${tag}-(\\d+)x(\\d+)`).exec(await termText());
    assert.ok(m, await termText());
    return [Number(m[1]), Number(m[2])];
  };
  const [rows1, cols1] = await size('wide');
  assert.ok(rows1 > 5 && cols1 > 40, `${rows1}x${cols1}`);
  await page.setViewportSize({ width: 900, height: 768 });
  await page.waitForTimeout(500); // ResizeObserver -> fit -> resize message
  const [rows2, cols2] = await size('narrow');
  assert.equal(rows2, rows1);
  assert.ok(cols2 < cols1, `columns after the resize: ${cols2}, before: ${cols1}`);
  await shot('terminal');
  await page.setViewportSize({ width: 1366, height: 768 });
  // Leaving the tab closes the socket (and so ends the shell).
  await page.getByRole('tab', { name: 'Console' }).click();
  await page.getByTestId('console').waitFor();
  for (let i = 0; i < 50 && !execSockets()[0]!.isClosed(); i++) await page.waitForTimeout(100);
  assert.ok(execSockets()[0]!.isClosed(), 'the exec WebSocket is still open after leaving the Terminal tab');

  // --- files: the shell's file is listed and downloads; a local file uploads into the guest.
  await page.getByRole('tab', { name: 'Files' }).click();
  const answer = page.locator('[data-testid="files"] tr[data-file="answer.txt"]');
  await answer.waitFor({ timeout: 15_000 });
  assert.match(await answer.innerText(), /\b10 B\b/);
  const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download answer.txt' }).click()]);
  assert.equal(download.suggestedFilename(), 'answer.txt');
  assert.equal(readFileSync((await download.path())!, 'utf8'), 'answer-42\n');
  await page.getByLabel('Upload files to /tmp').setInputFiles({ name: 'from-browser.txt', mimeType: 'text/plain', buffer: Buffer.from('uploaded from the dashboard\n') });
  await page.locator('[data-testid="files"] tr[data-file="from-browser.txt"]').waitFor({ timeout: 15_000 });
  await page.getByTestId('files-note').filter({ hasText: 'Uploaded from-browser.txt to /tmp.' }).waitFor();
  const cat = await svc.client.exec(vm.id, { cmd: ['cat', '/tmp/from-browser.txt'] });
  assert.equal(cat.stdout, 'uploaded from the dashboard\n');
  // Directories open; a missing one is the API's problem.
  await page.getByLabel('Directory').fill('/etc');
  await page.getByRole('button', { name: 'Open', exact: true }).click();
  await page.locator('[data-testid="files"] tr[data-file="passwd"]').waitFor({ timeout: 15_000 });
  await page.getByLabel('Directory').fill('/no/such/dir');
  await page.getByRole('button', { name: 'Open', exact: true }).click();
  await page.getByTestId('files').getByTestId('problem').filter({ hasText: /404 · \w+|not found|no such/i }).waitFor({ timeout: 15_000 });
  await shot('files');
  await page.getByRole('tab', { name: 'Console' }).click();

  // A guest without the agent: no image here lacks it, so a second tab gets the API's answer for
  // one (409 AGENT_UNAVAILABLE over the socket, as wsFail sends it) from a mocked exec WebSocket.
  const page2 = await page.context().newPage();
  try {
    await page2.routeWebSocket(/\/api\/v1\/microvms\/[^/]+\/exec$/, (ws) => {
      ws.onMessage(() => {
        const message = `the guest agent of microVM ${vm.id} is not available (its VMM has no guest agent channel); exec, files and port forwarding need an image with the guest agent`;
        ws.send(JSON.stringify({ type: 'error', status: 409, code: 'AGENT_UNAVAILABLE', message, problem: { status: 409, code: 'AGENT_UNAVAILABLE', detail: message } }));
        void ws.close({ code: 4409, reason: 'AGENT_UNAVAILABLE' });
      });
    });
    await page2.goto(svc.url);
    await page2.getByLabel('API token').fill(svc.token);
    await page2.keyboard.press('Enter');
    await page2.getByRole('heading', { name: 'MicroVMs' }).waitFor();
    await page2.goto(`${svc.url}/#/vms/${vm.id}`);
    await page2.locator('.facts dd', { hasText: /^ready$/ }).waitFor({ timeout: 30_000 });
    await page2.getByRole('tab', { name: 'Terminal' }).click();
    const noAgent = page2.getByTestId('terminal-problem');
    await noAgent.waitFor({ timeout: 15_000 });
    assert.match(await noAgent.innerText(), /guest agent is unavailable/);
    assert.match(await noAgent.innerText(), /no guest agent channel/);
    assert.match(await page2.getByTestId('terminal-status').innerText(), /unavailable/);
    assert.equal(await page2.getByRole('button', { name: 'Reconnect' }).isVisible(), true);
    await page2.screenshot({ path: join(ARTIFACTS, 'dashboard-terminal-no-agent.png'), fullPage: true });
  } finally {
    await page2.close();
  }

  // --- the list shows it live with IP, node and uptime.
  await page.goto(`${svc.url}/#/`);
  const row = page.locator('tr[data-vm="web1"]');
  await row.waitFor();
  assert.match(await row.innerText(), /Running/);
  assert.match(await row.innerText(), /\d+s|\d+m/);
  await page.getByLabel('Phase').selectOption('Stopped');
  await page.getByText('No microVM matches these filters.').waitFor();
  await page.getByLabel('Phase').selectOption('');
  await row.waitFor();
  await shot('list');

  // --- an API error is shown as problem+json says it (duplicate name).
  await page.goto(`${svc.url}/#/create`);
  await page.getByLabel('Name', { exact: true }).fill('web1');
  await page.getByRole('button', { name: 'Create', exact: true }).click();
  const dup = page.getByTestId('problem');
  await dup.waitFor();
  assert.match(await dup.innerText(), /409 · ALREADY_EXISTS/);
  await shot('create-conflict');

  // --- stop, then delete with confirmation.
  await page.goto(`${svc.url}/#/vms/${vm.id}`);
  await page.getByRole('button', { name: 'Stop', exact: true }).click();
  await page.locator('h1 .badge[data-phase="Stopped"]').waitFor({ timeout: 60_000 });
  await page.getByTestId('events').getByText('StopRequested').waitFor({ timeout: 15_000 });
  // The terminal of a stopped VM says so (the API's 409 ILLEGAL_TRANSITION over the socket).
  await page.getByRole('tab', { name: 'Terminal' }).click();
  const notRunning = page.getByTestId('terminal-problem');
  await notRunning.waitFor({ timeout: 15_000 });
  assert.match(await notRunning.innerText(), /not running/);
  assert.match(await notRunning.innerText(), /Stopped/);
  assert.match(await page.getByTestId('terminal-status').innerText(), /unavailable/);
  await shot('terminal-stopped');
  await page.getByRole('tab', { name: 'Console' }).click();
  await shot('detail-stopped');
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  const dialog = page.getByRole('dialog', { name: 'Delete web1?' });
  await dialog.waitFor();
  await page.keyboard.press('Escape'); // cancel keeps it
  await dialog.waitFor({ state: 'hidden' });
  assert.ok(await svc.client.microvms.get(vm.id));
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  await dialog.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('heading', { name: 'MicroVMs' }).waitFor({ timeout: 60_000 });
  await page.getByText('No microVMs yet.').waitFor({ timeout: 60_000 });
  await shot('deleted');
  assert.deepEqual(consoleErrors, []);
});
