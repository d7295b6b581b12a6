/**
 * A hostile peer against Mux directly: each malformed or abusive input is a protocol violation
 * that ends the host's link cleanly ('protocolError', then 'close'), never an exception that
 * escapes, never a buffer that grows past its bound. The guest's side resyncs instead.
 */
import assert from 'node:assert/strict';
import { Duplex, PassThrough, Writable } from 'node:stream';
import { test } from 'node:test';
import { encodeFrame, encodeJson, encodeSync, FrameType, SYNC_MARKER } from '../../src/protocol/frames';
import { MAX_OUTBOUND_BYTES, MAX_QUEUED_ITEMS, Mux, STDERR, STDOUT, WINDOW, type Channel } from '../../src/protocol/mux';

/** A mux on one end; `send` writes raw bytes from the (hostile) other end. */
function hostile(options: { side?: 'host' | 'guest'; startInSync?: boolean } = {}) {
  const toMux = new PassThrough();
  const fromMux = new PassThrough();
  const end = Duplex.from({ readable: toMux, writable: fromMux });
  const mux = new Mux(end, { side: options.side ?? 'host', startInSync: options.startInSync ?? true });
  const errors: string[] = [];
  let closed = false;
  mux.on('protocolError', (reason: string) => errors.push(reason));
  mux.on('close', () => { closed = true; });
  const sent: Buffer[] = [];
  fromMux.on('data', (chunk: Buffer) => sent.push(chunk));
  return {
    mux,
    errors,
    get closed() { return closed; },
    sent,
    send: (bytes: Buffer) => toMux.write(bytes),
    /** The guest's answer that establishes the session (the host strict from here). */
    ack: () => toMux.write(encodeSync(FrameType.HelloAck, { session: 's' })),
  };
}

const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

async function expectViolation(peer: ReturnType<typeof hostile>, pattern: RegExp): Promise<void> {
  await tick();
  await tick();
  assert.equal(peer.errors.length, 1, `one protocol error expected, got ${JSON.stringify(peer.errors)}`);
  assert.match(peer.errors[0]!, pattern);
  assert.equal(peer.closed, true);
  assert.equal(peer.mux.destroyed, true);
}

test('a short Credit frame is a protocol error, not a crash', async () => {
  const peer = hostile();
  peer.ack();
  const channel = peer.mux.open({ kind: 'exec' });
  let channelClosed = false;
  channel.on('close', () => { channelClosed = true; });
  peer.send(encodeFrame(channel.id, FrameType.Credit, Buffer.from([1, 2])));
  await expectViolation(peer, /credit frame of 2 bytes/);
  assert.equal(channelClosed, true);
});

test('credit that would grant more than a window is a protocol error', async () => {
  const peer = hostile();
  peer.ack();
  const channel = peer.mux.open({ kind: 'exec' });
  const credit = Buffer.alloc(4);
  credit.writeUInt32BE(1, 0);
  peer.send(encodeFrame(channel.id, FrameType.Credit, credit));
  await expectViolation(peer, /credit beyond the window/);
});

for (const [label, json] of [['null', 'null'], ['an array', '[1]'], ['a number', '7'], ['a string', '"x"'], ['invalid JSON', '{']] as const) {
  test(`a Message that is ${label} is a protocol error`, async () => {
    const peer = hostile();
    peer.ack();
    const channel = peer.mux.open({ kind: 'exec' });
    const seen: unknown[] = [];
    channel.on('message', (m: unknown) => seen.push(m));
    peer.send(encodeFrame(channel.id, FrameType.Message, Buffer.from(json)));
    await expectViolation(peer, /not (valid JSON|a JSON object)/);
    assert.deepEqual(seen, []);
  });
}

test('a null HELLO_ACK is a protocol error', async () => {
  const peer = hostile();
  peer.send(Buffer.concat([SYNC_MARKER, encodeFrame(0, FrameType.HelloAck, Buffer.from('null'))]));
  await expectViolation(peer, /HELLO_ACK is not a JSON object/);
});

test('the guest may not open channels on the host', async () => {
  const peer = hostile();
  peer.ack();
  peer.send(encodeJson(0x80000001, FrameType.Open, { kind: 'exec' }));
  await expectViolation(peer, /does not serve/);
});

test('an Open on an id already in use never replaces the channel', async () => {
  // The serving side (supervisor's control socket): the CLI opens, a second Open on the same id is refused.
  const peer = hostile({ side: 'guest', startInSync: false });
  const opened: Channel[] = [];
  peer.mux.on('open', (c: Channel) => opened.push(c));
  peer.send(encodeJson(1, FrameType.Open, { kind: 'first' }));
  await tick();
  assert.equal(opened.length, 1);
  peer.send(encodeJson(1, FrameType.Open, { kind: 'second' }));
  await expectViolation(peer, /already open/);
  assert.equal(opened.length, 1);
  assert.equal(opened[0]!.request.kind, 'first');
});

