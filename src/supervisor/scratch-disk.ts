/**
 * The per-VM scratch disk (vdb): container storage and the writable upper layer of the root.
 * A sparse file formatted on the host, so it costs no space until the guest writes; the
 * guest mounts it with noinit_itable so the kernel does not spend emulated CPU zeroing inode
 * tables in the background.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { promisify } from 'node:util';
import { ShoalError } from '../util/errors';

const execFileAsync = promisify(execFile);
export const SCRATCH_SIZE_GIB = 16;

export async function createScratchDisk(file: string, sizeGiB = SCRATCH_SIZE_GIB): Promise<void> {
  fs.rmSync(file, { force: true });
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, sizeGiB * 1024 * 1024 * 1024);
  fs.closeSync(fd);
  try {
    await execFileAsync('mkfs.ext4', ['-q', '-F', '-L', 'shoal-scratch', '-E', 'lazy_itable_init=1,lazy_journal_init=1,nodiscard', file]);
  } catch (err) {
    fs.rmSync(file, { force: true });
    throw new ShoalError(`formatting the scratch disk failed: ${(err as Error).message.split('\n')[0]}`);
  }
}
