/**
 * Directory watching: the guest agent's watch module (src/agent/watch.ts, real inotify through
 * fs.watch) against a temp directory on this host, and the host's parser of a watch
 * (src/host/watch-client.ts) against the agent's real channel glue and against a hostile guest
 * (a real Mux on the other end of an in-memory link, sending crafted messages).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { describe, it } from 'node:test';
import { acquireWatchSlot, activeWatchCount, DirectoryWatch, serveWatch, type WatchLimits } from '../../src/agent/watch';
import { FilesError } from '../../src/host/files-client';
import { isWatchUnsupported, watchOnChannel, type WatchHandlers } from '../../src/host/watch-client';
import { WATCH_BATCH_EVENTS, type WatchEvent } from '../../src/protocol/files';
import type { Channel, Mux } from '../../src/protocol/mux';
import { linkedMuxes } from '../helpers/mux-pair';
import { tempDir } from '../helpers/temp-dir';

async function until(what: string, check: () => boolean, ms = 5_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A DirectoryWatch on a fresh temp dir, recording what its sink hears. */
async function watched(recursive: boolean, limits?: Partial<WatchLimits>, setup?: (dir: string) => void) {
  const dir = tempDir('shoal-watch-');
  setup?.(dir);
  const events: WatchEvent[] = [];
  const overflows: number[] = [];
  const failures: Array<{ code: string; message: string }> = [];
  const watch = new DirectoryWatch(dir, '/c/dir', recursive, {
    events: (e) => void events.push(...e),
    overflow: (n) => void overflows.push(n),
    fail: (code, message) => void failures.push({ code, message }),
  }, { maxDirs: 1024, maxQueued: 4096, flushMs: 10, maxKnown: 50_000, ...limits });
  return { dir, events, overflows, failures, watch, has: (name: string, op: string) => events.some((e) => e.name === name && e.op === op) };
}

