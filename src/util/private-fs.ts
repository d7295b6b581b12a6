/**
 * Files and directories only their owner may touch. shoal runs as root beside other local
 * users: what it keeps (guest RAM, disks, records with `-e` values, logs, sockets) is created
 * with explicit modes, never through a symlink or on top of a file someone planted, and never
 * with a mode that depends on the caller's umask.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ShoalError } from './errors';

const euid = (): number => (typeof process.geteuid === 'function' ? process.geteuid() : 0);

/**
 * Makes dir (and missing parents) mode 0700 and checks it: a real directory (not a symlink),
 * owned by us, not open to others. An existing one with looser bits (an older shoal made it
 * 0755) is tightened; one owned by someone else is refused.
 */
export function ensurePrivateDir(dir: string): void {
  fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
  const st = fs.lstatSync(dir);
  if (!st.isDirectory()) throw new ShoalError(`${dir} is not a directory (a symlink?); refusing to use it`);
  if (st.uid !== euid()) throw new ShoalError(`${dir} belongs to uid ${st.uid}, not to this user; refusing to use it`);
  if ((st.mode & 0o077) !== 0) fs.chmodSync(dir, 0o700);
}

/**
 * Creates a new file, mode 0600, failing if anything (a file, a symlink) already has its name:
 * O_CREAT|O_EXCL|O_NOFOLLOW. Returns the open descriptor.
 */
export function createPrivateFile(file: string, flags: number = fs.constants.O_WRONLY): number {
  const fd = fs.openSync(file, flags | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  try {
    fs.fchmodSync(fd, 0o600);
  } catch (err) {
    fs.closeSync(fd);
    throw err;
  }
  return fd;
}

/** Whether child, resolved, lies strictly inside dir (lexically: no `..` escape, no absolute jump). */
export function isInside(dir: string, child: string): boolean {
  const relative = path.relative(path.resolve(dir), path.resolve(child));
  return relative !== '' && !relative.startsWith('..') && !path.isAbsolute(relative);
}

/** path.join(dir, name), refused unless the result is a direct entry of dir. */
export function entryOf(dir: string, name: string): string {
  const joined = path.join(path.resolve(dir), name);
  if (name.includes('/') || name.includes('\0') || name === '.' || name === '..' || path.dirname(joined) !== path.resolve(dir)) {
    throw new ShoalError(`"${name}" is not a plain name`);
  }
  return joined;
}
