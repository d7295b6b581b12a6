/**
 * envd's `filesystem.Filesystem` service on core's file operations (done by the guest agent in
 * the container's file system): Stat, MakeDir (with parents; AlreadyExists if it is there, which
 * the SDK reads as `false`), Move, ListDir to a depth, Remove, and watching (watcher.ts: inotify
 * in the guest, polling only for an agent without it): the WatchDir stream and the
 * CreateWatcher / GetWatcherEvents / RemoveWatcher trio, whose watchers are bounded per sandbox
 * and in the events they keep. Events a reader cannot take are dropped, never buffered without
 * bound, and the drop ends the watch with ResourceExhausted, so no reader misses events untold.
 */
import crypto from 'node:crypto';
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from '@connectrpc/connect';
import type { MessageInitShape } from '@bufbuild/protobuf';
import type { Core } from '../../core';
import { entryInfo, walk } from './entries';
import { toConnectError } from './errors';
import { EventQueue, keepaliveMsOf } from './event-queue';
import { Filesystem, type FilesystemEventSchema } from './gen/filesystem/filesystem_pb';
import { containerPath } from './paths';
import { authenticate, requireRunning, type EnvdSandbox } from './sandbox-auth';
import { watchDirectory, type DirectoryWatch, type WatchEvent } from './watcher';

export const WATCHER_LIMITS = { perSandbox: 16, keptEvents: 4096, idleMs: 10 * 60_000 };

type FsEventInit = MessageInitShape<typeof FilesystemEventSchema>;

function eventInit(e: WatchEvent, includeEntry: boolean): FsEventInit {
  return { name: e.name, type: e.type, ...(includeEntry && e.entry ? { entry: entryInfo(e.entry) } : {}) };
}

interface Watcher {
  vmId: string;
  watch: DirectoryWatch | undefined;
  events: FsEventInit[];
  failure: ConnectError | undefined;
  lastPolled: number;
}

export class WatcherTable {
  private readonly watchers = new Map<string, Watcher>();
  private readonly sweep: NodeJS.Timeout;

  constructor() {
    // A client that forgets RemoveWatcher: its watcher stops after idleMs without a poll.
    this.sweep = setInterval(() => {
      const now = Date.now();
      for (const [id, w] of this.watchers) if (now - w.lastPolled > WATCHER_LIMITS.idleMs) this.remove(id);
    }, 60_000);
    this.sweep.unref();
  }

  count(vmId: string): number {
    return [...this.watchers.values()].filter((w) => w.vmId === vmId).length;
  }

  add(watcher: Watcher): string {
    const id = crypto.randomBytes(12).toString('hex');
    this.watchers.set(id, watcher);
    return id;
  }

  get(id: string, vmId: string): Watcher | undefined {
    const w = this.watchers.get(id);
    return w && w.vmId === vmId ? w : undefined;
  }

  remove(id: string): void {
    this.watchers.get(id)?.watch?.stop();
    this.watchers.delete(id);
  }

  close(): void {
    clearInterval(this.sweep);
    for (const id of [...this.watchers.keys()]) this.remove(id);
  }
}

