/**
 * The guest-asset content-hash cache: atomic rename into place, temp folders
 * of dead builds ignored and swept, the O_EXCL lock (in-process and across
 * processes), stale-lock takeover, and hash stability.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  assetDir,
  ensureAsset,
  hashParts,
  isBuilt,
  pruneAssets,
  stableJson,
  sweepStale,
  tryLock,
  unlock,
  withLock,
} from '../../src/assets/cache';
import { writeFileAtomic } from '../../src/state/atomic';
import { processStartTime } from '../../src/util/process';

let dir: string;
before(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-cache-'));
});
after(() => fs.rmSync(dir, { recursive: true, force: true }));

function fresh(name: string): string {
  const d = path.join(dir, name);
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** A pid that is certainly not running: a child that has exited. */
async function deadPid(): Promise<number> {
  const c = spawn(process.execPath, ['-e', '0']);
  await new Promise((r) => c.on('close', r));
  return c.pid!;
}

describe('assets cache: hashes', () => {
  it('hashParts is stable, 16 hex chars, and sensitive to part boundaries', () => {
    const h = hashParts(['kernel/v1', 'linux-image-6.1.0-56-cloud-amd64', '6.1.192-2']);
    assert.match(h, /^[0-9a-f]{16}$/);
    assert.equal(h, hashParts(['kernel/v1', 'linux-image-6.1.0-56-cloud-amd64', '6.1.192-2']));
    // Pinned: changing the hashing scheme silently would orphan every cache.
    assert.equal(hashParts(['a', 'b']), 'cf6ab613e3942391');
    assert.equal(hashParts(['a', 'b']), hashParts([Buffer.from('a'), Buffer.from('b')]));
    assert.notEqual(hashParts(['ab', 'c']), hashParts(['a', 'bc']));
    assert.notEqual(hashParts(['a']), hashParts(['a', '']));
    assert.equal(hashParts([]), 'e3b0c44298fc1c14'); // sha256 of nothing
  });

  it('stableJson ignores key order and undefined values', () => {
    assert.equal(stableJson({ b: 1, a: [1, { y: 2, x: 1 }] }), stableJson({ a: [1, { x: 1, y: 2 }], b: 1, c: undefined }));
    assert.notEqual(stableJson({ a: [1, 2] }), stableJson({ a: [2, 1] }));
  });
});

describe('assets cache: build and rename', () => {
  it('builds in a temp sibling and renames into place only when complete', async () => {
    const root = fresh('build');
    let sawFinalDuringBuild = true;
    let tmpSeen = '';
    const r = await ensureAsset(
      'thing',
      '0123456789abcdef',
      async (tmp) => {
        tmpSeen = tmp;
        assert.equal(path.dirname(tmp), root);
        fs.writeFileSync(path.join(tmp, 'payload'), 'x');
        sawFinalDuringBuild = fs.existsSync(assetDir('thing', '0123456789abcdef', root));
      },
      { root },
    );
    assert.equal(sawFinalDuringBuild, false);
    assert.equal(r.built, true);
    assert.equal(r.dir, path.join(root, 'thing-0123456789abcdef'));
    assert.equal(fs.readFileSync(path.join(r.dir, 'payload'), 'utf8'), 'x');
    assert.equal(fs.existsSync(tmpSeen), false);
    assert.equal(fs.existsSync(`${r.dir}.lock`), false);

    let calls = 0;
    const again = await ensureAsset('thing', '0123456789abcdef', async () => void calls++, { root });
    assert.equal(again.built, false);
    assert.equal(calls, 0);
  });

  it('a failed build leaves neither the asset nor its temp folder, and releases the lock', async () => {
    const root = fresh('fail');
    await assert.rejects(
      ensureAsset('bad', 'ffff', async (tmp) => {
        fs.writeFileSync(path.join(tmp, 'half'), 'x');
        throw new Error('boom');
      }, { root }),
      /boom/,
    );
    assert.equal(isBuilt('bad', 'ffff', root), false);
    assert.deepEqual(fs.readdirSync(root), []);
  });

  it('temp folders of a killed build never count as built and are swept', async () => {
    const root = fresh('stale');
    const pid = await deadPid();
    const stale = path.join(root, `.tmp-kern-abcd-${pid}-12345-deadbeef`);
    fs.mkdirSync(stale);
    fs.writeFileSync(path.join(stale, 'vmlinuz'), 'partial');
    // A live build's temp folder (ours) must survive a sweep.
    const live = path.join(root, `.tmp-kern-abcd-${process.pid}-${processStartTime(process.pid)}-cafef00d`);
    fs.mkdirSync(live);
    assert.equal(isBuilt('kern', 'abcd', root), false);
    assert.deepEqual(sweepStale(root), [path.basename(stale)]);
    assert.equal(fs.existsSync(live), true);
    fs.rmSync(live, { recursive: true });

    const r = await ensureAsset('kern', 'abcd', async (tmp) => fs.writeFileSync(path.join(tmp, 'vmlinuz'), 'full'), { root });
    assert.equal(fs.readFileSync(path.join(r.dir, 'vmlinuz'), 'utf8'), 'full');
  });

  it('force rebuilds and replaces the existing folder', async () => {
    const root = fresh('force');
    await ensureAsset('a', '11', async (tmp) => fs.writeFileSync(path.join(tmp, 'v'), '1'), { root });
    const r = await ensureAsset('a', '11', async (tmp) => fs.writeFileSync(path.join(tmp, 'v'), '2'), { root, force: true });
    assert.equal(r.built, true);
    assert.equal(fs.readFileSync(path.join(r.dir, 'v'), 'utf8'), '2');
    assert.deepEqual(fs.readdirSync(root).sort(), ['a-11']);
  });

  it('two concurrent ensureAsset calls build once', async () => {
    const root = fresh('concurrent');
    let builds = 0;
    const build = async (tmp: string): Promise<void> => {
      builds++;
      await new Promise((r) => setTimeout(r, 200));
      fs.writeFileSync(path.join(tmp, 'v'), 'ok');
    };
    const [a, b] = await Promise.all([
      ensureAsset('c', '22', build, { root }),
      ensureAsset('c', '22', build, { root }),
    ]);
    assert.equal(builds, 1);
    assert.equal(a.dir, b.dir);
    assert.equal([a.built, b.built].filter(Boolean).length, 1);
  });

  it('two concurrent processes build once', async () => {
    const root = fresh('procs');
    const counter = path.join(root, 'builds.log');
    const cacheJs = path.join(__dirname, '..', '..', 'src', 'assets', 'cache.js');
    const script = `
      const { ensureAsset } = require(${JSON.stringify(cacheJs)});
      const fs = require('fs');
      ensureAsset('p', '33', async (tmp) => {
        fs.appendFileSync(${JSON.stringify(counter)}, process.pid + '\\n');
        await new Promise((r) => setTimeout(r, 500));
        fs.writeFileSync(tmp + '/v', 'ok');
      }, { root: ${JSON.stringify(root)}, onWait: () => console.log('waited') })
        .then((r) => console.log(JSON.stringify(r)), (e) => { console.error(e); process.exit(1); });
    `;
    const runOne = (): Promise<{ code: number | null; out: string }> =>
      new Promise((resolve) => {
        const c = spawn(process.execPath, ['-e', script]);
        let out = '';
        c.stdout.on('data', (b: Buffer) => (out += b.toString()));
        c.stderr.on('data', (b: Buffer) => (out += b.toString()));
        c.on('close', (code) => resolve({ code, out }));
      });
    const results = await Promise.all([runOne(), runOne()]);
    for (const r of results) assert.equal(r.code, 0, r.out);
    assert.equal(fs.readFileSync(counter, 'utf8').trim().split('\n').length, 1);
    assert.equal(fs.readFileSync(path.join(root, 'p-33', 'v'), 'utf8'), 'ok');
  });
});

