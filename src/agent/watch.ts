/**
 * Watching a directory with inotify, for the `files` channel's watch (src/protocol/files.ts):
 * what envd does with fsnotify, done with Node 18's built-ins. fs.watch is one inotify watch on
 * one directory (Node 18 has no recursive fs.watch on Linux), so a recursive watch is one
 * fs.watch per directory, added for directories made later too, at most `maxDirs` of them.
 *
 * fs.watch names only 'rename' (IN_CREATE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO) and 'change'
 * (IN_MODIFY, IN_ATTRIB); an lstat after the event, and the names known to be in the watched
 * directories (read when each is watched, kept up to date by the events), tell the ops apart:
 *   'rename', the name is there          -> create  (fsnotify: Create, for IN_CREATE, IN_MOVED_TO)
 *   'rename', gone, and it was known     -> remove  (fsnotify says Rename for IN_MOVED_FROM; the
 *                                                    two cannot be told apart here, so a rename
 *                                                    away is a remove, and a rename inside the
 *                                                    watched tree a remove and a create)
 *   'rename', gone, and it was not known -> create  (it came and went before the lstat: its
 *                                                    removal's own event follows, as remove)
 *   'change', ctime == mtime             -> write   (a write sets both to the same instant)
 *   'change', ctime != mtime             -> chmod   (chmod/chown/xattr move only ctime)
 *   'change', the name is gone           -> nothing (its remove follows)
 * The lstat sees the name as it is when the event is handled, not when it happened: a name
 * removed and made again at once shows as create twice, a write followed at once by a chmod as
 * chmod twice. At most `maxKnown` names are remembered per watch; past that a name that is gone
 * is a remove. A directory made under a recursive watch is watched, then
 * read: what was made in it before its watch began is reported as create (perhaps twice).
 * The temp files of the agent's own writes (`.NAME.shoal-HEX`, src/agent/files.ts) are left out,
 * as envd, which writes in place, has none.
 *
 * Bounded (the host is told, never flooded): at most `maxQueued` raw events wait for their lstat
 * and as many classified events wait to be sent; beyond that events are dropped and counted,
 * and the count goes to the host as an overflow. Batches go out at most every `flushMs`, each at
 * most WATCH_BATCH_EVENTS events and about WATCH_BATCH_BYTES of JSON.
 *
 * Paths: the watched directory is resolved in the container's root by the caller
 * (resolveInRoot); below it, directories are found with readdir's types and lstat, neither of
 * which follows a symlink, so a recursive watch never leaves the tree through one. A container
 * process that swaps a checked directory for a symlink before its fs.watch could have one watch
 * placed in the guest OS, which is the VM's own and holds nothing of the host.
 */
import fs from 'node:fs';
import path from 'node:path';
import { WATCH_BATCH_BYTES, WATCH_BATCH_EVENTS, WATCH_MAX_DIRS, WATCH_MAX_PER_VM, type FileEntry, type WatchEvent, type WatchOp } from '../protocol/files';
import type { Channel } from '../protocol/mux';

export interface WatchSink {
  events(events: WatchEvent[]): void;
  overflow(dropped: number): void;
  /** The watch ended on its own (after this nothing more is sent). */
  fail(code: string, message: string): void;
}

export interface WatchLimits {
  maxDirs: number;
  maxQueued: number;
  flushMs: number;
  /** Most names remembered (as being in the watched directories) per watch. */
  maxKnown: number;
}

export const DEFAULT_WATCH_LIMITS: WatchLimits = { maxDirs: WATCH_MAX_DIRS, maxQueued: 4096, flushMs: 20, maxKnown: 50_000 };

const AGENT_TEMP = /^\..+\.shoal-[0-9a-f]{12}$/;

interface Watched {
  watcher: fs.FSWatcher;
  ino: number;
}

export class DirectoryWatch {
  /** rel dir ('' for the watched one) -> its fs.watch. */
  private readonly dirs = new Map<string, Watched>();
  /** Names (relative) known to be in the watched directories: what a 'rename' of a gone name was. */
  private readonly known = new Set<string>();
  private raw: Array<{ dir: string; kind: string; name: string }> = [];
  private out: WatchEvent[] = [];
  private dropped = 0;
  private pumping = false;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  /**
   * hostDir: the directory as the agent reaches it (under /proc/<pid>/root); containerDir: its
   * path in the container (the entries' paths).
   */
  constructor(
    private readonly hostDir: string,
    private readonly containerDir: string,
    private readonly recursive: boolean,
    private readonly sink: WatchSink,
    private readonly limits: WatchLimits = DEFAULT_WATCH_LIMITS,
  ) {}

