// RingsideClient against a real `ringside serve`.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { Backoff, KEPT_TOPICS_MAX, parseRetryAfter, RingsideClient } from '@ringside/client';
import { admin, createEvent, deviceToken, eventId, publish, sleep, startServer, waitFor } from './support.js';

/** A client whose states and connection events the test reads. */
function watch(client, topic, options) {
  const seen = { states: [], messages: [], connections: [], errors: [] };
  client.on('connection', (event) => seen.connections.push(event));
  client.on('error', (error) => seen.errors.push(error));
  seen.subscription = client.subscribe(topic, (state) => seen.states.push(state), {
    onBestEffort: (message) => seen.messages.push(message),
    ...options,
  });
  return seen;
}

const versions = (states) => states.map((state) => state.version);

/**
 * A real WebSocket (the runtime's) that hands every state frame to the client twice and then
 * replays every older state frame, and records what the client sends: through the client's
 * public `WebSocket` option.
 */
class ReplayingWebSocket {
  constructor(url) {
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    const states = [];
    this.inner = new WebSocket(url);
    this.inner.onopen = (event) => this.onopen?.(event);
    this.inner.onclose = (event) => this.onclose?.(event);
    this.inner.onerror = (event) => this.onerror?.(event);
    this.inner.onmessage = (event) => {
      this.onmessage?.(event);
      if (JSON.parse(event.data).type !== 'state') return;
      this.onmessage?.(event);
      for (const older of states) this.onmessage?.(older);
      states.push(event);
    };
  }
  get readyState() {
    return this.inner.readyState;
  }
  send(data) {
    this.sent.push(JSON.parse(data));
    this.inner.send(data);
  }
  close(code, reason) {
    this.inner.close(code, reason);
  }
}

/** A real WebSocket (the runtime's) that records the frames sent and received. */
class RecordingWebSocket {
  constructor(url) {
    this.sent = [];
    this.received = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    this.inner = new WebSocket(url);
    this.inner.onopen = (event) => this.onopen?.(event);
    this.inner.onclose = (event) => this.onclose?.(event);
    this.inner.onerror = (event) => this.onerror?.(event);
    this.inner.onmessage = (event) => {
      this.received.push(JSON.parse(event.data));
      this.onmessage?.(event);
    };
  }
  get readyState() {
    return this.inner.readyState;
  }
  send(data) {
    this.sent.push(JSON.parse(data));
    this.inner.send(data);
  }
  close(code, reason) {
    this.inner.close(code, reason);
  }
}

/** A WebSocket that never opens: for what the client decides before any connection. */
class NeverOpenWebSocket {
  constructor() {
    this.readyState = 0;
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
  }
  send() {}
  close() {}
}

describe('backoff', () => {
  test('delays stay between the base and three times the previous, under the cap', () => {
    for (let seed = 0; seed < 50; seed++) {
      const backoff = new Backoff(100, 10_000);
      let previous = 100;
      for (let i = 0; i < 30; i++) {
        const delay = backoff.next();
        assert.ok(delay >= 100 && delay <= 10_000 && delay <= previous * 3, `${delay} after ${previous}`);
        previous = delay;
      }
    }
    const backoff = new Backoff(100, 10_000);
    for (let i = 0; i < 20; i++) backoff.next();
    backoff.reset();
    assert.ok(backoff.next() <= 300);
  });

  test('Retry-After is read in seconds and bounded', () => {
    assert.equal(parseRetryAfter('2'), 2000);
    assert.equal(parseRetryAfter(' 75 '), 75_000);
    assert.equal(parseRetryAfter('99999999'), 600_000);
    assert.equal(parseRetryAfter('Wed, 21 Oct 2026 07:28:00 GMT'), undefined);
    assert.equal(parseRetryAfter(null), undefined);
  });
});

describe('topics kept after their last listener left (no server)', () => {
  test('a bounded number is kept, the one left longest ago dropped first', () => {
    const client = new RingsideClient({ url: 'ws://127.0.0.1:9/v1/ws', token: 't', WebSocket: NeverOpenWebSocket });
    try {
      for (let i = 0; i <= KEPT_TOPICS_MAX; i++) client.subscribe(`event:kept-${i}`, () => {}, { since: i + 1 }).unsubscribe();
      assert.equal(client.version('kept-0'), 0, 'the oldest is forgotten');
      assert.equal(client.version('kept-1'), 2);
      assert.equal(client.version(`kept-${KEPT_TOPICS_MAX}`), KEPT_TOPICS_MAX + 1);
      // Coming back to one takes it out of the kept set; leaving again puts it last.
      client.subscribe('kept-1', () => {}).unsubscribe();
      client.subscribe('event:kept-new', () => {}, { since: 7 }).unsubscribe();
      assert.equal(client.version('kept-1'), 2, 'left again: kept, now the newest but one');
      assert.equal(client.version('kept-2'), 0, 'the oldest now');
    } finally {
      client.close();
    }
    assert.equal(client.version('kept-1'), 0, 'close() forgets everything');
  });
});

