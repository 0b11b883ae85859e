// Prefetcher: holds every stage's content of every upcoming or live event, fetched from
// `/graphql` before it is needed (docs/PROTOCOL.md, "Prefetch" and "Follow-up fetches").
//
// - Queries go as automatic persisted queries: the hash alone first, as a cacheable GET; the
//   full text (with its hash, by POST) only when the node answers PERSISTED_QUERY_NOT_FOUND.
//   Where the runtime has no SHA-256 (WebCrypto needs a secure context) the text is sent.
// - Background prefetches say `x-ringside-priority: best_effort`, so that a node under load
//   sheds them before what a viewer waits for.
// - Content is kept per event and stage for the response's `cacheHint.ttlSeconds` (jittered
//   by the server, so devices that fetched together do not expire together).
// - `contentFor(state)` returns what is held for the state's stage at once; only when nothing
//   is held it fetches, at a uniformly random moment of the state's `fetch_within_ms` window.
// - A shed answer (503 with Retry-After, or GraphQL OVERLOADED with `retry_after_ms`) is
//   retried no sooner than the server asked, with this client's own backoff on top.

import { Backoff, boundRetryAfterMs, parseRetryAfter, sleep } from './backoff.js';
import { RingsideError, resolveToken, type TokenSource } from './errors.js';
import type { EventState, Json } from './types.js';

// Row cards carry a small poster; the billboard and the hero, the one title shown large, also
// carry their synopsis and billboard art. About 190 KB of JSON for the generated catalog's four
// events of 3 to 4 stages each.
const CARD = 'fragment RingsideCard on TitleCard { id title genres maturity runtimeMinutes year artwork(sizes: [POSTER_SMALL]) { url width height } }';
const FEATURE = 'fragment RingsideFeature on TitleCard { id title synopsis genres maturity runtimeMinutes year artwork(sizes: [BILLBOARD]) { url width height } }';
const EVENT =
  'fragment RingsideEvent on EventPrefetch { id topic title startsAt stages builtForVersion ' +
  'state { topic version stage publishedAtMs payload fetchWithinMs } ' +
  'byStage { stage home { billboard { ...RingsideFeature } rows { id kind title cards { ...RingsideCard } } } ' +
  'eventPage { hero { ...RingsideFeature } rows { id kind title cards { ...RingsideCard } } } } }';
const FRAGMENTS = `${EVENT} ${FEATURE} ${CARD}`;

/** Every stage of every upcoming or live event, in one round trip. */
export const PREFETCH_QUERY = `query RingsidePrefetch { prefetch { profileId cacheHint { ttlSeconds } events { ...RingsideEvent } } } ${FRAGMENTS}`;
/** Every stage of one event (`$id`), for a follow-up fetch. */
export const EVENT_QUERY = `query RingsideEvent($id: ID!) { event(id: $id) { ...RingsideEvent } } ${FRAGMENTS}`;

/** The priority classes of `x-ringside-priority` (it can only lower a request's class). */
export type Priority = 'critical' | 'degraded' | 'best_effort' | 'bulk';

/** One stage's content, as the query selected it (`stage`, `home`, `eventPage`, …). */
export interface StageContent {
  stage: string;
  [field: string]: Json;
}

/** What is held of one event. */
export interface PrefetchedEvent {
  id: string;
  topic: string;
  title?: string;
  startsAt?: string;
  stages?: string[];
  /** The event's state when fetched, shaped like a WebSocket state (null before the first publish). */
  state: EventState | null;
  /** The state version the content was built for. */
  builtForVersion: number;
  /** Content by stage name. */
  byStage: Map<string, StageContent>;
  /** Date.now() after which the content is not served any more. */
  expiresAt: number;
}

export interface PrefetcherOptions {
  /** The GraphQL endpoint, `https://host/graphql`. */
  url: string;
  /** The device token, or a function returning it (or a promise of it), called before every request. */
  token: TokenSource;
  /** A fetch implementation for runtimes without a global one. */
  fetch?: typeof fetch;
  /** Your own prefetch query: it must select `prefetch { events { id topic builtForVersion state {…} byStage { stage … } } }`. */
  prefetchQuery?: string;
  /** Your own one-event query: `event(id: $id) { … }` with the same event fields. */
  eventQuery?: string;
  /** Attempts per request, the first included, for failures worth retrying (default 4). */
  maxAttempts?: number;
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** TTL used when a response carries no cache hint (default 300 s). */
  defaultTtlSeconds?: number;
  /** Prefetch again in the background when the held content expires (default false). */
  autoRefresh?: boolean;
}

