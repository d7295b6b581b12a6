/**
 * The main container's output, kept on the host for `shoal logs`: records of
 * stream:u8 length:u32be bytes, so stdout and stderr stay apart byte for byte.
 *
 * A guest decides how much it writes, so the log is capped: once the file passes the limit it
 * becomes `<file>.1` (replacing the previous one) and a new file starts. At most twice the limit
 * is kept (SHOAL_LOG_MAX_BYTES, see src/util/log-limit.ts). Reading streams record by record.
 */
import fs from 'node:fs';
import { CONTAINER_LOG_MAX_RECORD, logMaxBytes } from '../util/log-limit';

export class ContainerLogWriter {
  private fd: number;
  private size: number;

  constructor(private readonly file: string, private readonly maxBytes: number = logMaxBytes()) {
    this.fd = fs.openSync(file, 'a', 0o600);
    this.size = fs.fstatSync(this.fd).size;
  }

  append(stream: number, data: Buffer): void {
    // Readers refuse a record longer than CONTAINER_LOG_MAX_RECORD: split what is longer.
    for (let at = 0; at < data.length || (at === 0 && data.length === 0); at += CONTAINER_LOG_MAX_RECORD) {
      this.appendRecord(stream, data.subarray(at, at + CONTAINER_LOG_MAX_RECORD));
      if (data.length === 0) break;
    }
  }

  private appendRecord(stream: number, data: Buffer): void {
    if (this.size >= this.maxBytes) this.rotate();
    const header = Buffer.allocUnsafe(5);
    header.writeUInt8(stream, 0);
    header.writeUInt32BE(data.length, 1);
    const record = Buffer.concat([header, data]);
    fs.writeSync(this.fd, record);
    this.size += record.length;
  }

  close(): void {
    fs.closeSync(this.fd);
  }

  private rotate(): void {
    fs.closeSync(this.fd);
    fs.renameSync(this.file, `${this.file}.1`);
    this.fd = fs.openSync(this.file, 'a', 0o600);
    this.size = 0;
  }
}

/** The records of the rotated file, then of the current one, read in bounded pieces. */
export function* readContainerLog(file: string): Generator<{ stream: number; data: Buffer }> {
  yield* readRecords(`${file}.1`);
  yield* readRecords(file);
}

const READ_CHUNK = 256 * 1024;

function* readRecords(file: string): Generator<{ stream: number; data: Buffer }> {
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
  } catch {
    return;
  }
  try {
    let pending = Buffer.alloc(0);
    const chunk = Buffer.allocUnsafe(READ_CHUNK);
    for (;;) {
      const read = fs.readSync(fd, chunk, 0, chunk.length, null);
      if (read === 0) return; // a record cut short by a crash is dropped
      pending = pending.length === 0 ? Buffer.from(chunk.subarray(0, read)) : Buffer.concat([pending, chunk.subarray(0, read)]);
      let offset = 0;
      while (offset + 5 <= pending.length) {
        const stream = pending.readUInt8(offset);
        const length = pending.readUInt32BE(offset + 1);
        if (length > CONTAINER_LOG_MAX_RECORD) return; // not written by ContainerLogWriter: stop, allocate nothing
        if (offset + 5 + length > pending.length) break;
        yield { stream, data: pending.subarray(offset + 5, offset + 5 + length) };
        offset += 5 + length;
      }
      pending = pending.subarray(offset);
    }
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The serial console's log is written by the VMM itself (opened in append mode), so it is capped
 * by copy and truncate: past the limit its content goes to `<file>.1` and it is emptied; the
 * VMM's next append lands at the new start. Bytes written between the copy and the truncate are
 * lost, which is acceptable for a console log.
 */
export function capConsoleLog(file: string, maxBytes: number = logMaxBytes()): boolean {
  let size: number;
  try {
    size = fs.lstatSync(file).size;
  } catch {
    return false;
  }
  if (size < maxBytes) return false;
  const rotated = `${file}.1`;
  fs.rmSync(rotated, { force: true });
  fs.copyFileSync(file, rotated, fs.constants.COPYFILE_EXCL);
  fs.truncateSync(file, 0);
  return true;
}

/** Streams a plain log file (and its rotated predecessor first) to out, in bounded pieces. */
export async function streamLogFile(file: string, out: NodeJS.WritableStream): Promise<void> {
  for (const name of [`${file}.1`, file]) {
    let fd: number;
    try {
      fd = fs.openSync(name, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    } catch {
      continue;
    }
    try {
      const chunk = Buffer.allocUnsafe(READ_CHUNK);
      for (;;) {
        const read = fs.readSync(fd, chunk, 0, chunk.length, null);
        if (read === 0) break;
        if (!out.write(Buffer.from(chunk.subarray(0, read)))) await new Promise<void>((resolve) => out.once('drain', resolve));
      }
    } finally {
      fs.closeSync(fd);
    }
  }
}
