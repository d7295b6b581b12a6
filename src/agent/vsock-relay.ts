/**
 * A test transport for the guest half of the Firecracker path, which no Firecracker can run on
 * this project's machines: the agent serves AF_VSOCK exactly as under Firecracker (main.ts,
 * serveVsock: listen, accept, the native bridge, one session per connection), and this relay,
 * in the same guest, carries QEMU's virtio-serial link into it over the kernel's vsock loopback
 * (CID 1, vsock_loopback.ko, which guest-init loads for it). Enabled by the kernel parameters
 * `shoal.transport=vsock shoal.vsock_relay=serial` (the QEMU backend sets them when
 * SHOAL_QEMU_AGENT_LINK=vsock-relay; see src/vmm/traits.ts).
 *
 * Firecracker's host side opens one vsock connection per host connect and resets them at a
 * restore, so the agent meets every new host on a new connection. The relay does the same: the
 * HELLO of a new session (a boot, a reconnect, a restored clone) closes the connection it had and
 * opens a new one, while a retransmitted HELLO or a resume stays on it; a host that goes away
 * closes it. It reads the host's frames with the
 * protocol's own decoder, so a HELLO inside a payload is never taken for one.
 */
import type net from 'node:net';
import * as native from '../native/index';
import { encodeFrame, FrameDecoder, FrameType, SYNC_MARKER, type Frame } from '../protocol/frames';
import { AGENT_VSOCK_PORT, openSerialPort, type SerialPortStream } from './transport';

/** How long the relay waits for the agent's vsock listener (it is listening before the relay starts). */
const CONNECT_TIMEOUT_MS = 5000;

export function startSerialRelay(log: (message: string) => void): void {
  openSerialPort(30_000)
    .then((port) => {
      new SerialVsockRelay(port, log);
      log(`vsock relay: virtio-serial <-> vsock ${native.VMADDR_CID_LOCAL}:${AGENT_VSOCK_PORT}`);
    })
    .catch((err: Error) => log(`vsock relay: ${err.message}`));
}

class SerialVsockRelay {
  private connection: net.Socket | undefined;
  /** The session the current connection serves (its host's HELLO), so a retransmission is not a new host. */
  private session: string | undefined;
  /** Writes to the agent, in the order the host sent them, across the opening of connections. */
  private queue: Promise<void> = Promise.resolve();
  private readonly decoder: FrameDecoder;

  constructor(
    private readonly port: SerialPortStream,
    private readonly log: (message: string) => void,
  ) {
    this.decoder = new FrameDecoder((frame) => this.fromHost(frame), { startInSync: true });
    port.on('data', (chunk: Buffer) => this.decoder.push(chunk));
    port.on('error', (err: Error) => log(`vsock relay: serial port: ${err.message}`));
    // As Firecracker does when the host's Unix connection closes: the guest's connection goes.
    port.onHostGone = () => {
      this.decoder.resync();
      this.enqueue(async () => this.closeConnection());
    };
  }

  private fromHost(frame: Frame): void {
    if (frame.type === FrameType.Hello) {
      const hello = helloOf(frame.payload);
      const bytes = Buffer.concat([SYNC_MARKER, encodeFrame(frame.channel, frame.type, frame.payload)]);
      this.enqueue(async () => {
        // A host retransmits its HELLO until it is answered: the same session stays on its
        // connection, as on Firecracker, where the retransmission travels the same stream.
        const sameHost = hello.resume || (hello.session !== undefined && hello.session === this.session);
        if (!sameHost || !this.connection) await this.openConnection();
        if (!hello.resume) this.session = hello.session;
        this.connection?.write(bytes);
      });
      return;
    }
    const bytes = encodeFrame(frame.channel, frame.type, frame.payload);
    this.enqueue(async () => {
      this.connection?.write(bytes);
    });
  }

  private enqueue(step: () => Promise<void>): void {
    this.queue = this.queue.then(step).catch((err: Error) => {
      this.log(`vsock relay: ${err.message}`);
      this.closeConnection();
    });
  }

  private async openConnection(): Promise<void> {
    this.closeConnection();
    const fd = await native.vsockConnect(native.VMADDR_CID_LOCAL, AGENT_VSOCK_PORT, { timeoutMs: CONNECT_TIMEOUT_MS });
    const socket = native.vsockStream(fd);
    this.connection = socket;
    socket.on('data', (chunk: Buffer) => {
      // Bytes of a connection already replaced belong to a host that is gone.
      if (this.connection === socket) this.port.write(chunk);
    });
    socket.on('error', () => undefined);
    socket.on('end', () => socket.destroy());
    socket.on('close', () => {
      if (this.connection === socket) this.connection = undefined;
    });
  }

  private closeConnection(): void {
    this.connection?.destroy();
    this.connection = undefined;
    this.session = undefined;
  }
}

function helloOf(payload: Buffer): { resume: boolean; session: string | undefined } {
  try {
    const hello = JSON.parse(payload.toString('utf8')) as { resume?: unknown; session?: unknown };
    return { resume: hello.resume === true, session: typeof hello.session === 'string' ? hello.session : undefined };
  } catch {
    return { resume: false, session: undefined };
  }
}
