/**
 * Directory watching for envd's WatchDir and CreateWatcher. The guest agent watches with inotify
 * (core.files.watch: src/agent/watch.ts in the guest, src/host/watch-client.ts checking what it
 * sends), so every create, write, remove, rename and chmod is seen, however short-lived.
 *
 * Fallback, only for a VM whose agent refuses the watch as an unknown operation (one restored
 * from a snapshot an older agent made): polling. Every `intervalMs` the directory is listed
 * (recursively if asked, bounded by entries.ts' walk) and compared with the last listing: new
 * paths are CREATE, gone ones REMOVE, a changed size or mtime WRITE. A rename shows as REMOVE +
 * CREATE; changes that come and go between two polls are not seen.
 *
 * Event names are relative to the watched directory, as envd's are.
 */
import path from 'node:path';
import { Code, ConnectError } from '@connectrpc/connect';
import type { Core } from '../../core';
import type { FileEntry, WatchOp } from '../../../protocol/files';
import { isWatchUnsupported } from '../../../host/watch-client';
import { walk } from './entries';
import { EnvdAuthError } from './sandbox-auth';
import { EventType } from './gen/filesystem/filesystem_pb';

export interface WatchEvent {
  name: string;
  type: EventType;
  entry: FileEntry | undefined;
}

export const WATCH_POLL_MS = 400;
const RECURSIVE_DEPTH = 16;

type Listing = Map<string, FileEntry>;

const TYPES: Record<WatchOp, EventType> = {
  create: EventType.CREATE,
  write: EventType.WRITE,
  remove: EventType.REMOVE,
  rename: EventType.RENAME,
  chmod: EventType.CHMOD,
};

export interface DirectoryWatch {
  /** 'inotify': the guest's watch; 'poll': the fallback for an agent without one. */
  readonly mode: 'inotify' | 'poll';
  stop(): void;
}

/**
 * Watches dir until stop(); onEvents hears the events, onError the end (the guest's error, the VM
 * gone, or dropped events: the watch then stops, as envd's does on an fsnotify error, so a client
 * never misses events without being told).
 */
export async function watchDirectory(
  core: Core,
  vmId: string,
  dir: string,
  recursive: boolean,
  onEvents: (events: WatchEvent[]) => void,
  onError: (err: unknown) => void,
): Promise<DirectoryWatch> {
  let stopped = false;
  // Set once the guest watches; an overflow may come before (with the first batch).
  let handle: { close(): void } | undefined;
  const end = (err: unknown): void => {
    if (stopped) return;
    stopped = true;
    handle?.close();
    onError(err);
  };
  try {
    handle = await core.files.watch(vmId, dir, recursive, {
      onEvents: (events) => {
        if (!stopped) onEvents(events.map((e) => ({ name: e.name, type: TYPES[e.op], entry: e.entry })));
      },
      onOverflow: (dropped) => end(new ConnectError(`${dropped} watch events were dropped (the directory changed faster than they could be delivered)`, Code.ResourceExhausted)),
      onEnd: (err) => end(err),
    });
    if (stopped) handle.close();
    const h = handle;
    return { mode: 'inotify', stop: () => { stopped = true; h.close(); } };
  } catch (err) {
    if (!isWatchUnsupported(err)) throw err;
  }
  const poller = new DirectoryPoller(core, vmId, dir, recursive, onEvents, onError);
  await poller.start();
  return { mode: 'poll', stop: () => poller.stop() };
}

export class DirectoryPoller {
  private last: Listing | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;

  constructor(
    private readonly core: Core,
    private readonly vmId: string,
    readonly dir: string,
    private readonly recursive: boolean,
    private readonly onEvents: (events: WatchEvent[]) => void,
    private readonly onError: (err: unknown) => void,
    private readonly intervalMs = WATCH_POLL_MS,
  ) {}

  /** Takes the first listing (so a missing directory fails here), then polls. */
  async start(): Promise<void> {
    const first = await this.core.files.stat(this.vmId, this.dir);
    if (first.type !== 'dir') throw new EnvdAuthError('bad_request', `${this.dir} is not a directory`);
    this.last = await this.list();
    this.schedule();
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.poll(), this.intervalMs);
  }

  private async list(): Promise<Listing> {
    const { entries } = await walk(this.core, this.vmId, this.dir, this.recursive ? RECURSIVE_DEPTH : 1);
    return new Map(entries.map((e) => [e.path, e]));
  }

  private async poll(): Promise<void> {
    if (this.stopped) return;
    let now: Listing;
    try {
      now = await this.list();
    } catch (err) {
      if (!this.stopped) this.onError(err);
      return;
    }
    if (this.stopped) return;
    const events = diff(this.dir, this.last ?? new Map(), now);
    this.last = now;
    if (events.length > 0) this.onEvents(events);
    this.schedule();
  }
}

export function diff(dir: string, before: Listing, after: Listing): WatchEvent[] {
  const events: WatchEvent[] = [];
  const name = (p: string): string => path.posix.relative(dir, p);
  for (const [p, e] of after) {
    const old = before.get(p);
    if (!old) events.push({ name: name(p), type: EventType.CREATE, entry: e });
    else if (old.size !== e.size || old.mtime !== e.mtime || old.type !== e.type) events.push({ name: name(p), type: EventType.WRITE, entry: e });
    else if (old.mode !== e.mode) events.push({ name: name(p), type: EventType.CHMOD, entry: e });
  }
  for (const [p, e] of before) if (!after.has(p)) events.push({ name: name(p), type: EventType.REMOVE, entry: e });
  return events;
}
