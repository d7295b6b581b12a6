/**
 * ttrpc's message framing (containerd/ttrpc PROTOCOL.md): a 10-byte header (data length
 * uint32 BE, stream id uint32 BE, message type byte, flags byte) and the data. The reader is
 * bounded: a frame longer than the limit is an error before any of its data is buffered.
 */

export const HEADER_LENGTH = 10;
/** ttrpc's default maximum message length (messageLengthMax in channel.go). */
export const MAX_MESSAGE_LENGTH = 4 << 20;

export const MESSAGE_TYPE_REQUEST = 0x1;
export const MESSAGE_TYPE_RESPONSE = 0x2;
export const MESSAGE_TYPE_DATA = 0x3;

export interface Frame {
  streamId: number;
  type: number;
  flags: number;
  data: Buffer;
}

export class FrameError extends Error {}

export function encodeFrame(frame: Frame, max = MAX_MESSAGE_LENGTH): Buffer {
  if (frame.data.length > max) throw new FrameError(`message of ${frame.data.length} bytes exceeds the maximum of ${max}`);
  const header = Buffer.alloc(HEADER_LENGTH);
  header.writeUInt32BE(frame.data.length, 0);
  header.writeUInt32BE(frame.streamId >>> 0, 4);
  header.writeUInt8(frame.type & 0xff, 8);
  header.writeUInt8(frame.flags & 0xff, 9);
  return Buffer.concat([header, frame.data]);
}

/**
 * Splits a byte stream into frames. push() returns the complete frames so far; it throws a
 * FrameError on a frame over the limit (the connection is then unusable: its stream is out of
 * step), so what is buffered never exceeds one header plus one frame's data.
 */
export class FrameReader {
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(private readonly max = MAX_MESSAGE_LENGTH) {}

  push(chunk: Buffer): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Frame[] = [];
    for (;;) {
      if (this.buffered < HEADER_LENGTH) break;
      const head = this.peek(HEADER_LENGTH);
      const length = head.readUInt32BE(0);
      if (length > this.max) throw new FrameError(`frame of ${length} bytes exceeds the maximum of ${this.max}`);
      if (this.buffered < HEADER_LENGTH + length) break;
      const whole = this.take(HEADER_LENGTH + length);
      frames.push({ streamId: whole.readUInt32BE(4), type: whole.readUInt8(8), flags: whole.readUInt8(9), data: whole.subarray(HEADER_LENGTH) });
    }
    return frames;
  }

  private peek(n: number): Buffer {
    if (this.chunks[0]!.length >= n) return this.chunks[0]!.subarray(0, n);
    const joined = Buffer.concat(this.chunks);
    this.chunks = [joined];
    return joined.subarray(0, n);
  }

  private take(n: number): Buffer {
    const joined = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
    const out = Buffer.from(joined.subarray(0, n));
    const rest = joined.subarray(n);
    this.chunks = rest.length > 0 ? [rest] : [];
    this.buffered = rest.length;
    return out;
  }
}
