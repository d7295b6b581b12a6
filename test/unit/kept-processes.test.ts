/**
 * Kept processes (src/protocol/kept.ts): the agent's table and its bounds (ring bytes and chunks,
 * live and ended counts), a follower's replay over a real Mux, and the host's parsers of what
 * the guest sends (hostile: sizes, shapes, other APIs' tags), the API tables' adoption.
 */
import assert from 'node:assert/strict';
import { Duplex, PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { attachKept, keptRefusal, KeptTable, OutputRing } from '../../src/agent/kept-processes';
import { parseControlRequest } from '../../src/control/messages';
import { MAX_KEPT_LIST, parseKeptList, type KeptProcessInfo } from '../../src/protocol/kept';
import { Mux, STDERR, STDOUT, type Channel } from '../../src/protocol/mux';
import { nativeTag, parseNativeTag, ProcessTable } from '../../src/api/processes';
import { BACKLOG_BYTES, envdTag, EnvdProcess, EnvdProcessTable, parseEnvdTag, type OutputEvent } from '../../src/api/e2b/envd/process-table';
import { DEFAULT_QUEUE_LIMITS } from '../../src/api/e2b/envd/event-queue';
import type { ProcessEnd, RemoteProcess } from '../../src/core';

function pipePair(): [Duplex, Duplex] {
  const aToB = new PassThrough();
  const bToA = new PassThrough();
  return [Duplex.from({ readable: bToA, writable: aToB }), Duplex.from({ readable: aToB, writable: bToA })];
}

/** A host and a guest Mux back to back; the guest serves kept-attach from `table`. */
function link(table: KeptTable): Mux {
  const [a, b] = pipePair();
  const host = new Mux(a, { side: 'host', startInSync: false });
  const guest = new Mux(b, { side: 'guest', startInSync: false });
  guest.on('open', (channel: Channel) => attachKept(channel.request as { id?: unknown }, channel, table));
  return host;
}

/** What a host channel receives until it closes. */
function collect(channel: Channel): Promise<{ out: string; err: string; messages: Array<Record<string, unknown>> }> {
  let out = '';
  let err = '';
  const messages: Array<Record<string, unknown>> = [];
  channel.setDataHandler((stream, data) => {
    if (stream === STDOUT) out += data.toString();
    if (stream === STDERR) err += data.toString();
  });
  channel.on('message', (m: Record<string, unknown>) => messages.push(m));
  return new Promise((resolve) => channel.on('close', () => resolve({ out, err, messages })));
}

describe('the agent\'s output ring', () => {
  it('keeps the newest bytes of each stream within its bound, in order', () => {
    const ring = new OutputRing(1000);
    let all = '';
    for (let i = 0; i < 500; i++) {
      const piece = `line ${i} ${'x'.repeat(i % 37)}\n`;
      all += piece;
      ring.push(STDOUT, Buffer.from(piece));
      ring.push(STDERR, Buffer.from('e'));
    }
    ring.push(STDOUT, Buffer.alloc(5000, 'z'));
    assert.equal(ring.size(STDOUT), 1000);
    assert.equal(ring.size(STDERR), 500);
    const out = Buffer.concat(ring.entries().filter((e) => e.stream === STDOUT).map((e) => e.data)).toString();
    assert.equal(out, 'z'.repeat(1000));
    ring.push(STDOUT, Buffer.from('tail'));
    const again = Buffer.concat(ring.entries().filter((e) => e.stream === STDOUT).map((e) => e.data)).toString();
    assert.equal(again, `${'z'.repeat(996)}tail`);
    assert.ok(all.length > 1000);
  });

  it('bounds its chunks when tiny writes alternate between the streams', () => {
    const ring = new OutputRing(64 * 1024, 100);
    for (let i = 0; i < 10_000; i++) ring.push(i % 2 === 0 ? STDOUT : STDERR, Buffer.from('a'));
    assert.ok(ring.chunkCount <= 100);
    assert.ok(ring.size(STDOUT) + ring.size(STDERR) <= 100);
  });
});

describe('the agent\'s table of kept processes', () => {
  const controls = { signal: () => undefined };

  it('refuses past its live bound and forgets the oldest ended ones', () => {
    const table = new KeptTable({ maxLive: 2, maxEnded: 3, ringBytesPerStream: 16 });
    const a = table.add(101, 'a', false, false, controls);
    table.add(102, 'b', false, false, controls);
    assert.equal(table.full, true);
    assert.match(keptRefusal({ keep: { tag: 'c' } }, table) ?? '', /keeps 2 running processes already/);
    assert.equal(keptRefusal({ keep: { tag: 'x'.repeat(4097) } }, new KeptTable()), 'exec: invalid keep tag');
    assert.equal(keptRefusal({ keep: { tag: 5 } }, new KeptTable()), 'exec: invalid keep tag');
    assert.equal(keptRefusal({ keep: { tag: 'ok' } }, new KeptTable()), undefined);
    table.finished(a, { code: 0, signal: null });
    assert.equal(table.full, false);
    const ids: number[] = [];
    for (let i = 0; i < 5; i++) {
      const p = table.add(200 + i, `e${i}`, false, false, controls);
      ids.push(p.id);
      table.finished(p, { code: i, signal: null });
    }
    const ended = table.list().filter((p) => !p.running);
    assert.deepEqual(ended.map((p) => p.tag), ['e2', 'e3', 'e4']);
    assert.equal(table.list().filter((p) => p.running).length, 1);
    // Ids are never reused.
    assert.equal(new Set(table.list().map((p) => p.id)).size, table.list().length);
  });

  it('replays an ended process\'s ring and exit to a late follower', async () => {
    const table = new KeptTable();
    const p = table.add(300, 'tag', false, false, controls);
    await p.write(STDOUT, Buffer.from('hello '));
    await p.write(STDERR, Buffer.from('oops'));
    await p.write(STDOUT, Buffer.from('world'));
    p.end(STDOUT);
    p.end(STDERR);
    table.finished(p, { code: 3, signal: null });
    const host = link(table);
    const got = await collect(host.open({ kind: 'kept-attach', id: p.id }));
    assert.equal(got.out, 'hello world');
    assert.equal(got.err, 'oops');
    assert.deepEqual(got.messages, [{ type: 'exit', code: 3, signal: null }]);
    const missing = await collect(host.open({ kind: 'kept-attach', id: 999 }));
    assert.equal(missing.messages[0]?.type, 'error');
  });

  it('gives a live follower the ring, then live output; its signals reach the process; closing it leaves the process running', async () => {
    const signals: string[] = [];
    const table = new KeptTable();
    const p = table.add(400, 'live', false, false, { signal: (s) => signals.push(s) });
    await p.write(STDOUT, Buffer.from('before\n'));
    const host = link(table);
    const channel = host.open({ kind: 'kept-attach', id: p.id });
    let out = '';
    channel.setDataHandler((_s, d) => { out += d.toString(); });
    const deadline = Date.now() + 5000;
    while (p.followerCount === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    await p.write(STDOUT, Buffer.from('after\n'));
    channel.send({ type: 'signal', signal: 'SIGTERM' });
    while ((out !== 'before\nafter\n' || signals.length === 0) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.equal(out, 'before\nafter\n');
    assert.deepEqual(signals, ['SIGTERM']);
    channel.close();
    while (p.followerCount > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.equal(p.followerCount, 0);
    assert.equal(p.running, true);
    await p.write(STDOUT, Buffer.from('unread\n'));
  });
});

describe('the host\'s parsers of what the guest keeps (hostile input)', () => {
  const entry = (over: Partial<Record<keyof KeptProcessInfo, unknown>> = {}): Record<string, unknown> => ({ id: 1, pid: 50, tag: 't', tty: false, stdin: false, running: true, code: null, signal: null, startedAt: 1, ...over });

  it('keeps sane entries only, at most MAX_KEPT_LIST, each id once', () => {
    assert.equal(parseKeptList({ type: 'result', processes: 'no' }), undefined);
    assert.equal(parseKeptList({ type: 'error' }), undefined);
    const many = Array.from({ length: 10_000 }, (_, i) => entry({ id: i }));
    assert.equal(parseKeptList({ type: 'result', processes: many })!.length, MAX_KEPT_LIST);
    const bad = [
      entry({ tag: 'x'.repeat(5000) }), entry({ tag: 'é'.repeat(3000) }), entry({ id: -1 }), entry({ id: 1.5 }), entry({ pid: '7' }),
      entry({ running: 'yes' }), entry({ code: 1e9 }), entry({ signal: 'rm -rf /' }), entry({ startedAt: Number.MAX_VALUE }), null, [], 'x',
    ];
    assert.deepEqual(parseKeptList({ type: 'result', processes: [...bad, entry({ id: 7 }), entry({ id: 7, tag: 'again' })] }), [entry({ id: 7 })]);
  });

  it('reads only its own API\'s tags, with sane pids and commands', () => {
    const spec = { argv: ['sh', '-c', 'y'.repeat(100_000), ...Array.from({ length: 5000 }, () => 'arg')], env: {}, vm: false, stdin: false };
    const tag = nativeTag(42, spec);
    assert.ok(Buffer.byteLength(tag) <= 4096);
    assert.equal(parseNativeTag(tag)?.pid, 42);
    assert.deepEqual(parseNativeTag(nativeTag(7, { ...spec, argv: ['echo', 'hi'] })), { pid: 7, cmd: ['echo', 'hi'], vm: false });
    for (const hostile of ['{', 'null', '[]', '"x"', JSON.stringify({ api: 'envd', pid: 1, cmd: [] }), JSON.stringify({ api: 'shoal', pid: -1, cmd: [] }),
      JSON.stringify({ api: 'shoal', pid: 1e12, cmd: [] }), JSON.stringify({ api: 'shoal', pid: 1, cmd: [1] }), JSON.stringify({ api: 'shoal', pid: 1, cmd: 'sh' }), `{"api":"shoal","pid":1,"cmd":[],"x":"${'a'.repeat(5000)}"}`]) {
      assert.equal(parseNativeTag(hostile), undefined, hostile.slice(0, 60));
    }
    const etag = envdTag(1001, 'my-tag', { cmd: '/bin/bash', args: ['-l', '-c', 'z'.repeat(50_000)], envs: { A: 'b' }, cwd: '/tmp' });
    assert.ok(Buffer.byteLength(etag) <= 4096);
    assert.deepEqual(parseEnvdTag(etag), { pid: 1001, tag: 'my-tag', cmd: '/bin/bash', args: ['-l', '-c', 'z'.repeat(128)], cwd: '/tmp' });
    for (const hostile of [JSON.stringify({ api: 'shoal', pid: 1001, cmd: 'x', args: [] }), JSON.stringify({ api: 'envd', pid: 1001, cmd: 5, args: [] }),
      JSON.stringify({ api: 'envd', pid: 1001, cmd: 'x', args: [], tag: '' }), JSON.stringify({ api: 'envd', pid: 0, cmd: 'x', args: [] })]) {
      assert.equal(parseEnvdTag(hostile), undefined, hostile);
    }
  });

  it('the control socket refuses a bad keep tag and a bad kept-attach id', () => {
    assert.equal(parseControlRequest({ kind: 'exec', argv: ['x'], keep: { tag: 'x'.repeat(5000) } }).ok, false);
    assert.equal(parseControlRequest({ kind: 'exec', argv: ['x'], keep: 'tag' }).ok, false);
    assert.deepEqual(parseControlRequest({ kind: 'exec', argv: ['x'], keep: { tag: 'ok', extra: 1 } }), { ok: true, value: { kind: 'exec', argv: ['x'], env: {}, interactive: false, vm: false, keep: { tag: 'ok' } } });
    for (const id of [-1, 1.5, '3', null]) assert.equal(parseControlRequest({ kind: 'kept-attach', id }).ok, false);
    assert.deepEqual(parseControlRequest({ kind: 'kept-list', junk: 1 }), { ok: true, value: { kind: 'kept-list' } });
  });
});

/** A RemoteProcess that stays running until `finish`; `emit` is its output. */
class IdleProcess implements RemoteProcess {
  private resolveDone!: (end: ProcessEnd) => void;
  readonly done = new Promise<ProcessEnd>((resolve) => { this.resolveDone = resolve; });
  closed = false;
  private handler: (stream: 'stdout' | 'stderr', data: Buffer) => void | Promise<void> = () => undefined;
  onOutput(handler: (stream: 'stdout' | 'stderr', data: Buffer) => void | Promise<void>): void { this.handler = handler; }
  async emit(stream: 'stdout' | 'stderr', text: string | Buffer): Promise<void> { await this.handler(stream, Buffer.from(text)); }
  async writeStdin(): Promise<void> { /* none */ }
  endStdin(): void { /* none */ }
  signal(): void { /* none */ }
  resize(): void { /* none */ }
  close(): void { this.closed = true; }
  finish(end: ProcessEnd): void { this.resolveDone(end); }
}

describe('the API tables adopt what the guest kept', () => {
  it('native: its own running ones with their pids, new pids above them; a lost link asks the guest again', async () => {
    const spec = { argv: ['sleep', '9'], env: {}, vm: false, stdin: false };
    let lists = 0;
    const remotes: IdleProcess[] = [];
    const source = {
      keptProcesses: async (): Promise<KeptProcessInfo[]> => {
        lists++;
        return [
          { id: 1, pid: 10, tag: nativeTag(5, spec), tty: false, stdin: false, running: true, code: null, signal: null, startedAt: 1000 },
          { id: 2, pid: 11, tag: envdTag(1000, undefined, { cmd: 'x', args: [], envs: {} }), tty: false, stdin: false, running: true, code: null, signal: null, startedAt: 1000 },
          { id: 3, pid: 12, tag: 'garbage', tty: false, stdin: false, running: true, code: null, signal: null, startedAt: 1000 },
        ];
      },
      attachKept: async (): Promise<RemoteProcess> => {
        const r = new IdleProcess();
        remotes.push(r);
        return r;
      },
    };
    const table = new ProcessTable();
    await Promise.all([table.sync('vm1', source), table.sync('vm1', source)]);
    assert.equal(lists, 1);
    assert.deepEqual(table.list('vm1').map((p) => [p.pid, p.spec.argv, p.running]), [[5, ['sleep', '9'], true]]);
    const slot = table.reserve('vm1');
    assert.equal(slot.pid, 6);
    slot.release();
    remotes[0]!.finish({ error: 'the connection to the VM was lost', lost: true });
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(table.list('vm1').length, 0, 'a lost process leaves the table');
    await table.sync('vm1', source);
    assert.equal(lists, 2, 'and the guest is asked again');
    assert.equal(table.list('vm1').length, 1);
    table.forget('vm1');
    // A guest that lists more than the table allows: at most maxRunning are adopted.
    const flood = {
      keptProcesses: async (): Promise<KeptProcessInfo[]> => Array.from({ length: 150 }, (_, i) => ({ id: i, pid: 100 + i, tag: nativeTag(i + 1, spec), tty: false, stdin: false, running: true, code: null, signal: null, startedAt: 1 })),
      attachKept: async (): Promise<RemoteProcess> => new IdleProcess(),
    };
    const small = new ProcessTable({ maxRunning: 8, keepFinished: 2, ring: { maxEvents: 16, maxBytes: 1024 } });
    await small.sync('vm3', flood);
    assert.equal(small.list('vm3').length, 8);
    assert.throws(() => small.reserve('vm3'), /already runs 8 processes/);
    small.forget('vm3');
  });

  it('envd: its running ones, the pid counter moved past them; a failing guest is asked again next time', async () => {
    let fail = true;
    const source = {
      keptProcesses: async (): Promise<KeptProcessInfo[]> => {
        if (fail) throw new Error('unreachable');
        return [{ id: 9, pid: 77, tag: envdTag(5000, 'bg', { cmd: '/bin/sh', args: ['-c', 'x'], envs: {} }), tty: true, stdin: true, running: true, code: null, signal: null, startedAt: 5 }];
      },
      attachKept: async (): Promise<RemoteProcess> => new IdleProcess(),
    };
    const table = new EnvdProcessTable();
    await table.sync('vm2', source);
    assert.equal(table.list('vm2').length, 0);
    fail = false;
    await table.sync('vm2', source);
    const [p] = table.list('vm2');
    assert.equal(p?.pid, 5000);
    assert.equal(p?.tag, 'bg');
    assert.equal(p?.pty, true);
    assert.equal(table.tagTaken('vm2', 'bg'), true);
    assert.equal(table.reserve('vm2'), 5001);
    table.release('vm2');
  });

  it('envd: an adopted process holds the replayed output (bounded per stream) for the next Connect', async () => {
    const remote = new IdleProcess();
    const p = new EnvdProcess(1000, undefined, { cmd: 'x', args: [], envs: {} }, false, false, remote, DEFAULT_QUEUE_LIMITS, true);
    await remote.emit('stdout', 'replayed\n');
    await remote.emit('stderr', Buffer.alloc(BACKLOG_BYTES + 10, 'e'));
    for (let i = 0; i < 100; i++) await remote.emit('stdout', Buffer.alloc(1024, 'o'));
    const queue = p.follow({ kind: 'start', pid: 1000 });
    await remote.emit('stdout', 'live\n');
    remote.finish({ exitCode: 0, signal: null });
    await p.finished;
    const events: OutputEvent[] = [];
    for await (const e of queue.events(new AbortController().signal, 0, () => ({ kind: 'keepalive' }))) events.push(e);
    assert.deepEqual(events[0], { kind: 'start', pid: 1000 });
    const text = (stream: string): string => Buffer.concat(events.flatMap((e) => (e.kind === 'data' && e.stream === stream ? [e.data] : []))).toString();
    assert.equal(text('stderr').length, BACKLOG_BYTES, 'a chunk beyond the bound keeps its tail');
    assert.equal(text('stdout'), `${'o'.repeat(BACKLOG_BYTES)}live\n`, 'the oldest output went first');
    assert.equal(events[events.length - 1]?.kind, 'end');
    // A process this server started holds nothing while unfollowed (envd's behaviour).
    const own = new IdleProcess();
    const q = new EnvdProcess(1001, undefined, { cmd: 'x', args: [], envs: {} }, false, false, own, DEFAULT_QUEUE_LIMITS);
    await own.emit('stdout', 'dropped');
    const queue2 = q.follow({ kind: 'start', pid: 1001 });
    own.finish({ error: 'the connection to the VM was lost', lost: true });
    await q.finished;
    const later: OutputEvent[] = [];
    for await (const e of queue2.events(new AbortController().signal, 0, () => ({ kind: 'keepalive' }))) later.push(e);
    assert.deepEqual(later, [{ kind: 'start', pid: 1001 }], 'no output, and no end event for a lost link');
  });
});
