/**
 * The podman-parity flags and verbs without a VM: each flag's parsing and its one-line refusal,
 * podman's env-file format, the podman argv they become, the image-cache key they change, the
 * control messages that carry exec --user/--workdir and stop -t, `cp`'s operands, and the host
 * side of `cp` out of a VM (set-id bits cleared, directories merged).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import {
  containerOptionArgv, parseCapabilities, parseContainerOptions, parseEntrypoint, parseHostname, parseLabels, parseStopTimeout, parseUser, parseWorkdir,
} from '../../src/container/container-options';
import { parseEnvFileText, readEnvFiles } from '../../src/container/env-file';
import { podmanExec, podmanRun } from '../../src/container/podman-argv';

const podmanRunArgv = (o: Parameters<typeof podmanRun>[0]): string[] => podmanRun(o).argv;
const podmanExecArgv = (c: string[], o: Parameters<typeof podmanExec>[1]): string[] => podmanExec(c, o).argv;
import { parseControlRequest } from '../../src/control/messages';
import { hostSourceParts, planCp } from '../../src/cli/cp-spec';
import { moveInto } from '../../src/cli/host-tree';
import { imageCacheKey } from '../../src/snapshot/image-cache';
import type { VmConfig } from '../../src/state/vm-record';
import type { VmSpec } from '../../src/vmm/backend';
import { ShoalError } from '../../src/util/errors';

function refuses(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (err: unknown) => err instanceof ShoalError && err.exitCode === 125 && message.test(err.message) && !err.message.includes('\n'));
}

test('--user takes USER[:GROUP], names or ids; anything else is one line', () => {
  assert.equal(parseUser('1000:1000'), '1000:1000');
  assert.equal(parseUser('nobody'), 'nobody');
  assert.equal(parseUser('www-data:www-data'), 'www-data:www-data');
  for (const bad of ['', ':', '1000:', 'a:b:c', 'a b', '-x', 'root;rm']) refuses(() => parseUser(bad), /^invalid --user/);
});

test('--workdir must be absolute and is normalized', () => {
  assert.equal(parseWorkdir('/tmp'), '/tmp');
  assert.equal(parseWorkdir('/a//b/../c/'), '/a/c/');
  refuses(() => parseWorkdir('tmp'), /--workdir "tmp": must be an absolute path/);
  refuses(() => parseWorkdir(''), /must be an absolute path/);
  refuses(() => parseWorkdir('/a\nb'), /not a usable path/);
});

test('--entrypoint: a program, a JSON argv, or "" to clear', () => {
  assert.deepEqual(parseEntrypoint('/bin/app'), ['/bin/app']);
  assert.deepEqual(parseEntrypoint('["sh","-c"]'), ['sh', '-c']);
  assert.deepEqual(parseEntrypoint(''), []);
  refuses(() => parseEntrypoint('[1]'), /expected a JSON array of strings/);
  refuses(() => parseEntrypoint('["x"'), /not a JSON array/);
});

test('--hostname, --label, --stop-timeout', () => {
  assert.equal(parseHostname('web-1.example'), 'web-1.example');
  for (const bad of ['-web', 'a b', 'x'.repeat(64), 'a..b', 'shoal.probe=1']) refuses(() => parseHostname(bad), /^invalid --hostname/);
  assert.deepEqual(parseLabels(['a=1', 'b', 'a=2', 'c=x=y']), { a: '2', b: '', c: 'x=y' });
  refuses(() => parseLabels(['=1']), /invalid --label/);
  assert.equal(parseStopTimeout('0', '--time'), 0);
  assert.equal(parseStopTimeout('30', '--time'), 30);
  for (const bad of ['-1', '1.5', 'soon', '99999999']) refuses(() => parseStopTimeout(bad, '--time'), /^invalid --time/);
});

test('capabilities as podman spells them; an unknown one is refused', () => {
  assert.deepEqual(parseCapabilities(['net_admin', 'CAP_SYS_TIME,mknod', 'NET_ADMIN'], '--cap-add'), ['CAP_NET_ADMIN', 'CAP_SYS_TIME', 'CAP_MKNOD']);
  assert.deepEqual(parseCapabilities(['all'], '--cap-drop'), ['ALL']);
  assert.deepEqual(parseCapabilities(['checkpoint_restore', 'BPF', 'perfmon'], '--cap-add'), ['CAP_CHECKPOINT_RESTORE', 'CAP_BPF', 'CAP_PERFMON']);
  refuses(() => parseCapabilities(['NET_ADMINX'], '--cap-add'), /^invalid --cap-add "NET_ADMINX": unknown capability$/);
  refuses(() => parseCapabilities(['CAP_'], '--cap-drop'), /^invalid --cap-drop/);
});

test('only the flags given are stored, and they become podman run arguments in order', () => {
  assert.deepEqual(parseContainerOptions({}), {});
  const options = parseContainerOptions({
    user: '1000:1000', workdir: '/srv', entrypoint: '["/bin/sh","-c"]', hostname: 'h', label: ['team=blue'], readOnly: true, init: true,
    capAdd: ['net_admin'], capDrop: ['mknod'], privileged: true, stopTimeout: '3',
  });
  assert.deepEqual(options, {
    user: '1000:1000', workdir: '/srv', entrypoint: ['/bin/sh', '-c'], hostname: 'h', labels: { team: 'blue' }, readOnly: true, init: true,
    capAdd: ['CAP_NET_ADMIN'], capDrop: ['CAP_MKNOD'], privileged: true, stopTimeout: 3,
  });
  const argv = podmanRunArgv({ image: 'img', command: ['run', 'me'], env: { A: '1' }, interactive: false, container: options });
  assert.deepEqual(argv, [
    'podman', 'run', '--name', 'main', '--network', 'host', '--pull', 'never', '--log-driver', 'none',
    '--user', '1000:1000', '--workdir', '/srv', '--entrypoint', '["/bin/sh","-c"]', '--label', 'team=blue', '--read-only', '--init',
    '--privileged', '--cap-add', 'CAP_NET_ADMIN', '--cap-drop', 'CAP_MKNOD', '--stop-timeout', '3',
    '--env', 'A', 'img', 'run', 'me',
  ]);
  // The hostname is the guest's (kernel command line), shared by the container through the host network.
  assert.ok(!argv.includes('--hostname'));
  assert.deepEqual(containerOptionArgv({ entrypoint: [] }), ['--entrypoint', '[]']);
  // Without options the argv is what it always was.
  assert.deepEqual(podmanRunArgv({ image: 'img', command: [], env: {}, interactive: true }), [
    'podman', 'run', '--name', 'main', '--network', 'host', '--pull', 'never', '--log-driver', 'none', '--interactive', 'img',
  ]);
});

test('a pod\'s other container: its own name, a root filesystem directory (--rootfs) and an id file', () => {
  assert.deepEqual(podmanRunArgv({ name: 'web', image: '/var/lib/containers/shoal-pod/web', rootfs: true, cidfile: '/run/shoal-pod.web.cid', command: ['httpd'], env: {}, interactive: false }), [
    'podman', 'run', '--name', 'web', '--network', 'host', '--pull', 'never', '--log-driver', 'none', '--cidfile', '/run/shoal-pod.web.cid', '--rootfs', '/var/lib/containers/shoal-pod/web', 'httpd',
  ]);
  assert.deepEqual(podmanExecArgv(['id'], { name: 'web', env: {}, interactive: false }), ['podman', 'exec', 'web', 'id']);
  assert.deepEqual(containerOptionArgv({ ulimits: ['nofile=512:1024'], tmpfs: ['/run:mode=755', '/scratch'] }), ['--ulimit', 'nofile=512:1024', '--tmpfs', '/run:mode=755', '--tmpfs', '/scratch']);
});

test('podman exec with --user and --workdir', () => {
  assert.deepEqual(podmanExecArgv(['id'], { env: { X: '1' }, interactive: false, user: '0:0', workdir: '/' }), ['podman', 'exec', '--user', '0:0', '--workdir', '/', '--env', 'X', 'main', 'id']);
  assert.deepEqual(podmanExecArgv(['id'], { env: {}, interactive: false }), ['podman', 'exec', 'main', 'id']);
});

test("--env-file: podman's format (comments, blanks, literal quotes, bare names from the host)", () => {
  const text = '# comment\n\n   # indented comment\nFOO=bar\nQUOTED="hello world"\n  LEAD=trimmed start \nEMPTY=\nEQ=a=b\nFROM_HOST\nNOT_ON_HOST\r\nCRLF=x\r\n';
  assert.deepEqual(parseEnvFileText(text, 'f', { FROM_HOST: 'hv' }), {
    FOO: 'bar', QUOTED: '"hello world"', LEAD: 'trimmed start ', EMPTY: '', EQ: 'a=b', FROM_HOST: 'hv', CRLF: 'x',
  });
  refuses(() => parseEnvFileText('A=1\n\nB C=2\n', 'app.env', {}), /^invalid --env-file app\.env line 3: "B C" is not a variable name$/);
  refuses(() => parseEnvFileText('=x\n', 'e', {}), /line 1/);
  refuses(() => parseEnvFileText('1A=x\n', 'e', {}), /line 1: "1A"/);
});

test('--env-file reads files in order; a missing or oversized file is one line', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-envf-'));
  try {
    fs.writeFileSync(path.join(dir, 'a'), 'X=1\nY=1\n');
    fs.writeFileSync(path.join(dir, 'b'), 'Y=2\n');
    assert.deepEqual(readEnvFiles([path.join(dir, 'a'), path.join(dir, 'b')], {}), { X: '1', Y: '2' });
    refuses(() => readEnvFiles([path.join(dir, 'missing')]), /missing: no such file$/);
    refuses(() => readEnvFiles([dir]), /not a regular file/);
    fs.writeFileSync(path.join(dir, 'huge'), Buffer.alloc(2 << 20, 0x41));
    refuses(() => readEnvFiles([path.join(dir, 'huge')]), /larger than/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the container flags change the image-cache key; a plain run keeps its old key', () => {
  const spec: VmSpec = {
    id: 'a', runDir: '/r', kernel: '/k', cmdline: 'console=ttyS0 shoal.hostname=x', cpus: 1, memoryMiB: 512,
    drives: [{ id: 'root', path: '/root.ext4', readOnly: true }], accel: 'tcg', consoleLog: '/c',
  };
  const base: VmConfig = {
    name: 'a', image: 'img', command: ['sh'], env: {}, cpus: 1, memoryMiB: 512, interactive: false, detach: true, autoRemove: false, network: 'none', publish: [],
  };
  const plain = imageCacheKey('d', base, spec, 'qemu', 'tcg');
  assert.equal(imageCacheKey('d', { ...base, container: {} }, spec, 'qemu', 'tcg'), plain);
  const keys = new Set([plain]);
  for (const container of [{ user: '1000' }, { user: '1001' }, { workdir: '/tmp' }, { entrypoint: ['sh'] }, { privileged: true }, { readOnly: true }, { capAdd: ['CAP_NET_ADMIN'] }, { hostname: 'h' }]) {
    keys.add(imageCacheKey('d', { ...base, container }, spec, 'qemu', 'tcg'));
  }
  assert.equal(keys.size, 9);
});

test('control messages carry exec --user/--workdir and stop -t, checked where they enter', () => {
  const exec = parseControlRequest({ kind: 'exec', argv: ['id'], env: {}, user: '1000', workdir: '/tmp' });
  assert.deepEqual(exec, { ok: true, value: { kind: 'exec', argv: ['id'], env: {}, interactive: false, vm: false, user: '1000', workdir: '/tmp' } });
  assert.equal(parseControlRequest({ kind: 'exec', argv: ['id'], user: 5 }).ok, false);
  assert.deepEqual(parseControlRequest({ kind: 'stop', timeoutSeconds: 1 }), { ok: true, value: { kind: 'stop', timeoutSeconds: 1 } });
  assert.deepEqual(parseControlRequest({ kind: 'stop' }), { ok: true, value: { kind: 'stop' } });
  for (const bad of [-1, 1.5, '1', 1e9]) assert.equal(parseControlRequest({ kind: 'stop', timeoutSeconds: bad }).ok, false);
});

test('cp operands: NAME:PATH on exactly one side, never above the container root', () => {
  assert.deepEqual(planCp('./a', 'web:/tmp/'), { direction: 'to-container', vm: 'web', containerPath: '/tmp/', hostPath: './a' });
  assert.deepEqual(planCp('web:/etc/hosts', '/tmp/h'), { direction: 'from-container', vm: 'web', containerPath: '/etc/hosts', hostPath: '/tmp/h' });
  assert.deepEqual(planCp('web:/a/../b', '.'), { direction: 'from-container', vm: 'web', containerPath: '/a/../b', hostPath: '.' });
  // A host path with a colon is written as ./a:b or /abs/a:b.
  refuses(() => planCp('./a:b', '/tmp/x'), /one side must be NAME:PATH/);
  refuses(() => planCp('a', 'b'), /one side must be NAME:PATH/);
  refuses(() => planCp('x:/a', 'y:/b'), /between containers/);
  refuses(() => planCp('web:/../etc/passwd', '/tmp'), /outside the container/);
  refuses(() => planCp('/tmp/f', 'web:a/../../x'), /outside the container/);
  refuses(() => planCp('/tmp/f', 'web:'), /no path after the colon/);
  assert.deepEqual(hostSourceParts('/a/b/'), { dir: '/a', entry: 'b' });
  assert.deepEqual(hostSourceParts('/a/b/.'), { dir: '/a/b/.', entry: '.' });
  assert.deepEqual(hostSourceParts('file'), { dir: '.', entry: 'file' });
});

test('cp out of a VM: a directory merges into an existing one (set-id bits: test/unit/guest-tar.test.ts)', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-cp-'));
  try {
    const staged = path.join(dir, 'staged');
    fs.mkdirSync(path.join(staged, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(staged, 'suid'), 'x');
    fs.chmodSync(path.join(staged, 'sub'), 0o775);
    fs.writeFileSync(path.join(staged, 'sub', 'new'), 'new');
    fs.symlinkSync('/etc/passwd', path.join(staged, 'link'));

    const dest = path.join(dir, 'dest');
    fs.mkdirSync(path.join(dest, 'sub'), { recursive: true });
    fs.writeFileSync(path.join(dest, 'sub', 'old'), 'old');
    fs.writeFileSync(path.join(dest, 'suid'), 'replaced');
    for (const name of fs.readdirSync(staged)) moveInto(path.join(staged, name), path.join(dest, name));
    assert.deepEqual(fs.readdirSync(path.join(dest, 'sub')).sort(), ['new', 'old']);
    assert.equal(fs.readFileSync(path.join(dest, 'suid'), 'utf8'), 'x');
    assert.equal(fs.readlinkSync(path.join(dest, 'link')), '/etc/passwd');
    assert.deepEqual(fs.readdirSync(staged), []);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("bin/shoal's `--` (which keeps node from reading --env-file itself) is dropped, a user's own is kept", async () => {
  const { userArgv } = await import('../../src/cli/main');
  assert.deepEqual(userArgv(['node', 'main.js', '--', 'run', '--env-file', 'f', 'img']), ['node', 'main.js', 'run', '--env-file', 'f', 'img']);
  assert.deepEqual(userArgv(['node', 'main.js', '--', '--', 'x']), ['node', 'main.js', '--', 'x']);
  assert.deepEqual(userArgv(['node', 'main.js', 'ls']), ['node', 'main.js', 'ls']);
});

test('env values reach podman through its environment, never its argv', () => {
  const run = podmanRun({ image: 'img', command: [], env: { SECRET: 's3cr3t value', PATH: '/opt/bin' }, interactive: false });
  assert.ok(!run.argv.some((a) => a.includes('s3cr3t')), run.argv.join(' '));
  assert.deepEqual(run.argv.slice(-5), ['--env', 'SECRET', '--env', 'PATH=/opt/bin', 'img']);
  assert.deepEqual(run.processEnv, { SECRET: 's3cr3t value' }, 'a name podman reads itself (PATH) stays a KEY=VALUE option');
  const exec = podmanExec(['env'], { env: { TOKEN: 'abc' }, interactive: false });
  assert.deepEqual(exec.argv, ['podman', 'exec', '--env', 'TOKEN', 'main', 'env']);
  assert.deepEqual(exec.processEnv, { TOKEN: 'abc' });
});
