/**
 * The agent's terminal exec (`-t`) on this host with real pseudo-terminals: the process sees a
 * terminal of the asked size, input reaches it through the line discipline, a resize reaches it
 * as SIGWINCH with the new size, and its exit (code or signal) comes back after its output.
 */
import assert from 'node:assert/strict';
import { Duplex, PassThrough } from 'node:stream';
import { test } from 'node:test';
import { runExec } from '../../src/agent/exec';
import { terminalSizeOf, type ExecRequest } from '../../src/protocol/messages';
import { Mux, STDERR, STDIN, STDOUT, type Channel } from '../../src/protocol/mux';

function connectedMuxes(): { host: Mux; guest: Mux } {
  const aToB = new PassThrough();
  const bToA = new PassThrough();
  const host = new Mux(Duplex.from({ readable: bToA, writable: aToB }), { side: 'host', startInSync: false });
  const guest = new Mux(Duplex.from({ readable: aToB, writable: bToA }), { side: 'guest', startInSync: false });
  guest.on('open', (channel: Channel) => runExec(channel.request as unknown as ExecRequest, channel));
  return { host, guest };
}

interface Session {
  channel: Channel;
  /** Resolves once the output so far matches. */
  waitFor(pattern: RegExp): Promise<string>;
  streams: Set<number>;
  exit: Promise<Record<string, unknown>>;
}

function open(host: Mux, request: Omit<ExecRequest, 'kind'>): Session {
  const channel = host.open({ kind: 'exec', ...request });
  let output = '';
  const streams = new Set<number>();
  const waiters: (() => void)[] = [];
  channel.setDataHandler((stream, data) => {
    streams.add(stream);
    output += data.toString();
    for (const waiter of waiters.splice(0)) waiter();
  });
  const exit = new Promise<Record<string, unknown>>((resolve) => {
    channel.on('message', (message: Record<string, unknown>) => { if (message.type === 'exit' || message.type === 'error') resolve(message); });
  });
  const waitFor = async (pattern: RegExp): Promise<string> => {
    const deadline = Date.now() + 10_000;
    while (!pattern.test(output)) {
      if (Date.now() > deadline) throw new Error(`no ${pattern} in ${JSON.stringify(output)}`);
      await new Promise<void>((resolve) => { waiters.push(resolve); setTimeout(resolve, 100); });
    }
    return output;
  };
  return { channel, waitFor, streams, exit };
}

test('a process on a terminal: size, input, resize by SIGWINCH, exit code, one output stream', async () => {
  const { host } = connectedMuxes();
  const script = [
    'test -t 0 && test -t 1 && test -t 2 && echo all-terminals',
    "trap 'echo \"winch $(stty size)\"' WINCH",
    'echo "size $(stty size)"',
    'read line; echo "got <$line>"',
    // Wait for the resize; `read` is interrupted by the trap and retried.
    'read line2',
    'echo to-stderr >&2',
    'exit 5',
  ].join('\n');
  const session = open(host, { argv: ['sh', '-c', script], stdin: true, tty: { cols: 50, rows: 10 } });
  await session.waitFor(/size 10 50/);
  assert.match(await session.waitFor(/all-terminals/), /all-terminals/);
  await session.channel.write(STDIN, Buffer.from('hello\r'));
  await session.waitFor(/got <hello>/);
  session.channel.send({ type: 'resize', cols: 120, rows: 33 });
  await session.waitFor(/winch 33 120/);
  await session.channel.write(STDIN, Buffer.from('\r'));
  const exit = await session.exit;
  assert.deepEqual(exit, { type: 'exit', code: 5, signal: null });
  assert.match(await session.waitFor(/to-stderr/), /to-stderr\r\n/);
  // Everything a terminal shows is one stream.
  assert.deepEqual([...session.streams], [STDOUT]);
  assert.ok(!session.streams.has(STDERR));
});

test('Ctrl-C typed on the terminal interrupts its foreground process; a signal message kills it', async () => {
  const { host } = connectedMuxes();
  const session = open(host, { argv: ['sh', '-c', 'echo ready; sleep 30'], stdin: true, tty: { cols: 80, rows: 24 } });
  await session.waitFor(/ready/);
  await session.channel.write(STDIN, Buffer.from('\x03'));
  assert.deepEqual(await session.exit, { type: 'exit', code: null, signal: 'SIGINT' });

  const second = open(host, { argv: ['sleep', '30'], stdin: false, tty: { cols: 80, rows: 24 } });
  await new Promise((resolve) => setTimeout(resolve, 300));
  second.channel.send({ type: 'signal', signal: 'SIGTERM' });
  assert.deepEqual(await second.exit, { type: 'exit', code: null, signal: 'SIGTERM' });
});

test('a missing program and a bad size are errors, not hangs', async () => {
  const { host } = connectedMuxes();
  const missing = open(host, { argv: ['/nonexistent/program'], stdin: false, tty: { cols: 80, rows: 24 } });
  const result = await missing.exit;
  // forkpty succeeds and the exec fails in the child: the shell convention for "not found".
  assert.ok(result.type === 'error' || (result.type === 'exit' && result.code !== 0), JSON.stringify(result));
  const bad = open(host, { argv: ['true'], stdin: false, tty: { cols: 0, rows: 24 } });
  assert.equal((await bad.exit).type, 'error');
  assert.equal(terminalSizeOf({ cols: 80.5, rows: 2 }), undefined);
  assert.deepEqual(terminalSizeOf({ cols: 80, rows: 2, extra: 1 }), { cols: 80, rows: 2 });
});
