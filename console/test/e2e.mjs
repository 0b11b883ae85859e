// @ts-check
/**
 * End-to-end test of the ops console: a real `ringside serve` (fresh secrets, a free loopback
 * port), a real browser (Debian's chromium through playwright-core) and real WebSocket devices.
 *
 *   RINGSIDE_BIN=path/to/ringside npm test      (default: <repo>/target/debug/ringside)
 *
 * The broadcast report steps need `GET /v1/admin/events/{id}/broadcasts[/{version}]`. When the
 * server answers them 404 the test checks that the console shows the API's message instead and
 * says the reach step was skipped; RINGSIDE_CONSOLE_REQUIRE_REPORTS=1 makes that a failure.
 * Screenshots land in artifacts/; UPDATE_DOCS_SCREENSHOT=1 also copies the main one to
 * docs/console.png.
 */
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
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

/** @type {string[]} */
const skipped = [];
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
 * A broadcast report of `state` as the report endpoints answer it (protocol/src/admin.rs).
 * @param {string} eventId
 * @param {any} state
 * @param {number} devices
 */
function stubbedReport(eventId, state, devices) {
  const summary = {
    event: eventId, topic: state.topic, version: state.version, stage: state.stage,
    published_at_ms: state.published_at_ms, subscribed: devices, sent: devices, acked: devices,
    acked_fraction: 1, ack_latency: { p50_ms: 10, p90_ms: 25, p99_ms: 25 },
    nodes_reporting: 1, nodes_applied: 1,
  };
  const counts = [Math.floor(devices * 0.3), Math.ceil(devices * 0.4), devices - Math.floor(devices * 0.3) - Math.ceil(devices * 0.4)];
  const report = {
    ...summary,
    reach: [{ ms: 5, acked_fraction: counts[0] / devices }, { ms: 10, acked_fraction: (counts[0] + counts[1]) / devices }, { ms: 25, acked_fraction: 1 }],
    nodes: [{ node: 'e2e-node', subscribed: devices, sent: devices, acked: devices,
      ack_latency: { counts: [...counts, ...Array(12).fill(0)] }, applied: true, received_at_ms: state.published_at_ms + 1 }],
  };
  return { summary, report };
}

