/**
 * The agent's direct way into the container (src/agent/container-exec.ts): which container,
 * which process settings, which command line, and when it leaves the exec to podman. Real files
 * laid out as podman and crun lay them out in the guest; crun itself runs in the e2e tests.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { directContainerExec, execPid, mergeEnv, type ContainerPaths } from '../../src/agent/container-exec';

const ID = 'a'.repeat(64);
let dir = '';
let paths: ContainerPaths;
const template = {
  terminal: false,
  user: { uid: 1000, gid: 1000, additionalGids: [10] },
  args: ['sleep', '1000'],
  env: ['PATH=/usr/bin:/bin', 'HOME=/home/app', 'APP=1'],
  cwd: '/srv',
  capabilities: { bounding: ['CAP_CHOWN'], effective: ['CAP_CHOWN'] },
  noNewPrivileges: true,
};

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-cexec-'));
  paths = { storage: path.join(dir, 'storage'), crunRoot: path.join(dir, 'crun'), work: path.join(dir, 'work') };
  fs.mkdirSync(path.join(paths.storage, ID, 'userdata'), { recursive: true });
  fs.writeFileSync(path.join(paths.storage, 'containers.json'), JSON.stringify([{ id: 'b'.repeat(64), names: ['other'] }, { id: ID, names: ['main'] }]));
  fs.writeFileSync(path.join(paths.storage, ID, 'userdata', 'config.json'), JSON.stringify({ ociVersion: '1.0.0', process: template }));
  fs.mkdirSync(path.join(paths.crunRoot, ID), { recursive: true });
  // The container's init is this test process: alive.
  fs.writeFileSync(path.join(paths.crunRoot, ID, 'status'), JSON.stringify({ pid: process.pid }));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

test('crun exec with the container\'s own user, cwd and capabilities, the request\'s argv and env on top', () => {
  const direct = directContainerExec({ name: 'main', argv: ['sh', '-c', 'exit 3'], env: { APP: '2', EXTRA: 'x y' } }, false, paths);
  assert.ok(direct);
  const processFile = direct.argv[direct.argv.indexOf('--process') + 1]!;
  assert.deepEqual(direct.argv, ['crun', '--root', paths.crunRoot, 'exec', '--process', processFile, '--pid-file', direct.pidFile, ID]);
  assert.equal(fs.statSync(processFile).mode & 0o777, 0o600);
  assert.equal(fs.statSync(paths.work).mode & 0o777, 0o700);
  const written = JSON.parse(fs.readFileSync(processFile, 'utf8'));
  assert.deepEqual(written, { ...template, args: ['sh', '-c', 'exit 3'], env: ['PATH=/usr/bin:/bin', 'HOME=/home/app', 'APP=2', 'EXTRA=x y'], terminal: false });
  fs.writeFileSync(direct.pidFile, '4242\n');
  assert.equal(execPid(direct.pidFile), 4242);
  direct.cleanup();
  assert.deepEqual(fs.readdirSync(paths.work), []);
  assert.equal(execPid(direct.pidFile), undefined);
});

test('under -t the process gets TERM=xterm unless the container or the request sets it', () => {
  assert.deepEqual(mergeEnv(['A=1'], {}, true), ['A=1', 'TERM=xterm']);
  assert.deepEqual(mergeEnv(['TERM=vt100'], {}, true), ['TERM=vt100']);
  assert.deepEqual(mergeEnv([], { TERM: 'dumb' }, true), ['TERM=dumb']);
  assert.deepEqual(mergeEnv(['A=1=2', 'junk'], {}, false), ['A=1=2']);
  assert.equal(mergeEnv(['A=1'], { 'BAD KEY': 'x' }, false), undefined);
});

test('podman is left to do it when the container is unknown, not running, or its files are not as expected', () => {
  assert.equal(directContainerExec({ name: 'ghost', argv: ['true'], env: {} }, false, paths), undefined);
  assert.equal(directContainerExec({ name: '../main', argv: ['true'], env: {} }, false, paths), undefined);
  assert.equal(directContainerExec({ name: 'main', argv: [], env: {} }, false, paths), undefined);
  // Known to podman but without crun state (created, or exited): not running.
  assert.equal(directContainerExec({ name: 'other', argv: ['true'], env: {} }, false, paths), undefined);
  // A dead init.
  const status = path.join(paths.crunRoot, ID, 'status');
  fs.writeFileSync(status, JSON.stringify({ pid: 2 ** 22 + 1 }));
  assert.equal(directContainerExec({ name: 'main', argv: ['true'], env: {} }, false, { ...paths, work: path.join(dir, 'w2') }), undefined);
  fs.writeFileSync(status, JSON.stringify({ pid: process.pid }));
  // A containers.json that is not what podman writes.
  const other = { ...paths, storage: path.join(dir, 'storage2') };
  fs.mkdirSync(other.storage);
  fs.writeFileSync(path.join(other.storage, 'containers.json'), '{"not": "a list"}');
  assert.equal(directContainerExec({ name: 'main', argv: ['true'], env: {} }, false, other), undefined);
  fs.writeFileSync(path.join(other.storage, 'containers.json'), JSON.stringify([{ id: '../../etc', names: ['main'] }]));
  assert.equal(directContainerExec({ name: 'main', argv: ['true'], env: {} }, false, other), undefined);
  assert.deepEqual(fs.existsSync(path.join(dir, 'w2')) ? fs.readdirSync(path.join(dir, 'w2')) : [], []);
});
