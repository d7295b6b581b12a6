/**
 * Orphaned guest memory files: removed when old and used by no process, kept while any process
 * maps or holds them, and kept while young (a VM being created has not mapped its own yet).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { removeOrphanMemoryFiles } from '../../src/state/vm-files';

test('orphaned memory files go; used or young ones stay', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-shm-'));
  const old = new Date(Date.now() - 3600_000);
  for (const name of ['shoal-aaaa.ram', 'shoal-bbbb.ram', 'shoal-cccc.ram', 'other.ram']) fs.writeFileSync(path.join(dir, name), 'x');
  for (const name of ['shoal-aaaa.ram', 'shoal-bbbb.ram', 'other.ram']) fs.utimesSync(path.join(dir, name), old, old);
  const held = path.join(dir, 'shoal-bbbb.ram');
  const holder = spawn('sh', ['-c', 'exec 3<"$1"; sleep 30', 'sh', held], { stdio: 'ignore' });
  try {
    // Wait until the holder has the file open.
    const openFiles = (): string[] => {
      try {
        return fs.readdirSync(`/proc/${holder.pid}/fd`).map((fd) => { try { return fs.readlinkSync(`/proc/${holder.pid}/fd/${fd}`); } catch { return ''; } });
      } catch {
        return [];
      }
    };
    const deadline = Date.now() + 5000;
    while (!openFiles().includes(held)) {
      assert.ok(Date.now() < deadline, 'the holder never opened the file');
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const removed = removeOrphanMemoryFiles(dir);
    assert.deepEqual(removed, [path.join(dir, 'shoal-aaaa.ram')]);
    assert.deepEqual(fs.readdirSync(dir).sort(), ['other.ram', 'shoal-bbbb.ram', 'shoal-cccc.ram']);
  } finally {
    holder.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