test('an Open outside the peer\'s id range, or with a null request, is refused', async () => {
  const peer = hostile({ side: 'guest', startInSync: false });
  peer.send(encodeJson(0x80000005, FrameType.Open, { kind: 'x' }));
  await expectViolation(peer, /outside its id range/);
  const other = hostile({ side: 'guest', startInSync: false });
  other.send(encodeFrame(3, FrameType.Open, Buffer.from('null')));
  await expectViolation(other, /not a JSON object/);
});

test('data beyond the credit window is a protocol error, and nothing past the window is queued', async () => {
  const peer = hostile();
  peer.ack();
  const channel = peer.mux.open({ kind: 'exec' });
  // No data handler: nothing is consumed, so no credit is returned.
  const chunk = Buffer.alloc(64 * 1024 + 1, 7);
  chunk[0] = STDOUT;
  for (let sent = 0; sent < WINDOW; sent += 64 * 1024) peer.send(encodeFrame(channel.id, FrameType.Data, chunk));
  await tick();
  assert.deepEqual(peer.errors, [], 'a full window is allowed');
  peer.send(encodeFrame(channel.id, FrameType.Data, Buffer.from([STDOUT, 1])));
  await expectViolation(peer, /beyond the credit window/);
});

test('a consumer that keeps up may receive far more than a window', async () => {
  const peer = hostile();
  peer.ack();
  const channel = peer.mux.open({ kind: 'exec' });
  let received = 0;
  channel.setDataHandler((_s, data) => { received += data.length; });
  const chunk = Buffer.alloc(64 * 1024 + 1, 7);
  chunk[0] = STDOUT;
  // Play a compliant peer: send only what was credited back.
  let credit = WINDOW;
  peer.mux.on('close', () => undefined);
  const creditsFromHost = (): number => {
    let total = 0;
    const all = Buffer.concat(peer.sent.splice(0));
    for (let at = 0; at + 9 <= all.length;) {
      const length = all.readUInt32BE(at);
      if (all.readUInt8(at + 8) === FrameType.Credit) total += all.readUInt32BE(at + 9);
      at += 9 + length;
    }
    return total;
  };
  peer.sent.splice(0);
  for (let round = 0; round < 64; round++) {
    while (credit >= 64 * 1024) {
      peer.send(encodeFrame(channel.id, FrameType.Data, chunk));
      credit -= 64 * 1024;
    }
    await tick();
    await tick();
    credit += creditsFromHost();
  }
  assert.deepEqual(peer.errors, []);
  assert.ok(received >= 4 * WINDOW, `received ${received}`);
});

test('one-byte frames are merged while the consumer is stalled; endless stream switches hit the item bound', async () => {
  const peer = hostile();
  peer.ack();
  const channel = peer.mux.open({ kind: 'exec' });
  // Same stream: merged, so far more than MAX_QUEUED_ITEMS frames fit in the window.
  const frames: Buffer[] = [];
  for (let i = 0; i < MAX_QUEUED_ITEMS * 2; i++) frames.push(encodeFrame(channel.id, FrameType.Data, Buffer.from([STDOUT, 1])));
  peer.send(Buffer.concat(frames));
  await tick();
  assert.deepEqual(peer.errors, []);
  frames.length = 0;
  for (let i = 0; i < MAX_QUEUED_ITEMS + 1; i++) frames.push(encodeFrame(channel.id, FrameType.Data, Buffer.from([i % 2 ? STDOUT : STDERR, 1])));
  peer.send(Buffer.concat(frames));
  await expectViolation(peer, /items queued/);
});

