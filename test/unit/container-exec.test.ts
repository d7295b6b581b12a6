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
import { commandRuns, directContainerExec, execPid, mergeEnv, type ContainerPaths } from '../../src/agent/container-exec';

const ID = 'a'.repeat(64);
let dir = '';
let paths: ContainerPaths;
const template = {
  terminal: false,
  user: { uid: 1000, gid: 1000, additionalGids: [10] },
  args: ['sleep', '1000'],
  env: ['PATH=/usr/bin:/bin', 'HOME=/home/app', 'HOSTNAME=main-host', 'APP=1'],
  cwd: '/srv',
  capabilities: { bounding: ['CAP_CHOWN'], effective: ['CAP_CHOWN'] },
  noNewPrivileges: true,
};

before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-cexec-'));
  const root = path.join(dir, 'rootfs');
  paths = { storage: path.join(dir, 'storage'), crunRoot: path.join(dir, 'crun'), work: path.join(dir, 'work'), procRoot: () => root };
  // A container root like a merged Debian/busybox image: /bin -> usr/bin, sh -> /bin/busybox.
  fs.mkdirSync(path.join(root, 'usr', 'bin'), { recursive: true });
  fs.mkdirSync(path.join(root, 'etc'));
  fs.symlinkSync('usr/bin', path.join(root, 'bin'));
  fs.writeFileSync(path.join(root, 'usr', 'bin', 'busybox'), '', { mode: 0o755 });
  fs.symlinkSync('/bin/busybox', path.join(root, 'usr', 'bin', 'sh'));
  fs.symlinkSync('../../../../../../usr/bin/busybox', path.join(root, 'usr', 'bin', 'deep'));
  fs.symlinkSync('/etc/passwd', path.join(root, 'usr', 'bin', 'outside'));
  fs.symlinkSync('loop2', path.join(root, 'usr', 'bin', 'loop1'));
  fs.symlinkSync('loop1', path.join(root, 'usr', 'bin', 'loop2'));
  fs.writeFileSync(path.join(root, 'etc', 'passwd'), '', { mode: 0o644 });
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

test('only a command that would run goes direct: podman gives the not-found and cannot-run errors', () => {
  const root = paths.procRoot!(0);
  const env = ['PATH=/usr/local/bin:/bin'];
  assert.equal(commandRuns(root, 'sh', env), true, 'via PATH, /bin -> usr/bin and an absolute link');
  assert.equal(commandRuns(root, '/bin/sh', env), true);
  assert.equal(commandRuns(root, 'deep', env), true, '.. stops at the container root');
  assert.equal(commandRuns(root, 'nosuch', env), false);
  assert.equal(commandRuns(root, '/etc/passwd', env), false, 'not executable');
  assert.equal(commandRuns(root, 'outside', env), false, 'an absolute link resolves in the container, to its non-executable /etc/passwd');
  assert.equal(commandRuns(root, '/usr/bin', env), false, 'a directory');
  assert.equal(commandRuns(root, 'loop1', env), false, 'a symlink loop');
  assert.equal(commandRuns(root, 'sh', ['PATH=/nowhere']), false);
  assert.equal(directContainerExec({ name: 'main', argv: ['nosuch'], env: {} }, false, paths), undefined);
  assert.equal(directContainerExec({ name: 'main', argv: ['/etc/passwd'], env: {} }, false, paths), undefined);
});

test('under -t the process gets TERM=xterm unless the container or the request sets it', () => {
  assert.deepEqual(mergeEnv(['A=1'], {}, true), ['A=1', 'TERM=xterm']);
  assert.deepEqual(mergeEnv(['TERM=vt100'], {}, true), ['TERM=vt100']);
  assert.deepEqual(mergeEnv([], { TERM: 'dumb' }, true), ['TERM=dumb']);
  assert.deepEqual(mergeEnv(['A=1=2', 'junk', 'HOSTNAME=x'], {}, false), ['A=1=2'], 'podman exec passes no HOSTNAME');
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

test('-u and -w go direct too: the user and groups resolved in the container\'s files, as podman exec resolves them', () => {
  const root = paths.procRoot!(0);
  fs.writeFileSync(path.join(root, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n# a comment\napp:x:1000:1000::/home/app:/bin/sh\nweb:x:33:33:www:/var/www:/bin/false\n');
  fs.writeFileSync(path.join(root, 'etc', 'group'), 'root:x:0:\nwheel:x:10:app,web\napp:x:1000:\nstaff:x:50:app\n');
  fs.mkdirSync(path.join(root, 'srv', 'data'), { recursive: true });
  const processOf = (direct: ReturnType<typeof directContainerExec>): Record<string, unknown> => {
    assert.ok(direct);
    const file = direct.argv[direct.argv.indexOf('--process') + 1]!;
    const written = JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
    direct.cleanup();
    return written;
  };
  const asWeb = processOf(directContainerExec({ name: 'main', argv: ['sh'], env: {}, user: 'web', workdir: '/srv/data' }, false, paths));
  assert.deepEqual(asWeb.user, { uid: 33, gid: 33, additionalGids: [10] });
  assert.equal(asWeb.cwd, '/srv/data');
  assert.ok((asWeb.env as string[]).includes('HOME=/var/www'), 'HOME is the user\'s');
  assert.deepEqual((asWeb.capabilities as Record<string, unknown>).effective, [], 'no capabilities for a non-root user');
  const asRoot = processOf(directContainerExec({ name: 'main', argv: ['sh'], env: { HOME: '/tmp' }, user: '0' }, false, paths));
  assert.deepEqual(asRoot.user, { uid: 0, gid: 0, additionalGids: [] });
  assert.deepEqual((asRoot.capabilities as Record<string, unknown>).effective, ['CAP_CHOWN']);
  assert.ok((asRoot.env as string[]).includes('HOME=/tmp'), 'the request\'s HOME wins');
  assert.deepEqual(processOf(directContainerExec({ name: 'main', argv: ['sh'], env: {}, user: 'app:staff' }, false, paths)).user, { uid: 1000, gid: 50, additionalGids: [10] });
  assert.deepEqual(processOf(directContainerExec({ name: 'main', argv: ['sh'], env: {}, user: '4242:7' }, false, paths)).user, { uid: 4242, gid: 7, additionalGids: [] });
  // What podman answers with its own error: an unknown user or group, a missing directory.
  assert.equal(directContainerExec({ name: 'main', argv: ['sh'], env: {}, user: 'nobody' }, false, paths), undefined);
  assert.equal(directContainerExec({ name: 'main', argv: ['sh'], env: {}, user: 'app:nogroup' }, false, paths), undefined);
  assert.equal(directContainerExec({ name: 'main', argv: ['sh'], env: {}, user: 'a:b:c' }, false, paths), undefined);
  assert.equal(directContainerExec({ name: 'main', argv: ['sh'], env: {}, workdir: '/nowhere' }, false, paths), undefined);
  assert.equal(directContainerExec({ name: 'main', argv: ['sh'], env: {}, workdir: '/etc/passwd' }, false, paths), undefined, 'a file is no working directory');
  assert.deepEqual(fs.readdirSync(paths.work), []);
});