describe('client against one server', () => {
  let server;
  let token;
  before(async () => {
    server = await startServer();
    token = await deviceToken();
  });
  after(() => server?.stop('SIGKILL'));

  test('subscribes and receives the current state, then new ones, acked', async () => {
    const id = eventId('receive');
    await createEvent(server, id);
    const first = await publish(server, id, 'UPCOMING', { hero: 'poster' });
    const client = new RingsideClient({ url: server.ws, token });
    try {
      const seen = watch(client, `event:${id}`);
      await waitFor(() => seen.states.length === 1, 'the current state');
      assert.equal(seen.states[0].version, first.version);
      assert.equal(seen.states[0].stage, 'UPCOMING');
      assert.deepEqual(seen.states[0].payload, { hero: 'poster' });
      assert.equal(seen.states[0].type, undefined, 'the frame type is not part of the state');
      assert.deepEqual(
        seen.connections.map((c) => c.state),
        ['connecting', 'open'],
      );
      const second = await publish(server, id, 'LIVE', { hero: 'main-card' });
      await waitFor(() => seen.states.length === 2, 'the LIVE state');
      assert.equal(seen.states[1].version, second.version);
      assert.equal(seen.subscription.state.stage, 'LIVE');
      assert.equal(client.version(id), second.version);
      // The acks reach the server's statistics.
      await waitFor(async () => {
        const stats = await admin(server, 'GET', '/v1/admin/stats');
        return stats.topics.find((t) => t.topic === `event:${id}` && t.version === second.version && t.acks >= 1);
      }, 'the ack counted');
    } finally {
      client.close();
    }
  });

  test('best-effort messages are a lane of their own and never a stage change', async () => {
    const id = eventId('lanes');
    await createEvent(server, id);
    await publish(server, id, 'LIVE', { hero: 'main-card' });
    const client = new RingsideClient({ url: server.ws, token });
    try {
      const seen = watch(client, id);
      await waitFor(() => seen.states.length === 1, 'the stage state');
      await publish(server, id, 'LIVE', { viewers: 120 }, { priority: 'best_effort' });
      await waitFor(() => seen.messages.length === 1, 'the best-effort message');
      assert.deepEqual(seen.messages[0].payload, { viewers: 120 });
      assert.equal(seen.states.length, 1, 'no stage state came of it');
      assert.deepEqual(seen.subscription.state.payload, { hero: 'main-card' });
      const next = await publish(server, id, 'ENDED', {});
      await waitFor(() => seen.states.length === 2, 'the next stage state');
      assert.equal(seen.states[1].version, next.version);
    } finally {
      client.close();
    }
  });

  test('a version not newer than the one held is ignored; `since` skips what the app holds', async () => {
    const id = eventId('idempotent');
    await createEvent(server, id);
    const first = await publish(server, id, 'UPCOMING');
    const sockets = [];
    const client = new RingsideClient({
      url: server.ws,
      token,
      // Every state frame arrives twice, followed by every older one again: what a node that
      // resends, or a repair racing the bus, could deliver.
      WebSocket: class extends ReplayingWebSocket {
        constructor(url) {
          super(url);
          sockets.push(this);
        }
      },
    });
    try {
      // Subscribed with the version already held: the current state is not sent again.
      const seen = watch(client, id, { since: first.version });
      await waitFor(() => client.connectionState === 'open', 'open');
      await sleep(300);
      assert.deepEqual(seen.states, []);
      const second = await publish(server, id, 'LIVE');
      await waitFor(() => seen.states.length === 1, 'the new state');
      const third = await publish(server, id, 'ENDED');
      await waitFor(() => seen.states.length === 2, 'the next state');
      await sleep(200);
      assert.deepEqual(versions(seen.states), [second.version, third.version], 'each once, in order');
      const acks = sockets.flatMap((socket) => socket.sent).filter((frame) => frame.type === 'ack');
      assert.deepEqual(acks.map((ack) => ack.version), [second.version, third.version], 'one ack per applied state');
      // A second listener of the topic gets the state held at once, the first nothing more.
      const late = [];
      client.subscribe(id, (state) => late.push(state));
      await waitFor(() => late.length === 1, 'the held state for a new listener');
      assert.equal(late[0].version, third.version);
      assert.deepEqual(versions(seen.states), [second.version, third.version]);
    } finally {
      client.close();
    }
  });

  test('coming back to a topic after its last listener left: the kept state, no second send or ack', async () => {
    const id = eventId('come-back');
    await createEvent(server, id);
    const first = await publish(server, id, 'UPCOMING', { hero: 'poster' });
    const sockets = [];
    const client = new RingsideClient({
      url: server.ws,
      token,
      WebSocket: class extends RecordingWebSocket {
        constructor(url) {
          super(url);
          sockets.push(this);
        }
      },
    });
    const report = () => admin(server, 'GET', `/v1/admin/events/${id}/broadcasts/${first.version}`);
    const acks = async () => (await admin(server, 'GET', '/v1/admin/stats')).topics.find((t) => t.topic === `event:${id}`)?.acks;
    try {
      const seen = watch(client, id);
      await waitFor(() => seen.states.length === 1, 'the current state');
      await waitFor(async () => (await report()).acked === 1, 'the first ack in the report');
      seen.subscription.unsubscribe();
      assert.equal(client.connectionState, 'closed');
      assert.equal(client.version(id), first.version, 'the version is kept without listeners');

      // Navigating back: a new listener gets the state it left at once, from the kept copy.
      const later = [];
      client.subscribe(id, (state) => later.push(state));
      await waitFor(() => later.length === 1, 'the kept state for the new listener');
      assert.equal(later[0].version, first.version);
      assert.deepEqual(later[0].payload, { hero: 'poster' });
      await waitFor(() => sockets.length === 2 && client.connectionState === 'open', 'the new connection');
      const subscribe = sockets[1].sent.find((frame) => frame.type === 'subscribe');
      assert.deepEqual(subscribe.topics, [{ topic: `event:${id}`, since: first.version }], 'resubscribed with the kept version');
      // Past a gateway report interval (2 s): the server sent nothing, the device acked nothing.
      await sleep(2500);
      assert.deepEqual(sockets[1].received.filter((frame) => frame.type === 'state'), [], 'no state sent again');
      assert.deepEqual(sockets[1].sent.filter((frame) => frame.type === 'ack'), [], 'no second ack');
      assert.equal((await report()).acked, 1, 'the broadcast report counts one ack');
      assert.equal((await report()).sent, 1, 'and one send');
      assert.equal(await acks(), 1, 'the stats count one ack');
      assert.equal(later.length, 1);

      // What is new still comes, once, and is acked.
      const second = await publish(server, id, 'LIVE');
      await waitFor(() => later.length === 2, 'the next state');
      assert.equal(later[1].version, second.version);
      assert.deepEqual(sockets[1].sent.filter((frame) => frame.type === 'ack').map((ack) => ack.version), [second.version]);
    } finally {
      client.close();
    }
  });

  test('unsubscribing the last listener closes the connection; the app sees it', async () => {
    const id = eventId('idle');
    await createEvent(server, id);
    await publish(server, id, 'UPCOMING');
    const client = new RingsideClient({ url: server.ws, token });
    try {
      const seen = watch(client, id);
      await waitFor(() => seen.states.length === 1, 'the state');
      seen.subscription.unsubscribe();
      assert.equal(client.connectionState, 'closed');
      assert.equal(seen.connections.at(-1).retryInMs, undefined, 'no reconnect without topics');
    } finally {
      client.close();
    }
  });

  test('a topic that is not event:<id> is refused before anything is sent', () => {
    const client = new RingsideClient({ url: server.ws, token });
    assert.throws(() => client.subscribe('event:', () => {}), TypeError);
    assert.throws(() => client.subscribe('event:-bad', () => {}), TypeError);
    client.close();
  });
});

