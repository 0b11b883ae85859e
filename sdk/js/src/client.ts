// RingsideClient: one device connection that stays subscribed (protocol v1, docs/PROTOCOL.md).
//
// It behaves like the Rust client's Watcher (client/src/watcher.rs):
// - it keeps the newest version per topic and lane: a stage state is judged only against
//   stage states, a best-effort message only against best-effort messages, so the app never
//   sees a lane's versions go backwards or repeat;
// - it acks every stage state it applies (statistics for the operator);
// - after a goaway it reconnects once `reconnect_after_ms` has passed (not a failure: the
//   backoff does not grow), and keeps the old connection until the new one is open, since
//   the server still serves it for a grace period;
// - after any other loss it reconnects after the next decorrelated-jitter delay; a
//   connection that lasted `stableAfterMs` resets the backoff;
// - it resubscribes with the newest stage-state version held as `since`, so nothing is
//   missed and nothing is sent twice; a topic whose last listener left is remembered (its
//   versions and newest state, for the last KEPT_TOPICS_MAX topics), so that coming back to
//   it subscribes with that `since` too and the server does not send, nor the device ack,
//   a state it already had;
// - it asks the token source again before every connection.
//
// Heartbeats: the server pings every `heartbeat_ms`; every WebSocket implementation answers
// pings by itself, but none lets the page see them. So the client watches for silence: when
// nothing arrived for two heartbeat intervals it sends a probe (a subscribe to a topic it
// holds, which the server answers with `subscribed` and nothing else), and when the probe is
// not answered within one more interval the connection is dead and is replaced. Two intervals
// keep the cost to one small frame per device per ~50 s of silence at the default 25 s.

import { Backoff } from './backoff.js';
import { Emitter, reportListenerError } from './emitter.js';
import { RingsideError, resolveToken, type TokenSource } from './errors.js';
import type { EventState, GoawayFrame, ServerFrame } from './types.js';

/** The standard WebSocket constructor, or any with the same shape. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((event: unknown) => void) | null;
  onmessage: ((event: { data: unknown }) => void) | null;
  onclose: ((event: { code: number; reason: string }) => void) | null;
  onerror: ((event: unknown) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type ConnectionState = 'connecting' | 'open' | 'closed';

/** What the `connection` event carries. */
export interface ConnectionEvent {
  state: ConnectionState;
  /** `open`: the node that serves this connection. */
  node?: string;
  /** `closed`: the WebSocket close code (1006 when the connection failed or was lost). */
  code?: number;
  reason?: string;
  /** `closed`: when the client reconnects; absent when it will not (closed, or no topics). */
  retryInMs?: number;
}

export interface ClientEvents {
  [name: string]: unknown;
  connection: ConnectionEvent;
  /** Something failed; the client handles it (reconnects) and tells the app. */
  error: RingsideError;
  /** The server asked this connection to go; the client reconnects by itself. */
  goaway: GoawayFrame;
}

export interface ClientOptions {
  /** The device WebSocket endpoint, `wss://host/v1/ws`. */
  url: string;
  /** The device token, or a function returning it (or a promise of it), called before every connection. */
  token: TokenSource;
  /** A WebSocket constructor for runtimes without a global one. */
  WebSocket?: WebSocketConstructor;
  /** Ack every applied stage state (default true). */
  ack?: boolean;
  /** The shortest reconnect delay, the backoff's base (default 100 ms). */
  backoffBaseMs?: number;
  /** The longest reconnect delay the backoff draws (default 10 s). */
  backoffCapMs?: number;
  /** A connection open this long resets the backoff (default 30 s). */
  stableAfterMs?: number;
  /** From opening the socket to the server's `welcome` (default 10 s). */
  connectTimeoutMs?: number;
  /** Silence after which a probe is sent (default two of the server's heartbeat intervals); 0: never probe. */
  probeAfterMs?: number;
}

export interface SubscribeOptions {
  /** Best-effort messages of the topic (viewer counts, tickers): extra data, never a stage change. Without it they are not delivered. */
  onBestEffort?: (message: EventState) => void;
  /** The newest stage-state version the app already holds (e.g. from a prefetch); older states are not delivered. */
  since?: number;
}

export interface Subscription {
  readonly topic: string;
  /** The newest stage state held, if any. */
  readonly state: EventState | undefined;
  unsubscribe(): void;
}

