/**
 * Why something failed. `code` is one of a small closed set (plus the server's own `error`
 * codes, which may grow): see docs/CLIENTS.md, "Error handling".
 */
export class RingsideError extends Error {
  readonly code: string;
  /** For HTTP failures: the status; for socket closes: the close code. */
  readonly status?: number;
  /** How long the server asked the client to wait, when it said. */
  readonly retryAfterMs?: number;

  constructor(code: string, message: string, details: { status?: number; retryAfterMs?: number; cause?: unknown } = {}) {
    super(message);
    this.name = 'RingsideError';
    this.code = code;
    this.status = details.status;
    this.retryAfterMs = details.retryAfterMs;
    if (details.cause !== undefined) (this as { cause?: unknown }).cause = details.cause;
  }
}

/** A token, or where to get one: called again before every connection or request. */
export type TokenSource = string | (() => string | Promise<string>);

export async function resolveToken(token: TokenSource): Promise<string> {
  const value = typeof token === 'function' ? await token() : token;
  if (typeof value !== 'string' || value === '') {
    throw new RingsideError('token', 'the token source gave no token');
  }
  return value;
}
