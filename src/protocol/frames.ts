/**
 * Wire format of the host<->guest stream (and of the CLI<->supervisor control socket).
 *
 *   frame  = length:u32be  channel:u32be  type:u8  payload[length]
 *
 * A stream may start with garbage: after a snapshot restore the guest may still hold bytes
 * meant for the previous host, and the host may read stale bytes from the guest. So each
 * side starts in "sync" mode, scanning for SYNC_MARKER, which is always followed by a HELLO
 * or HELLO_ACK frame. Only Node built-ins here: this file also runs inside the guest.
 */

export const SYNC_MARKER = Buffer.from('\x00\xffSHOAL-SYNC\x00\xff\x5a\xa5', 'latin1');
export const HEADER_BYTES = 9;
/** Upper bound on one frame, so a corrupt length cannot make us buffer gigabytes. */
export const MAX_PAYLOAD = 1024 * 1024;
/** Data frames are cut to this size so channels interleave fairly. */
export const DATA_CHUNK = 64 * 1024;

export enum FrameType {
  /** Open a channel; payload is the JSON request. */
  Open = 1,
  /** Stream bytes; payload[0] is the stream index (0 stdin, 1 stdout, 2 stderr), the rest is data. */
  Data = 2,
  /** End of one stream; payload[0] is the stream index. */
  Eof = 3,
  /** The receiver consumed bytes; payload is u32be count. Credit-based flow control. */
  Credit = 4,
  /** A JSON message on a channel: exit status, resize, signal, result, error, progress. */
  Message = 5,
  /** The channel is finished on the sender's side. */
  Close = 6,
  /** Session start from the host (after SYNC_MARKER), JSON. */
  Hello = 7,
  /** Session accepted by the guest (after SYNC_MARKER), JSON. */
  HelloAck = 8,
}

export interface Frame {
  channel: number;
  type: FrameType;
  payload: Buffer;
}

export function encodeFrame(channel: number, type: FrameType, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > MAX_PAYLOAD) throw new Error(`frame payload too large: ${payload.length}`);
  const header = Buffer.allocUnsafe(HEADER_BYTES);
  header.writeUInt32BE(payload.length, 0);
  header.writeUInt32BE(channel >>> 0, 4);
  header.writeUInt8(type, 8);
  return Buffer.concat([header, payload]);
}

export function encodeJson(channel: number, type: FrameType, value: unknown): Buffer {
  return encodeFrame(channel, type, Buffer.from(JSON.stringify(value), 'utf8'));
}

/** SYNC_MARKER followed by a HELLO or HELLO_ACK frame. */
export function encodeSync(type: FrameType.Hello | FrameType.HelloAck, value: unknown): Buffer {
  return Buffer.concat([SYNC_MARKER, encodeJson(0, type, value)]);
}

/**
 * Incremental decoder. In sync mode it discards everything up to the next SYNC_MARKER and
 * then requires a Hello/HelloAck frame; a malformed frame drops it back into sync mode
 * (reported through onDesync) instead of killing the process.
 */
export interface FrameDecoderOptions {
  startInSync?: boolean;
  onDesync?: (reason: string) => void;
  /**
   * A peer that is not trusted (the guest, seen from the host): once the stream is in sync (a
   * HELLO/HELLO_ACK was decoded, or from the start when not starting in sync), a header that is
   * neither a valid frame nor the start of a new sync marker is a protocol error, reported here,
   * and the decoder stops. Without it, the decoder rescans for the marker (the guest's side,
   * which must survive stale bytes around a snapshot restore).
   */
  onViolation?: (reason: string) => void;
}

export class FrameDecoder {
  private buffer: Buffer = Buffer.alloc(0);
  private syncing: boolean;
  /** Set once a HELLO/HELLO_ACK was decoded (or at once when starting in sync): strictness applies from here. */
  private established: boolean;
  private failed = false;

  constructor(
    private readonly onFrame: (frame: Frame) => void,
    options: FrameDecoderOptions = {},
  ) {
    this.syncing = options.startInSync ?? true;
    this.established = !this.syncing;
    this.onDesync = options.onDesync ?? (() => undefined);
    this.onViolation = options.onViolation;
  }

