/**
 * Channel multiplexing over one byte stream, with per-channel credit-based flow control:
 * a sender may have at most WINDOW unacknowledged data bytes in flight on a channel, and the
 * receiver returns credit only once its consumer has taken the bytes (its data handler's
 * promise resolved). So a slow consumer (a container not reading stdin, a slow disk) stalls
 * only its own channel, and memory stays bounded however much is streamed.
 *
 * The peer may be hostile (the guest, seen from the root supervisor), so every inbound buffer is
 * bounded by something the peer cannot raise: data beyond the credit it was given, a Credit
 * frame that is not 4 bytes or that would grant more than a window, a Message or Open that is
 * not a JSON object, an Open the side does not serve (or on an id already in use), more queued
 * items than MAX_QUEUED_ITEMS, or a peer that stops reading while we have MAX_OUTBOUND_BYTES to
 * send: each is a protocol violation. On the host (and on the control socket) a violation ends
 * the link: 'protocolError' (reason) is emitted, then the mux is destroyed ('close').
 *
 * Only Node built-ins here: this file also runs inside the guest.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { DATA_CHUNK, encodeFrame, encodeJson, encodeSync, FrameDecoder, FrameType, type Frame } from './frames';

export const WINDOW = 1024 * 1024;
/**
 * Most inbound items (data chunks and EOFs) one channel may hold unconsumed. Bytes are bounded by
 * WINDOW; this bounds the per-item overhead of a peer sending one-byte frames (consecutive data of
 * one stream is merged, so only a consumer stalled across thousands of stream switches gets near).
 */
export const MAX_QUEUED_ITEMS = 16_384;
/** A peer that stops reading while this much is waiting to be written to it is a violation. */
export const MAX_OUTBOUND_BYTES = 64 * 1024 * 1024;
/** Queued data of one stream is merged up to this size, so deliveries stay chunk-sized. */
const MERGE_LIMIT = 64 * 1024;

/** Thrown inside the mux when the peer broke the protocol; caught where frames come in. */
export class ProtocolViolation extends Error {}

