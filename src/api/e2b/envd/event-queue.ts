/**
 * One reader's queue of stream events (a Start or Connect stream, a WatchDir stream): bounded in
 * bytes, with back-pressure (push returns a promise while the queue is over its high mark, so a
 * process's output waits for its slowest reader instead of piling up here), keepalives while
 * idle, and an end (a last event, or an error) after which nothing more is queued.
 */
export interface QueueLimits {
  /** push() holds its caller while more than this many bytes wait. */
  highBytes: number;
  /** Most events waiting (small events would otherwise grow the array unbounded). */
  maxEvents: number;
}

export const DEFAULT_QUEUE_LIMITS: QueueLimits = { highBytes: 1024 * 1024, maxEvents: 10_000 };

export class EventQueue<T> {
  private items: Array<{ value: T; bytes: number }> = [];
  private bytes = 0;
  private wake: (() => void) | undefined;
  private drained: Array<() => void> = [];
  private ended = false;
  private failure: Error | undefined;

  constructor(private readonly limits: QueueLimits = DEFAULT_QUEUE_LIMITS) {}

  get closed(): boolean {
    return this.ended;
  }

  /** Queues an event; the promise (if any) settles once the reader caught up or left. */
  push(value: T, bytes = 0): Promise<void> | undefined {
    if (this.ended) return undefined;
    this.items.push({ value, bytes });
    this.bytes += bytes;
    this.notify();
    if (this.bytes > this.limits.highBytes || this.items.length > this.limits.maxEvents) {
      return new Promise<void>((resolve) => this.drained.push(resolve));
    }
    return undefined;
  }

  /**
   * Queues an event unless the queue is over its limits (then false, and nothing is queued):
   * for producers that cannot wait (a watch's events), which drop and report instead.
   */
  offer(value: T, bytes = 0): boolean {
    if (this.ended) return true;
    if (this.bytes + bytes > this.limits.highBytes || this.items.length >= this.limits.maxEvents) return false;
    this.items.push({ value, bytes });
    this.bytes += bytes;
    this.notify();
    return true;
  }

  /** No more events: the reader gets what is queued (then `last`, if given), then the end. */
  end(last?: T): void {
    if (this.ended) return;
    if (last !== undefined) this.items.push({ value: last, bytes: 0 });
    this.ended = true;
    this.notify();
  }

  /** Ends the stream with an error after what is queued. */
  fail(error: Error): void {
    if (this.ended) return;
    this.failure = error;
    this.end();
  }

  /** The reader left: drop everything and free whoever waits on it. */
  close(): void {
    this.ended = true;
    this.items = [];
    this.bytes = 0;
    this.release();
    this.notify();
  }

  /**
   * The events, with `keepalive()` yielded after every `keepaliveMs` without one (0: never),
   * until the end or until `signal` aborts.
   */
  async *events(signal: AbortSignal, keepaliveMs: number, keepalive: () => T): AsyncGenerator<T> {
    const onAbort = (): void => this.close();
    signal.addEventListener('abort', onAbort, { once: true });
    try {
      for (;;) {
        const item = this.items.shift();
        if (item !== undefined) {
          this.bytes -= item.bytes;
          if (this.bytes <= this.limits.highBytes / 2 && this.items.length <= this.limits.maxEvents / 2) this.release();
          yield item.value;
          continue;
        }
        if (this.ended) {
          if (this.failure && !signal.aborted) throw this.failure;
          return;
        }
        let timer: NodeJS.Timeout | undefined;
        const woke = await new Promise<boolean>((resolve) => {
          this.wake = () => resolve(true);
          if (keepaliveMs > 0) timer = setTimeout(() => resolve(false), keepaliveMs);
        });
        clearTimeout(timer);
        this.wake = undefined;
        if (!woke && !this.ended && this.items.length === 0) yield keepalive();
      }
    } finally {
      signal.removeEventListener('abort', onAbort);
      this.close();
    }
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  private release(): void {
    const waiting = this.drained;
    this.drained = [];
    for (const resolve of waiting) resolve();
  }
}

/** Keepalive-Ping-Interval (seconds, as the SDK sends it: 50) as milliseconds, clamped to 1 s .. 5 min. */
export function keepaliveMsOf(header: string | null | undefined): number {
  if (header === null || header === undefined || !/^[0-9]{1,6}$/.test(header)) return 0;
  const seconds = Math.min(Math.max(Number(header), 1), 300);
  return seconds * 1000;
}
