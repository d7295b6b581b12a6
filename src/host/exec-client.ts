/**
 * Running requests on a channel from the host: collect the output of short commands, or wire
 * a channel to local streams (stdin in, stdout and stderr out, kept apart).
 */
import type { Readable, Writable } from 'node:stream';
import { exitCodeOf, type ExecRequest } from '../protocol/messages';
import { STDERR, STDIN, STDOUT, type Channel, type Mux } from '../protocol/mux';
import { ShoalError } from '../util/errors';

export interface ExecResult {
  /** Exit code, shell-style: 128+n for death by signal n. */
  code: number;
  stdout: Buffer;
  stderr: Buffer;
}

/**
 * Wires a channel to local streams. Resolves with the exit code once the remote side reported
 * exit and all output was written; rejects with the remote error if the process did not start.
 */
export function attachChannel(
  channel: Channel,
  io: { stdin?: Readable; stdout: Writable; stderr: Writable; onMessage?: (message: Record<string, unknown>) => void },
): Promise<number> {
  return new Promise<number>((resolve, reject) => {
    let exitCode: number | undefined;
    let error: string | undefined;
    channel.setDataHandler((stream, data) => {
      const target = stream === STDERR ? io.stderr : stream === STDOUT ? io.stdout : undefined;
      if (!target) return;
      if (!target.write(data)) return new Promise<void>((r) => target.once('drain', r));
      return;
    });
    channel.on('message', (message: Record<string, unknown>) => {
      if (message.type === 'exit') exitCode = exitCodeOf(message);
      else if (message.type === 'error') error = String(message.message);
      else io.onMessage?.(message);
    });
    channel.on('close', () => {
      channel.close();
      if (exitCode !== undefined) resolve(exitCode);
      else reject(new ShoalError(error ?? 'the connection to the VM was lost'));
    });
    if (io.stdin) void pumpStdin(io.stdin, channel);
  });
}

async function pumpStdin(stdin: Readable, channel: Channel): Promise<void> {
  try {
    for await (const chunk of stdin) {
      if (channel.closed) break;
      await channel.write(STDIN, typeof chunk === 'string' ? Buffer.from(chunk) : (chunk as Buffer));
    }
  } catch {
    // stdin errors (EPIPE, closed tty) end the input
  }
  channel.end(STDIN);
}

/**
 * How much of each output stream execCollect keeps: the tail (where errors are), since the guest
 * decides how much a command prints and all of it would otherwise sit in the supervisor's memory.
 */
export const COLLECT_MAX_BYTES = 1024 * 1024;

/** Keeps the last `limit` bytes written to it. */
class TailBuffer {
  private chunks: Buffer[] = [];
  private size = 0;
  constructor(private readonly limit: number) {}

  push(data: Buffer): void {
    const piece = data.length > this.limit ? data.subarray(data.length - this.limit) : data;
    this.chunks.push(Buffer.from(piece));
    this.size += piece.length;
    while (this.size - this.chunks[0]!.length >= this.limit) this.size -= this.chunks.shift()!.length;
  }

  toBuffer(): Buffer {
    const all = Buffer.concat(this.chunks);
    return all.length > this.limit ? all.subarray(all.length - this.limit) : all;
  }
}

/**
 * The deadline of the host's own requests to the agent (execCollect, request) unless the caller
 * gives one: a hostile or hung guest must not hang a supervisor forever. Each caller that knows
 * its request may take longer (an image load or pull) says so; the user's own execs and the main
 * container do not go through these and have no deadline (their duration is the user's).
 */
export const AGENT_CALL_TIMEOUT_MS = 30_000;

/**
 * Settles like `promise`, or after `timeoutMs` closes the channel (the guest drops the request,
 * stdin pumps and credit waits wake up) and rejects with one line naming `what`.
 */
export function withChannelDeadline<T>(promise: Promise<T>, channel: Channel, timeoutMs: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new ShoalError(`${what}: no answer from the guest within ${formatSeconds(timeoutMs)} (the VM may be hung)`));
      channel.close();
    }, timeoutMs);
  });
  return Promise.race([promise.finally(() => clearTimeout(timer)), expired]);
}

function formatSeconds(ms: number): string {
  return ms < 1000 ? `${ms} ms` : `${Math.round(ms / 1000)} s`;
}

/** Runs a command in the guest and collects (the tail of) its output (for short control commands), within a deadline. */
export async function execCollect(
  mux: Mux,
  request: Omit<ExecRequest, 'kind' | 'stdin'>,
  stdin?: Readable,
  options: { maxOutputBytes?: number; timeoutMs?: number } = {},
): Promise<ExecResult> {
  const channel = mux.open({ kind: 'exec', stdin: stdin !== undefined, ...request });
  const limit = options.maxOutputBytes ?? COLLECT_MAX_BYTES;
  const stdout = new TailBuffer(limit);
  const stderr = new TailBuffer(limit);
  const sink = (tail: TailBuffer): Writable =>
    ({ write: (data: Buffer) => { tail.push(data); return true; }, once: () => undefined }) as unknown as Writable;
  const io: Parameters<typeof attachChannel>[1] = { stdout: sink(stdout), stderr: sink(stderr) };
  if (stdin) io.stdin = stdin;
  const what = `\`${request.argv.slice(0, 2).join(' ')}\` in the VM`;
  const code = await withChannelDeadline(attachChannel(channel, io), channel, options.timeoutMs ?? AGENT_CALL_TIMEOUT_MS, what);
  return { code, stdout: stdout.toBuffer(), stderr: stderr.toBuffer() };
}

/** Sends a one-shot request (info, poweroff, quiesce) and returns its result message, within a deadline. */
export function request(mux: Mux, body: Record<string, unknown>, timeoutMs: number = AGENT_CALL_TIMEOUT_MS): Promise<Record<string, unknown>> {
  const channel = mux.open(body);
  return withChannelDeadline(oneReply(channel), channel, timeoutMs, `the agent's ${String(body.kind)} request`);
}

function oneReply(channel: Channel): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let result: Record<string, unknown> | undefined;
    channel.setDataHandler(() => undefined);
    channel.on('message', (message: Record<string, unknown>) => {
      if (message.type === 'error') reject(new ShoalError(String(message.message)));
      else result = message;
    });
    channel.on('close', () => {
      channel.close();
      if (result) resolve(result);
      else reject(new ShoalError('the connection to the VM was lost'));
    });
  });
}
