/**
 * The files channel against a hostile guest: what a guest can send back on a `files` channel (a
 * read's bytes, its stat, a listing, errors) is bounded and checked on the host, whatever its
 * size or shape. The guest is a real Mux on the other end of an in-memory link, answering each
 * channel with a crafted reply; the host uses src/host/files-client.ts as the supervisor and
 * `shoal serve` do. Memory is sampled throughout, not only at the end.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { entriesOf, FilesError, filesCall, readFromChannel, writeToChannel } from '../../src/host/files-client';
import { MAX_PAYLOAD } from '../../src/protocol/frames';
import { STDOUT, type Channel, type Mux } from '../../src/protocol/mux';
import { linkedMuxes } from '../helpers/mux-pair';

type Answer = (channel: Channel) => void;

function hostileGuest(answer: Answer): { host: Mux; destroy: () => void } {
  const { host, guest, destroy } = linkedMuxes();
  guest.on('open', (channel: Channel) => {
    channel.setDataHandler(() => undefined);
    answer(channel);
  });
  return { host, destroy };
}

const ENTRY = { name: 'f', path: '/f', type: 'file', size: 1, mode: 0o644, mtime: '2026-01-01T00:00:00.000Z' };

/** Peak RSS growth (MiB) over what `work` does, sampled every 20 ms. */
async function peakGrowthMiB<T>(work: () => Promise<T>): Promise<{ result: T; peakMiB: number }> {
  global.gc?.();
  const base = process.memoryUsage().rss;
  let peak = base;
  const sampler = setInterval(() => { peak = Math.max(peak, process.memoryUsage().rss); }, 20);
  try {
    const result = await work();
    peak = Math.max(peak, process.memoryUsage().rss);
    return { result, peakMiB: (peak - base) / 2 ** 20 };
  } finally {
    clearInterval(sampler);
  }
}

test('a read whose guest sends far more than the limit: EFBIG at the limit, memory bounded, the channel closed', { timeout: 30_000 }, async () => {
  let guestSent = 0;
  const link = hostileGuest((channel) => {
    channel.send({ type: 'stat', entry: ENTRY });
    const chunk = Buffer.alloc(64 * 1024, 0x41);
    void (async () => {
      // 512 MiB offered: the host must stop taking it at its limit.
      for (let i = 0; i < 8192 && !channel.closed; i++) {
        await channel.write(STDOUT, chunk);
        guestSent += chunk.length;
      }
    })();
  });
  try {
    const { result, peakMiB } = await peakGrowthMiB(async () => {
      const { body } = await readFromChannel(link.host.open({ kind: 'files', op: 'read', path: '/f' }), 4 << 20);
      let got = 0;
      try {
        for await (const chunk of body) got += (chunk as Buffer).length;
      } catch (err) {
        return { got, err: err as FilesError };
      }
      return { got, err: undefined };
    });
    assert.equal(result.err?.code, 'EFBIG');
    assert.ok(result.got <= 4 << 20, `the consumer got ${result.got} bytes`);
    assert.ok(guestSent < 64 << 20, `the guest could push ${guestSent} bytes before the host stopped it`);
    assert.ok(peakMiB < 64, `peak growth ${peakMiB.toFixed(1)} MiB`);
  } finally {
    link.destroy();
  }
});

test('a read whose stat is malformed, or whose guest never sends one: EIO, nothing streamed', { timeout: 10_000 }, async () => {
  for (const entry of [null, { ...ENTRY, size: -1 }, { ...ENTRY, type: 'char' }, { ...ENTRY, name: 'x'.repeat(MAX_PAYLOAD - 200) }, 'entry']) {
    const link = hostileGuest((channel) => channel.send({ type: 'stat', entry }));
    try {
      await assert.rejects(readFromChannel(link.host.open({ kind: 'files', op: 'read', path: '/f' }), 1024), (e: FilesError) => e.code === 'EIO' && !e.message.includes('\n'));
    } finally {
      link.destroy();
    }
  }
  const silent = hostileGuest(() => undefined);
  try {
    await assert.rejects(readFromChannel(silent.host.open({ kind: 'files', op: 'read', path: '/f' }), 1024, 200), /did not answer the file operation within 200 ms/);
  } finally {
    silent.destroy();
  }
});

test('a listing of malformed and oversized entries: only well-formed entries are kept, in one bounded message', { timeout: 10_000 }, async () => {
  const entries: unknown[] = [ENTRY, { ...ENTRY, name: 'g', path: '/g' }];
  for (let i = 0; i < 2000; i++) entries.push(i % 2 ? { name: i } : { ...ENTRY, type: 'device', name: `d${i}` });
  const link = hostileGuest((channel) => channel.send({ type: 'result', entries, truncated: 'yes' }));
  try {
    const listed = entriesOf(await filesCall(link.host.open({ kind: 'files', op: 'list', path: '/' })));
    assert.deepEqual(listed.entries.map((e) => e.name), ['f', 'g']);
    assert.equal(listed.truncated, false, 'only a boolean true counts');
  } finally {
    link.destroy();
  }
  // A message past the frame limit is a protocol violation: the host ends the link rather than buffer it.
  const huge = hostileGuest((channel) => {
    try {
      channel.send({ type: 'result', entries: [{ ...ENTRY, name: 'x'.repeat(MAX_PAYLOAD) }] });
    } catch {
      // the guest's own encoder refuses it; a raw writer would be cut at the host's decoder
    }
  });
  try {
    await assert.rejects(filesCall(huge.host.open({ kind: 'files', op: 'list', path: '/' }), 300), FilesError);
  } finally {
    huge.destroy();
  }
});

test('errors from the guest: one line of at most 500 characters, an unknown code is EIO', { timeout: 10_000 }, async () => {
  const link = hostileGuest((channel) => channel.send({ type: 'error', code: 'E\u001b[2J; rm -rf /', message: `${'A'.repeat(10_000)}\nsecond line\u0007` }));
  try {
    await assert.rejects(filesCall(link.host.open({ kind: 'files', op: 'stat', path: '/f' })), (e: FilesError) => {
      assert.equal(e.code, 'EIO');
      assert.ok(!e.message.includes('\n') && e.message.length <= 500, e.message.slice(0, 80));
      return true;
    });
  } finally {
    link.destroy();
  }
});

test('a write whose guest never confirms, or confirms with a malformed entry: EIO within the deadline; an oversize body is EFBIG and nothing is confirmed', { timeout: 15_000 }, async () => {
  const body = async function* (n: number): AsyncGenerator<Buffer> {
    for (let i = 0; i < n; i++) yield Buffer.alloc(64 * 1024);
  };
  const silent = hostileGuest(() => undefined);
  try {
    await assert.rejects(writeToChannel(silent.host.open({ kind: 'files', op: 'write', path: '/f' }), body(1), 1 << 20, 200), /within 200 ms/);
  } finally {
    silent.destroy();
  }
  const liar = hostileGuest((channel) => channel.on('eof', () => channel.send({ type: 'result', entry: { name: 1 } })));
  try {
    await assert.rejects(writeToChannel(liar.host.open({ kind: 'files', op: 'write', path: '/f' }), body(2), 1 << 20), /malformed file entry/);
  } finally {
    liar.destroy();
  }
  const acceptsAll = hostileGuest((channel) => channel.on('eof', () => channel.send({ type: 'result', entry: ENTRY })));
  try {
    await assert.rejects(writeToChannel(acceptsAll.host.open({ kind: 'files', op: 'write', path: '/f' }), body(64), 1 << 20), (e: FilesError) => e.code === 'EFBIG');
  } finally {
    acceptsAll.destroy();
  }
});
