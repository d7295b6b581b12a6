/**
 * Atomic file writes: write a temp file in the same directory (mode 0600), fsync, rename over the
 * target, fsync the directory.
 * A reader sees the old content or the new, never half of one, and a crash leaves at most a
 * stray temp file (named *.tmp-<pid>-<n>, ignored by readers).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

let counter = 0;

/** `mode`: 0600 unless the file is meant for other users too (the guest-asset manifests). */
export function writeFileAtomic(target: string, data: string | Buffer, mode = 0o600): void {
  const temp = path.join(path.dirname(target), `.${path.basename(target)}.tmp-${process.pid}-${counter++}`);
  // 0600 whatever the umask, and never through a symlink or onto a file planted under the temp name.
  const flags = fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW;
  let fd: number;
  try {
    fd = fs.openSync(temp, flags, 0o600);
  } catch (err) {
    // A temp file of a dead process that had our pid: ours to replace (the directory is ours).
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    fs.rmSync(temp, { force: true });
    fd = fs.openSync(temp, flags, 0o600);
  }
  try {
    if (mode !== 0o600) fs.fchmodSync(fd, mode);
    fs.writeSync(fd, typeof data === 'string' ? Buffer.from(data) : data);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(temp, target);
  fsyncDir(path.dirname(target));
}

/** Makes a rename (or a create, or an unlink) in dir survive a power cut. */
export function fsyncDir(dir: string): void {
  let fd: number | undefined;
  try {
    fd = fs.openSync(dir, fs.constants.O_RDONLY | fs.constants.O_DIRECTORY);
    fs.fsyncSync(fd);
  } catch {
    // best effort: some filesystems refuse fsync on a directory
  } finally {
    if (fd !== undefined) fs.closeSync(fd);
  }
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

/**
 * Flushes every regular file directly in dir, then dir itself: called before a snapshot or a
 * cache entry is published by rename, so a power cut never leaves a published one half-written.
 */
export function fsyncFilesIn(dir: string): void {
  for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const fd = fs.openSync(path.join(dir, entry.name), fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW);
    try {
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  }
  fsyncDir(dir);
}

/**
 * Creates file with content unless it exists, atomically and whole: the content goes to a temp
 * file first and is hard-linked into place (link fails if the name exists), so no reader ever
 * sees a claim created but not yet written (which would look stale and be taken over).
 */
export function createWhole(file: string, content: string): boolean {
  const temp = path.join(path.dirname(file), `.${path.basename(file)}.new-${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
  fs.writeFileSync(temp, content, { flag: 'wx', mode: 0o600 });
  try {
    fs.linkSync(temp, file);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    return false;
  } finally {
    fs.rmSync(temp, { force: true });
  }
}
