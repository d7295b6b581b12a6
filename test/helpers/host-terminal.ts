/**
 * A real terminal for the CLI under test: a host pseudo-terminal (node-pty) whose slave runs a
 * small shell that records the terminal mode (`stty -g`) before and after shoal, so a test can
 * tell the mode was restored, and prints shoal's exit code.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import * as pty from 'node-pty';
import { SHOAL_BIN, type ShoalSandbox } from './shoal-cli';

export class HostTerminal {
  private readonly terminal: pty.IPty;
  private readonly dir: string;
  private output = '';
  /** Where the next expect() starts looking. */
  private mark = 0;
  private exited = false;

  constructor(sandbox: ShoalSandbox, args: string[], size: { cols: number; rows: number }) {
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-tty-'));
    // Each mode is written under a temporary name and renamed: a reader that finds the file finds
    // it whole (the redirect creates it empty before stty has written; a test once read that).
    const d = this.dir;
    const script = `stty -g > ${d}/before.tmp && mv ${d}/before.tmp ${d}/before; "$0" "$@"; echo "SHOAL-EXIT=$?"; stty -g > ${d}/after.tmp && mv ${d}/after.tmp ${d}/after`;
    this.terminal = pty.spawn('/bin/sh', ['-c', script, SHOAL_BIN, ...args], {
      name: 'xterm',
      cols: size.cols,
      rows: size.rows,
      env: sandbox.env() as Record<string, string>,
    });
    this.terminal.onData((data) => { this.output += data; });
    this.terminal.onExit(() => { this.exited = true; });
  }

  /** Waits until the output since the last match matches; returns the match and moves past it. */
  async expect(pattern: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const rest = this.output.slice(this.mark);
      const match = pattern.exec(rest);
      if (match) {
        this.mark += match.index + match[0].length;
        return match;
      }
      if (Date.now() > deadline || (this.exited && !pattern.exec(this.output.slice(this.mark)))) {
        throw new Error(`terminal: no ${pattern} within ${timeoutMs} ms; output since the last match:\n${JSON.stringify(rest.slice(-2000))}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  type(keys: string): void {
    this.terminal.write(keys);
  }

  resize(cols: number, rows: number): void {
    this.terminal.resize(cols, rows);
  }

  /** The terminal's mode before and after shoal ran (`stty -g`), once the wrapper shell is done. */
  modes(): { before: string; after: string } {
    const read = (name: string): string => fs.readFileSync(path.join(this.dir, name), 'utf8').trim();
    return { before: read('before'), after: read('after') };
  }

  close(): void {
    try { this.terminal.kill('SIGKILL'); } catch { /* gone */ }
    fs.rmSync(this.dir, { recursive: true, force: true });
  }
}
