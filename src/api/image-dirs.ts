/**
 * Host archives as API images. `shoal serve` runs as root and its callers are not (a token
 * holder is not a local user with rights to the host's files), so `docker-archive:PATH` and
 * `oci-archive:PATH` are accepted only for regular files under directories the operator named
 * (`--image-dir DIR`, repeatable). The path's real location (symlinks resolved) must stay under
 * the real directory, and the file is opened with O_NOFOLLOW and checked through its descriptor.
 * Missing and not allowed get one identical answer, so the API cannot be used to probe which
 * host paths exist.
 */
import fs from 'node:fs';
import path from 'node:path';
import { ApiError } from './errors';

const ARCHIVE = /^(docker-archive|oci-archive):(.+)$/;

/** Whether IMAGE names a host archive (rather than a registry reference). */
export function isArchiveImage(image: string): boolean {
  return ARCHIVE.test(image);
}

/**
 * The image as the CLI should be given it: a registry reference unchanged, an archive as its
 * real path under one of `dirs`. Throws one `not_found` line for every archive it refuses.
 */
export function resolveArchiveImage(image: string, dirs: readonly string[]): string {
  const match = ARCHIVE.exec(image);
  if (!match) return image;
  const given = match[2]!;
  // The same words whatever the reason (and without the path), so nothing is learnt of the host.
  const refused = new ApiError('not_found', 'no such image archive in the image directories of this server (shoal serve --image-dir DIR)');
  for (const dir of dirs) {
    let realDir: string;
    try {
      realDir = fs.realpathSync(dir);
    } catch {
      continue;
    }
    // A relative name is relative to the image directory, never to serve's working directory.
    const candidate = path.resolve(realDir, given);
    if (!within(realDir, candidate)) continue;
    let real: string;
    try {
      real = fs.realpathSync(candidate);
    } catch {
      continue;
    }
    if (!within(realDir, real)) continue;
    let fd: number | undefined;
    try {
      fd = fs.openSync(real, fs.constants.O_RDONLY | fs.constants.O_NOFOLLOW | fs.constants.O_NONBLOCK);
      if (!fs.fstatSync(fd).isFile()) continue;
    } catch {
      continue;
    } finally {
      if (fd !== undefined) fs.closeSync(fd);
    }
    return `${match[1]}:${real}`;
  }
  throw refused;
}

function within(dir: string, file: string): boolean {
  const rel = path.relative(dir, file);
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
}
