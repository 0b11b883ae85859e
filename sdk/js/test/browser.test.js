// The built package in headless Chromium: a page on another origin (a loopback static
// server) imports dist/index.js, prefetches through /graphql (CORS) and renders the state the
// real server broadcasts.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import { dirname, join, normalize, resolve } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { createEvent, deviceToken, eventId, freePort, publish, startServer } from './support.js';

const packageRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CHROMIUM = process.env.CHROMIUM_PATH ?? ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((path) => existsSync(path));

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>Ringside SDK</title>
<p>stage: <span id="stage">none</span>, hero: <span id="hero"></span>, rows: <span id="rows"></span></p>
<script type="module">
import { RingsideClient, Prefetcher } from '/dist/index.js';
const params = new URLSearchParams(location.search);
const token = params.get('token');
const client = new RingsideClient({ url: params.get('ws'), token: async () => token });
const prefetcher = new Prefetcher({ url: params.get('graphql'), token });
window.log = [];
client.on('connection', (event) => window.log.push(event.state));
// In the background: the subscription does not wait for it.
window.prefetched = prefetcher.prefetch().then(
  (events) => events.length,
  (error) => { window.prefetchError = error.code + ': ' + error.message; },
);
client.subscribe(params.get('topic'), async (state) => {
  const content = await prefetcher.contentFor(state);
  document.getElementById('hero').textContent = state.payload.hero ?? '';
  document.getElementById('rows').textContent = String(content?.home?.rows?.length ?? 0);
  document.getElementById('stage').textContent = state.stage;
});
</script>`;

/** Serves the page and dist/ on a loopback port: another origin than the Ringside server. */
async function startPageServer(port) {
  const server = createServer(async (request, response) => {
    const path = new URL(request.url, 'http://localhost').pathname;
    if (path === '/') {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      response.end(PAGE);
      return;
    }
    const file = normalize(join(packageRoot, path));
    if (!path.startsWith('/dist/') || !file.startsWith(join(packageRoot, 'dist'))) {
      response.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(file);
      response.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      response.end(body);
    } catch {
      response.writeHead(404).end();
    }
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return server;
}

test('a page imports the built package, prefetches across origins and renders a state', { skip: CHROMIUM ? false : 'no Chromium found at /usr/bin/chromium (apt-get install -y chromium, or set CHROMIUM_PATH)' }, async () => {
  const { chromium } = await import('playwright-core');
  const pagePort = await freePort();
  const origin = `http://127.0.0.1:${pagePort}`;
  const ringside = await startServer({ args: ['--web-origin', origin] });
  const pages = await startPageServer(pagePort);
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  try {
    const id = eventId('browser');
    await createEvent(ringside, id);
    await publish(ringside, id, 'UPCOMING', { hero: 'poster' });
    const token = await deviceToken({ device: 'browser-1', profile: 'p000003' });
    const page = await browser.newPage();
    const problems = [];
    page.on('pageerror', (error) => problems.push(String(error)));
    page.on('console', (message) => problems.push(`console.${message.type()}: ${message.text()}`));
    const query = new URLSearchParams({ ws: ringside.ws, graphql: ringside.graphql, token, topic: `event:${id}` });
    await page.goto(`${origin}/?${query}`);
    await page
      .waitForFunction(() => document.getElementById('stage').textContent === 'UPCOMING', null, { timeout: 15_000 })
      .catch(async (error) => {
        const state = await page.evaluate(() => ({ log: window.log, prefetchError: window.prefetchError })).catch(() => ({}));
        throw new Error(`${error.message}; page: ${JSON.stringify(state)}; ${problems.join('; ')}`);
      });
    await publish(ringside, id, 'LIVE', { hero: 'main-card' });
    await page.waitForFunction(() => document.getElementById('stage').textContent === 'LIVE', null, { timeout: 15_000 });
    problems.splice(0, problems.length, ...problems.filter((p) => !p.startsWith('console.')));
    assert.equal(await page.textContent('#hero'), 'main-card');
    assert.ok((await page.evaluate(() => window.prefetched)) > 0, 'the cross-origin prefetch worked');
    assert.equal(await page.evaluate(() => window.prefetchError), undefined);
    assert.ok(Number(await page.textContent('#rows')) > 0, 'the LIVE content was there to render');
    assert.deepEqual(await page.evaluate(() => window.log), ['connecting', 'open']);
    assert.deepEqual(problems, []);
  } finally {
    await browser.close();
    pages.close();
    await ringside.stop('SIGKILL');
  }
});
