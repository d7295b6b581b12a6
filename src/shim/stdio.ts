/**
 * The FIFOs containerd names for a process's stdio (Create/Exec's stdin, stdout, stderr). Each
 * output is opened read-write, which never blocks on a FIFO (a reader may come later) and keeps
 * a reader that restarts from seeing EOF; stdin is opened read-only in the background, once
 * containerd's side opens it for writing, and relayed until EOF or CloseIO.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ShoalError } from '../util/errors';

export interface StdioPaths {
  stdin: string;
  stdout: string;
  stderr: string;
  terminal: boolean;
}

/** A relay of one process's stdio; the sink side of ShimVm's ProcessSink. */
export class ProcessIo {
  private stdinClosed = false;

  private constructor(
    readonly paths: StdioPaths,
    private readonly out: fs.WriteStream | undefined,
    private readonly err: fs.WriteStream | undefined,
  ) {}

  static open(paths: StdioPaths): ProcessIo {
    for (const p of [paths.stdin, paths.stdout, paths.stderr]) {
      if (p !== '' && (!path.isAbsolute(p) || p.includes('\0'))) throw new ShoalError(`invalid stdio path "${p.slice(0, 200)}"`);
    }
    const open = (p: string): fs.WriteStream | undefined => {
      if (p === '') return undefined;
      try {
        const stream = fs.createWriteStream('', { fd: fs.openSync(p, fs.constants.O_RDWR | fs.constants.O_NOFOLLOW) });
        stream.on('error', () => undefined); // a reader gone for good: output is dropped, never fatal
        return stream;
      } catch (err) {
        throw new ShoalError(`cannot open ${p}: ${(err as Error).message}`);
      }
    };
    const out = open(paths.stdout);
    // With a terminal, containerd names no stderr (the terminal carries both); the same FIFO otherwise stays apart.
    const err = paths.stderr === paths.stdout ? out : open(paths.stderr);
    return new ProcessIo(paths, out, err);
  }

  get hasStdin(): boolean {
    return this.paths.stdin !== '';
  }

  writeStdout(data: Buffer): Promise<void> | void {
    return write(this.out, data);
  }

  writeStderr(data: Buffer): Promise<void> | void {
    return write(this.err, data);
  }

  /**
   * Copies stdin to `write` until EOF (then `end`), or until closeStdin(). The open waits in
   * the thread pool for containerd's writer; closeStdin() releases it by opening the writer side.
   */
  relayStdin(write: (data: Buffer) => Promise<void>, end: () => void): void {
    if (!this.hasStdin) return;
    let ended = false;
    this.endStdinOnce = () => {
      if (ended) return;
      ended = true;
      end();
    };
    void (async () => {
      let handle: fs.promises.FileHandle | undefined;
      try {
        handle = await fs.promises.open(this.paths.stdin, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
        const buffer = Buffer.alloc(64 * 1024);
        for (;;) {
          const { bytesRead } = await handle.read(buffer, 0, buffer.length, null);
          if (bytesRead === 0) break;
          await write(Buffer.from(buffer.subarray(0, bytesRead)));
        }
      } catch {
        // the FIFO went away: stdin ends
      } finally {
        await handle?.close().catch(() => undefined);
        this.endStdinOnce();
      }
    })();
  }

  private endStdinOnce: () => void = () => undefined;

  /**
   * CloseIO: no more input. containerd (ctr) sends it once its copy into the FIFO is done, so
   * what is still in the FIFO is delivered first (the read runs to EOF); a writer that keeps
   * the FIFO open does not hold stdin open for more than a moment.
   */
  closeStdin(): void {
    if (this.stdinClosed || !this.hasStdin) return;
    this.stdinClosed = true;
    // Unblocks an open still waiting for a writer (it then reads EOF).
    try {
      const fd = fs.openSync(this.paths.stdin, fs.constants.O_WRONLY | fs.constants.O_NONBLOCK);
      fs.closeSync(fd);
    } catch {
      // no reader waiting: nothing to release
    }
    setTimeout(() => this.endStdinOnce(), 2000).unref();
  }

  /** Ends the outputs (containerd's readers see EOF once their own side is all that is left). */
  close(): Promise<void> {
    this.closeStdin();
    const ends = [this.out, this.err].filter((s, i, all): s is fs.WriteStream => s !== undefined && all.indexOf(s) === i)
      .map((s) => new Promise<void>((resolve) => { s.end(() => resolve()); setTimeout(resolve, 2000).unref(); }));
    return Promise.all(ends).then(() => undefined);
  }
}

function write(stream: fs.WriteStream | undefined, data: Buffer): Promise<void> | void {
  if (!stream || stream.destroyed || stream.writableEnded) return;
  if (!stream.write(data)) return new Promise<void>((resolve) => { stream.once('drain', resolve); stream.once('close', resolve); });
}
