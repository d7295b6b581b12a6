/**
 * Runs one process for an exec channel: stdin from stream 0 (if asked), stdout and stderr to
 * streams 1 and 2, kept apart, and an exit message once all output has been sent.
 */
import { spawn } from 'node:child_process';
import type { Readable } from 'node:stream';
import type { ExecRequest } from '../protocol/messages';
import { STDERR, STDIN, STDOUT, type Channel } from '../protocol/mux';
import { terminalSizeOf } from '../protocol/messages';
import { enterContainer, execPid, killExecProcess } from './container-exec';
import { baseEnv } from './environment';
import { keptRefusal, keptTable, type KeptProcess } from './kept-processes';
import { signalGroup } from './process-group';
import { runTtyExec } from './tty-exec';

export function runExec(request: ExecRequest, channel: Channel): void {
  if (!Array.isArray(request.argv) || request.argv.length === 0) {
    channel.send({ type: 'error', message: 'exec: empty command' });
    channel.close();
    return;
  }
  if (request.tty !== undefined) {
    const size = terminalSizeOf(request.tty);
    if (!size) {
      channel.send({ type: 'error', message: 'exec: invalid terminal size' });
      channel.close();
      return;
    }
    runTtyExec(request, size, channel);
    return;
  }
  if (request.keep !== undefined) {
    runKeptExec(request, channel);
    return;
  }
  const { child, direct } = spawnExec(request, false);
  let spawnFailed = false;
  child.on('error', (err) => {
    spawnFailed = true;
    direct?.cleanup();
    channel.send({ type: 'error', message: `exec ${request.argv[0]}: ${err.message}` });
    channel.close();
  });

  if (child.stdin) {
    const stdin = child.stdin;
    stdin.on('error', () => undefined); // the process may exit without reading its input
    channel.setDataHandler((stream, data) => {
      if (stream !== STDIN || stdin.destroyed) return;
      if (!stdin.write(data)) return new Promise<void>((resolve) => {
        const done = (): void => { stdin.off('drain', done); stdin.off('close', done); resolve(); };
        stdin.on('drain', done);
        stdin.on('close', done);
      });
      return;
    });
    channel.on('eof', (stream: number) => { if (stream === STDIN) stdin.end(); });
  } else {
    channel.setDataHandler(() => undefined);
  }

  const onSignal = (message: Record<string, unknown>): void => {
    if (message.type === 'signal' && typeof message.signal === 'string') {
      // crun does not pass signals on: they go to the container process itself once it exists.
      const pid = direct ? execPid(direct.pidFile) : undefined;
      try {
        if (pid !== undefined) process.kill(pid, message.signal as NodeJS.Signals);
        else child.kill(message.signal as NodeJS.Signals);
      } catch { /* unknown signal name, or gone */ }
    }
  };
  channel.on('message', onSignal);
  // The host went away (or the session was reset): nobody will read the output. Stop the process,
  // unless it is persistent (the main container: it must survive into a clone restored from a
  // snapshot, whose new host watches it with `podman wait`); its output is then read and dropped.
  channel.on('close', () => {
    if (request.persistent === true) return;
    if (child.exitCode === null && child.signalCode === null) {
      // A killed crun would leave the process it started running in the container.
      killExecProcess(direct);
      child.kill('SIGKILL');
    }
  });

  // Output goes to whichever channel follows the process now: a persistent one (the main
  // container) can be taken over by a later session's host (attach-persistent), e.g. a clone's,
  // and keeps what it wrote while no channel could take it (see PersistentSink).
  const sink: OutputSink = request.persistent === true ? new PersistentSink(channel) : new ChannelSink(channel);
  const pumps = [pump(child.stdout!, sink, STDOUT), pump(child.stderr!, sink, STDERR)];
  if (sink instanceof PersistentSink) {
    sink.onFollow = (follower) => follower.on('message', onSignal);
    sink.onDone = () => {
      if (persistentMain === sink) persistentMain = undefined;
    };
    persistentMain = sink;
  }
  child.on('exit', (code, signal) => {
    direct?.cleanup();
    void Promise.all(pumps).then(() => {
      if (spawnFailed) return;
      sink.exit({ code, signal });
    });
  });
}

