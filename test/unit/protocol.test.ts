import assert from 'node:assert/strict';
import { Duplex, PassThrough } from 'node:stream';
import { test } from 'node:test';
import { encodeFrame, encodeSync, FrameDecoder, FrameType, SYNC_MARKER, type Frame } from '../../src/protocol/frames';
import { Mux, STDOUT, WINDOW, type Channel } from '../../src/protocol/mux';

/** Two in-memory duplexes wired back to back, like the two ends of a socket. */
function pipePair(): [Duplex, Duplex] {
  const aToB = new PassThrough();
  const bToA = new PassThrough();
  const a = Duplex.from({ readable: bToA, writable: aToB });
  const b = Duplex.from({ readable: aToB, writable: bToA });
  return [a, b];
}

test('decoder skips garbage before the sync marker and requires a hello first', () => {
  const frames: Frame[] = [];
  const decoder = new FrameDecoder((f) => frames.push(f));
  const garbage = encodeFrame(3, FrameType.Data, Buffer.from('stale'));
  decoder.push(Buffer.concat([Buffer.from('noise'), garbage]));
  assert.equal(frames.length, 0);
  const wire = Buffer.concat([encodeSync(FrameType.Hello, { session: 's' }), encodeFrame(5, FrameType.Data, Buffer.from('\x01hi'))]);
  // Split byte by byte, across the marker too.
  for (const byte of wire) decoder.push(Buffer.from([byte]));
  assert.equal(frames.length, 2);
  assert.equal(frames[0]!.type, FrameType.Hello);
  assert.equal(frames[1]!.channel, 5);
  assert.equal(frames[1]!.payload.toString('latin1'), '\x01hi');
});

test('a new hello in the middle of a session resyncs even when its marker is split across reads', () => {
  const frames: Frame[] = [];
  const decoder = new FrameDecoder((f) => frames.push(f));
  decoder.push(encodeSync(FrameType.Hello, { session: 'a' }));
  const wire = Buffer.concat([encodeSync(FrameType.Hello, { session: 'a' }), encodeFrame(1, FrameType.Open, Buffer.from('{}'))]);
  // Every split point: the marker may arrive in two pieces, one of them shorter than a header.
  for (let cut = 1; cut < wire.length; cut++) {
    frames.length = 0;
    decoder.push(wire.subarray(0, cut));
    decoder.push(wire.subarray(cut));
    assert.deepEqual(frames.map((f) => f.type), [FrameType.Hello, FrameType.Open], `cut at ${cut}`);
  }
});

test('decoder drops back to sync mode on a corrupt header', () => {
  const frames: Frame[] = [];
  const reasons: string[] = [];
  const decoder = new FrameDecoder((f) => frames.push(f), { startInSync: false, onDesync: (r) => reasons.push(r) });
  decoder.push(Buffer.from([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 2]));
  assert.equal(reasons.length > 0, true);
  decoder.push(Buffer.concat([encodeSync(FrameType.HelloAck, { session: 'x' })]));
  assert.equal(frames.length, 1);
  assert.equal(frames[0]!.type, FrameType.HelloAck);
  assert.ok(SYNC_MARKER.length >= 8);
});

test('mux carries data both ways, in order, with eof, messages and close', async () => {
  const [a, b] = pipePair();
  const host = new Mux(a, { side: 'host', startInSync: false });
  const guest = new Mux(b, { side: 'guest', startInSync: false });
  guest.on('open', (channel: Channel) => {
    const got: Buffer[] = [];
    channel.setDataHandler((_s, d) => { got.push(d); });
    channel.on('eof', async () => {
      const all = Buffer.concat(got);
      await channel.write(STDOUT, all);
      channel.end(STDOUT);
      channel.send({ type: 'exit', code: 0, request: channel.request });
      channel.close();
    });
  });
  const channel = host.open({ kind: 'echo' });
  const out: Buffer[] = [];
  channel.setDataHandler((_s, d) => { out.push(d); });
  const exit = new Promise<Record<string, unknown>>((resolve) => channel.on('message', resolve));
  const closed = new Promise<void>((resolve) => channel.on('close', resolve));
  const payload = Buffer.alloc(3 * WINDOW + 12345);
  for (let i = 0; i < payload.length; i++) payload[i] = (i * 7) & 0xff;
  await channel.write(0, payload);
  channel.end(0);
  const message = await exit;
  await closed;
  assert.deepEqual(message.request, { kind: 'echo' });
  assert.equal(Buffer.compare(Buffer.concat(out), payload), 0);
});

test('flow control: a consumer that does not take data stalls only its channel', async () => {
  const [a, b] = pipePair();
  const host = new Mux(a, { side: 'host', startInSync: false });
  const guest = new Mux(b, { side: 'guest', startInSync: false });
  let releaseSlow: () => void = () => undefined;
  const slowGate = new Promise<void>((r) => { releaseSlow = r; });
  guest.on('open', (channel: Channel) => {
    if (channel.request.kind === 'slow') channel.setDataHandler(() => slowGate);
    else channel.setDataHandler(async () => { channel.send({ type: 'got' }); });
  });
  const slow = host.open({ kind: 'slow' });
  let slowDone = false;
  const slowWrite = slow.write(0, Buffer.alloc(4 * WINDOW)).then(() => { slowDone = true; });
  const fast = host.open({ kind: 'fast' });
  const got = new Promise((r) => fast.on('message', r));
  await fast.write(0, Buffer.from('x'));
  await got;
  assert.equal(slowDone, false, 'the slow channel must be held back by its window');
  releaseSlow();
  await slowWrite;
  assert.equal(slowDone, true);
});

test('reset drops channels: both sides see close', async () => {
  const [a, b] = pipePair();
  const host = new Mux(a, { side: 'host', startInSync: false });
  const guest = new Mux(b, { side: 'guest', startInSync: true });
  const opened = new Promise<Channel>((r) => guest.on('open', r));
  guest.on('hello', () => guest.sendHello(FrameType.HelloAck, {}));
  host.sendHello(FrameType.Hello, { session: '1' });
  const ch = host.open({ kind: 'x' });
  const guestChannel = await opened;
  const guestClosed = new Promise<void>((r) => guestChannel.on('close', r));
  guest.reset();
  await guestClosed;
  assert.equal(guest.openChannels, 0);
  host.destroy();
  await new Promise<void>((r) => (ch.closed ? r() : ch.on('close', r)));
});

test('decoder: large frames arriving in page-sized reads come out whole and in order', () => {
  const frames: Frame[] = [];
  const decoder = new FrameDecoder((f) => frames.push(f));
  const big = Buffer.alloc(200 * 1024 + 7);
  for (let i = 0; i < big.length; i++) big[i] = (i * 31) & 0xff;
  const wire = Buffer.concat([
    encodeSync(FrameType.Hello, { session: 's' }),
    encodeFrame(1, FrameType.Data, big),
    encodeFrame(2, FrameType.Data, Buffer.from('small')),
    encodeFrame(3, FrameType.Data, big.subarray(0, 5000)),
  ]);
  for (let at = 0; at < wire.length; at += 4096) decoder.push(wire.subarray(at, at + 4096));
  assert.deepEqual(frames.map((f) => [f.channel, f.payload.length]), [[0, frames[0]!.payload.length], [1, big.length], [2, 5], [3, 5000]]);
  assert.equal(Buffer.compare(frames[1]!.payload, big), 0);
  assert.equal(Buffer.compare(frames[3]!.payload, big.subarray(0, 5000)), 0);
});
