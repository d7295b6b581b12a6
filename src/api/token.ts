/**
 * The API token: a file holding one line, created (mode 0600, 32 random bytes as hex) when
 * missing. Other local users exist, so a token file that others can read or write is refused.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { ShoalError } from '../util/errors';

export function loadOrCreateToken(file: string): string {
  try {
    fs.mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
    fs.writeFileSync(file, `${crypto.randomBytes(32).toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw new ShoalError(`cannot create the token file ${file}: ${(err as Error).message}`);
  }
  // One open, without following a link, and every check on that descriptor: the file cannot be
  // swapped between the checks and the read.
  let fd: number;
  try {
    fd = fs.openSync(file, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new ShoalError(code === 'ELOOP' ? `token file ${file} is a symbolic link` : `cannot open the token file ${file}: ${(err as Error).message}`);
  }
  let token: string;
  try {
    const st = fs.fstatSync(fd);
    if (!st.isFile()) throw new ShoalError(`token file ${file} is not a regular file`);
    if ((st.mode & 0o077) !== 0) throw new ShoalError(`token file ${file} is readable or writable by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`);
    if (typeof process.getuid === 'function' && st.uid !== process.getuid()) throw new ShoalError(`token file ${file} belongs to another user`);
    if (st.size > 4096) throw new ShoalError(`token file ${file} is larger than 4096 bytes: not a token`);
    const buffer = Buffer.alloc(4096);
    const read = fs.readSync(fd, buffer, 0, buffer.length, 0);
    token = buffer.subarray(0, read).toString('utf8').trim();
  } finally {
    fs.closeSync(fd);
  }
  if (token.length < 16) throw new ShoalError(`token file ${file} holds no token (at least 16 characters)`);
  if (!/^[\x21-\x7e]+$/.test(token)) throw new ShoalError(`token file ${file} holds characters that cannot travel in a header`);
  return token;
}
