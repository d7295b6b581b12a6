/**
 * The QMP client against a fake QEMU monitor on a real Unix socket: it waits for the greeting,
 * negotiates capabilities, matches answers to commands in order, turns errors into QmpError,
 * emits events, fails pending commands when the monitor goes, and retries until the socket exists.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { QmpClient, QmpError } from '../../src/vmm/qemu/qmp';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-qmp-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let counter = 0;

type Script = (command: Record<string, unknown>, reply: (value: unknown) => void) => void;

/** A monitor that greets, then answers each command line with the script (split writes on purpose). */
function fakeMonitor(socketPath: string, script: Script, log: Array<Record<string, unknown>>): Promise<net.Server> {
  const server = net.createServer((socket) => {
    let writes = Promise.resolve();
    const reply = (value: unknown): void => {
      const line = `${JSON.stringify(value)}\r\n`;
      // Half a line, then the rest (lines kept whole and in order): the client must buffer until the newline.
      writes = writes.then(() => new Promise<void>((resolve) => {
        socket.write(line.slice(0, 5));
        setImmediate(() => { socket.write(line.slice(5)); resolve(); });
      }));
    };
    reply({ QMP: { version: { qemu: { major: 8, minor: 2, micro: 0 } }, capabilities: ['oob'] } });
    let buffer = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      buffer += chunk;
      let newline: number;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const command = JSON.parse(buffer.slice(0, newline)) as Record<string, unknown>;
        buffer = buffer.slice(newline + 1);
        log.push(command);
        script(command, reply);
      }
    });
    socket.on('error', () => undefined);
  });
  return new Promise((resolve) => server.listen(socketPath, () => resolve(server)));
}

test('greeting, capabilities, commands in order, errors and events', { timeout: 10_000 }, async () => {
  const socketPath = path.join(root, `qmp-${counter++}.sock`);
  const log: Array<Record<string, unknown>> = [];
  const server = await fakeMonitor(socketPath, (command, reply) => {
    switch (command.execute) {
      case 'qmp_capabilities':
        reply({ return: {} });
        break;
      case 'query-status':
        reply({ event: 'RESUME', timestamp: { seconds: 1, microseconds: 2 } });
        reply({ return: { status: 'running', running: true } });
        break;
      case 'stop':
        reply({ return: {} });
        break;
      default:
        reply({ error: { class: 'CommandNotFound', desc: `The command ${String(command.execute)} has not been found` } });
    }
  }, log);
  const client = await QmpClient.connect(socketPath, 2000);
  try {
    const events: unknown[] = [];
    client.on('event', (event) => events.push(event));
    const [status, stopped] = await Promise.all([client.execute('query-status'), client.execute('stop', { force: true })]);
    assert.deepEqual(status, { status: 'running', running: true });
    assert.deepEqual(stopped, {});
    assert.deepEqual(events, [{ event: 'RESUME', timestamp: { seconds: 1, microseconds: 2 } }]);
    await assert.rejects(client.execute('frobnicate'), (err: unknown) => {
      assert.ok(err instanceof QmpError);
      assert.equal(err.command, 'frobnicate');
      assert.equal(err.errorClass, 'CommandNotFound');
      assert.equal(err.message, 'QMP frobnicate: The command frobnicate has not been found');
      return true;
    });
    // Capabilities first, then the commands as sent, arguments included.
    assert.deepEqual(log, [
      { execute: 'qmp_capabilities' },
      { execute: 'query-status' },
      { execute: 'stop', arguments: { force: true } },
      { execute: 'frobnicate' },
    ]);
  } finally {
    client.close();
    server.close();
  }
});

test('a monitor that goes away fails the pending command and later ones', { timeout: 10_000 }, async () => {
  const socketPath = path.join(root, `qmp-${counter++}.sock`);
  const sockets: net.Socket[] = [];
  const server = await fakeMonitor(socketPath, (command, reply) => {
    if (command.execute === 'qmp_capabilities') reply({ return: {} });
    // 'migrate' is never answered: the monitor dies instead.
  }, []);
  server.on('connection', (s) => sockets.push(s));
  const client = await QmpClient.connect(socketPath, 2000);
  const closed = new Promise<void>((resolve) => client.once('close', resolve));
  const pending = client.execute('migrate', { uri: 'file:/x' });
  setTimeout(() => { for (const s of sockets) s.destroy(); }, 50);
  await assert.rejects(pending, { message: 'QMP migrate: connection closed' });
  await closed;
  await assert.rejects(client.execute('cont'), { message: 'QMP cont: connection closed' });
  server.close();
});

test('connect retries until the monitor exists, and gives up at its deadline', { timeout: 10_000 }, async () => {
  const socketPath = path.join(root, `qmp-${counter++}.sock`);
  let server: net.Server | undefined;
  setTimeout(() => {
    void fakeMonitor(socketPath, (command, reply) => { if (command.execute === 'qmp_capabilities') reply({ return: {} }); }, []).then((s) => { server = s; });
  }, 150);
  const client = await QmpClient.connect(socketPath, 3000);
  client.close();
  server?.close();

  const started = Date.now();
  await assert.rejects(QmpClient.connect(path.join(root, 'never.sock'), 200), /cannot reach QEMU's monitor at .*never\.sock/);
  assert.ok(Date.now() - started < 2000);
});
