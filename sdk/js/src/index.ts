// @ringside/client: the Ringside device SDK (docs/CLIENTS.md).
//
// - RingsideClient (client.ts): the WebSocket device connection, protocol v1: subscribe with
//   `since`, idempotent states per lane, acks, heartbeats, goaway, reconnect with backoff.
// - Prefetcher (prefetch.ts): GraphQL prefetch with persisted queries, per-stage content
//   with the server's TTL, follow-up fetches spread over `fetch_within_ms`.
// - Backoff (backoff.ts): decorrelated jitter, the same as the Rust client's.

export { KEPT_TOPICS_MAX, RingsideClient } from './client.js';
export type {
  ClientEvents,
  ClientOptions,
  ConnectionEvent,
  ConnectionState,
  SubscribeOptions,
  Subscription,
  WebSocketConstructor,
  WebSocketLike,
} from './client.js';
export { Prefetcher, PREFETCH_QUERY, EVENT_QUERY, sha256Hex } from './prefetch.js';
export type { PrefetchedEvent, PrefetcherOptions, Priority, StageContent } from './prefetch.js';
export { Backoff, parseRetryAfter, RETRY_AFTER_MAX_MS } from './backoff.js';
export { RingsideError } from './errors.js';
export type { TokenSource } from './errors.js';
export type { EventState, GoawayFrame, Json } from './types.js';
