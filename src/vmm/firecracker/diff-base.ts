/**
 * The memory file a Firecracker VM's next Diff snapshot is merged onto: the guest's memory as it
 * was at the last point its dirty-page log was reset (the load of a snapshot, or the last
 * snapshot taken). A Diff holds only the pages dirtied since then, so memory.raw = a copy of
 * this file with the Diff written over it (Firecracker merges a Diff into an existing file of
 * the memory's size itself: v1.16.1 src/vmm/src/vstate/vm.rs, snapshot_memory_to_file).
 *
 * The file is held open from the moment it becomes the base: a snapshot removed meanwhile
 * (`snapshot rm`, the image cache's eviction, a failed snapshot's clean-up) takes its name away,
 * not its data, so the base cannot be lost while it is needed. For the first base that costs
 * nothing more than the VM's own mapping of it (MAP_PRIVATE keeps the same inode alive).
 */
import fs from 'node:fs';
import path from 'node:path';
import { copySparse } from '../../util/copy';

export class DiffBase {
  private constructor(
    private fd: number,
    /** Where it was opened (for messages; the name may be gone since). */
    readonly path: string,
  ) {}

  /**
   * Opens `file` as a base for a guest of `bytes` memory, or says why it cannot be one: gone, or
   * not the memory's size (Firecracker would then truncate it to nothing and write only the
   * Diff's pages: snapshot_memory_to_file, `file_size != expected_size` -> set_len(0)).
   */
  static open(file: string, bytes: number): DiffBase | { reason: string } {
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      return { reason: `its memory base ${file} cannot be opened (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})` };
    }
    const size = fs.fstatSync(fd).size;
    if (size !== bytes) {
      fs.closeSync(fd);
      return { reason: `its memory base ${file} is ${size} bytes, not the guest's ${bytes}` };
    }
    return new DiffBase(fd, file);
  }

  /**
   * A reflink or sparse copy of the base at `to` (util/copy.ts; one-line errors). Read through
   * this process's descriptor, so a base whose name was removed still copies.
   */
  copyTo(to: string): Promise<void> {
    if (this.fd < 0) return Promise.reject(new Error(`the memory base ${path.basename(this.path)} was released`));
    return copySparse(`/proc/${process.pid}/fd/${this.fd}`, to);
  }

  close(): void {
    if (this.fd < 0) return;
    fs.closeSync(this.fd);
    this.fd = -1;
  }
}
