// @ts-check
/**
 * The console's view of the admin API: typed calls, the API's error messages, the Server-Sent
 * Events stream (read with fetch, since EventSource cannot send the Authorization header) and
 * the client-side checks that mirror the server's limits.
 * @module
 */

/**
 * @typedef {{ code: string, message: string, field?: string }} ApiErrorBody
 * @typedef {{ id: string, topic: string, title: string, starts_at: string, stages: string[],
 *   stage: string | null, version: number, published_at_ms: number | null }} EventSummary
 * @typedef {{ events: EventSummary[] }} EventList
 * @typedef {{ started_at_ms: number, window_ms: number, grace_ms: number, sessions_at_start: number,
 *   goaways_sent: number, sessions_left: number, sessions_cut?: number }} DrainProgress
 * @typedef {{ node: string, connections: number, address?: string, ready?: boolean,
 *   last_seen_ms_ago?: number, drain?: DrainProgress, shed?: PerClass }} NodeStats
 * @typedef {{ topic: string, subscribers: number, version: number, acks: number }} TopicStats
 * @typedef {{ nodes: NodeStats[], topics: TopicStats[] }} Stats
 * @typedef {{ critical: number, degraded: number, best_effort: number, bulk: number }} PerClass
 * @typedef {{ node: string, protection: string, ruleset: string, active: boolean, reasons: string[],
 *   limit: number, in_flight: number, shed: PerClass, admitted: PerClass }} ProtectionStatus
 * @typedef {{ topic: string, version: number, published_at_ms: number, recorded?: boolean }} PublishReceipt
 * @typedef {{ p50_ms: number, p90_ms: number, p99_ms: number }} LatencyQuantiles
 * @typedef {{ event: string, topic: string, version: number, stage: string, published_at_ms: number,
 *   subscribed: number, sent: number, acked: number, acked_fraction: number,
 *   ack_latency: LatencyQuantiles | null, nodes_reporting: number, nodes_applied: number }} BroadcastSummary
 * @typedef {{ broadcasts: BroadcastSummary[] }} BroadcastList
 * @typedef {{ ms: number, acked_fraction: number }} ReachPoint
 * @typedef {{ node: string, subscribed: number, sent: number, acked: number,
 *   ack_latency: { counts: number[] }, applied: boolean, received_at_ms: number }} NodeBroadcast
 * @typedef {BroadcastSummary & { reach: ReachPoint[], nodes: NodeBroadcast[] }} BroadcastReport
 * @typedef {{ node: string, state: string, progress?: DrainProgress }} DrainAnswer
 */

/** Largest payload of a state, in bytes (protocol/src/state.rs `PAYLOAD_MAX_BYTES`). */
export const PAYLOAD_MAX_BYTES = 4 * 1024;
/** Deepest nesting of a payload (protocol/src/state.rs `PAYLOAD_MAX_DEPTH`). */
export const PAYLOAD_MAX_DEPTH = 32;
/** Longest follow-up fetch window an operator may set (control/src/api.rs). */
export const FETCH_WITHIN_MAX_MS = 3_600_000;

/** The default sizing of the follow-up fetch window (control/src/fetch_window.rs defaults). */
export const FETCH_WINDOW_DEFAULTS = Object.freeze({
  capacityPerS: 3000,
  share: 0.5,
  minMs: 1000,
  maxMs: 60_000,
});

/** An answer of the API that is not 2xx, with the API's own message. */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {ApiErrorBody} body
   */
  constructor(status, body, retryAfterMs = null) {
    super(body.message);
    this.name = 'ApiError';
    this.status = status;
    this.code = body.code;
    this.field = body.field;
    /** How long the server asked us to wait (`Retry-After`), in ms; null when it did not. */
    this.retryAfterMs = retryAfterMs;
  }
}

/** The longest `Retry-After` honoured, so that a bad header cannot park the page for good. */
const RETRY_AFTER_MAX_MS = 10 * 60 * 1000;

/**
 * `Retry-After` in seconds (the form Ringside sends), as ms; null when absent or not a number.
 * @param {Response} response
 * @returns {number | null}
 */
export function retryAfterMsOf(response) {
  const value = response.headers.get('retry-after');
  if (value === null || !/^\d+$/.test(value.trim())) return null;
  return Math.min(Number(value.trim()) * 1000, RETRY_AFTER_MAX_MS);
}

