import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { GatedStream } from '../../src/protocol/gate';
import { MANIFEST, findSnapshot, lineageOf, listSnapshots, makeTempDir, publish, removeSnapshot, snapshotsDir, sweepStale, tagProblem, type SnapshotManifest } from '../../src/snapshot/store';
import { evictImageCache, imageCacheLimit, imageCacheRoot, touchImageCache } from '../../src/snapshot/image-cache';
import { writeJsonAtomic } from '../../src/state/atomic';
import { StateStore } from '../../src/state/store';
import { restoreInfoPath } from '../../src/state/vm-files';
import type { VmRecord } from '../../src/state/vm-record';
import { processStartTime } from '../../src/util/process';
import { tempDir } from '../helpers/temp-dir';

function manifest(tag: string): SnapshotManifest {
  return {
    version: 1, tag, createdAt: new Date().toISOString(), source: { id: 'abc', name: 'src' }, backend: 'qemu', accel: 'tcg',
    config: { name: 'src', image: 'x', command: [], env: {}, cpus: 1, memoryMiB: 512, interactive: false, detach: true, autoRemove: false, network: 'none', publish: [] },
    vmSpec: { id: 'abc', runDir: '/r', kernel: '/k', cmdline: '', cpus: 1, memoryMiB: 512, drives: [], accel: 'tcg', consoleLog: '/c' },
    files: { state: 'state.bin', memory: 'memory.raw', scratch: 'scratch.img' }, bytes: { state: 0, memory: 0, scratch: 0 }, timings: { pausedMs: 0, totalMs: 0 },
  };
}

test('snapshot store: temp dirs are invisible, publish is a rename, stale temps are swept, rm removes', () => {
  const store = new StateStore(fs.mkdtempSync(path.join(os.tmpdir(), 'snapstore-')));
  try {
    const temp = makeTempDir(store, 'a');
    fs.writeFileSync(path.join(temp, 'state.bin'), 'x');
    assert.deepEqual(listSnapshots(store), [], 'a snapshot being built is not listed');
    assert.throws(() => findSnapshot(store, 'a'), /no such snapshot/);
    publish(store, temp, manifest('a'));
    assert.deepEqual(listSnapshots(store).map((s) => s.tag), ['a']);
    assert.ok(!fs.existsSync(temp));
    // A second publish of the same tag fails and leaves the first alone.
    const again = makeTempDir(store, 'a');
    assert.throws(() => publish(store, again, manifest('a')), /already exists/);
    // A temp dir whose creator is dead (pid 2^22+1 cannot exist) is swept by listing; a live one is kept.
    const stale = path.join(snapshotsDir(store), `.tmp-b-${4194305}-abcdef`);
    fs.mkdirSync(stale);
    fs.writeFileSync(path.join(stale, 'snapshot.json'), JSON.stringify(manifest('b')));
    listSnapshots(store);
    assert.ok(!fs.existsSync(stale));
    assert.ok(fs.existsSync(again), 'our own temp dir is not swept');
    removeSnapshot(store, 'a');
    assert.deepEqual(listSnapshots(store), []);
    assert.match(tagProblem('../x') ?? '', /must match/);
    assert.equal(tagProblem('ok-1.2'), undefined);
  } finally {
    fs.rmSync(store.root, { recursive: true, force: true });
  }
});

test('gated stream: held writes queue in order, release(true) sends them, release(false) drops them, bypass goes first', () => {
  const inner = new PassThrough();
  const got: string[] = [];
  inner.on('data', (d: Buffer) => got.push(d.toString()));
  const gate = new GatedStream(inner);
  gate.write('a');
  gate.hold();
  gate.write('b');
  gate.write('c');
  gate.bypass(Buffer.from('H'));
  gate.release(true);
  gate.write('d');
  gate.hold();
  gate.write('e');
  gate.release(false);
  gate.write('f');
  return new Promise<void>((resolve) => setImmediate(() => {
    assert.equal(got.join(''), 'aHbcdf');
    resolve();
  }));
});

test('image cache eviction keeps the most recently used entries and drops dead saves', () => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-cache-'));
  try {
    const store = new StateStore(root);
    const cache = imageCacheRoot(store);
    const entry = (name: string, usedSecondsAgo: number): void => {
      fs.mkdirSync(path.join(cache, name), { recursive: true });
      const manifest = path.join(cache, name, MANIFEST);
      fs.writeFileSync(manifest, '{}');
      const when = new Date(Date.now() - usedSecondsAgo * 1000);
      fs.utimesSync(manifest, when, when);
    };
    entry('aaaa', 400);
    entry('bbbb', 300);
    entry('cccc', 200);
    entry('dddd', 100);
    // A hit makes the oldest entry the newest.
    touchImageCache(path.join(cache, 'aaaa'));
    fs.mkdirSync(path.join(cache, '.tmp-eeee-111-x'));
    fs.mkdirSync(path.join(cache, '.tmp-ffff-222-y'));
    const removed = evictImageCache(store, 2, (pid) => pid === 222);
    assert.deepEqual(removed.sort(), ['.tmp-eeee-111-x', 'bbbb', 'cccc']);
    assert.deepEqual(fs.readdirSync(cache).sort(), ['.tmp-ffff-222-y', 'aaaa', 'dddd']);
    assert.equal(imageCacheLimit({ SHOAL_IMAGE_CACHE_MAX: '0' }), 0);
    assert.equal(imageCacheLimit({ SHOAL_IMAGE_CACHE_MAX: 'lots' }), 5);
  } finally {
    fs.rmSync(root, { recursive: true, force: true });
  }
});

