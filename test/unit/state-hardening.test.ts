/**
 * The state directory against a curious or hostile local user and a killed process: names and ids
 * validated before any path is built, claims that cannot be stolen or planted, private modes,
 * capped logs, leases against eviction, dead creators shown as dead.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { evictImageCache, imageCacheRoot, leaseSnapshotDir } from '../../src/snapshot/image-cache';
import { findSnapshot, makeTempDir, snapshotsDir, snapshotTempDirProblem } from '../../src/snapshot/store';
import { writeFileAtomic } from '../../src/state/atomic';
import { validateVmId } from '../../src/state/names';
import { StateStore, statusOf } from '../../src/state/store';
import type { VmRecord } from '../../src/state/vm-record';
import { capConsoleLog, ContainerLogWriter, readContainerLog } from '../../src/supervisor/container-log';
import { logMaxBytes } from '../../src/util/log-limit';
import { tempDir } from '../helpers/temp-dir';
import { createPrivateFile, ensurePrivateDir, entryOf, isInside } from '../../src/util/private-fs';

function tempStore(): StateStore {
  return new StateStore(path.join(tempDir('hard-'), 'state'));
}

function record(id: string, name: string, extra: Partial<VmRecord> = {}): VmRecord {
  return {
    id, backend: 'qemu', accel: 'tcg', state: 'stopped', createdAt: new Date().toISOString(),
    config: { name, image: 'x', command: [], env: {}, cpus: 1, memoryMiB: 256, interactive: false, detach: true, autoRemove: false, network: 'none', publish: [] },
    ...extra,
  } as VmRecord;
}

/** A pid that is certainly dead: a child that already exited. */
function deadPid(): number {
  const child = spawnSync('sh', ['-c', 'echo $$']);
  return Number(child.stdout.toString().trim());
}

const mode = (p: string): number => fs.statSync(p).mode & 0o777;

test('ids are 12 hex characters; anything else never becomes a path', () => {
  const store = tempStore();
  assert.equal(validateVmId('0123456789ab'), true);
  for (const bad of ['', '../../etc', '0123456789aB', '0123456789abc', '0123456789a/', '.', '..']) {
    assert.equal(validateVmId(bad), false, bad);
    assert.throws(() => store.vmDir(bad), /invalid VM id/);
    assert.equal(store.read(bad), undefined);
  }
});

test('names with path parts are refused everywhere they enter, with one clear error', () => {
  const store = tempStore();
  for (const bad of ['../x', '../../etc/passwd', 'a/b', '.hidden', '..', '.', '', 'x'.repeat(64), 'nul\0x']) {
    assert.throws(() => store.get(bad), /^ShoalError: invalid VM name or id: /, bad);
    assert.equal(store.find(bad), undefined);
    assert.equal(store.idForName(bad), undefined);
    assert.throws(() => store.claimName(bad, '0123456789ab'), /invalid VM name/);
    store.releaseName(bad, undefined); // a no-op, never an rm outside names/
  }
  assert.ok(!fs.existsSync(path.join(store.root, 'names')), 'nothing was created');
});

test('a planted claim whose id walks out of vms/ is not believed, and rm of it touches nothing outside', () => {
  const store = tempStore();
  store.ensureDir('names');
  const victim = tempDir('victim-');
  fs.writeFileSync(path.join(victim, 'state.json'), JSON.stringify(record('0123456789ab', 'evil')));
  fs.writeFileSync(path.join(store.namesDir, 'evil'), path.relative(store.vmsDir, victim));
  assert.equal(store.idForName('evil'), undefined);
  assert.throws(() => store.get('evil'), /no such VM: evil/);
  assert.ok(fs.existsSync(path.join(victim, 'state.json')));
});

test('a record is only believed in its own directory', () => {
  const store = tempStore();
  store.write(record('0123456789ab', 'one'));
  // A copy planted under another id (it names the first VM's id): ignored.
  fs.mkdirSync(store.vmDir('aaaaaaaaaaaa'));
  fs.copyFileSync(store.recordPath('0123456789ab'), store.recordPath('aaaaaaaaaaaa'));
  assert.equal(store.read('aaaaaaaaaaaa'), undefined);
  assert.equal(store.read('0123456789ab')?.config.name, 'one');
});

test('snapshot tags are validated before a path is built', () => {
  const store = tempStore();
  for (const bad of ['../x', 'a/b', '.x', '..', '']) assert.throws(() => findSnapshot(store, bad), /invalid snapshot tag/);
});

