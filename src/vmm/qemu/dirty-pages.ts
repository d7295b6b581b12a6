/**
 * The pages a restored VM changed, read from its VMM's address space.
 *
 * A restored QEMU maps its parent snapshot's memory file MAP_PRIVATE. A page the guest never
 * wrote is still the file's (not present yet, or present as a page-cache page); a page it wrote
 * is an anonymous copy-on-write page (or swapped out). /proc/PID/pagemap tells them apart
 * (Documentation/admin-guide/mm/pagemap.rst: bit 63 present, 62 swapped, 61 file-page or
 * shared-anon), and /proc/PID/mem reads the written ones. So the VM's memory at this instant is
 * the parent's file with those pages written over it, found and copied in time and space in
 * proportion to what the VM changed. (A read of a hole may map the shared zero page, which
 * pagemap reports as not a file page; such a page is copied too: zeros over zeros.)
 *
 * Needs ptrace access to the VMM (this process runs as root, or as the VMM's user).
 */
import fs from 'node:fs';

const PAGE_SIZE = 4096;
/** Read this many pagemap entries (8 bytes each) at once: 16 MiB of guest RAM per read. */
const PAGEMAP_BATCH = 4096;
/** The copy buffer: a run of dirty pages longer than this is copied in pieces. */
const COPY_CHUNK = 1024 * 1024;

/** A piece of a VMM's mapping of a file: host address, file offset, length. */
export interface MappingSegment {
  address: bigint;
  fileOffset: number;
  length: number;
}

/** A file a process maps privately: its mappings' pieces (madvise may split one), in file order. */
export interface PrivateFileMapping {
  /** The path the kernel shows (its last name, with " (deleted)" once unlinked). */
  path: string;
  segments: MappingSegment[];
  /** Bytes mapped in all. */
  bytes: number;
}

/** The files process pid maps privately (MAP_PRIVATE), by device and inode. */
export function privateFileMappings(pid: number): PrivateFileMapping[] {
  const files = new Map<string, PrivateFileMapping>();
  for (const line of fs.readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    // start-end perms offset major:minor inode path
    const m = /^([0-9a-f]+)-([0-9a-f]+) [r-][w-][x-]p ([0-9a-f]+) ([0-9a-f]+:[0-9a-f]+) (\d+) +(.*)$/.exec(line);
    if (!m || m[5] === '0') continue;
    const start = BigInt(`0x${m[1]}`);
    const length = Number(BigInt(`0x${m[2]}`) - start);
    const key = `${m[4]}/${m[5]}`;
    const file = files.get(key) ?? { path: m[6]!, segments: [], bytes: 0 };
    file.segments.push({ address: start, fileOffset: parseInt(m[3]!, 16), length });
    file.bytes += length;
    files.set(key, file);
  }
  for (const file of files.values()) file.segments.sort((a, b) => a.fileOffset - b.fileOffset);
  return [...files.values()];
}

export interface DirtyCopyResult {
  /** Pages copied (written by the guest since its restore, or swapped out). */
  dirtyPages: number;
  /** Pages looked at. */
  pages: number;
}

/**
 * Writes every page of the mapped segments that process pid changed into `target` (an fd of a
 * copy of the mapped file), at the page's file offset. The process must not run meanwhile.
 */
export async function copyDirtyPages(pid: number, segments: MappingSegment[], target: number): Promise<DirtyCopyResult> {
  const pagemap = await fs.promises.open(`/proc/${pid}/pagemap`, 'r');
  const memory = await fs.promises.open(`/proc/${pid}/mem`, 'r');
  const buffer = Buffer.allocUnsafe(COPY_CHUNK);
  const entries = Buffer.allocUnsafe(PAGEMAP_BATCH * 8);
  let dirtyPages = 0;
  let pages = 0;
  try {
    for (const segment of segments) {
      const count = Math.floor(segment.length / PAGE_SIZE);
      const firstPage = segment.address / BigInt(PAGE_SIZE);
      // Runs of dirty pages [start, end), in pages of the segment; a run may cross batches.
      let runStart = -1;
      for (let base = 0; base < count; base += PAGEMAP_BATCH) {
        const n = Math.min(PAGEMAP_BATCH, count - base);
        const position = Number((firstPage + BigInt(base)) * 8n);
        const { bytesRead } = await pagemap.read(entries, 0, n * 8, position);
        if (bytesRead !== n * 8) throw new Error(`short read of /proc/${pid}/pagemap`);
        const runs: Array<[number, number]> = [];
        for (let i = 0; i < n; i++) {
          const high = entries.readUInt32LE(i * 8 + 4);
          const present = (high & 0x80000000) !== 0;
          const swapped = (high & 0x40000000) !== 0;
          const filePage = (high & 0x20000000) !== 0;
          if (swapped || (present && !filePage)) {
            dirtyPages++;
            if (runStart < 0) runStart = base + i;
          } else if (runStart >= 0) {
            runs.push([runStart, base + i]);
            runStart = -1;
          }
        }
        for (const [from, to] of runs) await copyRun(memory, target, buffer, segment, from, to);
        pages += n;
      }
      if (runStart >= 0) await copyRun(memory, target, buffer, segment, runStart, count);
    }
  } finally {
    await pagemap.close();
    await memory.close();
  }
  return { dirtyPages, pages };
}

/** Copies pages [from, to) of a segment from the process's memory into the target file. */
async function copyRun(memory: fs.promises.FileHandle, target: number, buffer: Buffer, segment: MappingSegment, from: number, to: number): Promise<void> {
  for (let offset = from * PAGE_SIZE; offset < to * PAGE_SIZE; offset += COPY_CHUNK) {
    const length = Math.min(COPY_CHUNK, to * PAGE_SIZE - offset);
    const { bytesRead } = await memory.read(buffer, 0, length, Number(segment.address + BigInt(offset)));
    if (bytesRead !== length) throw new Error('short read of the VMM\'s memory');
    await writeAll(target, buffer.subarray(0, length), segment.fileOffset + offset);
  }
}

function writeAll(fd: number, data: Buffer, position: number): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.write(fd, data, 0, data.length, position, (err, written) => {
      if (err) reject(err);
      else if (written !== data.length) writeAll(fd, data.subarray(written), position + written).then(resolve, reject);
      else resolve();
    });
  });
}
