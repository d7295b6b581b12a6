/**
 * A bounded ring of a process's events, so a client that dropped its stream can resume from
 * the last event id it saw (SSE's Last-Event-ID). Bounded in events and in bytes: the oldest
 * events fall out first, and a reader whose position fell out learns how much it missed.
 */

export type ProcessEvent =
  | { type: 'start'; pid: number }
  /** Output as text (decoded per stream, so a character split across chunks stays whole). */
  | { type: 'stdout'; data: string }
  | { type: 'stderr'; data: string }
  | { type: 'exit'; exitCode: number | null; signal: string | null }
  | { type: 'error'; message: string };

export interface StoredEvent {
  /** 1, 2, 3, ... in the order the events happened. */
  id: number;
  event: ProcessEvent;
}

export interface RingLimits {
  maxEvents: number;
  maxBytes: number;
}

export const DEFAULT_RING_LIMITS: RingLimits = { maxEvents: 4096, maxBytes: 1024 * 1024 };

function sizeOf(event: ProcessEvent): number {
  return event.type === 'stdout' || event.type === 'stderr' ? Buffer.byteLength(event.data) + 64 : 64;
}

export class EventRing {
  private readonly events: StoredEvent[] = [];
  private bytes = 0;
  private nextId = 1;
  private waiters: Array<() => void> = [];
  private closedFlag = false;

  constructor(private readonly limits: RingLimits = DEFAULT_RING_LIMITS) {}

  get lastId(): number {
    return this.nextId - 1;
  }

  /** The id of the oldest event still held (lastId + 1 when empty). */
  get firstId(): number {
    return this.events[0]?.id ?? this.nextId;
  }

  /** No more events will come (the process ended and its exit is in the ring). */
  get closed(): boolean {
    return this.closedFlag;
  }

  push(event: ProcessEvent): number {
    if (this.closedFlag) return this.lastId;
    const id = this.nextId++;
    this.events.push({ id, event });
    this.bytes += sizeOf(event);
    while (this.events.length > 1 && (this.events.length > this.limits.maxEvents || this.bytes > this.limits.maxBytes)) {
      this.bytes -= sizeOf(this.events.shift()!.event);
    }
    if (event.type === 'exit' || event.type === 'error') this.closedFlag = true;
    const waiters = this.waiters;
    this.waiters = [];
    for (const wake of waiters) wake();
    return id;
  }

  /** Events after the given id; `missed` counts those that already fell out of the ring. */
  after(id: number): { events: StoredEvent[]; missed: number } {
    const first = this.firstId;
    const missed = Math.max(0, first - (id + 1));
    return { events: this.events.filter((e) => e.id > id), missed };
  }

  /**
   * Resolves when an event after `id` exists or the ring is closed. `cancel` removes the waiter
   * (a client that went away while its process idles must not leave one behind).
   */
  waitAfter(id: number): { ready: Promise<void>; cancel: () => void } {
    if (this.lastId > id || this.closedFlag) return { ready: Promise.resolve(), cancel: () => undefined };
    let wake: () => void = () => undefined;
    const ready = new Promise<void>((resolve) => { wake = resolve; });
    this.waiters.push(wake);
    return { ready, cancel: () => { this.waiters = this.waiters.filter((w) => w !== wake); } };
  }

  /** Waiters not yet woken (for tests: each gone reader must have removed its own). */
  get waiting(): number {
    return this.waiters.length;
  }
}