test('the state directory is private: 0700 dirs (tightened if older), 0600 records', () => {
  const store = tempStore();
  fs.mkdirSync(store.root, { mode: 0o755 });
  fs.chmodSync(store.root, 0o755);
  store.write(record('0123456789ab', 'one'));
  store.claimName('one', '0123456789ab');
  assert.equal(mode(store.root), 0o700);
  assert.equal(mode(store.vmsDir), 0o700);
  assert.equal(mode(store.vmDir('0123456789ab')), 0o700);
  assert.equal(mode(store.recordPath('0123456789ab')), 0o600);
  assert.equal(mode(store.namesDir), 0o700);
  assert.equal(mode(path.join(store.namesDir, 'one')), 0o600);
  assert.equal(mode(makeTempDir(store, 't')), 0o700);
  assert.equal(mode(path.join(store.root, 'snapshots')), 0o700);
});

test('a record is written 0600 whatever the umask, and not through a planted symlink', () => {
  const dir = tempDir('atomic-');
  const old = process.umask(0);
  try {
    writeFileAtomic(path.join(dir, 'a.json'), '{}');
  } finally {
    process.umask(old);
  }
  assert.equal(mode(path.join(dir, 'a.json')), 0o600);
});

test('ensurePrivateDir refuses a symlink; createPrivateFile refuses a planted file or symlink', () => {
  const base = tempDir('priv-');
  fs.symlinkSync('/tmp', path.join(base, 'link'));
  assert.throws(() => ensurePrivateDir(path.join(base, 'link')), /not a directory/);
  fs.writeFileSync(path.join(base, 'planted'), 'x');
  assert.throws(() => createPrivateFile(path.join(base, 'planted')), /EEXIST/);
  fs.symlinkSync(path.join(base, 'target'), path.join(base, 'dangling'));
  assert.throws(() => createPrivateFile(path.join(base, 'dangling')), /EEXIST/);
  assert.ok(!fs.existsSync(path.join(base, 'target')), 'the symlink was not followed');
  const fd = createPrivateFile(path.join(base, 'fresh'));
  fs.closeSync(fd);
  assert.equal(mode(path.join(base, 'fresh')), 0o600);
  assert.equal(isInside(base, path.join(base, 'a', '..', 'b')), true);
  assert.equal(isInside(base, path.join(base, '..', 'x')), false);
  assert.equal(isInside(base, base), false);
  assert.throws(() => entryOf(base, '../x'), /not a plain name/);
  assert.throws(() => entryOf(base, '..'), /not a plain name/);
  assert.equal(entryOf(base, 'ok'), path.join(base, 'ok'));
});

test('the guest RAM file is created 0600, and a planted one is refused', () => {
  const shm = tempDir('shm-');
  // In a fresh process: the directory is read once, when src/state/vm-files loads, and this file
  // has loaded it already (with the real /dev/shm, which the test must not write to).
  const script = `
    const fs = require('node:fs');
    const files = require(${JSON.stringify(path.resolve(__dirname, '../../src/state/vm-files.js'))});
    const out = {};
    files.createMemoryFile('0123456789ab');
    out.path = files.memoryFilePath('0123456789ab');
    out.mode = fs.statSync(out.path).mode & 0o777;
    fs.writeFileSync(files.memoryFilePath('aaaaaaaaaaaa'), 'planted');
    try { files.createMemoryFile('aaaaaaaaaaaa'); } catch (e) { out.planted = e.message; }
    fs.symlinkSync('/etc/passwd', files.memoryFilePath('bbbbbbbbbbbb'));
    try { files.createMemoryFile('bbbbbbbbbbbb'); } catch (e) { out.symlink = e.message; }
    process.stdout.write(JSON.stringify(out));`;
  const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, SHOAL_SHM_DIR: shm }, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { path: string; mode: number; planted?: string; symlink?: string };
  assert.equal(out.path, path.join(shm, 'shoal-0123456789ab.ram'));
  assert.equal(out.mode, 0o600);
  assert.match(out.planted ?? '', /exists already .* refusing/);
  assert.match(out.symlink ?? '', /exists already/);
  assert.equal(fs.readFileSync('/etc/passwd', 'utf8').includes('root'), true, '/etc/passwd untouched');
});

