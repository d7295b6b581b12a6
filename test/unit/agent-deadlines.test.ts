/**
 * The host's own requests to the agent have deadlines: a guest that accepts every channel and
 * then never answers (hung, or hostile) fails each request with one line instead of holding the
 * supervisor (or an API call) forever. The fake guest is a real Mux on the other end of an
 * in-memory link: it takes the channel, reads what it is sent, and says nothing.
 */
import assert from 'node:assert/strict';
import { Readable } from 'node:stream';
import { test } from 'node:test';
import { AGENT_CALL_TIMEOUT_MS, execCollect, request } from '../../src/host/exec-client';
import { FILES_REPLY_TIMEOUT_MS, FilesError, filesCall, readFromChannel, writeToChannel } from '../../src/host/files-client';
import { STDOUT, type Channel } from '../../src/protocol/mux';
import { linkedMuxes } from '../helpers/mux-pair';
import { waitHealthy } from '../../src/supervisor/health-check';

// Every case has a test timeout: without the deadlines under test, each request would hang.

/** A host mux and a guest that opens every channel, swallows its data and never replies. */
function silentGuest(options: { answer?: (channel: Channel, request: Record<string, unknown>) => void } = {}) {
  const { host, guest } = linkedMuxes();
  const channels: Channel[] = [];
  const closedByHost: Channel[] = [];
  guest.on('open', (channel: Channel) => {
    channels.push(channel);
    channel.on('close', () => closedByHost.push(channel));
    // Data is taken but never answered; with a very slow reader, credit is never given back.
    channel.setDataHandler(() => new Promise<void>(() => undefined));
    options.answer?.(channel, channel.request);
  });
  return { host, guest, channels, closedByHost, destroy: () => { host.destroy(); guest.destroy(); } };
}

async function timed<T>(promise: Promise<T>): Promise<{ ms: number; error: Error }> {
  const start = Date.now();
  try {
    await promise;
  } catch (err) {
    return { ms: Date.now() - start, error: err as Error };
  }
  assert.fail('expected the request to fail');
}

test('the defaults are finite', () => {
  assert.equal(AGENT_CALL_TIMEOUT_MS, 30_000);
  assert.equal(FILES_REPLY_TIMEOUT_MS, 30_000);
});

test('execCollect against a silent guest fails at its deadline with one line, and closes the channel', { timeout: 10_000 }, async () => {
  const link = silentGuest();
  try {
    const { ms, error } = await timed(execCollect(link.host, { argv: ['podman', 'wait', 'main'] }, undefined, { timeoutMs: 300 }));
    assert.ok(ms >= 290 && ms < 3000, `failed after ${ms} ms`);
    assert.equal(error.message, '`podman wait` in the VM: no answer from the guest within 300 ms (the VM may be hung)');
    assert.ok(!error.message.includes('\n'));
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(link.closedByHost.length, 1, 'the guest was told the request is over');
  } finally {
    link.destroy();
  }
});

test('execCollect with stdin (podman load) ends the upload when the deadline passes, even without credit', { timeout: 10_000 }, async () => {
  const link = silentGuest();
  let pulled = 0;
  // An endless archive: the pump waits for credit the guest never returns.
  const archive = new Readable({ read() { pulled++; this.push(Buffer.alloc(256 * 1024)); } });
  try {
    const { error } = await timed(execCollect(link.host, { argv: ['podman', 'load'] }, archive, { timeoutMs: 400 }));
    assert.match(error.message, /^`podman load` in the VM: no answer from the guest within 400 ms/);
    await new Promise((r) => setTimeout(r, 100));
    const after = pulled;
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(pulled, after, 'nothing more is read from the archive');
  } finally {
    archive.destroy();
    link.destroy();
  }
});

test('a one-shot request (poweroff, quiesce) to a silent guest fails at its deadline', { timeout: 10_000 }, async () => {
  const link = silentGuest();
  try {
    const { ms, error } = await timed(request(link.host, { kind: 'quiesce' }, 250));
    assert.ok(ms >= 240 && ms < 3000, `failed after ${ms} ms`);
    assert.equal(error.message, 'the agent\'s quiesce request: no answer from the guest within 250 ms (the VM may be hung)');
  } finally {
    link.destroy();
  }
});

test('a guest that answers in time is unaffected by the deadline', { timeout: 10_000 }, async () => {
  const link = silentGuest({
    answer: (channel, req) => {
      if (req.kind === 'exec') {
        void channel.write(STDOUT, Buffer.from('fine\n')).then(() => {
          channel.send({ type: 'exit', code: 0 });
          channel.close();
        });
      } else {
        channel.send({ type: 'result', ok: true });
        channel.close();
      }
    },
  });
  try {
    const result = await execCollect(link.host, { argv: ['true'] }, undefined, { timeoutMs: 2000 });
    assert.equal(result.code, 0);
    assert.equal(result.stdout.toString(), 'fine\n');
    assert.deepEqual(await request(link.host, { kind: 'info' }, 2000), { type: 'result', ok: true });
  } finally {
    link.destroy();
  }
});

test('file operations to a silent guest fail with EIO at their deadline: calls, reads, writes', { timeout: 10_000 }, async () => {
  const link = silentGuest();
  try {
    const call = await timed(filesCall(link.host.open({ kind: 'files', op: 'stat', path: '/x' }), 200));
    assert.ok(call.error instanceof FilesError && call.error.code === 'EIO');
    assert.equal(call.error.message, 'the guest did not answer the file operation within 200 ms (the VM may be hung)');
    const read = await timed(readFromChannel(link.host.open({ kind: 'files', op: 'read', path: '/x' }), 1024, 200));
    assert.ok(read.error instanceof FilesError && read.error.code === 'EIO', read.error.message);
    // A write's body goes out; the guest then never confirms it.
    const write = await timed(writeToChannel(link.host.open({ kind: 'files', op: 'write', path: '/x' }), Readable.from([Buffer.from('data')]), 1024, 200));
    assert.ok(write.error instanceof FilesError && write.error.code === 'EIO', write.error.message);
    assert.match(write.error.message, /did not answer the file operation/);
  } finally {
    link.destroy();
  }
});

test('a health check against a silent guest ends at its deadline, not never', { timeout: 10_000 }, async () => {
  const link = silentGuest();
  try {
    const { ms, error } = await timed(waitHealthy(link.host, 'http://127.0.0.1:8080/', 1200, () => false));
    assert.match(error.message, /the health check http:\/\/127\.0\.0\.1:8080\/ did not pass within 1 s/);
    assert.ok(ms < 5000, `failed after ${ms} ms`);
  } finally {
    link.destroy();
  }
});
