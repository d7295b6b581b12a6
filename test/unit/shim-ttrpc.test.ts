/**
 * The shim's ttrpc codec against itself over real Unix sockets: round trips, errors by code,
 * unknown methods, and hostile frames (oversized, garbage, split at every byte).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { TtrpcClient } from '../../src/shim/ttrpc/client';
import { encodeFrame, FrameError, FrameReader, MAX_MESSAGE_LENGTH, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE } from '../../src/shim/ttrpc/frame';
import { TtrpcServer } from '../../src/shim/ttrpc/server';
import { Code, TtrpcError } from '../../src/shim/ttrpc/status';
import { RequestSchema, ResponseSchema } from '../../src/shim/gen/ttrpc_pb';
import { StateRequestSchema, StateResponseSchema } from '../../src/shim/gen/containerd/shim_pb';
import { Status } from '../../src/shim/gen/containerd/task_pb';

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shim-ttrpc-'));
const sock = path.join(dir, 's.sock');
const server = new TtrpcServer();

before(async () => {
  server.register('containerd.task.v2.Task', 'State', async (payload) => {
    const req = fromBinary(StateRequestSchema, payload);
    if (req.id === 'missing') throw new TtrpcError(Code.NOT_FOUND, 'container missing not found');
    return toBinary(StateResponseSchema, create(StateResponseSchema, { id: req.id, pid: 42, status: Status.RUNNING }));
  });
  server.register('svc', 'Slow', () => new Promise((r) => setTimeout(() => r(new Uint8Array([1])), 300)));
  await server.listen(sock);
});
after(() => {
  server.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('frames: header layout is length, stream id (BE), type, flags', () => {
  const frame = encodeFrame({ streamId: 3, type: MESSAGE_TYPE_REQUEST, flags: 0, data: Buffer.from('abc') });
  assert.deepEqual([...frame.subarray(0, 10)], [0, 0, 0, 3, 0, 0, 0, 3, 1, 0]);
  const reader = new FrameReader();
  const got = [];
  for (const byte of Buffer.concat([frame, frame])) got.push(...reader.push(Buffer.from([byte])));
  assert.equal(got.length, 2);
  assert.equal(got[1]!.data.toString(), 'abc');
  assert.equal(got[1]!.streamId, 3);
});

test('frames: an oversized length is refused before its data is buffered', () => {
  const reader = new FrameReader();
  const header = Buffer.alloc(10);
  header.writeUInt32BE(MAX_MESSAGE_LENGTH + 1, 0);
  assert.throws(() => reader.push(header), FrameError);
  assert.throws(() => encodeFrame({ streamId: 1, type: 1, flags: 0, data: Buffer.alloc(MAX_MESSAGE_LENGTH + 1) }), FrameError);
});

test('client and server: a call round-trips; errors keep their code', async () => {
  const client = await TtrpcClient.connect(`unix://${sock}`);
  try {
    const payload = await client.call('containerd.task.v2.Task', 'State', toBinary(StateRequestSchema, create(StateRequestSchema, { id: 'c1' })));
    const state = fromBinary(StateResponseSchema, payload);
    assert.equal(state.id, 'c1');
    assert.equal(state.pid, 42);
    assert.equal(state.status, Status.RUNNING);
    await assert.rejects(client.call('containerd.task.v2.Task', 'State', toBinary(StateRequestSchema, create(StateRequestSchema, { id: 'missing' }))), (err: TtrpcError) => err.code === Code.NOT_FOUND && /missing/.test(err.message));
    await assert.rejects(client.call('containerd.task.v2.Task', 'Nope', new Uint8Array()), (err: TtrpcError) => err.code === Code.UNIMPLEMENTED);
    await assert.rejects(client.call('svc', 'Slow', new Uint8Array(), 50), (err: TtrpcError) => err.code === Code.DEADLINE_EXCEEDED);
    // Concurrent calls are matched by stream id.
    const many = await Promise.all([1, 2, 3].map((i) => client.call('containerd.task.v2.Task', 'State', toBinary(StateRequestSchema, create(StateRequestSchema, { id: `c${i}` })))));
    assert.deepEqual(many.map((p) => fromBinary(StateResponseSchema, p).id), ['c1', 'c2', 'c3']);
  } finally {
    client.close();
  }
});

/** Raw socket helper: sends bytes, collects response frames until close or n frames. */
function raw(bytes: Buffer, want: number): Promise<{ frames: ReturnType<FrameReader['push']>; closed: boolean }> {
  return new Promise((resolve) => {
    const socket = net.connect(sock);
    const reader = new FrameReader();
    const frames: ReturnType<FrameReader['push']> = [];
    const timer = setTimeout(() => { socket.destroy(); resolve({ frames, closed: false }); }, 2000);
    socket.on('data', (c: Buffer) => {
      frames.push(...reader.push(c));
      if (frames.length >= want) { clearTimeout(timer); socket.destroy(); resolve({ frames, closed: false }); }
    });
    socket.on('close', () => { clearTimeout(timer); resolve({ frames, closed: true }); });
    socket.on('error', () => undefined);
    socket.write(bytes);
  });
}

test('hostile: garbage protobuf gets an error response and the connection lives', async () => {
  const garbage = encodeFrame({ streamId: 1, type: MESSAGE_TYPE_REQUEST, flags: 0, data: Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]) });
  const good = encodeFrame({ streamId: 3, type: MESSAGE_TYPE_REQUEST, flags: 0, data: Buffer.from(toBinary(RequestSchema, create(RequestSchema, { service: 'containerd.task.v2.Task', method: 'State', payload: toBinary(StateRequestSchema, create(StateRequestSchema, { id: 'x' })) }))) });
  const { frames } = await raw(Buffer.concat([garbage, good]), 2);
  assert.equal(frames.length, 2);
  const byStream = new Map(frames.map((f) => [f.streamId, fromBinary(ResponseSchema, f.data)]));
  assert.equal(frames[0]!.type, MESSAGE_TYPE_RESPONSE);
  assert.equal(byStream.get(1)!.status!.code, Code.INVALID_ARGUMENT);
  assert.equal(byStream.get(3)!.status!.code, Code.OK);
});

test('hostile: an oversized frame closes the connection; the server keeps serving others', async () => {
  const header = Buffer.alloc(10);
  header.writeUInt32BE(0xffffffff, 0);
  header.writeUInt8(MESSAGE_TYPE_REQUEST, 8);
  const { closed, frames } = await raw(header, 1);
  assert.equal(closed, true);
  assert.equal(frames.length, 0);
  const client = await TtrpcClient.connect(sock);
  try {
    await client.call('containerd.task.v2.Task', 'State', toBinary(StateRequestSchema, create(StateRequestSchema, { id: 'y' })));
  } finally {
    client.close();
  }
});
