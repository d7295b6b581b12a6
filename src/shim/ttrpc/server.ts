/**
 * A ttrpc server over Unix sockets: unary methods only (all the Task service has). Each request
 * frame carries a ttrpc.Request (service, method, payload); the handler's answer or error goes
 * back in a Response frame on the same stream. A connection that breaks the framing (oversized
 * frame) is closed; a request that cannot be decoded, or names an unknown method, gets an error
 * response and the connection lives on, as ttrpc's own server does.
 */
import fs from 'node:fs';
import net from 'node:net';
import { fromBinary, toBinary, create } from '@bufbuild/protobuf';
import { RequestSchema, ResponseSchema, StatusSchema } from '../gen/ttrpc_pb';
import { encodeFrame, FrameError, FrameReader, MAX_MESSAGE_LENGTH, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE } from './frame';
import { Code, TtrpcError } from './status';

export type UnaryHandler = (payload: Uint8Array) => Promise<Uint8Array>;

/** Requests one connection may have in flight; more are refused until some finish. */
const MAX_IN_FLIGHT = 64;

export class TtrpcServer {
  private readonly handlers = new Map<string, UnaryHandler>();
  private readonly sockets = new Set<net.Socket>();
  private server: net.Server | undefined;
  /** Called with every handler error (for the shim's log). */
  onError: (method: string, err: Error) => void = () => undefined;

  register(service: string, method: string, handler: UnaryHandler): void {
    this.handlers.set(`${service}/${method}`, handler);
  }

  /** Listens on a Unix socket path (an existing file there is replaced), mode 0600. */
  listen(socketPath: string): Promise<void> {
    fs.rmSync(socketPath, { force: true });
    const server = net.createServer((socket) => this.serve(socket));
    this.server = server;
    return new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, () => {
        server.off('error', reject);
        fs.chmodSync(socketPath, 0o600);
        resolve();
      });
    });
  }

  /** Serves one already connected socket (also what tests use). */
  serve(socket: net.Socket): void {
    this.sockets.add(socket);
    const reader = new FrameReader();
    let inFlight = 0;
    socket.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = reader.push(chunk);
      } catch (err) {
        if (err instanceof FrameError) this.onError('framing', err);
        socket.destroy();
        return;
      }
      for (const frame of frames) {
        if (frame.type !== MESSAGE_TYPE_REQUEST) continue; // no streaming methods: data frames are ignored
        if (inFlight >= MAX_IN_FLIGHT) {
          this.respond(socket, frame.streamId, undefined, new TtrpcError(8, 'too many requests in flight'));
          continue;
        }
        inFlight++;
        void this.handle(frame.data).then(({ payload, error }) => {
          inFlight--;
          this.respond(socket, frame.streamId, payload, error);
        });
      }
    });
    socket.on('error', () => undefined);
    socket.on('close', () => this.sockets.delete(socket));
  }

  private async handle(data: Buffer): Promise<{ payload?: Uint8Array; error?: TtrpcError }> {
    let request;
    try {
      request = fromBinary(RequestSchema, data);
    } catch (err) {
      return { error: new TtrpcError(Code.INVALID_ARGUMENT, `malformed ttrpc request: ${(err as Error).message}`) };
    }
    const key = `${request.service}/${request.method}`;
    const handler = this.handlers.get(key);
    if (!handler) return { error: new TtrpcError(Code.UNIMPLEMENTED, `${key.slice(0, 200)} is not implemented`) };
    try {
      return { payload: await handler(request.payload) };
    } catch (err) {
      const error = err instanceof TtrpcError ? err : new TtrpcError(Code.UNKNOWN, (err as Error).message);
      this.onError(key, error);
      return { error };
    }
  }

  private respond(socket: net.Socket, streamId: number, payload: Uint8Array | undefined, error: TtrpcError | undefined): void {
    if (socket.destroyed) return;
    const response = create(ResponseSchema, error
      ? { status: create(StatusSchema, { code: error.code, message: error.message.slice(0, 4096) }) }
      : { status: create(StatusSchema, { code: Code.OK }), payload: payload ?? new Uint8Array() });
    let frame: Buffer;
    try {
      frame = encodeFrame({ streamId, type: MESSAGE_TYPE_RESPONSE, flags: 0, data: Buffer.from(toBinary(ResponseSchema, response)) }, MAX_MESSAGE_LENGTH);
    } catch (err) {
      frame = encodeFrame({ streamId, type: MESSAGE_TYPE_RESPONSE, flags: 0, data: Buffer.from(toBinary(ResponseSchema, create(ResponseSchema, { status: create(StatusSchema, { code: Code.INTERNAL, message: (err as Error).message }) }))) });
    }
    socket.write(frame);
  }

  /** Stops listening and closes every connection. */
  close(): void {
    this.server?.close();
    for (const socket of this.sockets) socket.destroy();
  }
}
