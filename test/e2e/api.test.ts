/**
 * `shoal serve` and `shoal mcp` end to end: the SDK against a real server and real VMs. Lean:
 * one 1-vCPU sandbox shared by the cases, one fork of 3 and one clone of a snapshot, and the MCP
 * server over stdio reusing the image cache the first sandbox filled. Cases run in order.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { CommandExitError, Shoal, ShoalApiError, type Sandbox } from '../../sdk/src/index';
import { busyboxImageForFile } from '../helpers/images';
import { SHOAL_BIN, ShoalSandbox, waitUntil } from '../helpers/shoal-cli';

const image = busyboxImageForFile();
const LOG_MAX_BYTES = 64 * 1024;

/** serve's resident memory (kB), from /proc. */
function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : 0;
}

/** GET over the socket, the response left to the caller (to read it, or to stall it). */
function getStream(pathAndQuery: string): Promise<http.IncomingMessage> {
  return new Promise((resolve, reject) => {
    const request = http.get({ socketPath, path: pathAndQuery, headers: { authorization: `Bearer ${token}` } }, resolve);
    request.on('error', reject);
  });
}
const cli = new ShoalSandbox('api');
let serve: ChildProcess;
let shoal: Shoal;
let sbx: Sandbox;
let socketPath = '';
let token = '';

/** Starts `shoal serve` on the test's state and socket (again after stopServe: same token). */
async function startServe(): Promise<void> {
  // The Unix socket (the default is /run/shoal/api.sock as root; the test keeps its own), and
  // container logs rotated at the smallest size, so the log-follow case sees many rotations.
  serve = spawn(SHOAL_BIN, ['serve', '--socket', path.join(cli.stateDir, 'api.sock'), '--image-dir', path.dirname(image.file)], { env: cli.env({ SHOAL_LOG_MAX_BYTES: String(LOG_MAX_BYTES) }), stdio: ['ignore', 'pipe', 'pipe'] });
  serve.stderr!.on('data', () => undefined);
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('shoal serve did not start')), 20_000);
    serve.stdout!.once('data', (d: Buffer) => { clearTimeout(timer); resolve(d.toString()); });
    serve.once('exit', (code) => reject(new Error(`shoal serve exited with ${code}`)));
  });
  const started = JSON.parse(line) as { socket: string; tokenFile: string };
  socketPath = started.socket;
  assert.equal(fs.statSync(socketPath).mode & 0o777, 0o600);
  assert.equal(fs.statSync(started.tokenFile).mode & 0o777, 0o600);
  token = fs.readFileSync(started.tokenFile, 'utf8').trim();
  shoal = new Shoal({ socketPath, token });
}

/** SIGTERM, and the wait for its exit (within 20 s, else SIGKILL). */
async function stopServe(): Promise<void> {
  const proc = serve;
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), 20_000);
  await exited;
  clearTimeout(timer);
}

before(async () => {
  await startServe();
  sbx = await shoal.sandboxes.create({ image: image.ref, memoryMiB: 512, metadata: { suite: 'api-e2e' }, timeoutMs: 900_000 });
});

after(async () => {
  serve?.kill('SIGTERM');
  cli.cleanup();
});