describe('the agent watch module (inotify on a temp dir)', () => {
  it('create, write, chmod, rename, remove; names relative, entries with container paths; not below when not recursive', async () => {
    const w = await watched(false);
    assert.equal(await w.watch.start(), 1);
    try {
      fs.writeFileSync(path.join(w.dir, 'a.txt'), 'x');
      await until('create a.txt', () => w.has('a.txt', 'create'));
      const created = w.events.find((e) => e.name === 'a.txt' && e.op === 'create')!;
      assert.equal(created.entry?.path, '/c/dir/a.txt');
      assert.equal(created.entry?.type, 'file');
      await sleep(20); // so the write's mtime differs from the chmod's ctime below
      fs.appendFileSync(path.join(w.dir, 'a.txt'), 'more');
      await until('write a.txt', () => w.has('a.txt', 'write'));
      await sleep(20);
      fs.chmodSync(path.join(w.dir, 'a.txt'), 0o600);
      await until('chmod a.txt', () => w.has('a.txt', 'chmod'));
      fs.renameSync(path.join(w.dir, 'a.txt'), path.join(w.dir, 'b.txt'));
      await until('remove a.txt, create b.txt', () => w.has('a.txt', 'remove') && w.has('b.txt', 'create'));
      fs.mkdirSync(path.join(w.dir, 'sub'));
      fs.writeFileSync(path.join(w.dir, 'sub', 'deep.txt'), 'x');
      fs.rmSync(path.join(w.dir, 'b.txt'));
      await until('remove b.txt', () => w.has('b.txt', 'remove'));
      assert.ok(w.has('sub', 'create'));
      assert.ok(!w.events.some((e) => e.name.startsWith('sub/')), JSON.stringify(w.events));
      assert.equal(w.watch.watchedDirs, 1);
      assert.deepEqual(w.failures, []);
    } finally {
      w.watch.close();
    }
  });

  it('a file made and removed at once is still seen (its whole life between two polls)', async () => {
    const w = await watched(false);
    await w.watch.start();
    try {
      fs.writeFileSync(path.join(w.dir, 'brief'), 'x');
      fs.renameSync(path.join(w.dir, 'brief'), path.join(w.dir, 'gone'));
      fs.rmSync(path.join(w.dir, 'gone'));
      fs.mkdirSync(path.join(w.dir, 'e1'));
      fs.rmdirSync(path.join(w.dir, 'e1'));
      await until('brief, gone and e1 created and removed', () => ['brief', 'gone', 'e1'].every((n) => w.has(n, 'create') && w.has(n, 'remove')))
        .catch((err: Error) => { throw new Error(`${err.message}: ${JSON.stringify(w.events)}`); });
      for (const n of ['brief', 'gone', 'e1']) {
        const ops = w.events.filter((e) => e.name === n).map((e) => e.op);
        assert.ok(ops.indexOf('create') < ops.lastIndexOf('remove'), `${n}: ${ops.join(',')}`);
      }
    } finally {
      w.watch.close();
    }
  });

  it('recursive: existing and later subdirectories are watched, including what was made in them before their watch; removing one ends its watches', async () => {
    const w = await watched(true, {}, (dir) => fs.mkdirSync(path.join(dir, 'old', 'inner'), { recursive: true }));
    assert.equal(await w.watch.start(), 3);
    try {
      fs.writeFileSync(path.join(w.dir, 'old', 'inner', 'f'), 'x');
      await until('create old/inner/f', () => w.has('old/inner/f', 'create'));
      // A tree made in one go: its deepest file may exist before any watch on its directory.
      fs.mkdirSync(path.join(w.dir, 'd1', 'd2', 'd3'), { recursive: true });
      fs.writeFileSync(path.join(w.dir, 'd1', 'd2', 'd3', 'f'), 'x');
      await until('create d1/d2/d3/f', () => w.has('d1', 'create') && w.has('d1/d2/d3/f', 'create'));
      await until('6 dirs watched', () => w.watch.watchedDirs === 6);
      fs.writeFileSync(path.join(w.dir, 'd1', 'd2', 'later'), 'x');
      await until('create d1/d2/later', () => w.has('d1/d2/later', 'create'));
      fs.rmSync(path.join(w.dir, 'd1'), { recursive: true });
      await until('remove d1', () => w.has('d1', 'remove'));
      await until('the watches of d1 ended', () => w.watch.watchedDirs === 3);
      assert.ok(w.has('d1/d2/d3/f', 'remove'), JSON.stringify(w.events));
      assert.deepEqual(w.failures, []);
    } finally {
      w.watch.close();
    }
  });

  it('the directory cap: a tree over it is refused at the start, and a watch that grows over it ends with EMFILE', async () => {
    const big = await watched(true, { maxDirs: 3 }, (dir) => { for (const d of ['a', 'b', 'c', 'd']) fs.mkdirSync(path.join(dir, d)); });
    await assert.rejects(big.watch.start(), (err: NodeJS.ErrnoException) => err.code === 'EMFILE' && /more than 3 directories/.test(err.message));
    assert.equal(big.watch.watchedDirs, 0, 'nothing stays watched');

    const growing = await watched(true, { maxDirs: 3 });
    assert.equal(await growing.watch.start(), 1);
    for (const d of ['a', 'b', 'c']) fs.mkdirSync(path.join(growing.dir, d));
    await until('the watch ends', () => growing.failures.length > 0);
    assert.equal(growing.failures[0]!.code, 'EMFILE');
    assert.equal(growing.watch.watchedDirs, 0);
  });

  it('a file that was there before the watch began is a remove when it goes, not a create', async () => {
    const w = await watched(true, {}, (dir) => {
      fs.mkdirSync(path.join(dir, 'sub'));
      fs.writeFileSync(path.join(dir, 'old.txt'), 'x');
      fs.writeFileSync(path.join(dir, 'sub', 'old2.txt'), 'x');
    });
    await w.watch.start();
    try {
      fs.rmSync(path.join(w.dir, 'old.txt'));
      fs.rmSync(path.join(w.dir, 'sub', 'old2.txt'));
      await until('removes', () => w.has('old.txt', 'remove') && w.has('sub/old2.txt', 'remove'));
      await sleep(50);
      assert.ok(!w.has('old.txt', 'create') && !w.has('sub/old2.txt', 'create'), JSON.stringify(w.events));
    } finally {
      w.watch.close();
    }
  });

  it('the watched directory removed: the watch ends with ENOENT', async () => {
    const w = await watched(false);
    await w.watch.start();
    fs.rmSync(w.dir, { recursive: true });
    await until('the watch ends', () => w.failures.length > 0);
    assert.equal(w.failures[0]!.code, 'ENOENT');
  });

  it('a burst over the queue: events dropped and the count reported, the queue never above its bound', async () => {
    const w = await watched(false, { maxQueued: 16, flushMs: 50 });
    await w.watch.start();
    try {
      for (let i = 0; i < 500; i++) fs.writeFileSync(path.join(w.dir, `f${i}`), '');
      await until('an overflow', () => w.overflows.length > 0);
      await sleep(300);
      const dropped = w.overflows.reduce((a, b) => a + b, 0);
      assert.ok(dropped > 0);
      assert.ok(w.events.length <= 500 * 2, `${w.events.length}`);
    } finally {
      w.watch.close();
    }
  });

  it("the agent's own temp files of a write are left out", async () => {
    const w = await watched(false);
    await w.watch.start();
    try {
      fs.writeFileSync(path.join(w.dir, '.x.txt.shoal-0123456789ab'), 'x');
      fs.renameSync(path.join(w.dir, '.x.txt.shoal-0123456789ab'), path.join(w.dir, 'x.txt'));
      await until('create x.txt', () => w.has('x.txt', 'create'));
      await sleep(50);
      assert.ok(!w.events.some((e) => e.name.includes('shoal-')), JSON.stringify(w.events));
    } finally {
      w.watch.close();
    }
  });

  it('watch slots: at most the cap at once, each given back once', () => {
    const base = activeWatchCount();
    const a = acquireWatchSlot(base + 2)!;
    const b = acquireWatchSlot(base + 2)!;
    assert.ok(a && b);
    assert.equal(acquireWatchSlot(base + 2), undefined);
    a.release();
    a.release();
    assert.equal(activeWatchCount(), base + 1);
    b.release();
    assert.equal(activeWatchCount(), base);
  });
});

