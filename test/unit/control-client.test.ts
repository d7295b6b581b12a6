/**
 * The control protocol's typed client against a fake supervisor on a real Unix socket: the
 * supervisor's own ControlServer with scripted handlers, or a bare Mux where a test needs to
 * send what a correct server never would (malformed replies).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { onControlEvents, SupervisorClient } from '../../src/control/client';
import type { ControlRequest, SnapshotResult } from '../../src/control/messages';
import { parseControlRequest } from '../../src/control/messages';
import { ControlServer, refuse, sendEvent, type ControlHandlers } from '../../src/control/server';
import { exitCodeOf } from '../../src/protocol/messages';
import { Mux, STDOUT, type Channel } from '../../src/protocol/mux';
import { StateStore } from '../../src/state/store';
import type { VmRecord } from '../../src/state/vm-record';
import { vmFiles } from '../../src/state/vm-files';
import { connectUnix } from '../../src/util/connect';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-ctl-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let counter = 0;

/** A fake supervisor: the real server end, with handlers the test scripts. */
async function fakeSupervisor(handlers: Partial<ControlHandlers>): Promise<{ client: SupervisorClient; received: ControlRequest[]; close: () => void }> {
  const socketPath = path.join(root, `ctl-${counter++}.sock`);
  const received: ControlRequest[] = [];
  const unexpected = (channel: Channel): void => refuse(channel, 'not scripted');
  const server = await ControlServer.listen(socketPath, {
    attach: (channel, request) => { received.push(request); (handlers.attach ?? unexpected)(channel, request); },
    exec: (channel, request) => { received.push(request); (handlers.exec ?? unexpected)(channel, request); },
    files: (channel, request) => { received.push(request); (handlers.files ?? unexpected)(channel, request); },
    snapshot: (channel, request) => { received.push(request); (handlers.snapshot ?? unexpected)(channel, request); },
    stop: (channel, request) => { received.push(request); (handlers.stop ?? unexpected)(channel, request); },
    keptList: (channel, request) => { received.push(request); (handlers.keptList ?? unexpected)(channel, request); },
    keptAttach: (channel, request) => { received.push(request); (handlers.keptAttach ?? unexpected)(channel, request); },
  });
  const client = SupervisorClient.over(await connectUnix(socketPath), 'vm-test');
  return { client, received, close: () => { client.close(); server.close(); } };
}

/** A supervisor that answers every request with the given raw messages, then closes the channel. */
async function rawSupervisor(replies: Array<Record<string, unknown>>): Promise<{ client: SupervisorClient; close: () => void }> {
  const socketPath = path.join(root, `raw-${counter++}.sock`);
  const server = net.createServer((socket) => {
    socket.on('error', () => undefined);
    const mux = new Mux(socket, { side: 'guest', startInSync: false });
    mux.on('open', (channel: Channel) => {
      channel.setDataHandler(() => undefined);
      for (const reply of replies) channel.send(reply);
      channel.close();
    });
  });
  await new Promise<void>((resolve) => server.listen(socketPath, resolve));
  const client = SupervisorClient.over(await connectUnix(socketPath), 'vm-test');
  return { client, close: () => { client.close(); server.close(); } };
}

const snapshotResult: SnapshotResult = {
  type: 'result',
  vmSpec: {
    id: 'abc',
    runDir: '/tmp/x',
    kernel: '/k',
    initrd: '/i',
    cmdline: 'console=ttyS0',
    cpus: 1,
    memoryMiB: 512,
    drives: [{ id: 'root', path: '/r', readOnly: true }],
    accel: 'tcg',
    consoleLog: '/tmp/x/console.log',
  },
  config: {
    name: 'src', image: 'docker-archive:/a.tar', command: ['sleep', '60'], env: { A: 'b' }, cpus: 1, memoryMiB: 512,
    interactive: false, detach: true, autoRemove: false, network: 'none', publish: [],
  },
  loadedImage: 'localhost/a:latest',
  parent: { tag: 'base', id: '0123456789abcdef' },
  timings: { pausedMs: 12, totalMs: 40 },
};

test('stop: the request arrives typed and the reply resolves', async () => {
  const fake = await fakeSupervisor({ stop: (channel) => { sendEvent(channel, { type: 'result' }); channel.close(); } });
  try {
    await fake.client.stop();
    assert.deepEqual(fake.received, [{ kind: 'stop' }]);
  } finally {
    fake.close();
  }
});

