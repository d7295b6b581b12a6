/**
 * The guest end of the host-guest byte stream.
 *
 * serial: the virtio-serial port named shoal.agent (/dev/vportNpM). A character device, so Node's
 *   net.Socket cannot wrap it (libuv sees a FILE); we read and write it with fs on the thread
 *   pool. A read of 0 bytes means "no host connected" (virtio_console returns EOF while the
 *   host end is closed), so we poll until a host arrives.
 * vsock: Firecracker's hybrid vsock. We listen on AF_VSOCK port 1024 through the native addon
 *   (Node has no AF_VSOCK) and get each accepted connection as a Unix-socket bridge.
 */
import fs from 'node:fs';
import { Duplex } from 'node:stream';

import { AGENT_VSOCK_PORT, SERIAL_PORT_NAME } from '../protocol/transport';

export { AGENT_VSOCK_PORT, SERIAL_PORT_NAME };

/**
 * Finds the device node of the named virtio-serial port. There is no udev in the guest, so
 * /dev/virtio-ports/<name> does not exist; sysfs maps each vportNpM to its name.
 */
export function findSerialPort(name = SERIAL_PORT_NAME): string | undefined {
  const base = '/sys/class/virtio-ports';
  let entries: string[];
  try {
    entries = fs.readdirSync(base);
  } catch {
    return undefined;
  }
  for (const entry of entries) {
    try {
      if (fs.readFileSync(`${base}/${entry}/name`, 'utf8').trim() === name) return `/dev/${entry}`;
    } catch {
      // port without a name attribute yet
    }
  }
  return undefined;
}

/** A duplex over a character device, reopening reads when the host side disconnects. */
export class SerialPortStream extends Duplex {
  private reading = false;
  private readonly buf = Buffer.allocUnsafe(256 * 1024);
  /** Called when a read reports "host disconnected", so the session can resync. */
  onHostGone: () => void = () => undefined;

  constructor(private readonly fd: number) {
    super();
  }

  override _read(): void {
    if (this.reading) return;
    this.reading = true;
    const loop = (): void => {
      fs.read(this.fd, this.buf, 0, this.buf.length, null, (err, n) => {
        if (err) {
          // EAGAIN/ENOTCONN-like conditions: back off and retry; anything else is fatal.
          if (['EAGAIN', 'ENOTCONN', 'EINTR'].includes((err as NodeJS.ErrnoException).code ?? '')) {
            setTimeout(loop, 50);
            return;
          }
          this.destroy(err);
          return;
        }
        if (n === 0) {
          this.onHostGone();
          setTimeout(loop, 50);
          return;
        }
        const more = this.push(Buffer.from(this.buf.subarray(0, n)));
        if (more) loop();
        else this.reading = false;
      });
    };
    loop();
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    // Synchronous writes: the port takes at most 32 KiB per write and returns once the host has
    // it, so a thread-pool round trip per write (what fs.write costs) would dominate the link's
    // throughput under emulation.
    let offset = 0;
    try {
      while (offset < chunk.length) offset += fs.writeSync(this.fd, chunk, offset, chunk.length - offset);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'EAGAIN') {
        setTimeout(() => this._write(chunk.subarray(offset), _enc, done), 5);
        return;
      }
      // No host connected: the bytes have nowhere to go. Drop them; the host resyncs on connect.
    }
    done();
  }
}

export async function openSerialPort(timeoutMs: number): Promise<SerialPortStream> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const path = findSerialPort();
    try {
      if (!path) throw new Error(`virtio-serial port ${SERIAL_PORT_NAME} not found`);
      const fd = fs.openSync(path, 'r+');
      return new SerialPortStream(fd);
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}