interface GraphqlError {
  message?: string;
  extensions?: { code?: string; retry_after_ms?: unknown };
}

interface GraphqlAnswer {
  data?: { [field: string]: unknown } | null;
  errors?: GraphqlError[];
  extensions?: { cacheHint?: { ttlSeconds?: number } };
}

interface WireEvent {
  id: string;
  topic?: string;
  title?: string;
  startsAt?: string;
  stages?: string[];
  builtForVersion?: number;
  state?: {
    topic: string;
    version: number;
    stage: string;
    publishedAtMs: number;
    payload: { [key: string]: Json };
    fetchWithinMs?: number | null;
  } | null;
  byStage?: StageContent[];
}

/** One caller of `contentFor` waiting on a plan. */
interface Waiter {
  resolve: (content: StageContent | undefined) => void;
  reject: (error: unknown) => void;
}

/** A planned follow-up fetch, and everyone waiting on it: all settle together. */
interface Plan {
  version: number;
  timer: ReturnType<typeof setTimeout>;
  waiters: Waiter[];
}

export class Prefetcher {
  private readonly url: string;
  private readonly token: TokenSource;
  private readonly fetchImpl: typeof fetch;
  private readonly prefetchQuery: string;
  private readonly eventQuery: string;
  private readonly maxAttempts: number;
  private readonly backoffBaseMs: number;
  private readonly backoffCapMs: number;
  private readonly defaultTtlSeconds: number;
  private readonly autoRefresh: boolean;
  private readonly events = new Map<string, PrefetchedEvent>();
  private readonly plans = new Map<string, Plan>();
  private readonly hashes = new Map<string, Promise<string | undefined>>();
  private readonly stop = new AbortController();
  private refreshTimer?: ReturnType<typeof setTimeout>;

  constructor(options: PrefetcherOptions) {
    if (!options || typeof options.url !== 'string') throw new TypeError('Prefetcher: `url` is required');
    if (options.token === undefined) throw new TypeError('Prefetcher: `token` is required');
    const impl = options.fetch ?? (globalThis as { fetch?: typeof fetch }).fetch;
    if (!impl) throw new TypeError('Prefetcher: this runtime has no global fetch; pass the `fetch` option');
    this.url = options.url;
    this.token = options.token;
    this.fetchImpl = impl.bind(globalThis);
    this.prefetchQuery = options.prefetchQuery ?? PREFETCH_QUERY;
    this.eventQuery = options.eventQuery ?? EVENT_QUERY;
    this.maxAttempts = Math.max(1, options.maxAttempts ?? 4);
    this.backoffBaseMs = options.backoffBaseMs ?? 100;
    this.backoffCapMs = options.backoffCapMs ?? 10_000;
    this.defaultTtlSeconds = options.defaultTtlSeconds ?? 300;
    this.autoRefresh = options.autoRefresh ?? false;
  }

  /**
   * Fetches every stage of every upcoming or live event and keeps it. Marked `best_effort`
   * unless `priority` says otherwise: it is background work.
   */
  async prefetch(options: { priority?: Priority } = {}): Promise<PrefetchedEvent[]> {
    const { data, ttlSeconds } = await this.request(this.prefetchQuery, 'RingsidePrefetch', undefined, options.priority ?? 'best_effort');
    const prefetch = data.prefetch as { events?: WireEvent[]; cacheHint?: { ttlSeconds?: number } } | undefined;
    const ttl = prefetch?.cacheHint?.ttlSeconds ?? ttlSeconds;
    const held = (prefetch?.events ?? []).map((event) => this.keep(event, ttl));
    this.scheduleRefresh();
    return held;
  }

  /** Fetches every stage of one event and keeps it (at the route's own priority unless told). */
  async fetchEvent(eventId: string, options: { priority?: Priority } = {}): Promise<PrefetchedEvent> {
    const id = eventIdOf(eventId);
    const { data, ttlSeconds } = await this.request(this.eventQuery, 'RingsideEvent', { id }, options.priority);
    const event = data.event as WireEvent | undefined;
    if (!event || typeof event.id !== 'string') throw new RingsideError('bad_response', 'the answer has no event');
    return this.keep(event, ttlSeconds);
  }

  /** The content held for an event's stage, unless it expired. */
  content(eventId: string, stage: string): StageContent | undefined {
    const event = this.event(eventId);
    return event?.byStage.get(stage);
  }