describe('assets cache: locks', () => {
  it('O_EXCL lock: held while our process lives, taken over when the owner is dead', async () => {
    const root = fresh('locks');
    const lock = path.join(root, 'x.lock');
    assert.equal(tryLock(lock), true);
    assert.equal(tryLock(lock), false, 'a live owner (us) holds it');
    unlock(lock);
    assert.equal(fs.existsSync(lock), false);

    fs.writeFileSync(lock, JSON.stringify({ pid: await deadPid(), start: '1' }));
    assert.equal(tryLock(lock), true, 'stale lock of a dead pid is taken over');
    assert.equal(JSON.parse(fs.readFileSync(lock, 'utf8')).pid, process.pid);
    unlock(lock);

    // Pid reuse: the pid is alive (ours) but its start time differs.
    fs.writeFileSync(lock, JSON.stringify({ pid: process.pid, start: 'not-our-start-time' }));
    assert.equal(tryLock(lock), true);
    unlock(lock);
  });

  it('withLock waits for a live holder and then runs', async () => {
    const root = fresh('wait');
    const lock = path.join(root, 'y.lock');
    const order: string[] = [];
    let waited = false;
    const first = withLock(lock, async () => {
      order.push('first-start');
      await new Promise((r) => setTimeout(r, 300));
      order.push('first-end');
    });
    const second = withLock(lock, async () => void order.push('second'), { pollMs: 20, onWait: () => (waited = true) });
    await Promise.all([first, second]);
    assert.deepEqual(order, ['first-start', 'first-end', 'second']);
    assert.equal(waited, true);
  });

  it('writeFileAtomic replaces a file in one step', () => {
    const root = fresh('atomic');
    const f = path.join(root, 'accel.json');
    writeFileAtomic(f, 'one');
    writeFileAtomic(f, 'two');
    assert.equal(fs.readFileSync(f, 'utf8'), 'two');
    assert.deepEqual(fs.readdirSync(root), ['accel.json']);
  });
});

describe('assets cache: pruning', () => {
  it('keeps the current asset and the most recent spares, ignores other names', () => {
    const root = fresh('prune');
    const hashes = ['1111111111111111', '2222222222222222', '3333333333333333', '4444444444444444'];
    hashes.forEach((h, i) => {
      const d = path.join(root, `initramfs-${h}`);
      fs.mkdirSync(d);
      const t = new Date(Date.now() - (10 - i) * 60_000);
      fs.utimesSync(d, t, t);
    });
    fs.mkdirSync(path.join(root, 'rootfs-5555555555555555'));
    const removed = pruneAssets('initramfs', '1111111111111111', 1, root);
    assert.deepEqual(removed.sort(), ['initramfs-2222222222222222', 'initramfs-3333333333333333']);
    assert.deepEqual(fs.readdirSync(root).sort(), ['initramfs-1111111111111111', 'initramfs-4444444444444444', 'rootfs-5555555555555555']);
  });
});
