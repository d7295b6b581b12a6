/**
 * The host side of `-t`: the user's terminal in raw mode while a guest program owns it (so
 * keys such as Ctrl-C, Ctrl-Z and escape sequences reach the guest instead of acting here),
 * restored on every way out of the process, and its window size followed.
 */
import type { TerminalSize } from '../protocol/messages';
import { warn } from './output';

const DEFAULT_SIZE: TerminalSize = { cols: 80, rows: 24 };

export interface HostTerminal {
  /** The size to start the guest terminal with. */
  size: TerminalSize;
  /** Keys go to the guest raw (Ctrl-C is then a byte, not a signal here). */
  raw: boolean;
  /** Calls back with the new size whenever the host window changes. */
  onResize(callback: (size: TerminalSize) => void): void;
  /** Stops following the window and puts the terminal back as it was (idempotent; also runs at process exit). */
  restore(): void;
}

/** The terminal whose size the guest's follows: stdout's, else stderr's. */
function windowStream(): NodeJS.WriteStream | undefined {
  if (process.stdout.isTTY) return process.stdout;
  if (process.stderr.isTTY) return process.stderr;
  return undefined;
}

/** The host window's size, or 80x24 when there is no terminal to ask. */
export function terminalSizeNow(): TerminalSize {
  const output = windowStream();
  return output && output.columns > 0 && output.rows > 0 ? { cols: output.columns, rows: output.rows } : DEFAULT_SIZE;
}

/**
 * The host side of a `-t` session. With input (-i) on a terminal, the terminal goes raw; `-t`
 * alone (a terminal for colours, no input) leaves it cooked, so Ctrl-C stays a signal here.
 * Without a terminal on stdin the guest still gets one, as podman does, and a one-line warning
 * says so. The window is followed in every case.
 */
export function startTerminal(interactive: boolean): HostTerminal {
  if (!process.stdin.isTTY) warn('the input device is not a TTY: the container gets a terminal, but input is not passed through raw');
  const callbacks: ((size: TerminalSize) => void)[] = [];
  const output = windowStream();
  const onWindowChange = (): void => {
    const size = terminalSizeNow();
    for (const callback of callbacks) callback(size);
  };
  output?.on('resize', onWindowChange);
  const raw = interactive && process.stdin.isTTY === true;
  let isRaw = raw;
  const restore = (): void => {
    output?.off('resize', onWindowChange);
    if (!isRaw) return;
    isRaw = false;
    process.off('exit', restore);
    try { process.stdin.setRawMode(false); } catch { /* the terminal is gone */ }
  };
  if (raw) {
    process.stdin.setRawMode(true);
    // 'exit' runs on every way out that runs JavaScript: a return, process.exit, an uncaught
    // error, and a signal whose handler exits. Only SIGKILL leaves the terminal raw (`reset` fixes it).
    process.on('exit', restore);
  }
  return { size: terminalSizeNow(), raw, onResize: (callback) => { callbacks.push(callback); }, restore };
}

/**
 * Stops reading stdin once a session is over. A terminal's read handle, unlike a pipe's, keeps
 * the process alive even when paused, so it is closed (the process is done with it).
 */
export function releaseStdin(): void {
  process.stdin.pause();
  if (process.stdin.isTTY) process.stdin.destroy();
}
