/**
 * The changed pages of a private file mapping (src/vmm/qemu/dirty-pages.ts), in a real process:
 * python maps a file MAP_PRIVATE as QEMU maps a clone's RAM, reads some pages, writes others,
 * and stops (SIGSTOP) as a paused VM would. The copy of the file with the pages read from
 * /proc/PID/mem written over it must equal the process's view, and only written pages count.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { copyDirtyPages, privateFileMappings } from '../../src/vmm/qemu/dirty-pages';
import { tempDir } from '../helpers/temp-dir';

const PAGES = 512;
const PAGE = 4096;

const PROGRAM = `
import mmap, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
m = mmap.mmap(fd, ${PAGES * PAGE}, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
total = 0
for p in range(0, ${PAGES}, 3):
    total += m[p * ${PAGE}]                      # read: stays the file's page
for p in [1, 2, 5, 100, 101, 102, 103, ${PAGES - 1}]:
    m[p * ${PAGE} + 17] = (p * 7 + 1) % 256      # write: a private copy
sys.stdout.write("ready\\n"); sys.stdout.flush()
os.kill(os.getpid(), 19)                     # SIGSTOP: the "paused VM"
`;

test('the pages a process wrote to its private mapping are found and copied; read pages are not', async () => {
  const dir = tempDir('sh-dirty-');
  const file = path.join(dir, 'memory.raw');
  const content = crypto.randomBytes(PAGES * PAGE);
  // A hole, as in a sparse memory file: pages 200..263 read as zeros.
  content.fill(0, 200 * PAGE, 264 * PAGE);
  fs.writeFileSync(file, content);
  const child = spawn('python3', ['-c', PROGRAM, file], { stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => resolve());
      child.once('exit', (code) => reject(new Error(`python exited ${code}`)));
    });
    // Unlinked while mapped, as fork's snapshot is once its children run.
    fs.unlinkSync(file);
    // Stopped for sure before we read (SIGSTOP follows the line).
    for (let i = 0; i < 200 && !/^State:\s+T/m.test(fs.readFileSync(`/proc/${child.pid}/status`, 'utf8')); i++) await new Promise((r) => setTimeout(r, 10));

    const mapped = privateFileMappings(child.pid!).filter((f) => f.path === `${file} (deleted)`);
    assert.equal(mapped.length, 1);
    const { segments } = mapped[0]!;
    assert.equal(mapped[0]!.bytes, PAGES * PAGE);
    assert.equal(segments[0]!.fileOffset, 0);

    const copy = path.join(dir, 'copy.raw');
    fs.writeFileSync(copy, content);
    const fd = fs.openSync(copy, 'r+');
    const result = await copyDirtyPages(child.pid!, segments, fd);
    fs.closeSync(fd);

    assert.deepEqual(result, { dirtyPages: 8, pages: PAGES });
    const expected = Buffer.from(content);
    for (const p of [1, 2, 5, 100, 101, 102, 103, PAGES - 1]) expected[p * PAGE + 17] = (p * 7 + 1) % 256;
    assert.ok(fs.readFileSync(copy).equals(expected), 'the copy is the process\'s view of its memory');
  } finally {
    child.kill('SIGKILL');
  }
});

test('privateFileMappings lists a process\'s libraries, not its anonymous memory', () => {
  const mapped = privateFileMappings(process.pid);
  assert.ok(mapped.some((f) => /\/(node|libc[.-][^/]*)$/.test(f.path)), JSON.stringify(mapped.map((f) => f.path)));
  assert.ok(mapped.every((f) => f.path.startsWith('/') && f.bytes > 0));
});