test('a name claim held by a live creator without a record yet is not taken over; a dead creator\'s is', () => {
  const store = tempStore();
  store.ensureDir('names');
  // Live: this very process is "creating" it.
  fs.writeFileSync(path.join(store.namesDir, 'busy'), `aaaaaaaaaaaa\n${process.pid} x\n`);
  // The start time does not match this process: treated as another (dead) process with our pid.
  assert.doesNotThrow(() => store.claimName('busy', '0123456789ab'));
  assert.equal(store.idForName('busy'), '0123456789ab');
  const live = fs.readFileSync(path.join(store.namesDir, 'busy'), 'utf8');
  assert.match(live, /^0123456789ab\n\d+ \S+\n$/);
  // A second claimant while the first is alive and has no record: refused.
  assert.throws(() => store.claimName('busy', 'bbbbbbbbbbbb'), /already in use by VM 0123456789ab/);
  fs.writeFileSync(path.join(store.namesDir, 'dead'), `aaaaaaaaaaaa\n${deadPid()}\n`);
  store.claimName('dead', 'cccccccccccc');
  assert.equal(store.idForName('dead'), 'cccccccccccc');
  assert.deepEqual(fs.readdirSync(store.namesDir).filter((n) => n.includes('.reap-')), []);
});

test('two processes claiming one name at once: exactly one wins', async () => {
  const store = tempStore();
  store.ensureDir();
  const script = `
    const { StateStore } = require(${JSON.stringify(path.resolve(__dirname, '../../src/state/store.js'))});
    const store = new StateStore(process.argv[1]);
    const id = process.argv[2];
    const wait = Date.now() + 300; while (Date.now() < wait) {}
    try { store.claimName('race', id); process.stdout.write('won'); } catch (e) { process.stdout.write('lost'); }
    setTimeout(() => {}, 500);
  `;
  for (let round = 0; round < 5; round++) {
    fs.rmSync(store.namesDir, { recursive: true, force: true });
    const { spawn } = await import('node:child_process');
    const results = await Promise.all(['aaaaaaaaaaa1', 'aaaaaaaaaaa2', 'aaaaaaaaaaa3'].map((id) => new Promise<string>((resolve) => {
      const child = spawn(process.execPath, ['-e', script, store.root, id]);
      let out = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      child.on('close', () => resolve(out));
    })));
    assert.equal(results.filter((r) => r === 'won').length, 1, `round ${round}: ${results.join(',')}`);
  }
});

test('a VM whose creator died before spawning its supervisor shows as dead, not creating', () => {
  const store = tempStore();
  const mine = record('0123456789ab', 'one', { state: 'creating' });
  store.write(mine);
  assert.equal(store.read('0123456789ab')?.creatorPid, process.pid);
  assert.equal(statusOf(store.read('0123456789ab')!), 'creating');
  const orphan = record('aaaaaaaaaaaa', 'two', { state: 'creating', creatorPid: deadPid() });
  store.write(orphan);
  assert.equal(statusOf(store.read('aaaaaaaaaaaa')!), 'dead');
});

test('the container log is capped and rotated, and read back in order across the rotation', () => {
  const dir = tempDir('clog-');
  const file = path.join(dir, 'container.log');
  const writer = new ContainerLogWriter(file, 64 * 1024);
  const line = Buffer.alloc(1000, 0x61);
  for (let i = 0; i < 1000; i++) writer.append(i % 2 ? 2 : 1, Buffer.concat([Buffer.from(`${i}:`), line]));
  writer.close();
  assert.equal(mode(file), 0o600);
  const total = fs.statSync(file).size + fs.statSync(`${file}.1`).size;
  assert.ok(total <= 2 * (64 * 1024 + 1100), `kept ${total} bytes`);
  const records = [...readContainerLog(file)];
  const first = Number(records[0]!.data.toString().split(':')[0]);
  assert.ok(first > 0, 'the oldest records were dropped');
  records.forEach((r, i) => {
    assert.equal(Number(r.data.toString().split(':')[0]), first + i, 'in order, none missing after the first kept');
    assert.equal(r.stream, (first + i) % 2 ? 2 : 1);
  });
  assert.equal(Number(records[records.length - 1]!.data.toString().split(':')[0]), 999);
});

test('the console log is capped by copy and truncate; the limit comes from SHOAL_LOG_MAX_BYTES', () => {
  const dir = tempDir('con-');
  const file = path.join(dir, 'console.log');
  const fd = fs.openSync(file, 'a');
  fs.writeSync(fd, Buffer.alloc(100_000, 0x62));
  assert.equal(capConsoleLog(file, 64 * 1024), true);
  assert.equal(fs.statSync(file).size, 0);
  assert.equal(fs.statSync(`${file}.1`).size, 100_000);
  fs.writeSync(fd, 'after'); // the VMM appends at the new start
  fs.closeSync(fd);
  assert.equal(fs.readFileSync(file, 'utf8'), 'after');
  assert.equal(capConsoleLog(file, 64 * 1024), false);
  assert.equal(logMaxBytes({ SHOAL_LOG_MAX_BYTES: '1000000' }), 1_000_000);
  assert.equal(logMaxBytes({ SHOAL_LOG_MAX_BYTES: '10' }), 64 * 1024);
  assert.equal(logMaxBytes({ SHOAL_LOG_MAX_BYTES: 'lots' }), 16 * 1024 * 1024);
  assert.equal(logMaxBytes({}), 16 * 1024 * 1024);
});

