/**
 * The kernel side of a FUSE mount: opens /dev/fuse, mounts it, and moves raw messages between
 * the device and whoever serves them. In the guest the agent forwards requests to the host;
 * in tests the server runs in the same process. Nothing here interprets a message.
 *
 * Only Node built-ins here: this file runs inside the guest.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/**
 * One read from /dev/fuse returns one whole request; the kernel refuses reads smaller than
 * the largest request, a WRITE of max_write (1 MiB) plus headers.
 */
export const READ_BUFFER_SIZE = 1024 * 1024 + 64 * 1024;

export interface MountFuseOptions {
  /** Mount read-only (the host server refuses changes on its own as well). */
  readOnly: boolean;
  /** The mount's source name, shown in /proc/mounts (default "shoal"). */
  name?: string;
}

/**
 * Mounts a FUSE file system at `mountpoint` (an existing directory) and returns its device.
 * The kernel sends INIT as soon as the mount exists, so call start() promptly; any access to
 * the mountpoint blocks until requests are answered.
 */
export async function mountFuse(mountpoint: string, options: MountFuseOptions): Promise<FuseDevice> {
  // Canonical, so it matches /proc/self/mountinfo and umount needs no lookups; resolved
  // before mounting, when the directory is still an ordinary one.
  const target = fs.realpathSync.native(mountpoint);
  const fd = fs.openSync('/dev/fuse', 'r+');
  try {
    const mountOptions = [
      'fd=3',
      'rootmode=40000',
      'user_id=0',
      'group_id=0',
      'default_permissions',
      'allow_other',
      ...(options.readOnly ? ['ro'] : []),
    ].join(',');
    // -i: never hand over to a /sbin/mount.fuse helper (it would treat the source as a program).
    await run('mount', ['-i', '-t', 'fuse', '-o', mountOptions, options.name ?? 'shoal', target], fd);
    return new FuseDevice(fd, target, connectionOf(target));
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
}

export class FuseDevice {
  private started = false;
  private unmounting: Promise<void> | undefined;
  private closed = false;
  private loopEnded = false;
  private readonly loopEnd: Promise<void>;
  private endLoop!: () => void;

  constructor(
    /** The open /dev/fuse descriptor (closed by unmount()). */
    readonly fd: number,
    /** The canonical mountpoint. */
    readonly mountpoint: string,
    /** The connection number under /sys/fs/fuse/connections, if it could be found. */
    readonly connection: number | undefined,
  ) {
    this.loopEnd = new Promise((resolve) => {
      this.endLoop = () => {
        this.loopEnded = true;
        resolve();
      };
    });
  }

  /** Resolves once the read loop has stopped (unmounted or aborted). */
  get finished(): Promise<void> {
    return this.loopEnd;
  }

  /**
   * Starts reading requests and passes each, as a Buffer it owns, to `handler`. The handler
   * may answer later and in any order through reply(). Errors from the handler, and a read
   * error other than the connection going away, go to `onError` (the loop continues after a
   * handler error and stops after a read error).
   */
  start(handler: (request: Buffer) => void, onError?: (err: Error) => void): void {
    if (this.started) throw new Error(`FUSE device for ${this.mountpoint} is already started`);
    this.started = true;
    const buffer = Buffer.allocUnsafe(READ_BUFFER_SIZE);
    const readNext = (): void => {
      // Once closed, the descriptor number may already name some other file.
      if (this.closed) return this.endLoop();
      // Blocks one libuv threadpool thread while no request is pending.
      fs.read(this.fd, buffer, 0, buffer.length, null, (err, n) => {
        if (this.closed) return this.endLoop();
        if (err) {
          switch (err.code) {
            case 'EINTR':
            case 'ENOENT': // the request we were about to get was interrupted
              return readNext();
            case 'EAGAIN':
              return void setImmediate(readNext);
            case 'ENODEV': // unmounted
            case 'ECONNABORTED': // aborted
            case 'EBADF': // we closed it
              return this.endLoop();
            default:
              onError?.(new Error(`reading FUSE requests for ${this.mountpoint} failed: ${err.message}`, { cause: err }));
              return this.endLoop();
          }
        }
        if (n === 0) return this.endLoop();
        try {
          handler(Buffer.from(buffer.subarray(0, n))); // a copy: the read buffer is reused
        } catch (handlerError) {
          onError?.(handlerError as Error);
        }
        readNext();
      });
    };
    readNext();
  }

  /**
   * Hands one whole reply (fuse_out_header first) to the kernel. Replies to interrupted
   * requests (ENOENT) and replies after the mount is gone are dropped; any other refusal
   * means a malformed reply and throws.
   */
  reply(message: Buffer): void {
    if (this.closed) return;
    try {
      fs.writeSync(this.fd, message);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENODEV' || code === 'ECONNABORTED' || code === 'EBADF') return;
      throw new Error(`the kernel refused a ${message.length}-byte FUSE reply on ${this.mountpoint}: ${(err as Error).message}`, {
        cause: err,
      });
    }
  }

  /**
   * Detaches the mount (umount -l) and closes the device once the read loop has stopped. If
   * the mount is still in use after being detached, the connection is aborted so that its
   * users get errors instead of waiting forever. Never rejects; safe to call more than once.
   */
  unmount(): Promise<void> {
    this.unmounting ??= this.detachAndClose();
    return this.unmounting;
  }

  private async detachAndClose(): Promise<void> {
    await run('umount', ['-l', this.mountpoint]).catch(() => undefined); // already gone is fine
    if (this.started && !(await this.loopEndsWithin(500))) {
      await abortConnection(this.connection).catch(() => undefined);
      await this.loopEndsWithin(2000);
    }
    this.closed = true;
    try {
      fs.closeSync(this.fd);
    } catch {
      // already closed
    }
  }

  private async loopEndsWithin(ms: number): Promise<boolean> {
    if (this.loopEnded) return true;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => {
      timer = setTimeout(() => resolve(false), ms);
    });
    const ended = await Promise.race([this.loopEnd.then(() => true as const), timeout]);
    clearTimeout(timer);
    return ended;
  }
}