function recorder(): WatchHandlers & { events: WatchEvent[]; overflows: number[]; ends: FilesError[] } {
  const r = {
    events: [] as WatchEvent[],
    overflows: [] as number[],
    ends: [] as FilesError[],
    onEvents: (e: WatchEvent[]) => void r.events.push(...e),
    onOverflow: (n: number) => void r.overflows.push(n),
    onEnd: (err: FilesError) => void r.ends.push(err),
  };
  return r;
}

describe('a watch over a channel: the agent glue and the host parser', () => {
  it('end to end on a mux pair: events arrive, the host\'s close removes the agent\'s watches and frees the slot', async () => {
    const dir = tempDir('shoal-watch-chan-');
    const { host, guest, destroy } = linkedMuxes();
    const base = activeWatchCount();
    let served: Promise<void> | undefined;
    guest.on('open', (channel: Channel) => {
      channel.setDataHandler(() => undefined);
      served = serveWatch(dir, '/w', true, channel);
    });
    try {
      const r = recorder();
      const handle = await watchOnChannel(host.open({ kind: 'files', op: 'watch', path: '/w', recursive: true }), r);
      assert.equal(handle.dirs, 1);
      assert.equal(activeWatchCount(), base + 1);
      fs.mkdirSync(path.join(dir, 'n'));
      fs.writeFileSync(path.join(dir, 'n', 'f'), 'x');
      await until('create n/f', () => r.events.some((e) => e.name === 'n/f' && e.op === 'create'));
      assert.equal(r.events.find((e) => e.name === 'n/f')!.entry?.path, '/w/n/f');
      handle.close();
      await until('the slot is free', () => activeWatchCount() === base);
      await served;
      assert.deepEqual(r.ends, []);
    } finally {
      destroy();
    }
  });

  it('the link going away ends the watch on both sides (onEnd on the host, nothing left in the agent)', async () => {
    const dir = tempDir('shoal-watch-chan-');
    const { host, guest, destroy } = linkedMuxes();
    const base = activeWatchCount();
    guest.on('open', (channel: Channel) => {
      channel.setDataHandler(() => undefined);
      void serveWatch(dir, '/w', false, channel);
    });
    const r = recorder();
    await watchOnChannel(host.open({ kind: 'files', op: 'watch', path: '/w' }), r);
    destroy();
    await until('onEnd', () => r.ends.length === 1);
    assert.equal(r.ends[0]!.code, 'EIO');
    await until('the slot is free', () => activeWatchCount() === base);
  });
});

/** A host Mux whose guest answers every channel with `answer`. */
function hostileGuest(answer: (channel: Channel) => void): { host: Mux; destroy: () => void } {
  const { host, guest, destroy } = linkedMuxes();
  guest.on('open', (channel: Channel) => {
    channel.setDataHandler(() => undefined);
    answer(channel);
  });
  return { host, destroy };
}

const open = (host: Mux): Channel => host.open({ kind: 'files', op: 'watch', path: '/w' });
const EVENT = { name: 'a', op: 'create' };