test('snapshot lineage: parents, child snapshots and live clones; rm refuses while live clones map the snapshot', () => {
  const store = new StateStore(fs.mkdtempSync(path.join(os.tmpdir(), 'snaplineage-')));
  try {
    const root = { ...manifest('root'), id: 'r1' };
    const child = { ...manifest('child'), id: 'c1', parent: { tag: 'root', id: 'r1' } };
    // A snapshot that reused a removed snapshot's tag is not the parent of that one's children.
    const stranger = { ...manifest('other'), id: 'o1', parent: { tag: 'root', id: 'gone' } };
    for (const m of [root, child, stranger]) publish(store, makeTempDir(store, m.tag), m);
    const vm = (name: string, from: { tag: string; id?: string } | undefined, state: 'running' | 'stopped', pid?: number): void => {
      const record = {
        id: store.newId(), config: { ...root.config, name }, backend: 'qemu' as const, accel: 'tcg' as const, state, createdAt: new Date().toISOString(),
        ...(pid ? { supervisorPid: pid } : {}), ...(from ? { restoredFrom: from } : {}),
      };
      store.write(record);
    };
    vm('live-a', { tag: 'root', id: 'r1' }, 'running', process.pid);
    vm('live-b', { tag: 'root', id: 'r1' }, 'running', process.pid);
    vm('stopped', { tag: 'root', id: 'r1' }, 'stopped');
    vm('dead', { tag: 'root', id: 'r1' }, 'running', 4194305);
    vm('of-an-older-root', { tag: 'root', id: 'older' }, 'running', process.pid);
    vm('grandchild', { tag: 'child', id: 'c1' }, 'running', process.pid);
    const lineage = lineageOf(listSnapshots(store), store.list());
    assert.deepEqual(lineage.get('root'), { parent: null, children: ['child'], liveClones: ['live-a', 'live-b'] });
    assert.deepEqual(lineage.get('child'), { parent: 'root', children: [], liveClones: ['grandchild'] });
    assert.deepEqual(lineage.get('other'), { parent: 'root', children: [], liveClones: [] });

    // rm names the live clones and changes nothing; a child snapshot never holds its parent.
    assert.throws(() => removeSnapshot(store, 'root'), /snapshot root has live clones \(live-a, live-b\).*--force/);
    assert.ok(findSnapshot(store, 'root'));
    removeSnapshot(store, 'other');
    removeSnapshot(store, 'root', { force: true });
    assert.deepEqual(listSnapshots(store).map((s) => s.tag), ['child']);
    assert.equal(lineageOf(listSnapshots(store), store.list()).get('child')?.parent, 'root');
  } finally {
    fs.rmSync(store.root, { recursive: true, force: true });
  }
});

test('a dead fork\'s hidden snapshot is kept while a VM still restores from it, swept once none does', () => {
  const store = new StateStore(tempDir('snapsweep-'));
  fs.mkdirSync(snapshotsDir(store), { recursive: true, mode: 0o700 });
  // The fork CLI that made it is gone (pid 2^22 + 1 is above Linux's pid_max).
  const forkDir = path.join(snapshotsDir(store), `.fork-k1-${4194305}-abcdef`);
  fs.mkdirSync(forkDir, { mode: 0o700 });
  const id = store.newId();
  store.claimName('k1-1', id);
  const record: VmRecord = {
    id,
    config: { name: 'k1-1', image: 'x', command: [], env: {}, cpus: 1, memoryMiB: 256, interactive: false, detach: true, autoRemove: false, network: 'none', publish: [] },
    backend: 'qemu',
    accel: 'tcg',
    state: 'starting',
    createdAt: new Date().toISOString(),
    supervisorPid: process.pid,
    supervisorStartTime: processStartTime(process.pid)!,
  };
  store.write(record);
  writeJsonAtomic(restoreInfoPath(store.vmDir(id)), { snapshotDir: forkDir, tag: 'fork-k1' });
  assert.deepEqual(sweepStale(store), []);
  assert.ok(fs.existsSync(forkDir));
  // Running: its memory is mapped and its disk copied; the directory is needed no more.
  store.write({ ...record, state: 'running' });
  assert.deepEqual(sweepStale(store), [path.basename(forkDir)]);
  assert.ok(!fs.existsSync(forkDir));
});
