// Wire types of protocol v1 (docs/PROTOCOL.md), as the server sends them: field names are the
// protocol's own (snake_case), so a state logged by the app reads like the protocol doc.

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/**
 * A `state` frame. Without `priority` it is a **stage state**, the event's current state; with
 * `priority: "best_effort"` it is a **best-effort message** (a viewer count, a ticker): extra
 * data to show next to the stage state, never a stage change.
 */
export interface EventState {
  topic: string;
  /** Strictly increasing per topic (across both lanes); opaque, may skip values. */
  version: number;
  stage: string;
  /** When the control plane accepted the publish, ms since the Unix epoch. */
  published_at_ms: number;
  /** The operator's JSON object, unchanged. */
  payload: { [key: string]: Json };
  /** Follow-up fetch window in ms from `published_at_ms` (stage states only). */
  fetch_within_ms?: number;
  priority?: 'best_effort';
}

export interface WelcomeFrame {
  type: 'welcome';
  connection_id: string;
  node: string;
  heartbeat_ms: number;
  protocol: number;
}

export interface GoawayFrame {
  type: 'goaway';
  reconnect_after_ms: number;
  /** shutdown, max_lifetime, idle, heartbeat_timeout, token_expired, slow_consumer, or a new one. */
  reason: string;
}

export interface ErrorFrame {
  type: 'error';
  code: string;
  message: string;
}

export type ServerFrame =
  | WelcomeFrame
  | { type: 'subscribed'; topics: string[] }
  | { type: 'unsubscribed'; topics: string[] }
  | ({ type: 'state' } & EventState)
  | GoawayFrame
  | ErrorFrame;
