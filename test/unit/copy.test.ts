/**
 * copySparse (src/util/copy.ts): an untouched region stays a hole, and a failure is one line
 * naming the file and the reason (a full disk during a snapshot must read as one `shoal:` line).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { copySparse } from '../../src/util/copy';
import { tempDir } from '../helpers/temp-dir';

test('a sparse file is copied sparse, contents intact', async () => {
  const dir = tempDir('copy-');
  const from = path.join(dir, 'from');
  const fd = fs.openSync(from, 'w', 0o600);
  fs.ftruncateSync(fd, 64 * 1024 * 1024);
  fs.writeSync(fd, Buffer.from('middle'), 0, 6, 32 * 1024 * 1024);
  fs.closeSync(fd);
  await copySparse(from, path.join(dir, 'to'));
  const to = fs.statSync(path.join(dir, 'to'));
  assert.equal(to.size, 64 * 1024 * 1024);
  assert.ok(to.blocks * 512 <= 1024 * 1024, `${to.blocks * 512} bytes allocated`);
  const back = Buffer.alloc(6);
  const rfd = fs.openSync(path.join(dir, 'to'), 'r');
  fs.readSync(rfd, back, 0, 6, 32 * 1024 * 1024);
  fs.closeSync(rfd);
  assert.equal(back.toString(), 'middle');
});

test('a full filesystem: one line with the file name and the reason', { skip: process.getuid?.() === 0 ? false : 'needs root (mounts a tmpfs)' }, async () => {
  const dir = tempDir('copy-full-');
  const from = path.join(dir, 'random');
  fs.writeFileSync(from, Buffer.alloc(3 * 1024 * 1024, 7));
  const small = path.join(dir, 'small');
  fs.mkdirSync(small);
  execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', small]);
  try {
    await assert.rejects(copySparse(from, path.join(small, 'memory.raw')), (err: Error) => {
      assert.equal(err.message, 'cannot copy to memory.raw: No space left on device');
      return true;
    });
  } finally {
    execFileSync('umount', [small]);
  }
});