describe('reconnecting', () => {
  test('after a server restart on the same port, without missing the latest state', async () => {
    let server = await startServer();
    const port = server.port;
    const token = await deviceToken();
    const id = eventId('restart');
    await createEvent(server, id);
    const first = await publish(server, id, 'UPCOMING');
    const client = new RingsideClient({ url: server.ws, token, backoffCapMs: 500 });
    try {
      const seen = watch(client, id);
      await waitFor(() => seen.states.length === 1, 'the first state');
      await server.stop('SIGKILL');
      await waitFor(() => client.connectionState !== 'open', 'the loss seen');
      const lost = seen.connections.find((event) => event.state === 'closed');
      assert.ok(lost.retryInMs >= 100, 'it reconnects after a backoff delay');
      // The restarted node (an in-memory store: the event is created again) takes a publish
      // while the device is still away; the device's resubscribe brings it.
      server = await startServer({ port });
      await createEvent(server, id);
      const latest = await publish(server, id, 'LIVE', { hero: 'after-restart' });
      await waitFor(() => seen.states.length === 2, 'the state published while away', 20_000);
      assert.deepEqual(versions(seen.states), [first.version, latest.version]);
      assert.deepEqual(seen.states[1].payload, { hero: 'after-restart' });
      assert.equal(client.connectionState, 'open');
    } finally {
      client.close();
      await server.stop('SIGKILL');
    }
  });

  test('after a goaway (max lifetime), with the token asked for again', async () => {
    const server = await startServer({
      env: {
        RINGSIDE_MAX_CONNECTION_LIFETIME_MS: '1500',
        RINGSIDE_CONNECTION_LIFETIME_SPREAD_MS: '0',
        RINGSIDE_RECONNECT_SPREAD_MS: '200',
      },
    });
    const minted = [await deviceToken({ device: 'goaway-1' }), await deviceToken({ device: 'goaway-2' })];
    let calls = 0;
    const token = async () => minted[Math.min(calls++, minted.length - 1)];
    const id = eventId('goaway');
    await createEvent(server, id);
    const first = await publish(server, id, 'UPCOMING');
    const client = new RingsideClient({ url: server.ws, token });
    const goaways = [];
    client.on('goaway', (frame) => goaways.push(frame));
    try {
      const seen = watch(client, id);
      await waitFor(() => seen.states.length === 1, 'the first state');
      await waitFor(() => goaways.length >= 1, 'a max_lifetime goaway', 10_000);
      assert.equal(goaways[0].reason, 'max_lifetime');
      assert.ok(goaways[0].reconnect_after_ms <= 200);
      await waitFor(() => calls >= 2, 'the token asked for again');
      await waitFor(() => seen.connections.filter((c) => c.state === 'open').length >= 2, 'a second connection');
      const latest = await publish(server, id, 'LIVE');
      await waitFor(() => seen.states.length === 2, 'the state on the new connection');
      assert.deepEqual(versions(seen.states), [first.version, latest.version], 'nothing twice after the resubscribe');
      assert.deepEqual(seen.errors, [], 'a goaway is not an error');
    } finally {
      client.close();
      await server.stop('SIGKILL');
    }
  });

  test('a silent connection is found dead by the heartbeat probe and replaced', async () => {
    const server = await startServer({ env: { RINGSIDE_HEARTBEAT_MS: '300' } });
    const token = await deviceToken();
    const id = eventId('heartbeat');
    await createEvent(server, id);
    await publish(server, id, 'UPCOMING');
    const client = new RingsideClient({ url: server.ws, token, connectTimeoutMs: 1000, backoffCapMs: 300 });
    try {
      const seen = watch(client, id);
      await waitFor(() => seen.states.length === 1, 'the state');
      // A quiet period longer than the heartbeat is answered: the connection stays.
      await sleep(1000);
      assert.equal(client.connectionState, 'open');
      assert.equal(seen.errors.length, 0);
      // A frozen node: TCP stays up, nothing comes back.
      server.child.kill('SIGSTOP');
      await waitFor(() => seen.errors.some((e) => e.code === 'heartbeat_timeout'), 'the dead connection detected', 5000);
      server.child.kill('SIGCONT');
      await waitFor(() => seen.connections.filter((c) => c.state === 'open').length >= 2, 'a new connection', 15_000);
      const latest = await publish(server, id, 'LIVE');
      await waitFor(() => seen.states.at(-1).version === latest.version, 'the state after the recovery');
    } finally {
      client.close();
      server.child.kill('SIGCONT');
      await server.stop('SIGKILL');
    }
  });

  test('a refused upgrade (bad token) is retried with backoff, and the token asked for each time', async () => {
    const server = await startServer();
    const good = await deviceToken();
    let calls = 0;
    const token = () => (++calls < 3 ? 'not-a-token' : good);
    const id = eventId('refused');
    await createEvent(server, id);
    await publish(server, id, 'UPCOMING');
    const client = new RingsideClient({ url: server.ws, token, backoffBaseMs: 50, backoffCapMs: 200 });
    try {
      const seen = watch(client, id);
      await waitFor(() => seen.states.length === 1, 'the state once the token is good');
      assert.ok(calls >= 3);
      assert.ok(seen.errors.filter((e) => e.code === 'connect_failed').length >= 2);
    } finally {
      client.close();
      await server.stop('SIGKILL');
    }
  });
});
