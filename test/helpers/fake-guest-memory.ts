/**
 * The fake Firecracker's guest memory, and what v1.16.1 writes of it into a snapshot's memory
 * file. Modelled on (paths in Firecracker's repository at tag v1.16.1):
 *
 *  - src/vmm/src/persist.rs guest_memory_from_file -> vstate/memory.rs snapshot_file: a File
 *    backend is mapped MAP_PRIVATE (the guest's writes are copy-on-write, the file is never
 *    changed, the mapping keeps its inode); a file shorter than the memory fails the load
 *    (OffsetTooLarge). Uffd: anonymous memory whose pages a page server fills from its file.
 *  - src/vmm/src/vstate/vm.rs snapshot_memory_to_file: open with create, no truncate; an existing
 *    file whose size is not the memory's is truncated to 0; then set_len(memory size). Full:
 *    `dump` writes every page, then the dirty log is reset (reset_dirty_bitmap + reset_dirty).
 *    Diff: `get_dirty_bitmap` (KVM_GET_DIRTY_LOG, which clears KVM's log, or mincore(2) when
 *    tracking is off) ORed with Firecracker's own bitmap, then `dump_dirty` writes only those
 *    pages, each at its offset, seeking over the rest: an existing file of the right size keeps
 *    its other pages (the Diff is merged into it). On success the bitmap is reset; on a write
 *    error it is stored back (store_dirty_bitmap), so the pages stay dirty.
 *  - The file layout is the guest's regions one after another (memory.rs dump/dump_dirty, and the
 *    Uffd mappings' `offset += region size` in persist.rs create_guest_memory): the fake has one
 *    region, so page i is at offset i * 4096.
 *
 * Deviation, not observable in the bytes: a Full dump into a new (or truncated) file skips runs of
 * zero pages, leaving holes where Firecracker writes zeros, so a 256 MiB test guest costs nothing.
 */
import fs from 'node:fs';
import { getSystemErrorMap } from 'node:util';

export const PAGE = 4096;
const CHUNK = 1024 * 1024;

/** Where the pages the guest has not written come from. */
type Source = { kind: 'zero' } | { kind: 'file'; fd: number } | { kind: 'unknown'; why: string };

export class FakeGuestMemory {
  /** Pages the guest wrote since it started: anonymous, or copy-on-write of a private file mapping. */
  private readonly written = new Map<number, Buffer>();
  /** KVM's dirty log together with Firecracker's bitmap: pages written since the load or the last snapshot. */
  private readonly dirty = new Set<number>();

  private constructor(readonly bytes: number, private readonly source: Source, readonly tracking: boolean) {}

  /** A booted guest: memory starts zeroed. */
  static zeroed(bytes: number, tracking: boolean): FakeGuestMemory {
    return new FakeGuestMemory(bytes, { kind: 'zero' }, tracking);
  }

  /** A File-backed load (or a Uffd one whose page server serves `file`); an error message on failure. */
  static fromFile(file: string, bytes: number, tracking: boolean): FakeGuestMemory | string {
    let fd: number;
    try {
      fd = fs.openSync(file, 'r');
    } catch (e) {
      return `Failed to load guest memory: ${ioText(e)}`;
    }
    if (fs.fstatSync(fd).size < bytes) {
      fs.closeSync(fd);
      return 'Failed to restore guest memory: Total sum of memory regions exceeds largest possible file offset';
    }
    return new FakeGuestMemory(bytes, { kind: 'file', fd }, tracking);
  }

  /** A Uffd load whose page server's file the fake was not told: only written pages are known. */
  static unknownSource(bytes: number, tracking: boolean, why: string): FakeGuestMemory {
    return new FakeGuestMemory(bytes, { kind: 'unknown', why }, tracking);
  }

  close(): void {
    if (this.source.kind === 'file') fs.closeSync(this.source.fd);
  }

  /** The guest (a vCPU, or a device through guest memory) writes `data` at `offset`. */
  write(offset: number, data: Buffer): void {
    if (offset < 0 || offset + data.length > this.bytes) throw new Error(`guest write [${offset}, ${offset + data.length}) is outside its ${this.bytes} bytes`);
    let done = 0;
    while (done < data.length) {
      const at = offset + done;
      const index = Math.floor(at / PAGE);
      const page = this.written.get(index) ?? this.readPages(index, 1);
      const n = Math.min(PAGE - (at % PAGE), data.length - done);
      data.copy(page, at % PAGE, done, done + n);
      this.written.set(index, page);
      this.dirty.add(index);
      done += n;
    }
  }