test('a huge length field is a protocol error once the session is up, and ignored while scanning for the marker', async () => {
  const peer = hostile();
  const huge = Buffer.from([0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 1, FrameType.Data]);
  peer.send(huge); // before any HELLO_ACK: stale bytes, skipped
  await tick();
  assert.deepEqual(peer.errors, []);
  peer.ack();
  await tick();
  peer.send(huge);
  await expectViolation(peer, /bad frame header \(length 2147483647/);
});

test('random bytes after the session started are a protocol error', async () => {
  const peer = hostile();
  peer.ack();
  await tick();
  peer.send(Buffer.from('random garbage that is not a frame header at all'));
  await expectViolation(peer, /bad frame header/);
});

test('a new sync marker + HELLO_ACK mid-session is not an error (the guest answering a re-HELLO)', async () => {
  const peer = hostile();
  const acks: unknown[] = [];
  peer.mux.on('helloAck', (a: unknown) => acks.push(a));
  peer.ack();
  const channel = peer.mux.open({ kind: 'exec' });
  const data: Buffer[] = [];
  channel.setDataHandler((_s, d) => { data.push(d); });
  const wire = Buffer.concat([encodeFrame(channel.id, FrameType.Data, Buffer.from([STDOUT, 65])), encodeSync(FrameType.HelloAck, { session: 's' })]);
  for (const byte of wire) peer.send(Buffer.from([byte]));
  await tick();
  assert.deepEqual(peer.errors, []);
  assert.equal(acks.length, 2);
  assert.equal(Buffer.concat(data).toString(), 'A');
});

test('a listener that throws on what the peer sent ends the link instead of the process', async () => {
  const peer = hostile();
  peer.ack();
  const channel = peer.mux.open({ kind: 'exec' });
  channel.on('message', (m: Record<string, unknown>) => { (m.nested as { x: number }).x.toFixed(); });
  peer.send(encodeJson(channel.id, FrameType.Message, { type: 'exit' }));
  await expectViolation(peer, /Cannot read properties of undefined/);
});

test('a peer that stops reading is a protocol error once MAX_OUTBOUND_BYTES wait', async () => {
  const toMux = new PassThrough();
  // A writable that never completes a write: everything piles up in writableLength.
  const stuck = new Writable({ write: () => undefined, highWaterMark: 1 });
  const end = Duplex.from({ readable: toMux, writable: stuck });
  const mux = new Mux(end, { side: 'host', startInSync: false });
  const errors: string[] = [];
  mux.on('protocolError', (r: string) => errors.push(r));
  mux.on('close', () => undefined);
  const channel = mux.open({ kind: 'exec' });
  const message = { type: 'x', pad: 'p'.repeat(1024 * 1024 - 100) };
  for (let i = 0; i < MAX_OUTBOUND_BYTES / (1024 * 1024) + 2 && !mux.destroyed; i++) channel.send(message);
  assert.equal(errors.length, 1);
  assert.match(errors[0]!, /stopped reading/);
  assert.equal(mux.destroyed, true);
});

test('the guest side resyncs on a violation: channels dropped, the next HELLO starts over', async () => {
  const peer = hostile({ side: 'guest', startInSync: true });
  const hellos: unknown[] = [];
  const opened: Channel[] = [];
  peer.mux.on('hello', (h: unknown) => hellos.push(h));
  peer.mux.on('open', (c: Channel) => opened.push(c));
  peer.send(encodeSync(FrameType.Hello, { session: 'a' }));
  peer.send(encodeJson(1, FrameType.Open, { kind: 'exec' }));
  await tick();
  let aborted = false;
  opened[0]!.on('close', () => { aborted = true; });
  peer.send(encodeFrame(1, FrameType.Message, Buffer.from('null')));
  await tick();
  assert.equal(aborted, true);
  assert.equal(peer.mux.destroyed, false);
  assert.deepEqual(peer.errors, []);
  peer.send(encodeSync(FrameType.Hello, { session: 'b' }));
  peer.send(encodeJson(1, FrameType.Open, { kind: 'exec' }));
  await tick();
  assert.equal(hellos.length, 2);
  assert.equal(opened.length, 2);
});

test('execCollect keeps only the tail of what a command prints', async () => {
  const { execCollect } = await import('../../src/host/exec-client');
  const aToB = new PassThrough();
  const bToA = new PassThrough();
  const host = new Mux(Duplex.from({ readable: bToA, writable: aToB }), { side: 'host', startInSync: false });
  const guest = new Mux(Duplex.from({ readable: aToB, writable: bToA }), { side: 'guest', startInSync: false });
  guest.on('open', (channel: Channel) => {
    channel.setDataHandler(() => undefined);
    void (async () => {
      for (let i = 0; i < 48; i++) await channel.write(STDOUT, Buffer.alloc(64 * 1024, i));
      await channel.write(STDERR, Buffer.from('the last words'));
      channel.send({ type: 'exit', code: 3 });
      channel.close();
    })();
  });
  const result = await execCollect(host, { argv: ['noisy'] }, undefined, { maxOutputBytes: 1024 * 1024 });
  assert.equal(result.code, 3);
  assert.equal(result.stdout.length, 1024 * 1024, 'the tail, not all 3 MiB');
  assert.equal(result.stdout[result.stdout.length - 1], 47);
  assert.equal(result.stdout[0], 32);
  assert.equal(result.stderr.toString(), 'the last words');
  host.destroy();
  guest.destroy();
});
