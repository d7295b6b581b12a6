/**
 * The SDK against a real listening `shoal serve` server backed by the fake core (local
 * processes, local files): E2B-style calls, streamed output, a dropped stream resumed from the
 * ring, stdin, signals, files, fork.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { FastifyInstance } from 'fastify';
import WebSocket from 'ws';
import { buildServer } from '../../src/api/server';
import { CommandExitError, Shoal, ShoalApiError, type Sandbox } from '../../sdk/src/index';
import { FakeCore } from '../helpers/fake-core';
import { tempDir } from '../helpers/temp-dir';
import { SHOAL_BIN } from '../helpers/shoal-cli';

const TOKEN = 'sdk-unit-token-0123456789abcdef';
let app: FastifyInstance;
let shoal: Shoal;
let sbx: Sandbox;

before(async () => {
  app = await buildServer(new FakeCore(), { token: TOKEN, stdinLimit: 1024, sweepMs: 0 });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  shoal = new Shoal({ baseUrl: url, token: TOKEN });
  sbx = await shoal.sandboxes.create({ image: 'busybox', metadata: { suite: 'sdk' } });
});

after(async () => {
  await app.close();
});

describe('sdk', () => {
  it('a wrong token is a ShoalApiError 401', async () => {
    const bad = new Shoal({ baseUrl: `http://127.0.0.1:${(app.server.address() as { port: number }).port}`, token: 'wrong-token-wrong-token' });
    await assert.rejects(bad.sandboxes.list(), (err: unknown) => err instanceof ShoalApiError && err.status === 401 && err.code === 'unauthorized');
  });

  it('commands.run waits and returns the result; a non-zero exit throws CommandExitError', async () => {
    const result = await sbx.commands.run('echo hello; echo oops >&2');
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout, 'hello\n');
    assert.equal(result.stderr, 'oops\n');
    await assert.rejects(sbx.commands.run('echo partial; exit 7'), (err: unknown) => err instanceof CommandExitError && err.exitCode === 7 && err.stdout === 'partial\n');
    const envs = await sbx.commands.run(['sh', '-c', 'echo $GREETING'], { envs: { GREETING: 'hi there' } });
    assert.equal(envs.stdout, 'hi there\n');
  });

  it('streams output to onStdout/onStderr as it comes', async () => {
    const seen: string[] = [];
    const result = await sbx.commands.run('for i in 1 2 3; do echo $i; sleep 0.05; done; echo e >&2', { onStdout: (d) => seen.push(`o:${d}`), onStderr: (d) => seen.push(`e:${d}`) });
    assert.equal(result.stdout, '1\n2\n3\n');
    // Each stream in order (the two pipes are read independently, so not interleaved exactly).
    assert.equal(seen.filter((d) => d.startsWith('o:')).map((d) => d.slice(2)).join(''), '1\n2\n3\n');
    assert.equal(seen.filter((d) => d.startsWith('e:')).map((d) => d.slice(2)).join(''), 'e\n');
    assert.ok(seen.filter((d) => d.startsWith('o:')).length >= 2, 'output arrived in pieces, as it came');
  });

  it('a dropped stream loses nothing still in the ring: connect(pid) replays and follows', async () => {
    const handle = await sbx.commands.run('echo before; sleep 0.5; echo after', { background: true });
    await new Promise((r) => setTimeout(r, 200));
    handle.disconnect();
    await assert.rejects(handle.wait(), /disconnected/);
    const listed = await sbx.commands.list();
    assert.ok(listed.some((p) => p.pid === handle.pid && p.running), 'the command still runs without a client');
    const again = await sbx.commands.connect(handle.pid);
    const result = await again.wait();
    assert.equal(result.stdout, 'before\nafter\n');
    // Resuming from a later event id skips what was seen.
    const tail = await sbx.commands.connect(handle.pid, { lastEventId: 2 });
    assert.equal((await tail.wait()).stdout, 'after\n');
  });

  it('sendStdin feeds a background command; eof ends its input; over the limit is a 413', async () => {
    const handle = await sbx.commands.run(['cat'], { background: true, stdin: true });
    await handle.sendStdin('line one\n');
    await assert.rejects(handle.sendStdin('x'.repeat(2000)), (err: unknown) => err instanceof ShoalApiError && err.status === 413);
    await handle.sendStdin('line two\n', { eof: true });
    const result = await handle.wait();
    assert.equal(result.stdout, 'line one\nline two\n');
  });

  it('kill() ends a command with SIGKILL; a signal by name reaches it', async () => {
    const handle = await sbx.commands.run(['sleep', '30'], { background: true });
    await handle.kill();
    await assert.rejects(handle.wait(), (err: unknown) => err instanceof CommandExitError && err.result.signal === 'SIGKILL');
    const trapped = await sbx.commands.run(['sh', '-c', 'trap "echo got TERM; exit 0" TERM; while :; do sleep 0.1; done'], { background: true });
    await new Promise((r) => setTimeout(r, 200));
    await trapped.kill('SIGTERM');
    assert.equal((await trapped.wait()).stdout, 'got TERM\n');
  });

  it('files: write, read, list, exists, makeDir, rename, remove', async () => {
    const bytes = Buffer.alloc(300_000, 7);
    await sbx.files.write('/data/blob.bin', bytes);
    assert.deepEqual(Buffer.from(await sbx.files.read('/data/blob.bin', { format: 'bytes' })), bytes);
    await sbx.files.write('/data/a.txt', 'hello');
    assert.equal(await sbx.files.read('/data/a.txt'), 'hello');
    assert.deepEqual((await sbx.files.list('/data')).map((e) => e.name).sort(), ['a.txt', 'blob.bin']);
    assert.equal(await sbx.files.makeDir('/data/sub'), true);
    assert.equal(await sbx.files.makeDir('/data/sub'), false);
    await sbx.files.rename('/data/a.txt', '/data/sub/b.txt');
    assert.equal(await sbx.files.exists('/data/a.txt'), false);
    assert.equal((await sbx.files.getInfo('/data/sub/b.txt')).size, 5);
    await sbx.files.remove('/data/sub');
    assert.equal(await sbx.files.exists('/data/sub/b.txt'), false);
    await assert.rejects(sbx.files.read('/data/../x'), (err: unknown) => err instanceof ShoalApiError && err.status === 400);
  });

  it('fork returns Sandboxes; list filters by metadata; setTimeout and kill', async () => {
    const children = await sbx.fork({ count: 2, metadata: { suite: 'sdk-child' } });
    assert.equal(children.length, 2);
    for (const child of children) {
      assert.ok(!(child instanceof Error));
      assert.equal(child.info.parentId, sbx.sandboxId);
    }
    assert.equal((await shoal.sandboxes.list({ metadata: { suite: 'sdk-child' } })).length, 2);
    await sbx.setTimeout(120_000);
    assert.ok(Date.parse(sbx.info.expiresAt!) > Date.now() + 100_000);
    for (const child of children) await (child as Sandbox).kill();
    assert.equal((await shoal.sandboxes.list({ metadata: { suite: 'sdk-child' } })).length, 0);
    await assert.rejects(shoal.sandboxes.get((children[0] as Sandbox).sandboxId), (err: unknown) => err instanceof ShoalApiError && err.status === 404);
  });
});

describe('serve, continued', () => {
  it('a restarted server finds the sandboxes and their metadata again', async () => {
    const core = new FakeCore();
    const first = await buildServer(core, { token: TOKEN, sweepMs: 0 });
    const created = await first.inject({ method: 'POST', url: '/v1/sandboxes', headers: { authorization: `Bearer ${TOKEN}` }, payload: { image: 'busybox', metadata: { keep: 'me' }, timeoutSec: 600 } });
    const before = JSON.parse(created.body) as { sandboxId: string; expiresAt: string };
    await first.close();
    const second = await buildServer(core, { token: TOKEN, sweepMs: 0 });
    try {
      const got = await second.inject({ method: 'GET', url: `/v1/sandboxes/${before.sandboxId}`, headers: { authorization: `Bearer ${TOKEN}` } });
      assert.equal(got.statusCode, 200);
      const after = JSON.parse(got.body) as { metadata: Record<string, string>; expiresAt: string };
      assert.deepEqual(after.metadata, { keep: 'me' });
      assert.equal(after.expiresAt, before.expiresAt);
    } finally {
      await second.close();
    }
  });

  it('logs: JSON by default, SSE while following, ending when the sandbox stops', async () => {
    const core = new FakeCore();
    const server = await buildServer(core, { token: TOKEN, sweepMs: 0 });
    const url = await server.listen({ host: '127.0.0.1', port: 0 });
    try {
      const headers = { authorization: `Bearer ${TOKEN}` };
      const vm = JSON.parse((await server.inject({ method: 'POST', url: '/v1/sandboxes', headers, payload: { image: 'busybox' } })).body) as { sandboxId: string };
      core.writeLog(vm.sandboxId, [{ stream: 'stdout', data: Buffer.from('one\n') }, { stream: 'stderr', data: Buffer.from('two\n') }]);
      const plain = await server.inject({ method: 'GET', url: `/v1/sandboxes/${vm.sandboxId}/logs`, headers });
      assert.deepEqual(JSON.parse(plain.body), { logs: [{ stream: 'stdout', data: 'one\n' }, { stream: 'stderr', data: 'two\n' }], truncated: false });
      setTimeout(() => { core.vms.get(vm.sandboxId)!.status = 'stopped'; }, 300);
      const followed = await fetch(`${url}/v1/sandboxes/${vm.sandboxId}/logs?follow=1&access_token=${TOKEN}`);
      const text = await followed.text();
      assert.match(text, /event: stdout\ndata: \{"data":"one\\n"\}/);
      assert.match(text, /event: stderr\ndata: \{"data":"two\\n"\}/);
      assert.match(text, /event: end\ndata: \{"state":"stopped"\}/);
    } finally {
      await server.close();
    }
  });

  it('the PTY WebSocket: input sent while the terminal starts is not lost; the exit code comes in the close reason', { timeout: 15_000 }, async () => {
    const core = new FakeCore();
    core.execDelayMs = 300;
    const server = await buildServer(core, { token: TOKEN, sweepMs: 0 });
    const url = await server.listen({ host: '127.0.0.1', port: 0 });
    try {
      const client = new Shoal({ baseUrl: url, token: TOKEN });
      const box = await client.sandboxes.create({ image: 'busybox' });
      let output = '';
      // The fake core runs the command without a terminal: stdin and stdout are pipes.
      const pty = await box.pty.create({ cols: 80, rows: 24, cmd: 'read line; echo got:$line; exit 3', onData: (d) => { output += Buffer.from(d).toString(); } });
      pty.resize({ cols: 100, rows: 30 });
      pty.sendInput('typed at once\n');
      assert.deepEqual(await pty.wait(), { exitCode: 3 });
      assert.equal(output, 'got:typed at once\n');
    } finally {
      await server.close();
    }
  });

  it('the PTY WebSocket refuses a missing token and an unknown sandbox before the upgrade', async () => {
    const port = (app.server.address() as { port: number }).port;
    const status = (path: string, headers: Record<string, string> = {}): Promise<number> => new Promise((resolve, reject) => {
      const socket = new WebSocket(`ws://127.0.0.1:${port}${path}`, { headers });
      socket.once('open', () => { socket.close(); reject(new Error('upgraded')); });
      socket.once('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0));
      socket.once('error', () => undefined);
    });
    assert.equal(await status(`/v1/sandboxes/${sbx.sandboxId}/pty`), 401);
    assert.equal(await status('/v1/sandboxes/nosuch/pty', { authorization: `Bearer ${TOKEN}` }), 404);
    assert.equal(await status(`/v1/sandboxes/${sbx.sandboxId}/pty?cols=0&access_token=${TOKEN}`), 400);
    assert.equal(await status(`/v1/sandboxes/${sbx.sandboxId}/pty?cols=80&bogus=1&access_token=${TOKEN}`), 400);
  });

  it('works over a Unix socket: calls, streamed output, uploads, the PTY', { timeout: 15_000 }, async () => {
    const core = new FakeCore();
    const server = await buildServer(core, { token: TOKEN, sweepMs: 0 });
    const socketPath = path.join(tempDir('shoal-sdk-sock-'), 'api.sock');
    await server.listen({ path: socketPath });
    try {
      assert.throws(() => new Shoal({ token: TOKEN }), /exactly one of baseUrl and socketPath/);
      const client = new Shoal({ socketPath, token: TOKEN });
      const box = await client.sandboxes.create({ image: 'busybox' });
      assert.equal((await client.sandboxes.list()).length, 1);
      const result = await box.commands.run('echo over-unix');
      assert.equal(result.stdout, 'over-unix\n');
      let streamed = '';
      await box.commands.run('echo a; echo b', { onStdout: (d) => { streamed += d; } });
      assert.equal(streamed, 'a\nb\n');
      await box.files.write('/x.txt', 'unix body');
      assert.equal(await box.files.read('/x.txt'), 'unix body');
      let output = '';
      const pty = await box.pty.create({ cols: 80, rows: 24, cmd: 'read line; echo got:$line; exit 3', onData: (d) => { output += Buffer.from(d).toString(); } });
      pty.sendInput('via socket\n');
      assert.deepEqual(await pty.wait(), { exitCode: 3 });
      assert.equal(output, 'got:via socket\n');
      const bad = new Shoal({ socketPath, token: 'wrong-token-wrong-token' });
      await assert.rejects(bad.sandboxes.list(), (err: unknown) => err instanceof ShoalApiError && err.status === 401);
    } finally {
      await server.close();
    }
  });
});

describe('shoal serve listeners', () => {
  it('--socket: created 0600 (by umask, not chmod afterwards), printed on stdout, and a live one is not taken over', { timeout: 30_000 }, async () => {
    const state = tempDir('shoal-serve-sock-');
    const socket = path.join(state, 'run', 'api.sock');
    const env = { ...process.env, SHOAL_STATE_DIR: state };
    const serve = spawn(SHOAL_BIN, ['serve', '--socket', socket], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    try {
      const line = await new Promise<string>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error('shoal serve did not start')), 20_000);
        serve.stdout!.once('data', (d: Buffer) => { clearTimeout(timer); resolve(d.toString()); });
      });
      assert.deepEqual(JSON.parse(line), { socket, tokenFile: path.join(state, 'api-token') });
      const st = fs.lstatSync(socket);
      assert.ok(st.isSocket());
      assert.equal(st.mode & 0o777, 0o600);
      assert.equal(fs.statSync(path.dirname(socket)).mode & 0o777, 0o700);
      const token = fs.readFileSync(path.join(state, 'api-token'), 'utf8').trim();
      assert.equal((await new Shoal({ socketPath: socket, token }).sandboxes.list()).length, 0);
      const second = spawn(SHOAL_BIN, ['serve', '--socket', socket], { env, stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      second.stderr!.on('data', (d: Buffer) => { stderr += d.toString(); });
      const code = await new Promise<number | null>((resolve) => second.once('close', resolve));
      assert.equal(code, 125);
      assert.match(stderr, /another shoal serve is listening there/);
      assert.ok(fs.lstatSync(socket).isSocket(), 'the live socket is still there');
    } finally {
      serve.kill('SIGTERM');
      await new Promise((r) => serve.once('close', r));
    }
    // --listen and --socket together: one line, nothing started.
    const both = spawn(SHOAL_BIN, ['serve', '--socket', socket, '--listen', '127.0.0.1:0'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    both.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    assert.equal(await new Promise((resolve) => both.once('close', resolve)), 125);
    assert.match(err, /give --listen or --socket, not both/);
  });
});
