/**
 * Channel multiplexing over one byte stream, with per-channel credit-based flow control:
 * a sender may have at most WINDOW unacknowledged data bytes in flight on a channel, and the
 * receiver returns credit only once its consumer has taken the bytes (its data handler's
 * promise resolved). So a slow consumer (a container not reading stdin, a slow disk) stalls
 * only its own channel, and memory stays bounded however much is streamed.
 *
 * Only Node built-ins here: this file also runs inside the guest.
 */
import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { DATA_CHUNK, encodeFrame, encodeJson, encodeSync, FrameDecoder, FrameType, type Frame } from './frames';

export const WINDOW = 1024 * 1024;

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
  private inbound: Array<{ stream: number; data: Buffer } | { eof: number }> = [];
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

  /** Called by the mux for each inbound frame of this channel. */
  receive(frame: Frame): void {
    switch (frame.type) {
      case FrameType.Data:
        if (frame.payload.length < 1) return;
        this.inbound.push({ stream: frame.payload[0]!, data: frame.payload.subarray(1) });
        void this.drainInbound();
        return;
      case FrameType.Eof:
        this.inbound.push({ eof: frame.payload[0] ?? 0 });
        void this.drainInbound();
        return;
      case FrameType.Credit:
        this.credit += frame.payload.readUInt32BE(0);
        this.wakeWriters();
        return;
      case FrameType.Message: {
        let value: Record<string, unknown>;
        try {
          value = JSON.parse(frame.payload.toString('utf8')) as Record<string, unknown>;
        } catch {
          return;
        }
        this.emit('message', value);
        return;
      }
      case FrameType.Close:
        this.remoteClosed = true;
        this.wakeWriters();
        // Deliver buffered data and EOFs before announcing the close.
        this.inbound.push({ eof: -1 });
        void this.drainInbound();
        return;
      default:
        return;
    }
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
          await this.handler(item.stream, item.data);
        } catch {
          // A failing consumer must not stall the credit loop; it reports errors itself.
        }
        if (!this.mux.destroyed && !this.localClosed) {
          const credit = Buffer.allocUnsafe(4);
          credit.writeUInt32BE(item.data.length, 0);
          this.mux.sendFrame(this.id, FrameType.Credit, credit);
        }
      }
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
  /** Debug hook: called for every frame sent ('out') and received ('in'). */
  trace?: (direction: 'in' | 'out', channel: number, type: FrameType, length: number) => void;
}

/**
 * Emits: 'open' (channel) for channels opened by the peer, 'hello' (json), 'helloAck' (json),
 * 'close' when the transport ends.
 */
export class Mux extends EventEmitter {
  private readonly channels = new Map<number, Channel>();
  private nextId: number;
  private readonly idBase: number;
  private readonly idLimit: number;
  private readonly decoder: FrameDecoder;
  private readonly trace: MuxOptions['trace'];
  destroyed = false;

  constructor(
    private readonly stream: Duplex,
    options: MuxOptions,
  ) {
    super();
    this.idBase = options.side === 'host' ? 1 : 0x80000001;
    this.idLimit = options.side === 'host' ? 0x7fffffff : 0xfffffffe;
    this.nextId = this.idBase;
    this.trace = options.trace;
    this.decoder = new FrameDecoder(
      (frame) => {
        this.trace?.('in', frame.channel, frame.type, frame.payload.length);
        this.onFrame(frame);
      },
      { startInSync: options.startInSync },
    );
    stream.on('data', (chunk: Buffer) => this.decoder.push(chunk));
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
    this.stream.write(buffer);
  }

  private onFrame(frame: Frame): void {
    if (frame.type === FrameType.Hello || frame.type === FrameType.HelloAck) {
      let value: unknown;
      try {
        value = JSON.parse(frame.payload.toString('utf8'));
      } catch {
        value = {};
      }
      this.emit(frame.type === FrameType.Hello ? 'hello' : 'helloAck', value);
      return;
    }
    if (frame.type === FrameType.Open) {
      let request: Record<string, unknown>;
      try {
        request = JSON.parse(frame.payload.toString('utf8')) as Record<string, unknown>;
      } catch {
        this.sendFrame(frame.channel, FrameType.Close);
        return;
      }
      const channel = new Channel(frame.channel, this, request);
      this.channels.set(frame.channel, channel);
      this.emit('open', channel);
      return;
    }
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
