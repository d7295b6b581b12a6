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
  // Into the container without podman where possible (see container-exec.ts).
  const direct = request.container ? enterContainer(request.container, false) : undefined;
  const argv = direct?.argv ?? request.argv;
  const child = spawn(argv[0]!, argv.slice(1), {
    cwd: request.cwd ?? '/',
    env: { ...baseEnv(), ...(request.env ?? {}) },
    stdio: [request.stdin ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
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
  // container) can be taken over by a later session's host (attach-persistent), e.g. a clone's.
  const sink = { channel };
  const pumps = [pump(child.stdout!, sink, STDOUT), pump(child.stderr!, sink, STDERR)];
  let exit: { code: number | null; signal: string | null } | undefined;
  const report = (): void => {
    sink.channel.send({ type: 'exit', ...exit! });
    sink.channel.close();
    if (persistentProcesses.get(PERSISTENT_MAIN) === follow) persistentProcesses.delete(PERSISTENT_MAIN);
  };
  const follow = (follower: Channel): void => {
    sink.channel = follower;
    follower.setDataHandler(() => undefined);
    follower.on('message', onSignal);
    if (exit) report();
  };
  if (request.persistent === true) persistentProcesses.set(PERSISTENT_MAIN, follow);
  child.on('exit', (code, signal) => {
    direct?.cleanup();
    void Promise.all(pumps).then(() => {
      if (spawnFailed) return;
      exit = { code, signal };
      // Nobody follows a persistent process whose host went away: keep its exit for the next one.
      if (request.persistent === true && sink.channel.closed) return;
      report();
    });
  });
}

/** The main container's process, by name: what `attach-persistent` takes over. */
const PERSISTENT_MAIN = 'main';
const persistentProcesses = new Map<string, (follower: Channel) => void>();

/**
 * `attach-persistent`: the channel follows the persistent process from now on (its output, its
 * exit, signals to it). Output from before, which went to an earlier session, is not replayed.
 */
export function attachPersistent(channel: Channel): void {
  const follow = persistentProcesses.get(PERSISTENT_MAIN);
  if (!follow) {
    channel.send({ type: 'error', message: 'no persistent process to follow' });
    channel.close();
    return;
  }
  follow(channel);
}

/** Copies a child's output to the following channel's stream, pausing the pipe while credit is short. */
async function pump(readable: Readable, sink: { channel: Channel }, stream: number): Promise<void> {
  for await (const chunk of readable) {
    // A closed channel (its host went away) drops the bytes.
    await sink.channel.write(stream, chunk as Buffer);
  }
  sink.channel.end(stream);
}

