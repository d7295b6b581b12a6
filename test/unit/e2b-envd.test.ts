/**
 * envd in `shoal serve` against a fake core (local processes, files under a temp directory),
 * driven by the official e2b SDK's Sandbox (commands, pty, files, signed URLs) over real HTTP:
 * the Connect translation, the token and signature checks, the limits.
 */
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { AuthenticationError, CommandExitError, FileNotFoundError, FilesystemEventType, type FilesystemEvent, type Sandbox } from 'e2b';
import type { FastifyInstance } from 'fastify';
import { buildServer } from '../../src/api/server';
import { FakeCore } from '../helpers/fake-core';
import { makeE2bSandbox, sdkSandbox } from '../helpers/e2b-envd';

let app: FastifyInstance;
let core: FakeCore;
let base = '';
let sbx: Sandbox;
let token = '';
const NAME = 'e2b-unit-1';

async function until(check: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 50));
  }
}

before(async () => {
  core = new FakeCore();
  app = await buildServer(core, { token: 'unit-test-token-0123456789abcdef', sweepMs: 0 });
  await app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  const vm = await core.create({ name: NAME, image: 'busybox', cpus: 1, memoryMiB: 256, env: {}, cmd: [], network: 'none', publish: [] });
  token = makeE2bSandbox(core.vmDir(vm.id), NAME);
  sbx = sdkSandbox(base, NAME, token);
});

after(async () => {
  await app.close();
});

describe('envd process service', { timeout: 60_000 }, () => {
  it('runs a command with stdout/stderr callbacks, env and cwd (bash -l -c becomes sh -c without bash)', async () => {
    const out: string[] = [];
    const err: string[] = [];
    const r = await sbx.commands.run('echo "$A"; pwd; echo oops >&2', { envs: { A: 'from envs' }, cwd: '/tmp', onStdout: (d) => void out.push(d), onStderr: (d) => void err.push(d) });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'from envs\n/tmp\n');
    assert.equal(r.stderr, 'oops\n');
    assert.equal(out.join(''), r.stdout);
    assert.equal(err.join(''), 'oops\n');
    assert.ok(core.calls.some((c) => c.includes('/bin/sh -c cd --')), core.calls.join('\n'));
    // The fake's processes run as this (root) user: root is the container's own user here.
    assert.equal((await sbx.commands.run('id -u', { user: 'root' })).stdout, `${process.getuid!()}\n`);
  });

  it('a non-zero exit is CommandExitError', async () => {
    await assert.rejects(sbx.commands.run('echo bad >&2; exit 3'), (e: unknown) => e instanceof CommandExitError && e.exitCode === 3 && e.stderr === 'bad\n');
  });

  it('background + list + kill; sendStdin; connect by pid', async () => {
    // exec: the fake core's processes are host processes; a killed sh would leave its sleep behind.
    const h = await sbx.commands.run('exec sleep 30', { background: true });
    const listed = await sbx.commands.list();
    assert.ok(listed.some((p) => p.pid === h.pid && p.args.includes('exec sleep 30')), JSON.stringify(listed));
    assert.equal(await sbx.commands.kill(h.pid), true);
    await assert.rejects(h.wait(), (e: unknown) => e instanceof CommandExitError);
    await until(async () => !(await sbx.commands.list()).some((p) => p.pid === h.pid));
    assert.equal(await sbx.commands.kill(h.pid), false);

    const reader = await sbx.commands.run('read line; echo "got $line"', { background: true, stdin: true });
    const again = await sbx.commands.connect(reader.pid);
    await sbx.commands.sendStdin(reader.pid, 'abc\n');
    const [first, second] = await Promise.all([reader.wait(), again.wait()]);
    assert.equal(first.stdout, 'got abc\n');
    assert.equal(second.stdout, 'got abc\n');
  });

  it('StreamInput (a client stream) over HTTP/1.1: enveloped JSON messages in one request body', async () => {
    const h = await sbx.commands.run('read a; read b; echo "$a-$b"', { background: true, stdin: true });
    const envelope = (m: unknown): Buffer => {
      const json = Buffer.from(JSON.stringify(m));
      const head = Buffer.alloc(5);
      head.writeUInt32BE(json.length, 1);
      return Buffer.concat([head, json]);
    };
    const b64 = (t: string): string => Buffer.from(t).toString('base64');
    const body = Buffer.concat([
      envelope({ start: { process: { pid: h.pid } } }),
      envelope({ data: { input: { stdin: b64('one\n') } } }),
      envelope({ keepalive: {} }),
      envelope({ data: { input: { stdin: b64('two\n') } } }),
    ]);
    const r = await fetch(`${base}/e2b/envd/process.Process/StreamInput`, { method: 'POST', headers: { 'content-type': 'application/connect+json', 'connect-protocol-version': '1', 'e2b-sandbox-id': NAME, 'x-access-token': token }, body });
    assert.equal(r.status, 200, await r.clone().text());
    assert.equal((await h.wait()).stdout, 'one-two\n');
  });

  it('refuses bad input: relative-escaping cwd, a taken tag, an unknown user, a NUL in argv', async () => {
    await assert.rejects(sbx.commands.run('pwd', { cwd: '/tmp/../etc' }), /outside the container/);
    await assert.rejects(sbx.commands.run('true', { user: 'nobody' as 'user' }), /unknown user/);
    const call = (method: string, body: unknown) => fetch(`${base}/e2b/envd/process.Process/${method}`, { method: 'POST', headers: { 'content-type': 'application/json', 'e2b-sandbox-id': NAME, 'x-access-token': token }, body: JSON.stringify(body) });
    assert.equal((await call('SendSignal', { process: { pid: 999999 }, signal: 'SIGNAL_SIGKILL' })).status, 404);
    assert.equal((await call('SendSignal', { process: {}, signal: 'SIGNAL_SIGKILL' })).status, 400);
  });

  it('timeoutMs ends the process; 0 means no limit', async () => {
    await assert.rejects(sbx.commands.run('exec sleep 20', { timeoutMs: 500 }));
    await until(async () => (await sbx.commands.list()).length === 0);
    const r = await sbx.commands.run('sleep 1; echo done', { timeoutMs: 0 });
    assert.equal(r.stdout, 'done\n');
  });

  it('a PTY is a process: input, resize, output as pty data', async () => {
    const data: Buffer[] = [];
    const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => void data.push(Buffer.from(d)) });
    await sbx.pty.resize(pty.pid, { cols: 100, rows: 30 });
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('echo pty-$((40+2))\nexit\n'));
    await pty.wait().catch(() => undefined);
    assert.match(Buffer.concat(data).toString(), /pty-42/);
  });
});