  /** What is held of an event, unless it expired. */
  event(eventId: string): PrefetchedEvent | undefined {
    const event = this.events.get(eventIdOf(eventId));
    if (!event) return undefined;
    if (Date.now() >= event.expiresAt) {
      this.events.delete(event.id);
      return undefined;
    }
    return event;
  }

  /**
   * The content of a state's stage: at once when it is held; otherwise fetched at a random
   * moment within the state's `fetch_within_ms` window (at once without a window, or when the
   * moment passed). A later state of the same event replaces the plan: the earlier promise
   * then resolves `undefined`. Callers with the same state (two listeners of one topic) share
   * one fetch and settle together: all resolve, or all reject when the fetch fails. A
   * best-effort message is no stage change: it never fetches.
   */
  contentFor(state: EventState): Promise<StageContent | undefined> {
    const eventId = eventIdOf(state.topic);
    const held = this.content(eventId, state.stage);
    if (held || state.priority === 'best_effort') return Promise.resolve(held);
    const previous = this.plans.get(eventId);
    if (previous && previous.version >= state.version) {
      // The same state again (a resubscribe, or a second listener of the topic): the plan
      // stands, and this caller settles with everyone else waiting on it.
      return new Promise((resolve, reject) => previous.waiters.push({ resolve, reject }));
    }
    if (previous) {
      clearTimeout(previous.timer);
      this.plans.delete(eventId);
      for (const waiter of previous.waiters) waiter.resolve(undefined);
    }
    const window = Math.max(0, state.fetch_within_ms ?? 0);
    const moment = state.published_at_ms + Math.random() * window;
    const delay = window > 0 ? Math.max(0, moment - Date.now()) : 0;
    return new Promise((resolve, reject) => {
      const plan: Plan = {
        version: state.version,
        waiters: [{ resolve, reject }],
        timer: setTimeout(() => {
          this.fetchEvent(eventId).then(
            () => {
              if (this.plans.get(eventId) !== plan) return;
              this.plans.delete(eventId);
              const content = this.content(eventId, state.stage);
              for (const waiter of plan.waiters) waiter.resolve(content);
            },
            (error) => {
              if (this.plans.get(eventId) !== plan) return;
              this.plans.delete(eventId);
              for (const waiter of plan.waiters) waiter.reject(error);
            },
          );
        }, delay),
      };
      this.plans.set(eventId, plan);
    });
  }

  /** Stops planned fetches and refreshes; requests in flight end without retrying. */
  close(): void {
    this.stop.abort();
    if (this.refreshTimer !== undefined) clearTimeout(this.refreshTimer);
    for (const plan of this.plans.values()) {
      clearTimeout(plan.timer);
      for (const waiter of plan.waiters) waiter.resolve(undefined);
    }
    this.plans.clear();
  }

  private keep(event: WireEvent, ttlSeconds: number): PrefetchedEvent {
    const held: PrefetchedEvent = {
      id: event.id,
      topic: event.topic ?? `event:${event.id}`,
      title: event.title,
      startsAt: event.startsAt,
      stages: event.stages,
      state: event.state
        ? {
            topic: event.state.topic,
            version: event.state.version,
            stage: event.state.stage,
            published_at_ms: event.state.publishedAtMs,
            payload: event.state.payload,
            ...(event.state.fetchWithinMs != null ? { fetch_within_ms: event.state.fetchWithinMs } : {}),
          }
        : null,
      builtForVersion: event.builtForVersion ?? 0,
      byStage: new Map((event.byStage ?? []).map((content) => [content.stage, content])),
      expiresAt: Date.now() + ttlSeconds * 1000,
    };
    this.events.set(held.id, held);
    return held;
  }