type ExitStatus = { code: number | null; signal: string | null };

/**
 * A kept exec (src/agent/kept-processes.ts): in a session and process group of its own (signals
 * reach the group), recorded in the agent's table, followed by its channel and any later
 * attach; a channel that closes leaves it running.
 */
function runKeptExec(request: ExecRequest, channel: Channel): void {
  const refusal = keptRefusal(request);
  if (refusal !== undefined) {
    channel.send({ type: 'error', message: refusal });
    channel.close();
    return;
  }
  const { child, direct } = spawnExec(request, true);
  const pid = child.pid;
  if (pid === undefined) {
    // Not started (the error event says why, on the next tick).
    child.on('error', (err) => {
      direct?.cleanup();
      channel.send({ type: 'error', message: `exec ${request.argv[0]}: ${err.message}` });
      channel.close();
    });
    return;
  }
  child.on('error', () => undefined);
  const stdin = child.stdin;
  stdin?.on('error', () => undefined);
  const kept: KeptProcess = keptTable.add(pid, request.keep!.tag, false, request.stdin, {
    signal: (name) => signalGroup(pid, name, direct?.pidFile),
    ...(stdin ? {
      writeStdin: (data: Buffer): Promise<void> | void => {
        if (stdin.destroyed || stdin.writableEnded) return;
        if (!stdin.write(data)) return new Promise<void>((resolve) => {
          const done = (): void => { stdin.off('drain', done); stdin.off('close', done); resolve(); };
          stdin.on('drain', done);
          stdin.on('close', done);
        });
        return;
      },
      endStdin: () => stdin.end(),
    } : {}),
  });
  kept.follow(channel);
  const pumps = [pump(child.stdout!, kept, STDOUT), pump(child.stderr!, kept, STDERR)];
  child.on('exit', (code, signal) => {
    direct?.cleanup();
    void Promise.all(pumps).then(() => keptTable.finished(kept, { code, signal }));
  });
}

interface OutputSink {
  /** Resolves when the sink can take more (a slow reader holds the process's pipe). */
  write(stream: number, chunk: Buffer): Promise<void>;
  /** Resolves once the end of the stream is on its way, after everything written before it. */
  end(stream: number): Promise<void>;
  /** The exit message, after all output. */
  exit(status: ExitStatus): void;
}

/** An ordinary exec's: its channel, whose bytes are dropped once its host went away. */
class ChannelSink implements OutputSink {
  constructor(private readonly channel: Channel) {}
  write(stream: number, chunk: Buffer): Promise<void> {
    return this.channel.write(stream, chunk);
  }
  async end(stream: number): Promise<void> {
    this.channel.end(stream);
  }
  exit(status: ExitStatus): void {
    this.channel.send({ type: 'exit', ...status });
    this.channel.close();
  }
}

/** What the persistent process keeps for the next follower before it stops reading its pipe. */
const PERSISTENT_BACKLOG_BYTES = 4 * 1024 * 1024;

/**
 * The main container's output, which must outlive the host that follows it. While no channel
 * can take it (the link is quiesced for a snapshot, or its host went away and the next has not
 * attached yet) it is queued here and given to the next follower first: Firecracker cuts the
 * link at every snapshot, and the source's new session used to lose what the container wrote
 * between the quiesce and its reconnect. Queued bytes are bounded: past the bound the pipe is
 * not read (the container's writes wait), so nothing is dropped and nothing grows.
 */
class PersistentSink implements OutputSink {
  onFollow: (follower: Channel) => void = () => undefined;
  onDone: () => void = () => undefined;
  private readonly queue: Array<{ stream: number; chunk: Buffer | null; sent?: () => void }> = [];
  private queuedBytes = 0;
  private held = false;
  private draining = false;
  private exitStatus: ExitStatus | undefined;
  private readonly spaceWaiters: Array<() => void> = [];

