/**
 * A Unix-socket peer that plays Firecracker's side of the hybrid vsock
 * handshake (docs/vsock.md): read `CONNECT <port>\n`; if a guest listener
 * exists on that port answer `OK <hostport>\n` and hand the stream to it,
 * otherwise close the connection (what Firecracker does when nothing listens).
 *
 * Misbehaviours for tests: 'close-mid' (half an OK line, then close),
 * 'silent' (never answers), 'garbage' (answers something that is not OK).
 */
import fs from 'node:fs';
import net from 'node:net';

export type PeerMode = 'normal' | 'close-mid' | 'silent' | 'garbage';

/** Called with the stream after OK was sent (and any `extra` bytes written). */
export type GuestListener = (s: net.Socket) => void;

export interface PeerOptions {
  mode?: PeerMode;
  /** Bytes written immediately after the OK line, in the same write (tests unshift). */
  extraAfterOk?: Buffer;
}

export class HybridVsockPeer {
  readonly listeners = new Map<number, GuestListener>();
  readonly connects: number[] = [];
  private server: net.Server | null = null;
  private readonly sockets = new Set<net.Socket>();
  /** Connections handed to a guest listener (the ones a TRANSPORT_RESET drops). */
  private readonly established = new Set<net.Socket>();
  /** RX gate: host-to-guest delivery (including CONNECT requests) is held while set. */
  private gated = false;
  private readonly heldConnects: Array<() => void> = [];
  private nextHostPort = 1073741824;

  /**
   * Firecracker's RX gate (v1.16.1 vsock/device.rs pending_event_ack): while set, nothing flows
   * from the host to the guest: CONNECT requests wait unanswered and established connections'
   * bytes stay in the socket. Clearing it delivers what waited.
   */
  setRxGate(on: boolean): void {
    this.gated = on;
    for (const s of this.established) {
      if (on) s.pause();
      else s.resume();
    }
    if (!on) for (const go of this.heldConnects.splice(0)) go();
  }

  /**
   * The guest processed a TRANSPORT_RESET: it drops every connection without telling the host
   * (Linux virtio_transport: virtio_vsock_reset_sock, no RST sent). The host's end stays open
   * until it writes; then the guest, which no longer knows the connection, answers RST and
   * Firecracker's muxer closes the host stream.
   */
  resetConnections(): number {
    const n = this.established.size;
    for (const s of this.established) {
      s.unpipe();
      s.removeAllListeners('data');
      s.removeAllListeners('end');
      s.on('data', () => s.destroy());
      s.resume();
    }
    this.established.clear();
    return n;
  }

  constructor(readonly udsPath: string, private readonly opts: PeerOptions = {}) {}

  listen(port: number, fn: GuestListener): this {
    this.listeners.set(port, fn);
    return this;
  }

  async start(): Promise<void> {
    fs.rmSync(this.udsPath, { force: true });
    this.server = net.createServer((s) => this.onConnection(s));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.udsPath, () => resolve());
    });
  }

  private onConnection(s: net.Socket): void {
    this.sockets.add(s);
    s.on('close', () => this.sockets.delete(s));
    s.on('error', () => {});
    let buf = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      const nl = buf.indexOf(0x0a);
      if (nl < 0) return;
      s.removeListener('data', onData);
      s.pause();
      const line = buf.subarray(0, nl).toString('latin1');
      const rest = buf.subarray(nl + 1);
      const m = /^CONNECT (\d+)$/.exec(line);
      if (!m) {
        s.destroy();
        return;
      }
      const port = Number(m[1]);
      this.connects.push(port);
      const mode = this.opts.mode ?? 'normal';
      if (mode === 'silent') return;
      if (mode === 'close-mid') {
        s.end('OK 10');
        return;
      }
      if (mode === 'garbage') {
        s.write('ERR no such port\n');
        return;
      }
      const answer = (): void => {
        if (s.destroyed) return;
        const fn = this.listeners.get(port);
        if (!fn) {
          s.destroy(); // nobody listens in the guest: Firecracker drops the connection
          return;
        }
        const ok = Buffer.from(`OK ${this.nextHostPort++}\n`);
        s.write(this.opts.extraAfterOk ? Buffer.concat([ok, this.opts.extraAfterOk]) : ok);
        if (rest.length) s.unshift(rest);
        this.established.add(s);
        s.on('close', () => this.established.delete(s));
        fn(s);
        s.resume();
      };
      // The request reaches the guest over RX: while the gate is up, it waits.
      if (this.gated) this.heldConnects.push(answer);
      else answer();
    };
    s.on('data', onData);
  }

  async stop(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    fs.rmSync(this.udsPath, { force: true });
  }
}