/**
 * The `{"error":{...}}` body of a failed answer, or one made up from the status when the body
 * is not the API's (a proxy's page, a dropped connection).
 * @param {Response} response
 * @returns {Promise<ApiError>}
 */
async function errorOf(response) {
  const text = await response.text().catch(() => '');
  try {
    const parsed = JSON.parse(text);
    if (parsed && parsed.error && typeof parsed.error.message === 'string') {
      return new ApiError(response.status, parsed.error, retryAfterMsOf(response));
    }
  } catch {
    // Not JSON: described below.
  }
  return new ApiError(response.status, {
    code: 'http_' + response.status,
    message: `HTTP ${response.status} ${response.statusText}`.trim(),
  }, retryAfterMsOf(response));
}

/** The admin API under one token. */
export class AdminApi {
  /** @param {string} token */
  constructor(token) {
    this.token = token;
  }

  /**
   * @template T
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<T>}
   */
  async call(method, path, body) {
    /** @type {Record<string, string>} */
    const headers = { authorization: `Bearer ${this.token}`, accept: 'application/json' };
    /** @type {RequestInit} */
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['content-type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new ApiError(0, { code: 'network', message: `cannot reach the server (${String(error)})` });
    }
    if (!response.ok) {
      throw await errorOf(response);
    }
    // An answer without a body (204) reads as null; the callers read the state again.
    const text = await response.text();
    if (text === '') return /** @type {T} */ (/** @type {unknown} */ (null));
    try {
      return /** @type {T} */ (JSON.parse(text));
    } catch {
      throw new ApiError(response.status, { code: 'invalid_answer', message: `the server answered ${method} ${path} with something that is not JSON` });
    }
  }

  /** @returns {Promise<EventList>} */
  events() { return this.call('GET', '/v1/admin/events'); }
  /** @returns {Promise<Stats>} */
  stats() { return this.call('GET', '/v1/admin/stats'); }
  /** @returns {Promise<ProtectionStatus>} */
  protection() { return this.call('GET', '/v1/admin/protection'); }
  /**
   * @param {{ id: string, title: string, starts_at: string, stages: string[] }} event
   * @returns {Promise<EventSummary>}
   */
  createEvent(event) { return this.call('POST', '/v1/admin/events', event); }
  /**
   * @param {string} id
   * @param {{ title?: string, starts_at?: string, stages?: string[] }} update
   * @returns {Promise<EventSummary | null>}
   */
  updateEvent(id, update) { return this.call('PATCH', `/v1/admin/events/${encodeURIComponent(id)}`, update); }
  /**
   * @param {string} id
   * @param {{ stage: string, payload: object, fetch_within_ms?: number }} request
   * @returns {Promise<PublishReceipt>}
   */
  publish(id, request) { return this.call('POST', `/v1/admin/events/${encodeURIComponent(id)}/publish`, request); }
  /**
   * @param {string} id
   * @returns {Promise<BroadcastList>}
   */
  broadcasts(id) { return this.call('GET', `/v1/admin/events/${encodeURIComponent(id)}/broadcasts`); }
  /**
   * @param {string} id
   * @param {number} version
   * @returns {Promise<BroadcastReport>}
   */
  broadcast(id, version) {
    return this.call('GET', `/v1/admin/events/${encodeURIComponent(id)}/broadcasts/${version}`);
  }
  /**
   * @param {string} node
   * @returns {Promise<DrainAnswer>}
   */
  drain(node) { return this.call('POST', `/v1/admin/nodes/${encodeURIComponent(node)}/drain`); }

  /**
   * Reads `GET /v1/admin/stream` until `signal` aborts or the stream ends; each complete event is
   * handed to `onEvent`. Throws the API's error when the stream is refused (404 when the server
   * has no stream: the caller polls instead).
   * @param {(name: string, data: unknown) => void} onEvent
   * @param {AbortSignal} signal
   * @returns {Promise<void>}
   */
  async stream(onEvent, signal) {
    const response = await fetch('/v1/admin/stream', {
      headers: { authorization: `Bearer ${this.token}`, accept: 'text/event-stream' },
      cache: 'no-store',
      signal,
    });
    if (!response.ok || !response.body) {
      throw await errorOf(response);
    }
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    const parser = new SseParser(onEvent);
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return;
      parser.push(value);
    }
  }
}