/** A JSON object, or a protocol violation: `null`, arrays and scalars are refused. */
export function parseJsonObject(payload: Buffer, what: string): Record<string, unknown> {
  let value: unknown;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new ProtocolViolation(`${what} is not valid JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new ProtocolViolation(`${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

export const STDIN = 0;
export const STDOUT = 1;
export const STDERR = 2;

type DataHandler = (stream: number, data: Buffer) => void | Promise<void>;

export interface ChannelEvents {
  message: (value: Record<string, unknown>) => void;
  eof: (stream: number) => void;
  close: () => void;
}

export class Channel extends EventEmitter {
  private credit = WINDOW;
  private creditWaiters: Array<() => void> = [];
  /** Data waiting for the consumer (merged pieces of one stream are joined only when delivered), and EOFs. */
  private inbound: Array<{ stream: number; parts: Buffer[]; size: number } | { eof: number }> = [];
  /** Data bytes received and not yet credited back: a compliant peer never exceeds WINDOW. */
  private unacknowledged = 0;
  private draining = false;
  private handler: DataHandler | undefined;
  private localClosed = false;
  private remoteClosed = false;

  constructor(
    readonly id: number,
    private readonly mux: Mux,
    readonly request: Record<string, unknown>,
  ) {
    super();
  }

  get closed(): boolean {
    return this.localClosed || this.remoteClosed;
  }

  /** Sets the consumer of inbound data; credit flows back as its promises resolve. */
  setDataHandler(handler: DataHandler): void {
    this.handler = handler;
    void this.drainInbound();
  }

  /** Sends data on a stream, waiting for credit as needed. Resolves when handed to the transport. */
  async write(stream: number, data: Buffer): Promise<void> {
    for (let offset = 0; offset < data.length; ) {
      if (this.closed) return;
      if (this.credit <= 0) {
        await new Promise<void>((resolve) => this.creditWaiters.push(resolve));
        continue;
      }
      const size = Math.min(DATA_CHUNK, this.credit, data.length - offset);
      const payload = Buffer.allocUnsafe(size + 1);
      payload[0] = stream;
      data.copy(payload, 1, offset, offset + size);
      offset += size;
      this.credit -= size;
      this.mux.sendFrame(this.id, FrameType.Data, payload);
    }
  }

  end(stream: number): void {
    if (!this.closed) this.mux.sendFrame(this.id, FrameType.Eof, Buffer.from([stream]));
  }

  send(value: Record<string, unknown>): void {
    if (!this.closed) this.mux.sendJson(this.id, FrameType.Message, value);
  }

  /** Closes our side; the channel is forgotten once both sides closed (or the mux resets). */
  close(): void {
    if (this.localClosed) return;
    this.localClosed = true;
    if (!this.mux.destroyed) this.mux.sendFrame(this.id, FrameType.Close);
    this.wakeWriters();
    this.finish();
  }

  /** Called by the mux for each inbound frame of this channel; throws ProtocolViolation. */
  receive(frame: Frame): void {
    switch (frame.type) {
      case FrameType.Data: {
        if (frame.payload.length < 1) throw new ProtocolViolation(`empty data frame on channel ${this.id}`);
        const size = frame.payload.length - 1;
        if (this.unacknowledged + size > WINDOW) {
          throw new ProtocolViolation(`channel ${this.id}: ${this.unacknowledged + size} bytes sent beyond the credit window of ${WINDOW}`);
        }
        if (this.remoteClosed) throw new ProtocolViolation(`data on channel ${this.id} after its close`);
        this.unacknowledged += size;
        // A copy: the payload is a view of the decoder's buffer, which it would keep alive.
        const data = Buffer.from(frame.payload.subarray(1));
        const stream = frame.payload[0]!;
        const last = this.inbound[this.inbound.length - 1];
        if (last && 'parts' in last && last.stream === stream && last.size + data.length <= MERGE_LIMIT) {
          // Items still queued are not with the consumer (it gets one only as it leaves the queue).
          last.parts.push(data);
          last.size += data.length;
        } else this.enqueue({ stream, parts: [data], size: data.length });
        void this.drainInbound();
        return;
      }
      case FrameType.Eof:
        if (this.remoteClosed) throw new ProtocolViolation(`EOF on channel ${this.id} after its close`);
        this.enqueue({ eof: frame.payload[0] ?? 0 });
        void this.drainInbound();
        return;
      case FrameType.Credit: {
        if (frame.payload.length !== 4) throw new ProtocolViolation(`credit frame of ${frame.payload.length} bytes on channel ${this.id}`);
        const credit = this.credit + frame.payload.readUInt32BE(0);
        if (credit > WINDOW) throw new ProtocolViolation(`channel ${this.id}: credit beyond the window (${credit})`);
        this.credit = credit;
        this.wakeWriters();
        return;
      }
      case FrameType.Message:
        this.emit('message', parseJsonObject(frame.payload, `a message on channel ${this.id}`));
        return;
      case FrameType.Close:
        if (this.remoteClosed) return;
        this.remoteClosed = true;
        this.wakeWriters();
        // Deliver buffered data and EOFs before announcing the close.
        this.enqueue({ eof: -1 });
        void this.drainInbound();
        return;
      default:
        throw new ProtocolViolation(`frame type ${frame.type as number} on channel ${this.id}`);
    }
  }

  private enqueue(item: { stream: number; parts: Buffer[]; size: number } | { eof: number }): void {
    if (this.inbound.length >= MAX_QUEUED_ITEMS) throw new ProtocolViolation(`channel ${this.id}: more than ${MAX_QUEUED_ITEMS} items queued`);
    this.inbound.push(item);
  }

  /** The transport went away: wake everything up and report the close. */
  abort(): void {
    if (this.remoteClosed && this.localClosed) return;
    this.remoteClosed = true;
    this.localClosed = true;
    this.wakeWriters();
    this.inbound = [];
    this.emit('close');
  }

  private wakeWriters(): void {
    const waiters = this.creditWaiters;
    this.creditWaiters = [];
    for (const wake of waiters) wake();
  }

  private async drainInbound(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.inbound.length > 0) {
        const item = this.inbound[0]!;
        if ('eof' in item) {
          this.inbound.shift();
          if (item.eof === -1) this.finish();
          else this.emit('eof', item.eof);
          continue;
        }
        if (!this.handler) return; // wait for setDataHandler
        this.inbound.shift();
        try {
          await this.handler(item.stream, item.parts.length === 1 ? item.parts[0]! : Buffer.concat(item.parts, item.size));
        } catch {
          // A failing consumer must not stall the credit loop; it reports errors itself.
        }
        this.unacknowledged -= item.size;
        if (!this.mux.destroyed && !this.localClosed) {
          const credit = Buffer.allocUnsafe(4);
          credit.writeUInt32BE(item.size, 0);
          this.mux.sendFrame(this.id, FrameType.Credit, credit);
        }
      }
    } catch (err) {
      // Only listeners can throw here (eof, close): what the peer sent must not escape as an
      // unhandled rejection.
      this.mux.violated((err as Error).message);
    } finally {
      this.draining = false;
    }
  }

  private finished = false;
  private finish(): void {
    if (this.remoteClosed && this.localClosed && !this.finished) {
      this.finished = true;
      this.mux.forget(this.id);
    }
    if (this.remoteClosed && !this.closeEmitted) {
      this.closeEmitted = true;
      this.emit('close');
    }
  }
  private closeEmitted = false;
}

export interface MuxOptions {
  /** Which half of the id space this side allocates from, so both sides can open channels. */
  side: 'host' | 'guest';
  /** Start by scanning for the sync marker (host<->guest links), or speak frames at once (control socket). */
  startInSync: boolean;
  /**
   * Whether the peer may open channels (default: only the 'guest' side serves them; the host
   * side, the supervisor towards its guest and the CLI towards its supervisor, never does).
   */
  peerMayOpen?: boolean;
  /**
   * What a protocol violation does: 'fail' ends the link ('protocolError', then 'close'); 'resync'
   * drops every channel and rescans for the sync marker, as a new host would (the guest agent's
   * side, which must get past stale bytes around a restore). Default: 'resync' for the guest side
   * of a host<->guest link, 'fail' everywhere else.
   */
  onViolation?: 'fail' | 'resync';
  /** Debug hook: called for every frame sent ('out') and received ('in'). */
  trace?: (direction: 'in' | 'out', channel: number, type: FrameType, length: number) => void;
}

/**
 * Emits: 'open' (channel) for channels opened by the peer, 'hello' (json), 'helloAck' (json),
 * 'protocolError' (reason) when the peer broke the protocol, 'close' when the transport ends.
 */
export class Mux extends EventEmitter {
  private readonly channels = new Map<number, Channel>();
  private nextId: number;
  private readonly idBase: number;
  private readonly idLimit: number;
  private readonly decoder: FrameDecoder;
  private readonly trace: MuxOptions['trace'];
  private readonly peerMayOpen: boolean;
  private readonly violationPolicy: 'fail' | 'resync';
  destroyed = false;
  /** Why the link ended, when the peer broke the protocol. */
  protocolError: string | undefined;

  constructor(
    private readonly stream: Duplex,
    options: MuxOptions,
  ) {
    super();
    this.idBase = options.side === 'host' ? 1 : 0x80000001;
    this.idLimit = options.side === 'host' ? 0x7fffffff : 0xfffffffe;
    this.nextId = this.idBase;
    this.trace = options.trace;
    this.peerMayOpen = options.peerMayOpen ?? options.side === 'guest';
    this.violationPolicy = options.onViolation ?? (options.side === 'guest' && options.startInSync ? 'resync' : 'fail');
    this.decoder = new FrameDecoder(
      (frame) => {
        this.trace?.('in', frame.channel, frame.type, frame.payload.length);
        this.onFrame(frame);
      },
      {
        startInSync: options.startInSync,
        ...(this.violationPolicy === 'fail' ? { onViolation: (reason: string) => this.violation(reason) } : {}),
      },
    );
    stream.on('data', (chunk: Buffer) => {
      try {
        this.decoder.push(chunk);
      } catch (err) {
        // A ProtocolViolation, or a consumer that choked on what the peer sent: either way the
        // peer's input must not take this process down.
        if (this.violationPolicy === 'fail') this.decoder.fail((err as Error).message);
        else this.violation((err as Error).message);
      }
    });
    stream.on('error', () => this.teardown());
    stream.on('close', () => this.teardown());
    stream.on('end', () => this.teardown());
  }

  open(request: Record<string, unknown>): Channel {
    const id = this.nextId;
    this.nextId = id + 1 > this.idLimit ? this.idBase : id + 1;
    const channel = new Channel(id, this, request);
    this.channels.set(id, channel);
    this.sendJson(id, FrameType.Open, request);
    return channel;
  }

  sendHello(type: FrameType.Hello | FrameType.HelloAck, value: unknown): void {
    this.trace?.('out', 0, type, -1);
    this.write(encodeSync(type, value));
  }

  sendFrame(channel: number, type: FrameType, payload?: Buffer): void {
    this.trace?.('out', channel, type, payload?.length ?? 0);
    this.write(encodeFrame(channel, type, payload));
  }

  sendJson(channel: number, type: FrameType, value: unknown): void {
    this.trace?.('out', channel, type, -1);
    this.write(encodeJson(channel, type, value));
  }

  /** Drops every channel (as if their peer vanished) and rescans for the sync marker. */
  reset(): void {
    this.dropChannels();
    this.decoder.resync();
  }

  /**
   * Drops every channel (as if their peer vanished) but keeps decoding: for a new host whose
   * sync-marked HELLO was just read, so the frames after it are in step. reset() here would
   * discard them (an exec's Open) until the host's next HELLO, which it sends only while it
   * waits for the HELLO_ACK.
   */
  dropChannels(): void {
    const channels = [...this.channels.values()];
    this.channels.clear();
    for (const channel of channels) channel.abort();
  }

  forget(id: number): void {
    this.channels.delete(id);
  }

  get openChannels(): number {
    return this.channels.size;
  }

  destroy(): void {
    this.stream.destroy();
    this.teardown();
  }

  private write(buffer: Buffer): void {
    if (this.destroyed) return;
    // A GatedStream reports what it holds plus what its inner stream has not written yet.
    const pending = (this.stream as { pendingBytes?: number }).pendingBytes ?? this.stream.writableLength;
    if (pending + buffer.length > MAX_OUTBOUND_BYTES) {
      this.violation(`the peer stopped reading (${pending} bytes waiting to be sent)`);
      return;
    }
    this.stream.write(buffer);
  }

  /** Reports a violation found outside the frame path (a channel's queued deliveries). */
  violated(reason: string): void {
    this.violation(reason);
  }

  /** The peer broke the protocol: end the link, or (guest side) start over at the next HELLO. */
  private violation(reason: string): void {
    if (this.destroyed) return;
    if (this.violationPolicy === 'resync') {
      this.reset();
      return;
    }
    this.protocolError = reason;
    this.emit('protocolError', reason);
    this.destroy();
  }

  private onFrame(frame: Frame): void {
    if (frame.type === FrameType.Hello || frame.type === FrameType.HelloAck) {
      const value = parseJsonObject(frame.payload, frame.type === FrameType.Hello ? 'a HELLO' : 'a HELLO_ACK');
      this.emit(frame.type === FrameType.Hello ? 'hello' : 'helloAck', value);
      return;
    }
    if (frame.type === FrameType.Open) {
      if (!this.peerMayOpen) throw new ProtocolViolation(`the peer opened channel ${frame.channel}, which this side does not serve`);
      // The peer allocates from the other half of the id space; an id in use is never replaced.
      const peerBase = this.idBase === 1 ? 0x80000001 : 1;
      const peerLimit = this.idBase === 1 ? 0xfffffffe : 0x7fffffff;
      if (frame.channel < peerBase || frame.channel > peerLimit) throw new ProtocolViolation(`the peer opened channel ${frame.channel}, outside its id range`);
      if (this.channels.has(frame.channel)) throw new ProtocolViolation(`the peer opened channel ${frame.channel}, which is already open`);
      const request = parseJsonObject(frame.payload, `the request of channel ${frame.channel}`);
      const channel = new Channel(frame.channel, this, request);
      this.channels.set(frame.channel, channel);
      this.emit('open', channel);
      return;
    }
    // Frames of a channel we forgot (closed on both sides) may still be in flight: dropped.
    this.channels.get(frame.channel)?.receive(frame);
  }

  private teardown(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    const channels = [...this.channels.values()];
    this.channels.clear();
    for (const channel of channels) channel.abort();
    this.emit('close');
  }
}