async function main() {
  step(`starting ${bin} serve`);
  const base = await startServer();
  const admin = secretEnv.RINGSIDE_ADMIN_TOKEN;
  const unauthorized = await (await fetch(`${base}/v1/admin/events`, { headers: { authorization: 'Bearer wrong' } })).json();

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
  step('edit the schedule (PATCH)');
  const patchProbe = await fetch(`${base}/v1/admin/events/${eventId}`, {
    method: 'PATCH', headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' }, body: '{}',
  });
  await row.getByRole('button', { name: /^Edit/ }).click();
  await page.getByLabel('Title', { exact: true }).and(page.locator('#edit-title-input')).fill('Fight night: main card');
  await page.locator('#edit-dialog').getByRole('button', { name: 'Save' }).click();
  if (patchProbe.status === 404 || patchProbe.status === 405) {
    const refusal = await patchProbe.json();
    await page.locator('#edit-error').getByText(refusal.error.message).waitFor();
    skipped.push(`edit: PATCH /v1/admin/events/{id} answered ${patchProbe.status}; the console showed the API message, ` +
      'and saved through a stubbed PATCH of the contract (verify against the real one after merge)');
    // The request the console sends, against UpdateEvent (protocol/src/admin.rs), answered with
    // the event as the real PATCH will (stubbed in the browser only).
    /** @type {any} */
    let sent = null;
    const eventPath = `**/v1/admin/events/${eventId}`;
    await page.route(eventPath, async (route) => {
      if (route.request().method() !== 'PATCH') { await route.continue(); return; }
      sent = route.request().postDataJSON();
      const current = (await (await fetch(`${base}/v1/admin/events/${eventId}`, { headers: { authorization: `Bearer ${admin}` } })).json());
      await route.fulfill({ json: { ...current, ...sent } });
    });
    await page.getByLabel('Stages, in order').and(page.locator('#edit-stages')).fill('UPCOMING, LIVE, OVERTIME, ENDED');
    await page.locator('#edit-dialog').getByRole('button', { name: 'Save' }).click();
    await page.locator('#edit-dialog').waitFor({ state: 'hidden' });
    assert.deepEqual(sent, { title: 'Fight night: main card', stages: ['UPCOMING', 'LIVE', 'OVERTIME', 'ENDED'] },
      'only the changed fields, as UpdateEvent');
    await eventually(async () => (await row.innerText()).includes('Fight night: main card'), 'the new title');
    assert.match(await row.innerText(), /UPCOMING → LIVE → OVERTIME → ENDED/);
    await page.unroute(eventPath);
  } else {
    await page.locator('#edit-dialog').waitFor({ state: 'hidden' });
    await eventually(async () => (await row.innerText()).includes('Fight night: main card'), 'the new title');
  }

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

  step('the reach of the broadcast fills up to 100 %');
  const reportProbe = await fetch(`${base}/v1/admin/events/${eventId}/broadcasts`, { headers: { authorization: `Bearer ${admin}` } });
  if (reportProbe.status === 404) {
    const body = await reportProbe.json();
    await page.locator('#report-error').getByText(body.error.message).waitFor();
    skipped.push('reach: GET /v1/admin/events/{id}/broadcasts answered 404; the console showed the API message, ' +
      'and drew a stubbed report of the contract (verify the real reach curve after merge)');
    if (process.env.RINGSIDE_CONSOLE_REQUIRE_REPORTS === '1') throw new Error(skipped[skipped.length - 1]);
    // The rendering of a report in the shape of protocol/src/admin.rs, from the devices' real
    // acks: stubbed in the browser only, so that the page is checked against the contract now.
    const stub = stubbedReport(eventId, live, DEVICES);
    await page.route(`**/v1/admin/events/${eventId}/broadcasts`, (route) => route.fulfill({ json: { broadcasts: [stub.summary] } }));
    await page.route(`**/v1/admin/events/${eventId}/broadcasts/*`, (route) => route.fulfill({ json: stub.report }));
    await row.getByRole('button', { name: /^Broadcasts/ }).click();
    await eventually(async () => (await page.locator('[data-figure="Acked"]').innerText()).startsWith('100 %'), 'acked 100 % (stubbed)');
    assert.match(await page.locator('[data-figure="Ack latency"]').innerText(), /^p50 10 ms, p90 25 ms, p99 25 ms/);
    assert.equal(await page.locator('#reach-plot polyline').count(), 1, 'a reach curve');
    await page.locator('#report-nodes').getByText('e2e-node').waitFor();
  } else {
    await eventually(async () => (await page.locator('[data-figure="Acked"]').innerText()).startsWith('100 %'), 'acked 100 %', 30_000);
    assert.match(await page.locator('[data-figure="Nodes applied"]').innerText(), /^1 of 1/);
    assert.match(await page.locator('[data-figure="Ack latency"]').innerText(), /p50 \d+ ms, p90 \d+ ms, p99 \d+ ms/);
    assert.ok(await page.locator('#reach-plot polyline').count() === 1, 'a reach curve');
    await page.locator('#report-nodes').getByText('e2e-node').waitFor();
    await page.locator('#broadcasts-table tbody tr').first().waitFor();
  }

  step('the fleet shows the node and its connections');
  const node = page.locator('#nodes-table tr[data-node="e2e-node"]');
  await node.waitFor();
  await eventually(async () => (await node.locator('td').nth(1).innerText()).trim() === String(DEVICES), 'the connections');
  await eventually(async () => (await page.locator('#protection-summary').innerText()).includes('Protection on e2e-node'), 'protection');
  await page.screenshot({ path: join(artifacts, 'console.png'), fullPage: true });
  if (process.env.UPDATE_DOCS_SCREENSHOT === '1') copyFileSync(join(artifacts, 'console.png'), join(repo, 'docs', 'console.png'));

  step('the drain asks first; cancel (Escape) keeps the node and the focus, confirm drains it');
  await node.getByRole('button', { name: /^Drain/ }).click();
  await page.locator('#drain-dialog').waitFor({ state: 'visible' });
  // Rows are redrawn by the live updates meanwhile; the focus comes back to the drain button.
  await new Promise((r) => setTimeout(r, 2500));
  await page.keyboard.press('Escape');
  await page.locator('#drain-dialog').waitFor({ state: 'hidden' });
  const focusKey = () => page.evaluate(() => /** @type {HTMLElement | null} */ (document.activeElement)?.dataset.focusKey);
  assert.equal(await focusKey(), 'Drain… node e2e-node');
  await new Promise((r) => setTimeout(r, 2500));
  assert.equal(await focusKey(), 'Drain… node e2e-node', 'a redraw keeps the focus');
  await node.getByRole('button', { name: /^Drain/ }).click();
  await page.locator('#drain-dialog').getByRole('button', { name: 'Drain', exact: true }).click();
  await page.locator('#status').getByText('Node e2e-node: drain draining.').waitFor();

  step('sign out forgets the token');
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.locator('#sign-in').waitFor({ state: 'visible' });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('ringside.admin-token')), null);

  step('the live stream feeds the page (SSE read with fetch, stubbed in the browser: the format of docs/PROTOCOL.md)');
  const streamed = await browser.newPage();
  streamed.on('pageerror', (error) => problems.push(`page error: ${error.message}`));
  const streamNode = { node: 'stream-node', connections: 7, address: '10.0.0.7:8080', ready: false, last_seen_ms_ago: 1500,
    drain: { started_at_ms: Date.now(), window_ms: 30_000, grace_ms: 5000, sessions_at_start: 7, goaways_sent: 3, sessions_left: 4 } };
  const streamEvent = { id: 'streamed', topic: 'event:streamed', title: 'Streamed show', starts_at: '2026-12-24T20:00:00Z',
    stages: ['UPCOMING', 'LIVE'], stage: 'UPCOMING', version: 3, published_at_ms: Date.now() };
  const sse = `: hello\n\nevent: stats\ndata: ${JSON.stringify({ nodes: [streamNode], topics: [{ topic: 'event:streamed', subscribers: 7, version: 3, acks: 7 }] })}\n\n` +
    `event: events\ndata: ${JSON.stringify({ events: [streamEvent] })}\n\n`;
  await streamed.route('**/v1/admin/stream', (route) => route.fulfill({
    status: 200, headers: { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' }, body: sse,
  }));
  // The reads answer nothing, so whatever the page shows came through the stream. A stubbed
  // stream ends at once and the page polls between reopenings: read the page in one snapshot.
  await streamed.route('**/v1/admin/events', (route) => route.fulfill({ json: { events: [] } }));
  await streamed.route('**/v1/admin/stats', (route) => route.fulfill({ json: { nodes: [], topics: [] } }));
  await streamed.goto(`${base}/console/`);
  await streamed.getByLabel('Admin token').fill(admin);
  await streamed.getByRole('button', { name: 'Sign in' }).click();
  await eventually(async () => {
    const [row, node] = await streamed.evaluate(() => [
      /** @type {HTMLElement | null} */ (document.querySelector('#events-table tr[data-event="streamed"]'))?.innerText ?? '',
      /** @type {HTMLElement | null} */ (document.querySelector('#nodes-table tr[data-node="stream-node"]'))?.innerText ?? '']);
    return row.includes('Streamed show') && row.includes('UPCOMING') && row.split('\t').map((cell) => cell.trim()).includes('7') &&
      node.includes('not ready') && node.includes('3 of 7 told to go, 4 left') && node.includes('10.0.0.7:8080');
  }, 'the streamed events and stats on the page');
  await streamed.close();

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
for (const note of skipped) console.log(`SKIPPED ${note}`);
console.log(failed ? 'console e2e: FAILED' : 'console e2e: passed');
process.exit(failed ? 1 : 0);