  /** `count` pages from `first` as the guest sees them. */
  private readPages(first: number, count: number): Buffer {
    const buf = Buffer.alloc(count * PAGE);
    if (this.source.kind === 'file') fs.readSync(this.source.fd, buf, 0, buf.length, first * PAGE);
    for (let i = 0; i < count; i++) {
      const w = this.written.get(first + i);
      if (w) w.copy(buf, i * PAGE);
      else if (this.source.kind === 'unknown') throw new Error(this.source.why);
    }
    return buf;
  }

  /** mincore(2) over the guest's mapping: every written page, and every page of the backing file in the page cache (here: every non-zero one). */
  private resident(): number[] {
    const pages = new Set(this.written.keys());
    if (this.source.kind === 'file') {
      for (let first = 0; first * PAGE < this.bytes; first += CHUNK / PAGE) {
        const count = Math.min(CHUNK, this.bytes - first * PAGE) / PAGE;
        const buf = Buffer.alloc(count * PAGE);
        fs.readSync(this.source.fd, buf, 0, buf.length, first * PAGE);
        for (let i = 0; i < count; i++) if (!isZero(buf.subarray(i * PAGE, (i + 1) * PAGE))) pages.add(first + i);
      }
    }
    return [...pages];
  }

  /**
   * PUT /snapshot/create's memory part (vm.rs snapshot_memory_to_file). Returns Firecracker's
   * fault message on failure (VmmActionError::CreateSnapshot -> CreateSnapshotError), else null.
   */
  snapshot(file: string, kind: 'Full' | 'Diff'): string | null {
    const existed = fs.existsSync(file);
    let fd: number;
    try {
      fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT, 0o644);
    } catch (e) {
      return `Create snapshot error: Cannot perform open on the memory backing file: ${ioText(e)}`;
    }
    try {
      let fresh = !existed;
      if (existed && fs.fstatSync(fd).size !== this.bytes) {
        fs.ftruncateSync(fd, 0);
        fresh = true;
      }
      try {
        fs.ftruncateSync(fd, this.bytes);
      } catch (e) {
        return `Create snapshot error: Cannot perform set_length on the memory backing file: ${ioText(e)}`;
      }
      if (kind === 'Full') {
        try {
          this.dumpAll(fd, fresh);
        } catch (e) {
          return `Create snapshot error: Cannot write memory file: Cannot dump memory: ${ioText(e)}`;
        }
      } else {
        // get_dirty_bitmap: KVM's log (cleared by the ioctl) or mincore; dump_dirty ORs in Firecracker's bitmap.
        const pages = (this.tracking ? [...this.dirty] : this.resident()).sort((a, b) => a - b);
        this.dirty.clear();
        try {
          for (const index of pages) fs.writeSync(fd, this.readPages(index, 1), 0, PAGE, index * PAGE);
        } catch (e) {
          if (this.tracking) for (const index of pages) this.dirty.add(index); // store_dirty_bitmap
          return `Create snapshot error: Cannot write memory file: Volatile memory error: ${ioText(e)}`;
        }
      }
      this.dirty.clear();
      try {
        fs.fsyncSync(fd);
      } catch (e) {
        return `Create snapshot error: Cannot perform sync_all on the memory backing file: ${ioText(e)}`;
      }
      return null;
    } finally {
      fs.closeSync(fd);
    }
  }

  /** `dump`: every page in order; zero runs skipped only where the file has nothing yet. */
  private dumpAll(fd: number, fresh: boolean): void {
    for (let first = 0; first * PAGE < this.bytes; first += CHUNK / PAGE) {
      const count = Math.min(CHUNK, this.bytes - first * PAGE) / PAGE;
      const buf = this.readPages(first, count);
      if (fresh && isZero(buf)) continue;
      fs.writeSync(fd, buf, 0, buf.length, first * PAGE);
    }
  }
}

const ZERO = Buffer.alloc(CHUNK);

function isZero(buf: Buffer): boolean {
  return buf.equals(ZERO.subarray(0, buf.length));
}

/** An fs error as Rust's io::Error prints it: "No space left on device (os error 28)". */
function ioText(e: unknown): string {
  const errno = (e as NodeJS.ErrnoException).errno;
  const entry = typeof errno === 'number' ? getSystemErrorMap().get(errno) : undefined;
  if (!entry) return (e as Error).message;
  return `${entry[1].charAt(0).toUpperCase()}${entry[1].slice(1)} (os error ${-errno!})`;
}
