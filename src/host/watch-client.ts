/**
 * The host's side of a `files` watch (src/protocol/files.ts): the guest's events, checked and
 * bounded before anyone sees them. The guest is not trusted: a message is at most one frame
 * (1 MiB, the mux's bound); an 'events' message with more than WATCH_BATCH_EVENTS events, a
 * malformed event (a name that is absolute, has `..`, a NUL, or is too long; an unknown op; a bad
 * entry) or an unknown message ends the watch with EIO; and at most `eventsPerSecond` events
 * (with a burst of as many) are delivered, the rest dropped and reported through onOverflow with
 * their count, never buffered.
 */
import { WATCH_BATCH_EVENTS, watchEventOf, type WatchEvent } from '../protocol/files';
import type { Channel } from '../protocol/mux';
import { FilesError, FILES_REPLY_TIMEOUT_MS } from './files-client';

export interface WatchHandlers {
  onEvents(events: WatchEvent[]): void;
  /** Events were dropped (by the guest, or here over the rate): their count. */
  onOverflow(dropped: number): void;
  /** The watch ended without the host closing it: the guest's error, the VM gone, a malformed message. */
  onEnd(err: FilesError): void;
}

export interface WatchHandle {
  /** Directories the guest watches (1, or more for a recursive watch). */
  readonly dirs: number;
  /** Ends the watch (the guest removes its inotify watches); no handler is called after it. */
  close(): void;
}

export interface WatchClientLimits {
  eventsPerSecond: number;
  startTimeoutMs: number;
}

export const DEFAULT_WATCH_CLIENT_LIMITS: WatchClientLimits = { eventsPerSecond: 10_000, startTimeoutMs: FILES_REPLY_TIMEOUT_MS };

/** The largest dropped count believed from the guest (a count is reported, not trusted). */
const MAX_REPORTED_DROP = 1_000_000_000;

function errorOf(message: Record<string, unknown>): FilesError {
  const code = typeof message.code === 'string' && /^[A-Z]{2,20}$/.test(message.code) ? message.code : 'EIO';
  const text = typeof message.message === 'string' ? message.message.split('\n')[0]!.slice(0, 500) : 'the watch failed';
  return new FilesError(code, text);
}

/** Whether a watch's refusal says the agent (or its supervisor) predates watching: poll instead. */
export function isWatchUnsupported(err: unknown): boolean {
  return err instanceof FilesError && (/^unknown files operation/.test(err.message) || /^malformed files request/.test(err.message));
}

/** A token bucket: `rate` per second, holding at most `rate`. */
class Budget {
  private tokens: number;
  private last = Date.now();

  constructor(private readonly rate: number) {
    this.tokens = rate;
  }

  take(n: number): number {
    const now = Date.now();
    this.tokens = Math.min(this.rate, this.tokens + ((now - this.last) / 1000) * this.rate);
    this.last = now;
    const granted = Math.min(n, Math.floor(this.tokens));
    this.tokens -= granted;
    return granted;
  }
}

/** Starts a watch on a channel opened with a files 'watch' request; resolves once the guest watches. */
export function watchOnChannel(channel: Channel, handlers: WatchHandlers, limits: WatchClientLimits = DEFAULT_WATCH_CLIENT_LIMITS): Promise<WatchHandle> {
  return new Promise((resolve, reject) => {
    let state: 'starting' | 'watching' | 'ended' = 'starting';
    const budget = new Budget(limits.eventsPerSecond);
    const end = (err: FilesError): void => {
      const was = state;
      state = 'ended';
      clearTimeout(timer);
      channel.close();
      if (was === 'starting') reject(err);
      else if (was === 'watching') handlers.onEnd(err);
    };
    const timer = setTimeout(() => end(new FilesError('EIO', `the guest did not start the watch within ${Math.round(limits.startTimeoutMs / 1000)} s (the VM may be hung)`)), limits.startTimeoutMs);
    channel.setDataHandler(() => undefined);
    channel.on('message', (message: Record<string, unknown>) => {
      if (state === 'ended') return;
      if (message.type === 'error') {
        end(errorOf(message));
        return;
      }
      if (state === 'starting') {
        const dirs = message.dirs;
        if (message.type !== 'watching' || typeof dirs !== 'number' || !Number.isSafeInteger(dirs) || dirs < 1) {
          end(new FilesError('EIO', 'the guest sent a malformed watch reply'));
          return;
        }
        state = 'watching';
        clearTimeout(timer);
        resolve({
          dirs,
          close: () => {
            if (state === 'ended') return;
            state = 'ended';
            channel.close();
          },
        });
        return;
      }
      if (message.type === 'overflow') {
        const dropped = message.dropped;
        if (typeof dropped !== 'number' || !Number.isSafeInteger(dropped) || dropped < 1) {
          end(new FilesError('EIO', 'the guest sent a malformed overflow count'));
          return;
        }
        handlers.onOverflow(Math.min(dropped, MAX_REPORTED_DROP));
        return;
      }
      if (message.type !== 'events' || !Array.isArray(message.events) || message.events.length > WATCH_BATCH_EVENTS) {
        end(new FilesError('EIO', 'the guest sent a malformed watch message'));
        return;
      }
      const events: WatchEvent[] = [];
      for (const value of message.events as unknown[]) {
        const event = watchEventOf(value);
        if (!event) {
          end(new FilesError('EIO', 'the guest sent a malformed watch event'));
          return;
        }
        events.push(event);
      }
      const granted = budget.take(events.length);
      if (granted > 0) handlers.onEvents(granted === events.length ? events : events.slice(0, granted));
      // onEvents may have closed the watch.
      if (granted < events.length && state === 'watching') handlers.onOverflow(events.length - granted);
    });
    channel.on('close', () => {
      if (state !== 'ended') end(new FilesError('EIO', 'the connection to the VM was lost'));
    });
  });
}