describe('the host parser against a hostile guest', () => {
  const malformed: Array<[string, unknown]> = [
    ['an absolute name', { name: '/etc/passwd', op: 'create' }],
    ['a name with ..', { name: 'a/../../x', op: 'create' }],
    ['a name with a NUL', { name: 'a\0b', op: 'create' }],
    ['an empty component', { name: 'a//b', op: 'create' }],
    ['a name over 4096 characters', { name: 'x'.repeat(5000), op: 'create' }],
    ['an unknown op', { name: 'a', op: 'explode' }],
    ['a bad entry', { name: 'a', op: 'create', entry: { name: 'a', size: -1 } }],
    ['not an object', 'a'],
  ];
  for (const [what, event] of malformed) {
    it(`${what}: the watch ends with EIO and the channel is closed`, async () => {
      let guestChannel: Channel | undefined;
      const link = hostileGuest((channel) => {
        guestChannel = channel;
        channel.send({ type: 'watching', dirs: 1 });
        channel.send({ type: 'events', events: [EVENT, event] });
      });
      try {
        const r = recorder();
        await watchOnChannel(open(link.host), r);
        await until('onEnd', () => r.ends.length === 1);
        assert.equal(r.ends[0]!.code, 'EIO');
        assert.match(r.ends[0]!.message, /malformed watch event/);
        assert.ok(r.events.length === 0, 'nothing of the bad batch is delivered');
        await until('the guest sees the close', () => guestChannel!.closed);
      } finally {
        link.destroy();
      }
    });
  }

  it('a batch over the event bound, an unknown message, a bad overflow count: EIO', async () => {
    for (const message of [
      { type: 'events', events: Array.from({ length: WATCH_BATCH_EVENTS + 1 }, () => EVENT) },
      { type: 'surprise' },
      { type: 'overflow', dropped: -5 },
      { type: 'overflow', dropped: 1.5 },
    ]) {
      const link = hostileGuest((channel) => {
        channel.send({ type: 'watching', dirs: 1 });
        channel.send(message);
      });
      try {
        const r = recorder();
        await watchOnChannel(open(link.host), r);
        await until('onEnd', () => r.ends.length === 1);
        assert.equal(r.ends[0]!.code, 'EIO', JSON.stringify(message).slice(0, 80));
      } finally {
        link.destroy();
      }
    }
  });

  it('a flood over the rate: at most the budget delivered, the rest dropped and counted, nothing buffered', async () => {
    const batches = 200;
    const link = hostileGuest((channel) => {
      channel.send({ type: 'watching', dirs: 1 });
      const batch = Array.from({ length: WATCH_BATCH_EVENTS }, (_, i) => ({ name: `f${i}`, op: 'write' }));
      for (let i = 0; i < batches; i++) channel.send({ type: 'events', events: batch });
      channel.send({ type: 'overflow', dropped: 7 });
    });
    try {
      const r = recorder();
      const started = Date.now();
      const handle = await watchOnChannel(open(link.host), r, { eventsPerSecond: 1000, startTimeoutMs: 5_000 });
      await until('all counted', () => r.events.length + r.overflows.reduce((a, b) => a + b, 0) === batches * WATCH_BATCH_EVENTS + 7);
      const seconds = (Date.now() - started) / 1000;
      assert.ok(r.events.length <= 1000 * (1 + seconds) + 1, `${r.events.length} delivered in ${seconds} s`);
      assert.ok(r.overflows.includes(7), 'the guest\'s own count is reported');
      assert.deepEqual(r.ends, []);
      handle.close();
    } finally {
      link.destroy();
    }
  });

  it('a guest that never answers: the start fails within its timeout; a malformed first reply fails it at once', async () => {
    const silent = hostileGuest(() => undefined);
    try {
      await assert.rejects(watchOnChannel(open(silent.host), recorder(), { eventsPerSecond: 10, startTimeoutMs: 200 }), (err: FilesError) => err.code === 'EIO' && /did not start/.test(err.message));
    } finally {
      silent.destroy();
    }
    const odd = hostileGuest((channel) => channel.send({ type: 'watching', dirs: 'many' }));
    try {
      await assert.rejects(watchOnChannel(open(odd.host), recorder()), (err: FilesError) => err.code === 'EIO');
    } finally {
      odd.destroy();
    }
  });

  it('an older agent\'s refusal is told apart from other errors (the envd watcher then polls)', async () => {
    const old = hostileGuest((channel) => {
      channel.send({ type: 'error', code: 'EINVAL', message: 'unknown files operation watch' });
      channel.close();
    });
    try {
      const err = await watchOnChannel(open(old.host), recorder()).catch((e: unknown) => e);
      assert.ok(isWatchUnsupported(err), String(err));
    } finally {
      old.destroy();
    }
    const missing = hostileGuest((channel) => {
      channel.send({ type: 'error', code: 'ENOENT', message: '/w: no such file or directory' });
      channel.close();
    });
    try {
      const err = await watchOnChannel(open(missing.host), recorder()).catch((e: unknown) => e);
      assert.ok(err instanceof FilesError && err.code === 'ENOENT');
      assert.ok(!isWatchUnsupported(err));
    } finally {
      missing.destroy();
    }
  });
});
