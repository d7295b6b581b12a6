/**
 * The official `e2b` SDK (2.51.0) drives a real `shoal serve` and real VMs, configured only by
 * E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY (and E2B_DOMAIN). Lean: one template boot (the
 * alias's first create), then clones: a second create, a pause and connect, a fork of 2 and a
 * sandbox from a snapshot. What runs inside is checked with the CLI's exec (envd's commands are
 * another part of the API). Cases run in order and share the first sandbox.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import { AuthenticationError, CommandExitError, NotFoundError, Sandbox } from 'e2b';
import os from 'node:os';
import path from 'node:path';
import { buildBusyboxDockerArchive } from '../helpers/images';
import { SHOAL_BIN, ShoalSandbox } from '../helpers/shoal-cli';

const imageDir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-e2b-img-'));
const cli = new ShoalSandbox('e2b');
let serve: ChildProcess;
let sbx: Sandbox;
let servePort = 0;

/** GET through serve's getHost proxy: the Host names the sandbox and the port. */
function viaHost(host: string, urlPath: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port: servePort, path: urlPath, headers: { host }, timeout: 60_000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (d: Buffer) => chunks.push(d));
      res.on('end', () => resolve({ status: res.statusCode!, body: Buffer.concat(chunks).toString() }));
    });
    req.on('timeout', () => req.destroy(new Error('no answer through the proxy in 60 s')));
    req.on('error', reject);
  });
}

/** Runs a shell command in the sandbox's container through the CLI; its stdout. */
async function sh(sandboxId: string, command: string): Promise<string> {
  const result = await cli.run(['exec', sandboxId, '--', 'sh', '-c', command], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, `exec in ${sandboxId}: ${result.stderr.toString()}`);
  return result.stdout.toString();
}

before(async () => {
  // Built before serve starts: --template checks the archive exists.
  const image = `docker-archive:${await buildBusyboxDockerArchive(path.join(imageDir, 'busybox.tar'))}`;
  serve = spawn(SHOAL_BIN, ['serve', '--listen', '127.0.0.1:0', '--template', `busy=${image}`, '--domain', 'sbx.test'], { env: cli.env(), stdio: ['ignore', 'pipe', 'pipe'] });
  serve.stderr!.on('data', (d: Buffer) => { if (process.env.SHOAL_E2E_DEBUG) process.stderr.write(d); });
  const line = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('shoal serve did not start')), 20_000);
    serve.stdout!.once('data', (d: Buffer) => { clearTimeout(timer); resolve(d.toString()); });
    serve.once('exit', (code) => reject(new Error(`shoal serve exited with ${code}`)));
  });
  const started = JSON.parse(line) as { url: string; tokenFile: string };
  const token = fs.readFileSync(started.tokenFile, 'utf8').trim();
  servePort = Number(new URL(started.url).port);
  // The SDK's own configuration, as a user sets it: nothing else is passed to it below.
  process.env.E2B_API_URL = `${started.url}/e2b`;
  process.env.E2B_SANDBOX_URL = `${started.url}/e2b/envd`;
  process.env.E2B_API_KEY = `e2b_${token}`;
  process.env.E2B_DOMAIN = 'sbx.test';
});

after(async () => {
  serve?.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 500));
  cli.cleanup();
  fs.rmSync(imageDir, { recursive: true, force: true });
});