  private readonly onDesync: (reason: string) => void;
  private readonly onViolation: ((reason: string) => void) | undefined;

  /** Forget buffered bytes and wait for the next SYNC_MARKER. */
  resync(): void {
    this.syncing = true;
    this.buffer = Buffer.alloc(0);
    this.held = [];
    this.heldBytes = 0;
    this.need = 0;
  }

  get inSync(): boolean {
    return !this.syncing;
  }

  /**
   * Chunks held back until the frame they belong to is complete: reads can be as small as a
   * page (virtio-serial), and joining them one at a time would copy a large frame over and over.
   */
  private held: Buffer[] = [];
  private heldBytes = 0;
  /** Bytes the decoder needs before it can make progress (0: unknown, try on every chunk). */
  private need = 0;

  push(chunk: Buffer): void {
    if (this.failed) return;
    if (this.need > 0 && this.buffer.length + this.heldBytes + chunk.length < this.need) {
      this.held.push(chunk);
      this.heldBytes += chunk.length;
      return;
    }
    if (this.held.length > 0 || this.buffer.length > 0) {
      this.buffer = Buffer.concat([this.buffer, ...this.held, chunk]);
      this.held = [];
      this.heldBytes = 0;
    } else this.buffer = chunk;
    this.need = 0;
    for (;;) {
      if (this.syncing) {
        const at = this.buffer.indexOf(SYNC_MARKER);
        if (at < 0) {
          // Keep a tail that could be the start of a marker split across chunks.
          const keep = Math.min(this.buffer.length, SYNC_MARKER.length - 1);
          this.buffer = this.buffer.subarray(this.buffer.length - keep);
          return;
        }
        this.buffer = this.buffer.subarray(at + SYNC_MARKER.length);
        this.syncing = false;
        this.expectHello = true;
      }
      if (this.buffer.length < HEADER_BYTES) {
        this.need = HEADER_BYTES;
        return;
      }
      const length = this.buffer.readUInt32BE(0);
      const channel = this.buffer.readUInt32BE(4);
      const type = this.buffer.readUInt8(8) as FrameType;
      const validType = type >= FrameType.Open && type <= FrameType.HelloAck;
      const helloType = type === FrameType.Hello || type === FrameType.HelloAck;
      if (length > MAX_PAYLOAD || !validType || (this.expectHello && !helloType)) {
        if (this.onViolation && this.established && !this.expectHello) {
          // A strict peer may start a new session at a frame boundary (its marker begins with
          // 00 ff, which as a length would exceed MAX_PAYLOAD), and nothing else.
          const prefix = Math.min(this.buffer.length, SYNC_MARKER.length);
          if (!this.buffer.subarray(0, prefix).equals(SYNC_MARKER.subarray(0, prefix))) {
            this.fail(`bad frame header (length ${length}, channel ${channel}, type ${type})`);
            return;
          }
          if (prefix < SYNC_MARKER.length) {
            this.need = SYNC_MARKER.length;
            return;
          }
        }
        // Most often this "header" is the start of a sync marker (a new HELLO): scan from here,
        // without dropping a byte, so a marker split across reads is still found.
        this.onDesync(`bad frame header (length ${length}, type ${type})`);
        this.syncing = true;
        continue;
      }
      if (this.buffer.length < HEADER_BYTES + length) {
        this.need = HEADER_BYTES + length;
        return;
      }
      const payload = this.buffer.subarray(HEADER_BYTES, HEADER_BYTES + length);
      this.buffer = this.buffer.subarray(HEADER_BYTES + length);
      this.expectHello = false;
      if (helloType) this.established = true;
      this.onFrame({ channel, type, payload });
      if (this.failed) return;
    }
  }

  /** Stops decoding for good (a protocol error, from here or from the frame consumer). */
  fail(reason: string): void {
    if (this.failed) return;
    this.failed = true;
    this.buffer = Buffer.alloc(0);
    this.held = [];
    this.heldBytes = 0;
    this.onViolation?.(reason);
  }

  private expectHello = false;
}
