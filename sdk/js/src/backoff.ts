// Reconnect and retry delays: decorrelated jitter, with a server's Retry-After as a floor.
// The same rules as the Rust client (client/src/backoff.rs) and docs/PROTOCOL.md,
// "Reconnecting": delay = min(cap, random_between(base, previous * 3)), starting from base.
// Every draw depends on this device's own previous one, so devices that failed together
// drift further apart with every round instead of retrying in waves.

/** The longest Retry-After honoured; a larger value is read as this (10 minutes). */
export const RETRY_AFTER_MAX_MS = 600_000;

export class Backoff {
  readonly baseMs: number;
  readonly capMs: number;
  private previousMs: number;

  /** Delays of at least `baseMs` (raised to 1 ms) and at most `capMs` (raised to `baseMs`). */
  constructor(baseMs = 100, capMs = 10_000, private readonly random: () => number = Math.random) {
    this.baseMs = Math.max(1, Math.floor(baseMs));
    this.capMs = Math.max(this.baseMs, Math.floor(capMs));
    this.previousMs = this.baseMs;
  }

  /** The next delay: uniform in [base, min(cap, previous * 3)]. */
  next(): number {
    const upper = Math.min(this.capMs, this.previousMs * 3);
    const delay = Math.min(this.capMs, this.baseMs + Math.floor(this.random() * (upper - this.baseMs + 1)));
    this.previousMs = delay;
    return delay;
  }

  /** Back to the first delay: after a connection that lasted, a failure is a new incident. */
  reset(): void {
    this.previousMs = this.baseMs;
  }
}

/**
 * The `Retry-After` of an HTTP answer in milliseconds, in its delay-seconds form (the form
 * Ringside sends); the HTTP-date form and anything unreadable count as absent.
 */
export function parseRetryAfter(value: string | null | undefined): number | undefined {
  if (value == null) return undefined;
  const text = value.trim();
  if (!/^\d+$/.test(text)) return undefined;
  return Math.min(Number(text) * 1000, RETRY_AFTER_MAX_MS);
}

/**
 * A server's retry delay in milliseconds from a response body (GraphQL OVERLOADED's
 * `retry_after_ms`), bounded like a Retry-After header: at most RETRY_AFTER_MAX_MS; anything
 * not a finite, non-negative number counts as absent.
 */
export function boundRetryAfterMs(value: unknown): number | undefined {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) return undefined;
  return Math.min(Math.floor(value), RETRY_AFTER_MAX_MS);
}

/** A promise that resolves after `ms`, or at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const timer = setTimeout(done, Math.max(0, ms));
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done);
  });
}