  /** Watches the directory (and, recursive, every directory under it); throws if it cannot. */
  async start(): Promise<number> {
    const st = await fs.promises.lstat(this.hostDir);
    if (!st.isDirectory()) throw Object.assign(new Error(`${this.containerDir} is not a directory`), { code: 'ENOTDIR' });
    this.starting = true;
    try {
      await this.addTree('', false);
    } catch (err) {
      this.close();
      throw err;
    } finally {
      this.starting = false;
    }
    if (this.closed) throw Object.assign(new Error(this.failure ?? 'the watch ended'), { code: this.failureCode ?? 'EIO' });
    return this.dirs.size;
  }

  get watchedDirs(): number {
    return this.dirs.size;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.timer);
    for (const d of this.dirs.values()) d.watcher.close();
    this.dirs.clear();
    this.raw = [];
    this.out = [];
    this.known.clear();
  }

  private starting = false;
  private failure: string | undefined;
  private failureCode: string | undefined;

  /** Ends the watch; while it starts, start() throws this instead of the sink hearing it. */
  private fail(code: string, message: string): void {
    if (this.closed) return;
    this.failure = message;
    this.failureCode = code;
    if (!this.starting) this.flush();
    this.close();
    if (!this.starting) this.sink.fail(code, message);
  }

  /** Watches rel and, recursive, the directories under it; announce: report what is in them as create. */
  private async addTree(rel: string, announce: boolean): Promise<void> {
    const queue = [rel];
    while (queue.length > 0 && !this.closed) {
      const dir = queue.shift()!;
      if (this.dirs.has(dir)) continue;
      if (this.dirs.size >= this.limits.maxDirs) {
        this.fail('EMFILE', `${this.containerDir} has more than ${this.limits.maxDirs} directories to watch`);
        return;
      }
      const hostPath = path.join(this.hostDir, dir);
      let ino: number;
      let watcher: fs.FSWatcher;
      try {
        ino = (await fs.promises.lstat(hostPath)).ino;
        if (this.closed) return;
        watcher = fs.watch(hostPath, { persistent: false }, (kind, name) => this.onRaw(dir, kind, name));
      } catch (err) {
        if (dir === '') throw err;
        continue; // gone again before it could be watched: its remove is reported by its parent
      }
      watcher.on('error', () => this.dropDir(dir));
      this.dirs.set(dir, { watcher, ino });
      // Streamed (opendir), so a directory of a million names is never all in memory at once.
      let entries: fs.Dir;
      try {
        entries = await fs.promises.opendir(hostPath);
      } catch {
        continue;
      }
      try {
        for await (const e of entries) {
          if (this.closed) return;
          const name = dir === '' ? e.name : `${dir}/${e.name}`;
          if (AGENT_TEMP.test(e.name)) continue;
          this.remember(name);
          if (announce) await this.emitWithEntry(name, 'create');
          if (this.recursive && e.isDirectory()) {
            if (queue.length + this.dirs.size >= this.limits.maxDirs) {
              this.fail('EMFILE', `${this.containerDir} has more than ${this.limits.maxDirs} directories to watch`);
              return;
            }
            queue.push(name);
          }
        }
      } catch {
        // gone while it was read: its parent reports its remove
      }
    }
  }

  /** The directory (and its subdirectories) went away: their watches end. */
  private dropDir(dir: string): void {
    if (dir === '') {
      this.fail('ENOENT', `${this.containerDir} was removed`);
      return;
    }
    for (const [rel, d] of this.dirs) {
      if (rel === dir || rel.startsWith(`${dir}/`)) {
        d.watcher.close();
        this.dirs.delete(rel);
      }
    }
    for (const name of this.known) if (name.startsWith(`${dir}/`)) this.known.delete(name);
  }

  private remember(name: string): void {
    if (this.known.size < this.limits.maxKnown) this.known.add(name);
  }

  private onRaw(dir: string, kind: string, name: string | Buffer | null): void {
    if (this.closed || name === null) return;
    if (this.raw.length >= this.limits.maxQueued) {
      this.dropped++;
      this.schedule();
      return;
    }
    this.raw.push({ dir, kind, name: String(name) });
    void this.pump();
  }

  private async pump(): Promise<void> {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.raw.length > 0 && !this.closed) {
        const item = this.raw.shift()!;
        await this.classify(item.dir, item.kind, item.name).catch(() => undefined);
      }
    } finally {
      this.pumping = false;
    }
  }

  private async classify(dir: string, kind: string, base: string): Promise<void> {
    if (!this.dirs.has(dir)) return; // its watch ended (the directory went) after the event
    if (base.includes('/') || base === '.' || base === '..' || base === '') return;
    const name = dir === '' ? base : `${dir}/${base}`;
    const hostPath = path.join(this.hostDir, name);
    const st = await fs.promises.lstat(hostPath).catch(() => undefined);
    if (this.closed) return;
    // An event on the watched directory itself comes with its own base name (libuv): it is one
    // if that directory is gone or is another one now.
    if (kind === 'rename' && !st && base === path.basename(path.join(this.hostDir, dir))) {
      const self = this.dirs.get(dir);
      const now = await fs.promises.lstat(path.join(this.hostDir, dir)).catch(() => undefined);
      if (this.closed) return;
      if (self && (!now || now.ino !== self.ino)) {
        this.dropDir(dir);
        return;
      }
    }
    if (AGENT_TEMP.test(base)) return;
    if (kind === 'rename') {
      if (st) {
        this.remember(name);
        this.emit({ name, op: 'create', entry: this.entryOf(name, st) });
        if (this.recursive && st.isDirectory() && !this.dirs.has(name)) await this.addTree(name, true);
      } else if (this.known.has(name) || this.known.size >= this.limits.maxKnown) {
        this.known.delete(name);
        this.emit({ name, op: 'remove' });
        if (this.dirs.has(name)) this.dropDir(name);
      } else {
        // Made and gone before this lstat: its appearance now, its removal with its own event.
        this.remember(name);
        this.emit({ name, op: 'create' });
      }
      return;
    }
    if (!st) return;
    const op: WatchOp = st.ctimeMs !== st.mtimeMs ? 'chmod' : 'write';
    this.emit({ name, op, entry: this.entryOf(name, st) });
  }

  private async emitWithEntry(name: string, op: WatchOp): Promise<void> {
    const st = await fs.promises.lstat(path.join(this.hostDir, name)).catch(() => undefined);
    if (st && !this.closed) this.emit({ name, op, entry: this.entryOf(name, st) });
  }

  private entryOf(name: string, st: fs.Stats): FileEntry {
    const type = st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other';
    return { name: path.posix.basename(name), path: path.posix.join(this.containerDir, name), type, size: st.size, mode: st.mode & 0o7777, mtime: st.mtime.toISOString() };
  }

  private emit(event: WatchEvent): void {
    if (this.out.length >= this.limits.maxQueued) this.dropped++;
    else this.out.push(event);
    this.schedule();
  }

  private schedule(): void {
    if (this.timer || this.closed) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.flush();
      if (this.out.length > 0 || this.dropped > 0) this.schedule();
    }, this.limits.flushMs);
  }

  /** Sends one batch (bounded in count and bytes) and any overflow. */
  private flush(): void {
    let bytes = 0;
    let count = 0;
    while (count < this.out.length && count < WATCH_BATCH_EVENTS) {
      const size = Buffer.byteLength(JSON.stringify(this.out[count]));
      if (count > 0 && bytes + size > WATCH_BATCH_BYTES) break;
      bytes += size;
      count++;
    }
    if (count > 0) this.sink.events(this.out.splice(0, count));
    if (this.dropped > 0) {
      const dropped = this.dropped;
      this.dropped = 0;
      this.sink.overflow(dropped);
    }
  }
}

