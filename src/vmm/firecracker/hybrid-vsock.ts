/**
 * The host side of Firecracker's hybrid vsock (docs/vsock.md):
 *
 *  - host-initiated: connect to the device's `uds_path`, write
 *    `CONNECT <port>\n`, read `OK <hostport>\n`; from then on the socket is a
 *    raw byte stream to the guest's AF_VSOCK listener. If nothing listens on
 *    that guest port, Firecracker closes the connection instead of answering.
 *  - guest-initiated: Firecracker connects to `<uds_path>_<port>`, which the
 *    host must be listening on.
 */
import fs from 'node:fs';
import net from 'node:net';

export class VsockConnectError extends Error {
  constructor(
    readonly port: number,
    readonly udsPath: string,
    readonly reason: 'refused' | 'closed' | 'bad-reply' | 'timeout' | 'socket',
    detail: string,
  ) {
    super(`vsock connect to guest port ${port} via ${udsPath} failed: ${detail}`);
    this.name = 'VsockConnectError';
  }
}

/** Longest acknowledgement line accepted ("OK 4294967295\n" is 14 bytes). */
const MAX_REPLY = 64;

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 0 || port > 0xffffffff) throw new RangeError(`invalid vsock port ${port}`);
}

/**
 * Opens a host-initiated connection to guest port `port`. Resolves with the
 * socket positioned right after the `OK` line; any bytes the guest sent
 * along with it are put back (unshift), so the caller reads them first.
 */
export function connectHybridVsock(udsPath: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    checkPort(port); // throwing here rejects
    const sock = net.createConnection(udsPath);
    let buf = Buffer.alloc(0);
    let done = false;

    const finish = (err: VsockConnectError | null): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.removeListener('readable', onReadable);
      sock.removeListener('error', onError);
      sock.removeListener('end', onEnd);
      sock.removeListener('close', onClose);
      sock.removeListener('connect', onConnect);
      if (err) {
        sock.destroy();
        reject(err);
      } else {
        resolve(sock);
      }
    };

    const onConnect = (): void => {
      sock.write(`CONNECT ${port}\n`);
    };
    const onReadable = (): void => {
      let chunk: Buffer | null;
      while (!done && (chunk = sock.read() as Buffer | null) !== null) {
        buf = Buffer.concat([buf, chunk]);
        const nl = buf.indexOf(0x0a);
        if (nl < 0) {
          if (buf.length > MAX_REPLY) {
            finish(new VsockConnectError(port, udsPath, 'bad-reply', `no acknowledgement line, got ${JSON.stringify(buf.subarray(0, MAX_REPLY).toString('latin1'))}`));
          }
          continue;
        }
        const line = buf.subarray(0, nl).toString('latin1');
        const rest = buf.subarray(nl + 1);
        if (!/^OK \d+$/.test(line)) {
          finish(new VsockConnectError(port, udsPath, 'bad-reply', `expected "OK <port>", got ${JSON.stringify(line)}`));
          return;
        }
        if (rest.length > 0) sock.unshift(rest);
        finish(null);
      }
    };
    const onError = (err: NodeJS.ErrnoException): void => {
      const refused = err.code === 'ENOENT' || err.code === 'ECONNREFUSED';
      finish(new VsockConnectError(port, udsPath, refused ? 'refused' : 'socket', `${err.code ?? ''} ${err.message}`.trim()));
    };
    const onEnd = (): void => {
      finish(new VsockConnectError(port, udsPath, 'closed', 'Firecracker closed the connection before "OK" (is anything listening on that guest port?)'));
    };
    const onClose = onEnd;

    const timer = setTimeout(() => {
      finish(new VsockConnectError(port, udsPath, 'timeout', `no "OK" within ${timeoutMs} ms`));
    }, timeoutMs);

    sock.on('connect', onConnect);
    sock.on('readable', onReadable);
    sock.on('error', onError);
    sock.on('end', onEnd);
    sock.on('close', onClose);
  });
}

/** Path a guest-initiated connection to host port `port` goes to. */
export function guestInitiatedPath(udsPath: string, port: number): string {
  checkPort(port);
  return `${udsPath}_${port}`;
}

/**
 * Listens for guest-initiated connections to host port `port`
 * (at `<udsPath>_<port>`). A stale socket file is removed first.
 */
export async function listenHybridVsock(udsPath: string, port: number, onConnection: (s: net.Socket) => void): Promise<net.Server> {
  const p = guestInitiatedPath(udsPath, port);
  await fs.promises.rm(p, { force: true });
  const server = net.createServer(onConnection);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(p, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
  return server;
}
