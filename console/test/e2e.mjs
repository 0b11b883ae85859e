// @ts-check
/**
 * End-to-end test of the ops console: a real `ringside serve` (fresh secrets, a free loopback
 * port), a real browser (Debian's chromium through playwright-core) and real WebSocket devices.
 *
 *   RINGSIDE_BIN=path/to/ringside npm test      (default: <repo>/target/debug/ringside)
 *
 * Nothing is stubbed: the edits go through the real PATCH, the broadcast report is the one the
 * node records from the devices' acks (read through `GET /v1/admin/events/{id}/broadcasts…` and
 * the admin stream), and the page's live updates come from the real `GET /v1/admin/stream`.
 * Screenshots land in artifacts/; UPDATE_DOCS_SCREENSHOT=1 also copies the main one to
 * docs/console.png.
 */
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '..', '..');
const bin = process.env.RINGSIDE_BIN ?? join(repo, 'target', 'debug', 'ringside');
const artifacts = join(here, 'artifacts');
const DEVICES = 20;
/** Generous bound for anything that should happen promptly: it only catches a hang. */
const PROMPTLY_MS = 20_000;

mkdirSync(artifacts, { recursive: true });
const stateDir = mkdtempSync(join(tmpdir(), 'ringside-console-e2e-'));
const secretEnv = {
  RINGSIDE_DEVICE_TOKEN_SECRET: `e2e-${randomBytes(24).toString('hex')}`,
  RINGSIDE_ADMIN_TOKEN: `e2e-${randomBytes(24).toString('hex')}`,
  RINGSIDE_STATE_DIR: stateDir,
};
const serverEnv = {
  ...process.env,
  ...secretEnv,
  RINGSIDE_LOG: 'warn',
  RINGSIDE_MATERIALIZE: 'on-demand',
  // A small catalog keeps a debug build's startup short.
  RINGSIDE_DATASET_TITLES: '2000',
  RINGSIDE_DATASET_PROFILES: '300',
};

/** @type {(() => Promise<void> | void)[]} */
const cleanups = [];

/** @param {string} text */
const step = (text) => console.log(`--> ${text}`);

/**
 * @template T
 * @param {() => Promise<T | undefined | null | false>} probe
 * @param {string} what
 * @returns {Promise<T>}
 */
async function eventually(probe, what, timeoutMs = PROMPTLY_MS) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${last}` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts `ringside serve` on a free loopback port; resolves to its base URL. */
async function startServer() {
  const child = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--node-id', 'e2e-node'], {
    env: serverEnv,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  cleanups.push(() => new Promise((done) => {
    if (child.exitCode !== null) { done(); return; }
    child.once('exit', () => done());
    child.kill('SIGTERM');
    setTimeout(() => child.kill('SIGKILL'), 10_000).unref();
  }));
  const lines = createInterface({ input: /** @type {import('node:stream').Readable} */ (child.stdout) });
  /** @type {string[]} */
  const banner = [];
  const address = await new Promise((resolveAddress, reject) => {
    child.once('exit', (code) => reject(new Error(`ringside serve exited with ${code}`)));
    child.once('error', reject);
    lines.on('line', (line) => {
      banner.push(line);
      const match = /listening on (\S+)/.exec(line);
      if (match) resolveAddress(match[1]);
    });
  });
  const base = `http://${address}`;
  await eventually(async () => (await fetch(`${base}/healthz`)).ok, 'healthz');
  // The banner names the console.
  await eventually(async () => banner.some((l) => l.includes(`${base}/console`)), 'the console in the banner', 5000);
  return base;
}

/**
 * A device token from `ringside token`, with this run's secrets.
 * @param {string} device
 */
function deviceToken(device) {
  return execFileSync(bin, ['token', '--device', device, '--profile', 'p-1', '--class', 'tv'], {
    env: { ...process.env, ...secretEnv },
    encoding: 'utf8',
  }).trim();
}

/**
 * A device that subscribes to `topic` and acks every state, per docs/PROTOCOL.md.
 * @param {string} base
 * @param {string} name
 * @param {string} topic
 */
