/**
 * Runs one process for an exec channel on a pseudo-terminal (`-t`): the process gets the
 * terminal as its stdin, stdout, stderr and controlling terminal, so programs that check for a
 * terminal (shells, editors, podman's own `-t` handling) behave as they would at a console.
 * Terminal output travels on stream 1, input on stream 0; 'resize' messages set the window
 * size, which the kernel announces to the process with SIGWINCH.
 */
import os from 'node:os';
import * as pty from 'node-pty';
import type { ExecRequest, TerminalSize } from '../protocol/messages';
import { terminalSizeOf } from '../protocol/messages';
import { STDIN, STDOUT, type Channel } from '../protocol/mux';
import { enterContainer, execPid, killExecProcess, type DirectExec } from './container-exec';
import { baseEnv } from './environment';
import { keptRefusal, keptTable } from './kept-processes';
import { signalGroup } from './process-group';

export function runTtyExec(request: ExecRequest, size: TerminalSize, channel: Channel): void {
  if (request.keep !== undefined) {
    const refusal = keptRefusal(request);
    if (refusal !== undefined) {
      channel.send({ type: 'error', message: refusal });
      channel.close();
      return;
    }
  }
  let terminal: pty.IPty;
  // Into the container without podman where possible (see container-exec.ts).
  const direct = request.container ? enterContainer(request.container, true) : undefined;
  const argv = direct?.argv ?? request.argv;
  try {
    terminal = pty.spawn(argv[0]!, argv.slice(1), {
      name: 'xterm',
      cols: size.cols,
      rows: size.rows,
      cwd: request.cwd ?? '/',
      env: { TERM: 'xterm', ...baseEnv(), ...(request.env ?? {}) },
      // Bytes, not strings: a UTF-8 sequence split across reads must reach the host intact.
      encoding: null,
    });
  } catch (err) {
    direct?.cleanup();
    channel.send({ type: 'error', message: `exec ${request.argv[0]}: ${(err as Error).message}` });
    channel.close();
    return;
  }

  if (request.keep !== undefined) {
    runKeptTerminal(request, terminal, direct, channel);
    return;
  }
  channel.setDataHandler((stream, data) => {
    if (stream === STDIN && request.stdin) terminal.write(data);
  });
  channel.on('message', (message: Record<string, unknown>) => {
    if (message.type === 'resize') {
      const next = terminalSizeOf(message);
      if (next) terminal.resize(next.cols, next.rows);
    } else if (message.type === 'signal' && typeof message.signal === 'string') {
      const pid = direct ? execPid(direct.pidFile) : undefined;
      try {
        if (pid !== undefined) process.kill(pid, message.signal as NodeJS.Signals);
        else terminal.kill(message.signal);
      } catch { /* unknown signal name, or already gone */ }
    }
  });
  channel.on('close', () => {
    if (request.persistent === true) return;
    killExecProcess(direct);
    try { terminal.kill('SIGKILL'); } catch { /* already gone */ }
  });

  // Output, with back-pressure: the terminal is paused while the channel has no credit.
  let pending = Promise.resolve();
  terminal.onData((data) => {
    const chunk = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data as Uint8Array);
    terminal.pause();
    pending = pending.then(() => channel.write(STDOUT, chunk)).then(() => terminal.resume(), () => undefined);
  });
  // node-pty reports the exit only after the terminal's output has been read to its end.
  terminal.onExit(({ exitCode, signal }) => {
    direct?.cleanup();
    void pending.then(() => {
      channel.end(STDOUT);
      const signalName = signal ? signalNameOf(signal) : null;
      channel.send({ type: 'exit', code: signalName ? null : exitCode, signal: signalName });
      channel.close();
    });
  });
}

/**
 * A kept process on a terminal (src/agent/kept-processes.ts): node-pty made it a session leader,
 * so its group is its pid and signals reach the group; a channel that closes leaves it running.
 */
function runKeptTerminal(request: ExecRequest, terminal: pty.IPty, direct: DirectExec | undefined, channel: Channel): void {
  const pid = terminal.pid;
  const pidFile = direct?.pidFile;
  const kept = keptTable.add(pid, request.keep!.tag, true, request.stdin, {
    signal: (name) => signalGroup(pid, name, pidFile),
    resize: (cols, rows) => {
      try { terminal.resize(cols, rows); } catch { /* already gone */ }
    },
    ...(request.stdin ? { writeStdin: (data: Buffer) => { terminal.write(data as unknown as string); } } : {}),
  });
  kept.follow(channel);
  let pending = Promise.resolve();
  terminal.onData((data) => {
    const chunk = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data as Uint8Array);
    terminal.pause();
    pending = pending.then(() => kept.write(STDOUT, chunk)).then(() => terminal.resume(), () => undefined);
  });
  terminal.onExit(({ exitCode, signal }) => {
    direct?.cleanup();
    void pending.then(() => {
      kept.end(STDOUT);
      const signalName = signal ? signalNameOf(signal) : null;
      keptTable.finished(kept, { code: signalName ? null : exitCode, signal: signalName });
    });
  });
}

function signalNameOf(signal: number): string | null {
  for (const [name, number] of Object.entries(os.constants.signals)) if (number === signal) return name;
  return null;
}
