/**
 * src/core without a VM: the spec rules every front end gets (create's validation, exec's
 * request with user and cwd), that a refused spec changes nothing in the state directory, and
 * the API adapter's translation of the core's errors (400, 404, 409).
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { it } from 'node:test';
import { ApiError } from '../../src/api/errors';
import { ShoalCore } from '../../src/api/core';
import { configOf, createVm, execRequest, InvalidSpecError, NotFoundError, VmCore } from '../../src/core';
import { StateStore } from '../../src/state/store';
import { tempDir } from '../helpers/temp-dir';

const store = (): StateStore => new StateStore(path.join(tempDir('shoal-core-'), 'state'));

it('configOf: a spec becomes the VM config run would make, with defaults', () => {
  const config = configOf({ image: 'busybox', name: 'web', env: { A: '1' }, cmd: ['sleep', '1'], container: { user: 'app', workdir: '/srv/', label: ['k=v'] }, publish: ['8080:80'] });
  assert.equal(config.name, 'web');
  assert.deepEqual([config.cpus, config.memoryMiB, config.network, config.detach, config.autoRemove, config.imageCache], [1, 1024, 'rootless', true, false, true]);
  assert.deepEqual(config.env, { A: '1' });
  assert.deepEqual(config.command, ['sleep', '1']);
  assert.deepEqual(config.container, { user: 'app', workdir: '/srv/', labels: { k: 'v' } });
  assert.equal(config.publish.length, 1);
  assert.equal(configOf({ image: 'busybox', attached: true }).detach, false);
  assert.match(configOf({ image: 'busybox' }).name, /^vm-[0-9a-f]+$/);
});

it('configOf: every rule of run, one line each', () => {
  const refuse = (spec: Parameters<typeof configOf>[0], pattern: RegExp): void => assert.throws(() => configOf(spec), pattern);
  refuse({ image: 'busybox', name: 'a/b' }, /invalid --name/);
  refuse({ image: 'busybox', cpus: 0 }, /out of range/);
  refuse({ image: 'busybox', cpus: 1.5 }, /out of range/);
  refuse({ image: 'busybox', memoryMiB: 64 }, /below the minimum of 256 MiB/);
  refuse({ image: 'busybox', env: { 'BAD KEY': 'x' } }, /invalid environment variable name/);
  refuse({ image: 'busybox', env: { A: 'x\0y' } }, /not a string without NUL/);
  refuse({ image: 'busybox', env: { A: 'x'.repeat(1 << 20) } }, /larger than/);
  refuse({ image: 'Not An Image' }, /invalid image reference/);
  refuse({ image: 'busybox', container: { user: 'a:b:c' } }, /invalid --user/);
  refuse({ image: 'busybox', healthCheck: 'ftp://x/' }, /invalid --health-check/);
  refuse({ image: 'busybox', network: 'wormhole' }, /network/);
  refuse({ image: 'busybox', publish: ['nonsense'] }, /publish/);
});

it('createVm refuses a bad spec as InvalidSpecError, before anything is written', async () => {
  const s = store();
  await assert.rejects(createVm(s, { image: 'busybox', name: 'bad/name' }), (err: unknown) => err instanceof InvalidSpecError && /invalid --name/.test(err.message));
  await assert.rejects(createVm(s, { image: 'busybox', snapshot: 'x' }), InvalidSpecError);
  await assert.rejects(createVm(s, {}), InvalidSpecError);
  await assert.rejects(createVm(s, { snapshot: 'tag', cpus: 2 }), /cpus cannot be given with a snapshot/);
  await assert.rejects(createVm(s, { image: 'busybox', attached: true }), /startVm, then attach/);
  assert.deepEqual(s.list(), []);
});

it('execRequest: the request shoal exec sends, user and cwd for the container, env -C in the VM', () => {
  assert.deepEqual(execRequest({ argv: ['id'], env: { A: '1' }, vm: false, stdin: false, user: 'nobody:nogroup', cwd: '/tmp/../srv' }), { argv: ['id'], env: { A: '1' }, interactive: false, vm: false, user: 'nobody:nogroup', workdir: '/srv' });
  assert.deepEqual(execRequest({ argv: ['ls'], env: {}, vm: true, stdin: true, cwd: '/etc', tty: { cols: 80, rows: 24 } }), { argv: ['env', '-C', '/etc', '--', 'ls'], env: {}, interactive: true, vm: true, tty: { cols: 80, rows: 24 } });
  assert.throws(() => execRequest({ argv: ['id'], env: {}, vm: true, stdin: false, user: 'root' }), /user is for the container/);
  assert.throws(() => execRequest({ argv: ['id'], env: {}, vm: false, stdin: false, cwd: 'relative' }), /must be an absolute path/);
  assert.throws(() => execRequest({ argv: [], env: {}, vm: false, stdin: false }), /needs a command/);
});

it('VmCore finds nothing in an empty store; the API adapter answers 404, 400', async () => {
  const s = store();
  const core = new VmCore(s);
  assert.deepEqual(core.list(), []);
  assert.equal(core.find('ghost'), undefined);
  assert.throws(() => core.record('ghost'), NotFoundError);
  await assert.rejects(core.exec('ghost', { argv: ['true'], env: {}, vm: false, stdin: false }), NotFoundError);
  const api = new ShoalCore(s);
  await assert.rejects(api.exec('ghost', { argv: ['true'], env: {}, vm: false, stdin: false }), (err: unknown) => err instanceof ApiError && err.code === 'not_found' && err.message === 'no such sandbox: ghost');
  await assert.rejects(api.remove('ghost'), (err: unknown) => err instanceof ApiError && err.code === 'not_found');
  await assert.rejects(api.files.stat('ghost', '/etc'), (err: unknown) => err instanceof ApiError && err.code === 'not_found');
  assert.throws(() => api.removeSnapshot('nosuch'), (err: unknown) => err instanceof ApiError && err.code === 'not_found');
  await assert.rejects(api.create({ name: 'x', image: 'busybox', cpus: 0, memoryMiB: 512, env: {}, cmd: [], network: 'rootless', publish: [] }), (err: unknown) => err instanceof ApiError && err.code === 'bad_request');
  assert.deepEqual(s.list(), []);
});
