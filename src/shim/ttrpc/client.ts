/**
 * A ttrpc client over a Unix socket, unary calls only: what the shim needs to publish its
 * events (containerd's Events/Forward on TTRPC_ADDRESS). Client streams have odd ids, as the
 * protocol wants; every call has a deadline, and a response larger than the limit ends the
 * connection.
 */
import net from 'node:net';
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import { RequestSchema, ResponseSchema } from '../gen/ttrpc_pb';
import { encodeFrame, FrameReader, MESSAGE_TYPE_REQUEST, MESSAGE_TYPE_RESPONSE } from './frame';
import { Code, TtrpcError } from './status';

interface Pending {
  resolve: (payload: Uint8Array) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export class TtrpcClient {
  private nextStream = 1;
  private readonly pending = new Map<number, Pending>();
  private readonly reader = new FrameReader();
  private closedWith: Error | undefined;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      let frames;
      try {
        frames = this.reader.push(chunk);
      } catch (err) {
        this.fail(err as Error);
        return;
      }
      for (const frame of frames) {
        if (frame.type !== MESSAGE_TYPE_RESPONSE) continue;
        const call = this.pending.get(frame.streamId);
        if (!call) continue;
        this.pending.delete(frame.streamId);
        clearTimeout(call.timer);
        try {
          const response = fromBinary(ResponseSchema, frame.data);
          const code = response.status?.code ?? Code.OK;
          if (code !== Code.OK) call.reject(new TtrpcError(code, response.status?.message ?? 'error'));
          else call.resolve(response.payload);
        } catch (err) {
          call.reject(new TtrpcError(Code.INTERNAL, `malformed ttrpc response: ${(err as Error).message}`));
        }
      }
    });
    socket.on('error', (err) => this.fail(err));
    socket.on('close', () => this.fail(new Error('ttrpc connection closed')));
  }

  /** Connects to `unix:///path` or a bare path. */
  static connect(address: string, timeoutMs = 5000): Promise<TtrpcClient> {
    const socketPath = address.startsWith('unix://') ? address.slice('unix://'.length) : address;
    return new Promise<TtrpcClient>((resolve, reject) => {
      const socket = net.connect(socketPath);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connecting to ${socketPath} timed out`));
      }, timeoutMs);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.off('error', reject);
        resolve(new TtrpcClient(socket));
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  call(service: string, method: string, payload: Uint8Array, timeoutMs = 5000): Promise<Uint8Array> {
    if (this.closedWith) return Promise.reject(this.closedWith);
    const streamId = this.nextStream;
    this.nextStream += 2;
    const request = create(RequestSchema, { service, method, payload, timeoutNano: BigInt(timeoutMs) * 1_000_000n });
    const frame = encodeFrame({ streamId, type: MESSAGE_TYPE_REQUEST, flags: 0, data: Buffer.from(toBinary(RequestSchema, request)) });
    return new Promise<Uint8Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(streamId);
        reject(new TtrpcError(Code.DEADLINE_EXCEEDED, `${service}/${method} timed out after ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(streamId, { resolve, reject, timer });
      this.socket.write(frame);
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private fail(err: Error): void {
    this.closedWith ??= err;
    for (const [id, call] of this.pending) {
      clearTimeout(call.timer);
      call.reject(err);
      this.pending.delete(id);
    }
    this.socket.destroy();
  }
}
