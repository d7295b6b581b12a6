/**
 * `shoal cp` through the real CLI code, control client and mux against a fake supervisor whose
 * "container" is a host directory (its exec handler plays podman cp with the system tar): a tree
 * with a symlink, modes, an mtime and a 20 MiB file goes in and comes back out through flow
 * control, lands where podman cp puts it, leaves no staging directory, and a missing path is one
 * `shoal: cp:` line. The guest half (podman cp itself) is covered by test/e2e/podman-parity.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { cpCommand } from '../../src/cli/commands/cp';
import { ControlServer, sendEvent } from '../../src/control/server';
import type { ExecControlRequest } from '../../src/control/messages';
import { STDERR, STDIN, STDOUT, type Channel } from '../../src/protocol/mux';
import { StateStore } from '../../src/state/store';
import { vmFiles } from '../../src/state/vm-files';
import { processStartTime } from '../../src/util/process';
import { ShoalError } from '../../src/util/errors';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-cpu-'));
const containerRoot = path.join(root, 'container');
const host = path.join(root, 'host');
let server: ControlServer | undefined;
const previousState = process.env.SHOAL_STATE_DIR;

/** The fake podman cp: `main:PATH -` tars PATH out; the copy-in script untars stdin into its destination. */
function fakeExec(channel: Channel, request: ExecControlRequest): void {
  const finish = (code: number): void => {
    sendEvent(channel, { type: 'exit', code });
    channel.close();
  };
  if (request.argv[0] === 'podman' && request.argv[1] === 'cp' && request.argv[3] === '-') {
    channel.setDataHandler(() => undefined);
    const inContainer = path.join(containerRoot, request.argv[2]!.replace(/^main:/, ''));
    if (!fs.existsSync(inContainer)) {
      void channel.write(STDERR, Buffer.from(`Error: "${request.argv[2]!.slice(5)}" could not be found on container main: no such file or directory\n`)).then(() => finish(125));
      return;
    }
    const tar = spawn('tar', ['-c', '-f', '-', '-C', path.dirname(inContainer), path.basename(inContainer)], { stdio: ['ignore', 'pipe', 'inherit'] });
    void (async () => {
      for await (const chunk of tar.stdout) await channel.write(STDOUT, chunk as Buffer);
      tar.on('close', (code) => finish(code ?? 1));
      if (tar.exitCode !== null) finish(tar.exitCode);
    })();
    return;
  }
  // The copy-in script: sh -c SCRIPT shoal-cp ENTRY main DEST (DEST an existing directory here).
  assert.equal(request.argv[0], 'sh');
  assert.equal(request.interactive, true);
  const dest = path.join(containerRoot, request.argv[6]!);
  const tar = spawn('tar', ['-x', '-f', '-', '-C', dest], { stdio: ['pipe', 'ignore', 'inherit'] });
  channel.setDataHandler((stream, data) => {
    if (stream !== STDIN) return;
    if (!tar.stdin.write(data)) return new Promise<void>((r) => tar.stdin.once('drain', r));
    return;
  });
  channel.on('eof', () => tar.stdin.end());
  tar.on('close', (code) => finish(code ?? 1));
}

before(async () => {
  process.env.SHOAL_STATE_DIR = path.join(root, 'state');
  const store = new StateStore();
  const id = store.newId();
  store.claimName('web', id);
  store.write({
    id, backend: 'qemu', accel: 'tcg', state: 'running', createdAt: new Date().toISOString(),
    supervisorPid: process.pid, supervisorStartTime: processStartTime(process.pid)!,
    config: { name: 'web', image: 'img', command: [], env: {}, cpus: 1, memoryMiB: 512, interactive: false, detach: true, autoRemove: false, network: 'none', publish: [] },
  });
  fs.mkdirSync(store.vmDir(id), { recursive: true });
  server = await ControlServer.listen(vmFiles(store.vmDir(id)).controlSocket, {
    attach: () => undefined, files: () => undefined, snapshot: () => undefined, stop: () => undefined, keptList: () => undefined, keptAttach: () => undefined,
    exec: fakeExec,
  });
  fs.mkdirSync(path.join(containerRoot, 'tmp'), { recursive: true });
  const tree = path.join(host, 'tree');
  fs.mkdirSync(path.join(tree, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(tree, 'a.txt'), 'alpha\n');
  fs.chmodSync(path.join(tree, 'a.txt'), 0o640);
  fs.utimesSync(path.join(tree, 'a.txt'), 981173106, 981173106);
  fs.symlinkSync('a.txt', path.join(tree, 'link'));
  fs.writeFileSync(path.join(tree, 'sub', 'big'), crypto.randomBytes(20 * 1024 * 1024 + 3));
});

after(() => {
  server?.close();
  if (previousState === undefined) delete process.env.SHOAL_STATE_DIR;
  else process.env.SHOAL_STATE_DIR = previousState;
  fs.rmSync(root, { recursive: true, force: true });
});

const sha = (file: string): string => crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');

test('a tree goes in and comes back out through the control channel, as podman cp places it', async () => {
  assert.equal(await cpCommand(path.join(host, 'tree'), 'web:/tmp'), 0);
  const inside = path.join(containerRoot, 'tmp', 'tree');
  assert.equal(fs.readlinkSync(path.join(inside, 'link')), 'a.txt');
  assert.equal(sha(path.join(inside, 'sub', 'big')), sha(path.join(host, 'tree', 'sub', 'big')));

  // Into an existing directory: under the source's name.
  const back = path.join(root, 'back');
  fs.mkdirSync(back);
  assert.equal(await cpCommand('web:/tmp/tree', back), 0);
  assert.deepEqual(fs.readdirSync(back), ['tree']);
  assert.equal(fs.readlinkSync(path.join(back, 'tree', 'link')), 'a.txt');
  assert.equal(fs.statSync(path.join(back, 'tree', 'a.txt')).mode & 0o7777, 0o640);
  assert.equal(fs.statSync(path.join(back, 'tree', 'a.txt')).mtimeMs, 981173106000);
  assert.equal(sha(path.join(back, 'tree', 'sub', 'big')), sha(path.join(host, 'tree', 'sub', 'big')));

  // To a new name: the entry becomes it.
  assert.equal(await cpCommand('web:/tmp/tree/a.txt', path.join(root, 'renamed.txt')), 0);
  assert.equal(fs.readFileSync(path.join(root, 'renamed.txt'), 'utf8'), 'alpha\n');
  assert.deepEqual(fs.readdirSync(root).filter((n) => n.startsWith('.shoal-cp-')), []);
});

test('errors: a missing container path, a missing host path, a missing destination directory', async () => {
  await assert.rejects(cpCommand('web:/tmp/nope', root), (err: unknown) => err instanceof ShoalError && /^cp: "\/tmp\/nope" could not be found on container main: no such file or directory$/.test(err.message));
  assert.deepEqual(fs.readdirSync(root).filter((n) => n.startsWith('.shoal-cp-')), []);
  await assert.rejects(cpCommand(path.join(root, 'absent'), 'web:/tmp'), /absent: no such file or directory/);
  await assert.rejects(cpCommand('web:/tmp/tree', path.join(root, 'no', 'such', 'dir')), /no such directory/);
  await assert.rejects(cpCommand('nosuchvm:/tmp', root), /no such VM/);
});