test('snapshot: progress is delivered, the result is parsed, the directory is sent', async () => {
  const fake = await fakeSupervisor({
    snapshot: (channel) => {
      channel.setDataHandler(() => undefined);
      sendEvent(channel, { type: 'progress', message: 'pausing' });
      sendEvent(channel, snapshotResult);
      channel.close();
    },
  });
  try {
    const progress: string[] = [];
    const result = await fake.client.snapshot('/tmp/snap-dir', (m) => progress.push(m));
    assert.deepEqual(progress, ['pausing']);
    assert.deepEqual(result, snapshotResult);
    assert.deepEqual(fake.received, [{ kind: 'snapshot', dir: '/tmp/snap-dir' }]);
  } finally {
    fake.close();
  }
});

test('snapshot: an error reply rejects with its message', async () => {
  const fake = await fakeSupervisor({ snapshot: (channel) => refuse(channel, 'VM src is not running') });
  try {
    await assert.rejects(fake.client.snapshot('/tmp/d'), { message: 'VM src is not running' });
  } finally {
    fake.close();
  }
});

test('a malformed reply is rejected, not cast into shape', async () => {
  // A result whose vmSpec lacks its kernel and whose timings are strings.
  const bad = { ...snapshotResult, vmSpec: { id: 'abc', drives: [] }, timings: { pausedMs: '1', totalMs: 2 } };
  const raw = await rawSupervisor([bad]);
  try {
    await assert.rejects(raw.client.snapshot('/tmp/d'), /malformed message from the supervisor/);
  } finally {
    raw.close();
  }
  const worse = await rawSupervisor([{ type: 'progress', message: 42 }]);
  try {
    await assert.rejects(worse.client.stop(), /malformed message from the supervisor/);
  } finally {
    worse.close();
  }
});

test('a reply of the wrong kind is an error', async () => {
  const raw = await rawSupervisor([{ type: 'running', name: 'x', id: 'y' }]);
  try {
    await assert.rejects(raw.client.stop(), /unexpected reply from the supervisor: running/);
  } finally {
    raw.close();
  }
});

test('a channel closed without a reply rejects as lost', async () => {
  const raw = await rawSupervisor([]);
  try {
    await assert.rejects(raw.client.snapshot('/tmp/d'), /lost the supervisor of vm-test during the snapshot/);
  } finally {
    raw.close();
  }
});

test('waitUntilRunning: running, exited, error and lost outcomes', async () => {
  const cases: Array<[Array<Record<string, unknown>>, unknown]> = [
    [[{ type: 'progress', message: 'booting' }, { type: 'running', name: 'a', id: 'b' }], { outcome: 'running' }],
    [[{ type: 'exit', code: 0 }], { outcome: 'exited' }],
    [[{ type: 'error', message: 'boom' }], { outcome: 'error', message: 'boom' }],
    [[], { outcome: 'lost' }],
    [[{ type: 'running', name: 7 }], { outcome: 'error', message: 'malformed message from the supervisor: {"type":"running","name":7}' }],
  ];
  for (const [replies, expected] of cases) {
    const raw = await rawSupervisor(replies);
    try {
      const progress: string[] = [];
      assert.deepEqual(await raw.client.waitUntilRunning((m) => progress.push(m)), expected);
      if (replies[0]?.type === 'progress') assert.deepEqual(progress, ['booting']);
    } finally {
      raw.close();
    }
  }
});

test('exec: the typed request reaches the supervisor; stdio and the exit code come back', async () => {
  const fake = await fakeSupervisor({
    exec: (channel) => {
      channel.setDataHandler(() => undefined);
      void channel.write(STDOUT, Buffer.from('hi\n')).then(() => {
        channel.send({ type: 'exit', code: null, signal: 'SIGKILL' });
        channel.close();
      });
    },
  });
  try {
    const channel = fake.client.exec({ argv: ['echo', 'hi'], env: { K: 'v' }, interactive: false, vm: true, tty: { cols: 80, rows: 24 } });
    const out: Buffer[] = [];
    let code: number | undefined;
    channel.setDataHandler((stream, data) => { if (stream === STDOUT) out.push(Buffer.from(data)); });
    onControlEvents(channel, (event) => { if (event.type === 'exit') code = exitCodeOf(event); });
    await new Promise<void>((resolve) => channel.on('close', resolve));
    assert.equal(Buffer.concat(out).toString(), 'hi\n');
    assert.equal(code, 137);
    assert.deepEqual(fake.received, [{ kind: 'exec', argv: ['echo', 'hi'], env: { K: 'v' }, interactive: false, vm: true, tty: { cols: 80, rows: 24 } }]);
  } finally {
    fake.close();
  }
});

