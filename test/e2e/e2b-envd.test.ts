/**
 * envd in `shoal serve` end to end: the official e2b SDK's Sandbox (aimed at serve's /e2b/envd,
 * as E2B_SANDBOX_URL would aim it) against one real busybox VM: commands with their events and
 * exit codes, a background command listed and killed (and gone in the container), stdin, a PTY,
 * files, watchDir, signed upload/download URLs. The VM is made by the CLI and given E2B facts
 * here (the sandbox API that normally writes them is tested elsewhere). Cases run in order.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CommandExitError, FilesystemEventType, type FilesystemEvent, type Sandbox } from 'e2b';
import { makeE2bSandbox, sdkSandbox } from '../helpers/e2b-envd';
import { busyboxImageForFile } from '../helpers/images';
import { SHOAL_BIN, ShoalSandbox, waitUntil } from '../helpers/shoal-cli';

const image = busyboxImageForFile();
const NAME = 'envd-e2e';
const cli = new ShoalSandbox('envd');
let serve: ChildProcess;
let sbx: Sandbox;

before(async () => {
  serve = spawn(SHOAL_BIN, ['serve', '--listen', '127.0.0.1:0'], { env: cli.env(), stdio: ['ignore', 'pipe', 'pipe'] });
  serve.stderr!.on('data', () => undefined);
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('shoal serve did not start')), 20_000);
    serve.stdout!.once('data', (d: Buffer) => { clearTimeout(timer); resolve(d.toString()); });
    serve.once('exit', (code) => reject(new Error(`shoal serve exited with ${code}`)));
  });
  const { url } = JSON.parse(line) as { url: string };
  const run = await cli.run(['run', '-d', '--name', NAME, '--cpus', '1', '--memory', '512', image.ref, '--', 'sleep', '2147483647'], { timeoutMs: 240_000 });
  assert.equal(run.code, 0, run.stderr.toString());
  const vm = await cli.vm(NAME);
  assert.ok(vm, 'the VM is listed');
  const vmDir = path.join(cli.stateDir, 'vms', vm.id);
  assert.ok(fs.existsSync(vmDir), vmDir);
  const token = makeE2bSandbox(vmDir, NAME);
  sbx = sdkSandbox(url, NAME, token);
});

after(async () => {
  serve?.kill('SIGTERM');
  cli.cleanup();
});

/** The container's processes whose command line has `marker` (busybox ps). */
async function psWith(marker: string): Promise<string[]> {
  const r = await sbx.commands.run('ps -o pid,args', { timeoutMs: 30_000 });
  return r.stdout.split('\n').filter((l) => l.includes(marker) && !l.includes('ps -o'));
}

