/**
 * Cuts a byte stream back into whole FUSE messages. Requests (fuse_in_header) and replies
 * (fuse_out_header) both begin with their total length as a u32 little-endian, so the same
 * splitter serves the host (reading requests) and the guest (reading replies).
 *
 * Only Node built-ins here: this file also runs inside the guest.
 */
import { MAX_MESSAGE_LENGTH, OutHeader } from './protocol';

/** No FUSE message is shorter than fuse_out_header. */
export const MIN_MESSAGE_LENGTH = OutHeader.size;
export { MAX_MESSAGE_LENGTH };

export class FuseMessageSplitter {
  private chunks: Buffer[] = [];
  private buffered = 0;
  /** The length of the message being gathered, once known. */
  private expected: number | undefined;

  /** Bytes received that do not yet make a whole message. */
  get pendingBytes(): number {
    return this.buffered;
  }

  /**
   * Adds a chunk and returns every message it completes, in order. Each message is a fresh
   * Buffer that owns its bytes, so callers may keep it after pushing more chunks or after
   * the chunk's memory is reused. Throws a RangeError on a length outside
   * [MIN_MESSAGE_LENGTH, MAX_MESSAGE_LENGTH]: the stream is then out of step and unusable.
   */
  push(chunk: Buffer): Buffer[] {
    if (chunk.length > 0) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    const messages: Buffer[] = [];
    for (;;) {
      this.expected ??= this.readLength();
      if (this.expected === undefined || this.buffered < this.expected) break;
      messages.push(this.take(this.expected));
      this.expected = undefined;
    }
    return messages;
  }

  /** The next message's length, once its first 4 bytes are here. */
  private readLength(): number | undefined {
    if (this.buffered < 4) return undefined;
    const prefix = Buffer.alloc(4);
    let filled = 0;
    for (const chunk of this.chunks) {
      filled += chunk.copy(prefix, filled, 0, Math.min(chunk.length, 4 - filled));
      if (filled === 4) break;
    }
    const length = prefix.readUInt32LE(0);
    if (length < MIN_MESSAGE_LENGTH || length > MAX_MESSAGE_LENGTH) {
      throw new RangeError(
        `FUSE message length ${length} is outside ${MIN_MESSAGE_LENGTH}..${MAX_MESSAGE_LENGTH}: the stream is corrupt`,
      );
    }
    return length;
  }

  private take(length: number): Buffer {
    const message = Buffer.allocUnsafe(length);
    let filled = 0;
    while (filled < length) {
      const chunk = this.chunks[0]!;
      const wanted = length - filled;
      if (chunk.length <= wanted) {
        chunk.copy(message, filled);
        filled += chunk.length;
        this.chunks.shift();
      } else {
        chunk.copy(message, filled, 0, wanted);
        filled += wanted;
        this.chunks[0] = chunk.subarray(wanted);
      }
    }
    this.buffered -= length;
    return message;
  }
}
