/**
 * Directory watching for envd's WatchDir and CreateWatcher by polling: the guest agent has no
 * inotify path to the host, so every `intervalMs` the directory is listed (recursively if asked,
 * bounded by entries.ts' walk) and compared with the last listing: new paths are CREATE, gone
 * ones REMOVE, a changed size or mtime WRITE. A rename shows as REMOVE + CREATE; changes that
 * come and go between two polls are not seen. Event names are relative to the watched directory,
 * as envd's are.
 */
import path from 'node:path';
import type { Core } from '../../core';
import type { FileEntry } from '../../../protocol/files';
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
