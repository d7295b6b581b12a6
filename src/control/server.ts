/**
 * The supervisor's end of the control socket: listens on `ctl.sock`, parses each channel's
 * opening request (a malformed or unknown one is answered with an error and closed) and hands
 * it, typed, to the supervisor's handlers. Replies go out through sendEvent, typed the same way
 * the CLI's client parses them.
 */
import fs from 'node:fs';
import net from 'node:net';
import { Mux, type Channel } from '../protocol/mux';
import { parseControlRequest, type AttachRequest, type ControlEvent, type ExecControlRequest, type FilesControlRequest, type KeptAttachControlRequest, type KeptListControlRequest, type SnapshotControlRequest, type StopRequest } from './messages';

export interface ControlHandlers {
  attach(channel: Channel, request: AttachRequest): void;
  exec(channel: Channel, request: ExecControlRequest): void;
  files(channel: Channel, request: FilesControlRequest): void;
  keptList(channel: Channel, request: KeptListControlRequest): void;
  keptAttach(channel: Channel, request: KeptAttachControlRequest): void;
  snapshot(channel: Channel, request: SnapshotControlRequest): void;
  stop(channel: Channel, request: StopRequest): void;
}

export function sendEvent(channel: Channel, event: ControlEvent): void {
  channel.send(event);
}

/** Answers a request with an error and ends its channel. */
export function refuse(channel: Channel, message: string): void {
  sendEvent(channel, { type: 'error', message });
  channel.close();
}

export class ControlServer {
  private constructor(private readonly server: net.Server) {}

  /** Listens on socketPath (a stale socket file from an earlier process is replaced). */
  static async listen(socketPath: string, handlers: ControlHandlers): Promise<ControlServer> {
    fs.rmSync(socketPath, { force: true });
    const server = net.createServer((socket) => {
      socket.on('error', () => undefined);
      const mux = new Mux(socket, { side: 'guest', startInSync: false });
      mux.on('open', (channel: Channel) => dispatch(channel, handlers));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, resolve);
    });
    // Its directory is 0700 already; the socket's own mode must not be the umask's either.
    fs.chmodSync(socketPath, 0o600);
    return new ControlServer(server);
  }

  close(): void {
    this.server.close();
  }
}

function dispatch(channel: Channel, handlers: ControlHandlers): void {
  const parsed = parseControlRequest(channel.request);
  if (!parsed.ok) {
    channel.setDataHandler(() => undefined);
    refuse(channel, parsed.error);
    return;
  }
  const request = parsed.value;
  switch (request.kind) {
    case 'attach':
      handlers.attach(channel, request);
      return;
    case 'exec':
      handlers.exec(channel, request);
      return;
    case 'files':
      handlers.files(channel, request);
      return;
    case 'snapshot':
      handlers.snapshot(channel, request);
      return;
    case 'stop':
      handlers.stop(channel, request);
      return;
    case 'kept-list':
      handlers.keptList(channel, request);
      return;
    case 'kept-attach':
      handlers.keptAttach(channel, request);
      return;
  }
}