describe('shoal serve', { timeout: 1_200_000 }, () => {
  it('the sandbox runs and the CLI sees it (and execs in it)', async () => {
    assert.equal(sbx.info.state, 'running');
    assert.deepEqual(sbx.info.metadata, { suite: 'api-e2e' });
    const listed = await cli.vm(sbx.info.name);
    assert.equal(listed?.id, sbx.sandboxId);
    assert.equal(listed?.state, 'running');
    const viaCli = await cli.run(['exec', sbx.info.name, '--', 'echo', 'from the cli'], { timeoutMs: 60_000 });
    assert.equal(viaCli.stdout.toString(), 'from the cli\n');
  });

  it('runs commands buffered, with cwd, env and exit codes', async () => {
    const result = await sbx.commands.run('echo "$A" ; pwd; echo err >&2', { envs: { A: 'set by the api' }, cwd: '/tmp' });
    assert.equal(result.stdout, 'set by the api\n/tmp\n');
    assert.equal(result.stderr, 'err\n');
    await assert.rejects(sbx.commands.run('exit 4'), (err: unknown) => err instanceof CommandExitError && err.exitCode === 4);
  });

  it('streams output, and a dropped stream is resumed from the ring', async () => {
    const seen: string[] = [];
    const handle = await sbx.commands.run('for i in 1 2 3 4; do echo line$i; sleep 0.5; done', { background: true, onStdout: (d) => seen.push(d) });
    await waitUntil('the first line', 30_000, () => seen.length > 0);
    handle.disconnect();
    const again = await sbx.commands.connect(handle.pid);
    const result = await again.wait();
    assert.equal(result.stdout, 'line1\nline2\nline3\nline4\n', 'nothing lost across the drop');
  });

  it('feeds stdin and delivers signals', async () => {
    const cat = await sbx.commands.run(['cat'], { background: true, stdin: true });
    await cat.sendStdin('to stdin\n', { eof: true });
    assert.equal((await cat.wait()).stdout, 'to stdin\n');
    // In the guest OS the signal reaches the process itself.
    const sleeper = await sbx.commands.run(['sleep', '100'], { background: true, vm: true });
    await sleeper.kill('SIGTERM');
    await assert.rejects(sleeper.wait(), (err: unknown) => err instanceof CommandExitError && err.result.signal === 'SIGTERM');
    // In the container, as another user in another directory (the agent's direct crun exec,
    // as `shoal exec -u -w`): the signal reaches the container process itself, which is gone.
    // (Numeric: the test image has no passwd entry for nobody.)
    const who = await sbx.commands.run('id -u; id -g; pwd', { user: '65534:65534', cwd: '/tmp' });
    assert.equal(who.stdout, '65534\n65534\n/tmp\n');
    const boxed = await sbx.commands.run(['sleep', '1017'], { background: true, user: '65534:65534', cwd: '/tmp' });
    await waitUntil('the sleep in the container', 30_000, async () => (await sbx.commands.run('ps')).stdout.includes('sleep 1017'));
    await boxed.kill('SIGTERM');
    await assert.rejects(boxed.wait(), (err: unknown) => err instanceof CommandExitError && (err.result.signal === 'SIGTERM' || err.result.exitCode === 143));
    assert.doesNotMatch((await sbx.commands.run('ps')).stdout, /sleep 1017/);
  });

  it('a process outlives a restart of shoal serve: listed, its recent output readable; a kill ends a compound command entirely', async () => {
    const seen: string[] = [];
    const ticker = await sbx.commands.run('echo started; i=0; while true; do echo tick$i; i=$((i+1)); sleep 1; done', { background: true, onStdout: (d) => seen.push(d) });
    const compound = await sbx.commands.run(['sh', '-c', 'sleep 1000 & sleep 1001 & wait'], { background: true });
    await waitUntil('the ticker\'s first ticks', 30_000, () => seen.join('').includes('tick1'));
    ticker.disconnect();
    compound.disconnect();
    // serve goes away (its links to the guest with it) and comes back on the same state: its
    // memory is empty, the guest agent's table is not.
    await stopServe();
    await startServe();
    const back = await shoal.sandboxes.get(sbx.sandboxId);
    const listed = await back.commands.list();
    const tickerInfo = listed.find((p) => p.pid === ticker.pid);
    const compoundInfo = listed.find((p) => p.pid === compound.pid);
    assert.equal(tickerInfo?.running, true, `the ticker is listed after the restart: ${JSON.stringify(listed)}`);
    assert.deepEqual(compoundInfo?.cmd, ['sh', '-c', 'sleep 1000 & sleep 1001 & wait']);
    assert.equal(compoundInfo?.running, true);
    // Its recent output (from before the restart) is replayed, then new output follows.
    const again: string[] = [];
    const followed = await back.commands.connect(ticker.pid, { onStdout: (d) => again.push(d) });
    await waitUntil('the replay and a tick after the restart', 60_000, () => {
      const text = again.join('');
      const ticks = [...text.matchAll(/tick(\d+)/g)].map((m) => Number(m[1]));
      return text.startsWith('started\n') && ticks.length > 0 && Math.max(...ticks) > Math.max(...[...seen.join('').matchAll(/tick(\d+)/g)].map((m) => Number(m[1])));
    });
    // A fresh exec does not take an adopted pid.
    const fresh = await back.commands.run('echo fresh');
    assert.ok(fresh.pid > Math.max(ticker.pid, compound.pid), `pid ${fresh.pid} is new`);
    // The kill reaches the whole group: no sleep is left in the guest.
    await back.commands.kill(compound.pid, 'SIGKILL');
    const compoundEnd = await back.commands.connect(compound.pid);
    await assert.rejects(compoundEnd.wait(), (err: unknown) => err instanceof CommandExitError);
    await back.commands.kill(ticker.pid, 'SIGKILL');
    await assert.rejects(followed.wait(), (err: unknown) => err instanceof CommandExitError);
    const guest = await cli.run(['exec', '--vm', sbx.info.name, '--', 'sh', '-c', 'cat /proc/[0-9]*/cmdline | tr "\\0" " "'], { timeoutMs: 60_000 });
    assert.equal(guest.code, 0, guest.stderr.toString());
    assert.doesNotMatch(guest.stdout.toString(), /sleep 100[01]/, 'no sleep of the compound command is left');
    assert.doesNotMatch(guest.stdout.toString(), /while true/, 'the ticker is gone');
    sbx = back;
  });

  it('moves files through the agent, 10 MiB included, and refuses paths outside the container', async () => {
    await sbx.files.write('/work/hello.txt', 'hello from the api\n');
    assert.equal((await sbx.commands.run('cat /work/hello.txt')).stdout, 'hello from the api\n');
    await sbx.commands.run('echo written in the container > /work/from-container.txt');
    assert.equal(await sbx.files.read('/work/from-container.txt'), 'written in the container\n');
    const big = Buffer.alloc(10 * 1024 * 1024);
    for (let i = 0; i < big.length; i += 4) big.writeUInt32LE((i * 2654435761) >>> 0, i);
    const entry = await sbx.files.write('/work/big.bin', big);
    assert.equal(entry.size, big.length);
    const back = Buffer.from(await sbx.files.read('/work/big.bin', { format: 'bytes' }));
    assert.ok(back.equals(big), '10 MiB round trip');
    assert.equal(await sbx.files.makeDir('/work/sub/deeper'), true);
    await sbx.files.rename('/work/hello.txt', '/work/sub/hello.txt');
    assert.deepEqual((await sbx.files.list('/work')).map((e) => `${e.name}:${e.type}`).sort(), ['big.bin:file', 'from-container.txt:file', 'sub:dir']);
    await sbx.files.remove('/work/big.bin');
    assert.equal(await sbx.files.exists('/work/big.bin'), false);
    // A symlink in the container to / stays in the container.
    await sbx.commands.run('busybox ln -s / /work/escape');
    assert.equal(await sbx.files.read('/work/escape/etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    await assert.rejects(sbx.files.read('/work/../../etc/shadow'), (err: unknown) => err instanceof ShoalApiError && err.status === 400);
    await assert.rejects(sbx.files.read('/no/such/file'), (err: unknown) => err instanceof ShoalApiError && err.status === 404);
  });

  it('opens a PTY over a WebSocket, resizes it, and reports the exit code', async () => {
    let output = '';
    const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { output += Buffer.from(d).toString(); } });
    pty.sendInput('stty size\n');
    await waitUntil('the first size', 30_000, () => output.includes('24 80'));
    pty.resize({ cols: 100, rows: 30 });
    await new Promise((r) => setTimeout(r, 500));
    pty.sendInput('stty size\n');
    await waitUntil('the new size', 30_000, () => output.includes('30 100'));
    pty.sendInput('exit 3\n');
    assert.deepEqual(await pty.wait(), { exitCode: 3 });
  });

  it('answers 401, 400 and 404 over the wire', async () => {
    await assert.rejects(new Shoal({ socketPath, token: 'not-the-token-at-all' }).sandboxes.list(), (err: unknown) => err instanceof ShoalApiError && err.status === 401);
    await assert.rejects(sbx.fork({ count: 101 }), (err: unknown) => err instanceof ShoalApiError && err.status === 400 && /count must be <= 100/.test(err.message));
    await assert.rejects(shoal.sandboxes.get('000000000000'), (err: unknown) => err instanceof ShoalApiError && err.status === 404);
    assert.deepEqual((await sbx.logs()), [], 'the idle command wrote nothing');
  });

  it('snapshots, clones the snapshot, and forks 3 children that see the parent\'s file and not each other\'s writes', async () => {
    await sbx.files.write('/shared/parent.txt', 'written before the fork\n');
    const snap = await sbx.snapshot('api-snap');
    assert.equal(snap.parent, sbx.sandboxId);
    assert.ok(snap.pauseMs >= 0);
    assert.deepEqual((await shoal.snapshots.list()).map((s) => s.tag), ['api-snap']);
    const clone = await shoal.sandboxes.create({ snapshot: 'api-snap' });
    assert.equal(clone.info.parentId, sbx.sandboxId);
    assert.equal(await clone.files.read('/shared/parent.txt'), 'written before the fork\n');
    await clone.kill();
    await shoal.snapshots.remove('api-snap');

    const children = await sbx.fork({ count: 3, metadata: { role: 'child' } });
    assert.equal(children.length, 3);
    const kids = children.map((c) => {
      assert.ok(!(c instanceof Error), String(c));
      return c as Sandbox;
    });
    for (const [i, kid] of kids.entries()) {
      assert.equal(kid.info.parentId, sbx.sandboxId);
      assert.equal(await kid.files.read('/shared/parent.txt'), 'written before the fork\n');
      await kid.files.write('/shared/own.txt', `child ${i}\n`);
    }
    for (const [i, kid] of kids.entries()) assert.equal((await kid.commands.run('cat /shared/own.txt')).stdout, `child ${i}\n`);
    assert.equal(await sbx.files.exists('/shared/own.txt'), false, 'the parent does not see its children\'s writes');
    assert.equal((await shoal.sandboxes.list({ metadata: { role: 'child' } })).length, 3);

    // Timeout expiry: one child's lifetime is cut to a second.
    await kids[2]!.setTimeout(1000);
    await waitUntil('the expired child to stop', 30_000, async () => !(await kids[2]!.isRunning()));
    // Removal kills the supervisor first and then cleans up and drops the record, so the CLI can
    // list it as dead for a moment after the API stopped calling it running (CI saw that once).
    await waitUntil('the expired child to be gone for the CLI too', 30_000, async () => (await cli.vm(kids[2]!.info.name)) === undefined);
    // Pause and resume (a child, so the suite's sandbox keeps its id): the VM goes, the sandbox
    // is listed as paused, and it comes back with its files and its running process, which the
    // API lists again (the guest agent's kept table is in the snapshot).
    const bg = await kids[0]!.commands.run('sleep 4242', { background: true });
    await kids[0]!.pause();
    assert.equal(kids[0]!.info.state, 'paused');
    assert.equal(await cli.vm(kids[0]!.info.name), undefined, 'no VM while paused');
    assert.deepEqual((await shoal.sandboxes.list({ metadata: { role: 'child' } })).map((s) => s.state).sort(), ['paused', 'running']);
    const resumed = await kids[0]!.resume();
    assert.deepEqual([resumed.info.name, resumed.info.state], [kids[0]!.info.name, 'running']);
    assert.equal((await resumed.commands.run('cat /shared/own.txt')).stdout, 'child 0\n');
    assert.match((await resumed.commands.run('ps')).stdout, /sleep 4242/);
    assert.ok((await resumed.commands.list()).some((p) => p.pid === bg.pid && p.running), 'the API lists the process started before the pause');
    await resumed.kill();
    await kids[1]!.kill();
  });

  it('follows a flooding container\'s log across rotations: well-formed records, a stalled follower, serve\'s memory bounded', async (t) => {
    // 0x0f-filled chunks: as a length field (after a rotation, at a stale offset) 0x0f0f0f0f is 241 MiB.
    const flood = await shoal.sandboxes.create({ image: image.ref, memoryMiB: 512, timeoutMs: 900_000, cmd: ['sh', '-c', 'i=0; while [ $i -lt 1500 ]; do head -c 16384 /dev/zero | tr "\\000" "\\017"; i=$((i+1)); done; echo END >&2; sleep 3600'] });
    const baseline = rssKiB(serve.pid!);
    let peak = baseline;
    const sampler = setInterval(() => { peak = Math.max(peak, rssKiB(serve.pid!)); }, 100);
    const stalled = await getStream(`/v1/sandboxes/${flood.sandboxId}/logs?follow=1`);
    stalled.pause(); // never read: serve must wait for it, not buffer for it
    const reader = await getStream(`/v1/sandboxes/${flood.sandboxId}/logs?follow=1`);
    assert.equal(reader.statusCode, 200);
    let records = 0;
    let bytes = 0;
    let sawEnd = false;
    const bad: string[] = [];
    let pending = '';
    const deadline = Date.now() + 240_000;
    try {
      await new Promise<void>((resolve, reject) => {
        reader.setEncoding('utf8');
        reader.on('data', (chunk: string) => {
          pending += chunk;
          let end: number;
          while ((end = pending.indexOf('\n\n')) >= 0) {
            const event = pending.slice(0, end);
            pending = pending.slice(end + 2);
            // A comment block (the 15 s heartbeat) is no event: every SSE client skips it.
            if (event.split('\n').every((line) => line.startsWith(':'))) continue;
            const type = /^event: (.*)$/m.exec(event)?.[1];
            const data = /^data: (.*)$/m.exec(event)?.[1] ?? '';
            if (type === 'stdout' || type === 'stderr') {
              const text = (JSON.parse(data) as { data: string }).data;
              if (type === 'stderr' && text === 'END\n') {
                sawEnd = true;
                continue;
              }
              records += 1;
              bytes += text.length;
              if (!/^\x0f+$/.test(text) || text.length > 1024 * 1024) bad.push(`${type} of ${text.length}: ${JSON.stringify(text.slice(0, 20))}`);
            } else bad.push(`${type}: ${data.slice(0, 200)}`);
          }
          // The container's last write (after 24 MiB) is never rotated away: the follow must reach it.
          if (sawEnd || bad.length > 0 || Date.now() > deadline) resolve();
        });
        reader.on('error', reject);
        reader.on('end', () => resolve());
        // A follow that stops sending (a stale offset, a dead route) fails the count below instead of hanging.
        setTimeout(resolve, deadline - Date.now()).unref();
      });
    } finally {
      clearInterval(sampler);
      reader.destroy();
      stalled.destroy();
    }
    t.diagnostic(`reader: ${bytes} bytes in ${records} records; serve RSS ${Math.round(baseline / 1024)} MiB -> peak ${Math.round(peak / 1024)} MiB`);
    try {
      assert.deepEqual(bad, [], 'every event is a record of the container\'s bytes');
      assert.ok(sawEnd, `the follow reached the container's last line (it saw ${bytes} bytes in ${records} records)`);
      // 1500 chunks of 16 KiB through 64 KiB files: a follower that polls slower than the files
      // rotate loses what was rotated away twice (so how much it sees depends on the machine's
      // speed), but it must have gone on across many rotations, not stopped at the first.
      assert.ok(bytes >= 1024 * 1024, `the reader saw ${bytes} bytes in ${records} records`);
      assert.ok(peak - baseline < 96 * 1024, `serve's RSS grew by ${Math.round((peak - baseline) / 1024)} MiB (from ${Math.round(baseline / 1024)} MiB)`);
    } finally {
      await flood.kill(); // a failure here must not leave it for the next case
    }
  });

  it('shoal mcp over stdio: lists tools, creates, runs, forks', async () => {
    const transport = new StdioClientTransport({ command: SHOAL_BIN, args: ['mcp', '--image-dir', path.dirname(image.file)], env: cli.env() as Record<string, string>, stderr: 'ignore' });
    const client = new Client({ name: 'e2e', version: '1' });
    await client.connect(transport);
    try {
      const text = (r: unknown): string => (r as { content: Array<{ text: string }> }).content[0]!.text;
      const { tools } = await client.listTools();
      assert.ok(['create_sandbox', 'run_command', 'fork_sandbox', 'read_file', 'write_file'].every((n) => tools.some((t) => t.name === n)));
      const created = JSON.parse(text(await client.callTool({ name: 'create_sandbox', arguments: { image: image.ref, memoryMiB: 512 } }, undefined, { timeout: 300_000 }))) as { sandboxId: string };
      const ran = JSON.parse(text(await client.callTool({ name: 'run_command', arguments: { sandboxId: created.sandboxId, cmd: 'echo via mcp' } }, undefined, { timeout: 120_000 }))) as { stdout: string };
      assert.equal(ran.stdout, 'via mcp\n');
      // The first sandbox booted (the one made here came from the image cache, which cannot be forked).
      const forked = (await client.callTool({ name: 'fork_sandbox', arguments: { sandboxId: sbx.sandboxId, count: 1 } }, undefined, { timeout: 300_000 })).structuredContent as { children: Array<{ sandbox: { sandboxId: string } }> };
      assert.equal(forked.children.length, 1);
      for (const id of [created.sandboxId, forked.children[0]!.sandbox.sandboxId]) {
        assert.deepEqual((await client.callTool({ name: 'remove_sandbox', arguments: { sandboxId: id } }, undefined, { timeout: 120_000 })).structuredContent, { removed: id });
      }
    } finally {
      await client.close();
    }
  });

  it('delete removes the VM; nothing of it is left', async () => {
    await sbx.kill();
    await assert.rejects(shoal.sandboxes.get(sbx.sandboxId), (err: unknown) => err instanceof ShoalApiError && err.status === 404);
    assert.deepEqual(await cli.json(['ls', '--json']), []);
    // serve itself names the state directory (its --socket is in it): every other process is gone.
    await waitUntil('no process of the suite', 10_000, () => cli.processes().filter((pid) => pid !== serve.pid).length === 0);
    assert.deepEqual(cli.leftovers().filter((f) => !f.startsWith('names') && f !== 'api-token' && f !== 'api.sock'), []);
  });
});
