/**
 * The host's side of a `files` channel (src/protocol/files.ts). The guest is not trusted: every
 * reply is checked for shape, and a read delivers at most maxBytes, pulled at the consumer's
 * pace (the channel's credit returns only as the consumer takes the bytes).
 */
import { Readable } from 'node:stream';
import { isFileEntry, type FileEntry } from '../protocol/files';
import { STDIN, STDOUT, type Channel } from '../protocol/mux';

export class FilesError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'FilesError';
  }
}

function errorOf(message: Record<string, unknown>): FilesError {
  const code = typeof message.code === 'string' && /^[A-Z]{2,20}$/.test(message.code) ? message.code : 'EIO';
  const text = typeof message.message === 'string' ? message.message.split('\n')[0]!.slice(0, 500) : 'file operation failed';
  return new FilesError(code, text);
}

const lost = (): FilesError => new FilesError('EIO', 'the connection to the VM was lost');

/**
 * How long the guest may take to answer a file operation (to reply to a call, to open a file for
 * a read, to confirm a write once its body was sent): a hung guest fails the request with one
 * line instead of holding it forever. The body of a read or a write moves at the client's pace.
 */
export const FILES_REPLY_TIMEOUT_MS = 30_000;

/** Rejects `promise` with EIO (and closes the channel) if it has not settled within `timeoutMs`. */
function replyWithin<T>(promise: Promise<T>, channel: Channel, timeoutMs: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new FilesError('EIO', `the guest did not answer the file operation within ${timeoutMs < 1000 ? `${timeoutMs} ms` : `${Math.round(timeoutMs / 1000)} s`} (the VM may be hung)`));
      channel.close();
    }, timeoutMs);
  });
  return Promise.race([promise.finally(() => clearTimeout(timer)), expired]);
}

/** One request, one reply message (list, stat, mkdir, rename, remove), within timeoutMs. */
export function filesCall(channel: Channel, timeoutMs = FILES_REPLY_TIMEOUT_MS): Promise<Record<string, unknown>> {
  return replyWithin(oneFilesReply(channel), channel, timeoutMs);
}

function oneFilesReply(channel: Channel): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let settled = false;
    channel.setDataHandler(() => undefined);
    channel.on('message', (message: Record<string, unknown>) => {
      if (settled) return;
      settled = true;
      if (message.type === 'result') resolve(message);
      else reject(errorOf(message));
      channel.close();
    });
    channel.on('close', () => {
      if (!settled) reject(lost());
      settled = true;
    });
  });
}

export function entriesOf(reply: Record<string, unknown>): { entries: FileEntry[]; truncated: boolean } {
  const entries = Array.isArray(reply.entries) ? reply.entries : [];
  return { entries: entries.filter(isFileEntry), truncated: reply.truncated === true };
}

export function entryOf(reply: Record<string, unknown>): FileEntry {
  if (!isFileEntry(reply.entry)) throw new FilesError('EIO', 'the guest sent a malformed file entry');
  return reply.entry;
}

/** A read: resolves with the file's entry once the guest opened it (within timeoutMs), and its bytes as a stream. */
export function readFromChannel(channel: Channel, maxBytes: number, timeoutMs = FILES_REPLY_TIMEOUT_MS): Promise<{ entry: FileEntry; body: Readable }> {
  return replyWithin(startRead(channel, maxBytes), channel, timeoutMs);
}

function startRead(channel: Channel, maxBytes: number): Promise<{ entry: FileEntry; body: Readable }> {
  return new Promise((resolve, reject) => {
    let received = 0;
    let wake: (() => void) | undefined;
    let started = false;
    let ended = false;
    const body = new Readable({
      read() {
        const w = wake;
        wake = undefined;
        w?.();
      },
      destroy(err, callback) {
        channel.close();
        wake?.();
        callback(err);
      },
    });
    channel.setDataHandler(async (stream, data) => {
      if (stream !== STDOUT || body.destroyed) return;
      received += data.length;
      if (received > maxBytes) {
        body.destroy(new FilesError('EFBIG', `the file is larger than ${maxBytes} bytes`));
        return;
      }
      if (!body.push(data)) await new Promise<void>((r) => { wake = r; });
    });
    channel.on('eof', (stream: number) => {
      if (stream === STDOUT && !ended) {
        ended = true;
        body.push(null);
      }
    });
    channel.on('message', (message: Record<string, unknown>) => {
      if (message.type === 'stat' && !started) {
        if (!isFileEntry(message.entry)) {
          reject(new FilesError('EIO', 'the guest sent a malformed file entry'));
          channel.close();
          return;
        }
        started = true;
        resolve({ entry: message.entry, body });
      } else if (message.type === 'error') {
        const err = errorOf(message);
        if (!started) reject(err);
        else body.destroy(err);
        channel.close();
      }
    });
    channel.on('close', () => {
      if (!started) reject(lost());
      else if (!ended) body.destroy(lost());
    });
  });
}

/**
 * A write: sends the body (at most maxBytes, else EFBIG and nothing is written) and resolves with
 * the new entry, which the guest must confirm within timeoutMs of the body's end.
 */
export async function writeToChannel(channel: Channel, body: AsyncIterable<Buffer | string>, maxBytes: number, timeoutMs = FILES_REPLY_TIMEOUT_MS): Promise<FileEntry> {
  const reply = new Promise<Record<string, unknown>>((resolve, reject) => {
    channel.setDataHandler(() => undefined);
    channel.on('message', (message: Record<string, unknown>) => {
      if (message.type === 'result') resolve(message);
      else if (message.type === 'error') reject(errorOf(message));
    });
    channel.on('close', () => reject(lost()));
  });
  reply.catch(() => undefined);
  let sent = 0;
  try {
    for await (const chunk of body) {
      const data = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      sent += data.length;
      if (sent > maxBytes) throw new FilesError('EFBIG', `the body is larger than ${maxBytes} bytes`);
      if (channel.closed) break;
      await channel.write(STDIN, data);
    }
  } catch (err) {
    channel.close(); // the guest removes its temp file: nothing is written
    throw err;
  }
  channel.end(STDIN);
  try {
    return entryOf(await replyWithin(reply, channel, timeoutMs));
  } finally {
    channel.close();
  }
}