/** Runs a command; rejects with its stderr on failure. `deviceFd` becomes the child's fd 3. */
function run(command: string, args: string[], deviceFd?: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const stdio: Array<'ignore' | 'pipe' | number> = ['ignore', 'ignore', 'pipe'];
    if (deviceFd !== undefined) stdio.push(deviceFd);
    const child = spawn(command, args, { stdio });
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (s: string) => {
      stderr += s;
    });
    child.on('error', (err) => reject(new Error(`cannot run ${command}: ${err.message}`, { cause: err })));
    child.on('close', (code, signal) => {
      if (code === 0) resolve();
      else reject(new Error(`${command} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`));
    });
  });
}

/** The FUSE connection number of the mount at `mountpoint`: its anonymous device number. */
function connectionOf(mountpoint: string): number | undefined {
  let connection: number | undefined;
  for (const line of fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    if (fields.length < 5 || unescapeMountPath(fields[4]!) !== mountpoint) continue;
    const [major, minor] = fields[2]!.split(':').map(Number) as [number, number];
    connection = major * 2 ** 20 + minor; // the kernel's MKDEV(); the last match is the top mount
  }
  return connection;
}

function unescapeMountPath(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, octal: string) => String.fromCharCode(parseInt(octal, 8)));
}

/** Writes the connection's fusectl "abort" file, mounting fusectl privately if it is not mounted. */
async function abortConnection(connection: number | undefined): Promise<void> {
  if (connection === undefined) return;
  const mounted = `/sys/fs/fuse/connections/${connection}/abort`;
  if (fs.existsSync(mounted)) return fs.writeFileSync(mounted, '1');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'shoal-fusectl-'));
  try {
    await run('mount', ['-i', '-t', 'fusectl', 'fusectl', dir]);
    try {
      const abort = path.join(dir, String(connection), 'abort');
      if (fs.existsSync(abort)) fs.writeFileSync(abort, '1');
    } finally {
      await run('umount', [dir]);
    }
  } finally {
    fs.rmdirSync(dir);
  }
}
