// Test support: a real `ringside serve` on a loopback port, the admin API, device tokens.
//
// The binary is $RINGSIDE_BIN, else $CARGO_TARGET_DIR/debug/ringside, else
// ../../target/debug/ringside (relative to sdk/js). Secrets are fresh per run and passed in
// the environment, as scripts/bench-fanout does; the dataset is small and materialized on
// demand so that a server starts in about a second.

import { spawn, execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const packageRoot = resolve(here, '..');

export const RINGSIDE_BIN =
  process.env.RINGSIDE_BIN ??
  (process.env.CARGO_TARGET_DIR
    ? join(process.env.CARGO_TARGET_DIR, 'debug', 'ringside')
    : resolve(packageRoot, '../../target/debug/ringside'));

const secrets = {
  RINGSIDE_DEVICE_TOKEN_SECRET: `sdk-test-${randomBytes(24).toString('hex')}`,
  RINGSIDE_ADMIN_TOKEN: `sdk-test-${randomBytes(24).toString('hex')}`,
};
const stateDir = mkdtempSync(join(tmpdir(), 'ringside-sdk-'));

/** Servers still running when the test process ends are killed with it, never left behind. */
const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** A free loopback port (bound and released: the server binds it next). */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits until `predicate()` is truthy, or fails after `timeoutMs` with `what`. */
export async function waitFor(predicate, what, timeoutMs = 15_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await predicate();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * Starts `ringside serve` on `port` (a free one by default) with `env` on top of the test
 * defaults and `args` after `serve`; resolves once /healthz answers 200.
 */
export async function startServer({ port, env = {}, args = [] } = {}) {
  if (!existsSync(RINGSIDE_BIN)) {
    throw new Error(`no ringside binary at ${RINGSIDE_BIN}: run \`cargo build -p ringside\` or set RINGSIDE_BIN`);
  }
  port ??= await freePort();
  const child = spawn(RINGSIDE_BIN, ['serve', '--listen', `127.0.0.1:${port}`, '--node-id', `sdk-${port}`, ...args], {
    env: {
      ...process.env,
      ...secrets,
      RINGSIDE_STATE_DIR: stateDir,
      RINGSIDE_LOG: 'warn',
      RINGSIDE_MATERIALIZE: 'on-demand',
      RINGSIDE_DATASET_TITLES: '2000',
      RINGSIDE_DATASET_PROFILES: '500',
      // A stopped test server must not hold the suite for the default 70 s drain.
      RINGSIDE_SHUTDOWN_GRACE_MS: '3000',
      RINGSIDE_GOAWAY_GRACE_MS: '200',
      RINGSIDE_DRAIN_WINDOW_MAX_MS: '0',
      // These tests are about the SDK, not the node's shedding: a debug build on a busy 2-core
      // machine runs late enough for protection to shed best_effort prefetches by its
      // scheduling lag. Shed answers are tested through a proxy (prefetch.test.js).
      RINGSIDE_PROTECTION: 'off',
      ...env,
    },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr = (stderr + chunk).slice(-4000);
  });
  const exited = new Promise((r) => child.once('exit', (code, signal) => r({ code, signal })));
  const base = `http://127.0.0.1:${port}`;
  const server = {
    port,
    base,
    ws: `ws://127.0.0.1:${port}/v1/ws`,
    graphql: `${base}/graphql`,
    child,
    exited,
    stderr: () => stderr,
    /** Stops the server: SIGTERM (a drain with goaways), or SIGKILL for a crash. */
    async stop(signal = 'SIGTERM') {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill(signal);
      await exited;
    },
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`ringside serve exited (${child.exitCode}): ${stderr}`);
    try {
      const response = await fetch(`${base}/healthz`);
      if (response.status === 200) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      await server.stop('SIGKILL');
      throw new Error(`ringside serve did not become healthy: ${stderr}`);
    }
    await sleep(50);
  }
  return server;
}

/** An admin API call; throws on a non-2xx answer. */
export async function admin(server, method, path, body) {
  const response = await fetch(`${server.base}${path}`, {
    method,
    headers: { authorization: `Bearer ${secrets.RINGSIDE_ADMIN_TOKEN}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

export function createEvent(server, id, stages = ['UPCOMING', 'LIVE', 'ENDED']) {
  return admin(server, 'POST', '/v1/admin/events', { id, title: `Event ${id}`, starts_at: '2026-12-01T20:00:00Z', stages });
}

/** Publishes a state; resolves with `{topic, version, published_at_ms}`. */
export function publish(server, id, stage, payload = {}, extra = {}) {
  return admin(server, 'POST', `/v1/admin/events/${id}/publish`, { stage, payload, ...extra });
}

/** A device token minted by `ringside token` with this run's secrets. */
export async function deviceToken({ device = 'sdk-device', profile = 'p000001', ttlS } = {}) {
  const args = ['token', '--device', device, '--profile', profile, '--class', 'web'];
  if (ttlS !== undefined) args.push('--ttl-s', String(ttlS));
  const { stdout } = await promisify(execFile)(RINGSIDE_BIN, args, {
    env: { ...process.env, ...secrets, RINGSIDE_STATE_DIR: stateDir },
  });
  return stdout.trim();
}

let eventCounter = 0;
/** A fresh event id per test. */
export function eventId(label) {
  eventCounter += 1;
  return `${label}-${process.pid}-${eventCounter}`;
}
