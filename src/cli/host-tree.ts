/**
 * The host side of `shoal cp` out of a VM: the guest's tar is extracted into a private temporary
 * directory beside the destination, set-id bits are cleared (the guest is not trusted to hand
 * the host setuid files), and only then are the entries moved into place, merging directories
 * as podman cp does.
 */
import fs from 'node:fs';
import path from 'node:path';

/** Clears setuid/setgid on every regular file and directory below root (symlinks are left alone). */
export function stripSetIdBits(root: string): void {
  const walk = (p: string): void => {
    const stat = fs.lstatSync(p);
    if (stat.isSymbolicLink()) return;
    if ((stat.mode & 0o6000) !== 0) fs.chmodSync(p, stat.mode & 0o1777);
    if (stat.isDirectory()) for (const name of fs.readdirSync(p)) walk(path.join(p, name));
  };
  walk(root);
}

/** Moves `from` to `to`: a directory onto a directory merges, anything else replaces. */
export function moveInto(from: string, to: string): void {
  let existing: fs.Stats | undefined;
  try {
    existing = fs.lstatSync(to);
  } catch {
    existing = undefined;
  }
  const source = fs.lstatSync(from);
  if (!existing) {
    fs.renameSync(from, to);
    return;
  }
  if (existing.isDirectory() && source.isDirectory()) {
    for (const name of fs.readdirSync(from)) moveInto(path.join(from, name), path.join(to, name));
    fs.chmodSync(to, source.mode & 0o7777);
    fs.utimesSync(to, source.atime, source.mtime);
    fs.rmdirSync(from);
    return;
  }
  fs.rmSync(to, { recursive: true, force: true });
  fs.renameSync(from, to);
}
