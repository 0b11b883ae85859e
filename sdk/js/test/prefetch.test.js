// Prefetcher against a real `ringside serve`.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, describe, test } from 'node:test';

import { EVENT_QUERY, PREFETCH_QUERY, Prefetcher, RETRY_AFTER_MAX_MS, sha256Hex } from '@ringside/client';
import { createEvent, deviceToken, eventId, publish, startServer } from './support.js';

/** A fetch that records what the prefetcher sends, then sends it. */
function recordingFetch() {
  const requests = [];
  const recorded = async (url, init = {}) => {
    const body = init.body ? JSON.parse(init.body) : undefined;
    const entry = { method: init.method ?? 'GET', url: String(url), headers: { ...(init.headers ?? {}) }, body, at: Date.now() };
    requests.push(entry);
    const response = await fetch(url, init);
    entry.status = response.status;
    return response;
  };
  return { fetch: recorded, requests };
}

describe('prefetcher against one server', () => {
  let server;
  let token;
  before(async () => {
    // Device-cache TTL without jitter, so that the test can tell what the client keeps.
    server = await startServer({ env: { RINGSIDE_DEVICE_CACHE_TTL_S: '600', RINGSIDE_DEVICE_CACHE_JITTER: '0' } });
    token = await deviceToken({ profile: 'p000007' });
  });
  after(() => server?.stop('SIGKILL'));

  test('the persisted-query hash goes first, the text only on a miss, background marked best_effort', async () => {
    const id = eventId('apq');
    await createEvent(server, id);
    const recorder = recordingFetch();
    const prefetcher = new Prefetcher({ url: server.graphql, token, fetch: recorder.fetch });
    try {
      const before = Date.now();
      const events = await prefetcher.prefetch();
      const held = events.find((event) => event.id === id);
      assert.ok(held, 'the new event is prefetched');
      assert.deepEqual([...held.byStage.keys()], ['UPCOMING', 'LIVE', 'ENDED']);
      const live = prefetcher.content(id, 'LIVE');
      assert.equal(live.stage, 'LIVE');
      assert.ok(Array.isArray(live.home.rows) && live.home.rows.length > 0, 'home rows for the stage');
      assert.ok(held.expiresAt >= before + 600_000 && held.expiresAt <= Date.now() + 600_000, 'kept for the server TTL');
      // First the hash alone (GET), answered PERSISTED_QUERY_NOT_FOUND; then text and hash.
      const hash = await sha256Hex(PREFETCH_QUERY);
      assert.equal(recorder.requests.length, 2);
      const [first, second] = recorder.requests;
      assert.equal(first.method, 'GET');
      assert.ok(!new URL(first.url).searchParams.has('query'));
      assert.equal(JSON.parse(new URL(first.url).searchParams.get('extensions')).persistedQuery.sha256Hash, hash);
      assert.equal(second.method, 'POST');
      assert.equal(second.body.query, PREFETCH_QUERY);
      assert.equal(second.body.extensions.persistedQuery.sha256Hash, hash);
      for (const request of recorder.requests) assert.equal(request.headers['x-ringside-priority'], 'best_effort');
      // The node remembers the text now: the hash alone is enough.
      await prefetcher.prefetch();
      assert.equal(recorder.requests.length, 3);
      assert.equal(recorder.requests[2].method, 'GET');
      assert.equal(recorder.requests[2].status, 200);
    } finally {
      prefetcher.close();
    }
  });

  test('on a state, held content is returned at once, without a request', async () => {
    const id = eventId('held');
    await createEvent(server, id);
    const recorder = recordingFetch();
    const prefetcher = new Prefetcher({ url: server.graphql, token, fetch: recorder.fetch });
    try {
      await prefetcher.prefetch();
      const sent = recorder.requests.length;
      const published = await publish(server, id, 'LIVE', {}, { fetch_within_ms: 60_000 });
      const state = { topic: `event:${id}`, version: published.version, stage: 'LIVE', published_at_ms: published.published_at_ms, payload: {}, fetch_within_ms: 60_000 };
      const content = await prefetcher.contentFor(state);
      assert.equal(content.stage, 'LIVE');
      assert.equal(recorder.requests.length, sent, 'nothing fetched');
    } finally {
      prefetcher.close();
    }
  });

  test('content it lacks is fetched at a random moment within fetch_within_ms', async () => {
    const recorder = recordingFetch();
    const prefetcher = new Prefetcher({ url: server.graphql, token, fetch: recorder.fetch });
    try {
      await prefetcher.prefetch();
      // An event created after the prefetch: the device does not hold it.
      const id = eventId('follow-up');
      await createEvent(server, id);
      const windowMs = 1500;
      const published = await publish(server, id, 'LIVE', { hero: 'x' }, { fetch_within_ms: windowMs });
      const state = { topic: `event:${id}`, version: published.version, stage: 'LIVE', published_at_ms: published.published_at_ms, payload: {}, fetch_within_ms: windowMs };
      const sent = recorder.requests.length;
      const content = await prefetcher.contentFor(state);
      assert.equal(content.stage, 'LIVE');
      const fetches = recorder.requests.slice(sent);
      assert.ok(fetches.length >= 1);
      const at = fetches[0].at;
      assert.ok(at >= published.published_at_ms - 50 && at <= published.published_at_ms + windowMs + 1000, `fetched ${at - published.published_at_ms} ms after the publish`);
      assert.equal(fetches[0].headers['x-ringside-priority'], undefined, 'the follow-up is what a viewer waits for');
      const variables = fetches.find((f) => f.body)?.body?.variables ?? JSON.parse(new URL(fetches[0].url).searchParams.get('variables'));
      assert.deepEqual(variables, { id });
      const eventHash = await sha256Hex(EVENT_QUERY);
      assert.equal(JSON.parse(new URL(fetches[0].url).searchParams.get('extensions')).persistedQuery.sha256Hash, eventHash);
      // Now held: the next state of that stage needs no request.
      const again = recorder.requests.length;
      await prefetcher.contentFor({ ...state, version: state.version + 1 });
      assert.equal(recorder.requests.length, again);
    } finally {
      prefetcher.close();
    }
  });

  test('a later state replaces the plan', async () => {
    const prefetcher = new Prefetcher({ url: server.graphql, token });
    try {
      const id = eventId('replaced');
      await createEvent(server, id);
      const now = Date.now();
      const planned = prefetcher.contentFor({ topic: `event:${id}`, version: 1, stage: 'LIVE', published_at_ms: now + 60_000, payload: {}, fetch_within_ms: 1 });
      const replacing = prefetcher.contentFor({ topic: `event:${id}`, version: 2, stage: 'ENDED', published_at_ms: now, payload: {} });
      assert.equal(await planned, undefined);
      assert.equal((await replacing).stage, 'ENDED');
    } finally {
      prefetcher.close();
    }
  });

  test('two callers waiting on the same state both settle when the fetch fails', async () => {
    // Two components listening to one topic both ask for the state's content: one fetch,
    // refused for good (401), and both promises are rejected, neither left pending.
    const id = eventId('shared-fail');
    await createEvent(server, id);
    const recorder = recordingFetch();
    const prefetcher = new Prefetcher({ url: server.graphql, token: 'not-a-token', fetch: recorder.fetch });
    try {
      const state = { topic: `event:${id}`, version: 3, stage: 'LIVE', published_at_ms: Date.now(), payload: {}, fetch_within_ms: 50 };
      const first = prefetcher.contentFor(state);
      const second = prefetcher.contentFor(state);
      const third = prefetcher.contentFor({ ...state, version: 2 });
      const outcomes = await Promise.race([
        Promise.allSettled([first, second, third]),
        new Promise((r) => setTimeout(() => r('pending'), 10_000)),
      ]);
      assert.notEqual(outcomes, 'pending', 'every caller settles');
      for (const outcome of outcomes) {
        assert.equal(outcome.status, 'rejected');
        assert.equal(outcome.reason.code, 'unauthenticated');
        assert.equal(outcome.reason.status, 401);
      }
      // One fetch for all of them: the refused attempt and its one retry with the token asked again.
      assert.equal(recorder.requests.length, 2);
    } finally {
      prefetcher.close();
    }
  });

  test('callers of a superseded plan all resolve undefined; callers of a fetched one all get it', async () => {
    const id = eventId('shared-ok');
    await createEvent(server, id);
    const prefetcher = new Prefetcher({ url: server.graphql, token });
    try {
      const now = Date.now();
      const early = { topic: `event:${id}`, version: 1, stage: 'LIVE', published_at_ms: now + 60_000, payload: {}, fetch_within_ms: 1 };
      const a = prefetcher.contentFor(early);
      const b = prefetcher.contentFor(early);
      const later = { topic: `event:${id}`, version: 2, stage: 'ENDED', published_at_ms: now, payload: {} };
      const c = prefetcher.contentFor(later);
      const d = prefetcher.contentFor(later);
      assert.deepEqual(await Promise.all([a, b]), [undefined, undefined]);
      const [got, also] = await Promise.all([c, d]);
      assert.equal(got.stage, 'ENDED');
      assert.equal(also, got);
    } finally {
      prefetcher.close();
    }
  });

  test('a shed answer (503, Retry-After, OVERLOADED) is retried no sooner than asked', async () => {
    // A loopback proxy in front of the real server sheds the first request the way the
    // protection layer does.
    let shed = 0;
    const proxy = createServer(async (request, response) => {
      if (shed === 0) {
        shed += 1;
        response.writeHead(503, { 'content-type': 'application/json', 'retry-after': '1' });
        response.end(JSON.stringify({ errors: [{ message: 'this node is overloaded and sheds best_effort requests; retry in 800 ms', extensions: { code: 'OVERLOADED', retry_after_ms: 800, class: 'best_effort' } }] }));
        return;
      }
      const chunks = [];
      for await (const chunk of request) chunks.push(chunk);
      const upstream = await fetch(`${server.base}${request.url}`, {
        method: request.method,
        headers: Object.fromEntries(Object.entries(request.headers).filter(([name]) => name !== 'host' && name !== 'content-length')),
        body: request.method === 'POST' ? Buffer.concat(chunks) : undefined,
      });
      response.writeHead(upstream.status, { 'content-type': 'application/json' });
      response.end(Buffer.from(await upstream.arrayBuffer()));
    });
    await new Promise((r) => proxy.listen(0, '127.0.0.1', r));
    const recorder = recordingFetch();
    const prefetcher = new Prefetcher({ url: `http://127.0.0.1:${proxy.address().port}/graphql`, token, fetch: recorder.fetch });
    try {
      const events = await prefetcher.prefetch();
      assert.ok(events.length > 0);
      assert.equal(recorder.requests[0].status, 503);
      const waited = recorder.requests[1].at - recorder.requests[0].at;
      assert.ok(waited >= 800, `waited ${waited} ms`);
    } finally {
      prefetcher.close();
      proxy.close();
    }
  });

  test('a request the server refuses for good is not retried', async () => {
    const recorder = recordingFetch();
    const prefetcher = new Prefetcher({ url: server.graphql, token: 'not-a-token', fetch: recorder.fetch });
    try {
      await assert.rejects(prefetcher.prefetch(), (error) => error.code === 'unauthenticated' && error.status === 401);
      // One more attempt with the token asked for again, then no more.
      assert.equal(recorder.requests.length, 2);
    } finally {
      prefetcher.close();
    }
  });
});