describe('envd filesystem service and /files', { timeout: 60_000 }, () => {
  it('write, read, list with depth, exists, makeDir, rename, remove', async () => {
    const info = await sbx.files.write('/work/a.txt', 'hello');
    assert.equal(info.path, '/work/a.txt');
    assert.equal(await sbx.files.read('/work/a.txt'), 'hello');
    await sbx.files.write([{ path: '/work/b.txt', data: 'b' }, { path: '/work/sub/c.txt', data: 'c' }]);
    assert.deepEqual((await sbx.files.list('/work')).map((e) => e.name).sort(), ['a.txt', 'b.txt', 'sub']);
    assert.deepEqual((await sbx.files.list('/work', { depth: 2 })).map((e) => e.path).sort(), ['/work/a.txt', '/work/b.txt', '/work/sub', '/work/sub/c.txt']);
    assert.equal(await sbx.files.exists('/work/a.txt'), true);
    assert.equal(await sbx.files.exists('/work/nope'), false);
    assert.equal(await sbx.files.makeDir('/work/d1/d2'), true);
    assert.equal(await sbx.files.makeDir('/work/d1/d2'), false);
    const moved = await sbx.files.rename('/work/a.txt', '/work/d1/a.txt');
    assert.equal(moved.path, '/work/d1/a.txt');
    await sbx.files.remove('/work/d1');
    assert.equal(await sbx.files.exists('/work/d1'), false);
    await assert.rejects(sbx.files.read('/work/nope'), FileNotFoundError);
    const info2 = await sbx.files.getInfo('/work/b.txt');
    assert.equal(info2.size, 1);
    assert.equal(info2.type, 'file');
  });

  it('watchDir (inotify, the agent\'s watch module): create, rename away, a directory made and removed at once; recursive sees below', async () => {
    await sbx.files.makeDir('/watched');
    const events: FilesystemEvent[] = [];
    const handle = await sbx.files.watchDir('/watched', (e) => void events.push(e));
    const deep: FilesystemEvent[] = [];
    const recursive = await sbx.files.watchDir('/watched', (e) => void deep.push(e), { recursive: true });
    try {
      await sbx.files.write('/watched/new.txt', 'x');
      await sbx.files.makeDir('/watched/d1');
      await sbx.files.rename('/watched/new.txt', '/watched/d1/new.txt');
      await sbx.files.remove('/watched/d1');
      const has = (list: FilesystemEvent[], name: string, type: FilesystemEventType): boolean => list.some((e) => e.name === name && e.type === type);
      await until(() => has(events, 'new.txt', FilesystemEventType.CREATE) && has(events, 'new.txt', FilesystemEventType.REMOVE) &&
        has(events, 'd1', FilesystemEventType.CREATE) && has(events, 'd1', FilesystemEventType.REMOVE))
        .catch((err: Error) => { throw new Error(`${err.message}: ${JSON.stringify(events)}`); });
      // Below: a file in a directory made after the watch began (one that stays: d1's whole life
      // may pass before the agent's watch on it is in place, as with fsnotify).
      await sbx.files.write('/watched/d2/x.txt', 'x');
      await until(() => has(deep, 'd2/x.txt', FilesystemEventType.CREATE))
        .catch((err: Error) => { throw new Error(`${err.message}: ${JSON.stringify(deep)}`); });
      assert.ok(!events.some((e) => e.name.startsWith('d1/')), 'not recursive: nothing below d1');
    } finally {
      await handle.stop();
      await recursive.stop();
    }
  });

  it('watchDir whose events were dropped (by the guest or over the rate): the stream ends with an error, not silently', async () => {
    await sbx.files.makeDir('/dropped');
    const files = core.files as { watch: typeof core.files.watch };
    const real = files.watch;
    let closed = false;
    files.watch = async (_id, _p, _recursive, handlers) => {
      setTimeout(() => {
        handlers.onEvents([{ name: 'a', op: 'create' }]);
        handlers.onOverflow(42);
      }, 50);
      return { dirs: 1, close: () => { closed = true; } };
    };
    try {
      const events: FilesystemEvent[] = [];
      let exit: unknown;
      const handle = await sbx.files.watchDir('/dropped', (e) => void events.push(e), { onExit: (err) => { exit = err ?? 'ended'; } });
      try {
        await until(() => exit !== undefined);
        assert.match(String(exit), /42 watch events were dropped/);
        assert.deepEqual(events.map((e) => e.name), ['a']);
        assert.ok(closed, 'the guest watch is closed');
      } finally {
        await handle.stop();
      }
    } finally {
      files.watch = real;
    }
  });

  it('watchDir on an agent without watching (a refusal as an older agent answers it): the polling fallback', async () => {
    core.watchUnsupported = true;
    try {
      await sbx.files.makeDir('/polled');
      const events: FilesystemEvent[] = [];
      const handle = await sbx.files.watchDir('/polled', (e) => void events.push(e));
      try {
        await sbx.files.write('/polled/new.txt', 'x');
        await until(() => events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.CREATE));
      } finally {
        await handle.stop();
      }
    } finally {
      core.watchUnsupported = false;
    }
  });

  it('signed upload and download URLs (at the root /files), checked against the token', async () => {
    const up = await sbx.uploadUrl('/signed/up.txt');
    assert.ok(new URL(up).pathname === '/files' && new URL(up).searchParams.has('signature'), up);
    const form = new FormData();
    form.append('file', new Blob(['via url']), 'up.txt');
    const posted = await fetch(up, { method: 'POST', body: form });
    assert.equal(posted.status, 200, await posted.clone().text());
    const down = await sbx.downloadUrl('/signed/up.txt');
    assert.equal(await (await fetch(down)).text(), 'via url');
    const forged = new URL(down);
    forged.searchParams.set('path', '/signed/other.txt');
    assert.equal((await fetch(forged)).status, 401);
    const expired = await sbx.downloadUrl('/signed/up.txt', { useSignatureExpiration: -10 });
    assert.equal((await fetch(expired)).status, 401);
  });
});