describe('the e2b SDK against shoal serve', { timeout: 600_000 }, () => {
  it('creates from a template alias (one boot), then from the same alias again (a clone)', async () => {
    const t0 = Date.now();
    sbx = await Sandbox.create('busy', { metadata: { suite: 'e2b-e2e', role: 'first' }, envs: { GREETING: 'from-create' }, timeoutMs: 600_000, requestTimeoutMs: 300_000 });
    const firstMs = Date.now() - t0;
    assert.equal((await cli.vm(sbx.sandboxId))?.state, 'running');
    const t1 = Date.now();
    const second = await Sandbox.create('busy', { metadata: { suite: 'e2b-e2e', role: 'second' }, requestTimeoutMs: 120_000 });
    const cloneMs = Date.now() - t1;
    assert.ok(cloneMs < firstMs, `a clone (${cloneMs} ms) is faster than the template's boot (${firstMs} ms)`);
    assert.equal(await sh(second.sandboxId, 'echo cloned'), 'cloned\n');
    assert.equal(await second.kill(), true);
    assert.equal(sbx.getHost(3000), `3000-${sbx.sandboxId}.sbx.test`);
  });

  it('commands and files through the created sandbox\'s own envd (the SDK\'s whole chain: API, then envd)', async () => {
    const out: string[] = [];
    const err: string[] = [];
    const result = await sbx.commands.run('echo "$GREETING"; echo to-stderr >&2', { onStdout: (d) => { out.push(d); }, onStderr: (d) => { err.push(d); } });
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout, 'from-create\n', 'create\'s envs reach envd\'s processes');
    assert.equal(out.join(''), 'from-create\n');
    assert.equal(err.join(''), 'to-stderr\n');
    await assert.rejects(sbx.commands.run('exit 3'), (e: unknown) => e instanceof CommandExitError && e.exitCode === 3);
    await sbx.files.write('/tmp/e2b-note.txt', 'written by the SDK');
    assert.equal(await sbx.files.read('/tmp/e2b-note.txt'), 'written by the SDK');
    assert.equal(await sh(sbx.sandboxId, 'cat /tmp/e2b-note.txt'), 'written by the SDK');
  });

  it('getInfo, list with a metadata query, setTimeout', async () => {
    const info = await Sandbox.getInfo(sbx.sandboxId);
    assert.equal(info.state, 'running');
    assert.equal(info.templateId, 'busy');
    assert.deepEqual(info.metadata, { suite: 'e2b-e2e', role: 'first' });
    const listed = await Sandbox.list({ query: { metadata: { role: 'first' } } }).nextItems();
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId]);
    await sbx.setTimeout(1_200_000);
    const later = await sbx.getInfo();
    assert.ok(Math.abs(later.endAt.getTime() - (Date.now() + 1_200_000)) < 30_000);
  });

  it('getHost, then pause and Sandbox.connect: same id, files, memory and the listening server intact', async () => {
    await sh(sbx.sandboxId, 'echo on-disk > /root/disk.txt; echo in-memory > /dev/shm/mem.txt; mkdir -p /www; echo served > /www/index.html; httpd -p 8080 -h /www');
    const served = await viaHost(sbx.getHost(8080), '/index.html');
    assert.deepEqual(served, { status: 200, body: 'served\n' });
    // A background command from before the pause: the guest agent keeps it, as envd does.
    const beats: string[] = [];
    const beating = await sbx.commands.run('echo before-pause; i=0; while true; do echo beat$i; i=$((i+1)); sleep 1; done', { background: true, timeoutMs: 0, onStdout: (d) => { beats.push(d); } });
    const deadline = Date.now() + 30_000;
    while (!beats.join('').includes('beat1') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    assert.match(beats.join(''), /beat1/);
    await beating.disconnect();
    assert.equal(await sbx.pause({ requestTimeoutMs: 120_000 }), true);
    assert.equal(await cli.vm(sbx.sandboxId), undefined, 'no VM while paused');
    // Other local users: the paused sandbox's record (its tokens) is the server's alone.
    const pausedDir = path.join(cli.stateDir, 'e2b', 'paused');
    const pausedFiles = fs.readdirSync(pausedDir);
    assert.ok(pausedFiles.length > 0);
    for (const f of pausedFiles) assert.equal(fs.statSync(path.join(pausedDir, f)).mode & 0o077, 0, `${f} is private`);
    assert.equal(fs.statSync(cli.stateDir).mode & 0o077, 0, 'the state root is private');
    const paused = await Sandbox.list({ query: { state: ['paused'] } }).nextItems();
    assert.deepEqual(paused.map((s) => s.sandboxId), [sbx.sandboxId]);
    const back = await Sandbox.connect(sbx.sandboxId, { requestTimeoutMs: 120_000 });
    assert.equal(back.sandboxId, sbx.sandboxId);
    assert.equal((await back.getInfo()).state, 'running');
    assert.equal(await sh(sbx.sandboxId, 'cat /root/disk.txt /dev/shm/mem.txt'), 'on-disk\nin-memory\n');
    assert.deepEqual(await viaHost(back.getHost(8080), '/index.html'), { status: 200, body: 'served\n' }, 'the server still listens after the resume');
    // The command from before the pause is listed, and connect replays its recent output, then new output.
    const listed = await back.commands.list();
    assert.ok(listed.some((p) => p.pid === beating.pid), `pid ${beating.pid} is listed after the resume: ${JSON.stringify(listed.map((p) => p.pid))}`);
    const lastBefore = Math.max(...[...beats.join('').matchAll(/beat(\d+)/g)].map((m) => Number(m[1])));
    const again: string[] = [];
    const reconnected = await back.commands.connect(beating.pid, { timeoutMs: 0, onStdout: (d) => { again.push(d); } });
    const until = Date.now() + 60_000;
    const newest = (): number => Math.max(-1, ...[...again.join('').matchAll(/beat(\d+)/g)].map((m) => Number(m[1])));
    while (newest() <= lastBefore && Date.now() < until) await new Promise((r) => setTimeout(r, 200));
    assert.match(again.join(''), /^before-pause\nbeat0\n/, 'the recent output is replayed');
    assert.ok(newest() > lastBefore, `new output after the resume (beat${newest()} after beat${lastBefore})`);
    assert.equal(await back.commands.kill(beating.pid), true);
    await assert.rejects(reconnected.wait(), CommandExitError);
    assert.doesNotMatch(await sh(sbx.sandboxId, 'ps'), /while true/, 'killed in the guest');
  });

  it('fork({count: 2}): two running children with their own ids and the parent\'s files', async () => {
    const children = (await sbx.fork({ count: 2, requestTimeoutMs: 180_000 } as never)) as unknown as Array<Sandbox | Error>;
    assert.equal(children.length, 2);
    for (const child of children) {
      assert.ok(child instanceof Sandbox, String(child));
      assert.notEqual(child.sandboxId, sbx.sandboxId);
      assert.equal(await sh(child.sandboxId, 'cat /root/disk.txt'), 'on-disk\n');
      await child.kill();
    }
  });

  it('createSnapshot, then a sandbox from it; deleteSnapshot', async () => {
    const snap = await sbx.createSnapshot({ requestTimeoutMs: 120_000 });
    const fromSnap = await Sandbox.create(snap.snapshotId, { requestTimeoutMs: 120_000 });
    assert.equal(await sh(fromSnap.sandboxId, 'cat /dev/shm/mem.txt'), 'in-memory\n');
    await fromSnap.kill();
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId), true);
  });

  it('Sandbox.kill, then NotFoundError; a wrong key is an AuthenticationError', async () => {
    assert.equal(await Sandbox.kill(sbx.sandboxId), true);
    await assert.rejects(Sandbox.getInfo(sbx.sandboxId), NotFoundError);
    assert.equal(await cli.vm(sbx.sandboxId), undefined);
    await assert.rejects(Sandbox.list({ apiKey: 'e2b_0123456789abcdef0123456789abcdef' }).nextItems(), AuthenticationError);
  });
});
