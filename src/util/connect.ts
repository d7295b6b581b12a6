/**
 * Connecting to a Unix socket that another process is about to create (a supervisor's control
 * socket, QEMU's monitor): retried until it answers, the deadline passes, or the caller sees
 * that waiting is pointless (the process it waits for is gone).
 */
import net from 'node:net';
import { sleep } from './process';

/** One connection attempt: resolves once connected, rejects on ENOENT/ECONNREFUSED and the like. */
export function connectUnix(socketPath: string): Promise<net.Socket> {
  return new Promise<net.Socket>((resolve, reject) => {
    const socket = net.connect(socketPath);
    socket.once('connect', () => {
      socket.off('error', reject);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

export interface RetryOptions {
  timeoutMs: number;
  intervalMs: number;
  /** Called after each failed attempt; throw to give up at once. */
  onFailure?: (err: Error) => void;
  /** The error thrown once the deadline passed, from the last attempt's. */
  timeoutError: (err: Error) => Error;
}

/** Runs attempt until it resolves; see RetryOptions for when it stops. */
export async function retryUntil<T>(attempt: () => Promise<T>, options: RetryOptions): Promise<T> {
  const deadline = Date.now() + options.timeoutMs;
  for (;;) {
    try {
      return await attempt();
    } catch (err) {
      options.onFailure?.(err as Error);
      if (Date.now() > deadline) throw options.timeoutError(err as Error);
      await sleep(options.intervalMs);
    }
  }
}
