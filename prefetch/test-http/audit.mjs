// GraphQL over HTTP conformance of `/graphql`: the `graphql-http` package's server audits
// (every MUST, SHOULD and MAY of the spec it checks), with a device token, against a real
// `ringside serve` started here on a free loopback port with fresh secrets. Fails when any MUST
// or SHOULD audit does not pass; MAY audits are printed.
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { serverAudits } from 'graphql-http';

const bin = process.env.RINGSIDE_BIN;
if (!bin) throw new Error('RINGSIDE_BIN names the ringside binary to audit');
const state = mkdtempSync(join(tmpdir(), 'ringside-graphql-audit-'));
const env = {
  ...process.env,
  RINGSIDE_DEVICE_TOKEN_SECRET: randomBytes(32).toString('hex'),
  RINGSIDE_ADMIN_TOKEN: randomBytes(32).toString('hex'),
  RINGSIDE_STATE_DIR: state,
  // A small catalog keeps a debug build's startup short.
  RINGSIDE_DATASET_TITLES: '2000',
  RINGSIDE_DATASET_PROFILES: '300',
  RINGSIDE_LOG: 'warn',
};
const server = spawn(bin, ['serve', '--listen', '127.0.0.1:0', '--node-id', 'graphql-audit'], {
  env,
  stdio: ['ignore', 'pipe', 'inherit'],
});
const stop = () => {
  if (server.exitCode === null) server.kill('SIGTERM');
  rmSync(state, { recursive: true, force: true });
};
process.on('exit', stop);

try {
  const address = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('ringside serve did not listen within 60 s')), 60_000);
    server.once('exit', (code) => reject(new Error(`ringside serve exited with ${code}`)));
    createInterface({ input: server.stdout }).on('line', (line) => {
      const match = /listening on (\S+)/.exec(line);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
  });
  const token = execFileSync(bin, ['token', '--device', 'graphql-audit', '--profile', 'p000001'], {
    env,
    encoding: 'utf8',
  }).trim();
  /** The audits' requests, each with the device token. */
  const fetchFn = (/** @type {string} */ input, /** @type {RequestInit} */ init = {}) => {
    const headers = new Headers(init.headers);
    headers.set('authorization', `Bearer ${token}`);
    return fetch(input, { ...init, headers });
  };
  /** @type {Record<string, { passed: number, of: number }>} */
  const levels = {};
  let failures = 0;
  for (const audit of serverAudits({ url: `http://${address}/graphql`, fetchFn })) {
    const result = await audit.fn();
    const level = audit.name.split(' ')[0];
    levels[level] ??= { passed: 0, of: 0 };
    levels[level].of += 1;
    if (result.status === 'ok') {
      levels[level].passed += 1;
      continue;
    }
    if (level !== 'MAY') failures += 1;
    console.log(`${level === 'MAY' ? 'not done' : 'FAILED'}: ${audit.name}: ${result.reason}`);
  }
  for (const [level, { passed, of }] of Object.entries(levels)) console.log(`${level}: ${passed} of ${of} audits pass`);
  if (failures) throw new Error(`${failures} MUST or SHOULD audits failed`);
} finally {
  stop();
}