describe('envd auth', { timeout: 30_000 }, () => {
  it('refuses a wrong token, a missing one, and a VM without E2B facts', async () => {
    const wrong = sdkSandbox(base, NAME, 'x'.repeat(32));
    await assert.rejects(wrong.commands.list(), (e: unknown) => e instanceof AuthenticationError || /unauthenticated|401/i.test(String(e)));
    await assert.rejects(wrong.files.read('/work/b.txt'), (e: unknown) => e instanceof AuthenticationError || /401|unauth/i.test(String(e)));
    const noToken = await fetch(`${base}/e2b/envd/process.Process/List`, { method: 'POST', headers: { 'content-type': 'application/json', 'e2b-sandbox-id': NAME }, body: '{}' });
    assert.equal(noToken.status, 401);
    await core.create({ name: 'cli-made', image: 'busybox', cpus: 1, memoryMiB: 256, env: {}, cmd: [], network: 'none', publish: [] });
    const cliMade = sdkSandbox(base, 'cli-made', token);
    await assert.rejects(cliMade.commands.list(), /E2B API|envd access token/);
    const calls = core.calls.length;
    await assert.rejects(cliMade.commands.run('echo no'));
    assert.equal(core.calls.length, calls, 'nothing ran');
  });

  it('the native API still wants its bearer token', async () => {
    assert.equal((await fetch(`${base}/v1/sandboxes`)).status, 401);
  });
});