  private scheduleRefresh(): void {
    if (!this.autoRefresh || this.stop.signal.aborted) return;
    if (this.refreshTimer !== undefined) clearTimeout(this.refreshTimer);
    let soonest = Infinity;
    for (const event of this.events.values()) soonest = Math.min(soonest, event.expiresAt);
    if (!Number.isFinite(soonest)) return;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      this.prefetch().catch(() => this.scheduleRetryRefresh());
    }, Math.max(1000, soonest - Date.now()));
  }

  private scheduleRetryRefresh(): void {
    if (this.stop.signal.aborted) return;
    this.refreshTimer = setTimeout(() => {
      this.refreshTimer = undefined;
      this.prefetch().catch(() => this.scheduleRetryRefresh());
    }, this.backoffCapMs * 6);
  }

  /** Runs one query: persisted hash first, the text on a miss; retries what is worth retrying. */
  private async request(
    query: string,
    operationName: string,
    variables: { [name: string]: Json } | undefined,
    priority: Priority | undefined,
  ): Promise<{ data: { [field: string]: unknown }; ttlSeconds: number }> {
    const backoff = new Backoff(this.backoffBaseMs, this.backoffCapMs);
    const hash = await this.hashOf(query);
    let sendText = hash === undefined;
    let refreshedToken = false;
    for (let attempt = 1; ; attempt++) {
      if (this.stop.signal.aborted) throw new RingsideError('closed', 'the prefetcher is closed');
      let waitMs: number | undefined;
      let failure: RingsideError;
      try {
        const token = await resolveToken(this.token);
        const response = await this.send(query, operationName, variables, priority, token, hash, sendText);
        const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
        let answer: GraphqlAnswer | undefined;
        try {
          answer = (await response.json()) as GraphqlAnswer;
        } catch {
          answer = undefined;
        }
        const error = answer?.errors?.[0];
        const code = error?.extensions?.code;
        if (response.ok && answer?.data && !error) {
          const ttl = answer.extensions?.cacheHint?.ttlSeconds ?? this.defaultTtlSeconds;
          return { data: answer.data, ttlSeconds: ttl };
        }
        if (code === 'PERSISTED_QUERY_NOT_FOUND' && !sendText) {
          // The node has not seen (or has evicted) the text: send it once with its hash.
          sendText = true;
          attempt--;
          continue;
        }
        if (response.status === 401 && !refreshedToken) {
          refreshedToken = true;
          attempt--;
          continue;
        }
        // The body's delay is the server's word too, and bounded like the header.
        const serverRetryMs = boundRetryAfterMs(error?.extensions?.retry_after_ms) ?? retryAfterMs;
        failure = new RingsideError(code ? code.toLowerCase() : `http_${response.status}`, error?.message ?? `HTTP ${response.status}`, {
          status: response.status,
          retryAfterMs: serverRetryMs,
        });
        const retryable = code === 'OVERLOADED' || code === 'STORE_UNAVAILABLE' || code === 'TIMEOUT' || response.status === 503 || response.status >= 500 || response.status === 408;
        if (!retryable) throw failure;
        waitMs = (serverRetryMs ?? 0) + backoff.next();
      } catch (error) {
        if (error instanceof RingsideError && waitMs === undefined) throw error;
        failure = error instanceof RingsideError ? error : new RingsideError('network', 'the request failed', { cause: error });
        waitMs ??= backoff.next();
      }
      if (attempt >= this.maxAttempts) throw failure;
      await sleep(waitMs, this.stop.signal);
    }
  }

  private async send(
    query: string,
    operationName: string,
    variables: { [name: string]: Json } | undefined,
    priority: Priority | undefined,
    token: string,
    hash: string | undefined,
    sendText: boolean,
  ): Promise<Response> {
    const headers: { [name: string]: string } = { authorization: `Bearer ${token}` };
    if (priority) headers['x-ringside-priority'] = priority;
    const extensions = hash ? { persistedQuery: { version: 1, sha256Hash: hash } } : undefined;
    if (!sendText && extensions) {
      const params = new URLSearchParams({ operationName, extensions: JSON.stringify(extensions) });
      if (variables) params.set('variables', JSON.stringify(variables));
      const separator = this.url.includes('?') ? '&' : '?';
      return this.fetchImpl(`${this.url}${separator}${params}`, { method: 'GET', headers, signal: this.stop.signal });
    }
    headers['content-type'] = 'application/json';
    const body = JSON.stringify({ query, operationName, variables, extensions });
    return this.fetchImpl(this.url, { method: 'POST', headers, body, signal: this.stop.signal });
  }

  private hashOf(query: string): Promise<string | undefined> {
    let hash = this.hashes.get(query);
    if (!hash) {
      hash = sha256Hex(query);
      this.hashes.set(query, hash);
    }
    return hash;
  }
}

/** The hex SHA-256 of `text` through WebCrypto, or undefined where it is missing (an insecure context). */
export async function sha256Hex(text: string): Promise<string | undefined> {
  const subtle = (globalThis as { crypto?: { subtle?: SubtleCrypto } }).crypto?.subtle;
  if (!subtle) return undefined;
  try {
    const digest = await subtle.digest('SHA-256', new TextEncoder().encode(text));
    return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, '0')).join('');
  } catch {
    return undefined;
  }
}

function eventIdOf(topicOrId: string): string {
  return topicOrId.startsWith('event:') ? topicOrId.slice('event:'.length) : topicOrId;
}
