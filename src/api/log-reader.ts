/**
 * Reading a VM's container.log (records of stream:u8 length:u32be bytes, written by the
 * supervisor's ContainerLogWriter) for the API, once or following it.
 *
 * The file's bytes come from the guest, so nothing read is believed beyond what the writer can
 * write: a length above CONTAINER_LOG_MAX_RECORD, or a record cut short in a file that will not
 * grow any more (rotated away), ends the read with an error instead of allocating it. A follower
 * keeps its file open and follows it by identity (dev, ino): when the writer rotates
 * (container.log becomes container.log.1 and a new file starts), it finishes the old file
 * through its descriptor and starts the new one at offset 0, never reusing an offset of one
 * file in another.
 */
import fs from 'node:fs';
import { CONTAINER_LOG_MAX_RECORD } from '../util/log-limit';

export interface LogRecord {
  stream: 'stdout' | 'stderr';
  data: Buffer;
}

const HEADER = 5;

/** What one read gives: whole records, and an error once the log cannot be read any further. */
export interface LogRead {
  records: LogRecord[];
  /** Bytes of records returned (for the caller's own bounds). */
  bytes: number;
  error?: string;
}

function openNoFollow(file: string): number | undefined {
  try {
    return fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return undefined;
  }
}

/**
 * Whole records from `fd` at `offset`, about `maxBytes` of them (at least one record if one is
 * complete). One read of at most maxBytes + a header, parsed in memory; a first record longer
 * than that window is read alone (at most CONTAINER_LOG_MAX_RECORD): memory is bounded whatever
 * the file holds. `partial`: the bytes at `next` are the start of a record not (yet) complete.
 */
function readRecordsAt(fd: number, offset: number, maxBytes: number): { records: LogRecord[]; next: number; bytes: number; error?: string; partial: boolean } {
  const records: LogRecord[] = [];
  const size = fs.fstatSync(fd).size;
  const window = Math.min(size - offset, maxBytes + HEADER);
  if (window <= 0) return { records, next: offset, bytes: 0, partial: false };
  const buffer = Buffer.alloc(window);
  const read = fs.readSync(fd, buffer, 0, window, offset);
  let at = 0;
  let bytes = 0;
  while (at < read) {
    if (read - at < HEADER) return { records, next: offset + at, bytes, partial: true };
    const stream = buffer.readUInt8(at);
    const length = buffer.readUInt32BE(at + 1);
    if ((stream !== 1 && stream !== 2) || length > CONTAINER_LOG_MAX_RECORD) {
      return { records, next: offset + at, bytes, partial: false, error: `the container log is corrupt at byte ${offset + at} (stream ${stream}, length ${length}): not a record the supervisor writes` };
    }
    if (at + HEADER + length > read) {
      // Past the window: either a record the file does not hold whole yet, or (first in the
      // window) one longer than the window, read alone.
      if (at > 0) return { records, next: offset + at, bytes, partial: false };
      if (size - offset - HEADER < length) return { records, next: offset, bytes, partial: true };
      const data = Buffer.alloc(length);
      if (fs.readSync(fd, data, 0, length, offset + HEADER) < length) return { records, next: offset, bytes, partial: true };
      records.push({ stream: stream === 2 ? 'stderr' : 'stdout', data });
      return { records, next: offset + HEADER + length, bytes: length, partial: false };
    }
    records.push({ stream: stream === 2 ? 'stderr' : 'stdout', data: Buffer.from(buffer.subarray(at + HEADER, at + HEADER + length)) });
    bytes += length;
    at += HEADER + length;
  }
  return { records, next: offset + at, bytes, partial: false };
}

/** The records of `file` from its start, about maxBytes of them; `more` if some were left. */
export function readLog(file: string, maxBytes: number): LogRead & { more: boolean } {
  const fd = openNoFollow(file);
  if (fd === undefined) return { records: [], bytes: 0, more: false };
  try {
    const read = readRecordsAt(fd, 0, maxBytes);
    const more = read.next < fs.fstatSync(fd).size && !read.partial;
    return { records: read.records, bytes: read.bytes, more, ...(read.error !== undefined ? { error: read.error } : {}) };
  } finally {
    fs.closeSync(fd);
  }
}

/** Follows one log path across rotations; close() when done. */
export class LogFollower {
  private fd: number | undefined;
  private ino = -1;
  private dev = -1;
  private offset = 0;

  constructor(private readonly file: string) {}

  /** The next records (about maxBytes), or none yet; an error ends the follow. */
  read(maxBytes: number): LogRead {
    if (this.fd === undefined && !this.open()) return { records: [], bytes: 0 };
    // Looked at before reading: the writer closes a file before renaming it away, so once the
    // path names another file, what the open one holds is final.
    const moved = this.rotated();
    const read = readRecordsAt(this.fd!, this.offset, maxBytes);
    this.offset = read.next;
    if (read.error !== undefined || read.records.length > 0) return { records: read.records, bytes: read.bytes, ...(read.error !== undefined ? { error: read.error } : {}) };
    if (!moved) return { records: [], bytes: 0 };
    // A record cut short in a file that no longer grows is torn, not pending.
    if (read.partial) {
      const at = this.offset;
      this.close();
      return { records: [], bytes: 0, error: `the container log ends in a torn record at byte ${at}` };
    }
    this.close();
    return this.open() ? this.read(maxBytes) : { records: [], bytes: 0 };
  }

  close(): void {
    if (this.fd !== undefined) fs.closeSync(this.fd);
    this.fd = undefined;
  }

  private open(): boolean {
    const fd = openNoFollow(this.file);
    if (fd === undefined) return false;
    const st = fs.fstatSync(fd);
    this.fd = fd;
    this.dev = st.dev;
    this.ino = st.ino;
    this.offset = 0;
    return true;
  }

  /** Whether the path now names another file than the open one (or none). */
  private rotated(): boolean {
    try {
      const st = fs.lstatSync(this.file);
      return st.ino !== this.ino || st.dev !== this.dev;
    } catch {
      return false; // between the writer's rename and its open: look again next time
    }
  }
}
