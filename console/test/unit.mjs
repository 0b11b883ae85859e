// @ts-check
/** Unit tests of the console's pure parts (api.js), in Node: the SSE parser and the checks. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SseParser, checkPayload, defaultFetchWindowMs, subscribersOf, retryAfterMsOf, PAYLOAD_MAX_BYTES } from '../api.js';

test('the SSE parser joins data lines, names events and survives any chunking', () => {
  const stream = ': hello\n\nevent: stats\ndata: {"nodes":[],\ndata: "topics":[]}\n\r\nevent: events\r\ndata:{"events":[]}\r\n\r\ndata: not json\n\ndata: 1\n\n';
  const expected = [['stats', { nodes: [], topics: [] }], ['events', { events: [] }], ['message', 1]];
  for (const size of [1, 2, 3, 7, stream.length]) {
    /** @type {[string, unknown][]} */
    const seen = [];
    const parser = new SseParser((name, data) => seen.push([name, data]));
    for (let at = 0; at < stream.length; at += size) parser.push(stream.slice(at, at + size));
    assert.deepEqual(seen, expected, `chunks of ${size}`);
  }
});

test('payloads are checked as the server checks them', () => {
  assert.deepEqual(checkPayload(''), { ok: true, value: {}, bytes: 2 });
  assert.equal(checkPayload('{"hero": "main-card"}').ok, true);
  for (const [text, message] of [['[1]', 'must be a JSON object'], ['null', 'must be a JSON object'],
    ['"x"', 'must be a JSON object'], ['{"a":', 'not valid JSON'],
    [JSON.stringify({ x: 'y'.repeat(PAYLOAD_MAX_BYTES) }), 'byte limit'],
    ['{"a":'.repeat(33) + '1' + '}'.repeat(33), 'levels deep']]) {
    const checked = checkPayload(text);
    assert.equal(checked.ok, false, text.slice(0, 40));
    assert.ok(!checked.ok && checked.message.includes(message), `${text.slice(0, 40)}: ${!checked.ok && checked.message}`);
  }
  assert.equal(checkPayload('{"a":'.repeat(32) + '1' + '}'.repeat(32)).ok, true);
});

test('the default fetch window follows control/src/fetch_window.rs', () => {
  assert.equal(defaultFetchWindowMs(0), 1000);
  assert.equal(defaultFetchWindowMs(1500), 1000);
  assert.equal(defaultFetchWindowMs(15_000), 10_000);
  assert.equal(defaultFetchWindowMs(10_000_000), 60_000);
});

test('subscribers are summed over the rows of the event topic', () => {
  const stats = { nodes: [], topics: [
    { topic: 'event:a', subscribers: 3, version: 1, acks: 0 },
    { topic: 'event:a', subscribers: 4, version: 1, acks: 0 },
    { topic: 'event:ab', subscribers: 9, version: 1, acks: 0 }] };
  assert.equal(subscribersOf(stats, 'a'), 7);
  assert.equal(subscribersOf(null, 'a'), null);
  assert.equal(subscribersOf(stats, 'b'), null, 'a topic without a state is not listed');
});

test('Retry-After is read in seconds, capped, and ignored when it is not a number', () => {
  const answer = (value) => new Response(null, { status: 503, headers: value === null ? {} : { 'retry-after': value } });
  assert.equal(retryAfterMsOf(answer('5')), 5000);
  assert.equal(retryAfterMsOf(answer(' 7 ')), 7000);
  assert.equal(retryAfterMsOf(answer('86400')), 10 * 60 * 1000);
  assert.equal(retryAfterMsOf(answer(null)), null);
  assert.equal(retryAfterMsOf(answer('soon')), null);
  assert.equal(retryAfterMsOf(answer('-3')), null);
});
