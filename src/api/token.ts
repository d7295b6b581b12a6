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
  const st = fs.lstatSync(file);
  if (!st.isFile()) throw new ShoalError(`token file ${file} is not a regular file`);
  if ((st.mode & 0o077) !== 0) throw new ShoalError(`token file ${file} is readable or writable by others (mode ${(st.mode & 0o777).toString(8)}): chmod 600 it`);
  if (typeof process.getuid === 'function' && st.uid !== process.getuid()) throw new ShoalError(`token file ${file} belongs to another user`);
  const token = fs.readFileSync(file, 'utf8').trim();
  if (token.length < 16) throw new ShoalError(`token file ${file} holds no token (at least 16 characters)`);
  if (!/^[\x21-\x7e]+$/.test(token)) throw new ShoalError(`token file ${file} holds characters that cannot travel in a header`);
  return token;
}