export function filesystemService(core: Core, watchers: WatcherTable): ServiceImpl<typeof Filesystem> {
  const sandboxOf = (ctx: HandlerContext): EnvdSandbox => {
    const sandbox = authenticate(core, (name) => ctx.requestHeader.get(name) ?? undefined);
    requireRunning(sandbox);
    return sandbox;
  };
  /** Runs a handler body with every error as a ConnectError. */
  const guard = async <T>(body: () => Promise<T>): Promise<T> => {
    try {
      return await body();
    } catch (err) {
      throw toConnectError(err);
    }
  };

  return {
    stat: (req, ctx) => guard(async () => {
      const s = sandboxOf(ctx);
      return { entry: entryInfo(await core.files.stat(s.vm.id, containerPath(req.path))) };
    }),

    makeDir: (req, ctx) => guard(async () => {
      const s = sandboxOf(ctx);
      const p = containerPath(req.path);
      const created = await core.files.mkdir(s.vm.id, p);
      if (!created) throw new ConnectError(`directory ${p} already exists`, Code.AlreadyExists);
      return { entry: entryInfo(await core.files.stat(s.vm.id, p)) };
    }),

    move: (req, ctx) => guard(async () => {
      const s = sandboxOf(ctx);
      return { entry: entryInfo(await core.files.rename(s.vm.id, containerPath(req.source, 'source'), containerPath(req.destination, 'destination'))) };
    }),

    listDir: (req, ctx) => guard(async () => {
      const s = sandboxOf(ctx);
      const p = containerPath(req.path);
      const dir = await core.files.stat(s.vm.id, p);
      if (dir.type !== 'dir') throw new ConnectError(`path ${p} is not a directory`, Code.InvalidArgument);
      const { entries } = await walk(core, s.vm.id, p, req.depth === 0 ? 1 : req.depth);
      return { entries: entries.map(entryInfo) };
    }),

    remove: (req, ctx) => guard(async () => {
      const s = sandboxOf(ctx);
      await core.files.remove(s.vm.id, containerPath(req.path));
      return {};
    }),

    async *watchDir(req, ctx) {
      const s = await guard(async () => sandboxOf(ctx));
      const dir = await guard(async () => containerPath(req.path));
      const queue = new EventQueue<{ event: { case: 'start' | 'filesystem' | 'keepalive'; value: object } }>();
      const overflow = (): void => queue.fail(new ConnectError('watch events were dropped: the reader fell behind', Code.ResourceExhausted));
      const watch = await guard(() => watchDirectory(core, s.vm.id, dir, req.recursive,
        (events) => {
          for (const e of events) {
            if (!queue.offer({ event: { case: 'filesystem', value: eventInit(e, req.includeEntry) } }, 64 + e.name.length)) {
              overflow();
              return;
            }
          }
        },
        (err) => queue.fail(toConnectError(err))));
      try {
        queue.push({ event: { case: 'start', value: {} } });
        yield* queue.events(ctx.signal, keepaliveMsOf(ctx.requestHeader.get('keepalive-ping-interval')), () => ({ event: { case: 'keepalive', value: {} } }));
      } finally {
        watch.stop();
      }
    },

    createWatcher: (req, ctx) => guard(async () => {
      const s = sandboxOf(ctx);
      if (watchers.count(s.vm.id) >= WATCHER_LIMITS.perSandbox) throw new ConnectError(`sandbox has ${WATCHER_LIMITS.perSandbox} watchers already`, Code.ResourceExhausted);
      const watcher: Watcher = { vmId: s.vm.id, watch: undefined, events: [], failure: undefined, lastPolled: Date.now() };
      const fail = (err: ConnectError): void => {
        if (watcher.failure) return;
        watcher.failure = err;
        watcher.watch?.stop();
      };
      watcher.watch = await watchDirectory(core, s.vm.id, containerPath(req.path), req.recursive, (events) => {
        for (const e of events) {
          if (watcher.failure) return;
          // Bounded: events nobody collects are dropped, and the next collection is told.
          if (watcher.events.length >= WATCHER_LIMITS.keptEvents) {
            fail(new ConnectError(`more than ${WATCHER_LIMITS.keptEvents} watch events were not collected: events were dropped`, Code.ResourceExhausted));
            return;
          }
          watcher.events.push(eventInit(e, req.includeEntry));
        }
      }, (err) => fail(toConnectError(err)));
      if (watcher.failure) watcher.watch.stop();
      return { watcherId: watchers.add(watcher) };
    }),

    getWatcherEvents: (req, ctx) => guard(async () => {
      const s = sandboxOf(ctx);
      const w = watchers.get(req.watcherId, s.vm.id);
      if (!w) throw new ConnectError(`watcher ${req.watcherId.slice(0, 64)} not found`, Code.NotFound);
      w.lastPolled = Date.now();
      // What was kept before a failure is handed out first; the failure comes with the next call.
      if (w.failure && w.events.length === 0) {
        watchers.remove(req.watcherId);
        throw w.failure;
      }
      const events = w.events;
      w.events = [];
      return { events };
    }),

    removeWatcher: (req, ctx) => guard(async () => {
      const s = sandboxOf(ctx);
      if (!watchers.get(req.watcherId, s.vm.id)) throw new ConnectError(`watcher ${req.watcherId.slice(0, 64)} not found`, Code.NotFound);
      watchers.remove(req.watcherId);
      return {};
    }),
  };
}