test('the server refuses malformed and unknown requests with one error', async () => {
  const fake = await fakeSupervisor({});
  const socketPath = path.join(root, `ctl-${counter - 1}.sock`);
  const mux = new Mux(await connectUnix(socketPath), { side: 'host', startInSync: false });
  try {
    for (const [request, message] of [
      [{ kind: 'exec', argv: 'rm -rf /' }, 'malformed exec request: argv must be a list of strings'],
      [{ kind: 'exec', argv: ['x'], env: { A: 1 } }, 'malformed exec request: env must map names to strings'],
      [{ kind: 'exec', argv: ['x'], tty: { cols: 0, rows: 5 } }, 'invalid terminal size'],
      [{ kind: 'snapshot' }, 'malformed snapshot request: dir must be a string'],
      [{ kind: 'format-disk' }, 'unknown request format-disk'],
    ] as Array<[Record<string, unknown>, string]>) {
      const channel = mux.open(request);
      channel.setDataHandler(() => undefined);
      const messages: unknown[] = [];
      channel.on('message', (m) => messages.push(m));
      await new Promise<void>((resolve) => channel.on('close', resolve));
      assert.deepEqual(messages, [{ type: 'error', message }]);
    }
    assert.deepEqual(fake.received, []);
  } finally {
    mux.destroy();
    fake.close();
  }
});

test('parseControlRequest keeps only the fields of the protocol', () => {
  assert.deepEqual(parseControlRequest({ kind: 'attach', stdio: 'yes', extra: 1 }), { ok: true, value: { kind: 'attach', stdio: false } });
  assert.deepEqual(parseControlRequest(null), { ok: false, error: 'malformed request' });
  assert.deepEqual(parseControlRequest({ kind: 'files', op: 'rename', path: '/a', to: '/b', extra: 1 }), { ok: true, value: { kind: 'files', op: 'rename', path: '/a', to: '/b' } });
  assert.deepEqual(parseControlRequest({ kind: 'files', op: 'chmod', path: '/a' }), { ok: false, error: 'malformed files request' });
  assert.deepEqual(parseControlRequest({ kind: 'files', op: 'read', path: 7 }), { ok: false, error: 'malformed files request' });
});

test('an exec names a pod\'s other container by a podman name, and only for container commands', () => {
  const exec = { kind: 'exec', argv: ['true'], env: {}, interactive: false, vm: false };
  assert.deepEqual(parseControlRequest({ ...exec, container: 'b6c7e4f.web_1' }), { ok: true, value: { ...exec, container: 'b6c7e4f.web_1' } });
  for (const container of ['', '-rm', '../x', 'a b', 'x'.repeat(129), 7]) {
    assert.deepEqual(parseControlRequest({ ...exec, container }), { ok: false, error: 'malformed exec request: container must be a container name' });
  }
  assert.deepEqual(parseControlRequest({ ...exec, vm: true, container: 'web' }), { ok: false, error: 'malformed exec request: container is for container commands, not vm' });
});

test('exitCodeOf: code, then 128+signal, then the fallback', () => {
  assert.equal(exitCodeOf({ code: 3, signal: null }), 3);
  assert.equal(exitCodeOf({ code: null, signal: 'SIGTERM' }), 143);
  assert.equal(exitCodeOf({ code: null, signal: 'SIGNOPE' }), 255);
  assert.equal(exitCodeOf({ code: null }, 137), 137);
  assert.equal(exitCodeOf({ code: '3' }), 255);
});

test('connect waits for a supervisor that is starting, and gives up at once on a dead one', async () => {
  const store = new StateStore(path.join(root, 'state'));
  const record: VmRecord = {
    id: 'a1b2c3d4e5f6',
    config: snapshotResult.config,
    backend: 'qemu',
    accel: 'tcg',
    state: 'creating',
    createdAt: new Date().toISOString(),
    supervisorPid: process.pid,
  };
  store.write(record);
  const socketPath = vmFiles(store.vmDir(record.id)).controlSocket;
  // The socket appears only after the client started waiting for it.
  let server: ControlServer | undefined;
  const late = setTimeout(() => {
    void ControlServer.listen(socketPath, {
      attach: () => undefined, exec: () => undefined, files: () => undefined, snapshot: () => undefined, keptList: () => undefined, keptAttach: () => undefined,
      stop: (channel) => { sendEvent(channel, { type: 'result' }); channel.close(); },
    }).then((s) => { server = s; });
  }, 150);
  try {
    const client = await SupervisorClient.connect(store, record, 5000);
    await client.stop();
    client.close();
  } finally {
    clearTimeout(late);
    server?.close();
  }
  // Recorded as failed: no waiting for a socket that will never come.
  fs.rmSync(socketPath, { force: true });
  store.update(record.id, (r) => { r.state = 'failed'; r.error = 'the kernel panicked'; });
  const started = Date.now();
  await assert.rejects(SupervisorClient.connect(store, record, 10_000), { message: 'VM src failed: the kernel panicked' });
  assert.ok(Date.now() - started < 2000);
});
