/**
 * What a kill -9 leaves in the records, judged without a VM (test/e2e/kill9.test.ts does it with
 * real VMs): a supervisor that died before its first record write is recorded as failed by the
 * CLI that spawned it, and nothing else is; an image-cache save killed midway is swept.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { markDiedAtStart } from '../../src/lifecycle/spawn';
import { sweepImageCacheTemps } from '../../src/snapshot/image-cache';
import { StateStore, statusOf } from '../../src/state/store';
import type { VmRecord } from '../../src/state/vm-record';
import { tempDir } from '../helpers/temp-dir';

function tempStore(): StateStore {
  return new StateStore(path.join(tempDir('kill9-'), 'state'));
}

function record(id: string, extra: Partial<VmRecord>): VmRecord {
  return {
    id, backend: 'qemu', accel: 'tcg', state: 'creating', createdAt: new Date().toISOString(),
    config: { name: `vm-${id}`, image: 'x', command: [], env: {}, cpus: 1, memoryMiB: 256, interactive: false, detach: true, autoRemove: false, network: 'none', publish: [] },
    ...extra,
  } as VmRecord;
}

test('a supervisor that died before its first record write: the VM is failed, not creating, while its CLI lives', () => {
  const store = tempStore();
  store.write(record('0123456789ab', {}));
  // The CLI (this process) is alive, so without the mark the VM reads as being created.
  assert.equal(statusOf(store.read('0123456789ab')!), 'creating');
  markDiedAtStart(store, '0123456789ab', 'SIGKILL');
  const after = store.read('0123456789ab')!;
  assert.equal(statusOf(after), 'failed');
  assert.equal(after.error, 'the supervisor died before it started (SIGKILL)');
});

test('a supervisor that wrote its record is judged by its pid: the mark changes nothing', () => {
  const store = tempStore();
  for (const [id, state] of [['aaaaaaaaaaaa', 'starting'], ['bbbbbbbbbbbb', 'running'], ['cccccccccccc', 'stopped']] as const) {
    store.write(record(id, { state, supervisorPid: process.pid }));
    const before = fs.readFileSync(store.recordPath(id), 'utf8');
    markDiedAtStart(store, id, 'code 0');
    assert.equal(fs.readFileSync(store.recordPath(id), 'utf8'), before, `${state} record rewritten`);
  }
  // Removed meanwhile (rm -f): nothing is recreated.
  markDiedAtStart(store, 'dddddddddddd', 'SIGKILL');
  assert.equal(fs.existsSync(store.vmDir('dddddddddddd')), false);
});

test('an image-cache save killed midway: its temp directory is swept once its process is dead, a live one and entries stay', () => {
  const store = tempStore();
  const root = store.ensureDir('image-cache');
  const dead = path.join(root, '.tmp-0123abcd-999999-AbCdEf');
  const live = path.join(root, `.tmp-0123abcd-${process.pid}-XyZ123`);
  const entry = path.join(root, '0123abcd');
  for (const dir of [dead, live, entry]) {
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'state.bin'), 'x');
  }
  assert.deepEqual(sweepImageCacheTemps(store, (pid) => pid === process.pid), ['.tmp-0123abcd-999999-AbCdEf']);
  assert.deepEqual(fs.readdirSync(root).sort(), ['.tmp-0123abcd-' + process.pid + '-XyZ123', '0123abcd'].sort());
});
