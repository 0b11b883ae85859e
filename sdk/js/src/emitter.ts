// A minimal typed event emitter: the SDK must run where neither Node's EventEmitter nor a
// usable EventTarget subclassing is available (older TV runtimes).

export class Emitter<Events extends { [name: string]: unknown }> {
  private readonly listeners: { [K in keyof Events]?: Set<(value: Events[K]) => void> } = {};

  /** Adds a listener; the returned function removes it. */
  on<K extends keyof Events>(name: K, listener: (value: Events[K]) => void): () => void {
    const set = (this.listeners[name] ??= new Set());
    set.add(listener);
    return () => {
      set.delete(listener);
    };
  }

  off<K extends keyof Events>(name: K, listener: (value: Events[K]) => void): void {
    this.listeners[name]?.delete(listener);
  }

  /** Calls every listener; one that throws does not keep the others from running. */
  protected emit<K extends keyof Events>(name: K, value: Events[K]): void {
    for (const listener of [...(this.listeners[name] ?? [])]) {
      try {
        listener(value);
      } catch (error) {
        reportListenerError(error);
      }
    }
  }
}

/** An app listener threw: rethrow it outside the SDK's own call stack, where the app sees it. */
export function reportListenerError(error: unknown): void {
  setTimeout(() => {
    throw error;
  }, 0);
}
