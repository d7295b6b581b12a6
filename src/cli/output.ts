/**
 * What the CLI prints besides the container's own output.
 */

/** Progress goes to stderr, and only to a terminal: a script's stderr carries the container's bytes alone. */
export function progressLine(message: string): void {
  if (process.stderr.isTTY || process.env.SHOAL_PROGRESS === '1') process.stderr.write(`shoal: ${message}${lineEnd()}`);
}

/** A one-line warning on stderr, always shown. */
export function warn(message: string): void {
  process.stderr.write(`shoal: warning: ${message}${lineEnd()}`);
}

/** A terminal in raw mode (`-t`) does not return the carriage at a newline. */
function lineEnd(): string {
  return process.stdin.isTTY && process.stdin.isRaw ? '\r\n' : '\n';
}

/** A fixed-width table like podman's. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('   ').trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

export function formatDuration(seconds: number): string {
  if (seconds < 60) return `${Math.floor(seconds)}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m${Math.floor(seconds % 60)}s`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h${Math.floor((seconds % 3600) / 60)}m`;
  return `${Math.floor(seconds / 86400)}d${Math.floor((seconds % 86400) / 3600)}h`;
}