describe('prefetcher and the server TTL', () => {
  let server;
  let token;
  before(async () => {
    server = await startServer({ env: { RINGSIDE_DEVICE_CACHE_TTL_S: '1', RINGSIDE_DEVICE_CACHE_JITTER: '0' } });
    token = await deviceToken({ profile: 'p000011' });
  });
  after(() => server?.stop('SIGKILL'));

  test('content past its TTL is not served: the state fetches it again', async () => {
    const id = eventId('ttl');
    await createEvent(server, id);
    const recorder = recordingFetch();
    const prefetcher = new Prefetcher({ url: server.graphql, token, fetch: recorder.fetch });
    try {
      await prefetcher.prefetch();
      assert.equal(prefetcher.content(id, 'LIVE').stage, 'LIVE');
      await new Promise((r) => setTimeout(r, 1100));
      assert.equal(prefetcher.content(id, 'LIVE'), undefined, 'expired');
      const sent = recorder.requests.length;
      const content = await prefetcher.contentFor({ topic: `event:${id}`, version: 1, stage: 'LIVE', published_at_ms: Date.now(), payload: {} });
      assert.equal(content.stage, 'LIVE');
      assert.ok(recorder.requests.length > sent, 'fetched again');
    } finally {
      prefetcher.close();
    }
  });

  test('with autoRefresh, expired content is prefetched again in the background', async () => {
    const id = eventId('refresh');
    await createEvent(server, id);
    const recorder = recordingFetch();
    const prefetcher = new Prefetcher({ url: server.graphql, token, fetch: recorder.fetch, autoRefresh: true });
    try {
      await prefetcher.prefetch();
      const first = prefetcher.event(id).expiresAt;
      const deadline = Date.now() + 5000;
      while (!(prefetcher.event(id)?.expiresAt > first) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.ok(prefetcher.event(id).expiresAt > first, 'refreshed');
      const refreshes = recorder.requests.filter((request) => request.headers['x-ringside-priority'] === 'best_effort');
      assert.ok(refreshes.length >= 2, 'the refresh is background work too');
    } finally {
      prefetcher.close();
    }
  });
});

describe('prefetcher retry delays (no server)', () => {
  /** A fetch that answers every request with GraphQL OVERLOADED and the given body delay. */
  const overloaded = (retryAfterMs, headers = {}) => async () =>
    new Response(JSON.stringify({ errors: [{ message: 'overloaded', extensions: { code: 'OVERLOADED', retry_after_ms: retryAfterMs } }] }), {
      status: 503,
      headers: { 'content-type': 'application/json', ...headers },
    });

  test("an OVERLOADED body's retry_after_ms is capped like the Retry-After header", async () => {
    for (const [sent, expected] of [
      [800, 800],
      [RETRY_AFTER_MAX_MS, RETRY_AFTER_MAX_MS],
      [86_400_000, RETRY_AFTER_MAX_MS],
      [Number.MAX_SAFE_INTEGER, RETRY_AFTER_MAX_MS],
    ]) {
      const prefetcher = new Prefetcher({ url: 'http://127.0.0.1:9/graphql', token: 't', fetch: overloaded(sent), maxAttempts: 1 });
      try {
        await assert.rejects(prefetcher.prefetch(), (error) => error.code === 'overloaded' && error.retryAfterMs === expected);
      } finally {
        prefetcher.close();
      }
    }
  });

  test('an unreadable retry_after_ms counts as absent: the Retry-After header is used', async () => {
    for (const sent of [-5, 'soon', null]) {
      const prefetcher = new Prefetcher({ url: 'http://127.0.0.1:9/graphql', token: 't', fetch: overloaded(sent, { 'retry-after': '2' }), maxAttempts: 1 });
      try {
        await assert.rejects(prefetcher.prefetch(), (error) => error.code === 'overloaded' && error.retryAfterMs === 2000);
      } finally {
        prefetcher.close();
      }
    }
  });
});
