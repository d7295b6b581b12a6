/**
 * A minimal QMP client: JSON lines over the monitor's Unix socket. Commands are serialised
 * (QMP answers in order); events are emitted as 'event'.
 */
import { EventEmitter } from 'node:events';
import net from 'node:net';
import { connectUnix, retryUntil } from '../../util/connect';

interface Pending {
  resolve: (value: unknown) => void;
  reject: (err: Error) => void;
  command: string;
}

export class QmpError extends Error {
  constructor(readonly command: string, readonly errorClass: string, readonly desc: string) {
    super(`QMP ${command}: ${desc}`);
  }
}

export class QmpClient extends EventEmitter {
  private buffer = '';
  private readonly pending: Pending[] = [];
  private greeted: Promise<void>;

  private constructor(private readonly socket: net.Socket) {
    super();
    let greet: () => void = () => undefined;
    this.greeted = new Promise((resolve) => { greet = resolve; });
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffer += chunk;
      let newline: number;
      while ((newline = this.buffer.indexOf('\n')) >= 0) {
        const line = this.buffer.slice(0, newline).trim();
        this.buffer = this.buffer.slice(newline + 1);
        if (!line) continue;
        let message: Record<string, unknown>;
        try {
          message = JSON.parse(line) as Record<string, unknown>;
        } catch {
          continue;
        }
        if ('QMP' in message) greet();
        else if ('event' in message) this.emit('event', message);
        else if ('return' in message) this.pending.shift()?.resolve(message.return);
        else if ('error' in message) {
          const error = message.error as { class?: string; desc?: string };
          const pending = this.pending.shift();
          pending?.reject(new QmpError(pending.command, error.class ?? 'GenericError', error.desc ?? 'unknown error'));
        }
      }
    });
    const fail = (): void => {
      for (const pending of this.pending.splice(0)) pending.reject(new Error(`QMP ${pending.command}: connection closed`));
      this.emit('close');
    };
    socket.on('close', fail);
    socket.on('error', () => undefined);
  }

  /** Connects (retrying until the socket exists) and negotiates capabilities. */
  static connect(path: string, timeoutMs: number): Promise<QmpClient> {
    return retryUntil(
      async () => {
        const client = new QmpClient(await connectUnix(path));
        await client.greeted;
        await client.execute('qmp_capabilities');
        return client;
      },
      { timeoutMs, intervalMs: 25, timeoutError: (err) => new Error(`cannot reach QEMU's monitor at ${path}: ${err.message}`) },
    );
  }

  execute(command: string, args?: Record<string, unknown>): Promise<unknown> {
    return new Promise((resolve, reject) => {
      if (this.socket.destroyed) {
        reject(new Error(`QMP ${command}: connection closed`));
        return;
      }
      this.pending.push({ resolve, reject, command });
      this.socket.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}