function connectDevice(base, name, topic) {
  const url = `${base.replace(/^http/, 'ws')}/v1/ws?token=${encodeURIComponent(deviceToken(name))}`;
  const socket = new WebSocket(url);
  const device = { name, socket, subscribed: false, /** @type {any[]} */ states: [] };
  socket.addEventListener('message', (message) => {
    const frame = JSON.parse(String(message.data));
    if (frame.type === 'welcome') {
      socket.send(JSON.stringify({ type: 'subscribe', topics: [{ topic }] }));
    } else if (frame.type === 'subscribed') {
      device.subscribed = true;
    } else if (frame.type === 'state') {
      device.states.push(frame);
      socket.send(JSON.stringify({ type: 'ack', topic: frame.topic, version: frame.version }));
    }
  });
  cleanups.push(() => socket.close());
  return device;
}

/**
 * Checks a broadcast report read from the API against the fields the console reads
 * (BroadcastReport, BroadcastSummary and NodeBroadcast of protocol/src/admin.rs).
 * @param {any} report
 */
function checkReportShape(report) {
  const summary = ['event', 'topic', 'version', 'stage', 'published_at_ms', 'subscribed', 'sent', 'acked',
    'acked_fraction', 'ack_latency', 'nodes_reporting', 'nodes_applied'];
  assert.deepEqual(Object.keys(report).sort(), [...summary, 'reach', 'nodes'].sort(), 'the report\'s fields');
  assert.deepEqual(Object.keys(report.ack_latency).sort(), ['p50_ms', 'p90_ms', 'p99_ms']);
  for (const point of report.reach) assert.deepEqual(Object.keys(point).sort(), ['acked_fraction', 'ms']);
  assert.equal(report.reach.at(-1).acked_fraction, report.acked_fraction, 'the reach curve ends at the acked fraction');
  for (const node of report.nodes) {
    assert.deepEqual(Object.keys(node).sort(), ['ack_latency', 'acked', 'applied', 'node', 'received_at_ms', 'sent', 'subscribed']);
    assert.equal(node.ack_latency.counts.length, 15, 'a count per histogram bucket');
  }
}