/** Watches the agent keeps at once, across every channel. */
let activeWatches = 0;

/** Takes one of `max` watch slots, or false when all are taken; release() gives it back once. */
export function acquireWatchSlot(max: number): { release(): void } | undefined {
  if (activeWatches >= max) return undefined;
  activeWatches++;
  let released = false;
  return {
    release() {
      if (released) return;
      released = true;
      activeWatches--;
    },
  };
}

export function activeWatchCount(): number {
  return activeWatches;
}

/**
 * A watch for as long as the channel is open, as the files channel's 'watch' op serves it: the
 * host's close, or the session's end (a new host, the VM's link gone: the mux aborts the
 * channel), closes every inotify watch of it and frees its slot, so nothing of it stays in the
 * agent. Throws (the caller sends the error) when it cannot start.
 */
export async function serveWatch(hostDir: string, containerDir: string, recursive: boolean, channel: Channel, limits: WatchLimits = DEFAULT_WATCH_LIMITS, maxWatches = WATCH_MAX_PER_VM): Promise<void> {
  const slot = acquireWatchSlot(maxWatches);
  if (!slot) throw Object.assign(new Error(`the VM has ${maxWatches} watches already`), { code: 'EMFILE' });
  const watch = new DirectoryWatch(hostDir, containerDir, recursive, {
    events: (events) => channel.send({ type: 'events', events }),
    overflow: (dropped) => channel.send({ type: 'overflow', dropped }),
    fail: (code, message) => {
      slot.release();
      channel.send({ type: 'error', code, message });
      channel.close();
    },
  }, limits);
  const end = (): void => {
    watch.close();
    slot.release();
  };
  channel.on('close', end);
  if (channel.closed) {
    end();
    return;
  }
  try {
    const dirs = await watch.start();
    if (channel.closed) end();
    else channel.send({ type: 'watching', dirs });
  } catch (err) {
    end();
    throw err;
  }
}
