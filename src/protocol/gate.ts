/**
 * A write gate over a byte stream, used to quiesce a host<->guest link around a snapshot:
 * while held, writes are queued instead of sent, so no frame is half-sent at the snapshot point.
 * Reads pass through untouched. release(true) sends the queue in order; release(false) drops it
 * (it belonged to a host that is gone, e.g. in a clone). bypass() sends at once (the re-HELLO).
 *
 * Only Node built-ins here: this file also runs inside the guest.
 */
import { Duplex } from 'node:stream';

export class GatedStream extends Duplex {
  private held = false;
  private queue: Buffer[] = [];
  private queueBytes = 0;

  constructor(private readonly inner: Duplex) {
    super();
    inner.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) inner.pause();
    });
    inner.on('end', () => this.push(null));
    inner.on('error', (err) => this.destroy(err));
    inner.on('close', () => this.destroy());
  }

  /** Bytes written to this stream and not yet handed to the OS: what is held plus the inner stream's backlog. */
  get pendingBytes(): number {
    return this.queueBytes + this.inner.writableLength;
  }

  get isHeld(): boolean {
    return this.held;
  }

  hold(): void {
    this.held = true;
  }

  release(flush: boolean): void {
    const queue = this.queue;
    this.queue = [];
    this.queueBytes = 0;
    this.held = false;
    if (flush) for (const chunk of queue) this.inner.write(chunk);
  }

  bypass(chunk: Buffer): void {
    this.inner.write(chunk);
  }

  override _read(): void {
    this.inner.resume();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    if (this.held) {
      this.queue.push(chunk);
      this.queueBytes += chunk.length;
      done();
      return;
    }
    // Hand over at once (never buffer here), so hold() affects exactly the writes made after it.
    this.inner.write(chunk);
    done();
  }

  override _destroy(err: Error | null, done: (err: Error | null) => void): void {
    this.inner.destroy();
    done(err);
  }
}
