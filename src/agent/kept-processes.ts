/**
 * The agent's table of kept processes (src/protocol/kept.ts): execs that outlive their channel
 * and the host's session. Each keeps a bounded ring of its recent output and, once it ended, its
 * exit status; any number of channels may follow it (the exec's own, then `kept-attach`es of
 * later hosts), each getting the ring first, then live output. The table is in the agent's
 * memory, so a VM snapshot keeps it: a VM resumed from a pause lists what ran before, and a
 * fork's children list the parent's kept processes, which run in them too (the snapshot copied
 * them), with the output up to the fork in their rings.
 *
 * Bounded: at most KEPT_LIMITS.maxLive running (one more is refused), the newest
 * KEPT_LIMITS.maxEnded ended ones remembered, ring bytes per stream, chunks per ring.
 */
import type { KeptProcessInfo } from '../protocol/kept';
import { KEPT_LIMITS, validKeptTag } from '../protocol/kept';
import { terminalSizeOf } from '../protocol/messages';
import { STDIN, type Channel } from '../protocol/mux';

export type ExitStatus = { code: number | null; signal: string | null };

/** What a follower may do to the process (the exec's own stdin, signals and terminal). */
export interface KeptControls {
  signal(name: string): void;
  resize?(cols: number, rows: number): void;
  /** Absent when the process has no stdin (it reads /dev/null). */
  writeStdin?(data: Buffer): Promise<void> | void;
  endStdin?(): void;
}

/** Small writes merge into the previous chunk up to this size, so a chatty process does not make many. */
const MERGE_BYTES = 4096;

/** Recent output in the order written, at most `perStream` bytes of each stream and `maxChunks` chunks. */
export class OutputRing {
  private chunks: Array<{ stream: number; data: Buffer }> = [];
  private readonly bytes = new Map<number, number>();

  constructor(private readonly perStream: number = KEPT_LIMITS.ringBytesPerStream, private readonly maxChunks = 2048) {}

  push(stream: number, data: Buffer): void {
    if (data.length === 0) return;
    const piece = data.length > this.perStream ? data.subarray(data.length - this.perStream) : data;
    const last = this.chunks[this.chunks.length - 1];
    if (last && last.stream === stream && last.data.length + piece.length <= MERGE_BYTES) last.data = Buffer.concat([last.data, piece]);
    else this.chunks.push({ stream, data: Buffer.from(piece) });
    this.bytes.set(stream, this.size(stream) + piece.length);
    // The oldest bytes of this stream go first (a chunk may be cut: its head falls out).
    while (this.size(stream) > this.perStream) {
      const i = this.chunks.findIndex((c) => c.stream === stream);
      const chunk = this.chunks[i]!;
      const excess = this.size(stream) - this.perStream;
      if (chunk.data.length <= excess) {
        this.chunks.splice(i, 1);
        this.bytes.set(stream, this.size(stream) - chunk.data.length);
      } else {
        chunk.data = chunk.data.subarray(excess);
        this.bytes.set(stream, this.perStream);
      }
    }
    while (this.chunks.length > this.maxChunks) {
      const old = this.chunks.shift()!;
      this.bytes.set(old.stream, this.size(old.stream) - old.data.length);
    }
  }

  size(stream: number): number {
    return this.bytes.get(stream) ?? 0;
  }

  get chunkCount(): number {
    return this.chunks.length;
  }

  entries(): Array<{ stream: number; data: Buffer }> {
    return this.chunks.map((c) => ({ stream: c.stream, data: c.data }));
  }
}

interface Follower {
  channel: Channel;
  /** Everything sent to this follower, in order: the replay first, then live output. */
  tail: Promise<void>;
}

export class KeptProcess {
  readonly ring: OutputRing;
  exit: ExitStatus | undefined;
  private readonly ended = new Set<number>();
  private readonly followers = new Set<Follower>();
  private stdinOpen: boolean;

  constructor(
    readonly id: number,
    readonly pid: number,
    readonly tag: string,
    readonly tty: boolean,
    readonly stdin: boolean,
    readonly startedAt: number,
    private readonly controls: KeptControls,
    ringBytesPerStream: number = KEPT_LIMITS.ringBytesPerStream,
  ) {
    this.ring = new OutputRing(ringBytesPerStream);
    this.stdinOpen = stdin;
  }

  get running(): boolean {
    return this.exit === undefined;
  }

  get followerCount(): number {
    return this.followers.size;
  }

  info(): KeptProcessInfo {
    return {
      id: this.id,
      pid: this.pid,
      tag: this.tag,
      tty: this.tty,
      stdin: this.stdin,
      running: this.running,
      code: this.exit?.code ?? null,
      signal: this.exit?.signal ?? null,
      startedAt: this.startedAt,
    };
  }

  /**
   * The process wrote: into the ring, then to every follower. Resolves once all followers took
   * it (a slow host holds the process's pipe, as an ordinary exec's does); with none, at once.
   */
  write(stream: number, chunk: Buffer): Promise<void> {
    this.ring.push(stream, chunk);
    const waits = [...this.followers].map((f) => this.enqueue(f, () => f.channel.write(stream, chunk)));
    return waits.length === 0 ? Promise.resolve() : Promise.all(waits).then(() => undefined);
  }