interface Listener {
  onState: (state: EventState) => void;
  onBestEffort?: (message: EventState) => void;
}

/** What the client holds of one topic. */
interface Held {
  listeners: Set<Listener>;
  /** Newest stage-state version: the `since` of a resubscribe. */
  stageVersion: number;
  bestEffortVersion: number;
  state?: EventState;
  message?: EventState;
}

/** What the client remembers of a topic after its last listener left. */
interface Kept {
  stageVersion: number;
  bestEffortVersion: number;
  state?: EventState;
  message?: EventState;
}

/** Topics remembered after their last listener left; the one left longest ago goes first. */
export const KEPT_TOPICS_MAX = 256;

const OPEN = 1;
const TOPIC = /^event:[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** Used until the server's welcome says otherwise. */
const DEFAULT_HEARTBEAT_MS = 25_000;

/** One socket and what the client knows of it. */
interface Link {
  socket: WebSocketLike;
  welcomed: boolean;
  openedAt: number;
  heartbeatMs: number;
  lastFrameAt: number;
  probeSentAt?: number;
  goaway: boolean;
  timer?: ReturnType<typeof setTimeout>;
}

export class RingsideClient extends Emitter<ClientEvents> {
  private readonly options: Required<Omit<ClientOptions, 'WebSocket' | 'token' | 'url' | 'probeAfterMs'>> & { probeAfterMs?: number };
  private readonly url: string;
  private readonly token: TokenSource;
  private readonly WebSocketImpl: WebSocketConstructor;
  private readonly topics = new Map<string, Held>();
  /** Topics without listeners, in the order they were left (oldest first), at most KEPT_TOPICS_MAX. */
  private readonly kept = new Map<string, Kept>();
  private readonly backoff: Backoff;
  /** The connection in use (connecting or open). */
  private link?: Link;
  /** Connections that got a goaway: still served until the next one is open. */
  private readonly retiring = new Set<Link>();
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private reconnectAt = 0;
  /** A token request in flight; bumped to drop an attempt overtaken by a close. */
  private attempt = 0;
  private connecting = false;
  private closedByApp = false;
  private current: ConnectionState = 'closed';

  constructor(options: ClientOptions) {
    super();
    if (!options || typeof options.url !== 'string') throw new TypeError('RingsideClient: `url` is required');
    if (options.token === undefined) throw new TypeError('RingsideClient: `token` is required');
    const impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
    if (!impl) {
      throw new TypeError(
        'RingsideClient: this runtime has no global WebSocket; pass the `WebSocket` option (Node 20: run with --experimental-websocket)',
      );
    }
    this.url = options.url;
    this.token = options.token;
    this.WebSocketImpl = impl;
    this.options = {
      ack: options.ack ?? true,
      backoffBaseMs: options.backoffBaseMs ?? 100,
      backoffCapMs: options.backoffCapMs ?? 10_000,
      stableAfterMs: options.stableAfterMs ?? 30_000,
      connectTimeoutMs: options.connectTimeoutMs ?? 10_000,
      probeAfterMs: options.probeAfterMs,
    };
    this.backoff = new Backoff(this.options.backoffBaseMs, this.options.backoffCapMs);
  }

  /** `connecting`, `open` or `closed`. */
  get connectionState(): ConnectionState {
    return this.current;
  }

  /** The newest stage-state version held of `topic` (0: none), also after its last listener left. */
  version(topic: string): number {
    const name = normalizeTopic(topic);
    return this.topics.get(name)?.stageVersion ?? this.kept.get(name)?.stageVersion ?? 0;
  }

  /**
   * Calls `onState` with every new stage state of `topic` (`event:<id>`, or just the id),
   * in increasing version order, each once; a new listener of a topic already held gets its
   * current state at once (also when the topic's last listener had left: the client keeps
   * what it held and subscribes with its version as `since`, so the server sends only what is
   * newer and the state is not acked twice). With `since`, a held state not newer than it is
   * not delivered.
   */
  subscribe(topic: string, onState: (state: EventState) => void, options: SubscribeOptions = {}): Subscription {
    if (this.closedByApp) throw new RingsideError('closed', 'the client is closed');
    if (typeof onState !== 'function') throw new TypeError('subscribe: a state listener is required');
    const name = normalizeTopic(topic);
    if (!TOPIC.test(name)) throw new TypeError(`subscribe: invalid topic ${JSON.stringify(topic)}: expected "event:<id>"`);
    const listener: Listener = { onState, onBestEffort: options.onBestEffort };
    const since = Math.max(0, options.since ?? 0);
    let held = this.topics.get(name);
    const isNew = held === undefined;
    if (!held) {
      const kept = this.kept.get(name);
      this.kept.delete(name);
      held = kept
        ? { listeners: new Set(), ...kept, stageVersion: Math.max(kept.stageVersion, since) }
        : { listeners: new Set(), stageVersion: since, bestEffortVersion: 0 };
      this.topics.set(name, held);
    }
    held.listeners.add(listener);
    // What is held already goes to the new listener from here, not from the server.
    const state = held.state && held.state.version > since ? held.state : undefined;
    const message = held.message;
    if (state || (message && listener.onBestEffort)) {
      const topicHeld = held;
      queueMicrotask(() => {
        if (!topicHeld.listeners.has(listener)) return;
        if (state) call(listener.onState, state);
        if (message && listener.onBestEffort) call(listener.onBestEffort, message);
      });
    }
    if (isNew) {
      // A topic the server is not asked for yet (a kept one included: with its version as `since`).
      if (this.link?.welcomed) this.send(this.link, { type: 'subscribe', topics: [{ topic: name, since: held.stageVersion }] });
      else this.ensureConnected();
    }
    const client = this;
    return {
      topic: name,
      get state() {
        return client.topics.get(name)?.state;
      },
      unsubscribe: () => this.removeListener(name, listener),
    };
  }

  /** Closes the connection for good; no event is delivered after it. */
  close(): void {
    if (this.closedByApp) return;
    this.closedByApp = true;
    this.attempt++;
    this.clearReconnect();
    for (const link of [this.link, ...this.retiring]) if (link) this.drop(link, 1000, 'client closed');
    this.link = undefined;
    this.retiring.clear();
    this.topics.clear();
    this.kept.clear();
    this.setState({ state: 'closed', code: 1000, reason: 'client closed' });
  }

  private removeListener(topic: string, listener: Listener): void {
    const held = this.topics.get(topic);
    if (!held || !held.listeners.delete(listener) || held.listeners.size > 0) return;
    this.topics.delete(topic);
    this.keep(topic, held);
    if (this.link?.welcomed) this.send(this.link, { type: 'unsubscribe', topics: [topic] });
    if (this.topics.size === 0) this.goIdle();
  }

  /** Remembers a topic's versions and newest state after its last listener left (bounded). */
  private keep(topic: string, held: Held): void {
    if (held.stageVersion === 0 && held.bestEffortVersion === 0 && !held.state && !held.message) return;
    const { stageVersion, bestEffortVersion, state, message } = held;
    this.kept.set(topic, { stageVersion, bestEffortVersion, state, message });
    while (this.kept.size > KEPT_TOPICS_MAX) {
      const oldest = this.kept.keys().next();
      if (oldest.done) break;
      this.kept.delete(oldest.value);
    }
  }

  /** No topic left: a connection would only be closed by the server as idle. */
  private goIdle(): void {
    this.attempt++;
    this.connecting = false;
    this.clearReconnect();
    for (const link of [this.link, ...this.retiring]) if (link) this.drop(link, 1000, 'no topics');
    this.link = undefined;
    this.retiring.clear();
    this.setState({ state: 'closed', code: 1000, reason: 'no topics' });
  }

  private ensureConnected(): void {
    if (this.closedByApp || this.topics.size === 0 || this.link || this.connecting || this.reconnectTimer) return;
    void this.connect();
  }

  private async connect(): Promise<void> {
    const attempt = ++this.attempt;
    this.connecting = true;
    this.setState({ state: 'connecting' });
    let token: string;
    try {
      token = await resolveToken(this.token);
    } catch (cause) {
      if (attempt !== this.attempt) return;
      this.connecting = false;
      const error = cause instanceof RingsideError ? cause : new RingsideError('token', 'the token source failed', { cause });
      this.emit('error', error);
      this.lost(1006, error.message, this.backoff.next());
      return;
    }
    if (attempt !== this.attempt) return;
    this.connecting = false;
    if (this.closedByApp || this.topics.size === 0) return;
    const separator = this.url.includes('?') ? '&' : '?';
    let socket: WebSocketLike;
    try {
      socket = new this.WebSocketImpl(`${this.url}${separator}token=${encodeURIComponent(token)}`);
    } catch (cause) {
      this.emit('error', new RingsideError('connect_failed', `cannot open ${this.url}`, { cause }));
      this.lost(1006, 'invalid address', this.backoff.next());
      return;
    }
    const now = Date.now();
    const link: Link = { socket, welcomed: false, openedAt: now, heartbeatMs: DEFAULT_HEARTBEAT_MS, lastFrameAt: now, goaway: false };
    this.link = link;
    link.timer = setTimeout(() => {
      if (link.welcomed) return;
      this.emit('error', new RingsideError('connect_failed', `no welcome from ${this.url} within ${this.options.connectTimeoutMs} ms`));
      this.onClose(link, 1006, 'connect timeout');
    }, this.options.connectTimeoutMs);
    socket.onmessage = (event) => this.onMessage(link, event.data);
    socket.onclose = (event) => this.onClose(link, event.code, event.reason);
    // Browsers follow an error with a close event, but some runtimes do not (Node 20's
    // WebSocket leaves a refused upgrade in CONNECTING with only an error): an error ends
    // the connection either way.
    socket.onerror = () => this.onClose(link, 1006, 'connection failed');
  }

  private onMessage(link: Link, data: unknown): void {
    if (link !== this.link && !this.retiring.has(link)) return;
    link.lastFrameAt = Date.now();
    link.probeSentAt = undefined;
    if (typeof data !== 'string') return;
    let frame: ServerFrame;
    try {
      frame = JSON.parse(data) as ServerFrame;
    } catch {
      return;
    }
    switch (frame.type) {
      case 'welcome':
        if (link === this.link && !link.welcomed) this.welcomed(link, frame.node, frame.heartbeat_ms);
        return;
      case 'state':
        this.apply(link, frame);
        return;
      case 'goaway':
        this.onGoaway(link, frame);
        return;
      case 'error':
        this.emit('error', new RingsideError(frame.code, frame.message));
        return;
      default:
        // subscribed, unsubscribed, and frame types added later: life, nothing else.
        return;
    }
  }

  private welcomed(link: Link, node: string, heartbeatMs: number): void {
    link.welcomed = true;
    link.openedAt = Date.now();
    if (Number.isFinite(heartbeatMs) && heartbeatMs > 0) link.heartbeatMs = heartbeatMs;
    clearTimeout(link.timer);
    const topics = [...this.topics].map(([topic, held]) => ({ topic, since: held.stageVersion }));
    this.send(link, { type: 'subscribe', topics });
    // The new connection holds every topic: the ones that got a goaway may go now.
    for (const old of this.retiring) this.drop(old, 1000, 'replaced');
    this.retiring.clear();
    this.watchLiveness(link);
    this.setState({ state: 'open', node });
  }

  /** Probes a connection silent for `probeAfterMs`; drops one whose probe went unanswered. */
  private watchLiveness(link: Link): void {
    const probeAfterMs = this.options.probeAfterMs ?? 2 * link.heartbeatMs;
    if (probeAfterMs <= 0) return;
    const answerWithinMs = link.heartbeatMs;
    const check = () => {
      if (link !== this.link) return;
      const now = Date.now();
      if (link.probeSentAt !== undefined) {
        if (now - link.probeSentAt >= answerWithinMs) {
          this.emit('error', new RingsideError('heartbeat_timeout', `nothing from the server for ${now - link.lastFrameAt} ms`));
          this.onClose(link, 1006, 'heartbeat timeout');
          return;
        }
        link.timer = setTimeout(check, answerWithinMs - (now - link.probeSentAt));
        return;
      }
      const silentMs = now - link.lastFrameAt;
      if (silentMs >= probeAfterMs) {
        const first = this.topics.entries().next();
        if (!first.done) {
          const [topic, held] = first.value;
          link.probeSentAt = now;
          this.send(link, { type: 'subscribe', topics: [{ topic, since: held.stageVersion }] });
          link.timer = setTimeout(check, answerWithinMs);
          return;
        }
      }
      link.timer = setTimeout(check, Math.max(50, probeAfterMs - silentMs));
    };
    link.timer = setTimeout(check, probeAfterMs);
  }

  private apply(link: Link, state: EventState): void {
    const held = this.topics.get(state.topic);
    if (!held || typeof state.version !== 'number') return;
    const bestEffort = state.priority === 'best_effort';
    const { type: _type, ...clean } = state as EventState & { type?: string };
    if (bestEffort) {
      if (state.version <= held.bestEffortVersion) return;
      held.bestEffortVersion = state.version;
      held.message = clean;
      for (const listener of [...held.listeners]) if (listener.onBestEffort) call(listener.onBestEffort, clean);
      return;
    }
    if (state.version <= held.stageVersion) return;
    held.stageVersion = state.version;
    held.state = clean;
    if (this.options.ack) this.send(link, { type: 'ack', topic: state.topic, version: state.version });
    for (const listener of [...held.listeners]) call(listener.onState, clean);
  }

  private onGoaway(link: Link, frame: GoawayFrame): void {
    this.emit('goaway', frame);
    if (link !== this.link || link.goaway) return;
    link.goaway = true;
    clearTimeout(link.timer);
    // Still served for a grace period: it keeps delivering until the next connection is open.
    this.link = undefined;
    this.retiring.add(link);
    const delay = Math.max(0, Number(frame.reconnect_after_ms) || 0);
    this.scheduleReconnect(delay);
  }

  private onClose(link: Link, code: number, reason: string): void {
    if (this.retiring.delete(link)) {
      clearTimeout(link.timer);
      this.detach(link);
      if (!this.link && this.retiring.size === 0 && !this.closedByApp) {
        this.setState({ state: 'closed', code, reason, retryInMs: Math.max(0, this.reconnectAt - Date.now()) });
      }
      return;
    }
    if (link !== this.link) return;
    this.link = undefined;
    clearTimeout(link.timer);
    this.drop(link, 1000, reason);
    if (this.closedByApp || this.topics.size === 0) return;
    if (link.welcomed && Date.now() - link.openedAt >= this.options.stableAfterMs) this.backoff.reset();
    if (!link.welcomed && code !== 1000) {
      // A refused upgrade (401, 429, 503) looks like this in every standard WebSocket: the
      // status and its Retry-After are hidden from the page. The backoff spaces the retries,
      // and a fresh token is asked for on the next attempt.
      this.emit('error', new RingsideError('connect_failed', `the connection to ${this.url} failed before the server's welcome`, { status: code }));
    }
    this.lost(code, reason, this.backoff.next());
  }

  /** The connection is gone; the next one starts after `retryInMs`. */
  private lost(code: number, reason: string, retryInMs: number): void {
    this.scheduleReconnect(retryInMs);
    this.setState({ state: 'closed', code, reason, retryInMs });
  }

  private scheduleReconnect(delayMs: number): void {
    this.clearReconnect();
    this.reconnectAt = Date.now() + delayMs;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      this.ensureConnected();
    }, delayMs);
  }

  private clearReconnect(): void {
    if (this.reconnectTimer !== undefined) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = undefined;
  }

  private send(link: Link, frame: unknown): void {
    if (link.socket.readyState !== OPEN) return;
    try {
      link.socket.send(JSON.stringify(frame));
    } catch {
      // A socket that cannot send is closing: its close event follows.
    }
  }

  /** Stops listening to a socket and closes it. */
  private drop(link: Link, code: number, reason: string): void {
    clearTimeout(link.timer);
    this.detach(link);
    try {
      link.socket.close(code, reason.slice(0, 120));
    } catch {
      // Already closed.
    }
  }

  private detach(link: Link): void {
    link.socket.onmessage = null;
    link.socket.onclose = null;
    link.socket.onerror = null;
  }

  private setState(event: ConnectionEvent): void {
    if (event.state === this.current && event.state !== 'closed') return;
    this.current = event.state;
    this.emit('connection', event);
  }
}

function normalizeTopic(topic: string): string {
  return typeof topic === 'string' && !topic.startsWith('event:') ? `event:${topic}` : topic;
}

function call(listener: (state: EventState) => void, state: EventState): void {
  try {
    listener(state);
  } catch (error) {
    reportListenerError(error);
  }
}