describe('envd on a real VM (e2b SDK)', { timeout: 600_000 }, () => {
  it('runs a command: stdout/stderr events, env, cwd, exit codes (sh -c: busybox has no bash)', async () => {
    const out: string[] = [];
    const err: string[] = [];
    const r = await sbx.commands.run('echo "$A"; pwd; echo oops >&2', { envs: { A: 'from envs' }, cwd: '/tmp', onStdout: (d) => void out.push(d), onStderr: (d) => void err.push(d) });
    assert.equal(r.stdout, 'from envs\n/tmp\n');
    assert.equal(r.stderr, 'oops\n');
    assert.equal(out.join(''), r.stdout);
    assert.equal(err.join(''), 'oops\n');
    await assert.rejects(sbx.commands.run('exit 7'), (e: unknown) => e instanceof CommandExitError && e.exitCode === 7);
    const root = await sbx.commands.run('id -u', { user: 'root' });
    assert.equal(root.stdout, '0\n');
  });

  it('background + list + kill: the process is gone in the container', async () => {
    const h = await sbx.commands.run('sleep 3601', { background: true });
    await waitUntil('the sleep runs', 30_000, async () => (await psWith('sleep 3601')).length > 0);
    assert.ok((await sbx.commands.list()).some((p) => p.pid === h.pid));
    assert.equal(await sbx.commands.kill(h.pid), true);
    await assert.rejects(h.wait(), (e: unknown) => e instanceof CommandExitError);
    await waitUntil('the sleep is gone', 30_000, async () => (await psWith('sleep 3601')).length === 0);
    assert.ok(!(await sbx.commands.list()).some((p) => p.pid === h.pid));
  });

  it('sendStdin reaches a background command', async () => {
    const h = await sbx.commands.run('read line; echo "got $line"', { background: true, stdin: true });
    await sbx.commands.sendStdin(h.pid, 'hello\n');
    const r = await h.wait();
    assert.equal(r.stdout, 'got hello\n');
  });

  it('a PTY: input, resize, output', async () => {
    const data: Buffer[] = [];
    const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => void data.push(Buffer.from(d)) });
    await sbx.pty.resize(pty.pid, { cols: 120, rows: 40 });
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; echo pty-$((40+2)); exit\n'));
    await pty.wait().catch(() => undefined);
    const text = Buffer.concat(data).toString();
    assert.match(text, /pty-42/);
    assert.match(text, /40 120/);
  });

  it('files: write, read, list, exists, makeDir, rename, remove, watchDir', async () => {
    await sbx.files.makeDir('/data');
    const events: FilesystemEvent[] = [];
    let exit: unknown;
    const watch = await sbx.files.watchDir('/data', (e) => void events.push(e), { onExit: (err) => { exit = err ?? 'ended'; } });
    const deep: FilesystemEvent[] = [];
    const recursive = await sbx.files.watchDir('/data', (e) => void deep.push(e), { recursive: true });
    const has = (name: string, ...types: FilesystemEventType[]): boolean => events.some((e) => e.name === name && types.includes(e.type));
    try {
      // inotify in the guest: nothing waits for the watcher between these operations.
      await sbx.files.write('/data/a.txt', 'hello');
      assert.equal(await sbx.files.read('/data/a.txt'), 'hello');
      await sbx.files.write([{ path: '/data/b.txt', data: 'b' }, { path: '/data/sub/c.txt', data: 'c' }]);
      assert.deepEqual((await sbx.files.list('/data')).map((e) => e.name).sort(), ['a.txt', 'b.txt', 'sub']);
      assert.deepEqual((await sbx.files.list('/data', { depth: 2 })).map((e) => e.path).sort(), ['/data/a.txt', '/data/b.txt', '/data/sub', '/data/sub/c.txt']);
      assert.equal(await sbx.files.exists('/data/a.txt'), true);
      assert.equal(await sbx.files.exists('/data/none'), false);
      assert.equal(await sbx.files.makeDir('/data/d1/d2'), true);
      assert.equal((await sbx.files.rename('/data/a.txt', '/data/d1/a.txt')).path, '/data/d1/a.txt');
      await sbx.files.remove('/data/d1');
      assert.equal(await sbx.files.exists('/data/d1'), false);
      const seen = (await sbx.commands.run('cat /data/b.txt /data/sub/c.txt')).stdout;
      assert.equal(seen, 'bc');
      // Made and removed by the container within microseconds: only inotify can see it (no poll could).
      await sbx.commands.run('mkdir /data/e1 && rmdir /data/e1');
      await waitUntil('watch events', 15_000, () => has('a.txt', FilesystemEventType.CREATE) && has('a.txt', FilesystemEventType.REMOVE, FilesystemEventType.RENAME) &&
        has('d1', FilesystemEventType.CREATE) && has('d1', FilesystemEventType.REMOVE) && has('e1', FilesystemEventType.CREATE) && has('e1', FilesystemEventType.REMOVE))
        .catch((err: Error) => { throw new Error(`${err.message}: ${JSON.stringify(events)}, exit ${String(exit)}`); });
      assert.ok(!events.some((e) => e.name.includes('.shoal-')), 'the agent\'s temp files are not reported');
      // Recursive: a file in a directory made after the watch began (sub, made by the write).
      await waitUntil('sub/c.txt in the recursive watch', 15_000, () => deep.some((e) => e.name === 'sub/c.txt' && e.type === FilesystemEventType.CREATE))
        .catch((err: Error) => { throw new Error(`${err.message}: ${JSON.stringify(deep)}`); });
      assert.ok(!events.some((e) => e.name.startsWith('sub/')), 'the plain watch stays at its level');
    } finally {
      await recursive.stop();
      await watch.stop();
    }
  });

  it('signed upload and download URLs', async () => {
    const form = new FormData();
    form.append('file', new Blob(['via url']), 'up.txt');
    const posted = await fetch(await sbx.uploadUrl('/data/up.txt'), { method: 'POST', body: form });
    assert.equal(posted.status, 200, await posted.clone().text());
    assert.equal(await (await fetch(await sbx.downloadUrl('/data/up.txt'))).text(), 'via url');
    const forged = new URL(await sbx.downloadUrl('/data/up.txt'));
    forged.searchParams.set('path', '/etc/passwd');
    assert.equal((await fetch(forged)).status, 401);
  });
});