  /** The end of an output stream (after all of it was written). */
  end(stream: number): void {
    this.ended.add(stream);
    for (const f of this.followers) void this.enqueue(f, () => f.channel.end(stream));
  }

  /** The process ended (after its output): every follower gets the exit and its channel closes. */
  finish(status: ExitStatus): void {
    if (this.exit) return;
    this.exit = status;
    this.stdinOpen = false;
    for (const f of [...this.followers]) this.sendExit(f);
  }

  /**
   * A channel follows the process from now on: the ring first, then live output; its stdin,
   * signals and resizes reach the process. Closing it leaves the process running.
   */
  follow(channel: Channel): void {
    const f: Follower = { channel, tail: Promise.resolve() };
    channel.setDataHandler((stream, data) => {
      if (stream !== STDIN || !this.stdinOpen || !this.controls.writeStdin) return;
      return this.controls.writeStdin(data) ?? undefined;
    });
    channel.on('eof', (stream: number) => {
      // A terminal has no end of input to send (Ctrl-D is a byte); stdin ends once, for all.
      if (stream !== STDIN || !this.stdinOpen || this.tty) return;
      this.stdinOpen = false;
      this.controls.endStdin?.();
    });
    channel.on('message', (message: Record<string, unknown>) => {
      if (!this.running) return;
      if (message.type === 'signal' && typeof message.signal === 'string') this.controls.signal(message.signal);
      else if (message.type === 'resize') {
        const size = terminalSizeOf(message);
        if (size) this.controls.resize?.(size.cols, size.rows);
      }
    });
    channel.on('close', () => this.followers.delete(f));
    for (const { stream, data } of this.ring.entries()) void this.enqueue(f, () => channel.write(stream, data));
    for (const stream of this.ended) void this.enqueue(f, () => channel.end(stream));
    if (this.exit) {
      this.sendExit(f);
      return;
    }
    this.followers.add(f);
  }

  private sendExit(f: Follower): void {
    this.followers.delete(f);
    void this.enqueue(f, () => {
      f.channel.send({ type: 'exit', ...this.exit! });
      f.channel.close();
    });
  }

  private enqueue(f: Follower, step: () => Promise<void> | void): Promise<void> {
    f.tail = f.tail.then(() => (f.channel.closed ? undefined : step())).catch(() => {
      this.followers.delete(f);
    });
    return f.tail;
  }
}

export class KeptTable {
  private readonly processes = new Map<number, KeptProcess>();
  private nextId = 1;

  constructor(readonly limits: { maxLive: number; maxEnded: number; ringBytesPerStream: number } = KEPT_LIMITS) {}

  /** Whether one more may start (the caller refuses the exec otherwise). */
  get full(): boolean {
    return this.list().filter((p) => p.running).length >= this.limits.maxLive;
  }

  /** Records a started process; its exit must be reported with finished(). */
  add(pid: number, tag: string, tty: boolean, stdin: boolean, controls: KeptControls): KeptProcess {
    const p = new KeptProcess(this.nextId++, pid, tag, tty, stdin, Date.now(), controls, this.limits.ringBytesPerStream);
    this.processes.set(p.id, p);
    return p;
  }

  /** The process ended: recorded with its status; the oldest ended ones beyond the bound are forgotten. */
  finished(p: KeptProcess, status: ExitStatus): void {
    p.finish(status);
    const ended = this.list().filter((e) => !e.running);
    for (const old of ended.slice(0, Math.max(0, ended.length - this.limits.maxEnded))) this.processes.delete(old.id);
  }

  get(id: number): KeptProcess | undefined {
    return this.processes.get(id);
  }

  list(): KeptProcess[] {
    return [...this.processes.values()];
  }
}

/** The agent's one table (its memory is the VM's: a snapshot keeps it). */
export const keptTable = new KeptTable();

/** Why a kept exec cannot start (a bad tag, a full table), or undefined when it can. */
export function keptRefusal(request: { keep?: { tag?: unknown } }, table: KeptTable = keptTable): string | undefined {
  if (!validKeptTag(request.keep?.tag)) return 'exec: invalid keep tag';
  if (table.full) return `exec: the guest keeps ${table.limits.maxLive} running processes already`;
  return undefined;
}

/** `kept-list`: one result with every entry, then the channel closes. */
export function listKept(channel: Channel, table: KeptTable = keptTable): void {
  channel.setDataHandler(() => undefined);
  channel.send({ type: 'result', processes: table.list().map((p) => p.info()) });
  channel.close();
}

/** `kept-attach`: the channel follows the process, or an error when the agent does not know it. */
export function attachKept(request: { id?: unknown }, channel: Channel, table: KeptTable = keptTable): void {
  const p = typeof request.id === 'number' ? table.get(request.id) : undefined;
  if (!p) {
    channel.setDataHandler(() => undefined);
    channel.send({ type: 'error', message: `no kept process ${String(request.id).slice(0, 32)}` });
    channel.close();
    return;
  }
  p.follow(channel);
}