test('an image-cache entry a VM is restoring from is never evicted; its lease ends with the restore', () => {
  const store = tempStore();
  const root = imageCacheRoot(store);
  for (const [i, key] of ['old', 'mid', 'new'].entries()) {
    fs.mkdirSync(path.join(root, key), { recursive: true });
    fs.writeFileSync(path.join(root, key, 'snapshot.json'), '{}');
    const t = new Date(Date.now() - (3 - i) * 60_000);
    fs.utimesSync(path.join(root, key, 'snapshot.json'), t, t);
  }
  const release = leaseSnapshotDir(path.join(root, 'old'));
  assert.deepEqual(evictImageCache(store, 1).sort(), ['mid']);
  assert.ok(fs.existsSync(path.join(root, 'old', 'snapshot.json')));
  release();
  assert.deepEqual(evictImageCache(store, 1), ['old']);
  // A lease of a process that died does not pin the entry.
  fs.mkdirSync(path.join(root, 'stale'));
  fs.writeFileSync(path.join(root, 'stale', 'snapshot.json'), '{}');
  const t = new Date(Date.now() - 3600_000);
  fs.utimesSync(path.join(root, 'stale', 'snapshot.json'), t, t);
  fs.writeFileSync(path.join(root, 'stale', `.lease-${deadPid()}-0`), '');
  assert.deepEqual(evictImageCache(store, 1), ['stale']);
});

test('bridged address claims: racing takers of one stale claim end up with distinct addresses', async () => {
  const { spawn } = await import('node:child_process');
  for (let round = 0; round < 3; round++) {
    const dir = tempDir('claims-');
    fs.writeFileSync(path.join(dir, '10.77.0.2'), JSON.stringify({ id: 'dead00000000', pid: deadPid() }));
    const script = `
      const { claimAddress } = require(${JSON.stringify(path.resolve(__dirname, '../../src/network/bridge.js'))});
      const wait = Date.now() + 300; while (Date.now() < wait) {}
      process.stdout.write(claimAddress(process.argv[1], process.pid, process.argv[2]));
      setTimeout(() => {}, 500);
    `;
    const got = await Promise.all(['aaaaaaaaaaa1', 'aaaaaaaaaaa2', 'aaaaaaaaaaa3'].map((id) => new Promise<string>((resolve) => {
      const child = spawn(process.execPath, ['-e', script, id, dir]);
      let out = '';
      child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
      child.on('close', () => resolve(out));
    })));
    assert.equal(new Set(got).size, 3, `round ${round}: ${got.join(',')}`);
    assert.ok(got.includes('10.77.0.2'), 'the stale claim was taken over');
    assert.deepEqual(fs.readdirSync(dir).filter((n) => !/^10\.77\.0\.\d+$/.test(n)), [], 'no temp or reap files left');
  }
});

test('the control socket\'s snapshot directory must be a temp directory of this state directory\'s snapshots/', () => {
  const store = tempStore();
  const good = makeTempDir(store, 'tag');
  assert.equal(snapshotTempDirProblem(store, good), undefined);
  assert.equal(snapshotTempDirProblem(store, makeTempDir(store, 'x', 'fork')), undefined);
  const elsewhere = tempDir('.tmp-x-');
  for (const bad of ['', '/etc', elsewhere, path.join(snapshotsDir(store), 'published'), path.join(good, '..', '..', 'vms'), path.join(good, 'sub')]) {
    assert.match(snapshotTempDirProblem(store, bad) ?? '', /is not a temporary directory/, bad);
  }
  // A symlink planted under a temp name, pointing elsewhere: refused.
  const link = path.join(snapshotsDir(store), '.tmp-evil-1-abcdef');
  fs.symlinkSync(elsewhere, link);
  assert.match(snapshotTempDirProblem(store, link) ?? '', /not a directory of ours/);
  assert.match(snapshotTempDirProblem(store, path.join(snapshotsDir(store), '.tmp-gone-1-abcdef')) ?? '', /does not exist/);
});
