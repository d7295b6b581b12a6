/**
 * Atomic file writes: write a temp file in the same directory, fsync, rename over the target.
 * A reader sees the old content or the new, never half of one, and a crash leaves at most a
 * stray temp file (named *.tmp-<pid>-<n>, ignored by readers).
 */
import fs from 'node:fs';
import path from 'node:path';

let counter = 0;

export function writeFileAtomic(target: string, data: string | Buffer): void {
  const temp = path.join(path.dirname(target), `.${path.basename(target)}.tmp-${process.pid}-${counter++}`);
  const fd = fs.openSync(temp, 'w', 0o644);
  try {
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temp, target);
}

export function writeJsonAtomic(target: string, value: unknown): void {
  writeFileAtomic(target, `${JSON.stringify(value, null, 2)}\n`);
}

export function readJson<T>(file: string): T | undefined {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
  } catch {
    return undefined;
  }
}