/**
 * An incremental Server-Sent Events parser (the WHATWG event-stream format): `event:` names the
 * event, `data:` lines are joined with newlines, a blank line dispatches, `:` lines are comments.
 * Data that is not JSON is dropped.
 */
export class SseParser {
  /** @param {(name: string, data: unknown) => void} onEvent */
  constructor(onEvent) {
    this.onEvent = onEvent;
    this.buffer = '';
    this.name = '';
    /** @type {string[]} */
    this.data = [];
  }

  /** @param {string} chunk */
  push(chunk) {
    this.buffer += chunk;
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (!match) break;
      // A lone \r at the end may be the first half of \r\n: wait for more.
      if (match[0] === '\r' && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      this.line(line);
    }
  }

  /** @param {string} line */
  line(line) {
    if (line === '') {
      if (this.data.length > 0) {
        const text = this.data.join('\n');
        let parsed;
        try { parsed = JSON.parse(text); } catch { parsed = undefined; }
        if (parsed !== undefined) this.onEvent(this.name || 'message', parsed);
      }
      this.name = '';
      this.data = [];
      return;
    }
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (field === 'event') this.name = value;
    else if (field === 'data') this.data.push(value);
  }
}

/**
 * Checks a payload as the server will (a JSON object, at most PAYLOAD_MAX_BYTES in the compact
 * form the console sends, nested at most PAYLOAD_MAX_DEPTH deep).
 * @param {string} text
 * @returns {{ ok: true, value: object, bytes: number } | { ok: false, message: string }}
 */
export function checkPayload(text) {
  const trimmed = text.trim();
  if (trimmed === '') return { ok: true, value: {}, bytes: 2 };
  let value;
  try {
    value = JSON.parse(trimmed);
  } catch (error) {
    return { ok: false, message: `not valid JSON: ${error instanceof Error ? error.message : String(error)}` };
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return { ok: false, message: 'the payload must be a JSON object, like {"hero": "main-card"}' };
  }
  const compact = JSON.stringify(value);
  const bytes = new TextEncoder().encode(compact).length;
  if (bytes > PAYLOAD_MAX_BYTES) {
    return { ok: false, message: `the payload is ${bytes} bytes, more than the ${PAYLOAD_MAX_BYTES} byte limit` };
  }
  if (depthOf(value) > PAYLOAD_MAX_DEPTH) {
    return { ok: false, message: `the payload nests objects and arrays more than ${PAYLOAD_MAX_DEPTH} levels deep` };
  }
  return { ok: true, value, bytes };
}

/**
 * @param {unknown} value
 * @returns {number} levels of objects and arrays
 */
function depthOf(value) {
  if (value === null || typeof value !== 'object') return 0;
  let deepest = 0;
  for (const inner of Object.values(value)) deepest = Math.max(deepest, depthOf(inner));
  return deepest + 1;
}

/**
 * The follow-up fetch window the control plane sets by default for `subscribers` devices, with
 * the default sizing (a deployment may configure another; the state devices receive carries the
 * one used): `clamp(ceil(subscribers * 1000 / (capacity * share)), min, max)`.
 * @param {number} subscribers
 * @returns {number} milliseconds
 */
export function defaultFetchWindowMs(subscribers) {
  const { capacityPerS, share, minMs, maxMs } = FETCH_WINDOW_DEFAULTS;
  const spread = Math.ceil((subscribers * 1000) / (capacityPerS * share));
  return Math.min(Math.max(spread, minMs), maxMs);
}

/**
 * Devices subscribed to an event right now, summed over the stats' rows of its topic. A node
 * lists a topic only once it holds a state of it, so before an event's first publish its
 * devices are not counted anywhere: null then, as when the stats are not known yet.
 * @param {Stats | null} stats
 * @param {string} eventId
 * @returns {number | null}
 */
export function subscribersOf(stats, eventId) {
  if (!stats) return null;
  const topic = `event:${eventId}`;
  const rows = stats.topics.filter((row) => row.topic === topic);
  if (rows.length === 0) return null;
  return rows.reduce((total, row) => total + row.subscribers, 0);
}