  constructor(private channel: Channel) {}

  /** The link is quiesced for a snapshot: nothing more into it until it resumes or a new host follows. */
  hold(): void {
    this.held = true;
  }

  /** The same host goes on after the snapshot. */
  release(): void {
    this.held = false;
    void this.drain();
  }

  /** A new channel follows the process (attach-persistent): it gets the queue, then the rest. */
  follow(follower: Channel): void {
    this.channel = follower;
    follower.setDataHandler(() => undefined);
    this.onFollow(follower);
    this.held = false;
    void this.drain();
  }

  async write(stream: number, chunk: Buffer): Promise<void> {
    this.queue.push({ stream, chunk });
    this.queuedBytes += chunk.length;
    void this.drain();
    while (this.queuedBytes > PERSISTENT_BACKLOG_BYTES) await new Promise<void>((resolve) => this.spaceWaiters.push(resolve));
  }

  end(stream: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.queue.push({ stream, chunk: null, sent: resolve });
      void this.drain();
    });
  }

  exit(status: ExitStatus): void {
    this.exitStatus = status;
    void this.drain();
  }

  private get writable(): boolean {
    return !this.held && !this.channel.closed;
  }

  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.queue.length > 0 && this.writable) {
        const item = this.queue[0]!;
        const target = this.channel;
        if (item.chunk) await target.write(item.stream, item.chunk).catch(() => undefined);
        else target.end(item.stream);
        // A host that went away mid-write may have taken none or part of the chunk: keep it for
        // the next follower (a partial repeat rather than a partial loss).
        if (target.closed || target !== this.channel) continue;
        this.queue.shift();
        this.queuedBytes -= item.chunk?.length ?? 0;
        item.sent?.();
        if (this.queuedBytes <= PERSISTENT_BACKLOG_BYTES) for (const wake of this.spaceWaiters.splice(0)) wake();
      }
      if (this.queue.length === 0 && this.exitStatus && this.writable) {
        this.channel.send({ type: 'exit', ...this.exitStatus });
        this.channel.close();
        this.onDone();
      }
    } finally {
      this.draining = false;
    }
  }
}

/** The main container's process: what `attach-persistent` takes over and a snapshot's quiesce holds. */
let persistentMain: PersistentSink | undefined;

/** Before a snapshot (the quiesce): the main container's output waits for the link's next host. */
export function holdPersistentOutput(): void {
  persistentMain?.hold();
}

/** After a snapshot, the same session goes on (a resume HELLO): what waited is sent. */
export function releasePersistentOutput(): void {
  persistentMain?.release();
}

/**
 * `attach-persistent`: the channel follows the persistent process from now on (its output, its
 * exit, signals to it). Output that went to an earlier session is not replayed; output no
 * session could take (see PersistentSink) is.
 */
export function attachPersistent(channel: Channel): void {
  if (!persistentMain) {
    channel.send({ type: 'error', message: 'no persistent process to follow' });
    channel.close();
    return;
  }
  persistentMain.follow(channel);
}

/** Copies a child's output to the sink's stream, pausing the pipe while the sink is full. */
async function pump(readable: Readable, sink: Pick<OutputSink, 'write'> & { end(stream: number): unknown }, stream: number): Promise<void> {
  for await (const chunk of readable) await sink.write(stream, chunk as Buffer);
  await sink.end(stream);
}

/**
 * The exec's process: into the container without podman where possible (container-exec.ts),
 * else its argv; `detached` (kept processes) gives it a session and group of its own.
 */
function spawnExec(request: ExecRequest, detached: boolean): { child: ReturnType<typeof spawn>; direct: ReturnType<typeof enterContainer> | undefined } {
  const direct = request.container ? enterContainer(request.container, false) : undefined;
  const argv = direct?.argv ?? request.argv;
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: request.cwd ?? '/',
    env: { ...baseEnv(), ...(request.env ?? {}) },
    stdio: [request.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
    detached,
  });
  return { child, direct };
}