async function main() {
  step(`starting ${bin} serve`);
  const base = await startServer();
  const admin = secretEnv.RINGSIDE_ADMIN_TOKEN;
  const unauthorized = await (await fetch(`${base}/v1/admin/events`, { headers: { authorization: 'Bearer wrong' } })).json();
  /**
   * The admin API from the test itself, outside the page.
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   */
  const adminCall = async (method, path, body) => {
    const response = await fetch(`${base}${path}`, {
      method,
      headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
    return response.json();
  };
  const adminGet = (/** @type {string} */ path) => adminCall('GET', path);
  const adminPost = (/** @type {string} */ path, /** @type {unknown} */ body) => adminCall('POST', path, body);

  step('launching chromium');
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  cleanups.push(() => browser.close());
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  /** @type {string[]} */
  const problems = [];
  const origin = new URL(base).origin;
  page.on('request', (request) => {
    const url = new URL(request.url());
    if (url.origin !== origin && url.protocol !== 'data:') problems.push(`request to another origin: ${request.url()}`);
  });
  page.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  const focusKey = () => page.evaluate(() => /** @type {HTMLElement | null} */ (document.activeElement)?.dataset.focusKey);
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource: the server responded with a status of')) problems.push(`console error: ${message.text()}`);
  });

  step('the console loads from the binary');
  await page.goto(`${base}/console`);
  await page.getByRole('heading', { name: 'Ringside console' }).waitFor();
  assert.equal(await page.locator('#app').isHidden(), true, 'no admin view before sign-in');
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'token', 'the token field has the focus');

  step('a wrong token is refused with the API message');
  await page.getByLabel('Admin token').fill('not-the-token');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#sign-in-error').getByText(unauthorized.error.message).waitFor();
  assert.equal(await page.locator('#app').isHidden(), true);
  await page.screenshot({ path: join(artifacts, '01-wrong-token.png') });

  step('the right token signs in (keyboard: Enter submits)');
  await page.getByLabel('Admin token').fill(admin);
  await page.getByLabel('Admin token').press('Enter');
  await page.locator('#app').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('ringside.admin-token')), admin);
  assert.equal(await page.evaluate(() => localStorage.length), 0, 'nothing in localStorage');

  step('create an event');
  const eventId = `fight-${randomBytes(3).toString('hex')}`;
  const topic = `event:${eventId}`;
  await page.locator('#create-details > summary').click();
  await page.getByLabel('Id', { exact: true }).fill(eventId);
  await page.locator('#create-title').fill('Fight night');
  await page.getByRole('button', { name: 'Create event' }).click();
  const row = page.locator(`#events-table tr[data-event="${eventId}"]`);
  await row.waitFor();
  assert.match(await row.innerText(), /UPCOMING → LIVE → ENDED/);

  step('a bad create is answered with the API message');
  await page.getByLabel('Id', { exact: true }).fill(eventId);
  await page.locator('#create-title').fill('Again');
  await page.getByRole('button', { name: 'Create event' }).click();
  await page.locator('#create-error').getByText(`event ${eventId} already exists`).waitFor();
  await page.locator('#create-details > summary').click();

  step(`connect ${DEVICES} devices subscribed to ${topic}`);
  const devices = Array.from({ length: DEVICES }, (_, i) => connectDevice(base, `tv-${i}`, topic));
  await eventually(async () => devices.every((d) => d.subscribed), 'every device subscribed');

  step('edit title, schedule and stages (the real PATCH), persisted across a reload');
  const editDialog = page.locator('#edit-dialog');
  await row.getByRole('button', { name: /^Edit/ }).click();
  await editDialog.waitFor({ state: 'visible' });
  await page.getByLabel('Title', { exact: true }).and(page.locator('#edit-title-input')).fill('Fight night: main card');
  await page.getByLabel('Starts at (your local time)').and(page.locator('#edit-starts')).fill('2026-12-24T20:30:00');
  await page.getByLabel('Stages, in order').and(page.locator('#edit-stages')).fill('UPCOMING, LIVE, OVERTIME, ENDED');
  // The browser's own reading of the local time it was given, as the console converts it.
  const startsAt = await page.evaluate(() => new Date('2026-12-24T20:30:00').toISOString().replace(/\.\d{3}Z$/, 'Z'));
  const patched = page.waitForRequest((r) => r.method() === 'PATCH' && r.url().endsWith(`/v1/admin/events/${eventId}`));
  await editDialog.getByRole('button', { name: 'Save' }).click();
  assert.deepEqual((await patched).postDataJSON(),
    { title: 'Fight night: main card', starts_at: startsAt, stages: ['UPCOMING', 'LIVE', 'OVERTIME', 'ENDED'] },
    'only the changed fields, as UpdateEvent');
  await editDialog.waitFor({ state: 'hidden' });
  await eventually(async () => (await focusKey()) === `Edit… event ${eventId}`, 'the focus back on the (renamed) edit button', 5000);
  const stored = await adminGet(`/v1/admin/events/${eventId}`);
  assert.equal(stored.title, 'Fight night: main card');
  assert.equal(stored.starts_at, startsAt);
  assert.deepEqual(stored.stages, ['UPCOMING', 'LIVE', 'OVERTIME', 'ENDED']);
  await page.reload();
  await page.locator('#app').waitFor({ state: 'visible' });
  await row.waitFor();
  // The stream's first snapshot after a reconnect may be one poll (500 ms) older than the
  // PATCH; the next poll brings the change, so the row converges instead of matching at once.
  await eventually(async () => /Fight night: main card/.test(await row.innerText())
    && /UPCOMING → LIVE → OVERTIME → ENDED/.test(await row.innerText()), 'the edited row after a reload', 5000);
  assert.equal(await row.locator('time').getAttribute('datetime'), startsAt, 'the schedule as stored');
  assert.equal(await page.evaluate(() => localStorage.length), 0, 'nothing in localStorage after a reload either');
  // From here on, anything the broadcast report says in its error line is kept.
  await page.evaluate(() => {
    const seen = /** @type {string[]} */ ((/** @type {any} */ (window)).reportErrors = []);
    const line = /** @type {HTMLElement} */ (document.getElementById('report-error'));
    new MutationObserver(() => { if (line.textContent) seen.push(line.textContent); })
      .observe(line, { childList: true, characterData: true, subtree: true });
  });

  step('trigger UPCOMING, the first state (before it no node counts the event\'s devices)');
  const dialog = page.locator('#trigger-dialog');
  await row.getByRole('button', { name: /^Trigger/ }).click();
  await dialog.waitFor({ state: 'visible' });
  assert.equal(await page.getByLabel('To stage').inputValue(), 'UPCOMING');
  assert.match(await page.locator('#trigger-transition').innerText(), /\(no stage yet\) → UPCOMING/);
  assert.match(await page.locator('#trigger-subscribed').innerText(), /^not counted yet/);
  await page.locator('#trigger-confirm').click();
  await dialog.waitFor({ state: 'hidden' });
  await eventually(async () => devices.every((d) => d.states.some((s) => s.stage === 'UPCOMING')), 'UPCOMING on every device');
  await eventually(async () => (await row.locator('td').nth(5).innerText()).trim() === String(DEVICES),
    'the subscribed count in the events list').catch(async (error) => {
    const stats = await (await fetch(`${base}/v1/admin/stats`, { headers: { authorization: `Bearer ${admin}` } })).text();
    throw new Error(`${error.message}; row: ${await row.innerText()}; stats: ${stats}`);
  });

  step('a refused edit (removing the current stage) shows the API message and changes nothing');
  await row.getByRole('button', { name: /^Edit/ }).click();
  await editDialog.waitFor({ state: 'visible' });
  await page.locator('#edit-stages').fill('LIVE, OVERTIME, ENDED');
  const refused = page.waitForResponse((r) => r.request().method() === 'PATCH' && r.url().endsWith(`/v1/admin/events/${eventId}`));
  await editDialog.getByRole('button', { name: 'Save' }).click();
  const refusal = await refused;
  assert.equal(refusal.status(), 409);
  await page.locator('#edit-error').getByText((await refusal.json()).error.message).waitFor();
  assert.deepEqual((await adminGet(`/v1/admin/events/${eventId}`)).stages, ['UPCOMING', 'LIVE', 'OVERTIME', 'ENDED']);
  await page.keyboard.press('Escape');
  await editDialog.waitFor({ state: 'hidden' });
  await eventually(async () => (await focusKey()) === `Edit… event ${eventId}`, 'the focus back on the edit button after cancel', 5000);

  step('trigger LIVE through the confirmation dialog');
  await row.getByRole('button', { name: /^Trigger/ }).click();
  await dialog.waitFor({ state: 'visible' });
  assert.equal(await page.getByLabel('To stage').inputValue(), 'LIVE', 'the next stage is suggested');
  assert.match(await page.locator('#trigger-transition').innerText(), /^UPCOMING → LIVE$/);
  assert.match(await page.locator('#trigger-subscribed').innerText(), new RegExp(`^${DEVICES} devices across 1 node`));
  assert.match(await page.locator('#trigger-window-hint').innerText(), /about 1\.0 s/);
  const payload = page.getByLabel('Payload (a JSON object)');
  const confirm = page.locator('#trigger-confirm');
  await payload.fill('[1, 2]');
  await page.locator('#trigger-payload-error').getByText('must be a JSON object').waitFor();
  assert.equal(await confirm.isDisabled(), true);
  await payload.fill('{"hero": ');
  await page.locator('#trigger-payload-error').getByText('not valid JSON').waitFor();
  await payload.fill(JSON.stringify({ big: 'x'.repeat(5000) }));
  await page.locator('#trigger-payload-error').getByText('byte limit').waitFor();
  await payload.fill('{"hero": "main-card"}');
  await eventually(async () => (await page.locator('#trigger-payload-error').innerText()) === '', 'a valid payload');
  assert.equal(await confirm.isDisabled(), false);
  await page.screenshot({ path: join(artifacts, '02-trigger-dialog.png') });
  await confirm.click();
  await dialog.waitFor({ state: 'hidden' });
  await eventually(async () => devices.every((d) => d.states.some((s) => s.stage === 'LIVE')), 'LIVE on every device');
  const live = devices[0].states.find((s) => s.stage === 'LIVE');
  assert.deepEqual(live.payload, { hero: 'main-card' });
  await eventually(async () => (await row.locator('td').nth(3).innerText()).trim() === 'LIVE', 'LIVE in the events list');

  step('the reach of the broadcast fills up to 100 % (the real report and stream)');
  const acked = page.locator('[data-figure="Acked"]');
  const shownVersion = page.locator('[data-figure="Broadcast"]');
  await eventually(async () => (await shownVersion.innerText()).startsWith(`version ${live.version}, LIVE, published`) &&
    (await acked.innerText()) === `100 % (${DEVICES} of ${DEVICES} devices)`, 'LIVE acked 100 %', 30_000)
    .catch(async (error) => {
      throw new Error(`${error.message}; page: ${await page.locator('#report').innerText()}; ` +
        `report: ${JSON.stringify(await adminGet(`/v1/admin/events/${eventId}/broadcasts/${live.version}`).catch(String))}`);
    });
  const liveReport = await adminGet(`/v1/admin/events/${eventId}/broadcasts/${live.version}`);
  writeFileSync(join(artifacts, 'live-report.json'), JSON.stringify(liveReport, null, 2));
  checkReportShape(liveReport);
  assert.equal(liveReport.acked, DEVICES);
  assert.equal(liveReport.acked_fraction, 1);
  assert.equal(await page.locator('#report-hint').innerText(), '', 'no hint left once the report shows');
  assert.match(await page.locator('[data-figure="Nodes applied"]').innerText(), /^1 of 1 reporting/);
  const q = liveReport.ack_latency;
  assert.equal(await page.locator('[data-figure="Ack latency"]').innerText(), `p50 ${q.p50_ms} ms, p90 ${q.p90_ms} ms, p99 ${q.p99_ms} ms`);
  assert.equal(await page.locator('#reach-plot polyline').count(), 1, 'a reach curve');
  assert.equal(await page.locator('#reach-plot circle').count(), liveReport.reach.length, 'a point per reach point');
  assert.match(await page.locator('#reach-caption').innerText(), /^Reach: 100 % acked/);
  const nodeRow = page.locator('#report-nodes tbody tr', { hasText: 'e2e-node' });
  await nodeRow.waitFor();
  assert.match(await nodeRow.innerText(), /applied/);
  assert.deepEqual((await nodeRow.locator('td.num').allInnerTexts()).map((t) => t.trim()), [String(DEVICES), String(DEVICES), String(DEVICES)]);
  const history = page.locator('#broadcasts-table tbody tr');
  await eventually(async () => (await history.count()) === 2, 'both broadcasts (UPCOMING, LIVE) listed');
  assert.match(await history.first().innerText(), new RegExp(`${live.version}\\s+LIVE`));

  step('the fleet shows the node and its connections');
  const node = page.locator('#nodes-table tr[data-node="e2e-node"]');
  await node.waitFor();
  await eventually(async () => (await node.locator('td').nth(1).innerText()).trim() === String(DEVICES), 'the connections');
  await eventually(async () => (await page.locator('#protection-summary').innerText()).includes('Protection on e2e-node'), 'protection');
  // The node's own shed counts (from its stats row), one per class.
  assert.match((await node.locator('td').nth(5).innerText()).trim(), /^\d+ \/ \d+ \/ \d+ \/ \d+$/);
  await page.locator('#report').scrollIntoViewIfNeeded();
  await page.screenshot({ path: join(artifacts, 'console.png'), fullPage: true });
  if (process.env.UPDATE_DOCS_SCREENSHOT === '1') copyFileSync(join(artifacts, 'console.png'), join(repo, 'docs', 'console.png'));

  step('the live stream feeds the page: a publish from outside it shows without reload or a click');
  // Follow the newest broadcast (the trigger pinned the one it published), and let that read end.
  const followed = page.waitForResponse((r) => r.url().endsWith(`/v1/admin/events/${eventId}/broadcasts/${live.version}`));
  await row.getByRole('button', { name: /^Broadcasts/ }).click();
  await followed;
  /** @type {string[]} */
  const reads = [];
  const onRequest = (/** @type {import('playwright-core').Request} */ request) => {
    const path = new URL(request.url()).pathname;
    if (path !== '/v1/admin/protection' && path !== '/v1/admin/stream') reads.push(`${request.method()} ${path}`);
  };
  page.on('request', onRequest);
  const receipt = await adminPost(`/v1/admin/events/${eventId}/publish`, { stage: 'OVERTIME', payload: { extra: 5 } });
  await eventually(async () => devices.every((d) => d.states.some((s) => s.version === receipt.version)), 'OVERTIME on every device');
  await eventually(async () => {
    const cells = (await row.locator('td').allInnerTexts()).map((t) => t.trim());
    return cells[3] === 'OVERTIME' && cells[4] === String(receipt.version);
  }, 'the new stage and version in the events list');
  await eventually(async () => (await shownVersion.innerText()).startsWith(`version ${receipt.version}, OVERTIME, published`) &&
    (await acked.innerText()) === `100 % (${DEVICES} of ${DEVICES} devices)`, 'the new broadcast in the report, acked 100 %', 30_000);
  await eventually(async () => (await history.count()) === 3, 'the new broadcast listed');
  assert.match(await history.first().innerText(), new RegExp(`${receipt.version}\\s+OVERTIME[\\s\\S]*100 % \\(${DEVICES} of ${DEVICES}\\)`));
  page.off('request', onRequest);
  assert.deepEqual(reads, [], 'the page read nothing but the stream (and protection, which the stream does not carry)');

  step('the drain asks first; cancel (Escape) keeps the node and the focus, confirm drains it');
  await node.getByRole('button', { name: /^Drain/ }).click();
  await page.locator('#drain-dialog').waitFor({ state: 'visible' });
  // Rows are redrawn by the live updates meanwhile; the focus comes back to the drain button.
  await new Promise((r) => setTimeout(r, 2500));
  await page.keyboard.press('Escape');
  await page.locator('#drain-dialog').waitFor({ state: 'hidden' });
  await eventually(async () => (await focusKey()) === 'Drain… node e2e-node', 'the focus back on the drain button', 5000);
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal(await focusKey(), 'Drain… node e2e-node', 'a redraw keeps the focus');
  await node.getByRole('button', { name: /^Drain/ }).click();
  await page.locator('#drain-dialog').getByRole('button', { name: 'Drain', exact: true }).click();
  await page.locator('#status').getByText('Node e2e-node: drain draining.').waitFor();
  // The stats stream carries the drain: the node turns not ready and shows its progress.
  await eventually(async () => {
    const text = await node.innerText();
    return text.includes('not ready') && /\d+ of \d+ told to go, \d+ left/.test(text);
  }, 'the drain progress in the fleet');
  assert.deepEqual(await page.evaluate(() => (/** @type {any} */ (window)).reportErrors), [], 'the report never showed an error');

  step('sign out forgets the token');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.locator('#sign-in').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('ringside.admin-token')), null);

  assert.deepEqual(problems, [], 'no page error, no CSP violation, no request to another origin');
}

let failed = false;
try {
  await main();
} catch (error) {
  failed = true;
  console.error(error);
} finally {
  for (const cleanup of cleanups.reverse()) {
    try { await cleanup(); } catch { /* best effort */ }
  }
  rmSync(stateDir, { recursive: true, force: true });
}
console.log(failed ? 'console e2e: FAILED' : 'console e2e: passed');
process.exit(failed ? 1 : 0);
